# wspush: a small runtime image with the server, built in a Rust stage.
#
#   docker build -t wspush .
#   docker run --rm -p 7800:7800 wspush
#
# The base images are build arguments so that a machine without a registry can build from
# images made locally out of Debian's packages (scripts/docker-base.sh, used by
# scripts/docker-test.sh); elsewhere the defaults are the official images.
#
# glommio runs every core on io_uring. Docker 25 and later block the io_uring syscalls in their
# default seccomp profile: run with `--security-opt seccomp=unconfined` (or a profile that allows
# io_uring_setup, io_uring_enter and io_uring_register) there; the server says so in one line if
# it cannot set up a ring.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# etcd-client's build script compiles etcd's .proto files with protoc (and its well-known types).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first, against stub sources, so that a change under src/ does not build them
# again.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src perf/loadgen benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > perf/loadgen/main.rs \
    && echo 'fn main() {}' > benches/pieces.rs \
    && cargo build --release --locked --bin wspush \
    && rm -rf src perf benches
COPY src src
# `wspush genconfig` prints conf/app.ini, built into the binary.
COPY conf/app.ini conf/app.ini
COPY perf/loadgen perf/loadgen
COPY benches benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin wspush \
    && strip target/release/wspush

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin wspush
COPY --from=build /src/target/release/wspush /usr/local/bin/wspush
COPY conf/app.ini /etc/wspush/app.ini
# glibc's `rep movsb` memcpy is many times slower on the Zen 3 CPUs we measured (README, systemd).
ENV GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1000000000
USER wspush
# 7800: HTTP API and /ws (HttpPort); 7900: node links (RPCPort, cluster mode only).
EXPOSE 7800 7900
# SIGTERM drains: clients get 1001, the node leaves etcd, and it exits within ShutdownGrace
# (2 s in conf/app.ini), well inside `docker stop`'s 10 s; raise `--time` with ShutdownGrace.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
    CMD ["wspush", "probe"]
ENTRYPOINT ["wspush", "-c", "/etc/wspush/app.ini"]
