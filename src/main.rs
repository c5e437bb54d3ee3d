//! `wspush -c conf/app.ini [--cores N] [--log-format text|json]`: CLI -> config -> logging ->
//! runtime. `wspush check-config -c FILE` reads the same file and flags, names every problem,
//! and prints the values the server would run with. `wspush genconfig` prints a complete
//! commented app.ini (conf/app.ini). `wspush probe` asks a running server's `/readyz`, for a
//! container's HEALTHCHECK.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wspush::config::{Config, ConfigError, LogFormat};

/// mimalloc, except in a build with `--features system-alloc`: the C library's allocator, which
/// heap profilers (valgrind's dhat and massif) see, for counting allocations (perf/README.md).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a config the server refuses, from the server's start and from check-config
/// alike, so a deploy script can tell "bad config" (2) from "could not start" (1).
const EXIT_BAD_CONFIG: u8 = 2;

/// Distributed WebSocket push service, compatible with go-websocket.
#[derive(Parser, Debug)]
#[command(
    name = "wspush",
    version,
    about,
    after_help = "Every app.ini key can also be set by an environment variable \
        WSPUSH_<SECTION>_<KEY> (any case), e.g. WSPUSH_COMMON_HTTPPORT=7801, \
        WSPUSH_ETCD_ENDPOINTS=etcd1:2379,etcd2:2379, WSPUSH_WSPUSH_ADVERTISEHOST=ws1. \
        Precedence: flags, then the environment, then the file, then the defaults. \
        `wspush check-config` shows where each value came from."
)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The server's options. Global, so `check-config` takes them too and shows the values the
/// server would run with, flags included.
#[derive(Args, Debug)]
struct Opts {
    /// Config file (the original's app.ini format).
    #[arg(
        short = 'c',
        long = "config",
        default_value = "conf/app.ini",
        global = true
    )]
    config: PathBuf,
    /// Number of cores (shards) to run; overrides [wspush] Cores (default: every available CPU).
    #[arg(long, global = true)]
    cores: Option<usize>,
    /// Log lines as `text` (the default) or `json` (one object per line); overrides
    /// [wspush] LogFormat.
    #[arg(long, value_name = "text|json", global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a config file without starting the server.
    ///
    /// Prints the effective value of every key (from the file, a default or a flag) and exits 0,
    /// or names every problem on stderr and exits 2, as the server's start would.
    CheckConfig,
    /// Print a complete app.ini: every key with its default, each explained in a comment.
    ///
    /// The text of conf/app.ini; redirect it to a file and change what you need.
    Genconfig,
    /// Ask the server on this machine whether it is ready (the container HEALTHCHECK).
    ///
    /// GETs http://HOST:PORT/readyz (the port from the config file and environment unless
    /// --port is given), prints the answer and exits 0 when it is 200, 1 otherwise.
    Probe {
        /// Host to ask.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to ask; default: the config's HttpPort.
        #[arg(long)]
        port: Option<u16>,
        /// Path to ask (`/healthz` for liveness only).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli.opts),
        Some(Command::Genconfig) => {
            print!("{}", wspush::config::EXAMPLE_INI);
            ExitCode::SUCCESS
        }
        Some(Command::Probe { host, port, path }) => probe(&cli.opts, &host, port, &path),
        None => serve(&cli.opts),
    }
}

/// Runs the server (no subcommand): what `make run` and the tests start.
fn serve(opts: &Opts) -> ExitCode {
    // The flag wins over the file, so with the flag logging can start before the file is read
    // and a bad file is reported in the format the log pipeline expects. Without it the format
    // comes from the file, and a bad file is reported as one plain line.
    if let Some(format) = opts.log_format {
        init_logging(format);
    }
    let mut config = match Config::read(&opts.config).and_then(|text| Config::parse(&text)) {
        Ok(c) => c,
        Err(e) => return refuse(opts, &e),
    };
    let (overrides, env_notes) = Config::env_overrides(std::env::vars());
    if let Some(e) = config.apply_env(&overrides).first() {
        return refuse(opts, e);
    }
    if let Some(e) = apply_flags(&mut config, opts).first() {
        return refuse(opts, e);
    }
    if let Err(e) = config.validate() {
        return refuse(opts, &e);
    }
    if opts.log_format.is_none() {
        init_logging(config.log_format);
    }
    for o in &overrides {
        tracing::info!(variable = %o.var, key = o.key, "config key set from the environment");
    }
    for note in &env_notes {
        tracing::warn!("{note}");
    }
    if let Err(e) = wspush::sys::check_io_uring() {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    match wspush::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reports a config problem at the server's start: one line, then exit 2.
fn refuse(opts: &Opts, e: &ConfigError) -> ExitCode {
    if opts.log_format.is_some() {
        tracing::error!(key = %e.key, "{e}");
    } else {
        eprintln!("wspush: {e}");
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Logs to stderr at the level `RUST_LOG` sets (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line, the event's fields at the top level next to `timestamp`,
        // `level`, `message` and `target`: what Loki, Vector or Filebeat parse without a rule.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Applies the command-line flags over the file's values; the problems they have.
fn apply_flags(config: &mut Config, opts: &Opts) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    match opts.cores {
        Some(0) => problems.push(ConfigError {
            key: "--cores".into(),
            problem: "must be at least 1".into(),
        }),
        Some(cores) => config.cores = cores,
        None => {}
    }
    if let Some(format) = opts.log_format {
        config.log_format = format;
    }
    problems
}

/// `wspush check-config`: every problem (exit 2), or every effective value (exit 0).
fn check_config(opts: &Opts) -> ExitCode {
    let path = opts.config.display();
    let text = match std::fs::read_to_string(&opts.config) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("wspush: config error: config file: cannot read {path}: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let (mut config, mut problems) = Config::parse_all(&text);
    let (overrides, env_notes) = Config::env_overrides(std::env::vars());
    problems.extend(config.apply_env(&overrides));
    problems.extend(apply_flags(&mut config, opts));
    // A key whose value did not parse kept its default: range checks on that default would
    // only restate the problem.
    let mut unparsed: Vec<String> = problems.iter().map(|e| e.key.clone()).collect();
    unparsed.extend(
        overrides
            .iter()
            .filter(|o| problems.iter().any(|e| e.key.starts_with(&o.var)))
            .map(|o| o.key.to_string()),
    );
    problems.extend(
        config
            .validate_all()
            .into_iter()
            .filter(|e| !unparsed.contains(&e.key)),
    );
    let values = config.values();
    let known: Vec<String> = values.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    let mut in_file = Vec::new();
    let mut notes = Vec::new();
    for (section, key) in Config::file_keys(&text) {
        let full = format!("{section}.{key}");
        let lower = full.to_ascii_lowercase();
        let section = section.to_ascii_lowercase();
        if known.contains(&lower) {
            in_file.push(lower);
        } else if ["common", "etcd", "wspush"].contains(&section.as_str()) {
            notes.push(format!("{full} is not a key wspush reads (ignored)"));
        } else {
            let note = format!("section [{section}] is not one wspush reads (ignored)");
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    notes.extend(env_notes);
    // What the server would warn about at every start.
    notes.extend(config.start_warnings());

    if !problems.is_empty() {
        for e in &problems {
            eprintln!("wspush: {e}");
        }
        let n = problems.len();
        let s = if n == 1 { "" } else { "s" };
        eprintln!("wspush: {path}: {n} problem{s}, the server would not start");
        print_notes(&notes);
        return ExitCode::from(EXIT_BAD_CONFIG);
    }

    println!(
        "# {path}: valid (wspush {}); each value's source after the ;",
        env!("CARGO_PKG_VERSION")
    );
    let width = values
        .iter()
        .map(|(k, v)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    let env_sources: Vec<(&str, String)> = overrides
        .iter()
        .map(|o| (o.key, format!("environment {}", o.var)))
        .collect();
    let from_env = |key: &str| {
        env_sources
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.as_str())
    };
    for (key, value) in &values {
        let source = match *key {
            "wspush.Cores" if opts.cores.is_some() => "flag --cores",
            "wspush.LogFormat" if opts.log_format.is_some() => "flag --log-format",
            _ if from_env(key).is_some() => from_env(key).unwrap_or_default(),
            _ if in_file.contains(&key.to_ascii_lowercase()) => "file",
            _ => "default",
        };
        let line = format!("{key} = {value}");
        println!("{line:<width$} ; {source}{}", derived(key, &config));
    }
    print_notes(&notes);
    ExitCode::SUCCESS
}

/// Things worth knowing that do not stop the server: keys it ignores (a typo in a key or
/// section name silently keeps the default), the published default key.
fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("wspush: note: {note}");
    }
}

/// What a "0 / empty = work it out" value comes to, for the keys that have one.
fn derived(key: &str, config: &Config) -> String {
    match key {
        "wspush.Cores" if config.cores == 0 => {
            format!(" (0 = every CPU: {} here)", wspush::sys::available_cpus())
        }
        "wspush.MaxConnsPerCore" if config.max_conns_per_core == 0 => {
            " (0 = from the open-files limit at start)".into()
        }
        "wspush.AdvertiseHost" if config.advertise_host.is_none() => {
            format!(" (empty = {})", config.node_host())
        }
        "wspush.RPCBind" if config.rpc_bind.is_none() => {
            format!(" (empty = {})", config.rpc_bind_host())
        }
        "wspush.ClusterSecret" if config.cluster_secret.is_empty() => {
            " (empty = a key derived from CryptoKey)".into()
        }
        _ => String::new(),
    }
}

/// `wspush probe`: one GET with a short timeout; exit 0 on 200. No curl in the image needed.
fn probe(opts: &Opts, host: &str, port: Option<u16>, path: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let port = port.unwrap_or_else(|| {
        // Whatever the server would listen on; a config it would refuse still names a port.
        let text = Config::read(&opts.config).unwrap_or_default();
        let (mut config, _) = Config::parse_all(&text);
        let (overrides, _) = Config::env_overrides(std::env::vars());
        config.apply_env(&overrides);
        config.http_port
    });
    let timeout = Duration::from_secs(3);
    let answer = (host, port)
        .to_socket_addrs()
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, timeout))
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        });
    let answer = match answer {
        Ok(answer) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) => {
            eprintln!("wspush: probe: {host}:{port}{path}: {e}");
            return ExitCode::from(1);
        }
    };
    let status = answer.split(' ').nth(1).unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!("{status} {}", body.trim());
    if status == "200" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
