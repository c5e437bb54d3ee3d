#!/usr/bin/env bash
# Builds the two base images the Dockerfiles start from, locally, from Debian's packages, for a
# machine that cannot pull them from a registry:
#
#   wspush-local/debian:bookworm-slim   stands in for debian:bookworm-slim (runtime, etcd, nginx)
#   wspush-local/rust:bookworm          stands in for rust:1-bookworm (the build stage): Debian's
#                                       build tools plus this machine's Rust toolchain
#
# Each is a root file system made by mmdebstrap and brought in with `docker import`; an image
# that already exists is kept (WSPUSH_REBUILD_BASE=1 rebuilds). The Dockerfiles are the same ones
# that use the official images elsewhere: scripts/docker-test.sh passes these names as build
# arguments (RUNTIME_IMAGE, RUST_IMAGE).
#
# Where this machine reaches the internet through a TLS-inspecting proxy, its extra CA
# certificates (/usr/local/share/ca-certificates) go into both images, so that apt and cargo
# inside a build trust it too; the official images never see them.
set -euo pipefail

RUNTIME=wspush-local/debian:bookworm-slim
BUILDER=wspush-local/rust:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

have() { docker image inspect "$1" >/dev/null 2>&1 && [ "${WSPUSH_REBUILD_BASE:-0}" != 1 ]; }

work=$(mktemp -d "${TMPDIR:-/tmp}/wspush-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Trust this machine's extra CAs (a proxy's) inside the image, and leave apt's sources in place.
customize=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$work/ca"
    cp /usr/local/share/ca-certificates/*.crt "$work/ca/"
    customize+=(--customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\"")
    customize+=(--customize-hook="cp $work/ca/*.crt \"\$1/usr/local/share/ca-certificates/\"")
    customize+=(--customize-hook="chroot \"\$1\" update-ca-certificates >/dev/null")
fi

if ! have "$RUNTIME"; then
    echo "docker-base: building $RUNTIME from Debian bookworm (mmdebstrap, minbase)" >&2
    mmdebstrap --quiet --variant=minbase --include=ca-certificates \
        "${customize[@]}" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
        bookworm "$work/runtime.tar" "$MIRROR"
    docker import --change 'CMD ["bash"]' "$work/runtime.tar" "$RUNTIME" >/dev/null
fi

if ! have "$BUILDER"; then
    # The official rust image is Debian with gcc and friends, Rust under /usr/local/cargo and
    # /usr/local/rustup, and cargo on PATH. The same here, with the toolchain this machine has
    # (rustup cannot download another one here).
    toolchain=$(rustc --print sysroot)
    echo "docker-base: building $BUILDER from Debian bookworm and $toolchain" >&2
    mmdebstrap --quiet --variant=minbase \
        --include=ca-certificates,gcc,libc6-dev,make,pkg-config,git,curl \
        "${customize[@]}" \
        --customize-hook="mkdir -p \"\$1/usr/local/rustup/toolchains\" \"\$1/usr/local/cargo/bin\"" \
        --customize-hook="cp -a $toolchain \"\$1/usr/local/rustup/toolchains/local\"" \
        --customize-hook='rm -rf "$1"/usr/local/rustup/toolchains/local/share/doc' \
        --customize-hook='for b in "$1"/usr/local/rustup/toolchains/local/bin/*; do ln -s "/usr/local/rustup/toolchains/local/bin/$(basename "$b")" "$1/usr/local/cargo/bin/"; done' \
        bookworm "$work/builder.tar" "$MIRROR"
    docker import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "$work/builder.tar" "$BUILDER" >/dev/null
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^wspush-local/' >&2
