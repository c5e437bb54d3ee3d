# Sourced by perf/run.sh and perf/soak.sh (from the repository root): build the binaries, start
# and stop one wspush on free ports, and clean up whatever the script started when it exits.
#
# The caller sets ROOT (the repository), TMP (a directory for the config), and before
# start_server SERVER_PIN (an array: a taskset prefix, or empty) and CORES. build_binaries sets
# SERVER and LG; start_server sets PORT and SERVER_PID; the caller keeps the load generator's
# pid in LG_PID while it runs. Sourcing installs the exit trap.

for tool in curl python3 timeout; do
    command -v "$tool" >/dev/null || { echo "$0 needs $tool" >&2; exit 2; }
done

SERVER_PID=""
LG_PID=""

# Builds the release binaries; SERVER is $WSPUSH_BIN if set (another server binary, e.g. a build
# of an older commit, for before/after), else the one just built; LG is the load generator.
build_binaries() {
    echo "building (cargo build --release --bin wspush --bin wspush-loadgen)..." >&2
    cargo build --release --quiet --bin wspush --bin wspush-loadgen
    SERVER="${WSPUSH_BIN:-$ROOT/target/release/wspush}"
    LG="$ROOT/target/release/wspush-loadgen"
}

# On exit or Ctrl-C: the load generator (its worker processes exit when its pipes close), the
# server, the temp directory.
cleanup() {
    if [ -n "$LG_PID" ]; then
        kill "$LG_PID" 2>/dev/null || true
        wait "$LG_PID" 2>/dev/null || true
    fi
    stop_server
    if [ -n "${TMP:-}" ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server [WSPUSH_INI_LINES] [STDERR_FILE]: the lines go into the [wspush] section of a
# fresh config (e.g. "QueueFrames = 4096"); stderr goes to the file (default /dev/null).
start_server() {
    local extra=${1:-} log=${2:-/dev/null}
    PORT=$(free_port)
    local rpc
    rpc=$(free_port)
    cat >"$TMP/app.ini" <<EOF
[common]
HttpPort = $PORT
RPCPort = $rpc
Cluster = false
CryptoKey = 5c1e0a7d9b3f42e8a6d0c4b2f7e91a3d
[etcd]
Endpoints =
[wspush]
$extra
EOF
    # taskset execs the server, so $! is the server's own pid (what --server-pid reads).
    "${SERVER_PIN[@]}" "$SERVER" -c "$TMP/app.ini" --cores "$CORES" 2>"$log" >/dev/null &
    SERVER_PID=$!
    wait_ready "$PORT" "$SERVER_PID"
}

# wait_ready PORT PID: polls /readyz for up to 10 s; fails early if PID exits.
wait_ready() {
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:$1/readyz"; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "the server did not become ready on port $1" >&2
    return 1
}

stop_server() {
    [ -n "${SERVER_PID:-}" ] || return 0
    stop_pids "$SERVER_PID"
    SERVER_PID=""
}

# stop_pids PID...: SIGTERM to all, up to 5 s each to exit, then SIGKILL; reaps them.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
