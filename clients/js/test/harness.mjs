// What the end-to-end tests share: the real wspush server on free ports, a TCP relay in front
// of it, JWTs and signed API calls (docs/auth.md).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const pkg = path.resolve(here, "..");
const repo = path.resolve(pkg, "../..");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** $WSPUSH_BIN, else ../../target/debug/wspush, else ../../target/release/wspush. */
function serverBinary() {
  const candidates = process.env.WSPUSH_BIN
    ? [process.env.WSPUSH_BIN]
    : [path.join(repo, "target/debug/wspush"), path.join(repo, "target/release/wspush")];
  const found = candidates.find((p) => fs.existsSync(p));
  assert.ok(found, `no wspush binary at ${candidates.join(" or ")}: run cargo build first`);
  return found;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * The real server, one process at a time, restartable; its config and log in `dir`. With a
 * `proxy`, every start points the proxy at the new port.
 */
export class Server {
  constructor(dir, proxy = null) {
    this.config = path.join(dir, "app.ini");
    this.logPath = path.join(dir, "server.log");
    this.proxy = proxy;
    this.child = null;
  }
  /**
   * Starts the server on new free ports: a restarted wspush cannot bind the port it had while
   * connections it closed are in TIME_WAIT, so clients reach it through a `Proxy`.
   */
  async start() {
    this.port = await freePort();
    const rpcPort = await freePort();
    fs.writeFileSync(
      this.config,
      `[common]\nHttpPort = ${this.port}\nRPCPort = ${rpcPort}\nCluster = false\nCryptoKey = Adba723b7fe06819\n` +
        `[etcd]\nEndpoints =\n[wspush]\nHistorySize = 100\n`,
    );
    if (this.proxy) this.proxy.target = this.port;
    const log = fs.openSync(this.logPath, "a");
    this.child = spawn(serverBinary(), ["-c", this.config, "--cores", "2"], {
      stdio: ["ignore", log, log],
    });
    fs.closeSync(log);
    const exited = new Promise((r) => this.child.once("exit", (code) => r(code)));
    const deadline = Date.now() + 30000;
    for (;;) {
      const code = await Promise.race([exited, sleep(100).then(() => undefined)]);
      assert.equal(code, undefined, `wspush exited with ${code}:\n${this.log()}`);
      try {
        const res = await fetch(`http://127.0.0.1:${this.port}/readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      assert.ok(Date.now() < deadline, `wspush not ready in 30 s:\n${this.log()}`);
    }
  }
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const gone = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await gone;
    this.child = null;
  }
  log() {
    try {
      return fs.readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }
  async api(system, route, body) {
    const headers = { "Content-Type": "application/json" };
    if (system !== null) headers.SystemId = system;
    const res = await fetch(`http://127.0.0.1:${this.port}${route}`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${route}: HTTP ${res.status}`);
    return res.json();
  }
  async ok(system, route, body) {
    const v = await this.api(system, route, body);
    assert.equal(v.code, 0, `${route} ${JSON.stringify(body)} answered ${JSON.stringify(v)}`);
    return v.data;
  }
}

/**
 * A TCP relay in front of the server, on a port that stays the same across server restarts.
 * `freeze()` stops relaying on the connections open now (the sockets stay open, nothing
 * passes: a dead path as a phone on a dropped network sees it); new connections relay again.
 */
export class Proxy {
  constructor() {
    this.target = 0;
    this.pairs = new Set();
    this.srv = net.createServer((down) => {
      const up = net.connect(this.target, "127.0.0.1");
      const pair = { down, up };
      this.pairs.add(pair);
      down.pipe(up);
      up.pipe(down);
      const end = () => {
        this.pairs.delete(pair);
        down.destroy();
        up.destroy();
      };
      for (const s of [down, up]) {
        s.on("error", end);
        s.on("close", end);
      }
    });
  }
  listen() {
    return new Promise((r) => this.srv.listen(0, "127.0.0.1", () => r(this.srv.address().port)));
  }
  freeze() {
    for (const { down, up } of this.pairs) {
      down.unpipe(up);
      up.unpipe(down);
      down.pause();
      up.pause();
    }
    this.pairs.clear();
  }
  close() {
    for (const { down, up } of this.pairs) {
      down.destroy();
      up.destroy();
    }
    this.srv.close();
  }
}

export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + createHmac("sha256", secret).update(head).digest("base64url");
}

/** An API call of a system with a secret: X-Timestamp and X-Signature (docs/auth.md). */
export async function signedApi(server, secret, system, route, body) {
  const raw = JSON.stringify(body);
  const ts = String(Math.floor(Date.now() / 1000));
  const sig = createHmac("sha256", secret).update(`POST\n${route}\n${system}\n${ts}\n` + raw).digest("hex");
  const res = await fetch(`http://127.0.0.1:${server.port}${route}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", SystemId: system, "X-Timestamp": ts, "X-Signature": sig },
    body: raw,
  });
  assert.equal(res.status, 200, `${route}: HTTP ${res.status} ${await res.clone().text()}`);
  return res.json();
}
