//! `wspush -c conf/app.ini [--cores N]`: CLI -> config -> logging -> runtime.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use wspush::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Distributed WebSocket push service, compatible with go-websocket.
#[derive(Parser, Debug)]
#[command(name = "wspush", version, about)]
struct Cli {
    /// Config file (the original's app.ini format).
    #[arg(short = 'c', long = "config", default_value = "conf/app.ini")]
    config: PathBuf,
    /// Number of cores (shards) to run; default: every available CPU.
    #[arg(long)]
    cores: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wspush: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(cores) = cli.cores {
        if cores == 0 {
            eprintln!("wspush: config error: --cores: must be at least 1");
            return ExitCode::from(2);
        }
        config.cores = cores;
    }
    match wspush::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
