//! Criterion benches of wspush's pieces: each piece alone, without a server around it. The
//! fan-out bench runs a real shard on a glommio executor, its members on socketpairs.
//!
//! `cargo bench --bench pieces` (the run itself takes under two minutes on a 2-core machine);
//! `cargo bench --bench pieces -- fanout` runs one group. The whole system is measured by the
//! load generator in `perf/`; these benches find which piece moved when a figure there does.
//!
//! Every group says in a comment what regression it guards. Inputs are built outside the timed
//! closures and each result goes through `black_box`, so the optimizer can neither hoist the
//! work out of the loop nor drop it.

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Read;
use std::net::SocketAddrV4;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wspush::api::request::{self, Push, PushToClients};
use wspush::cluster::proto::{self, Frame, RemoteOp, RemoteReply, Target};
use wspush::config::Config;
use wspush::ids::{ClientAddr, IdCodec, CLIENT_ID_LEN};
use wspush::net::{handshake, http};
use wspush::shard::conn::Conn;
use wspush::shard::registry::Registry;
use wspush::shard::Shard;
use wspush::ws::frame::SharedFrame;
use wspush::ws::message;

// The server runs on mimalloc (src/main.rs); allocation-heavy pieces must be measured on it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The original's default CryptoKey (conf/app.ini).
const CRYPTO_KEY: &str = "Adba723b7fe06819";
const MESSAGE_ID: &str = "3f9c2a7b81d04e56";
const NODE: &str = "10.1.2.3:7900";

/// Short warm-up and measurement: about 30 benches must finish in well under three minutes.
fn quick<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(800));
    g.measurement_time(Duration::from_secs(2));
    g
}

fn addr(slot: u32) -> ClientAddr {
    ClientAddr {
        node: NODE.parse::<SocketAddrV4>().unwrap(),
        core: (slot % 2) as u8,
        slot,
        generation: 3,
    }
}

/// `n` clientIds as the server seals them.
fn client_ids(n: u32) -> Vec<String> {
    let codec = IdCodec::new(CRYPTO_KEY);
    (0..n).map(|slot| codec.seal(&addr(slot))).collect()
}

/// A JSON string literal of exactly `len` bytes (quotes included): a pushed `data` of that size.
fn json_string(len: usize) -> String {
    assert!(len >= 2);
    format!("\"{}\"", "x".repeat(len - 2))
}

// ---- 1. WebSocket accept key --------------------------------------------------------------------

/// Guards the per-handshake hashing (SHA-1 + base64): the handshakes/s target (30,000 per core)
/// leaves ~33 us per connect for everything, and this should stay well under 1 us of it.
fn accept_key(c: &mut Criterion) {
    // RFC 6455 section 1.3's sample.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(handshake::accept_key(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let mut g = quick(c, "accept_key");
    g.bench_function("rfc6455_sample", |b| {
        b.iter(|| handshake::accept_key(black_box(key)))
    });
    g.finish();
}

// ---- 2. HTTP head parse -------------------------------------------------------------------------

/// Guards `parse_head`, paid once per API request (keep-alive or nginx's one request per
/// connection) and once per WebSocket upgrade: the 150,000 req/s target leaves ~6.7 us per request,
/// of which a head should take a few hundred ns at most. A regression here is usually an extra
/// allocation or a header copied that no route reads.
fn http_head(c: &mut Criterion) {
    let body_len = 118;
    let api = format!(
        "POST /api/send_to_client HTTP/1.1\r\n\
         Host: ws.example.com:666\r\n\
         User-Agent: GuzzleHttp/7\r\n\
         Accept: */*\r\n\
         Content-Type: application/json\r\n\
         SystemId: order-system\r\n\
         Content-Length: {body_len}\r\n\r\n"
    );
    // What nginx's `location /api` block (conf/nginx.conf) sends upstream: HTTP/1.0, its
    // Connection: close, and the proxy_set_header lines ahead of the client's own headers.
    let nginx = format!(
        "POST /api/send_to_client HTTP/1.0\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         Host: ws.example.com:660\r\n\
         Connection: close\r\n\
         Content-Length: {body_len}\r\n\
         User-Agent: GuzzleHttp/7\r\n\
         Accept: */*\r\n\
         Content-Type: application/json\r\n\
         SystemId: order-system\r\n\r\n"
    );
    // The /ws upgrade as nginx's `location /ws` block forwards it.
    let upgrade = "GET /ws?systemId=order-system HTTP/1.1\r\n\
         Upgrade: websocket\r\n\
         Connection: upgrade\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         Host: ws_cluster\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36\r\n\
         Origin: https://ws.example.com\r\n\r\n"
        .to_string();

    let max_head = Config::default().max_head_bytes;
    let mut g = quick(c, "http_head");
    for (name, head) in [
        ("api_post_http11", &api),
        ("nginx_post_http10", &nginx),
        ("ws_upgrade", &upgrade),
    ] {
        let (parsed, used) = http::parse_head(head.as_bytes(), max_head)
            .unwrap()
            .unwrap();
        assert_eq!(used, head.len());
        assert!(parsed.path == "/api/send_to_client" || parsed.path == "/ws");
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| http::parse_head(black_box(head.as_bytes()), max_head))
        });
    }
    g.finish();
}

// ---- 2b. HTTP request bodies --------------------------------------------------------------------

/// The bytes of one read of the listener (`read_some` reads at most 4 KiB).
const READ: usize = 4096;

/// A body read as the listener reads a Content-Length one: 4 KiB reads appended to the buffer
/// (`read_some` grows it by 4 KiB, zeroed, then the read fills it) until the length is there.
/// The buffer starts at the connection's 1 KiB, as for every request nginx sends (one
/// connection each) and for a keep-alive one after a large request (the buffer shrinks back).
fn read_with_length(wire: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    for piece in wire.chunks(READ) {
        let start = buf.len();
        buf.resize(start + READ, 0);
        buf[start..start + piece.len()].copy_from_slice(piece);
        buf.truncate(start + piece.len());
    }
    buf
}

/// The same for a chunked body: each read lands in the buffer, is fed to the decoder, and is
/// dropped (`read_chunked`).
fn read_chunked(wire: &[u8], buf: &mut Vec<u8>, max_body: usize) -> Vec<u8> {
    let mut decoder = http::Dechunker::new(max_body);
    let mut body = Vec::new();
    for piece in wire.chunks(READ) {
        buf.clear();
        buf.resize(READ, 0);
        buf[..piece.len()].copy_from_slice(piece);
        buf.truncate(piece.len());
        if decoder.feed(buf, &mut body).unwrap().is_some() {
            return body;
        }
    }
    panic!("bug: the bench's chunked body did not end");
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut wire = Vec::with_capacity(body.len() * 2);
    for piece in body.chunks(chunk) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

/// Guards the chunked decoder against going back to quadratic: it decoded the whole body
/// again after every read, and a 2 MiB encoding (what MaxBodyBytes = 1 MiB admits) read 4 KiB
/// at a time cost seconds of a core, before any ApiKey check. Now a body costs one pass:
/// compare each chunking with the Content-Length read of the same 1 MiB, alone and with the
/// JSON decode every push request pays. 1-byte chunks are the worst a client can send: 6 bytes
/// of encoding per body byte (so MaxBodyBytes must be 4 MiB here to take a 1 MiB body).
/// `crlf_2B_chunks` was the old decoder's worst case (its data put `\r\n\r\n`, which made it
/// decode everything again, in every read): 1.8 s of a core for the 2 MiB of encoding the
/// default MaxBodyBytes admits, measured once on the code before this bench existed.
fn http_body(c: &mut Criterion) {
    let client_id = &client_ids(1)[0];
    let mut body = format!(r#"{{"clientId":"{client_id}","data":"#).into_bytes();
    let data = json_string((1 << 20) - body.len() - 1);
    body.extend_from_slice(data.as_bytes());
    body.push(b'}');
    assert_eq!(body.len(), 1 << 20);
    let max_body = 4 << 20;
    let mut buf = Vec::with_capacity(2 * READ);
    let mut g = quick(c, "http_body");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1MiB/content_length", |b| {
        b.iter(|| read_with_length(black_box(&body)))
    });
    g.bench_function("1MiB/content_length+json", |b| {
        b.iter(|| {
            let buf = read_with_length(black_box(&body));
            request::decode::<Push>(&buf).is_ok()
        })
    });
    let crlf = b"\r\n".repeat(1 << 19);
    for (name, body, chunk) in [
        ("4KiB_chunks", &body, 4096),
        ("100B_chunks", &body, 100),
        ("1B_chunks", &body, 1),
        ("crlf_2B_chunks", &crlf, 2),
    ] {
        let wire = chunked(body, chunk);
        assert_eq!(&read_chunked(&wire, &mut buf, max_body), body);
        g.bench_function(format!("1MiB/{name}"), |b| {
            b.iter(|| read_chunked(black_box(&wire), &mut buf, max_body))
        });
        if chunk == 1 {
            g.bench_function(format!("1MiB/{name}+json"), |b| {
                b.iter(|| {
                    let body = read_chunked(black_box(&wire), &mut buf, max_body);
                    request::decode::<Push>(&body).is_ok()
                })
            });
        }
    }
    g.finish();
}

// ---- 3. API body decode -------------------------------------------------------------------------

/// Guards the JSON decode of push requests (serde_json through serde_path_to_error, strings
/// borrowed, `data` kept raw): per request for send_to_client, per batch for send_to_clients.
/// A regression is typically a field that stopped borrowing (a copy per id) or `data` being
/// parsed into a Value instead of kept as raw text.
fn api_decode(c: &mut Criterion) {
    let ids = client_ids(100);
    let data = concat!(
        r#"{"orderId":"20240518-000731","status":"shipped","#,
        r#""items":[{"sku":"A-17","qty":2}],"note":"leave at the door"}"#
    );
    let rest = format!(r#""sendUserId":"admin-7","code":0,"msg":"order update","data":{data}}}"#);
    let push = format!(r#"{{"clientId":"{}",{rest}"#, ids[0]);
    let quoted: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    let push_many = format!(r#"{{"clientIds":[{}],{rest}"#, quoted.join(","));
    let p: Push = request::decode(push.as_bytes()).unwrap();
    assert_eq!(p.client_id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(p.fields.data.unwrap().get(), data);
    let p: PushToClients = request::decode(push_many.as_bytes()).unwrap();
    assert_eq!(p.client_ids.as_ref().map(Vec::len), Some(100));

    let mut g = quick(c, "api_decode");
    g.throughput(Throughput::Bytes(push.len() as u64));
    g.bench_function("push", |b| {
        b.iter(|| request::decode::<Push>(black_box(push.as_bytes())).is_ok())
    });
    g.throughput(Throughput::Bytes(push_many.len() as u64));
    g.bench_function("push_to_clients_100_ids", |b| {
        b.iter(|| request::decode::<PushToClients>(black_box(push_many.as_bytes())).is_ok())
    });
    g.finish();
}

// ---- 4. Pushed frame encoding -------------------------------------------------------------------

/// Guards `push_frame`, run once per pushed message whatever the number of recipients: its cost
/// should be a small constant plus about one copy of `data`. `one_copy_floor` is the bare
/// `Arc<[u8]>` of the same bytes, the least any encoding can do; the gap between the two is the
/// encoder's own overhead (today: a JSON buffer, a frame buffer, then the `Arc`, so three copies).
///
/// On AMD Zen 3 (this machine class) glibc's `memcpy` uses `rep movsb` for copies of 2,112 bytes
/// and more, which is many times slower there for some source/destination alignments; the 16 KiB
/// figures are then mostly that. To see the copies without it, run with
/// `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1000000000`.
fn push_frame(c: &mut Criterion) {
    let mut g = quick(c, "push_frame");
    for size in [64usize, 1024, 16 * 1024] {
        let data = json_string(size);
        let f = message::push_frame(MESSAGE_ID, "admin-7", 0, "order update", &data);
        assert!(f.len() > size && f[0] == 0x81);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                message::push_frame(
                    black_box(MESSAGE_ID),
                    black_box("admin-7"),
                    black_box(0),
                    black_box("order update"),
                    black_box(&data),
                )
            })
        });
        g.bench_function(format!("{size}B/one_copy_floor"), |b| {
            b.iter(|| SharedFrame::from(black_box(data.as_bytes())))
        });
    }
    g.finish();
}

// ---- 5. clientId seal and open ------------------------------------------------------------------

/// Guards the AES-256-GCM-SIV seal (once per connect) and open (once per clientId named by an
/// API call: send_to_clients with 1,000 ids opens 1,000). Rejecting a forged id must cost no
/// more than opening a good one (the tag check fails, nothing is decoded), and a wrong-length id
/// must be refused before any crypto.
fn client_id(c: &mut Criterion) {
    let codec = IdCodec::new(CRYPTO_KEY);
    let a = addr(123_456);
    let id = codec.seal(&a);
    assert_eq!(id.len(), CLIENT_ID_LEN);
    assert_eq!(codec.open(&id), Some(a));
    // One character changed in the ciphertext: right length, valid base64, wrong tag.
    let mut forged = id.clone().into_bytes();
    forged[30] = if forged[30] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(codec.open(&forged), None);
    let short = &id[..40];

    let mut g = quick(c, "client_id");
    g.bench_function("seal", |b| b.iter(|| codec.seal(black_box(&a))));
    g.bench_function("open", |b| b.iter(|| codec.open(black_box(&id))));
    g.bench_function("open_forged_rejected", |b| {
        b.iter(|| codec.open(black_box(&forged)))
    });
    g.bench_function("open_wrong_length_rejected", |b| {
        b.iter(|| codec.open(black_box(short)))
    });
    g.finish();
}

// ---- 6. Registry --------------------------------------------------------------------------------

/// A value the size of a real connection, so `insert` pays the same `Rc` allocation.
type ConnSized = [u8; std::mem::size_of::<Conn>()];

/// Guards the slot table: insert (one `Rc` allocation, a free-list pop or a push), lookup by
/// (slot, generation) on every API send (a bounds check and a compare: a few ns even in random
/// order over 10,000), and the remove/reinsert churn of clients reconnecting. A regression here is
/// a hash map or a scan sneaking into what must stay an index.
fn registry(c: &mut Criterion) {
    const N: u32 = 10_000;
    let mut reg: Registry<ConnSized> = Registry::default();
    let mut keys: Vec<(u32, u32)> = (0..N)
        .map(|_| {
            let mut key = (0, 0);
            reg.insert(|s, gen| {
                key = (s, gen);
                [0; std::mem::size_of::<Conn>()]
            });
            key
        })
        .collect();
    keys.shuffle(&mut StdRng::seed_from_u64(7));
    assert_eq!(reg.len(), N as usize);

    let mut g = quick(c, "registry");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("insert_10000", |b| {
        b.iter_batched(
            Registry::<ConnSized>::default,
            |mut r| {
                for _ in 0..N {
                    r.insert(|_, _| [0; std::mem::size_of::<Conn>()]);
                }
                r
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("get_10000_random_order", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            for &(slot, gen) in &keys {
                hits += reg.get(black_box(slot), black_box(gen)).is_some() as u32;
            }
            assert_eq!(hits, N);
        })
    });
    g.bench_function("get_10000_stale_generation", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            for &(slot, gen) in &keys {
                hits += reg.get(black_box(slot), black_box(gen + 1)).is_some() as u32;
            }
            assert_eq!(hits, 0);
        })
    });
    // Each element: one client leaves and another takes its slot, as in a reconnect storm.
    g.bench_function("remove_reinsert_10000", |b| {
        b.iter(|| {
            for key in keys.iter_mut() {
                let old = reg.remove(key.0, key.1);
                debug_assert!(old.is_some());
                drop(black_box(old));
                reg.insert(|s, gen| {
                    *key = (s, gen);
                    [0; std::mem::size_of::<Conn>()]
                });
            }
        })
    });
    g.finish();
    assert_eq!(reg.len(), N as usize);
}

// ---- 7. Group fan-out ---------------------------------------------------------------------------

/// Lets this process hold `fds` descriptors (up to its hard limit).
fn raise_fd_limit(fds: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur >= fds {
            return;
        }
        limit.rlim_cur = fds.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        if limit.rlim_cur < fds {
            panic!("the fanout bench needs {fds} file descriptors: raise `ulimit -Hn`");
        }
    }
}

/// Members that share one socketpair: 10,000 members on 5,000 sockets (and their 5,000 peer
/// ends) stay under the 20,000 descriptors a container often allows. Each member still gets a
/// `sendmsg` of its own.
const MEMBERS_PER_SOCKET: u32 = 2;

/// A real one-core [`Shard`] of `members` WebSockets in one group, on socketpairs whose other
/// ends are held here to be read. Never dropped (see [`Fleet::new`]).
struct Fleet {
    shard: Rc<Shard>,
    clients: Vec<socket2::Socket>,
}

impl Fleet {
    /// The members share sockets ([`MEMBERS_PER_SOCKET`]): their streams hold the same
    /// descriptor, so the fleet is leaked rather than closing it twice.
    fn new(members: u32) -> &'static Fleet {
        // The flush right after a push, as the mock of before measured it (no FlushWindowUs).
        let config = Config {
            flush_window: Duration::ZERO,
            ..Config::default()
        };
        let node: SocketAddrV4 = NODE.parse().unwrap();
        let shard = Rc::new(Shard::new(Arc::new(config), 0, 1, node));
        let peer = std::net::SocketAddr::V4(node);
        let mut clients = Vec::new();
        for _ in 0..members.div_ceil(MEMBERS_PER_SOCKET) {
            let (server, client) =
                socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            server.set_nonblocking(true).unwrap();
            client.set_nonblocking(true).unwrap();
            let fd = server.into_raw_fd();
            for _ in 0..MEMBERS_PER_SOCKET {
                // SAFETY: the socket stays open for the whole process (the fleet is leaked),
                // and nothing but these streams writes to it.
                let server: glommio::net::TcpStream =
                    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
                let conn = shard.add_conn(server, "bench", peer);
                let at = shard.ids.open(conn.client_id()).unwrap();
                let bound = shard.bind_local(
                    at.slot,
                    at.generation,
                    "bench",
                    "room",
                    "".into(),
                    "".into(),
                );
                assert!(matches!(bound, Ok(Some(b)) if b.first));
            }
            clients.push(client);
        }
        Box::leak(Box::new(Fleet { shard, clients }))
    }

    /// Reads what every member was sent; returns the bytes.
    fn drain(&self) -> u64 {
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        for client in &self.clients {
            while let Ok(n) = (&*client).read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        total
    }
}

/// Guards the per-recipient cost of a group push, on the server's own code: the group's members
/// from the index, an `Arc` clone and a queue push each, the dirty list, then the flusher's one
/// `sendmsg` of the gathered slices per member (to a socketpair: the kernel's part of a
/// delivery included, a TCP stack's not; two members per socket, see [`MEMBERS_PER_SOCKET`]). It is the 1,000,000 deliveries/s/core target's path
/// on one core. `4_pushes_per_flush` queues four messages before the flusher runs (a burst):
/// they must leave in one write per member. The members' ends are read between iterations,
/// outside the timing.
fn fanout(c: &mut Criterion) {
    const MEMBERS: u32 = 10_000;
    raise_fd_limit((2 * MEMBERS / MEMBERS_PER_SOCKET) as u64 + 1024);
    let executor = glommio::LocalExecutorBuilder::default().make().unwrap();
    // Criterion runs inside the executor: the shard queues, flushes and spawns on its thread.
    executor.run(async { fanout_on_shard(c, MEMBERS) });
}

fn fanout_on_shard(c: &mut Criterion, members: u32) {
    let data = r#"{"orderId":"20240518-000731","status":"shipped","eta":"2024-05-19T10:00:00Z"}"#;
    let fleet = Fleet::new(members);
    let shard = &fleet.shard;
    let frame_len = message::push_frame(MESSAGE_ID, "admin-7", 0, "order update", data).len();

    let mut g = quick(c, "fanout");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for pushes in [1usize, 4] {
        // Check once that every byte reaches the members, in one write per member.
        let writes = shard.metrics.socket_writes.get();
        for _ in 0..pushes {
            let f = message::push_frame(MESSAGE_ID, "admin-7", 0, "order update", data);
            assert_eq!(
                shard.group_push_local("bench", "room", &f, None),
                members as usize
            );
        }
        shard.flush_dirty();
        assert_eq!(shard.metrics.socket_writes.get() - writes, members as u64);
        assert_eq!(fleet.drain(), (pushes * frame_len) as u64 * members as u64);

        g.throughput(Throughput::Elements(pushes as u64 * members as u64));
        let name = if pushes == 1 {
            "10000_members".to_string()
        } else {
            format!("10000_members/{pushes}_pushes_per_flush")
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for _ in 0..pushes {
                        let f = message::push_frame(
                            MESSAGE_ID,
                            "admin-7",
                            0,
                            "order update",
                            black_box(data),
                        );
                        black_box(shard.group_push_local("bench", "room", &f, None));
                    }
                    shard.flush_dirty();
                    spent += start.elapsed();
                    fleet.drain();
                }
                spent
            })
        });
    }
    g.finish();
}

// ---- 8. Node-link codec -------------------------------------------------------------------------

/// Guards the rkyv node-link codec (serialize, length prefix, validated decode through an aligned
/// copy): one Deliver per peer node per cross-node send, one GroupPush per peer per group push,
/// one List reply per peer per online-list. A regression is usually validation or copying growing
/// with the payload faster than it should.
fn cluster_proto(c: &mut Criterion) {
    let frame_1k =
        message::push_frame(MESSAGE_ID, "admin-7", 0, "order update", &json_string(1000));
    let deliver = Frame::Request {
        id: 41,
        op: RemoteOp::Deliver {
            system: "order-system".into(),
            targets: (0..10)
                .map(|i| Target {
                    core: (i % 2) as u8,
                    slot: 1000 + i,
                    generation: 3,
                })
                .collect(),
            frame: frame_1k.to_vec(),
        },
    };
    let group_push = Frame::Request {
        id: 42,
        op: RemoteOp::GroupPush {
            system: "order-system".into(),
            group: "warehouse-east".into(),
            frame: frame_1k.to_vec(),
            exclude: None,
        },
    };
    let online_list = Frame::Response {
        id: 43,
        reply: RemoteReply::List(client_ids(1000)),
    };

    let mut g = quick(c, "cluster_proto");
    for (name, frame) in [
        ("deliver_1KiB_10_targets", &deliver),
        ("group_push_1KiB", &group_push),
        ("online_list_1000_ids", &online_list),
    ] {
        let mut wire = Vec::new();
        proto::encode(frame, &mut wire);
        let (back, used) = proto::decode(&wire).unwrap().unwrap();
        assert_eq!((&back, used), (frame, wire.len()));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        // The link appends to one outbox buffer that its writer takes; reuse one the same way.
        let mut out = Vec::with_capacity(wire.len());
        g.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| {
                out.clear();
                proto::encode(black_box(frame), &mut out);
                out.len()
            })
        });
        g.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| proto::decode(black_box(&wire)))
        });
    }
    g.finish();
}

criterion_group!(
    pieces,
    accept_key,
    http_head,
    http_body,
    api_decode,
    push_frame,
    client_id,
    registry,
    fanout,
    cluster_proto
);
criterion_main!(pieces);
