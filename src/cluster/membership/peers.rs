//! The peer table: the node keys seen in etcd, and the peer set derived from them (every node
//! but this one), which the thread sends to the cores as `ToCores::Peers`.

use super::keys::parse_server_key;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddrV4;

/// The node keys seen in etcd, and the peer set derived from them (all of them minus ourselves).
#[derive(Debug)]
pub(super) struct PeerTable {
    self_addr: SocketAddrV4,
    by_key: BTreeMap<String, SocketAddrV4>,
    /// Keys already warned about (one warn per bad key).
    warned: HashSet<String>,
}

impl PeerTable {
    pub(super) fn new(self_addr: SocketAddrV4) -> Self {
        PeerTable {
            self_addr,
            by_key: BTreeMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Replaces the whole table with a fresh read of the prefix.
    pub(super) fn reset<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
        self.by_key.clear();
        for (key, value) in kvs {
            self.put(key, value);
        }
    }

    pub(super) fn put(&mut self, key: &str, value: &[u8]) {
        match parse_server_key(key, value) {
            Some(addr) => {
                self.by_key.insert(key.to_string(), addr);
            }
            None => {
                self.by_key.remove(key);
                if self.warned.insert(key.to_string()) {
                    tracing::warn!(
                        key,
                        value = %String::from_utf8_lossy(value),
                        "ignoring etcd node key: neither key nor value is an ip:port"
                    );
                }
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// The other nodes: sorted, deduplicated, without our own address.
    pub(super) fn peers(&self) -> Vec<SocketAddrV4> {
        let set: BTreeSet<SocketAddrV4> = self
            .by_key
            .values()
            .copied()
            .filter(|a| *a != self.self_addr)
            .collect();
        set.into_iter().collect()
    }
}

/// Logs who joined and who left between two peer sets.
pub(super) fn log_peer_diff(old: &[SocketAddrV4], new: &[SocketAddrV4]) {
    for a in new.iter().filter(|a| !old.contains(a)) {
        tracing::info!(peer = %a, "peer joined");
    }
    for a in old.iter().filter(|a| !new.contains(a)) {
        tracing::info!(peer = %a, "peer left");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn peer_set_excludes_self_and_bad_keys() {
        let me = addr("10.0.0.1:7900");
        let mut t = PeerTable::new(me);
        t.reset([
            ("/wsServers/10.0.0.1:7900", b"10.0.0.1:7900".as_slice()),
            ("/wsServers/10.0.0.3:7900", b"10.0.0.3:7900".as_slice()),
            ("/wsServers/10.0.0.2:7900", b"10.0.0.2:7900".as_slice()),
            ("/wsServers/bogus", b"bogus".as_slice()),
        ]);
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.2:7900"), addr("10.0.0.3:7900")]
        );
        assert!(t.warned.contains("/wsServers/bogus"));

        t.put("/wsServers/10.0.0.4:7900", b"10.0.0.4:7900");
        t.put("/wsServers/10.0.0.4:7900", b"10.0.0.4:7900");
        assert_eq!(t.peers().len(), 3);
        t.remove("/wsServers/10.0.0.2:7900");
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.3:7900"), addr("10.0.0.4:7900")]
        );
        // Our own key going away does not change the peer set.
        t.remove("/wsServers/10.0.0.1:7900");
        assert_eq!(
            t.peers(),
            vec![addr("10.0.0.3:7900"), addr("10.0.0.4:7900")]
        );
        // A reset replaces everything.
        t.reset([("/wsServers/10.0.0.9:7900", b"".as_slice())]);
        assert_eq!(t.peers(), vec![addr("10.0.0.9:7900")]);
        // Two keys naming the same address give it once.
        t.put("/wsServers/alias", b"10.0.0.9:7900");
        assert_eq!(t.peers(), vec![addr("10.0.0.9:7900")]);
    }
}
