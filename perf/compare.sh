#!/usr/bin/env bash
# Side-by-side comparison: the original go-websocket and wspush (and, with --floor, the bare
# syscall floor of perf/floor) driven by the same wspush-loadgen in the same run, each server
# started fresh for each run of each scenario, the servers alternating, the server pinned to
# CPU 0 (wspush with --cores 1) and the load generator to CPU 1. Prints one Markdown table of
# the medians with the ratio. See perf/README.md ("Side by side with the original").
#
#   perf/compare.sh --orig /path/to/go-websocket [--orig-conf DIR|FILE] [--wspush BIN]
#                   [--floor BIN] [--loadgen BIN] [--runs N] [--quick] [--only LIST]
#
# --orig: the original's binary, built by you from its source (nothing here builds it).
# --orig-conf: its single-node app.ini (a file, or a directory holding app.ini); HttpPort and
#   RPCPort are replaced by free ports. Default: the same generated config wspush gets.
# --wspush: default target/release/wspush. --loadgen: default target/release/wspush-loadgen.
# --floor: a server started as `BIN --port P`; a column of its own.
# --runs: runs per server and scenario (default 3; the table shows medians).
# --quick: shorter windows (connect 5,000 handshakes, 3 s of pushing); the same scenarios.
# --only: comma-separated scenarios out of idle,connect,fanout,unicast,close (default all).
# --keep DIR: keep the JSON lines of every run (results.jsonl) in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ORIG="" ORIG_CONF="" WSPUSH="$ROOT/target/release/wspush" FLOOR=""
LG="$ROOT/target/release/wspush-loadgen" RUNS=3 QUICK=0 ONLY="idle,connect,fanout,unicast,close"
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --orig) ORIG=$2; shift 2 ;;
        --orig-conf) ORIG_CONF=$2; shift 2 ;;
        --wspush) WSPUSH=$2; shift 2 ;;
        --floor) FLOOR=$2; shift 2 ;;
        --loadgen) LG=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --only) ONLY=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$ORIG" ] || { echo "--orig BIN is required (the original's binary)" >&2; exit 2; }
for b in "$ORIG" "$WSPUSH" "$LG" ${FLOOR:+"$FLOOR"}; do
    [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done
if [ -n "$ORIG_CONF" ] && [ -d "$ORIG_CONF" ]; then ORIG_CONF="$ORIG_CONF/app.ini"; fi
if [ -n "$ORIG_CONF" ] && [ ! -f "$ORIG_CONF" ]; then
    echo "no such config: $ORIG_CONF" >&2
    exit 2
fi
for tool in python3 taskset timeout; do
    command -v "$tool" >/dev/null || { echo "$0 needs $tool" >&2; exit 2; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "needs 2 CPUs (server on CPU 0, load generator on CPU 1)" >&2
    exit 2
fi

TMP=$(mktemp -d)
RESULTS="$TMP/results.jsonl"
SERVER_PID=""
cleanup() {
    stop_server
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$RESULTS" "$KEEP/" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The single-node config: the original's app.ini with fresh ports, or a generated one.
write_conf() {
    local file=$1 port=$2 rpc=$3 base=${4:-}
    if [ -n "$base" ]; then
        sed -e "s/^[[:space:]]*HttpPort[[:space:]]*=.*/HttpPort = $port/" \
            -e "s/^[[:space:]]*RPCPort[[:space:]]*=.*/RPCPort = $rpc/" "$base" >"$file"
    else
        cat >"$file" <<EOF
[common]
HttpPort = $port
RPCPort = $rpc
Cluster = false
CryptoKey = Adba723b7fe06819
[etcd]
Endpoints =
EOF
    fi
}

# start_server NAME: a fresh server on a free port, pinned to CPU 0; sets PORT, SERVER_PID.
# Its stdout and stderr go to /dev/null (the original logs a line per connection and push).
start_server() {
    local name=$1 rpc
    PORT=$(free_port)
    rpc=$(free_port)
    case "$name" in
        orig)
            write_conf "$TMP/orig.ini" "$PORT" "$rpc" "$ORIG_CONF"
            taskset -c 0 "$ORIG" -c "$TMP/orig.ini" >/dev/null 2>&1 &
            ;;
        wspush)
            write_conf "$TMP/wspush.ini" "$PORT" "$rpc"
            # As perf/run.sh: a member's queue holds a chunk's presence flood.
            printf '[wspush]\nQueueFrames = 4096\n' >>"$TMP/wspush.ini"
            taskset -c 0 "$WSPUSH" -c "$TMP/wspush.ini" --cores 1 >/dev/null 2>&1 &
            ;;
        floor)
            taskset -c 0 "$FLOOR" --port "$PORT" >/dev/null 2>&1 &
            ;;
    esac
    # taskset execs the server: $! is the server's pid (what --server-pid reads).
    SERVER_PID=$!
    # Ready when it accepts TCP (the original has no /readyz).
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not listen on port $PORT" >&2
    return 1
}

stop_server() {
    [ -n "${SERVER_PID:-}" ] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# Short-lived connections (connect, close) leave conntrack entries for about 2 minutes; a full
# table drops SYNs, which the load generator sees as 1-s stalls and "no answer within 10s" on
# either server. Before each run, wait (at most 150 s) until the table is at most 60% full.
wait_conntrack() {
    local f=/proc/sys/net/netfilter/nf_conntrack_count m=/proc/sys/net/netfilter/nf_conntrack_max
    [ -r "$f" ] && [ -r "$m" ] || return 0
    local max waited=0
    max=$(cat "$m")
    while [ "$(cat "$f")" -gt $((max * 6 / 10)) ]; do
        if [ "$waited" -ge 150 ]; then
            echo "   warning: conntrack still $(cat "$f") of $max entries; SYNs may be dropped" >&2
            CONNTRACK_FULL=1
            return 0
        fi
        [ "$waited" -gt 0 ] || echo "   waiting for conntrack entries to expire ($(cat "$f") of $max)" >&2
        sleep 5
        waited=$((waited + 5))
    done
}
CONNTRACK_FULL=0

if [ "$QUICK" = 1 ]; then
    CONNECT_TOTAL=5000 PUSH_SECS=3 UNICAST_SECS=3
else
    CONNECT_TOTAL=20000 PUSH_SECS=8 UNICAST_SECS=10
fi
scenario_args() {
    case "$1" in
        idle) echo "idle --conns 10000 --settle 2" ;;
        connect) echo "connect --total $CONNECT_TOTAL --inflight 32" ;;
        fanout) echo "fanout --conns 10000 --members 1000 --inflight 2 --regime both --duration $PUSH_SECS --procs 1" ;;
        unicast) echo "unicast --clients 1000 --workers 64 --duration $UNICAST_SECS" ;;
        close) echo "unicast --clients 1000 --workers 64 --duration $UNICAST_SECS --close" ;;
        *) echo "unknown scenario: $1" >&2; return 1 ;;
    esac
}

SERVERS="orig wspush${FLOOR:+ floor}"
IFS=',' read -r -a SCENARIOS <<<"$ONLY"
for sc in "${SCENARIOS[@]}"; do
    args=$(scenario_args "$sc")
    for run in $(seq 1 "$RUNS"); do
        for name in $SERVERS; do
            echo "== $sc run $run/$RUNS: $name" >&2
            wait_conntrack
            if ! start_server "$name"; then
                printf '{"server":"%s","case":"%s","run":%s,"error":"did not start"}\n' \
                    "$name" "$sc" "$run" >>"$RESULTS"
                stop_server
                continue
            fi
            # shellcheck disable=SC2086 # the scenario's flags are words
            line=$(timeout 900 taskset -c 1 "$LG" --port "$PORT" --server-pid "$SERVER_PID" \
                --threads 1 --json $args 2>"$TMP/lg.err" | tail -n 1) || true
            tail -n 4 "$TMP/lg.err" | sed 's/^/   /' >&2
            [ -n "$line" ] || line='{"error":"no result"}'
            python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(server=sys.argv[2], case=sys.argv[3], run=int(sys.argv[4])); print(json.dumps(d))' \
                "$line" "$name" "$sc" "$run" >>"$RESULTS"
            stop_server
        done
    done
done

if [ "$CONNTRACK_FULL" = 1 ]; then
    echo "warning: some runs started with the conntrack table over 60% full (see above)" >&2
fi
python3 - "$RESULTS" "$RUNS" "${FLOOR:+floor}" <<'EOF'
import json, statistics, sys
path, runs, floor = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "floor"
vals = {}
for line in open(path):
    d = json.loads(line)
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.setdefault((d["server"], d["case"], k), []).append(v)
def med(server, case, key):
    v = vals.get((server, case, key))
    return statistics.median(v) if v else None
def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "B" or unit == "/s":
        return f"{v:,.0f} {unit}".replace(" /s", "/s")
    return f"{v:.3g} {unit}" if v < 100 else f"{v:,.0f} {unit}"
# (label, case, key, unit, lower is better)
rows = [
    ("RSS per idle connection, 10,000", "idle", "rss_per_conn", "B", True),
    ("handshakes/s (32 in flight)", "connect", "handshakes_per_s", "/s", False),
    ("server CPU per handshake", "connect", "server_cpu_us_per_op", "us", True),
]
for regime, p in (("answer", ""), ("received", "received_")):
    what = ("push done at its HTTP answer" if regime == "answer"
            else "push in flight until every member received it")
    rows += [
        (f"fan-out 1,000 of 10,000, {what}: deliveries/s", "fanout", p + "deliveries_per_s", "/s", False),
        (f"same: server CPU per delivery", "fanout", p + "server_cpu_us_per_op", "us", True),
        (f"same: push-to-receipt p50", "fanout", p + "p50_ms", "ms", True),
        (f"same: push-to-receipt p99", "fanout", p + "p99_ms", "ms", True),
    ]
for case, what in (("unicast", "keep-alive, 64 workers"), ("close", "HTTP/1.0 + close, 64 workers")):
    rows += [
        (f"send_to_client {what}: requests/s", case, "requests_per_s", "/s", False),
        (f"same: server CPU per request", case, "server_cpu_us_per_op", "us", True),
    ]
head = "| scenario | original | wspush | ratio |" + (" floor | wspush / floor |" if floor else "")
print(head)
print("|---" * (6 if floor else 4) + "|")
for label, case, key, unit, lower in rows:
    if not any(k[1] == case for k in vals):
        continue
    o, w = med("orig", case, key), med("wspush", case, key)
    ratio = "-"
    if o and w:
        r = o / w if lower else w / o
        ratio = f"{r:.2f}x " + ("less" if lower else "more") if unit != "ms" else f"{r:.2f}x lower"
    cells = [label, fmt(o, unit), fmt(w, unit), ratio]
    if floor:
        f = med("floor", case, key)
        cells += [fmt(f, unit), f"{(w / f if lower else f / w):.2f}x" if (f and w) else "-"]
    print("| " + " | ".join(cells) + " |")
errors = [json.loads(l) for l in open(path) if '"error"' in l]
n = {}
for l in open(path):
    d = json.loads(l)
    n[(d["server"], d["case"])] = n.get((d["server"], d["case"]), 0) + 1
print()
print(f"Medians of {runs} run(s) per server and scenario; each run a fresh server pinned to CPU 0"
      " (wspush --cores 1), wspush-loadgen pinned to CPU 1, servers alternating.")
for e in errors:
    print(f"- {e['server']} {e['case']} run {e['run']}: {e['error']}")
EOF
