#!/usr/bin/env bash
# Cross-node pushes: etcd and two wspush nodes (--cores 1 each) on CPU 0, wspush-loadgen on
# CPU 1 with its WebSockets on node 2 and its API requests on node 1, so every push crosses
# the node link (the cluster row of ../shared/BASELINE.md). A fresh cluster per run.
#
#   perf/cluster.sh                 # unicast and fan-out, 3 runs each
#   perf/cluster.sh --runs 1 --out DIR
#
# Needs /usr/bin/etcd (scripts/setup.sh installs it with WSPUSH_SETUP_TEST=1). Everything it
# starts is stopped on exit; each load run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown flag: $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x /usr/bin/etcd ] || { echo "perf/cluster.sh needs /usr/bin/etcd (apt-get install etcd-server)" >&2; exit 2; }
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/wspush-cluster.XXXXXX")
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wspush-cluster-run.XXXXXX")

# shellcheck source=perf/server.sh
source "$ROOT/perf/server.sh"
build_binaries

ETCD_PID="" NODE1_PID="" NODE2_PID=""
stop_cluster() {
    # shellcheck disable=SC2086 # unset ones are empty and drop out
    stop_pids $NODE1_PID $NODE2_PID $ETCD_PID
    ETCD_PID="" NODE1_PID="" NODE2_PID=""
    rm -rf "$TMP/etcd"
}
trap 'stop_cluster; cleanup' EXIT

# start_cluster: etcd, then two nodes, all on CPU 0; sets PORT1, PORT2 and NODE2_PID.
start_cluster() {
    local client peer rpc1 rpc2
    client=$(free_port); peer=$(free_port)
    taskset -c 0 /usr/bin/etcd --name default --data-dir "$TMP/etcd" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" >"$TMP/etcd.log" 2>&1 &
    ETCD_PID=$!
    PORT1=$(free_port); rpc1=$(free_port); PORT2=$(free_port); rpc2=$(free_port)
    for n in 1 2; do
        local http rpc
        if [ $n = 1 ]; then http=$PORT1 rpc=$rpc1; else http=$PORT2 rpc=$rpc2; fi
        cat >"$TMP/node$n.ini" <<INI
[common]
HttpPort = $http
RPCPort = $rpc
Cluster = true
CryptoKey = 5c1e0a7d9b3f42e8a6d0c4b2f7e91a3d
[etcd]
Endpoints = 127.0.0.1:$client
[wspush]
AdvertiseHost = 127.0.0.1
INI
        taskset -c 0 "$SERVER" -c "$TMP/node$n.ini" --cores 1 2>"$TMP/node$n.log" >/dev/null &
        if [ $n = 1 ]; then NODE1_PID=$!; else NODE2_PID=$!; fi
    done
    wait_ready "$PORT1" "$NODE1_PID"; wait_ready "$PORT2" "$NODE2_PID"
    # Each node must see the other before the first push: poll node 1's metrics for its peer.
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$PORT1/metrics" | grep -q '^wspush_peer_links_up'; then return 0; fi
        sleep 0.1
    done
}

run_one() {
    local name=$1 run=$2
    shift 2
    start_cluster
    echo "--- $name run $run: wspush-loadgen --port $PORT2 --api-port $PORT1 $*" >&2
    local rc=0
    timeout 300 taskset -c 1 "$LG" --port "$PORT2" --api-port "$PORT1" --server-pid "$NODE2_PID" \
        --json "$@" >"$OUT/$name.$run.json" 2>"$OUT/$name.$run.log" || rc=$?
    sed 's/^/    /' "$OUT/$name.$run.log" >&2
    [ "$rc" = 0 ] || echo "    (exit status $rc)" >&2
    cp "$TMP/node1.log" "$OUT/$name.$run.node1.log"; cp "$TMP/node2.log" "$OUT/$name.$run.node2.log"
    stop_cluster
}

for i in $(seq 1 "$RUNS"); do
    run_one xnode-unicast "$i" unicast --clients 1000 --workers 64 --duration 10
    run_one xnode-fanout "$i" fanout --conns 10000 --members 1000 --duration 8 --inflight 2
done

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import glob, json, statistics, sys
out = sys.argv[1]
rows = [("xnode-unicast", "send_to_client via node 1 to clients on node 2, 64 keep-alive workers",
         [("requests/s", "requests_per_s", ""), ("p50", "p50_ms", " ms"), ("p99", "p99_ms", " ms")]),
        ("xnode-fanout", "send_to_group via node 1, 1,000 members on node 2, 2 in flight",
         [("deliveries/s", "deliveries_per_s", ""), ("p50", "p50_ms", " ms"), ("p99", "p99_ms", " ms")])]
print("| scenario | figure | median | runs |\n|---|---|---|---|")
for name, what, figs in rows:
    runs = []
    for f in sorted(glob.glob(f"{out}/{name}.*.json")):
        try:
            runs.append(json.load(open(f)))
        except Exception:
            pass
    for i, (fig, key, unit) in enumerate(figs):
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        fmt = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
        med = f"{fmt(statistics.median(vals))}{unit}" if vals else "-"
        print(f"| {what if i == 0 else ''} | {fig} | {med} | {' / '.join(fmt(v) for v in vals)} |")
PY
echo "raw results: $OUT" >&2
