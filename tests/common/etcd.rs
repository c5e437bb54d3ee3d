//! A real etcd (apt `etcd-server`, installed by `scripts/setup.sh`) and wspush nodes in cluster
//! mode registered in it.
//!
//! As in the rest of the harness nothing sleeps to wait for a state: etcd is polled on
//! `/health`, nodes on `/readyz`, and [`converge`] polls until every node reaches every other
//! through the real API.

use super::{
    api, free_ports, temp_dir, try_http, unique, wait_http, Response, Server, WaitEnd, Ws, BIN,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;

pub const ETCD: &str = "/usr/bin/etcd";
/// How long etcd gets to answer `{"health":"true"}` on `/health`.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// `[wspush] RpcTimeoutMs` of every test node: the deadline of one node-to-node call.
pub const RPC_TIMEOUT_MS: u64 = 1000;
/// The membership lease TTL the nodes use (API.md).
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How long [`converge`] waits for every node to reach every other.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);

/// A single-member etcd on free ports with its own data dir. Killed (and its dir removed) on
/// drop; when the dropping thread panics its log is printed and the dir is kept.
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    /// Set by [`Etcd::start_tls`]: clients speak TLS, and `/health` moves to a plain-HTTP
    /// metrics listener on its own port.
    tls: Option<EtcdTls>,
    child: Option<Child>,
}

/// How a TLS etcd runs: its server certificate, and whether it wants client certificates.
#[derive(Clone)]
struct EtcdTls {
    pki: TestPki,
    client_cert_auth: bool,
    metrics_port: u16,
}

/// Certificates made for one test by `openssl`, in a directory of their own: a CA, etcd's
/// server certificate for 127.0.0.1 and a client certificate, both signed by that CA. P-256
/// keys (quick to make), PKCS#8 PEM, valid for a day.
#[derive(Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = temp_dir("pki");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=wspush test CA"];
        ca.extend(key);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        for (name, cn, usage) in [
            ("server", "127.0.0.1", "serverAuth"),
            ("client", "wspush-node", "clientAuth"),
        ] {
            let mut req = vec!["req", "-new", "-subj"];
            let subject = format!("/CN={cn}");
            req.push(&subject);
            req.extend(key);
            let (key_file, csr) = (format!("{name}.key"), format!("{name}.csr"));
            req.extend(["-keyout", &key_file, "-out", &csr]);
            openssl(&req);
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                     extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1\n"
                ),
            )
            .unwrap();
            let pem = format!("{name}.pem");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ]);
        }
        TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }
}

impl Etcd {
    /// Starts etcd and waits until it is healthy (a leader is elected).
    pub fn start() -> Etcd {
        Etcd::start_with(None)
    }

    /// Starts etcd serving clients over TLS with `pki`'s server certificate; with
    /// `client_cert_auth` it also wants a client certificate signed by `pki`'s CA.
    pub fn start_tls(pki: &TestPki, client_cert_auth: bool) -> Etcd {
        Etcd::start_with(Some((pki.clone(), client_cert_auth)))
    }

    fn start_with(tls: Option<(TestPki, bool)>) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: the cluster tests need a real etcd \
             (apt-get install etcd-server, or WSPUSH_SETUP_TEST=1 ./scripts/setup.sh)"
        );
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let (client_port, peer_port) = free_ports();
            let tls = tls.clone().map(|(pki, client_cert_auth)| EtcdTls {
                pki,
                client_cert_auth,
                metrics_port: free_ports().0,
            });
            let mut etcd = Etcd {
                client_port,
                peer_port,
                dir: temp_dir("etcd"),
                tls,
                child: None,
            };
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(why) => {
                    last_log = format!("{why}\n--- etcd log ---\n{}", etcd.log());
                    etcd.stop();
                    // Retried: a port picked free and taken again before etcd bound it, or etcd
                    // killed by a signal before it served (seen once under load: SIGKILL from
                    // outside the test, empty log). Anything else fails at once.
                    let killed = why.contains("signal");
                    if !killed && !last_log.to_ascii_lowercase().contains("in use") {
                        panic!("etcd did not start: {last_log}");
                    }
                }
            }
        }
        panic!("etcd did not start in three attempts; the last: {last_log}");
    }

    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(ETCD);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.pki.server_cert)
                .arg("--key-file")
                .arg(&tls.pki.server_key)
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", tls.metrics_port));
            if tls.client_cert_auth {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&tls.pki.ca);
            }
        }
        let child = command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            // A single member: shorter raft timers make a restart elect itself sooner.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        self.child = Some(child);
        self.wait_healthy()
    }

    /// Polls `GET /health` until it answers `"health":"true"`, etcd exits, or
    /// [`ETCD_READY_TIMEOUT`] passes.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().unwrap();
        let healthy = |r: &Response| r.status == 200 && r.text().contains("\"health\":\"true\"");
        let port = self
            .tls
            .as_ref()
            .map_or(self.client_port, |t| t.metrics_port);
        match wait_http(child, port, "/health", ETCD_READY_TIMEOUT, healthy) {
            Ok(()) => Ok(()),
            Err(WaitEnd::Exited(status)) => {
                self.child = None;
                Err(format!("etcd exited early with {status}"))
            }
            Err(WaitEnd::TimedOut) => {
                Err(format!("/health not true within {ETCD_READY_TIMEOUT:?}"))
            }
        }
    }

    /// `127.0.0.1:<client port>`, the form `[etcd] Endpoints` takes (TLS or not: with
    /// `CaFile` set, a node speaks TLS to a bare host:port).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// One call to etcd's v3 JSON gateway (plain HTTP etcd only); panics unless it is a 200.
    fn gateway(&self, path: &str, body: Value) -> Value {
        let resp = try_http(
            self.client_port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        assert_eq!(resp.status, 200, "etcd {path} {body}: {}", resp.text());
        resp.json()
    }

    /// Turns etcd's authentication on, as an operator following docs/auth.md does with
    /// etcdctl: a `root` user (etcd wants one before `auth enable`) and `user`/`password` with
    /// a role that may read and write the two prefixes wspush uses and nothing else. After
    /// this the gateway helpers ([`Etcd::put`], [`Etcd::get_prefix`]) are refused.
    pub fn enable_auth(&self, user: &str, password: &str) {
        let range = |prefix: &str| {
            let mut end = prefix.as_bytes().to_vec();
            *end.last_mut().unwrap() += 1;
            json!({"permType": "READWRITE", "key": B64.encode(prefix), "range_end": B64.encode(&end)})
        };
        self.gateway("/v3/auth/role/add", json!({"name": "root"}));
        self.gateway(
            "/v3/auth/user/add",
            json!({"name": "root", "password": unique("root-password")}),
        );
        self.gateway(
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        );
        self.gateway("/v3/auth/role/add", json!({"name": "wspush"}));
        for prefix in ["/wsServers/", "ws/account/"] {
            self.gateway(
                "/v3/auth/role/grant",
                json!({"name": "wspush", "perm": range(prefix)}),
            );
        }
        self.gateway(
            "/v3/auth/user/add",
            json!({"name": user, "password": password}),
        );
        self.gateway(
            "/v3/auth/user/grant",
            json!({"user": user, "role": "wspush"}),
        );
        self.gateway("/v3/auth/enable", json!({}));
        // Without credentials the gateway is now refused.
        let resp = try_http(
            self.client_port,
            "POST",
            "/v3/kv/range",
            &[("Content-Type", "application/json")],
            json!({"key": B64.encode("ws/account/")})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            resp.status != 200 || resp.text().contains("error"),
            "etcd still answers without credentials: {} {}",
            resp.status,
            resp.text()
        );
    }

    /// SIGKILLs etcd and reaps it; the data dir is kept for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn restart(&mut self) {
        if let Err(why) = self.launch() {
            panic!(
                "etcd did not restart: {why}\n--- etcd log ---\n{}",
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Every key under `prefix` with its value, read through etcd's v3 JSON gateway.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(&end) });
        let resp = try_http(
            self.client_port,
            "POST",
            "/v3/kv/range",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("etcd range {prefix:?}: {e}"));
        assert_eq!(resp.status, 200, "etcd range {prefix:?}: {}", resp.text());
        let v: Value = resp.json();
        let decode = |x: &Value| {
            String::from_utf8_lossy(&B64.decode(x.as_str().unwrap_or_default()).unwrap())
                .into_owned()
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.get_prefix(prefix).into_iter().map(|kv| kv.0).collect();
        keys.sort();
        keys
    }

    /// Puts `key` = `value` through etcd's v3 JSON gateway, as an operator (or the original
    /// go-websocket) writing etcd directly would.
    pub fn put(&self, key: &str, value: &str) {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let resp = try_http(
            self.client_port,
            "POST",
            "/v3/kv/put",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("etcd put {key:?}: {e}"));
        assert_eq!(resp.status, 200, "etcd put {key:?}: {}", resp.text());
    }

    /// Puts every `(key, value)` through the JSON gateway, 128 to a transaction (etcd's default
    /// `--max-txn-ops`): 100,000 keys in under 800 requests.
    pub fn put_many(&self, kvs: &[(String, String)]) {
        for chunk in kvs.chunks(128) {
            let puts: Vec<Value> = chunk
                .iter()
                .map(
                    |(k, v)| json!({"request_put": {"key": B64.encode(k), "value": B64.encode(v)}}),
                )
                .collect();
            let body = json!({ "success": puts });
            let resp = try_http(
                self.client_port,
                "POST",
                "/v3/kv/txn",
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            )
            .unwrap_or_else(|e| panic!("etcd txn: {e}"));
            assert_eq!(resp.status, 200, "etcd txn: {}", resp.text());
            assert!(
                resp.text().contains("\"succeeded\":true"),
                "etcd txn: {}",
                resp.text()
            );
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("WSPUSH_TEST_KEEP").is_some() {
            eprintln!("etcd test dir kept in {}", self.dir.display());
        } else if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- etcd log tail ({}) ---\n{}\n--- end of etcd log ---",
                self.dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The cluster config of one node: the original's keys with `Cluster = true`, then `[wspush]`
/// with the advertised host, the test's short RPC deadline and `extra`.
pub fn node_config_text(http_port: u16, rpc_port: u16, endpoints: &str, extra: &[&str]) -> String {
    let mut text = format!(
        "[common]\n\
         HttpPort = {http_port}\n\
         RPCPort = {rpc_port}\n\
         # 是否集群,单机则设为false\n\
         Cluster = true\n\
         CryptoKey = Adba723b7fe06819\n\
         \n\
         [etcd]\n\
         Endpoints = {endpoints}\n\
         \n\
         [wspush]\n\
         AdvertiseHost = 127.0.0.1\n\
         RpcTimeoutMs = {RPC_TIMEOUT_MS}\n"
    );
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A wspush node in cluster mode (`--cores 2`): a [`Server`] (so `port`, `signal`, `wait_exit`,
/// `ws`, ... work on it) plus its RPC port.
pub struct Node {
    pub server: Server,
    pub rpc_port: u16,
}

impl Deref for Node {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Node {
    /// Starts a node registered in `etcd` whose `[wspush]` section ends with `extra`; returns
    /// once `/readyz` is 200 (every core accepts and the node is registered under its lease).
    pub fn start(etcd: &Etcd, extra: &[&str]) -> Node {
        Node::start_with_endpoints(&etcd.endpoint(), extra)
    }

    /// Starts a node (on free ports) whose config has these `[etcd]` `Endpoints` and `[wspush]`
    /// `extra` lines; `etcd_keys` are `[etcd]` lines after `Endpoints` (credentials, TLS
    /// files). Returns at once, without waiting for anything.
    pub fn spawn(endpoints: &str, etcd_keys: &[&str], extra: &[&str]) -> Node {
        let (port, rpc_port) = free_ports();
        let dir = temp_dir("node");
        let config = dir.join("app.ini");
        let mut text = node_config_text(port, rpc_port, endpoints, extra);
        let at = text.find("\n\n[wspush]").expect("node config has [wspush]");
        let keys: String = etcd_keys.iter().map(|k| format!("\n{k}")).collect();
        text.insert_str(at, &keys);
        std::fs::write(&config, text).unwrap();
        let log = File::create(dir.join("server.log")).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config)
            .args(["--cores", "2"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn wspush");
        Node {
            server: Server {
                port,
                dir,
                child,
                exited: None,
            },
            rpc_port,
        }
    }

    pub fn start_with_endpoints(endpoints: &str, extra: &[&str]) -> Node {
        Node::start_with_access(endpoints, &[], extra)
    }

    /// [`Node::spawn`], then waits until `/readyz` is 200 (retrying on a port taken meanwhile).
    pub fn start_with_access(endpoints: &str, etcd_keys: &[&str], extra: &[&str]) -> Node {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let Node {
                mut server,
                rpc_port,
            } = Node::spawn(endpoints, etcd_keys, extra);
            let port = server.port;
            match server.wait_ready() {
                Ok(()) => return Node { server, rpc_port },
                Err(why) => {
                    last_log = server.stderr_log();
                    if !last_log.to_ascii_lowercase().contains("in use") {
                        // The node's own reason, if it still answers (e.g. which part is not
                        // ready yet).
                        let readyz = try_http(port, "GET", "/readyz", &[], b"")
                            .map(|r| format!("{} {}", r.status, r.text()))
                            .unwrap_or_else(|e| e.to_string());
                        panic!(
                            "cluster node (http {port}, rpc {rpc_port}) did not become ready: \
                             {why} (/readyz now: {readyz})\n--- node log ---\n{last_log}"
                        );
                    }
                }
            }
        }
        panic!("cluster node could not bind free ports three times\n--- node log ---\n{last_log}");
    }

    /// Starts `n` nodes at once (each waits for its own `/readyz`).
    pub fn start_many(etcd: &Etcd, n: usize, extra: &[&str]) -> Vec<Node> {
        let endpoint = etcd.endpoint();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| s.spawn(|| Node::start_with_endpoints(&endpoint, extra)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// `127.0.0.1:<RPCPort>`, the node's address in etcd and to its peers.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc_port)
    }

    /// The etcd key the node registers itself under.
    pub fn member_key(&self) -> String {
        format!("/wsServers/{}", self.addr())
    }
}

/// Registers a fresh system through `port`, retrying (with a new id each time, since a failed
/// attempt may still have been stored) until it succeeds; panics with the last answer once
/// `deadline` has passed.
pub fn register_fresh(port: u16, tag: &str, deadline: Instant) -> String {
    loop {
        let system = unique(tag);
        let v = api(port, None, "/api/register", &json!({ "systemId": system }));
        if v["code"] == 0 {
            return system;
        }
        assert!(
            Instant::now() < deadline,
            "register through :{port} still fails: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sorted `get_online_list` of `group`, or the whole answer when it is not code 0.
pub fn try_online_list(port: u16, system: &str, group: &str) -> Result<Vec<String>, Value> {
    let v = api(
        port,
        Some(system),
        "/api/get_online_list",
        &json!({ "groupName": group }),
    );
    if v["code"] != 0 {
        return Err(v);
    }
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
    Ok(ids)
}

/// Waits (≤ [`CONVERGE_TIMEOUT`]) until every node reaches every other: one probe client per
/// node, all bound into one group, until `get_online_list` through every node lists all of them
/// (group fan-out sees every peer), then, for each ordered pair (A, B), `send_to_client` through
/// A to B's probe until the push arrives. The probes use a system of their own and are dropped
/// at the end.
pub fn converge<'a>(nodes: impl IntoIterator<Item = &'a Node>) {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let system = register_fresh(nodes[0].port, "converge", deadline);
    let mut probes: Vec<Ws> = nodes.iter().map(|n| n.ws(&system)).collect();
    let mut want: Vec<String> = probes.iter().map(|p| p.client_id.clone()).collect();
    want.sort();

    for (i, node) in nodes.iter().enumerate() {
        loop {
            let v = api(
                node.port,
                Some(&system),
                "/api/bind_to_group",
                &json!({"clientId": probes[i].client_id, "groupName": "everyone", "userId": format!("probe{i}"), "extend": ""}),
            );
            if v["code"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge within {CONVERGE_TIMEOUT:?}: bind through node {i} \
                 (:{}) fails: {v}",
                node.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let got = try_online_list(node.port, &system, "everyone");
            if got.as_ref() == Ok(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge within {CONVERGE_TIMEOUT:?}: get_online_list through \
                 node {i} (:{}) answers {got:?}, want all probes {want:?}",
                node.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (a, from) in nodes.iter().enumerate() {
        for b in 0..nodes.len() {
            if a == b {
                continue;
            }
            let mut tries = 0;
            'pair: loop {
                tries += 1;
                let v = api(
                    from.port,
                    Some(&system),
                    "/api/send_to_client",
                    &json!({"clientId": probes[b].client_id, "sendUserId": "", "code": 4242, "msg": "probe", "data": {"from": a}}),
                );
                if v["code"] == 0 {
                    let until = Instant::now() + Duration::from_millis(300);
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        match probes[b].read_within(left) {
                            Ok(Some(Message::Text(t))) => {
                                let m: Value = serde_json::from_str(&t).unwrap_or_default();
                                if m["code"] == 4242 && m["data"]["from"] == a {
                                    break 'pair;
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => panic!("probe client on node {b} failed: {e}"),
                        }
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not converge within {CONVERGE_TIMEOUT:?}: send_to_client \
                     through node {a} (:{}) to a client on node {b} (:{}) never arrived \
                     ({tries} tries, last answer {v})",
                    from.port,
                    nodes[b].port
                );
            }
        }
    }
}

/// A TCP forwarder in front of etcd for one node, so a test can cut that node alone off from
/// etcd (a partition) while the others keep reaching it. [`EtcdProxy::cut`] resets every
/// forwarded connection and refuses new ones (accepted and closed at once) until
/// [`EtcdProxy::restore`].
pub struct EtcdProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl EtcdProxy {
    pub fn start(etcd: &Etcd) -> EtcdProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the etcd proxy");
        let port = listener.local_addr().unwrap().port();
        let target = etcd.client_port;
        let proxy = EtcdProxy {
            port,
            cut: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (cut, stop, open) = (proxy.cut.clone(), proxy.stop.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut registry = open.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                registry.push(client);
                registry.push(server);
            }
        });
        proxy
    }

    /// `127.0.0.1:<proxy port>`, for the cut-off node's `[etcd] Endpoints`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts the node off from etcd: open connections are shut, new ones closed at once.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for EtcdProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `node`'s `host:RPCPort` as an address (what `wspush::types::stream_owner` ranks).
pub fn addr(node: &Node) -> std::net::SocketAddrV4 {
    node.addr().parse().unwrap()
}

/// A group of `system` whose stream (history, occupancy) `owner` owns among `nodes`.
pub fn group_owned_by(system: &str, owner: &Node, nodes: &[&Node]) -> String {
    let addrs: Vec<std::net::SocketAddrV4> = nodes.iter().map(|n| addr(n)).collect();
    (0..)
        .map(|i| format!("room{i}"))
        .find(|g| {
            wspush::types::stream_owner(system, g, addrs.iter().copied()) == Some(addr(owner))
        })
        .unwrap()
}
