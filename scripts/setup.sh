#!/usr/bin/env bash
# Installs what building and testing wspush needs on a fresh Debian machine with Rust.
# Idempotent: skips what is already there. Used by `make run` and `make test`.
set -euo pipefail

need=()
# protoc: the etcd client's build compiles etcd's protobuf definitions.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ "${WSPUSH_SETUP_TEST:-0}" = 1 ]; then
  # Real components the integration tests start themselves: etcd for cluster membership,
  # nginx in front of the nodes, Chromium for the status page.
  [ -x /usr/bin/etcd ] || need+=(etcd-server)
  [ -x /usr/sbin/nginx ] || need+=(nginx)
  # Headless Chromium: tests/status_page.rs loads the /status page and reads its DOM.
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # openssl: the etcd TLS test makes its own CA and certificates; prlimit (util-linux): the
  # open-files tests start the server under a lower limit.
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
  # Node and npm: scripts/js-test.sh builds and tests the JS client (clients/js); its tests need
  # Node 20 or later (Debian 13's nodejs; on Debian 12 install Node 20 from NodeSource first).
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
