// Unit tests of WspushClient against a fake WebSocket and mocked timers (node --test).
import { test } from "node:test";
import assert from "node:assert/strict";
import { WspushClient, backoffDelay, decodeMember } from "../dist/index.js";

/** A WebSocket stand-in the test drives: it records what the client did. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.closedBy = null; // [code, reason] when the client closed it
    this.listeners = {};
    FakeSocket.all.push(this);
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  close(code, reason) {
    this.closedBy = [code, reason];
    this.readyState = 3;
  }
  // Present on Node's `ws` sockets; the client uses it for `ping`.
  on(event, fn) {
    (this.listeners[event] ??= []).push(fn);
  }
  // --- the "server" side ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send(obj) {
    this.onmessage?.({ data: typeof obj === "string" ? obj : JSON.stringify(obj) });
  }
  welcome(clientId) {
    this.open();
    this.send({ code: 0, msg: "success", data: { clientId } });
  }
  ping() {
    for (const fn of this.listeners.ping ?? []) fn();
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

function push(code, data, extra = {}) {
  return { messageId: "0123456789abcdef", sendUserId: "", code, msg: "m", data, ...extra };
}

function member(clientId, userId, extend) {
  // As wspush sends it: a JSON *string* holding the object.
  return JSON.stringify({ clientId, userId, extend });
}

/** A client on the fake socket with mocked timers, collecting every event. */
async function setup(t, options = {}) {
  if (!t.timersMocked) {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    t.timersMocked = true;
  }
  FakeSocket.all = [];
  const client = new WspushClient("ws://push.example:7800/ws", {
    systemId: "shop",
    WebSocket: FakeSocket,
    random: () => 1,
    ...options,
  });
  const events = [];
  for (const name of ["connected", "disconnected", "reconnecting", "stopped", "error"]) {
    client.on(name, (ev) => events.push([name, ev]));
  }
  const of = (name) => events.filter(([n]) => n === name).map(([, ev]) => ev);
  await flush(); // autoConnect runs on a microtask
  return { client, events, of };
}

const flush = () => new Promise((r) => setImmediate(r));

test("connects with systemId and token in the query and reports the welcome's clientId", async (t) => {
  const { client, of } = await setup(t, { token: "a.b.c" });
  assert.equal(FakeSocket.all.length, 1);
  const url = new URL(FakeSocket.last().url);
  assert.equal(url.origin + url.pathname, "ws://push.example:7800/ws");
  assert.equal(url.searchParams.get("systemId"), "shop");
  assert.equal(url.searchParams.get("token"), "a.b.c");
  assert.equal(client.state, "connecting");
  assert.equal(client.clientId, null);
  FakeSocket.last().welcome("c1");
  assert.deepEqual(of("connected"), [{ clientId: "c1", reconnected: false }]);
  assert.equal(client.clientId, "c1");
  assert.equal(client.state, "open");
  client.close();
});

test("an http URL becomes ws, and no token leaves the query without one", async (t) => {
  const { client } = await setup(t, { systemId: "a b" });
  const url = new URL(FakeSocket.last().url);
  assert.equal(url.protocol, "ws:");
  assert.equal(url.searchParams.get("systemId"), "a b");
  assert.equal(url.searchParams.has("token"), false);
  client.close();
  FakeSocket.all = [];
  const https = new WspushClient("https://h/ws?x=1", { systemId: "s", WebSocket: FakeSocket });
  await flush();
  const u2 = new URL(FakeSocket.last().url);
  assert.equal(u2.protocol, "wss:");
  assert.equal(u2.searchParams.get("x"), "1");
  https.close();
});

test("dispatches pushes by code and to message handlers, member events decoded", async (t) => {
  const { client } = await setup(t);
  const sock = FakeSocket.last();
  sock.welcome("c1");
  const got = [];
  client.on("message", (p) => got.push(["message", p.code, p.data]));
  client.on(7, (data, p) => got.push([7, data, p.messageId]));
  client.on(1001, (m, p) => got.push([1001, m, p.code]));
  client.on(1002, (m) => got.push([1002, m]));
  const off = client.on(1003, (m) => got.push([1003, m]));
  sock.send(push(7, { a: [1, 2] }));
  sock.send(push(1001, member("c2", "u2", "x")));
  sock.send(push(1002, member("c3", "u3", "")));
  sock.send(push(1003, member("c4", "u4", "e")));
  off();
  sock.send(push(1003, member("c5", "u5", "")));
  sock.send(push(8, "text"));
  assert.deepEqual(got, [
    ["message", 7, { a: [1, 2] }],
    [7, { a: [1, 2] }, "0123456789abcdef"],
    ["message", 1001, member("c2", "u2", "x")],
    [1001, { clientId: "c2", userId: "u2", extend: "x" }, 1001],
    ["message", 1002, member("c3", "u3", "")],
    [1002, { clientId: "c3", userId: "u3", extend: "" }],
    ["message", 1003, member("c4", "u4", "e")],
    [1003, { clientId: "c4", userId: "u4", extend: "e" }],
    ["message", 1003, member("c5", "u5", "")],
    ["message", 8, "text"],
  ]);
  client.close();
});

test("a push with code 0 after the welcome is a push, not a second welcome", async (t) => {
  const { client, of } = await setup(t);
  const sock = FakeSocket.last();
  sock.welcome("c1");
  const zero = [];
  client.on(0, (data) => zero.push(data));
  sock.send(push(0, { clientId: "fake" }));
  assert.deepEqual(zero, [{ clientId: "fake" }]);
  assert.equal(of("connected").length, 1);
  assert.equal(client.clientId, "c1");
  client.close();
});

test("decodeMember reads the string form and the object form, refuses others", () => {
  assert.deepEqual(decodeMember(member("a", "b", "c")), { clientId: "a", userId: "b", extend: "c" });
  assert.deepEqual(decodeMember({ clientId: "a", userId: 5 }), { clientId: "a", userId: "5", extend: "" });
  assert.equal(decodeMember("not json"), undefined);
  assert.equal(decodeMember("[]"), undefined);
  assert.equal(decodeMember(null), undefined);
});

test("reconnects after the server closes, and reports the new clientId", async (t) => {
  const { client, of } = await setup(t, { random: () => 0 });
  FakeSocket.last().welcome("c1");
  FakeSocket.last().serverClose(1000, "closed by server");
  assert.deepEqual(of("disconnected"), [
    { code: 1000, reason: "closed by server", wasConnected: true, willReconnect: true },
  ]);
  assert.deepEqual(of("reconnecting"), [{ attempt: 0, delay: 250 }]);
  assert.equal(client.state, "waiting");
  assert.equal(client.clientId, null);
  t.mock.timers.tick(249);
  assert.equal(FakeSocket.all.length, 1);
  t.mock.timers.tick(1);
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.last().welcome("c2");
  assert.deepEqual(of("connected")[1], { clientId: "c2", reconnected: true });
  assert.equal(client.clientId, "c2");
  client.close();
});

test("backoffDelay doubles from min, is capped at max, and jitters within its upper half", () => {
  const hi = () => 0.999999;
  const lo = () => 0;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelay(a, 500, 30000, hi)),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000],
  );
  assert.deepEqual(
    [0, 1, 2, 7, 100].map((a) => backoffDelay(a, 500, 30000, lo)),
    [250, 500, 1000, 15000, 15000],
  );
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12, 500, 30000, Math.random);
    assert.ok(d >= 250 && d <= 30000, `delay ${d}`);
  }
});

test("failed attempts back off exponentially up to the bound", async (t) => {
  const { client, of } = await setup(t, { minReconnectDelay: 100, maxReconnectDelay: 1000 });
  for (let i = 0; i < 7; i++) {
    FakeSocket.last().serverClose(1006);
    const { delay } = of("reconnecting").at(-1);
    t.mock.timers.tick(delay);
  }
  assert.deepEqual(
    of("reconnecting").map((r) => r.delay),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  assert.deepEqual(
    of("reconnecting").map((r) => r.attempt),
    [0, 1, 2, 3, 4, 5, 6],
  );
  assert.equal(FakeSocket.all.length, 8);
  assert.ok(of("disconnected").every((d) => d.willReconnect && !d.wasConnected));
  client.close();
});

test("the backoff resets only after a connection stayed up for stableAfter", async (t) => {
  const { client, of } = await setup(t, { minReconnectDelay: 100, maxReconnectDelay: 10000, stableAfter: 5000 });
  const fail = () => {
    FakeSocket.last().serverClose(1006);
    t.mock.timers.tick(of("reconnecting").at(-1).delay);
  };
  fail();
  fail();
  fail(); // next delay would be 800
  // Welcomed, but dropped before it was stable: the backoff keeps growing.
  FakeSocket.last().welcome("c1");
  t.mock.timers.tick(4999);
  fail();
  assert.equal(of("reconnecting").at(-1).delay, 800);
  // Stable for 5 s: the next drop starts again at the minimum.
  FakeSocket.last().welcome("c2");
  t.mock.timers.tick(5000);
  fail();
  assert.equal(of("reconnecting").at(-1).delay, 100);
  assert.equal(of("reconnecting").at(-1).attempt, 0);
  client.close();
});

for (const code of [1008, 4001]) {
  test(`close ${code} stops the client with a stopped event and no reconnect`, async (t) => {
    const { client, of } = await setup(t);
    FakeSocket.last().welcome("c1");
    FakeSocket.last().serverClose(code, "token required");
    assert.deepEqual(of("disconnected"), [
      { code, reason: "token required", wasConnected: true, willReconnect: false },
    ]);
    assert.deepEqual(of("stopped"), [{ code, reason: "token required", byClient: false }]);
    assert.equal(of("reconnecting").length, 0);
    t.mock.timers.tick(10 * 60 * 1000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(client.state, "stopped");
    // The app may start again (say, with a new token).
    client.connect();
    assert.equal(FakeSocket.all.length, 2);
    client.close();
  });
}

test("stopCloseCodes can be changed", async (t) => {
  const { client, of } = await setup(t, { stopCloseCodes: [] });
  FakeSocket.last().serverClose(1008, "slow consumer");
  assert.equal(of("stopped").length, 0);
  assert.equal(of("reconnecting").length, 1);
  client.close();
});

test("the -1001 answer (connect without systemId) stops the client", async (t) => {
  const { client, of } = await setup(t);
  const sock = FakeSocket.last();
  sock.open();
  sock.send({ messageId: "", sendUserId: "", code: -1001, msg: "systemId is required", data: [] });
  assert.deepEqual(of("stopped"), [{ code: -1001, reason: "systemId is required", byClient: false }]);
  assert.deepEqual(of("disconnected"), [
    { code: -1001, reason: "systemId is required", wasConnected: false, willReconnect: false },
  ]);
  assert.ok(sock.closedBy, "the client closed the socket");
  sock.serverClose(1008, "systemId is required"); // the server's close that follows: ignored
  t.mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(of("stopped").length, 1);
  assert.equal(client.state, "stopped");
  client.close();
});

test("getToken is asked before every attempt and its token goes in the URL", async (t) => {
  let n = 0;
  const { client, of } = await setup(t, { getToken: async () => `tok${++n}` });
  await flush();
  assert.equal(new URL(FakeSocket.last().url).searchParams.get("token"), "tok1");
  FakeSocket.last().welcome("c1");
  FakeSocket.last().serverClose(1000);
  t.mock.timers.tick(of("reconnecting").at(-1).delay);
  await flush();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(new URL(FakeSocket.last().url).searchParams.get("token"), "tok2");
  client.close();
});

test("a failing getToken is an error event and a backed-off retry", async (t) => {
  let fail = true;
  const { client, of } = await setup(t, {
    getToken: () => {
      if (fail) throw new Error("backend down");
      return "ok";
    },
  });
  await flush();
  assert.equal(FakeSocket.all.length, 0);
  assert.equal(of("error")[0].message, "backend down");
  assert.equal(of("reconnecting").length, 1);
  fail = false;
  t.mock.timers.tick(of("reconnecting")[0].delay);
  await flush();
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(new URL(FakeSocket.last().url).searchParams.get("token"), "ok");
  client.close();
});

test("close() while getToken is pending opens no socket", async (t) => {
  let resolve;
  const { client } = await setup(t, { getToken: () => new Promise((r) => (resolve = r)) });
  client.close();
  resolve("late");
  await flush();
  assert.equal(FakeSocket.all.length, 0);
  assert.equal(client.state, "stopped");
});

test("heartbeat timeout: a connection silent for idleTimeout is replaced", async (t) => {
  const { client, of } = await setup(t, { idleTimeout: 1000 });
  const sock = FakeSocket.last();
  sock.welcome("c1");
  t.mock.timers.tick(900);
  sock.send(push(7, "keeps it alive"));
  t.mock.timers.tick(900);
  sock.ping(); // a ws-style ping event counts as a frame
  t.mock.timers.tick(999);
  assert.equal(of("disconnected").length, 0);
  t.mock.timers.tick(1);
  assert.equal(of("disconnected").length, 1);
  const d = of("disconnected")[0];
  assert.equal(d.code, 1006);
  assert.match(d.reason, /heartbeat timeout/);
  assert.equal(d.willReconnect, true);
  assert.ok(sock.closedBy, "the dead socket was closed by the client");
  // Its late close event changes nothing.
  sock.serverClose(1008, "late");
  assert.equal(of("stopped").length, 0);
  t.mock.timers.tick(of("reconnecting")[0].delay);
  assert.equal(FakeSocket.all.length, 2);
  client.close();
});

test("without idleTimeout a silent connection is kept", async (t) => {
  const { client, of } = await setup(t);
  FakeSocket.last().welcome("c1");
  t.mock.timers.tick(60 * 60 * 1000);
  assert.equal(of("disconnected").length, 0);
  client.close();
});

test("an attempt without a welcome within connectTimeout is abandoned", async (t) => {
  const { client, of } = await setup(t, { connectTimeout: 3000 });
  FakeSocket.last().open();
  t.mock.timers.tick(3000);
  assert.equal(of("disconnected").length, 1);
  assert.equal(of("disconnected")[0].wasConnected, false);
  assert.ok(FakeSocket.last().closedBy);
  client.close();
});

test("positions remember the last offset and epoch per stream, across reconnects", async (t) => {
  const { client } = await setup(t);
  const sock = FakeSocket.last();
  sock.welcome("c1");
  sock.send(push(7, "a", { offset: 1, epoch: "e1" }));
  sock.send(push(7, "b", { offset: 2, epoch: "e1" }));
  sock.send(push(7, "x", { offset: 5, epoch: "e2" }));
  sock.send(push(7, "no history")); // no position
  sock.send(push(1001, member("c9", "u", ""))); // member events are not numbered
  sock.send(push(7, "old", { offset: 1, epoch: "e1" })); // never moves back
  assert.deepEqual(client.positions(), [
    { epoch: "e1", offset: 2 },
    { epoch: "e2", offset: 5 },
  ]);
  sock.serverClose(1000);
  assert.deepEqual(client.positions().length, 2);
  t.mock.timers.tick(1000);
  FakeSocket.last().welcome("c2");
  assert.deepEqual(client.positions()[0], { epoch: "e1", offset: 2 });
  // A copy: changing it does not change the client's.
  client.positions()[0].offset = 99;
  assert.equal(client.positions()[0].offset, 2);
  client.clearPositions();
  assert.deepEqual(client.positions(), []);
  client.close();
});

test("with groupOf, positions are per group and a new epoch replaces the old", async (t) => {
  const { client } = await setup(t, { groupOf: (p) => p.data?.group });
  const sock = FakeSocket.last();
  sock.welcome("c1");
  sock.send(push(7, { group: "room" }, { offset: 3, epoch: "e1" }));
  sock.send(push(7, { group: "lobby" }, { offset: 8, epoch: "e2" }));
  sock.send(push(7, { group: "room" }, { offset: 4, epoch: "e1" }));
  sock.send(push(7, "unnamed", { offset: 9, epoch: "e2" })); // keyed by epoch
  sock.send(push(7, { group: "lobby" }, { offset: 10, epoch: "e2" })); // absorbs it
  assert.deepEqual(client.position("room"), { group: "room", epoch: "e1", offset: 4 });
  assert.deepEqual(client.positions(), [
    { group: "room", epoch: "e1", offset: 4 },
    { group: "lobby", epoch: "e2", offset: 10 },
  ]);
  // The stream started again (server restarted): the new epoch wins, even at a lower offset.
  sock.send(push(7, { group: "room" }, { offset: 1, epoch: "e9" }));
  assert.deepEqual(client.position("room"), { group: "room", epoch: "e9", offset: 1 });
  assert.equal(client.position("nowhere"), undefined);
  client.close();
});

test("close() stops for good; stop() can be undone by connect()", async (t) => {
  const { client, of } = await setup(t);
  const sock = FakeSocket.last();
  sock.welcome("c1");
  client.stop();
  assert.deepEqual(sock.closedBy, [1000, ""]);
  assert.deepEqual(of("stopped"), [{ code: 0, reason: "stopped by the client", byClient: true }]);
  sock.serverClose(1000); // its close event arrives later: ignored
  t.mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1);
  client.connect();
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.last().welcome("c2");
  client.close();
  assert.equal(client.state, "stopped");
  assert.equal(client.clientId, null);
  assert.throws(() => client.connect(), /closed/);
  t.mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 2);
  // close() while waiting to reconnect cancels the retry.
  const again = await setup(t);
  FakeSocket.last().serverClose(1006);
  again.client.close();
  t.mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1);
});

test("a handler may stop the client from its disconnected event", async (t) => {
  const { client, of } = await setup(t);
  client.on("disconnected", () => client.stop());
  FakeSocket.last().serverClose(1006);
  t.mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.state, "stopped");
  assert.equal(of("reconnecting").length, 0);
});

test("a throwing handler does not keep other handlers or the client from working", async (t) => {
  const { client } = await setup(t);
  const sock = FakeSocket.last();
  sock.welcome("c1");
  const got = [];
  client.on(7, () => {
    throw new Error("app bug");
  });
  client.on(7, (d) => got.push(d));
  sock.send(push(7, 1));
  sock.send(push(7, 2));
  assert.deepEqual(got, [1, 2]);
  // The error is rethrown from a timer, where the platform reports uncaught errors.
  assert.throws(() => t.mock.timers.tick(0), /app bug/);
  client.close();
});

test("options are checked", () => {
  assert.throws(() => new WspushClient("ws://h/ws", { WebSocket: FakeSocket }), /systemId/);
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => new WspushClient("ws://h/ws", { systemId: "s" }), /pass options.WebSocket/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
  assert.throws(
    () => new WspushClient("ws://h/ws", { systemId: "s", WebSocket: FakeSocket, minReconnectDelay: 10, maxReconnectDelay: 5 }),
    /maxReconnectDelay/,
  );
});

test("autoConnect: false waits for connect()", async (t) => {
  const { client } = await setup(t, { autoConnect: false });
  assert.equal(FakeSocket.all.length, 0);
  assert.equal(client.state, "idle");
  client.connect();
  client.connect(); // already connecting: no second socket
  assert.equal(FakeSocket.all.length, 1);
  client.close();
});
