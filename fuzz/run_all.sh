#!/usr/bin/env bash
# The long libFuzzer runs: one target at a time, at the lowest CPU priority, so they can run on
# a shared machine. Each target runs FUZZ_SECS seconds (default 600) over a grown corpus in
# corpus-run/<target> (not in git) seeded from corpus/<target> (in git); a crash stops that
# target and lands in artifacts/<target>/. Logs: logs/<target>.log, one line per target in
# logs/summary.txt.
#
#   fuzz/run_all.sh                      # every target, 10 minutes each
#   FUZZ_SECS=60 fuzz/run_all.sh ws_frame
set -u
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-600}
targets=${*:-http_request ws_handshake ws_frame api_request client_id node_frame auth}
mkdir -p logs
# -a: debug assertions and overflow checks on, so arithmetic overflow is a crash too.
nice -n 19 cargo +nightly fuzz build -a || exit 1
for t in $targets; do
    mkdir -p "corpus-run/$t"
    start=$(date +%s)
    dict=()
    case $t in
    http_request | ws_handshake) dict=(-dict=dicts/http.dict) ;;
    esac
    nice -n 19 cargo +nightly fuzz run -a "$t" "corpus-run/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 "${dict[@]}" >"logs/$t.log" 2>&1
    rc=$?
    end=$(date +%s)
    echo "$(date -u +%FT%TZ) $t rc=$rc secs=$((end - start)) corpus=$(ls "corpus-run/$t" | wc -l)" \
        >>logs/summary.txt
done
