//! The etcd thread against a real etcd (`/usr/bin/etcd`): membership, registration, the
//! watch, an outage and a graceful leave, end to end.

use super::*;
use crate::types::SystemInfo;
use etcd_client::{Client, PutOptions};
use std::net::SocketAddrV4;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant as StdInstant;
use tokio::sync::oneshot;

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

const ETCD_BIN: &str = "/usr/bin/etcd";

struct Recorder(Mutex<std_mpsc::Sender<ToCores>>);

impl CoreNotifier for Recorder {
    fn notify(&self, msg: ToCores) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(msg);
        }
    }
}

fn recorder() -> (Arc<dyn CoreNotifier>, std_mpsc::Receiver<ToCores>) {
    let (tx, rx) = std_mpsc::channel();
    (Arc::new(Recorder(Mutex::new(tx))), rx)
}

/// Kills etcd and removes its data dir when dropped (also on panic).
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    fn start(dir: PathBuf, client_port: u16, peer_port: u16) -> Etcd {
        let mut e = Etcd {
            child: None,
            dir,
            client_port,
            peer_port,
        };
        e.restart();
        e
    }

    fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.with_extension("log")).ok();
        let stderr = match log {
            Some(f) => Stdio::from(f),
            None => Stdio::null(),
        };
        let child = Command::new(ETCD_BIN)
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start /usr/bin/etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Receives until `pred` matches (returns the match) or `within` passes (panics, showing what
/// came). Everything received before the match is appended to `seen`.
fn wait_for(
    rx: &std_mpsc::Receiver<ToCores>,
    within: Duration,
    what: &str,
    seen: &mut Vec<ToCores>,
    pred: impl Fn(&ToCores) -> bool,
) -> ToCores {
    let deadline = StdInstant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(StdInstant::now());
        match rx.recv_timeout(left) {
            Ok(m) if pred(&m) => return m,
            Ok(m) => seen.push(m),
            Err(_) => panic!("timed out after {within:?} waiting for {what}; got {seen:?}"),
        }
    }
}

fn ask<T>(
    m: &Membership,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> EtcdRequest,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    m.send(make(tx));
    rx.blocking_recv()
        .expect("etcd thread answers every request")
}

fn register(m: &Membership, system: &str) -> Result<bool, String> {
    ask(m, |reply| EtcdRequest::Register {
        system: system.to_string(),
        info: SystemInfo::default(),
        reply,
    })
}

fn is_registered(m: &Membership, system: &str) -> Result<bool, String> {
    ask(m, |reply| EtcdRequest::IsRegistered {
        system: system.to_string(),
        reply,
    })
    .map(|info| info.is_some())
}

fn has_system(m: &ToCores, name: &str) -> bool {
    matches!(m, ToCores::SystemsAdded(s) if s.iter().any(|(s, _)| s == name))
}

fn shutdown(m: &Membership) {
    let (tx, rx) = oneshot::channel();
    m.send(EtcdRequest::Shutdown { reply: tx });
    rx.blocking_recv().expect("shutdown reply");
}

fn is_peers_with(addr: SocketAddrV4) -> impl Fn(&ToCores) -> bool {
    move |m| matches!(m, ToCores::Peers(p) if p.contains(&addr))
}

#[test]
fn against_real_etcd() {
    if !std::path::Path::new(ETCD_BIN).exists() {
        eprintln!("skipping: {ETCD_BIN} not installed");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("wspush=debug")
        .try_init();
    let started = StdInstant::now();
    let dir = std::env::temp_dir().join(format!(
        "wspush-membership-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut etcd = Etcd::start(dir, free_port(), free_port());
    let config = |self_addr: SocketAddrV4| MembershipConfig {
        endpoints: vec![etcd.endpoint()],
        self_addr,
        lease_ttl_secs: 5,
        request_timeout: Duration::from_secs(1),
        access: EtcdAccess::default(),
    };
    let a_addr = addr("127.0.0.1:17901");
    let b_addr = addr("127.0.0.1:17902");
    let c_addr = addr("127.0.0.1:17903");
    let (a_notifier, a_rx) = recorder();
    let (b_notifier, b_rx) = recorder();
    let a = spawn(config(a_addr), a_notifier).unwrap();
    let b = spawn(config(b_addr), b_notifier).unwrap();
    let long = Duration::from_secs(8);
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();

    // Both establish membership and see each other.
    wait_for(&a_rx, long, "A connected", &mut seen_a, |m| {
        *m == ToCores::EtcdConnected(true)
    });
    wait_for(&b_rx, long, "B connected", &mut seen_b, |m| {
        *m == ToCores::EtcdConnected(true)
    });
    if !seen_a.iter().any(is_peers_with(b_addr)) {
        wait_for(&a_rx, long, "A sees B", &mut seen_a, is_peers_with(b_addr));
    }
    if !seen_b.iter().any(is_peers_with(a_addr)) {
        wait_for(&b_rx, long, "B sees A", &mut seen_b, is_peers_with(a_addr));
    }
    for (me, seen) in [(a_addr, &seen_a), (b_addr, &seen_b)] {
        for m in seen {
            assert!(
                !matches!(m, ToCores::Peers(p) if p.contains(&me)),
                "{me} listed itself: {m:?}"
            );
        }
    }

    // Atomic register; the other node learns it through the watch.
    assert_eq!(register(&a, "sysX"), Ok(true));
    assert_eq!(register(&b, "sysX"), Ok(false));
    assert_eq!(register(&a, "sysX"), Ok(false));
    let sys_x = |m: &ToCores| has_system(m, "sysX");
    wait_for(&b_rx, long, "B learns sysX", &mut seen_b, sys_x);
    wait_for(&a_rx, long, "A learns sysX", &mut seen_a, sys_x);
    assert_eq!(is_registered(&b, "sysX"), Ok(true));
    assert_eq!(is_registered(&b, "nope"), Ok(false));

    // Graceful leave: B's key goes at once (lease revoked), not after the TTL.
    let t0 = StdInstant::now();
    shutdown(&b);
    wait_for(
        &a_rx,
        Duration::from_millis(1500),
        "A drops B",
        &mut seen_a,
        |m| matches!(m, ToCores::Peers(p) if !p.contains(&b_addr)),
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "peer drop took {:?}",
        t0.elapsed()
    );
    // A shut-down membership drops requests (their reply channel closes).
    let (tx, rx) = oneshot::channel();
    b.send(EtcdRequest::IsRegistered {
        system: "sysX".into(),
        reply: tx,
    });
    assert!(rx.blocking_recv().is_err());

    // A third node joins.
    let (c_notifier, c_rx) = recorder();
    let c = spawn(config(c_addr), c_notifier).unwrap();
    let mut seen_c = Vec::new();
    wait_for(&a_rx, long, "A sees C", &mut seen_a, is_peers_with(c_addr));
    wait_for(&c_rx, long, "C connected", &mut seen_c, |m| {
        *m == ToCores::EtcdConnected(true)
    });
    assert!(
        seen_c.iter().any(|m| has_system(m, "sysX")),
        "C got the full system list on connect: {seen_c:?}"
    );

    // A node that dies (nobody keeps its lease alive) is dropped when its lease expires; a node
    // key that is not an ip:port is ignored.
    let dead = addr("127.0.0.1:17999");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut raw = Client::connect([etcd.endpoint()], None).await.unwrap();
        let lease = raw.lease_grant(2, None).await.unwrap().id();
        raw.put("/wsServers/not-an-address", "nope", None)
            .await
            .unwrap();
        let opts = PutOptions::new().with_lease(lease);
        raw.put(server_key(dead), dead.to_string(), Some(opts))
            .await
            .unwrap();
    });
    drop(rt);
    let m = wait_for(
        &a_rx,
        long,
        "A sees the short-lived node",
        &mut seen_a,
        is_peers_with(dead),
    );
    assert_eq!(m, ToCores::Peers(vec![c_addr, dead]));
    let t0 = StdInstant::now();
    wait_for(
        &a_rx,
        Duration::from_secs(6),
        "A drops the dead node",
        &mut seen_a,
        |m| *m == ToCores::Peers(vec![c_addr]),
    );
    eprintln!(
        "dead node dropped {:?} after its last put (lease TTL 2 s)",
        t0.elapsed()
    );

    // etcd dies: both notice, requests fail fast, the peer table is kept (no Peers sent).
    seen_a.clear();
    etcd.kill();
    wait_for(&a_rx, long, "A loses etcd", &mut seen_a, |m| {
        *m == ToCores::EtcdConnected(false)
    });
    let t0 = StdInstant::now();
    let r = register(&a, "sysY");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "register while down took {:?}",
        t0.elapsed()
    );
    assert!(
        matches!(&r, Err(e) if e.contains("etcd unreachable")),
        "{r:?}"
    );
    assert!(matches!(is_registered(&a, "sysX"), Err(e) if e.contains("etcd unreachable")));
    wait_for(&c_rx, long, "C loses etcd", &mut seen_c, |m| {
        *m == ToCores::EtcdConnected(false)
    });

    // etcd comes back on the same port and data: everything is re-established and re-sent.
    etcd.restart();
    let mut during = Vec::new();
    wait_for(
        &a_rx,
        Duration::from_secs(10),
        "A regains etcd",
        &mut during,
        |m| *m == ToCores::EtcdConnected(true),
    );
    assert!(
        during.iter().any(|m| has_system(m, "sysX")),
        "full system list re-sent: {during:?}"
    );
    assert!(
        !during
            .iter()
            .chain(&seen_a)
            .any(|m| *m == ToCores::Peers(vec![])),
        "an empty peer set was sent: {seen_a:?} {during:?}"
    );
    let peers_c = |m: &ToCores| *m == ToCores::Peers(vec![c_addr]);
    if !during.iter().any(peers_c) {
        wait_for(&a_rx, long, "A sees C again", &mut during, peers_c);
    }
    wait_for(&c_rx, long, "C regains etcd", &mut seen_c, |m| {
        *m == ToCores::EtcdConnected(true)
    });
    assert_eq!(register(&c, "sysZ"), Ok(true));
    wait_for(&a_rx, long, "A learns sysZ", &mut during, |m| {
        *m == ToCores::SystemsAdded(vec![("sysZ".to_string(), Arc::default())])
    });

    shutdown(&c);
    shutdown(&a);
    drop(etcd);
    eprintln!("against_real_etcd took {:?}", started.elapsed());
}
