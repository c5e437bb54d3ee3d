#!/usr/bin/env bash
# Runs every load scenario against a fresh wspush and prints a Markdown table of medians.
#
#   perf/run.sh                  # server on CPU 0 (--cores 1), load generator on CPU 1, 3 runs each
#   perf/run.sh --quick          # shorter runs, 1 each, the 10,000-member group cut to 2,000
#   perf/run.sh --both-cores     # server --cores 2 on both CPUs, load generator unpinned
#   perf/run.sh --only fanout-1k # one scenario (names: see SCENARIOS below)
#   perf/run.sh --out DIR        # keep raw results in DIR (default: a temp dir, kept and printed)
#
# Every run starts a fresh server on free ports with a temp config (stderr to /dev/null) and
# stops it afterwards; each run is bounded by `timeout`; on exit the trap stops whatever this
# script started. See perf/README.md for what each scenario measures.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNS=3
QUICK=0
BOTH=0
ONLY=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; RUNS=1 ;;
        --both-cores) BOTH=1 ;;
        --only) ONLY="$2"; shift ;;
        --runs) RUNS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown flag: $1" >&2; exit 2 ;;
    esac
    shift
done

SCENARIOS="idle-10k idle-18k connect fanout-1k fanout-1k-half fanout-10k unicast-keepalive unicast-half unicast-close batch"
if [ -n "$ONLY" ] && ! grep -qw -- "$ONLY" <<<"$SCENARIOS"; then
    echo "unknown scenario $ONLY; one of: $SCENARIOS" >&2
    exit 2
fi

for tool in curl python3 timeout; do
    command -v "$tool" >/dev/null || { echo "perf/run.sh needs $tool" >&2; exit 2; }
done
if [ "$BOTH" = 0 ] && [ "$(nproc)" -lt 2 ]; then
    echo "pinning needs 2 CPUs; this machine has $(nproc)" >&2
    exit 2
fi

if [ "$QUICK" = 1 ]; then
    FAN_SECS=3; UNI_SECS=3; CONNECT_TOTAL=10000; BIG_MEMBERS=2000
else
    FAN_SECS=8; UNI_SECS=10; CONNECT_TOTAL=20000; BIG_MEMBERS=10000
fi
# The 10,000-member group costs 50 M presence frames to build: give it up to 20 minutes.
BIG_CAP=1200

[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/wspush-perf.XXXXXX")
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wspush-run.XXXXXX")

SERVER_PID=""
LG_PID=""
cleanup() {
    if [ -n "$LG_PID" ]; then kill "$LG_PID" 2>/dev/null || true; fi
    stop_server
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building (cargo build --release)..." >&2
cargo build --release --quiet
# WSPUSH_BIN: another server binary to measure (e.g. a build of an older commit, for before/after).
SERVER="${WSPUSH_BIN:-$ROOT/target/release/wspush}"
LG="$ROOT/target/release/wspush-loadgen"

if [ "$BOTH" = 1 ]; then
    SERVER_PIN=(); LG_PIN=(); CORES=2; MODE="server --cores 2 on both CPUs, load generator unpinned"
else
    SERVER_PIN=(taskset -c 0); LG_PIN=(taskset -c 1); CORES=1
    MODE="server on CPU 0 (--cores 1), load generator on CPU 1"
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_server() {
    PORT=$(free_port)
    local rpc
    rpc=$(free_port)
    cat >"$TMP/app.ini" <<EOF
[common]
HttpPort = $PORT
RPCPort = $rpc
Cluster = false
CryptoKey = Adba723b7fe06819
[etcd]
Endpoints =
[wspush]
QueueFrames = 4096
EOF
    # taskset execs the server, so $! is the server's own pid (what --server-pid reads).
    "${SERVER_PIN[@]}" "$SERVER" -c "$TMP/app.ini" --cores "$CORES" 2>/dev/null >/dev/null &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz"; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "the server did not become ready on port $PORT" >&2
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# run_one NAME RUN LIMIT_SECONDS LOADGEN_ARGS...: one run against a fresh server.
run_one() {
    local name=$1 run=$2 limit=$3
    shift 3
    start_server
    local json="$OUT/$name.$run.json" log="$OUT/$name.$run.log"
    echo "--- $name run $run: wspush-loadgen $*" >&2
    timeout "$limit" "${LG_PIN[@]}" "$LG" --port "$PORT" --server-pid "$SERVER_PID" --json "$@" \
        >"$json" 2>"$log" &
    LG_PID=$!
    local rc=0
    wait "$LG_PID" || rc=$?
    LG_PID=""
    sed 's/^/    /' "$log" >&2
    if [ "$rc" != 0 ]; then
        echo "    (exit status $rc)" >&2
        [ -s "$json" ] || echo "{\"scenario\":\"$name\",\"error\":\"exit status $rc\"}" >"$json"
    fi
    stop_server
}

# median_of NAME KEY: the median of KEY over NAME's runs (empty if none).
median_of() {
    python3 - "$OUT" "$1" "$2" <<'EOF'
import glob, json, statistics, sys
out, name, key = sys.argv[1:]
vals = []
for f in sorted(glob.glob(f"{out}/{name}.*.json")):
    try:
        v = json.load(open(f)).get(key)
    except Exception:
        continue
    if isinstance(v, (int, float)):
        vals.append(v)
print(statistics.median(vals) if vals else "")
EOF
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

runs() {
    local name=$1 n=$2 limit=$3
    shift 3
    want "$name" || return 0
    for i in $(seq 1 "$n"); do run_one "$name" "$i" "$limit" "$@"; done
}

START=$(date +%s)
runs idle-10k "$RUNS" 300 idle --conns 10000
runs idle-18k "$RUNS" 300 idle --conns 18000
runs connect "$RUNS" 300 connect --total "$CONNECT_TOTAL" --inflight 32
runs fanout-1k "$RUNS" 600 fanout --conns 10000 --members 1000 --duration "$FAN_SECS" --inflight 2
if want fanout-1k-half; then
    FAN_MAX=$(median_of fanout-1k pushes_per_s)
    if [ -n "$FAN_MAX" ]; then
        HALF=$(python3 -c "print(max(1, round($FAN_MAX / 2)))")
        runs fanout-1k-half "$RUNS" 600 fanout --conns 10000 --members 1000 --duration "$FAN_SECS" \
            --inflight 2 --rate "$HALF"
    else
        echo "fanout-1k-half needs fanout-1k's rate: skipped" >&2
    fi
fi
runs fanout-10k 1 $((BIG_CAP + 300)) fanout --conns 10000 --members "$BIG_MEMBERS" \
    --duration "$FAN_SECS" --inflight 2 --presence-cap "$BIG_CAP"
runs unicast-keepalive "$RUNS" 300 unicast --clients 1000 --workers 64 --duration "$UNI_SECS"
if want unicast-half; then
    UNI_MAX=$(median_of unicast-keepalive requests_per_s)
    if [ -n "$UNI_MAX" ]; then
        HALF=$(python3 -c "print(max(1, round($UNI_MAX / 2)))")
        runs unicast-half "$RUNS" 300 unicast --clients 1000 --workers 64 --duration "$UNI_SECS" \
            --rate "$HALF"
    else
        echo "unicast-half needs unicast-keepalive's rate: skipped" >&2
    fi
fi
runs unicast-close "$RUNS" 300 unicast --clients 1000 --workers 64 --duration "$UNI_SECS" --close
runs batch "$RUNS" 300 batch --clients 1000 --ids-per-request 100 --workers 16 --duration "$UNI_SECS"
ELAPSED=$(( $(date +%s) - START ))

python3 - "$OUT" "$MODE" "$ELAPSED" "$BIG_MEMBERS" <<'EOF' | tee "$OUT/table.md"
import glob, json, statistics, sys
out, mode, elapsed, big = sys.argv[1:]
# scenario -> (description, [(figure, key, unit)])
ROWS = [
    ("idle-10k", "10,000 idle WebSockets", [
        ("RSS per connection", "rss_per_conn", "B"), ("connects/s", "connects_per_s", "")]),
    ("idle-18k", "18,000 idle WebSockets", [
        ("RSS per connection", "rss_per_conn", "B"), ("connects/s", "connects_per_s", "")]),
    ("connect", "handshakes, 32 in flight", [
        ("handshakes/s", "handshakes_per_s", ""), ("connect-to-welcome p99", "handshake_p99_ms", "ms")]),
    ("fanout-1k", "fan-out: 1,000 of 10,000 in one group, 2 pushes in flight", [
        ("deliveries/s", "deliveries_per_s", ""), ("pushes/s", "pushes_per_s", ""),
        ("push-to-receipt p50", "p50_ms", "ms"), ("p99", "p99_ms", "ms"), ("p99.9", "p999_ms", "ms")]),
    ("fanout-1k-half", "the same at half fanout-1k's push rate", [
        ("deliveries/s", "deliveries_per_s", ""), ("push-to-receipt p50", "p50_ms", "ms"),
        ("p99", "p99_ms", "ms"), ("p99.9", "p999_ms", "ms")]),
    ("fanout-10k", f"fan-out: {int(big):,} of 10,000 in one group (one run)", [
        ("deliveries/s", "deliveries_per_s", ""), ("push-to-receipt p50", "p50_ms", "ms"),
        ("p99", "p99_ms", "ms"), ("group build (presence frames)", "bind_s", "s"),
        ("presence frames/s", "presence_per_s", "")]),
    ("unicast-keepalive", "send_to_client, 64 HTTP/1.1 keep-alive workers", [
        ("requests/s", "requests_per_s", ""), ("push-to-receipt p50", "p50_ms", "ms"),
        ("p99", "p99_ms", "ms"), ("p99.9", "p999_ms", "ms")]),
    ("unicast-half", "the same at half unicast-keepalive's rate", [
        ("requests/s", "requests_per_s", ""), ("push-to-receipt p50", "p50_ms", "ms"),
        ("p99", "p99_ms", "ms"), ("p99.9", "p999_ms", "ms")]),
    ("unicast-close", "send_to_client, HTTP/1.0 + Connection: close", [
        ("requests/s", "requests_per_s", ""), ("push-to-receipt p50", "p50_ms", "ms"),
        ("p99", "p99_ms", "ms")]),
    ("batch", "send_to_clients, 100 ids per request, 16 workers", [
        ("deliveries/s", "deliveries_per_s", ""), ("requests/s", "requests_per_s", ""),
        ("push-to-receipt p50", "p50_ms", "ms"), ("p99", "p99_ms", "ms")]),
]

def fmt(v, unit):
    if v is None or v == "":
        return "-"
    if unit == "ms":
        return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.1f} s"
    return f"{v:,.0f}" + (f" {unit}" if unit else "")

def med(vals):
    return statistics.median(vals) if vals else None

print(f"\n## wspush-loadgen results ({mode}; {elapsed} s)\n")
print("| scenario | figure | median | runs | server CPU per op | CPU busy: server / load generator |")
print("|---|---|---|---|---|---|")
errors = []
for name, desc, figures in ROWS:
    runs = []
    for f in sorted(glob.glob(f"{out}/{name}.*.json")):
        try:
            runs.append(json.load(open(f)))
        except Exception as e:
            errors.append(f"{f}: {e}")
    if not runs:
        continue
    for r in runs:
        if "error" in r:
            errors.append(f"{name}: {r['error']}")
    ok = [r for r in runs if "error" not in r]
    for i, (fig, key, unit) in enumerate(figures):
        vals = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        cpu = lg = ""
        if i == 0:
            us = med([r["server_cpu_us_per_op"] for r in ok if "server_cpu_us_per_op" in r])
            op = ok[0].get("op", "op") if ok else "op"
            cpu = f"{us:.3g} us/{op}" if us is not None else "-"
            spct = med([r["server_cpu_pct"] for r in ok if "server_cpu_pct" in r])
            lpct = med([r["loadgen_cpu_pct"] for r in ok if "loadgen_cpu_pct" in r])
            lg = " / ".join("-" if p is None else f"{p:.0f}%" for p in (spct, lpct))
        label = f"{desc}" if i == 0 else ""
        print(f"| {label} | {fig} | {fmt(med(vals), unit)} | "
              f"{' / '.join(fmt(v, unit) for v in vals) or '-'} | {cpu} | {lg} |")
print("\nServer CPU per op: the server's utime + stime over the measured window / operations "
      "(only meaningful when the server is busy). CPU busy: share of one core over the window "
      "(server from /proc/PID/stat, load generator from getrusage of itself and its workers); "
      "the side near 100% per core it has is the limit.")
print(f"\nRaw results (one JSON line per run, logs beside them): {out}")
for e in errors:
    print(f"- error: {e}")
EOF
