#!/usr/bin/env python3
"""Instructions per operation of a wspush binary, counted by callgrind: repeatable on a shared,
noisy machine where the throughput figures of perf/run.sh swing by 2x between minutes.

  perf/instructions.py [--bin target/release/wspush] [--unicast N] [--group-pushes N] [--members M]
                       [--history SIZE]

Runs the server (--cores 1) under `valgrind --tool=callgrind` three times: idle (start, register,
connect M clients, stop), with N keep-alive send_to_client requests more, and with N send_to_group
pushes to a group of M members more (with --history SIZE, to a system registered with group
history of that size: the cost of numbering and keeping each push). Subtracting the idle run's
total leaves the instructions of the operations alone: per request, per push, per delivery. Needs valgrind (Debian's package).
"""
import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

SYSTEM = "instr"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Http:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")

    def post(self, route, body):
        data = json.dumps(body).encode()
        self.sock.sendall(
            f"POST {route} HTTP/1.1\r\nHost: x\r\nSystemId: {SYSTEM}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        length = 0
        status = self.file.readline()
        while True:
            line = self.file.readline().strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        reply = json.loads(self.file.read(length))
        if not status.startswith(b"HTTP/1.1 200") or reply.get("code") != 0:
            sys.exit(f"{route}: {status!r} {reply}")
        return reply


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws?systemId={SYSTEM} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b'"clientId"' not in buf or not buf.endswith(b"}}"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connect: closed")
        buf += chunk
    client_id = re.search(rb'"clientId":"([^"]+)"', buf).group(1).decode()
    # Nobody reads these sockets during the run: a large receive buffer keeps the server from
    # seeing a slow consumer.
    return s, client_id


def run(binary, members, unicast, pushes, history):
    port, rpc = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="wspush-instr.")
    config = os.path.join(work, "app.ini")
    with open(config, "w") as f:
        f.write(f"[common]\nHttpPort = {port}\nRPCPort = {rpc}\nCluster = false\n"
                "CryptoKey = Adba723b7fe06819\n[wspush]\nQueueFrames = 100000\n"
                "QueueBytes = 1073741824\n"
                + (f"HistorySize = {history}\nHistoryMaxBytes = 1073741824\n" if history else ""))
    out = os.path.join(work, "callgrind.out")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
         "-c", config, "--cores", "1"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    deadline = time.time() + 120
    while True:
        try:
            http = Http(port)
            break
        except OSError:
            if time.time() > deadline:
                sys.exit("server did not start under valgrind")
            time.sleep(0.5)
    register = {"systemId": SYSTEM}
    if history:
        register["history"] = {"size": history}
    http.post("/api/register", register)
    clients = [ws_connect(port) for _ in range(members)]
    for n, (_, cid) in enumerate(clients):
        http.post("/api/bind_to_group", {"clientId": cid, "groupName": "g", "userId": f"u{n}",
                                         "extend": ""})
    target = clients[0][1]
    for _ in range(unicast):
        http.post("/api/send_to_client", {"clientId": target, "sendUserId": "s", "code": 7,
                                          "msg": "m", "data": "hello"})
    for _ in range(pushes):
        http.post("/api/send_to_group", {"groupName": "g", "sendUserId": "s", "code": 7,
                                         "msg": "m", "data": "hello"})
    time.sleep(1)  # let the flusher write what it holds
    server.terminate()
    server.wait(timeout=120)
    total = None
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    return total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/wspush")
    p.add_argument("--unicast", type=int, default=2000)
    p.add_argument("--group-pushes", type=int, default=200)
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--history", type=int, default=0)
    a = p.parse_args()
    idle = run(a.bin, a.members, 0, 0, a.history)
    uni = run(a.bin, a.members, a.unicast, 0, a.history)
    group = run(a.bin, a.members, 0, a.group_pushes, a.history)
    per_req = (uni - idle) / a.unicast
    per_push = (group - idle) / a.group_pushes
    print(json.dumps({"bin": a.bin, "history": a.history, "idle_total": idle,
                      "unicast_instructions_per_request": round(per_req),
                      "group_instructions_per_push": round(per_push),
                      "group_instructions_per_delivery": round(per_push / a.members, 1)}))


if __name__ == "__main__":
    main()
