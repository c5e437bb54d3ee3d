//! The status page in a real browser: headless Chromium loads `/status`, its script polls
//! `/status.json`, and the numbers it shows (read from the DOM by element id) must be the
//! server's and match what the test did: connections on both cores, systems, groups, pushes.
//! A screenshot is kept in `target/status-page.png` for a person to look at.
//!
//! Chromium comes from Debian's `chromium` package, which `make test` installs
//! (`WSPUSH_SETUP_TEST=1 scripts/setup.sh`). Without it these tests fail and say so: a status
//! page nobody looked at is not tested. `WSPUSH_CHROMIUM` names another binary.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one Chromium run may take (start-up on a busy 2-core machine included).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    let path = std::env::var_os("WSPUSH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: the status page test needs headless Chromium. Install Debian's \
         `chromium` package (`WSPUSH_SETUP_TEST=1 scripts/setup.sh` does, and `make test` runs \
         it) or set WSPUSH_CHROMIUM to a Chromium binary.",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`) and returns
/// its stdout. The page gets 3 s of virtual time: its timers run without waiting for the
/// wall clock, and virtual time stands still while a fetch is in flight, so several polls of
/// `/status.json` complete.
fn run_chromium(dir: &Path, url: &str, args: &[&str]) -> String {
    let profile = dir.join(format!("profile-{}", unique("chromium")));
    let stdout_path = dir.join("chromium.out");
    let stderr_path = dir.join("chromium.err");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium().display()));
    let status = wait_child(&mut child, BROWSER_TIMEOUT, "chromium", &stderr_path);
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        status.success(),
        "chromium exited with {status}; stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout_path).unwrap()
}

/// The opening tag of the element whose id is `id` in the serialized DOM, and where it ends.
fn tag_of<'a>(dom: &'a str, id: &str) -> (&'a str, usize) {
    let needle = format!(" id=\"{id}\"");
    let at = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no element with id {id:?} in the page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    (&dom[start..=end], end)
}

/// Attribute `name` of an opening tag, if it has one.
fn attribute_of(tag: &str, name: &str) -> Option<String> {
    tag.split_once(&format!(" {name}=\""))
        .map(|(_, rest)| rest[..rest.find('"').unwrap()].to_string())
}

/// The element of the serialized DOM whose id is `id`: its `data-value` attribute (the raw
/// number the page was given; empty if none) and its text up to the first child tag (what a
/// person reads).
fn element(dom: &str, id: &str) -> (String, String) {
    let (tag, end) = tag_of(dom, id);
    let value = attribute_of(tag, "data-value").unwrap_or_default();
    let text_end = dom[end + 1..].find('<').map_or(dom.len(), |i| end + 1 + i);
    (value, dom[end + 1..text_end].to_string())
}

/// The raw number shown in element `id`.
fn shown(dom: &str, id: &str) -> u64 {
    let (value, text) = element(dom, id);
    value
        .parse()
        .unwrap_or_else(|_| panic!("element {id:?} shows {text:?} with data-value {value:?}"))
}

fn status_json(port: u16) -> Value {
    let resp = http(port, "GET", "/status.json", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// The system `name` of a `/status.json`.
fn system<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["systems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["systemId"] == name)
        .unwrap_or_else(|| panic!("no system {name} in {status}"))
}

/// The members of `group` as `/status.json` lists them under `system`.
fn group_members(status: &Value, system_name: &str, group: &str) -> u64 {
    system(status, system_name)["topGroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
        .unwrap_or_else(|| panic!("no group {group} in {status}"))["members"]
        .as_u64()
        .unwrap()
}

fn push_to_group(port: u16, system: &str, group: &str, data: &str) {
    let v = api(
        port,
        Some(system),
        "/api/send_to_group",
        &json!({"groupName": group, "sendUserId": "", "code": 7, "msg": "", "data": data}),
    );
    assert_eq!(v["code"], 0, "{v}");
}

/// Reads text frames until one whose data is `data` (presence frames come first).
fn recv_data(ws: &mut Ws, data: &str) {
    loop {
        let v = ws.recv_json();
        if v["data"] == data {
            return;
        }
        assert!(
            [1001, 1002].contains(&v["code"].as_i64().unwrap_or(0)),
            "unexpected push {v}"
        );
    }
}

#[test]
fn the_status_page_shows_the_servers_numbers() {
    chromium();
    let server = Server::start();
    let port = server.port;
    server.register("shop");
    server.register("chat");

    // Connections on both cores: SO_REUSEPORT spreads them by address hash, so open more
    // until each core holds some (ten make a miss unlikely; the loop makes it certain).
    let mut shop: Vec<Ws> = (0..6).map(|_| server.ws("shop")).collect();
    let mut chat: Vec<Ws> = (0..4).map(|_| server.ws("chat")).collect();
    loop {
        let s = status_json(port);
        let cores = s["cores"].as_array().unwrap();
        assert_eq!(cores.len(), 2);
        if cores.iter().all(|c| c["connections"].as_u64().unwrap() > 0) {
            break;
        }
        assert!(
            shop.len() < 40,
            "40 connections all landed on one core: {s}"
        );
        shop.push(server.ws("shop"));
    }
    let total = (shop.len() + chat.len()) as u64;

    // Groups: shop/vip 3 members, shop/sale 2, chat/lobby 4.
    for ws in &shop[..3] {
        bind(port, "shop", ws, "vip", "u", "");
    }
    for ws in &shop[3..5] {
        bind(port, "shop", ws, "sale", "u", "");
    }
    for ws in &chat {
        bind(port, "chat", ws, "lobby", "u", "");
    }
    // Pushes, each received, so every counter has settled before the browser looks.
    push_to_group(port, "shop", "vip", "v1");
    push_to_group(port, "shop", "vip", "v2");
    push_to_group(port, "chat", "lobby", "c1");
    for ws in &mut shop[..3] {
        recv_data(ws, "v1");
        recv_data(ws, "v2");
    }
    for ws in &mut chat {
        recv_data(ws, "c1");
    }
    let unbound = shop.len() - 5;
    for i in 0..3 {
        let target = &mut shop[5 + i % unbound];
        let v = api(
            port,
            Some("shop"),
            "/api/send_to_client",
            &json!({"clientId": target.client_id, "sendUserId": "", "code": 7, "msg": "", "data": "d"}),
        );
        assert_eq!(v["code"], 0, "{v}");
        recv_data(target, "d");
    }
    // The API calls the test made: 2 registers, 9 binds, 3 group pushes, 3 unicasts.
    let api_calls = 2 + 9 + 3 + 3;
    // Frames: presence 1001s (1+2+3 for vip, 1+2 for sale, 1+2+3+4 for lobby), 2 x 3 vip
    // pushes, 4 lobby pushes, 3 unicasts.
    let frames = (1 + 2 + 3) + (1 + 2) + (1 + 2 + 3 + 4) + 6 + 4 + 3;

    // /status.json says what the test did.
    let before = status_json(port);
    assert_eq!(before["connections"], total, "{before}");
    assert_eq!(before["registeredSystems"], 2);
    assert_eq!(system(&before, "shop")["clients"], shop.len() as u64);
    assert_eq!(system(&before, "shop")["groups"], 2);
    assert_eq!(system(&before, "chat")["clients"], 4);
    assert_eq!(system(&before, "chat")["groups"], 1);
    assert_eq!(group_members(&before, "shop", "vip"), 3);
    assert_eq!(group_members(&before, "shop", "sale"), 2);
    assert_eq!(group_members(&before, "chat", "lobby"), 4);
    assert_eq!(before["counters"]["apiRequests"], api_calls, "{before}");
    assert_eq!(before["counters"]["framesPushed"], frames, "{before}");
    assert_eq!(before["drops"]["slowConsumer"], 0);
    assert_eq!(before["peers"], json!([]));
    assert_eq!(before["cluster"], false);

    // The browser: the DOM after the page's script ran.
    let dir = temp_dir("status-page");
    let dom = run_chromium(&dir, &format!("{}/status", server.url()), &["--dump-dom"]);
    let after = status_json(port);
    // Nothing the test watches moved while the browser looked (its polls are not API calls).
    for key in ["connections", "counters", "systems", "cores", "drops"] {
        assert_eq!(
            before[key], after[key],
            "{key} changed during the browser run"
        );
    }

    assert!(
        shown(&dom, "polls") >= 2,
        "the page did not keep polling /status.json"
    );
    let (_, error) = element(&dom, "poll-error");
    assert_eq!(error, "", "the page reports a poll error");
    assert_eq!(shown(&dom, "connections-total"), total);
    let cores: u64 = (0..2)
        .map(|c| {
            let n = shown(&dom, &format!("core-{c}-connections"));
            assert_eq!(n, after["cores"][c]["connections"], "core {c}");
            assert!(n > 0, "core {c} shows no connections");
            n
        })
        .sum();
    assert_eq!(cores, total);
    assert_eq!(shown(&dom, "systems-registered"), 2);
    assert_eq!(shown(&dom, "systems-count"), 2);
    assert_eq!(shown(&dom, "system-shop-clients"), shop.len() as u64);
    assert_eq!(shown(&dom, "system-shop-groups"), 2);
    assert_eq!(shown(&dom, "system-chat-clients"), 4);
    assert_eq!(shown(&dom, "system-chat-groups"), 1);
    assert_eq!(shown(&dom, "group-shop/vip-members"), 3);
    assert_eq!(shown(&dom, "group-shop/sale-members"), 2);
    assert_eq!(shown(&dom, "group-chat/lobby-members"), 4);
    assert_eq!(shown(&dom, "frames-pushed"), frames);
    assert_eq!(shown(&dom, "api-requests"), api_calls);
    assert_eq!(shown(&dom, "connects-total"), total);
    assert_eq!(shown(&dom, "disconnects-total"), 0);
    assert_eq!(shown(&dom, "drops-slow-consumer"), 0);
    assert_eq!(shown(&dom, "drops-queue-full"), 0);
    assert_eq!(shown(&dom, "peers-count"), 0);
    assert_eq!(
        shown(&dom, "bytes-pushed"),
        after["counters"]["bytesPushed"].as_u64().unwrap()
    );
    assert_eq!(element(&dom, "node").1, after["node"].as_str().unwrap());
    assert_eq!(
        element(&dom, "version").1,
        after["version"].as_str().unwrap()
    );
    // Rates: a number once the page has a previous poll to compare with, else empty ("—").
    for id in ["rate-frames", "rate-bytes", "rate-api", "rate-connects"] {
        let (value, text) = element(&dom, id);
        assert!(
            value.is_empty() && text == "—" || value.parse::<f64>().is_ok(),
            "{id}: {value:?} / {text:?}"
        );
    }

    // The start-up warnings (here the published default CryptoKey, issue 12), one each.
    let warnings = after["warnings"].as_array().unwrap();
    assert!(!warnings.is_empty(), "{after}");
    assert_eq!(shown(&dom, "warnings"), warnings.len() as u64);
    assert!(
        element(&dom, "warning-0").1.contains("common.CryptoKey"),
        "{:?}",
        element(&dom, "warning-0")
    );

    // A screenshot for people, kept next to the build.
    let png = dir.join("status-page.png");
    run_chromium(
        &dir,
        &format!("{}/status", server.url()),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "a {} byte screenshot is blank",
        bytes.len()
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("status-page.png");
    std::fs::copy(&png, &target).unwrap();
    eprintln!("status page screenshot: {}", target.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_status_page_passes_its_api_key_on_to_its_polls() {
    chromium();
    const KEY: &str = "status-page-key-0123456789";
    let server = Server::start_with(&[&format!("ApiKey = {KEY}")]);
    let _a = server.ws("k");
    let _b = server.ws("k");
    let dir = temp_dir("status-page-key");
    let dom = run_chromium(
        &dir,
        &format!("{}/status?apikey={KEY}", server.url()),
        &["--dump-dom"],
    );
    assert!(shown(&dom, "polls") >= 1, "no poll got through:\n{dom}");
    assert_eq!(element(&dom, "poll-error").1, "");
    assert_eq!(shown(&dom, "connections-total"), 2);
    // Without the key the page itself is refused (and asks for basic auth).
    assert_eq!(http(server.port, "GET", "/status", &[], b"").status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Attribute `name` of the element whose id is `id` in the serialized DOM.
fn attribute(dom: &str, id: &str, name: &str) -> String {
    let (tag, _) = tag_of(dom, id);
    attribute_of(tag, name).unwrap_or_else(|| panic!("element {id:?} has no {name}: {tag}"))
}

/// A chart's latest second and highest value, as the page drew them.
fn chart(dom: &str, id: &str) -> (u64, u64) {
    let last = attribute(dom, id, "data-last");
    let max = attribute(dom, id, "data-max");
    (
        last.parse()
            .unwrap_or_else(|_| panic!("{id} data-last {last:?}")),
        max.parse()
            .unwrap_or_else(|_| panic!("{id} data-max {max:?}")),
    )
}

#[test]
fn the_status_page_charts_move_while_load_runs() {
    chromium();
    let server = Server::start();
    let port = server.port;
    server.register("load");
    let mut members: Vec<Ws> = (0..10).map(|_| server.ws("load")).collect();
    for ws in &members {
        bind(port, "load", ws, "g", "u", "");
    }
    for (i, ws) in members.iter_mut().enumerate() {
        for _ in i..10 {
            presence(&ws.recv_json(), 1001);
        }
    }
    // Two quiet seconds: the charts' latest second has no deliveries.
    std::thread::sleep(Duration::from_millis(2200));
    let dir = temp_dir("status-charts");
    let url = format!("{}/status", server.url());
    let quiet = run_chromium(&dir, &url, &["--dump-dom"]);
    let (connections, _) = chart(&quiet, "chart-connections");
    assert_eq!(connections, 10, "connections chart:\n{quiet}");
    let (quiet_last, quiet_max) = chart(&quiet, "chart-deliveries");
    assert_eq!(quiet_last, 0, "deliveries in a quiet second");
    assert_eq!(chart(&quiet, "chart-pushes").0, 0);

    // Load: pushes to the group for about four seconds, the browser looking at the end.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                push_to_group(port, "load", "g", &n.to_string());
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(3000));
    let busy = run_chromium(&dir, &url, &["--dump-dom"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = pusher.join().unwrap();
    assert!(pushed > 0);
    let (last, max) = chart(&busy, "chart-deliveries");
    assert!(
        last > 0,
        "no deliveries in the latest second under load:\n{busy}"
    );
    assert!(
        max > quiet_max,
        "the deliveries chart did not rise: {quiet_max} -> {max}"
    );
    assert!(
        chart(&busy, "chart-pushes").0 > 0,
        "no pushes in the latest second"
    );
    assert!(
        chart(&busy, "chart-api").0 > 0,
        "no API requests in the latest second"
    );
    assert_ne!(
        attribute(&quiet, "chart-deliveries", "data-points"),
        "0",
        "the quiet page drew no seconds"
    );
    // Every pushed frame reached every member: the load was real.
    for ws in &mut members {
        for n in 0..pushed {
            assert_eq!(ws.recv_json()["data"], n.to_string());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
