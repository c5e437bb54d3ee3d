//! Operating wspush: `check-config` and `--version`, JSON logs, one log line per node event,
//! and the `/healthz` and `/readyz` probes as nginx, a kubelet or a load balancer send them
//! (plain HTTP/1.0 and 1.1 GETs), while draining and on a cluster node that loses etcd.

mod common;

use common::etcd::{Etcd, Node};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

/// How long a probe may take to change its answer after the event (SIGTERM, etcd killed or
/// back): etcd comes back within a few seconds (backoff ≤ 2 s), the rest within milliseconds.
const PROBE_CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished command left: exit status, stdout, stderr.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` until it exits (at most 15 s: a command that starts the server
/// by mistake is killed and fails the test), capturing stdout and stderr.
fn run(args: &[&str]) -> Ran {
    let dir = temp_dir("ops-run");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("spawn wspush");
    let status = wait_child(
        &mut child,
        Duration::from_secs(15),
        &format!("wspush {args:?}"),
        &err,
    );
    let ran = Ran {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    ran
}

/// Writes `text` as `app.ini` in a fresh directory; returns both.
fn write_config(text: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("ops-config");
    let path = dir.join("app.ini");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `check-config` stdout as `key -> (value, source)`; asserts every line but the leading
/// `#` comment has the `section.Key = value ; source` form.
fn effective_values(stdout: &str) -> BTreeMap<String, (String, String)> {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("# "), "first line: {first:?}");
    lines
        .map(|line| {
            let (setting, source) = line
                .split_once(" ; ")
                .unwrap_or_else(|| panic!("no ` ; source` in {line:?}"));
            let (key, value) = setting
                .split_once(" = ")
                .unwrap_or_else(|| panic!("not `key = value`: {line:?}"));
            let (section, name) = key
                .split_once('.')
                .unwrap_or_else(|| panic!("key without a section: {line:?}"));
            assert!(
                ["common", "etcd", "wspush"].contains(&section) && !name.is_empty(),
                "{line:?}"
            );
            (
                key.to_string(),
                (value.trim().to_string(), source.to_string()),
            )
        })
        .collect()
}

#[test]
fn version_prints_the_crate_version() {
    for flag in ["--version", "-V"] {
        let ran = run(&[flag]);
        assert!(ran.status.success(), "{flag}: {}", ran.status);
        assert_eq!(
            ran.stdout.trim(),
            format!("wspush {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn check_config_prints_every_effective_value_with_its_source() {
    let (port, rpc) = free_ports();
    let text = config_text(port, rpc, &["ShutdownGrace = 7", "LogFormat = json"]);
    let (dir, path) = write_config(&text);
    let path = path.to_str().unwrap();
    let ran = run(&["check-config", "-c", path, "--cores", "3"]);
    assert_eq!(ran.status.code(), Some(0), "stderr:\n{}", ran.stderr);
    let values = effective_values(&ran.stdout);
    let get = |key: &str| {
        values
            .get(key)
            .unwrap_or_else(|| panic!("{key} not printed:\n{}", ran.stdout))
            .clone()
    };
    let v = |value: &str, source: &str| (value.to_string(), source.to_string());
    // From the file (the original's keys and ours), from defaults, and from a flag.
    assert_eq!(get("common.HttpPort"), v(&port.to_string(), "file"));
    assert_eq!(get("common.RPCPort"), v(&rpc.to_string(), "file"));
    assert_eq!(get("common.Cluster"), v("false", "file"));
    assert_eq!(get("wspush.ShutdownGrace"), v("7", "file"));
    assert_eq!(get("wspush.LogFormat"), v("json", "file"));
    assert_eq!(get("wspush.LeaseTtl"), v("5", "default"));
    assert_eq!(get("wspush.RpcTimeoutMs"), v("3000", "default"));
    assert_eq!(get("wspush.Cores"), v("3", "flag --cores"));
    // Every key the server reads is listed once, the file's and the defaults alike.
    for key in [
        "common.CryptoKey",
        "etcd.Endpoints",
        "wspush.HeartbeatInterval",
        "wspush.MaxConnsPerCore",
        "wspush.KeepAliveTimeout",
    ] {
        get(key);
    }
    // The published default key is shown, and flagged.
    assert_eq!(get("common.CryptoKey").0, "Adba723b7fe06819");
    assert!(ran.stderr.contains("CryptoKey"), "{}", ran.stderr);

    // The options work on either side of the subcommand, and the flag wins over the file.
    let ran = run(&["-c", path, "--log-format", "text", "check-config"]);
    assert_eq!(ran.status.code(), Some(0), "stderr:\n{}", ran.stderr);
    let again = effective_values(&ran.stdout);
    assert_eq!(again["wspush.LogFormat"], v("text", "flag --log-format"));
    assert_eq!(again["common.HttpPort"], v(&port.to_string(), "file"));
    // Nothing was started: the port is still free.
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("check-config left the port bound");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_names_every_problem_and_exits_2() {
    let (port, rpc) = free_ports();
    // Two values that do not parse and one that breaks a rule between keys.
    let text = config_text(port, rpc, &["PongTimeout = 10"])
        .replace(&format!("HttpPort = {port}"), "HttpPort = abc")
        .replace("CryptoKey = Adba723b7fe06819", "CryptoKey = short")
        .replace("QueueFrames = 1024", "QueueFrames = lots");
    let (dir, path) = write_config(&text);
    let path = path.to_str().unwrap();
    let ran = run(&["check-config", "-c", path]);
    assert_eq!(ran.status.code(), Some(2), "stderr:\n{}", ran.stderr);
    assert_eq!(ran.stdout, "", "no values are printed for an invalid file");
    let problems: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.contains("config error"))
        .collect();
    for key in [
        "common.HttpPort",
        "common.CryptoKey",
        "wspush.QueueFrames",
        "wspush.PongTimeout",
    ] {
        assert_eq!(
            problems.iter().filter(|l| l.contains(key)).count(),
            1,
            "{key} should be named once:\n{}",
            ran.stderr
        );
    }
    assert_eq!(problems.len(), 4, "stderr:\n{}", ran.stderr);
    assert!(ran.stderr.contains("4 problems"), "{}", ran.stderr);

    // The server's start refuses the same file with the same exit code, naming one problem.
    let (status, stderr) = run_to_exit(&["-c", path, "--cores", "2"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr:\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_of_a_missing_file_exits_2_naming_it() {
    let dir = temp_dir("ops-missing");
    let path = dir.join("nowhere.ini");
    let ran = run(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(2), "stderr:\n{}", ran.stderr);
    assert!(ran.stderr.contains("nowhere.ini"), "{}", ran.stderr);
    assert_eq!(ran.stdout, "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_notes_keys_and_sections_it_ignores() {
    let (port, rpc) = free_ports();
    // A typo keeps the default silently at run time; check-config points at it, and still
    // passes (unknown keys are ignored, as the original ignores them).
    let text = config_text(
        port,
        rpc,
        &["HeartbeatIntervall = 5", "[wspsuh]", "Cores = 1"],
    );
    let (dir, path) = write_config(&text);
    let ran = run(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(0), "stderr:\n{}", ran.stderr);
    assert!(
        ran.stderr.contains("wspush.HeartbeatIntervall"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("[wspsuh]"), "{}", ran.stderr);
    let (cores, source) = &effective_values(&ran.stdout)["wspush.Cores"];
    assert_eq!(cores, "0", "a key of an unknown section is not read");
    assert!(source.starts_with("default"), "{source}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Logs

/// A server started with its own flags (the harness's [`Server`] takes no flags); killed and
/// its directory removed on drop, its log printed when the test panics.
struct Flagged {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Flagged {
    fn start(extra_config: &[&str], flags: &[&str]) -> Flagged {
        let (port, rpc) = free_ports();
        let dir = temp_dir("ops-server");
        let config = dir.join("app.ini");
        std::fs::write(&config, config_text(port, rpc, extra_config)).unwrap();
        let log = File::create(dir.join("server.log")).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config)
            .args(["--cores", "2"])
            .args(flags)
            // The test asserts what the default level shows, whatever the caller's RUST_LOG.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn wspush");
        let mut server = Flagged { child, port, dir };
        let ready = wait_http(&mut server.child, port, "/readyz", READY_TIMEOUT, |r| {
            r.status == 200
        });
        assert!(
            ready.is_ok(),
            "wspush {flags:?} did not become ready:\n{}",
            server.log()
        );
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 15 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flagged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- wspush log ---\n{}--- end ---", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every line of `log` as a JSON object with string `level` and `message`; panics on the
/// first line that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(v["message"].is_string(), "no message: {line}");
            v
        })
        .collect()
}

fn count_messages(lines: &[Value], message: &str) -> usize {
    lines.iter().filter(|v| v["message"] == message).count()
}

#[test]
fn json_logs_with_the_flag_one_line_per_node_event_none_per_client() {
    // The flag wins over the file's LogFormat.
    let mut server = Flagged::start(&["LogFormat = text"], &["--log-format", "json"]);
    // Client traffic: connects, pushes, a group, disconnects. None of it may log at info.
    const CLIENTS: usize = 30;
    let v = api(
        server.port,
        None,
        "/api/register",
        &json!({"systemId": "logs"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    let mut clients: Vec<Ws> = (0..CLIENTS)
        .map(|_| Ws::connect(server.port, "logs"))
        .collect();
    for ws in &clients {
        bind(server.port, "logs", ws, "room", "u", "");
        let v = api(
            server.port,
            Some("logs"),
            "/api/send_to_client",
            &json!({"clientId": ws.client_id, "sendUserId": "", "code": 1, "msg": "", "data": "x"}),
        );
        assert_eq!(v["code"], 0, "{v}");
    }
    let v = api(
        server.port,
        Some("logs"),
        "/api/send_to_group",
        &json!({"groupName": "room", "sendUserId": "", "code": 2, "msg": "", "data": "all"}),
    );
    assert_eq!(v["code"], 0, "{v}");
    for ws in clients.drain(..CLIENTS / 2) {
        ws.close();
    }
    for ws in clients.drain(..) {
        ws.drop_abruptly(true);
    }
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "exit status {status}");

    let log = server.log();
    let lines = json_lines(&log);
    for message in [
        "wspush starting",
        "wspush ready",
        "drain started",
        "drain finished",
        "wspush stopped",
    ] {
        assert_eq!(
            count_messages(&lines, message),
            1,
            "want one {message:?} line:\n{log}"
        );
    }
    let ready = lines
        .iter()
        .find(|v| v["message"] == "wspush ready")
        .unwrap();
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["cores"], 2);
    assert!(
        lines.iter().all(|v| v.get("client").is_none()),
        "a line about one client at info level:\n{log}"
    );
    assert!(
        lines.len() < CLIENTS,
        "{} lines for {CLIENTS} clients: something logs per client:\n{log}",
        lines.len()
    );
}

#[test]
fn json_logs_report_a_bad_config_as_json_too() {
    // With the flag, logging starts before the file is read: a log pipeline gets the refusal
    // as one JSON line, not plain text it cannot parse.
    let (port, rpc) = free_ports();
    let text = config_text(port, rpc, &[]).replace("CryptoKey = Adba723b7fe06819", "CryptoKey = x");
    let (dir, path) = write_config(&text);
    let (status, stderr) = run_to_exit(&["-c", path.to_str().unwrap(), "--log-format", "json"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    let lines = json_lines(&stderr);
    assert_eq!(lines.len(), 1, "stderr:\n{stderr}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["key"], "common.CryptoKey");
    assert!(
        lines[0]["message"].as_str().unwrap().contains("CryptoKey"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_with_the_config_key() {
    let server = Server::start_with(&["LogFormat = json"]);
    let log = server.stderr_log();
    let lines = json_lines(&log);
    assert_eq!(count_messages(&lines, "wspush starting"), 1, "{log}");
    let starting = lines
        .iter()
        .find(|v| v["message"] == "wspush starting")
        .unwrap();
    // Event fields sit at the top level, next to level and message.
    assert_eq!(starting["http_port"], server.port, "{log}");
    assert_eq!(starting["cores"], 2, "{log}");
    assert!(starting["timestamp"].is_string(), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Probes

/// Sends `raw` on `stream` and reads one response.
fn exchange(
    stream: &mut std::net::TcpStream,
    reader: &mut impl std::io::BufRead,
    raw: &[u8],
) -> Response {
    stream.write_all(raw).unwrap();
    read_response(reader).expect("a probe response")
}

/// Asserts the status, a JSON content type and the JSON body of a probe answer.
fn assert_probe(resp: &Response, status: u16, body: Value, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    let content_type = resp.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: Content-Type {content_type:?}"
    );
    assert_eq!(resp.json(), body, "{what}");
}

/// Asserts the server closes `reader`'s connection (EOF, not a timeout).
fn assert_closed(reader: &mut impl Read, what: &str) {
    let mut byte = [0u8; 1];
    match reader.read(&mut byte) {
        Ok(0) => {}
        other => panic!("{what}: connection not closed by the server: {other:?}"),
    }
}

/// One request on a fresh connection; the response and the reader (to check for the close).
fn probe_once(port: u16, raw: &str) -> (Response, BufReader<std::net::TcpStream>) {
    let mut stream = connect(port);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let resp = exchange(&mut stream, &mut reader, raw.as_bytes());
    (resp, reader)
}

fn ready() -> Value {
    json!({"status": "ready"})
}

fn ok() -> Value {
    json!({"status": "ok"})
}

fn not_ready(reason: &str) -> Value {
    json!({"status": "not ready", "reason": reason})
}

#[test]
fn probes_answer_json_to_http_1_0_and_1_1_gets() {
    let server = Server::start();
    let port = server.port;

    // HTTP/1.0 with no headers at all (a simple checker, nginx's default upstream protocol):
    // answered, then closed.
    for (path, body) in [("/healthz", ok()), ("/readyz", ready())] {
        let (resp, mut reader) = probe_once(port, &format!("GET {path} HTTP/1.0\r\n\r\n"));
        assert_probe(&resp, 200, body, path);
        assert_closed(&mut reader, path);
    }
    // What nginx sends to an upstream (HTTP/1.0, Connection: close, forwarded headers).
    let (resp, mut reader) = probe_once(
        port,
        "GET /readyz HTTP/1.0\r\nHost: ws.example.com\r\nX-Forwarded-For: 10.0.0.9\r\n\
         Connection: close\r\n\r\n",
    );
    assert_probe(&resp, 200, ready(), "nginx-style /readyz");
    assert_closed(&mut reader, "nginx-style /readyz");
    // What a kubelet sends (HTTP/1.1, Connection: close, its User-Agent); a query is ignored.
    let (resp, mut reader) = probe_once(
        port,
        &format!(
            "GET /readyz?verbose=1 HTTP/1.1\r\nHost: 10.1.2.3:{port}\r\n\
             User-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_probe(&resp, 200, ready(), "kubelet-style /readyz");
    assert_closed(&mut reader, "kubelet-style /readyz");
    // A checker that keeps its connection (HTTP/1.1 default): several probes on one socket.
    let mut stream = connect(port);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..3 {
        for (path, body) in [("/healthz", ok()), ("/readyz", ready())] {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let resp = exchange(&mut stream, &mut reader, raw.as_bytes());
            assert_probe(&resp, 200, body, path);
            assert_eq!(resp.header("Connection"), None, "{path} kept alive");
        }
    }
}

#[test]
fn readyz_says_draining_after_sigterm_while_healthz_stays_ok() {
    // A long grace, so the drain lasts until the client below answers its close frame.
    let mut server = Server::start_with(&["ShutdownGrace = 20"]);
    server.register("drain");
    let mut client = server.ws("drain");
    // A balancer's kept-alive probe connection, made before the listeners close.
    let mut stream = connect(server.port);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let readyz = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = exchange(&mut stream, &mut reader, readyz);
    assert_probe(&resp, 200, ready(), "/readyz before SIGTERM");

    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + PROBE_CHANGE_TIMEOUT;
    let resp = loop {
        let resp = exchange(&mut stream, &mut reader, readyz);
        if resp.status != 200 || Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_probe(&resp, 503, not_ready("draining"), "/readyz while draining");
    let resp = exchange(
        &mut stream,
        &mut reader,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_probe(&resp, 200, ok(), "/healthz while draining");

    // The client answers its 1001; the drain ends with it, long before the grace.
    assert_eq!(
        client.expect_end(Duration::from_secs(10), false),
        Ended::Close(1001)
    );
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("still running after the last client left");
    assert_eq!(status.code(), Some(0));
    let log = server.stderr_log();
    let lines_with = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    assert_eq!(lines_with("drain started"), 1, "{log}");
    assert_eq!(lines_with("drain finished"), 1, "{log}");
    let finished = log.lines().find(|l| l.contains("drain finished")).unwrap();
    assert!(
        finished.contains("clients=1") && finished.contains("cut=0"),
        "{finished}"
    );
}

/// Polls `GET /readyz` on fresh connections until `want` matches its status, or panics.
fn wait_readyz(port: u16, want: u16, what: &str) -> Response {
    let deadline = Instant::now() + PROBE_CHANGE_TIMEOUT;
    loop {
        let resp = http(port, "GET", "/readyz", &[], b"");
        if resp.status == want {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still {} {} after {PROBE_CHANGE_TIMEOUT:?}",
            resp.status,
            resp.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls a node's log until a line contains every one of `parts`, or panics.
fn wait_log_line(node: &Server, parts: &[&str], what: &str) {
    let deadline = Instant::now() + PROBE_CHANGE_TIMEOUT;
    loop {
        let log = node.stderr_log();
        if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no line with {parts:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count_lines(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

#[test]
fn cluster_readyz_follows_etcd_and_membership_events_log_once() {
    let mut etcd = Etcd::start();
    let a = Node::start(&etcd, &[]);
    let mut b = Node::start(&etcd, &[]);
    let b_addr = b.addr();
    wait_log_line(&a, &["peer joined", &b_addr], "A sees B join");
    assert_probe(
        &http(a.port, "GET", "/readyz", &[], b""),
        200,
        ready(),
        "cluster node with etcd",
    );

    // B leaves with SIGTERM: it drains and revokes its lease, A logs it left.
    b.signal(libc::SIGTERM);
    assert_eq!(
        b.wait_exit(Duration::from_secs(15)).map(|s| s.code()),
        Some(Some(0))
    );
    wait_log_line(&a, &["peer left", &b_addr], "A sees B leave");
    let b_log = b.stderr_log();
    for event in [
        "drain started",
        "left the cluster: etcd lease revoked",
        "drain finished",
    ] {
        assert_eq!(count_lines(&b_log, &[event]), 1, "{event}:\n{b_log}");
    }

    // etcd dies: A keeps running (healthz) but is not ready, and says why.
    etcd.stop();
    let resp = wait_readyz(a.port, 503, "etcd down");
    assert_probe(
        &resp,
        503,
        not_ready("etcd membership not established"),
        "etcd down",
    );
    assert_probe(
        &http(a.port, "GET", "/healthz", &[], b""),
        200,
        ok(),
        "healthz with etcd down",
    );
    // The same answer over HTTP/1.0, as nginx or a plain checker asks.
    let (resp, _) = probe_once(a.port, "GET /readyz HTTP/1.0\r\n\r\n");
    assert_probe(
        &resp,
        503,
        not_ready("etcd membership not established"),
        "HTTP/1.0 with etcd down",
    );

    // etcd is back: A re-registers by itself and is ready again.
    etcd.restart();
    let resp = wait_readyz(a.port, 200, "etcd back");
    assert_probe(&resp, 200, ready(), "etcd back");
    wait_log_line(&a, &["etcd regained"], "A logs etcd regained");

    let a_log = a.stderr_log();
    for (parts, what) in [
        (&["wspush ready"][..], "ready"),
        (&["peer joined", &b_addr][..], "B joined"),
        (&["peer left", &b_addr][..], "B left"),
        (&["etcd lost"][..], "etcd lost"),
        (&["etcd regained"][..], "etcd regained"),
    ] {
        assert_eq!(
            count_lines(&a_log, parts),
            1,
            "one line for {what}:\n{a_log}"
        );
    }
}

/// Issue 12: the original's published `CryptoKey` lets anyone who knows it forge clientIds.
/// The server still starts with it (the original's own `conf/app.ini` ships it), but says so
/// at WARN on every start and on `/status`; `RefuseDefaultCryptoKey = true` refuses it.
#[test]
fn the_published_crypto_key_is_warned_about_at_every_start_and_refused_on_request() {
    let warned = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("common.CryptoKey")
                    && l.contains("forge clientIds")
                    && l.contains("openssl rand -hex 16")
            })
            .count()
    };
    // Every start warns, once.
    for start in 0..2 {
        let server = Server::start();
        assert_eq!(
            warned(&server.stderr_log()),
            1,
            "start {start}: one WARN about the default key:\n{}",
            server.stderr_log()
        );
        let status = http(server.port, "GET", "/status.json", &[], b"").json();
        assert_eq!(status["defaultCryptoKey"], true, "{status}");
        let warnings = status["warnings"].as_array().expect("warnings is a list");
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("common.CryptoKey")),
            "{status}"
        );
        // The page has the element its script fills with them.
        let page = http(server.port, "GET", "/status", &[], b"").text();
        assert!(page.contains("id=\"warnings\""), "no warnings element");
    }

    // An own key: no warning, nothing on /status.
    let own = |text: String| {
        text.replace(
            "CryptoKey = Adba723b7fe06819",
            "CryptoKey = 0123456789abcdef0123456789abcdef",
        )
    };
    let server = Server::start_edited(&["RefuseDefaultCryptoKey = true"], 2, None, &own);
    assert_eq!(warned(&server.stderr_log()), 0, "{}", server.stderr_log());
    let status = http(server.port, "GET", "/status.json", &[], b"").json();
    assert_eq!(status["defaultCryptoKey"], false, "{status}");
    assert_eq!(status["warnings"], json!([]), "{status}");
    drop(server);

    // RefuseDefaultCryptoKey = true with the default key: exit 2, one line naming the key.
    let (port, rpc) = free_ports();
    let (dir, path) = write_config(&config_text(port, rpc, &["RefuseDefaultCryptoKey = true"]));
    let path = path.to_str().unwrap();
    let (status, stderr) = run_to_exit(&["-c", path, "--cores", "2"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains("common.CryptoKey") && stderr.contains("RefuseDefaultCryptoKey"),
        "{stderr}"
    );
    let ran = run(&["check-config", "-c", path]);
    assert_eq!(ran.status.code(), Some(2), "stderr:\n{}", ran.stderr);
    assert!(ran.stderr.contains("common.CryptoKey"), "{}", ran.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
