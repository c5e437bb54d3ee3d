// End-to-end in Node, with the platform's WebSocket (Node 22+; Node 20 with
// --experimental-websocket) against the real wspush server: connect, receive a numbered push,
// the server closes the connection, reconnect with a new clientId, re-bind with `since`.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { WspushClient } from "../dist/index.js";
import { Server, sleep } from "./harness.mjs";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wspush-js-node-"));
const server = new Server(dir);
let client;

after(async () => {
  client?.close();
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
  await server.start();
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
