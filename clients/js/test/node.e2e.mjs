// End-to-end in Node, with the platform's WebSocket (Node 22+; Node 20 with
// --experimental-websocket) against the real wspush server: connect, receive a numbered push,
// the server closes the connection, reconnect with a new clientId, re-bind with `since`; and in a
// system with singleConnection, the replaced client stops on 4001 instead of reconnecting.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { WspushClient } from "../dist/index.js";
import { Server, sleep } from "./harness.mjs";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wspush-js-node-"));
const server = new Server(dir);
let client;
let rivals = [];

before(async () => {
  await server.start();
});

after(async () => {
  client?.close();
  rivals.forEach((c) => c.close());
  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Waits until `cond()` holds, for at most 20 s. */
async function until(cond, what) {
  for (const end = Date.now() + 20000; !cond(); await sleep(20)) {
    assert.ok(Date.now() < end, `timed out waiting for ${what}\n--- wspush log ---\n${server.log().slice(-3000)}`);
  }
}

test("Node's own WebSocket: receive, reconnect, recover", { timeout: 60000 }, async () => {
  assert.equal(typeof globalThis.WebSocket, "function", "run with Node 22+, or Node 20 with --experimental-websocket");
  const sys = "js-node";
  await server.ok(null, "/api/register", { systemId: sys, history: { size: 10 } });
  const connected = [];
  const got = [];
  client = new WspushClient(`ws://127.0.0.1:${server.port}/ws`, {
    systemId: sys,
    minReconnectDelay: 100,
    groupOf: () => "room",
  });
  client.on("connected", (e) => connected.push(e));
  client.on(7, (data, p) => got.push([data, p.offset]));
  const push = (n) =>
    server.ok(sys, "/api/send_to_group", { groupName: "room", sendUserId: "", code: 7, msg: "", data: n });

  await until(() => connected.length === 1, "the welcome");
  await server.ok(sys, "/api/bind_to_group", { clientId: connected[0].clientId, groupName: "room", userId: "", extend: "" });
  await push(1);
  await until(() => got.length === 1, "push 1");
  await server.ok(sys, "/api/close_client", { clientId: connected[0].clientId });
  await until(() => connected.length === 2, "the reconnect");
  assert.notEqual(connected[1].clientId, connected[0].clientId);
  await push(2);
  const since = client.position("room");
  assert.equal(since.offset, 1);
  const bound = await server.ok(sys, "/api/bind_to_group", {
    clientId: connected[1].clientId, groupName: "room", userId: "", extend: "",
    since: { offset: since.offset, epoch: since.epoch },
  });
  assert.deepEqual(bound, { recovered: true });
  await until(() => got.length === 2, "the missed push");
  await sleep(100);
  assert.deepEqual(got, [[1, 1], [2, 2]]);
});

test("singleConnection: the replaced client stops on 4001, the newer one stays", { timeout: 60000 }, async () => {
  const sys = "js-single";
  await server.ok(null, "/api/register", { systemId: sys, singleConnection: true });
  const events = [[], []];
  rivals = [0, 1].map((i) => {
    const c = new WspushClient(`ws://127.0.0.1:${server.port}/ws`, { systemId: sys, minReconnectDelay: 100 });
    c.on("connected", (e) => events[i].push(["connected", e.clientId]));
    c.on("stopped", (e) => events[i].push(["stopped", e.code]));
    return c;
  });
  await until(() => events.every((e) => e.length === 1), "both welcomes");
  const bind = (i) =>
    server.ok(sys, "/api/bind_to_group", { clientId: events[i][0][1], groupName: "room", userId: "dana", extend: "" });
  await bind(0);
  await bind(1);
  await until(() => events[0].length === 2, "the older client's stop");
  assert.deepEqual(events[0][1], ["stopped", 4001]);
  await sleep(500);
  assert.equal(events[0].length, 2, "no reconnect after 4001");
  assert.equal(events[1].length, 1, "the newer client stays connected");
  const online = await server.ok(sys, "/api/is_online", { clientId: events[1][0][1] });
  assert.deepEqual(online, { online: true });
});
