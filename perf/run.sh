#!/usr/bin/env bash
# Runs every load scenario against a fresh wspush and prints a Markdown table of medians.
#
#   perf/run.sh                  # server on CPU 0 (--cores 1), load generator on CPU 1, 3 runs each
#   perf/run.sh --quick          # shorter runs, 1 each, the 10,000-member group cut to 2,000
#   perf/run.sh --both-cores     # server --cores 2 on both CPUs, load generator unpinned
#   perf/run.sh --only fanout-1k # one scenario, or several: --only unicast-keepalive,unicast-half
#                                # (names: see SCENARIOS below)
#   perf/run.sh --out DIR        # keep raw results in DIR (default: a temp dir, kept and printed)
#
# Every run starts a fresh server on free ports with a temp config (its stderr kept beside the
# results and scanned for WARN/ERROR lines) and stops it afterwards; each run is bounded by
# `timeout`; on exit the trap stops whatever this script started. See perf/README.md for what
# each scenario measures.
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
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown flag: $1" >&2; exit 2 ;;
    esac
    shift
done

SCENARIOS="idle-10k idle-18k connect fanout-1k fanout-1k-half fanout-10k unicast-keepalive unicast-half unicast-close batch system stalled"
for name in ${ONLY//,/ }; do
    if ! grep -qw -- "$name" <<<"$SCENARIOS"; then
        echo "unknown scenario $name; one of: $SCENARIOS" >&2
        exit 2
    fi
done

if [ "$BOTH" = 0 ] && [ "$(nproc)" -lt 2 ]; then
    echo "pinning needs 2 CPUs; this machine has $(nproc)" >&2
    exit 2
fi

if [ "$QUICK" = 1 ]; then
    FAN_SECS=3; UNI_SECS=3; CONNECT_TOTAL=10000; BIG_MEMBERS=2000; STALL_SECS=30
else
    FAN_SECS=8; UNI_SECS=10; CONNECT_TOTAL=20000; BIG_MEMBERS=10000; STALL_SECS=40
fi
# The server's [wspush] lines: a queue deep enough for the presence floods of group building.
DEFAULT_INI="QueueFrames = 4096"
# stalled: a stalled client absorbs ~4 MB of kernel socket buffers (tcp_wmem's maximum, which
# the server's send buffer autotunes to) before its queue grows at all; 256 frames instead of
# 1024 and 2 KB pushes get it dropped in tens of seconds (the stalled window goes on until it
# is). PongTimeout 300 s, so it is dropped for its full queue, not for the pongs it stops
# sending.
STALL_INI=$'QueueFrames = 256\nPongTimeout = 300'
STALL_ARGS=(stalled --clients 200 --duration "$STALL_SECS" --pad 2000)
# The 10,000-member group costs 50 M presence frames to build: give it up to 20 minutes.
BIG_CAP=1200

[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/wspush-perf.XXXXXX")
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wspush-run.XXXXXX")

# shellcheck source=perf/server.sh
source "$ROOT/perf/server.sh"
build_binaries

if [ "$BOTH" = 1 ]; then
    SERVER_PIN=(); LG_PIN=(); CORES=2; MODE="server --cores 2 on both CPUs, load generator unpinned"
else
    SERVER_PIN=(taskset -c 0); LG_PIN=(taskset -c 1); CORES=1
    MODE="server on CPU 0 (--cores 1), load generator on CPU 1"
fi

# run_one NAME RUN LIMIT_SECONDS LOADGEN_ARGS...: one run against a fresh server, configured
# with $SERVER_INI.
SERVER_INI=$DEFAULT_INI
run_one() {
    local name=$1 run=$2 limit=$3
    shift 3
    local json="$OUT/$name.$run.json" log="$OUT/$name.$run.log" slog="$OUT/$name.$run.server.log"
    start_server "$SERVER_INI" "$slog"
    echo "--- $name run $run: wspush-loadgen $*" >&2
    timeout "$limit" "${LG_PIN[@]}" "$LG" --port "$PORT" --server-pid "$SERVER_PID" \
        --server-log "$slog" --json "$@" >"$json" 2>"$log" &
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

want() { [ -z "$ONLY" ] || grep -qw -- "$1" <<<"${ONLY//,/ }"; }

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
runs system "$RUNS" 300 system --clients 10000 --workers 2 --duration "$FAN_SECS"
SERVER_INI=$STALL_INI
runs stalled "$RUNS" 600 "${STALL_ARGS[@]}"
SERVER_INI=$DEFAULT_INI
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
    ("system", "send_to_system to 10,000 clients, 2 keep-alive workers", [
        ("deliveries/s", "deliveries_per_s", ""), ("requests/s", "requests_per_s", ""),
        ("push-to-receipt p50", "p50_ms", "ms"), ("p99", "p99_ms", "ms")]),
]
ROWS.append(("stalled", "slow consumers: 200 clients in one group, 20 stop reading", [
    ("pushes/s (half the measured maximum)", "rate", ""),
    ("readers' p50: before", "baseline_p50_ms", "ms"), ("stalled", "stalled_p50_ms", "ms"),
    ("after", "after_p50_ms", "ms"),
    ("p99: before", "baseline_p99_ms", "ms"), ("stalled", "stalled_p99_ms", "ms"),
    ("after", "after_p99_ms", "ms"),
    ("p99.9: before", "baseline_p999_ms", "ms"), ("stalled", "stalled_p999_ms", "ms"),
    ("after", "after_p999_ms", "ms"),
    ("p50 stalled / mean(before, after)", "p50_ratio", "x"),
    ("p99 stalled / mean(before, after)", "p99_ratio", "x"),
    ("p99.9 stalled / mean(before, after)", "p999_ratio", "x"),
    ("p99 after / before (drift, nobody stalled)", "drift_p99_ratio", "x"),
    ("dropped by the server (slow-consumer log lines)", "log_slow_consumer_lines", ""),
    ("stalled clients named by exactly one line", "log_stalled_named_once", ""),
    ("dropped, s after the stall (log, median)", "log_median_s", "s"),
    ("dropped within the window (group count)", "server_dropped_in_window", "")]))

def fmt(v, unit):
    if v is None or v == "":
        return "-"
    if unit == "ms":
        return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.1f} s"
    if unit == "x":
        return f"{v:.2f}x"
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
        elif r.get("server_error_lines") or (r.get("server_warn_lines") and name != "stalled"):
            errors.append(f"{name}: the server logged {r.get('server_warn_lines', 0)} WARN and "
                          f"{r.get('server_error_lines', 0)} ERROR lines (see its .server.log)")
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
