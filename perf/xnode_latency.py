#!/usr/bin/env python3
"""Cross-node push latency: one client on node 2; 2000 sequential send_to_client over keep-alive
HTTP to node 2 (same node), then to node 1 (cross node); prints the request+delivery round trip.

    python3 perf/xnode_latency.py <node1 HttpPort> <node2 HttpPort>
"""
import websocket, json, time, socket, statistics, sys
def post(sock, port, route, body, sid="xn"):
    b = json.dumps(body).encode()
    sock.sendall(f"POST /api/{route} HTTP/1.1\r\nHost: x\r\nSystemId: {sid}\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b)
    data = b""
    while b"\r\n\r\n" not in data: data += sock.recv(4096)
    head, rest = data.split(b"\r\n\r\n", 1)
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < n: rest += sock.recv(4096)
    return json.loads(rest[:n])
p1, p2 = int(sys.argv[1]), int(sys.argv[2])
s1 = socket.create_connection(("127.0.0.1", p1))
print(post(s1, p1, "register", {"systemId": "xn"}))
ws = websocket.create_connection(f"ws://127.0.0.1:{p2}/ws?systemId=xn"); cid = json.loads(ws.recv())["data"]["clientId"]
for target_port, label in ((p2, "same node"), (p1, "cross node")):
    s = socket.create_connection(("127.0.0.1", target_port))
    lat = []
    for i in range(2000):
        t = time.perf_counter(); post(s, target_port, "send_to_client", {"clientId": cid, "code": 7, "data": i}); ws.recv(); lat.append((time.perf_counter() - t) * 1e3)
    lat.sort()
    print(f"{label}: request+delivery round trip p50={lat[1000]:.3f} ms p99={lat[1980]:.3f} ms")
