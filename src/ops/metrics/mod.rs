//! The node's snapshot for `GET /metrics` and the status page: every core's counters, gathered
//! and summed, with what the side threads and `/proc/self` add.
//!
//! **Where the counters live.** Each core owns a `CoreMetrics` (see [`crate::counters`]): plain
//! `Cell<u64>`s that only that core touches, so an increment on the data path is a load and a
//! store in the core's own cache, never an atomic read-modify-write on a line that other cores
//! also write. A scrape, on whichever core accepted it, asks every core for a [`CoreSnapshot`]
//! (an `Op::Metrics` over the existing cross-core `call()`), sums them into a [`NodeSnapshot`],
//! adds what the side threads keep in atomics (`counters::ETCD`, the webhook counters) and what
//! `/proc/self` says about the process ([`process`]), and renders the text ([`render`]). The
//! cost of metrics is paid when scraped, not per push.
//!
//! - [`process`]: reading `/proc/self` (memory, open files, CPU time).
//! - [`render`]: the Prometheus text format (0.0.4) of `/metrics`.

#[cfg(test)]
mod end_to_end;
pub mod process;
pub mod render;

pub use process::ProcessStats;

use crate::counters::{
    CoreSnapshot, EtcdSnapshot, LinkSnapshot, RouteStats, SystemSnapshot, Totals, REASONS,
};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything a scrape gathered: every core's snapshot plus the process-wide parts.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// This node's `host:RPCPort` (its identity in a cluster).
    pub node: String,
    pub version: &'static str,
    pub cluster: bool,
    pub ready: bool,
    pub draining: bool,
    pub uptime: Duration,
    pub start_time: SystemTime,
    /// Ordered by core id.
    pub cores: Vec<CoreSnapshot>,
    pub process: ProcessStats,
    /// Cluster mode only.
    pub etcd: Option<EtcdSnapshot>,
    /// The webhook counters (events accepted, delivered, dropped by reason, failed POSTs).
    pub webhook: Option<crate::webhook::Stats>,
}

impl Default for NodeSnapshot {
    fn default() -> Self {
        NodeSnapshot {
            node: String::new(),
            version: env!("CARGO_PKG_VERSION"),
            cluster: false,
            ready: false,
            draining: false,
            uptime: Duration::ZERO,
            start_time: UNIX_EPOCH,
            cores: Vec::new(),
            process: ProcessStats::default(),
            etcd: None,
            webhook: None,
        }
    }
}

impl NodeSnapshot {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.cores {
            t.connections += c.connections;
            t.connects += c.connects;
            t.disconnects += c.disconnects.iter().sum::<u64>();
            t.frames_pushed += c.frames_pushed;
            t.bytes_pushed += c.bytes_pushed;
            t.api_requests += c.api.iter().map(RouteStats::count).sum::<u64>();
            t.queue_full += c.queue_full;
        }
        t
    }

    pub fn disconnects(&self) -> [u64; REASONS.len()] {
        let mut sum = [0; REASONS.len()];
        for c in &self.cores {
            for (s, d) in sum.iter_mut().zip(&c.disconnects) {
                *s += d;
            }
        }
        sum
    }

    fn sum(&self, field: impl Fn(&CoreSnapshot) -> u64) -> u64 {
        self.cores.iter().map(field).sum()
    }

    /// API routes merged over the cores, by route name.
    pub fn api(&self) -> Vec<RouteStats> {
        let mut merged: BTreeMap<&str, RouteStats> = BTreeMap::new();
        for c in &self.cores {
            for r in &c.api {
                merged
                    .entry(&r.route)
                    .or_insert_with(|| RouteStats {
                        route: r.route.clone(),
                        ..RouteStats::default()
                    })
                    .merge(r);
            }
        }
        merged.into_values().collect()
    }

    /// Calls to peers that got no answer, summed over the cores, by route.
    pub fn peer_failures(&self) -> BTreeMap<&'static str, u64> {
        let mut merged = BTreeMap::new();
        for &(route, n) in self.cores.iter().flat_map(|c| &c.peer_failures) {
            *merged.entry(route).or_default() += n;
        }
        merged
    }

    /// Links merged over the cores, by peer: counts summed, round trip averaged over the cores
    /// that measured one.
    pub fn peers(&self) -> Vec<LinkSnapshot> {
        let mut merged: BTreeMap<SocketAddrV4, (LinkSnapshot, u64, u64)> = BTreeMap::new();
        for l in self.cores.iter().flat_map(|c| &c.links) {
            let (m, rtt_sum, rtt_n) = merged.entry(l.peer).or_insert_with(|| {
                (
                    LinkSnapshot {
                        peer: l.peer,
                        links_up: 0,
                        links: 0,
                        requests: 0,
                        errors: 0,
                        reconnects: 0,
                        handshake_failures: 0,
                        rtt_ns: None,
                    },
                    0,
                    0,
                )
            });
            m.links_up += l.links_up;
            m.links += l.links;
            m.requests += l.requests;
            m.errors += l.errors;
            m.reconnects += l.reconnects;
            m.handshake_failures += l.handshake_failures;
            if let Some(rtt) = l.rtt_ns {
                *rtt_sum += rtt;
                *rtt_n += 1;
            }
        }
        merged
            .into_values()
            .map(|(mut m, sum, n)| {
                m.rtt_ns = (n > 0).then(|| sum / n);
                m
            })
            .collect()
    }

    /// Systems merged over the cores (clients summed, groups merged by name), plus registered
    /// systems without clients here; most clients first.
    pub fn systems(&self) -> Vec<SystemSnapshot> {
        let mut merged: BTreeMap<&str, (u64, BTreeMap<&str, u64>)> = BTreeMap::new();
        for s in self.cores.iter().flat_map(|c| &c.systems) {
            let (clients, groups) = merged.entry(&s.system).or_default();
            *clients += s.clients;
            for (g, members) in &s.groups {
                *groups.entry(g).or_default() += members;
            }
        }
        for name in self.cores.iter().flat_map(|c| &c.registered) {
            merged.entry(name).or_default();
        }
        let mut systems: Vec<SystemSnapshot> = merged
            .into_iter()
            .map(|(system, (clients, groups))| SystemSnapshot {
                system: system.to_string(),
                clients,
                groups: groups
                    .into_iter()
                    .map(|(g, n)| (g.to_string(), n))
                    .collect(),
            })
            .collect();
        systems.sort_by(|a, b| b.clients.cmp(&a.clients).then(a.system.cmp(&b.system)));
        systems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_systems_over_cores() {
        let a = CoreSnapshot {
            systems: vec![SystemSnapshot {
                system: "app".into(),
                clients: 2,
                groups: vec![("room".into(), 2)],
            }],
            registered: vec!["app".into(), "idle".into()],
            ..CoreSnapshot::default()
        };
        let b = CoreSnapshot {
            systems: vec![SystemSnapshot {
                system: "app".into(),
                clients: 1,
                groups: vec![("room".into(), 1), ("lobby".into(), 1)],
            }],
            ..CoreSnapshot::default()
        };
        let s = NodeSnapshot {
            cores: vec![a, b],
            ..NodeSnapshot::default()
        };
        let systems = s.systems();
        assert_eq!(systems.len(), 2);
        assert_eq!(systems[0].system, "app");
        assert_eq!(systems[0].clients, 3);
        assert_eq!(
            systems[0].groups,
            vec![("lobby".to_string(), 1), ("room".to_string(), 3)]
        );
        assert_eq!(systems[1].system, "idle");
        assert_eq!(systems[1].clients, 0);
    }
}
