// End-to-end: the built client in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real wspush server, started here on free ports with a temp
// config. Connect, receive, have the server close the connection, reconnect with a new clientId,
// re-bind with `since` from positions() and get the missed pushes; restart the server (history
// lost: recovered false, a new epoch); fresh JWTs from getToken; stop on close 1008; the
// heartbeat timeout on a path that goes silent; the example page.
//
// The server binary: $WSPUSH_BIN, else ../../target/debug/wspush, else ../../target/release/wspush.
// Chromium: $WSPUSH_CHROMIUM, else /usr/bin/chromium.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { Proxy, Server, jwt, pkg, signedApi as signed, sleep } from "./harness.mjs";

const CHROMIUM = process.env.WSPUSH_CHROMIUM || "/usr/bin/chromium";
const WAIT = 20000; // ms any one expected browser event may take on a busy machine

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wspush-js-e2e-"));
// Kept when a test failed (its server.log and the browser profile), or with WSPUSH_TEST_KEEP.
let keepDir = Boolean(process.env.WSPUSH_TEST_KEEP);

/** Runs a test body; on failure prints the server's log and keeps the temp dir. */
function withLog(body) {
  return async (t) => {
    try {
      await body(t);
    } catch (e) {
      keepDir = true;
      console.error(`--- wspush log (${dir}) ---\n${server ? server.log().slice(-4000) : "(no server)"}`);
      throw e;
    }
  };
}



/** Serves the test page and the built client (dist/) to the browser. */
function pageServer() {
  const page = `<!doctype html><meta charset="utf-8"><title>wspush-client e2e</title>
<script type="module">
import { WspushClient } from "/client/index.js";
window.WspushClient = WspushClient;
window.ready = true;
</script>`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/test.html") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      return res.end(page);
    }
    // /client/* is dist/*; /dist/* and /examples/* are themselves (the example page).
    const m = url.pathname.match(/^\/(client|dist|examples)\/([\w.]+)$/);
    const file = m && path.join(pkg, m[1] === "client" ? "dist" : m[1], m[2]);
    if (file && fs.existsSync(file)) {
      const type = file.endsWith(".html") ? "text/html" : "text/javascript";
      res.writeHead(200, { "Content-Type": `${type}; charset=utf-8` });
      return res.end(fs.readFileSync(file));
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((r) => srv.listen(0, "127.0.0.1", () => r(srv)));
}


const proxy = new Proxy();
const signedApi = (...args) => signed(server, ...args);
let proxyPort;
let server;
let context;
let pages;

after(async () => {
  await context?.close().catch(() => {});
  pages?.close();
  proxy.close();
  await server?.stop();
  if (!keepDir) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Opens a page with one client whose every event is logged in `window.log`. `opts` is
 * evaluated in the page (JSON plus `groupOf` by data.group; `getToken` calls the test's).
 */
async function openClient(name, systemId, extra = {}) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e));
  await page.goto(`http://127.0.0.1:${pages.address().port}/test.html`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: WAIT });
  await page.evaluate(
    ({ ws, systemId, extra }) => {
      const log = (window.log = { connected: [], pushes: [], members: [], disconnected: [], stopped: [], errors: [] });
      const opts = {
        systemId,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
        groupOf: (p) => (p.data && typeof p.data === "object" ? p.data.group : undefined),
        ...extra.opts,
      };
      if (extra.token) opts.getToken = () => window.getToken();
      const c = (window.client = new window.WspushClient(ws, opts));
      c.on("connected", (e) => log.connected.push(e));
      c.on(7, (d, p) => log.pushes.push({ n: d.n, offset: p.offset, epoch: p.epoch }));
      c.on(1001, (m) => log.members.push(m));
      c.on("disconnected", (e) => log.disconnected.push(e));
      c.on("stopped", (e) => log.stopped.push(e));
      c.on("error", (e) => log.errors.push(String(e)));
    },
    { ws: `ws://127.0.0.1:${proxyPort}/ws`, systemId, extra },
  );
  return page;
}

const logOf = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.log)));
const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });

async function push(system, n) {
  await server.ok(system, "/api/send_to_group", {
    groupName: "room",
    sendUserId: "",
    code: 7,
    msg: "",
    data: { group: "room", n },
  });
}

test("the client in Chromium against the real server: receive, reconnect, recover", { timeout: 180000 }, withLog(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: install Debian's chromium (scripts/setup.sh)`);
  proxyPort = await proxy.listen();
  server = new Server(dir, proxy);
  await server.start();
  pages = await pageServer();
  context = await chromium.launchPersistentContext(path.join(dir, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const sys = "js-e2e";
  assert.deepEqual(await server.ok(null, "/api/register", { systemId: sys, history: { size: 100 } }), []);

  const page = await openClient("history", sys);
  await until(page, () => window.log.connected.length === 1);
  let log = await logOf(page);
  const c1 = log.connected[0].clientId;
  assert.equal(log.connected[0].reconnected, false);
  assert.equal(await page.evaluate(() => window.client.clientId), c1);

  // Bound, it sees its own 1001 decoded, then two numbered pushes.
  assert.deepEqual(await server.ok(sys, "/api/bind_to_group", { clientId: c1, groupName: "room", userId: "u1", extend: "x" }), []);
  await until(page, () => window.log.members.length === 1);
  assert.deepEqual((await logOf(page)).members[0], { clientId: c1, userId: "u1", extend: "x" });
  await push(sys, 1);
  await push(sys, 2);
  await until(page, () => window.log.pushes.length === 2);
  log = await logOf(page);
  const epoch = log.pushes[0].epoch;
  assert.match(epoch, /^[0-9a-zA-Z]+$/);
  assert.deepEqual(log.pushes, [
    { n: 1, offset: 1, epoch },
    { n: 2, offset: 2, epoch },
  ]);
  assert.deepEqual(await page.evaluate(() => window.client.positions()), [{ group: "room", epoch, offset: 2 }]);

  // The server closes the connection: the client reconnects by itself with a new clientId.
  assert.deepEqual(await server.ok(sys, "/api/close_client", { clientId: c1 }), {});
  await until(page, () => window.log.connected.length === 2);
  log = await logOf(page);
  const c2 = log.connected[1].clientId;
  assert.notEqual(c2, c1);
  assert.equal(log.connected[1].reconnected, true);
  assert.equal(log.disconnected[0].code, 1000);
  assert.equal(log.disconnected[0].willReconnect, true);

  // Pushes while it is in no group are missed; the re-bind with since recovers them, in order.
  await push(sys, 3);
  await push(sys, 4);
  const since = await page.evaluate(() => window.client.position("room"));
  assert.deepEqual(since, { group: "room", epoch, offset: 2 });
  const bound = await server.ok(sys, "/api/bind_to_group", {
    clientId: c2,
    groupName: "room",
    userId: "u1",
    extend: "x",
    since: { offset: since.offset, epoch: since.epoch },
  });
  assert.deepEqual(bound, { recovered: true });
  await push(sys, 5);
  await until(page, () => window.log.pushes.length >= 5);
  await sleep(200); // a duplicate would show up here
  log = await logOf(page);
  assert.deepEqual(
    log.pushes.map((p) => [p.n, p.offset, p.epoch]),
    [1, 2, 3, 4, 5].map((n) => [n, n, epoch]),
  );
  assert.deepEqual(await page.evaluate(() => window.client.positions()), [{ group: "room", epoch, offset: 5 }]);

  // The server restarts: failed attempts back off, then a new connection; its history is
  // gone, so the re-bind with the old position answers recovered false and a new epoch starts.
  await server.stop();
  await until(page, () => window.log.disconnected.length >= 3); // the drop and a failed attempt
  await server.start();
  await until(page, () => window.log.connected.length === 3);
  log = await logOf(page);
  const c3 = log.connected[2].clientId;
  assert.ok(![c1, c2].includes(c3));
  assert.ok(log.disconnected.slice(1).every((d) => d.willReconnect));
  assert.deepEqual(await server.ok(null, "/api/register", { systemId: sys, history: { size: 100 } }), []);
  const old = await page.evaluate(() => window.client.position("room"));
  assert.deepEqual(
    await server.ok(sys, "/api/bind_to_group", { clientId: c3, groupName: "room", userId: "u1", extend: "", since: { offset: old.offset, epoch: old.epoch } }),
    { recovered: false },
  );
  await push(sys, 6);
  await until(page, () => window.log.pushes.length === 6);
  log = await logOf(page);
  const fresh = log.pushes[5];
  assert.equal(fresh.n, 6);
  assert.equal(fresh.offset, 1);
  assert.notEqual(fresh.epoch, epoch);
  assert.deepEqual(await page.evaluate(() => window.client.position("room")), { group: "room", epoch: fresh.epoch, offset: 1 });
  assert.deepEqual(log.stopped, []);
  assert.deepEqual(log.errors, []);

  // close() stops for good: the server sees the client go, and no new one comes.
  await page.evaluate(() => window.client.close());
  await until(page, () => window.log.stopped.length === 1);
  assert.deepEqual((await logOf(page)).stopped[0], { code: 0, reason: "closed by the client", byClient: true });
  for (let i = 0; ; i++) {
    const online = await server.ok(sys, "/api/get_online_list", { groupName: "room" });
    if (online.count === 0) break;
    assert.ok(i < 100, `still online after close(): ${JSON.stringify(online)}`);
    await sleep(50);
  }
  await sleep(1500); // longer than maxReconnectDelay: a reconnect would have happened
  assert.equal((await logOf(page)).connected.length, 3);
  await page.close();
}));

test("getToken gives every attempt a fresh JWT; close 1008 stops the client", { timeout: 120000 }, withLog(async () => {
  assert.ok(server && context, "needs the first test's server and browser");
  const secret = "0123456789abcdef-e2e-secret";
  const sys = "js-jwt";
  await server.ok(null, "/api/register", { systemId: sys, secret });
  const page = await openClient("jwt", sys, { token: true });
  let issued = 0;
  await page.exposeFunction("getToken", () => {
    issued++;
    return jwt(secret, { exp: Math.floor(Date.now() / 1000) + 60, userId: `user-${issued}` });
  });
  await until(page, () => window.log.connected.length === 1);
  const c1 = (await logOf(page)).connected[0].clientId;
  // The token's userId bound the connection: send_to_user finds it.
  const sent = await signedApi(secret, sys, "/api/send_to_user", { userId: "user-1", sendUserId: "", code: 7, msg: "", data: { n: 1 } });
  assert.equal(sent.code, 0, JSON.stringify(sent));
  assert.equal(sent.data.count, 1);
  await until(page, () => window.log.pushes.length === 1);
  assert.equal((await signedApi(secret, sys, "/api/close_client", { clientId: c1 })).code, 0);
  await until(page, () => window.log.connected.length === 2);
  assert.equal(issued, 2);
  const again = await signedApi(secret, sys, "/api/send_to_user", { userId: "user-2", sendUserId: "", code: 7, msg: "", data: { n: 2 } });
  assert.equal(again.data.count, 1, JSON.stringify(again));
  await until(page, () => window.log.pushes.length === 2);
  await page.close();

  // A client of a system that was not registered yet; registering it with a secret closes its
  // connection with 1008 ("token required"): the client stops and says so instead of looping.
  const late = "js-late-secret";
  const page2 = await openClient("1008", late);
  await until(page2, () => window.log.connected.length === 1);
  await server.ok(null, "/api/register", { systemId: late, secret });
  await until(page2, () => window.log.stopped.length === 1);
  const log = await logOf(page2);
  assert.equal(log.stopped[0].code, 1008);
  assert.equal(log.stopped[0].byClient, false);
  assert.equal(log.disconnected.length, 1);
  assert.equal(log.disconnected[0].willReconnect, false);
  await sleep(1500);
  assert.equal((await logOf(page2)).connected.length, 1);
  assert.equal(await page2.evaluate(() => window.client.state), "stopped");
  await page2.close();
}));

test("heartbeat timeout: pushes keep it up, a dead path is replaced", { timeout: 120000 }, withLog(async () => {
  assert.ok(server && context, "needs the first test's server and browser");
  const sys = "js-idle";
  await server.ok(null, "/api/register", { systemId: sys });
  // The app-level heartbeat idleTimeout relies on: the backend pushes to the system every 250 ms
  // (browsers never show scripts the server's WebSocket pings).
  let beating = true;
  const beat = (async () => {
    while (beating) {
      await server.api(sys, "/api/send_to_system", { sendUserId: "", code: 9, msg: "", data: "beat" });
      await sleep(250);
    }
  })();
  try {
    const page = await openClient("idle", sys, { opts: { idleTimeout: 1500 } });
    await until(page, () => window.log.connected.length === 1);
    await sleep(3000); // twice the timeout: the beats keep it up
    let log = await logOf(page);
    assert.equal(log.connected.length, 1);
    assert.deepEqual(log.disconnected, []);
    // The path goes dead without a close: no frame arrives; the client gives up on it.
    proxy.freeze();
    await until(page, () => window.log.connected.length === 2);
    log = await logOf(page);
    assert.equal(log.disconnected.length, 1);
    assert.match(log.disconnected[0].reason, /heartbeat timeout/);
    assert.equal(log.disconnected[0].code, 1006);
    assert.notEqual(log.connected[1].clientId, log.connected[0].clientId);
    await page.close();
  } finally {
    beating = false;
    await beat;
  }
}));

test("the example page connects and shows what it receives", { timeout: 60000 }, withLog(async () => {
  assert.ok(server && context, "needs the first test's server and browser");
  const sys = "js-example";
  await server.ok(null, "/api/register", { systemId: sys });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("[example] page error:", e));
  const ws = encodeURIComponent(`ws://127.0.0.1:${proxyPort}/ws`);
  await page.goto(`http://127.0.0.1:${pages.address().port}/examples/index.html?ws=${ws}&system=${sys}`);
  await page.waitForFunction(() => document.getElementById("id").textContent !== "-", null, { timeout: WAIT });
  const clientId = await page.textContent("#id");
  assert.equal(await page.textContent("#state"), "open");
  await server.ok(sys, "/api/send_to_client", { clientId, sendUserId: "", code: 7, msg: "", data: { hello: "example" } });
  await page.waitForFunction(() => document.getElementById("log").textContent.includes('push 7: {"hello":"example"}'), null, { timeout: WAIT });
  await page.close();
}));

