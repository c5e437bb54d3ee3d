//! What running in a container needs (issue 14): every key settable from the environment
//! (`WSPUSH_<SECTION>_<KEY>`, over the file, under the flags), a host name for AdvertiseHost, and
//! `wspush probe` for the image's HEALTHCHECK.

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

#[test]
fn an_environment_variable_overrides_the_file_and_the_log_says_so() {
    let server = Server::start_env(
        &["MaxBodyBytes = 1048576"],
        2,
        None,
        &|text| text,
        &[("WSPUSH_WSPUSH_MAXBODYBYTES", "64")],
    );
    let body = json!({ "systemId": "x".repeat(100) }).to_string();
    let resp = api_raw(server.port, None, "/api/register", body.as_bytes());
    assert_eq!(resp.status, 413, "the environment's 64-byte limit holds");
    let log = server.stderr_log();
    assert!(
        log.contains("config key set from the environment")
            && log.contains("WSPUSH_WSPUSH_MAXBODYBYTES"),
        "{log}"
    );
}

#[test]
fn a_bad_environment_value_refuses_the_start_naming_the_variable() {
    let dir = temp_dir("env-bad");
    let config = dir.join("app.ini");
    let (port, rpc) = free_ports();
    std::fs::write(&config, config_text(port, rpc, &[])).unwrap();
    let (status, stderr) = run_to_exit_env(
        &["-c", config.to_str().unwrap(), "--cores", "1"],
        &[("WSPUSH_COMMON_HTTPPORT", "abc")],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WSPUSH_COMMON_HTTPPORT (common.HttpPort)") && stderr.contains("\"abc\""),
        "{stderr}"
    );
}

/// `check-config`'s stdout with `env` set.
fn check_config_env(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check-config", "-c", config])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_shows_environment_values_host_names_and_typos() {
    let dir = temp_dir("env-check");
    let config = dir.join("app.ini");
    std::fs::write(&config, config_text(7800, 7900, &[])).unwrap();
    let (code, stdout, stderr) = check_config_env(
        config.to_str().unwrap(),
        &[
            ("WSPUSH_WSPUSH_ADVERTISEHOST", "localhost"),
            ("wspush_common_rpcport", "7999"),
            ("WSPUSH_WSPUSH_NOSUCHKEY", "1"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in\n{stdout}"))
            .to_string()
    };
    let host = line("wspush.AdvertiseHost");
    assert!(
        host.contains("= 127.0.0.1") && host.contains("environment WSPUSH_WSPUSH_ADVERTISEHOST"),
        "a host name resolves to its IPv4 address: {host}"
    );
    let rpc = line("common.RPCPort");
    assert!(
        rpc.contains("= 7999") && rpc.contains("environment wspush_common_rpcport"),
        "{rpc}"
    );
    assert!(line("common.HttpPort").contains("; file"));
    assert!(
        stderr.contains("WSPUSH_WSPUSH_NOSUCHKEY names no key of [wspush]"),
        "a typo in a variable is noted: {stderr}"
    );

    let (code, _, stderr) = check_config_env(
        config.to_str().unwrap(),
        &[("WSPUSH_WSPUSH_ADVERTISEHOST", "no-such-host.invalid")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot resolve"), "{stderr}");
}

#[test]
fn probe_exits_0_on_a_ready_server_and_1_when_nothing_answers() {
    let server = Server::start();
    let port = server.port.to_string();
    let (status, stderr) = run_to_exit(&["probe", "--port", &port]);
    assert!(status.success(), "{stderr}");
    // Without --port, the port comes from the config the server runs with.
    let config = server.dir.join("app.ini");
    let (status, stderr) = run_to_exit(&["probe", "-c", config.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    let (status, stderr) = run_to_exit(&["probe", "--port", &port, "--path", "/nowhere"]);
    assert_eq!(status.code(), Some(1), "a 404 is not ready: {stderr}");

    let (closed, _) = free_ports();
    let (status, stderr) = run_to_exit(&["probe", "--port", &closed.to_string()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{closed}/readyz")),
        "{stderr}"
    );
}
