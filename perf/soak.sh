#!/usr/bin/env bash
# Soak: ~18,000 WebSockets held against one release wspush for minutes under steady pushes,
# sampled every 10 s (server RSS and open fds, connections the clients hold, deliveries,
# errors); at the end the server's log is checked for WARN/ERROR lines.
#
#   perf/soak.sh                   # 10 minutes, 18,000 connections, server --cores 2
#   perf/soak.sh --minutes 1       # the short check
#   perf/soak.sh --conns 18000 --procs 2 --cores 2 --out DIR
#
# The server runs with the default queue limits, unpinned on both CPUs (--cores 2: pushes cross
# cores). The load generator opens the connections from --procs worker processes (one process
# may hold 20,000 files here), source addresses 127.0.0.2 and up, 5,000 per address; it binds
# them into groups of 100 and pushes 20 send_to_group/s and 200 send_to_client/s (about 2,200
# deliveries/s). Results in DIR: soak.csv (the samples), soak.json (the summary as JSON),
# soak.log (the summary), server.log (the server's stderr).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

MINUTES=10
CONNS=18000
PROCS=2
CORES=2
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="$2"; shift ;;
        --conns) CONNS="$2"; shift ;;
        --procs) PROCS="$2"; shift ;;
        --cores) CORES="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown flag: $1" >&2; exit 2 ;;
    esac
    shift
done

[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/wspush-soak.XXXXXX")
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wspush-soak-run.XXXXXX")
# shellcheck source=perf/server.sh
source "$ROOT/perf/server.sh"
build_binaries
SERVER_PIN=()

SECS=$((MINUTES * 60))
start_server "" "$OUT/server.log"
echo "soak: server pid $SERVER_PID on port $PORT (--cores $CORES), $CONNS connections from $PROCS processes, $MINUTES min; results in $OUT" >&2
# Opening and group building take a minute or two; the drain after the pushes up to a minute.
timeout $((SECS + 900)) "$LG" --port "$PORT" --server-pid "$SERVER_PID" \
    --server-log "$OUT/server.log" --procs "$PROCS" --json \
    soak --conns "$CONNS" --duration "$SECS" --csv "$OUT/soak.csv" \
    >"$OUT/soak.json" 2> >(tee "$OUT/soak.log" >&2) &
LG_PID=$!
rc=0
wait "$LG_PID" || rc=$?
LG_PID=""
stop_server

# Anything the server logged at WARN or ERROR, shutdown included.
BAD=$(grep -cE '^[^ ]+ +(WARN|ERROR) ' "$OUT/server.log" || true)
echo >&2
echo "server log: $BAD WARN/ERROR lines ($OUT/server.log)" >&2
grep -E '^[^ ]+ +(WARN|ERROR) ' "$OUT/server.log" | head -5 >&2 || true
python3 - "$OUT/soak.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
if not rows:
    sys.exit("no samples")
step = max(1, len(rows) // 6)
picked = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
print("\n| t (s) | server RSS | server fds | client connections | deliveries | deliveries/s | p99 | server CPU |")
print("|---|---|---|---|---|---|---|---|")
for r in picked:
    rss = f"{int(r['server_rss_bytes']) / 2**20:.1f} MiB" if r["server_rss_bytes"] else "-"
    p99 = f"{r['p99_ms']} ms" if r["p99_ms"] else "-"
    cpu = f"{r['server_cpu_pct']}%" if r["server_cpu_pct"] else "-"
    print(f"| {float(r['t_s']):.0f} | {rss} | {r['server_fds']} | {int(r['client_conns']):,} | "
          f"{int(r['deliveries']):,} | {r['deliveries_per_s'] or '-'} | {p99} | {cpu} |")
EOF
if [ "$rc" != 0 ]; then
    echo "the load generator failed (exit status $rc); see $OUT/soak.log" >&2
    exit "$rc"
fi
echo "raw results: $OUT" >&2
[ "$BAD" = 0 ]
