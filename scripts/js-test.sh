#!/usr/bin/env bash
# Builds and tests the JS client (clients/js, npm package wspush-client): `npm ci` from the
# committed package-lock.json, the TypeScript build, the unit tests (node --test, a fake
# WebSocket), then two end-to-end tests against the real server (target/debug/wspush, built
# here when missing; WSPUSH_BIN names another): one in Node with its own WebSocket, one with the
# built client in Debian's headless Chromium, driven by playwright-core. `make test` runs it after the cargo tests; scripts/setup.sh
# (WSPUSH_SETUP_TEST=1) installs Node and Chromium. playwright-core never downloads a browser:
# the test launches /usr/bin/chromium (WSPUSH_CHROMIUM names another).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "js-test: $*" >&2; }

command -v node >/dev/null 2>&1 || { log "node not found: run WSPUSH_SETUP_TEST=1 scripts/setup.sh"; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    log "Node $(node --version) is too old: the client's tests need Node 20 or later"
    exit 1
fi

if [ -z "${WSPUSH_BIN:-}" ] && [ ! -x target/debug/wspush ]; then
    log "building target/debug/wspush for the browser test"
    nice -n 19 cargo build
fi

cd clients/js
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing, but say so anyway.
log "npm ci"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 nice -n 19 npm ci --no-audit --no-fund --loglevel=error
log "build"
nice -n 19 npm run --silent build
log "unit tests"
nice -n 19 node --test test/unit.test.mjs
log "Node test (Node's own WebSocket, real server)"
ws_flag=()
[ "$major" -lt 22 ] && ws_flag=(--experimental-websocket)
nice -n 19 node "${ws_flag[@]}" --no-warnings=ExperimentalWarning --test test/node.e2e.mjs
log "browser test (headless Chromium, real server)"
nice -n 19 node --test test/browser.e2e.mjs
log "passed"
