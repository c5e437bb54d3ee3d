//! Process lifecycle: config errors (exit 2, one line naming the key), Cluster refused, unknown
//! keys ignored, `--cores` above the CPU count, SIGTERM/SIGINT shutdown (1001 to clients, exit 0).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Writes `text` to a fresh app.ini and runs `wspush -c <it> --cores 2` until it exits.
fn run_with_config(text: &str) -> (std::process::ExitStatus, String) {
    let dir = temp_dir("config");
    let path = dir.join("app.ini");
    std::fs::write(&path, text).unwrap();
    let result = run_to_exit(&["-c", path.to_str().unwrap(), "--cores", "2"]);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Asserts exit code 2 and exactly one stderr line, which names `key`.
fn assert_config_error(text: &str, key: &str) {
    let (status, stderr) = run_with_config(text);
    assert_eq!(
        status.code(),
        Some(2),
        "bad {key}: exit {status}, stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "bad {key}: want one stderr line, got:\n{stderr}"
    );
    assert!(
        lines[0].contains(key),
        "bad {key}: the line does not name the key: {stderr}"
    );
}

#[test]
fn bad_config_values_exit_2_naming_the_key() {
    let (port, rpc) = free_ports();
    let good = config_text(port, rpc, &[]);
    let http_line = format!("HttpPort = {port}");
    let rpc_line = format!("RPCPort = {rpc}");
    let cases: [(&str, &str, &str); 8] = [
        (
            "CryptoKey = Adba723b7fe06819",
            "CryptoKey = abcde",
            "CryptoKey",
        ),
        (
            "CryptoKey = Adba723b7fe06819",
            "CryptoKey = 0123456789abcdef0",
            "CryptoKey",
        ),
        ("CryptoKey = Adba723b7fe06819", "CryptoKey =", "CryptoKey"),
        (&http_line, "HttpPort = abc", "HttpPort"),
        (&http_line, "HttpPort = 70000", "HttpPort"),
        (&http_line, "HttpPort = -1", "HttpPort"),
        (&rpc_line, "RPCPort = x1", "RPCPort"),
        ("Cluster = false", "Cluster = maybe", "Cluster"),
    ];
    for (from, to, key) in cases {
        assert!(good.contains(from));
        assert_config_error(&good.replacen(from, to, 1), key);
    }
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let dir = temp_dir("missing");
    let path = dir.join("does-not-exist.ini");
    let (status, stderr) = run_to_exit(&["-c", path.to_str().unwrap(), "--cores", "2"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one stderr line, got:\n{stderr}");
    assert!(lines[0].contains("does-not-exist.ini"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cluster_mode_without_etcd_endpoints_is_a_config_error() {
    let (port, rpc) = free_ports();
    let text = config_text(port, rpc, &[]).replace("Cluster = false", "Cluster = true");
    assert_config_error(&text, "Endpoints");
}

#[test]
fn help_exits_0() {
    let (status, _) = run_to_exit(&["--help"]);
    assert!(status.success(), "--help: {status}");
}

#[test]
fn unknown_keys_and_sections_are_ignored() {
    let mut server = Server::start_with(&[
        "SomeFutureKey = 1",
        "[unknown]",
        "Foo = bar",
        "HttpPort = not-a-port-but-not-ours",
    ]);
    server.assert_serves();
}

#[test]
fn more_cores_than_cpus_still_serves() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut server = Server::start_cores(&[], cpus + 1);
    server.assert_serves();
    // Pushes across whatever cores it runs.
    server.register("c");
    let mut clients: Vec<Ws> = (0..8).map(|_| server.ws("c")).collect();
    for (i, ws) in clients.iter().enumerate() {
        let v = api(
            server.port,
            Some("c"),
            "/api/send_to_client",
            &json!({"clientId": ws.client_id, "sendUserId": "", "code": 1, "msg": "", "data": i}),
        );
        assert_eq!(v["code"], 0);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.recv_json()["data"], i);
    }
}

fn assert_signal_shuts_down(signal: i32) {
    let mut server = Server::start();
    server.register("bye");
    let mut clients: Vec<Ws> = (0..6).map(|_| server.ws("bye")).collect();
    server.signal(signal);
    for ws in &mut clients {
        assert_eq!(
            ws.expect_end(Duration::from_secs(10), false),
            Ended::Close(1001),
            "clients must get close code 1001 (going away)"
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("wspush still running 15 s after the signal");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "port still accepting after exit"
    );
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    assert_signal_shuts_down(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    assert_signal_shuts_down(libc::SIGINT);
}

#[test]
fn a_second_server_on_a_taken_port_refuses_to_start() {
    // SO_REUSEPORT would let two processes share the port silently; wspush checks first.
    let mut server = Server::start();
    let (_, rpc_port) = free_ports();
    let (status, stderr) = run_with_config(&config_text(server.port, rpc_port, &[]));
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("HttpPort"), "stderr: {stderr}");
    assert!(stderr.contains("in use"), "stderr: {stderr}");
    server.assert_serves();
}
