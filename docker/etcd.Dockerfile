# etcd for the compose cluster, from Debian's etcd-server package (the original's compose file
# pulls quay.io/coreos/etcd; no registry is needed here).
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/etcd/data && chown -R etcd:etcd /var/lib/etcd
USER etcd
EXPOSE 2379 2380
ENTRYPOINT ["/usr/bin/etcd", "--data-dir", "/var/lib/etcd/data"]
