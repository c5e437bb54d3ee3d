#!/usr/bin/env python3
"""Memory per stored history message: a server (--cores 1) with HistorySize = N, one group of a
history system receiving N send_to_group pushes of a D-byte `data`; the server's VmRSS before and
after, and its own accounting (/metrics: wspush_history_messages, wspush_history_bytes).

  perf/history_memory.py [--bin target/release/wspush] [--pushes N] [--data-bytes D]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from instructions import Http, free_port, SYSTEM  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def gauges(port):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("wspush_history_messages", "wspush_history_bytes", "wspush_history_streams"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                out[name] = out.get(name, 0) + float(line.split()[-1])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/wspush")
    p.add_argument("--pushes", type=int, default=100000)
    p.add_argument("--data-bytes", type=int, default=100)
    a = p.parse_args()
    port, rpc = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="wspush-histmem.")
    config = os.path.join(work, "app.ini")
    with open(config, "w") as f:
        f.write(f"[common]\nHttpPort = {port}\nRPCPort = {rpc}\nCluster = false\n"
                "CryptoKey = Adba723b7fe06819\n[wspush]\n"
                f"HistorySize = {a.pushes}\nHistoryTtl = 3600\nHistoryMaxBytes = 1073741824\n")
    server = subprocess.Popen([a.bin, "-c", config, "--cores", "1"], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        for _ in range(100):
            try:
                http = Http(port)
                break
            except OSError:
                time.sleep(0.1)
        http.post("/api/register", {"systemId": SYSTEM, "history": {"size": a.pushes,
                                                                     "ttlSeconds": 3600}})
        data = "x" * a.data_bytes
        http.post("/api/send_to_group", {"groupName": "g", "sendUserId": "s", "code": 7,
                                         "msg": "m", "data": data})
        time.sleep(0.5)
        before = rss_kib(server.pid)
        for _ in range(a.pushes - 1):
            http.post("/api/send_to_group", {"groupName": "g", "sendUserId": "s", "code": 7,
                                             "msg": "m", "data": data})
        time.sleep(0.5)
        after = rss_kib(server.pid)
        g = gauges(port)
        stored = g.get("wspush_history_messages", 0)
        print(json.dumps({
            "bin": a.bin, "pushes": a.pushes, "data_bytes": a.data_bytes,
            "stored": stored, "rss_kib_before": before, "rss_kib_after": after,
            "rss_bytes_per_message": round((after - before) * 1024 / max(1, a.pushes - 1)),
            "accounted_bytes_per_message": round(g.get("wspush_history_bytes", 0) / max(1, stored)),
        }))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
