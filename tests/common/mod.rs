//! Test harness: start the real `wspush` binary on free ports and talk to it with raw HTTP and a
//! real WebSocket client (tungstenite over a blocking std `TcpStream`).
//!
//! Every socket has a read timeout, so a server that stops answering fails a test instead of
//! hanging it. Nothing here sleeps to wait for the server: readiness is polled on `/readyz`, and
//! the only fixed waits are the short "nothing arrives" windows of [`Ws::expect_nothing`].
//!
//! Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

pub mod auth;
pub mod etcd;
pub mod load;
pub mod nginx;
pub mod receiver;

use serde_json::{json, Value};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

/// Read/write timeout on every socket the tests open.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server gets to answer 200 on `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The default length of a "nothing arrives" window.
pub const QUIET_MS: u64 = 250;

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique id inside this test process (temp dirs, system ids).
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("wspush-test-{tag}")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Two distinct ports that were free a moment ago (both listeners are held while the second is
/// picked, so the two differ).
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// The original's `conf/app.ini` (comments included) plus a `[wspush]` section; `extra` lines go
/// at the end of `[wspush]` and override the defaults written before them.
pub fn config_text(http_port: u16, rpc_port: u16, extra: &[&str]) -> String {
    let mut text = format!(
        "[common]\n\
         HttpPort = {http_port}\n\
         RPCPort = {rpc_port}\n\
         # 是否集群,单机则设为false\n\
         Cluster = false\n\
         # 对称加密key 只允许16、24、32字节长度\n\
         CryptoKey = Adba723b7fe06819\n\
         \n\
         [etcd]\n\
         Endpoints =\n\
         \n\
         [wspush]\n\
         HeartbeatInterval = 25   ; seconds between server pings\n\
         PongTimeout = 60         ; seconds of client silence before the connection is dropped\n\
         QueueFrames = 1024       ; per-connection outbound queue limit (frames)\n\
         MaxBodyBytes = 1048576   ; HTTP body limit, 413 above\n\
         MaxHeadBytes = 8192      ; HTTP request head limit, 431 above\n\
         HeadTimeout = 10         ; seconds to read a request head\n"
    );
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A running `wspush --cores 2`; killed (and its temp dir removed) on drop. When the dropping
/// thread is panicking, the server's log is printed and the dir is kept; with `WSPUSH_TEST_KEEP`
/// set in the environment every server's dir is kept.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server whose `[wspush]` section ends with `extra` (e.g. `"HeartbeatInterval = 1"`).
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_cores(extra, 2)
    }

    /// [`Server::start_with`] with `--cores <cores>`.
    pub fn start_cores(extra: &[&str], cores: usize) -> Server {
        Server::start_limited(extra, cores, None)
    }

    /// [`Server::start_cores`] with the open-files limit (soft and hard) set to `nofile` by
    /// util-linux `prlimit`, which execs the server (the pid stays the server's).
    pub fn start_limited(extra: &[&str], cores: usize, nofile: Option<u64>) -> Server {
        Server::start_edited(extra, cores, nofile, &|text| text)
    }

    /// [`Server::start_limited`] with the config text passed through `edit` before it is
    /// written (to change a `[common]` key, say).
    pub fn start_edited(
        extra: &[&str],
        cores: usize,
        nofile: Option<u64>,
        edit: &dyn Fn(String) -> String,
    ) -> Server {
        Server::start_env(extra, cores, nofile, edit, &[])
    }

    /// [`Server::start_edited`] with environment variables `env` set for the server.
    pub fn start_env(
        extra: &[&str],
        cores: usize,
        nofile: Option<u64>,
        edit: &dyn Fn(String) -> String,
        env: &[(&str, &str)],
    ) -> Server {
        let cores = cores.to_string();
        let mut last_log = String::new();
        // A port picked free can be taken again before the server binds it: retry on that only.
        for _attempt in 0..3 {
            let (port, rpc_port) = free_ports();
            let dir = temp_dir("server");
            let config = dir.join("app.ini");
            let text = edit(config_text(port, rpc_port, extra));
            // `edit` may have chosen the port itself (a restart on the port of a stopped one).
            let port = text
                .lines()
                .find_map(|l| l.strip_prefix("HttpPort = ")?.trim().parse().ok())
                .unwrap_or(port);
            std::fs::write(&config, text).unwrap();
            let log = File::create(dir.join("server.log")).unwrap();
            let mut command = match nofile {
                Some(n) => {
                    let mut c = Command::new("prlimit");
                    c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                    c
                }
                None => Command::new(BIN),
            };
            let child = command
                .arg("-c")
                .arg(&config)
                .arg("--cores")
                .arg(&cores)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn wspush");
            let mut server = Server {
                port,
                dir,
                child,
                exited: None,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => {
                    last_log = server.stderr_log();
                    let in_use = last_log.to_ascii_lowercase().contains("in use");
                    if !in_use {
                        panic!(
                            "wspush did not become ready: {why}\n--- server log ---\n{last_log}"
                        );
                    }
                }
            }
        }
        panic!("wspush could not bind a free port three times\n--- server log ---\n{last_log}");
    }

    /// Polls `GET /readyz` with a growing backoff until it answers 200, the process exits, or
    /// [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        match wait_http(&mut self.child, self.port, "/readyz", READY_TIMEOUT, |r| {
            r.status == 200
        }) {
            Ok(()) => Ok(()),
            Err(WaitEnd::Exited(status)) => {
                self.exited = Some(status);
                Err(format!("wspush exited early with {status}"))
            }
            Err(WaitEnd::TimedOut) => Err(format!("/readyz not 200 within {READY_TIMEOUT:?}")),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the process is still running (no crash after bad input).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.exited = Some(status);
            panic!(
                "wspush exited with {status}\n--- server log ---\n{}",
                self.stderr_log()
            );
        }
    }

    /// Registers a system and asserts success.
    pub fn register(&self, system: &str) {
        let v = api(
            self.port,
            None,
            "/api/register",
            &json!({ "systemId": system }),
        );
        assert_eq!(v["code"], 0, "register {system}: {v}");
    }

    /// A WebSocket client of `system`, past its welcome frame.
    pub fn ws(&self, system: &str) -> Ws {
        Ws::connect(self.port, system)
    }

    /// Proves the server still serves: an API round trip and a WebSocket push.
    pub fn assert_serves(&mut self) {
        self.assert_alive();
        let system = unique("alive");
        self.register(&system);
        let mut ws = self.ws(&system);
        let v = api(
            self.port,
            Some(&system),
            "/api/send_to_client",
            &json!({"clientId": ws.client_id, "sendUserId": "u", "code": 7, "msg": "m", "data": "still here"}),
        );
        assert_eq!(v["code"], 0, "send_to_client after bad input: {v}");
        let push = ws.recv_json();
        assert_eq!(push["data"], "still here");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::env::var_os("WSPUSH_TEST_KEEP").is_some() {
            eprintln!("wspush test server log kept in {}", self.dir.display());
        } else if std::thread::panicking() {
            eprintln!(
                "--- wspush log ({}) ---\n{}--- end of wspush log ---",
                self.dir.display(),
                self.stderr_log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for `child` to exit within `timeout`; past it, kills it and panics naming `what` with
/// the contents of its `log` file.
pub fn wait_child(
    child: &mut Child,
    timeout: Duration,
    what: &str,
    log: &std::path::Path,
) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {timeout:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args` until it exits (at most 15 s; a server that keeps running is
/// killed and the test fails). Returns the exit status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    run_to_exit_env(args, &[])
}

/// [`run_to_exit`] with environment variables `env` set for the command.
pub fn run_to_exit_env(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let dir = temp_dir("run");
    let err_path = dir.join("stderr.log");
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn wspush");
    let status = wait_child(
        &mut child,
        Duration::from_secs(15),
        &format!("wspush {args:?}"),
        &err_path,
    );
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, stderr)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Why [`wait_http`] gave up.
pub enum WaitEnd {
    /// The process exited first.
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `GET <path>` on `port` with a growing pause (5 ms doubling to 200 ms) until `ok`
/// accepts an answer, `child` exits, or `timeout` passes. The one readiness loop of the harness
/// (wspush's `/readyz`, etcd's `/health`).
pub fn wait_http(
    child: &mut Child,
    port: u16,
    path: &str,
    timeout: Duration,
    ok: impl Fn(&Response) -> bool,
) -> Result<(), WaitEnd> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(WaitEnd::Exited(status));
        }
        if let Ok(resp) = try_http(port, "GET", path, &[], b"") {
            if ok(&resp) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(WaitEnd::TimedOut);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Opens a TCP connection to the server with read and write timeouts set.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to wspush");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Builds an HTTP/1.1 request. `Host`, `Content-Length` and `Connection: close` are added unless
/// `headers` names them.
pub fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if !has("content-length") && !has("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request on a fresh connection and reads one response.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&request_bytes(port, method, path, headers, body))?;
    read_response(&mut BufReader::new(stream))
}

/// [`try_http`] that panics on I/O errors.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_http(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: no HTTP response: {e}"))
}

/// Reads one response (status line, headers, then a body framed by `Content-Length`, chunked
/// encoding, or the end of the connection). A 1xx response is returned as it is, with no body.
pub fn read_response<R: BufRead>(reader: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {line:?}"),
        ));
    }
    let status: u16 = parts.next().unwrap_or_default().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {line:?}"),
        )
    })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the response head",
            ));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad header {l:?}"))
        })?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk {line:?}"))
            })?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length".to_string())
        })?;
        resp.body = vec![0; len];
        reader.read_exact(&mut resp.body)?;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// POSTs `body` as JSON to `route` (with a `SystemId` header when `system` is given), asserts the
/// answer is a 200 JSON envelope `{code, msg, data}` and returns it.
pub fn api(port: u16, system: Option<&str>, route: &str, body: &Value) -> Value {
    let resp = api_raw(port, system, route, body.to_string().as_bytes());
    assert_eq!(
        resp.status,
        200,
        "POST {route} {body}: status {} body {:?}",
        resp.status,
        resp.text()
    );
    let v = resp.json();
    assert_envelope(&v);
    v
}

/// POSTs raw bytes with `Content-Type: application/json` (and `SystemId` when given).
pub fn api_raw(port: u16, system: Option<&str>, route: &str, body: &[u8]) -> Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(system) = system {
        headers.push(("SystemId", system));
    }
    http(port, "POST", route, &headers, body)
}

/// Asserts `v` is the API envelope: exactly `code` (integer), `msg` (string) and `data`.
pub fn assert_envelope(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("envelope is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "data", "msg"], "envelope keys: {v}");
    assert!(v["code"].is_i64(), "envelope code is not an integer: {v}");
    assert!(v["msg"].is_string(), "envelope msg is not a string: {v}");
}

/// Asserts a failure envelope (`code` -1) whose `msg` names `field` (case-insensitive).
pub fn assert_fails_naming(v: &Value, field: &str) {
    assert_eq!(v["code"], -1, "expected code -1: {v}");
    let msg = v["msg"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(
        msg.contains(&field.to_ascii_lowercase()),
        "msg should name {field:?}: {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// Asserts `v` is a pushed message: exactly `messageId` (16 hex chars), `sendUserId`, `code`,
/// `msg` and `data`.
pub fn assert_push_shape(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("push is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "data", "messageId", "msg", "sendUserId"],
        "push keys: {v}"
    );
    let id = v["messageId"].as_str().unwrap_or_default();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "messageId is not 16 hex chars: {v}"
    );
    assert!(v["sendUserId"].is_string(), "sendUserId: {v}");
    assert!(v["code"].is_i64(), "code: {v}");
    assert!(v["msg"].is_string(), "msg: {v}");
}

/// Checks a 1001/1002 push and returns its `data` decoded: `data` must be a JSON *string* holding
/// `{"clientId","userId","extend"}`, and `sendUserId` must be empty.
pub fn presence(v: &Value, code: i64) -> Value {
    assert_push_shape(v);
    assert_eq!(v["code"], code, "expected a {code} push: {v}");
    assert_eq!(v["sendUserId"], "", "presence push sendUserId: {v}");
    let text = v["data"]
        .as_str()
        .unwrap_or_else(|| panic!("presence data must be a JSON string: {v}"));
    let inner: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("presence data is not JSON text ({e}): {v}"));
    for key in ["clientId", "userId", "extend"] {
        assert!(inner[key].is_string(), "presence data lacks {key}: {v}");
    }
    inner
}

/// A WebSocket client over a blocking `TcpStream`.
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
    pub client_id: String,
}

/// Opens a WebSocket to `path_and_query` and returns it before reading anything.
pub fn ws_handshake(port: u16, path_and_query: &str) -> WebSocket<TcpStream> {
    ws_handshake_over(connect(port), port, path_and_query)
}

/// [`ws_handshake`] over a socket the caller connected (e.g. with its own buffer sizes).
pub fn ws_handshake_over(
    stream: TcpStream,
    port: u16,
    path_and_query: &str,
) -> WebSocket<TcpStream> {
    let url = format!("ws://127.0.0.1:{port}{path_and_query}");
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            ws
        }
        Err(e) => panic!("WebSocket handshake to {path_and_query} failed: {e}"),
    }
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code (1005 when it had none).
    Close(u16),
    /// EOF or reset without a close frame.
    Dropped,
}

impl Ws {
    /// Connects to `/ws?systemId=<system>` and reads the welcome frame
    /// `{"code":0,"msg":"success","data":{"clientId":...}}`.
    pub fn connect(port: u16, system: &str) -> Ws {
        Ws::connect_over(connect(port), port, system)
    }

    /// A client whose socket asks the kernel for a receive buffer of only `rcvbuf` bytes (set
    /// before connecting, so the TCP window stays small): while it does not read, what the
    /// server pushes piles up in the server's own queue rather than in kernel buffers.
    pub fn connect_small_rcvbuf(port: u16, system: &str, rcvbuf: usize) -> Ws {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        socket.connect(&addr.into()).expect("connect to wspush");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Ws::connect_over(stream, port, system)
    }

    /// Handshake for `system` over `stream`, then the welcome frame (see [`Ws::connect`]).
    pub fn connect_over(stream: TcpStream, port: u16, system: &str) -> Ws {
        let mut ws = Ws {
            ws: ws_handshake_over(stream, port, &format!("/ws?systemId={system}")),
            client_id: String::new(),
        };
        let welcome = ws.recv_json();
        let obj = welcome.as_object().expect("welcome is an object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "data", "msg"], "welcome keys: {welcome}");
        assert_eq!(welcome["code"], 0, "welcome: {welcome}");
        assert_eq!(welcome["msg"], "success", "welcome: {welcome}");
        let id = welcome["data"]["clientId"]
            .as_str()
            .unwrap_or_else(|| panic!("welcome has no data.clientId: {welcome}"));
        assert!(!id.is_empty(), "empty clientId: {welcome}");
        ws.client_id = id.to_string();
        ws
    }

    /// The next message of any kind within `timeout`; `Ok(None)` on timeout.
    pub fn read_within(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Message>, Box<tungstenite::Error>> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.ws.get_mut().set_read_timeout(Some(timeout)).unwrap();
        let result = self.ws.read();
        self.ws
            .get_mut()
            .set_read_timeout(Some(IO_TIMEOUT))
            .unwrap();
        match result {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(Box::new(e)),
        }
    }

    /// The next text frame within [`IO_TIMEOUT`] as JSON; pings and pongs are skipped (and
    /// answered by tungstenite).
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_within(IO_TIMEOUT)
    }

    pub fn recv_json_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "client {}: no text frame within {timeout:?}",
                    self.client_id
                );
            }
            match self.read_within(left) {
                Ok(Some(Message::Text(t))) => {
                    return serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {t:?}"))
                }
                Ok(Some(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Ok(Some(other)) => panic!(
                    "client {}: expected a text frame, got {other:?}",
                    self.client_id
                ),
                Ok(None) => {}
                Err(e) => panic!(
                    "client {}: connection failed while waiting for a text frame: {e}",
                    self.client_id
                ),
            }
        }
    }

    /// The next push that is not a member event (1001/1002).
    pub fn next_push(&mut self) -> Value {
        loop {
            let v = self.recv_json();
            if v["code"] != 1001 && v["code"] != 1002 {
                return v;
            }
        }
    }

    /// The `data.n` of the next `n` pushes that are not member events.
    pub fn next_ns(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| self.next_push()["data"]["n"].as_u64().unwrap())
            .collect()
    }

    /// Asserts no text, binary or close frame arrives within `ms` milliseconds.
    pub fn expect_nothing(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.read_within(left) {
                Ok(None) | Ok(Some(Message::Ping(_) | Message::Pong(_))) => {}
                Ok(Some(m)) => panic!("client {}: expected nothing, got {m:?}", self.client_id),
                Err(e) => panic!(
                    "client {}: expected nothing, connection failed: {e}",
                    self.client_id
                ),
            }
        }
    }

    /// Reads until the server ends the connection (within `timeout`), skipping pings and
    /// (when `skip_text`) text frames; panics on timeout.
    pub fn expect_end(&mut self, timeout: Duration, skip_text: bool) -> Ended {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "client {}: connection still open after {timeout:?}",
                    self.client_id
                );
            }
            match self.read_within(left) {
                Ok(Some(Message::Close(frame))) => {
                    // Let tungstenite answer the close; the server may already be gone.
                    let _ = self.ws.flush();
                    return Ended::Close(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(Some(Message::Text(t))) if !skip_text => panic!(
                    "client {}: expected the connection to end, got text {t:?}",
                    self.client_id
                ),
                Ok(Some(Message::Binary(b))) => {
                    panic!("client {}: unexpected binary frame {b:?}", self.client_id)
                }
                Ok(_) => {}
                Err(_) => return Ended::Dropped,
            }
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string()))
            .expect("send text");
    }

    /// Sends one raw (masked) frame.
    pub fn send_frame(&mut self, opcode: Data, payload: &[u8], fin: bool) {
        self.ws
            .send(Message::Frame(Frame::message(
                payload.to_vec(),
                OpCode::Data(opcode),
                fin,
            )))
            .expect("send frame");
    }

    /// Closes with a close frame (code 1000) and waits for the server's answer.
    pub fn close(mut self) {
        self.ws.close(None).expect("send close frame");
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) if is_timeout(&e) => panic!("server did not answer the close frame"),
                Err(_) => return,
            }
        }
    }

    /// Drops the TCP connection without a close frame: FIN when `reset` is false, RST (SO_LINGER
    /// 0) when true.
    pub fn drop_abruptly(self, reset: bool) {
        let stream = self.ws.get_ref();
        if reset {
            set_linger_zero(stream);
        } else {
            stream.shutdown(Shutdown::Both).expect("shutdown");
        }
        drop(self);
    }
}

/// Makes the next close of `stream` send RST instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized, initialised linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}

/// Binds `ws` to `group` in `system` and asserts code 0.
pub fn bind(port: u16, system: &str, ws: &Ws, group: &str, user: &str, extend: &str) {
    let v = api(
        port,
        Some(system),
        "/api/bind_to_group",
        &json!({"clientId": ws.client_id, "groupName": group, "userId": user, "extend": extend}),
    );
    assert_eq!(v["code"], 0, "bind_to_group: {v}");
}

/// The sorted member list of `group`, after checking `count` matches it.
pub fn online_list(port: u16, system: &str, group: &str) -> Vec<String> {
    let v = api(
        port,
        Some(system),
        "/api/get_online_list",
        &json!({ "groupName": group }),
    );
    assert_eq!(v["code"], 0, "get_online_list: {v}");
    let list = v["data"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("data.list is not an array: {v}"));
    assert_eq!(
        v["data"]["count"].as_u64(),
        Some(list.len() as u64),
        "count must match list: {v}"
    );
    let mut ids: Vec<String> = list
        .iter()
        .map(|x| x.as_str().expect("list of strings").to_string())
        .collect();
    ids.sort();
    ids
}

/// Sorted copy of some client ids.
pub fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// bind_to_group with `since` (issue 15's recovery); the whole answer.
pub fn bind_since(port: u16, system: &str, ws: &Ws, group: &str, since: Value) -> Value {
    api(
        port,
        Some(system),
        "/api/bind_to_group",
        &json!({"clientId": ws.client_id, "groupName": group, "since": since}),
    )
}
