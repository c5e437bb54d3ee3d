#!/usr/bin/env python3
"""Idle-connection memory of a running wspush: opens N WebSockets, waits for every welcome frame,
and prints the server's VmRSS growth per connection.

    python3 perf/idle_rss.py --port 7800 --pid $(pgrep -f 'wspush -c') -n 10000

Stays under one process's 20,000 open files; spreads source addresses over 127.0.0.2.. so the
ephemeral ports of one address are never the limit. Bounded: it stops after N connections.
"""
import argparse
import socket
import time

REQ = (b"GET /ws?systemId=perf HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       b"Sec-WebSocket-Version: 13\r\n\r\n")


IP_BIND_ADDRESS_NO_PORT = 24


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=7800)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    args = ap.parse_args()
    assert args.n < 19000, "one process holds at most ~19000 sockets here"
    before = rss(args.pid)
    socks = []
    start = time.time()
    batch = []
    for i in range(args.n):
        # A new source address every 5000 connections; IP_BIND_ADDRESS_NO_PORT lets the kernel
        # pick the port at connect time (by 4-tuple), not at bind time.
        src = f"127.0.0.{2 + i // 5000}"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.connect(("127.0.0.1", args.port))
        s.sendall(REQ)
        socks.append(s)
        batch.append(s)
        if len(batch) == 256 or i == args.n - 1:
            for b in batch:
                data = b""
                while b"clientId" not in data:
                    chunk = b.recv(4096)
                    if not chunk:
                        raise RuntimeError("server closed a connection during the handshake")
                    data += chunk
            batch = []
    elapsed = time.time() - start
    time.sleep(1.0)
    after = rss(args.pid)
    print(f"connections={args.n} rss_before={before} rss_after={after} "
          f"bytes_per_connection={(after - before) / args.n:.0f} connect_seconds={elapsed:.2f}")


if __name__ == "__main__":
    main()
