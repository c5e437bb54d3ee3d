#!/usr/bin/env bash
# Builds the wspush image and runs it for real: one node alone, then docker-compose.yml's cluster
# (three etcd, three wspush nodes, nginx), with docker/check.py as the client: WebSocket clients
# through nginx and straight to each node, unicast and group pushes across nodes, one node killed
# and the survivors checked. `make test` runs it last; WSPUSH_SKIP_DOCKER=1 skips it, saying so.
#
# What it needs it installs (docker.io, docker-compose, mmdebstrap from Debian) and starts
# (dockerd, when none answers; stopped again at the end). Base images come from the registry
# when it answers, else from scripts/docker-base.sh. Everything it starts is named
# wspushtest<pid> and removed at the end, on failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${WSPUSH_SKIP_DOCKER:-0}" = 1 ]; then
    echo "docker-test: SKIPPED (WSPUSH_SKIP_DOCKER=1)" >&2
    exit 0
fi

log() { echo "docker-test: $*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi

ID=wspushtest$$
TAG=$ID
work=$(mktemp -d "${TMPDIR:-/tmp}/$ID.XXXXXX")
started_dockerd=
cleanup() {
    status=$?
    if [ $status -ne 0 ]; then
        log "FAILED; container logs follow"
        docker logs "$ID-single" 2>&1 | tail -20 >&2 || true
        "${compose[@]}" -p "$ID" logs --tail 30 >&2 2>/dev/null || true
    fi
    docker rm -f "$ID-single" "$ID-nouring" >/dev/null 2>&1 || true
    "${compose[@]}" -p "$ID" down -v --remove-orphans >/dev/null 2>&1 || true
    docker image rm "wspush:$TAG" "wspush-etcd:$TAG" "wspush-nginx:$TAG" >/dev/null 2>&1 || true
    if [ -n "$started_dockerd" ]; then
        kill "$started_dockerd" 2>/dev/null || true
        wait "$started_dockerd" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: $work/dockerd.log)"
    dockerd >"$work/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { cat "$work/dockerd.log" >&2; exit 1; }
fi

# The official base images, or local ones made from Debian's packages.
export RUST_IMAGE=rust:1-bookworm RUNTIME_IMAGE=debian:bookworm-slim
if ! { timeout 60 docker pull -q "$RUNTIME_IMAGE" && timeout 300 docker pull -q "$RUST_IMAGE"; } >/dev/null 2>&1; then
    log "no registry: base images from Debian's packages (scripts/docker-base.sh)"
    ./scripts/docker-base.sh
    export RUST_IMAGE=wspush-local/rust:bookworm RUNTIME_IMAGE=wspush-local/debian:bookworm-slim
fi

t=$(now)
docker build -q --build-arg RUST_IMAGE --build-arg RUNTIME_IMAGE -t "wspush:$TAG" . >/dev/null
size=$(docker image inspect -f '{{.Size}}' "wspush:$TAG")
log "image wspush:$TAG built in $(since "$t") s, $((size / 1000000)) MB"

# --- one node, the image's own single-node config ---------------------------------------------
run_opts=(--ulimit memlock=8388608:8388608 --security-opt seccomp=unconfined)
t=$(now)
docker run -d --name "$ID-single" -p 127.0.0.1::7800 "${run_opts[@]}" "wspush:$TAG" >/dev/null
port=$(docker port "$ID-single" 7800/tcp | head -1 | sed 's/.*://')
ready_at() {
    for _ in $(seq 300); do
        python3 - "$@" <<'PY' && return 0
import sys, urllib.request
for port in sys.argv[1:]:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
PY
        sleep 0.1
    done
    return 1
}
ready_at "$port" || { log "single node: /readyz never answered 200"; exit 1; }
log "single node ready (/readyz 200) $(since "$t") s after docker run"
for _ in $(seq 100); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$ID-single")" = healthy ] && break
    sleep 0.2
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$ID-single")" = healthy ] \
    || { log "single node never became healthy"; exit 1; }
log "single node healthy (HEALTHCHECK wspush probe, every 5 s) $(since "$t") s after docker run"
python3 docker/check.py single --port "$port"
[ "$(docker exec "$ID-single" id -u)" != 0 ] || { log "the server runs as root"; exit 1; }
t=$(now)
docker stop "$ID-single" >/dev/null
docker logs -t "$ID-single" 2>&1 | tail -4 >"$work/stop.log"
code=$(docker inspect -f '{{.State.ExitCode}}' "$ID-single")
docker logs "$ID-single" 2>&1 | grep -q "wspush stopped" || { log "no clean stop in the log"; exit 1; }
[ "$code" = 0 ] || { log "exit code $code after docker stop"; exit 1; }
log "docker stop: drained and exited 0 in $(since "$t") s"

# Without io_uring (a seccomp profile that blocks it) the start fails with one line saying so.
cat >"$work/no-uring.json" <<'JSON'
{"defaultAction": "SCMP_ACT_ALLOW",
 "syscalls": [{"names": ["io_uring_setup"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
JSON
if docker run --name "$ID-nouring" --security-opt seccomp="$work/no-uring.json" \
    "wspush:$TAG" >"$work/nouring.log" 2>&1; then
    log "started without io_uring"; exit 1
fi
grep -q "io_uring is not allowed here" "$work/nouring.log" \
    || { cat "$work/nouring.log" >&2; log "no clear io_uring error"; exit 1; }
log "without io_uring: refused with: $(grep -o 'cannot start: io_uring is not allowed here.*' "$work/nouring.log" | cut -c1-90)..."

# --- the cluster ------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export WSPUSH_TAG=$TAG WS1_PORT=$(free_port) WS2_PORT=$(free_port) WS3_PORT=$(free_port) NGINX_PORT=$(free_port)
"${compose[@]}" -p "$ID" build -q >/dev/null 2>&1 || "${compose[@]}" -p "$ID" build
t=$(now)
"${compose[@]}" -p "$ID" up -d >/dev/null 2>&1
ready=
ready_at "$WS1_PORT" "$WS2_PORT" "$WS3_PORT" "$NGINX_PORT" && ready=1
[ -n "$ready" ] || { log "cluster not ready within 30 s"; exit 1; }
log "cluster (3 etcd, 3 wspush, nginx) ready $(since "$t") s after compose up"
container() { "${compose[@]}" -p "$ID" ps -q "$1"; }
python3 docker/check.py cluster --nginx "$NGINX_PORT" \
    --node "ws1=$WS1_PORT" --node "ws2=$WS2_PORT" --node "ws3=$WS3_PORT" \
    --container "ws1=$(container ws1)" --container "ws2=$(container ws2)" \
    --container "ws3=$(container ws3)" --kill ws2
log "passed"
