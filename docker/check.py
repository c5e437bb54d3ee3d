#!/usr/bin/env python3
"""The end-to-end check of scripts/docker-test.sh, against containers it started.

  check.py single  --port P
  check.py cluster --nginx P --node NAME=PORT ... --kill NAME --container NAME=CONTAINER ...

A real WebSocket client over real sockets (standard library only, so the check needs nothing
installed): connects, registers a system, binds to a group, pushes to one client and to the
group, and (cluster) pushes across nodes, kills one node and checks that the survivors still
deliver. Exits 1 with the step that failed.
"""
import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

SYSTEM = "dockercheck"


def fail(step, detail=""):
    print(f"docker check FAILED: {step}: {detail}", file=sys.stderr)
    sys.exit(1)


def api(port, route, body, system=SYSTEM, timeout=10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "SystemId": system},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Ws:
    """One client: the handshake, then the server's (unmasked) frames; pings are answered."""

    def __init__(self, port, what):
        self.what = what
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?systemId={SYSTEM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail(what, "closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            fail(what, head.decode(errors="replace"))
        welcome = self.recv()
        self.client_id = welcome.get("data", {}).get("clientId")
        if welcome.get("code") != 0 or not self.client_id:
            fail(what, f"welcome frame {welcome}")

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def recv(self, timeout=10):
        """The next text frame as JSON."""
        self.sock.settimeout(timeout)
        while True:
            b0, b1 = self._need(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._need(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._need(8))
            payload = self._need(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                raise EOFError(f"close frame {payload[:2].hex()}")
            elif opcode == 0x1:
                return json.loads(payload)

    def expect(self, msg, timeout=10):
        """Reads frames until the push whose msg is `msg` (1001 member events are skipped)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                frame = self.recv(max(0.1, deadline - time.time()))
            except (socket.timeout, EOFError) as e:
                fail(self.what, f"waiting for {msg!r}: {e}")
            if frame.get("msg") == msg:
                return frame
        fail(self.what, f"no push {msg!r} within {timeout} s")


def ok(reply, step):
    if reply.get("code") != 0:
        fail(step, json.dumps(reply))
    return reply


def push_and_check(port, clients, group, msg, step):
    reply = ok(
        api(port, "/api/send_to_group", {"sendUserId": "s", "groupName": group, "code": 0,
                                         "msg": msg, "data": {"n": 1}}),
        step,
    )
    for c in clients:
        c.expect(msg)
    return reply


def single(args):
    ok(api(args.port, "/api/register", {"systemId": SYSTEM}), "register")
    a, b = Ws(args.port, "client a"), Ws(args.port, "client b")
    for c in (a, b):
        ok(api(args.port, "/api/bind_to_group", {"clientId": c.client_id, "groupName": "g",
                                                  "userId": c.what, "extend": ""}), "bind")
    ok(api(args.port, "/api/send_to_client", {"clientId": a.client_id, "sendUserId": "s",
                                               "code": 0, "msg": "to-a", "data": "hi"}), "unicast")
    a.expect("to-a")
    push_and_check(args.port, [a, b], "g", "to-group", "group push")
    print("docker check: single node: unicast and group push delivered")


def cluster(args):
    nodes = dict(kv.split("=", 1) for kv in args.node)
    containers = dict(kv.split("=", 1) for kv in args.container)
    nginx = args.nginx
    ok(api(nginx, "/api/register", {"systemId": SYSTEM}), "register through nginx")
    # One client on each node, straight to its port, and three through nginx.
    clients = {name: Ws(int(port), f"client on {name}") for name, port in nodes.items()}
    via_nginx = [Ws(nginx, f"client {i} through nginx") for i in range(3)]
    everyone = list(clients.values()) + via_nginx
    for c in everyone:
        ok(api(nginx, "/api/bind_to_group", {"clientId": c.client_id, "groupName": "g",
                                              "userId": c.what, "extend": ""}), "bind")
    listed = ok(api(nginx, "/api/get_online_list", {"groupName": "g"}), "online list")["data"]
    if listed.get("count") != len(everyone):
        fail("online list across nodes", json.dumps(listed))
    # Unicast across nodes: every client pushed to through every node.
    for name, port in nodes.items():
        for c in clients.values():
            msg = f"from-{name}-to-{c.what}"
            ok(api(int(port), "/api/send_to_client", {"clientId": c.client_id, "sendUserId": "s",
                                                       "code": 0, "msg": msg, "data": "x"}),
               f"unicast via {name}")
            c.expect(msg)
    push_and_check(nginx, everyone, "g", "group-1", "group push through nginx")
    print(f"docker check: cluster: {len(everyone)} clients on {len(nodes)} nodes, "
          "unicast from every node to every node, group push through nginx")

    victim = args.kill
    subprocess.run(["docker", "kill", containers[victim]], check=True, capture_output=True)
    survivors = [c for n, c in clients.items() if n != victim]
    survivor_port = next(int(p) for n, p in nodes.items() if n != victim)
    # Until the victim's lease runs out the push says which node it could not reach; after
    # that (LeaseTtl, 5 s) the survivors deliver without it.
    deadline, attempt, reply = time.time() + 30, 0, None
    while time.time() < deadline:
        attempt += 1
        reply = push_and_check(survivor_port, survivors, "g", f"after-kill-{attempt}",
                               "group push after a node was killed")
        if not reply.get("data", {}).get("failedNodes"):
            break
        time.sleep(1)
    else:
        fail("survivors forget the killed node", json.dumps(reply))
    fresh = Ws(nginx, "new client through nginx after the kill")
    ok(api(nginx, "/api/send_to_client", {"clientId": fresh.client_id, "sendUserId": "s",
                                           "code": 0, "msg": "fresh", "data": "x"}),
       "unicast through nginx after the kill")
    fresh.expect("fresh")
    print(f"docker check: cluster: {victim} killed; the survivors deliver group pushes "
          f"({attempt} tries) and nginx serves new clients")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("single")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("cluster")
    c.add_argument("--nginx", type=int, required=True)
    c.add_argument("--node", action="append", required=True)
    c.add_argument("--container", action="append", required=True)
    c.add_argument("--kill", required=True)
    args = p.parse_args()
    single(args) if args.mode == "single" else cluster(args)


if __name__ == "__main__":
    main()
