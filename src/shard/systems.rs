//! The systems this core knows and their options (secret, webhook URL): learned from core 0 or
//! etcd, checked against `MaxSystems`, and the bounded memory of systemIds etcd said are not
//! registered. Registering and looking up across cores and nodes is the router's
//! ([`crate::route::systems`]).

use super::conn::Conn;
use super::inbox::Refusal;
use super::Shard;
use crate::types::SystemInfo;
use crate::ws::frame;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`Shard::connect_lookup`] allows a `/ws` connect of a system to do.
pub enum ConnectLookup {
    /// This core knows the system.
    Known(Arc<SystemInfo>),
    /// etcd said it is not registered a moment ago: do not ask again.
    NotRegistered,
    /// Too many lookups for unknown systems this second: refuse the connect (503).
    Limited,
    /// Ask etcd (and [`Shard::note_unregistered`] if it does not know the system either).
    Ask,
}

/// How long a core remembers that a systemId a `/ws` connect asked about is not registered
/// (unless it learns the system sooner): a client reconnecting in a loop with a made-up id
/// costs one etcd read per core every 5 s, not one per connect.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// At most this many unregistered systems remembered per core (~100 bytes each); a full table
/// drops its expired entries, or everything.
const UNKNOWN_MAX: usize = 4096;
/// etcd lookups a core makes per second for `/ws` connects of systems it does not know, once
/// it has etcd's list of systems. A registered system is known to every core within the
/// watch's delay, so past that only made-up ids (or a connect racing a fresh register) need a
/// lookup: 20 a second per core is far above that and bounds what random ids cost etcd.
const UNKNOWN_LOOKUPS_PER_SEC: u32 = 20;

impl Shard {
    /// A registered system's options (secret, webhook URL), if this core knows the system.
    pub fn system_info(&self, system: &str) -> Option<Arc<SystemInfo>> {
        self.registered.borrow().get(system).cloned()
    }

    /// Systems learned from etcd (the snapshot after each connect, then the watch). etcd is
    /// the authority here, so a value an operator rewrote there (a rotated secret) replaces
    /// what this core knew.
    pub fn add_systems(self: &Rc<Self>, systems: &[(String, Arc<SystemInfo>)]) {
        self.systems_synced.set(true);
        for (system, info) in systems {
            self.learn_system(system, info.clone(), true);
        }
    }

    /// Records a system's options on this core; without `replace` the first record wins.
    /// Returns whether anything changed.
    ///
    /// The original lets clients connect to systems that are not registered yet, so when a
    /// system gains a secret (or its secret changes), this core's connections of it were never
    /// checked against that secret: they are closed with 1008 and must come back with a token.
    /// A connection verified by a token was verified after its core knew the secret, so it
    /// survives the same record arriving again (an etcd reconnect re-sends every system).
    pub fn learn_system(
        self: &Rc<Self>,
        system: &str,
        info: Arc<SystemInfo>,
        replace: bool,
    ) -> bool {
        self.unknown_systems.borrow_mut().remove(system);
        let old_secret = {
            let mut registered = self.registered.borrow_mut();
            match registered.get_mut(system) {
                Some(old) if !replace || **old == *info => return false,
                Some(old) => std::mem::replace(old, info.clone()).secret.clone(),
                None => {
                    registered.insert(Box::from(system), info.clone());
                    None
                }
            }
        };
        if info.secret.is_some() && info.secret != old_secret {
            self.close_unverified(system);
        }
        true
    }

    /// Closes (1008) this core's connections of `system`: they connected without a token the
    /// system's secret now demands.
    fn close_unverified(self: &Rc<Self>, system: &str) {
        let conns: Vec<Rc<Conn>> = (self.index.borrow().clients(system))
            .into_iter()
            .filter(|c| c.end_reason.get().is_none())
            .collect();
        if !conns.is_empty() {
            tracing::info!(
                core = self.id,
                system,
                connections = conns.len(),
                "closing the connections made without a token: their system now has a secret"
            );
        }
        for conn in conns {
            tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id, system,
                "closing a connection made without a token");
            // As close_client: a client that does not answer the close frame is cut.
            self.close_then_cut(&conn, frame::close_code::POLICY, "token required");
        }
    }

    /// Whether one more system fits under `MaxSystems` on this core's count.
    pub fn check_room(&self) -> Result<(), Refusal> {
        let known = self.registered.borrow().len();
        let most = self.config.max_systems;
        if known < most {
            return Ok(());
        }
        if let Some(skipped) = self.throttles.api_refused.admit() {
            tracing::warn!(
                core = self.id,
                known,
                also = skipped,
                "register refused: MaxSystems"
            );
        }
        Err(Refusal::MaxSystems { known, most })
    }

    /// What a `/ws` connect of `system` may do about a system this core does not know (cluster
    /// mode). Any client can connect with made-up systemIds, and each would cost an etcd read,
    /// so: a system etcd said is not registered is remembered as such for `UNKNOWN_TTL`
    /// (learning the system forgets it at once), and once etcd's list of systems is here, this
    /// core asks about at most `UNKNOWN_LOOKUPS_PER_SEC` unknown systems a second; past that
    /// the connect is refused without asking. Before that list arrives every lookup is needed
    /// (a system this core has not heard of may be registered), so none is refused.
    ///
    /// Remembering "not registered" a little too long is safe: such a connect is let in as one
    /// to an unregistered system (the original allows those), and if the system turns out to
    /// have a secret, learning it closes every connection made without a token (1008).
    pub fn connect_lookup(&self, system: &str) -> ConnectLookup {
        if let Some(info) = self.system_info(system) {
            return ConnectLookup::Known(info);
        }
        let now = Instant::now();
        let known_unknown = (self.unknown_systems.borrow().get(system))
            .is_some_and(|at| now.duration_since(*at) < UNKNOWN_TTL);
        if known_unknown {
            self.metrics.lookups_cached.inc();
            return ConnectLookup::NotRegistered;
        }
        if self.systems_synced.get() {
            let (since, asked) = self.unknown_lookups.get();
            let (since, asked) = if now.duration_since(since) >= Duration::from_secs(1) {
                (now, 0)
            } else {
                (since, asked)
            };
            if asked >= UNKNOWN_LOOKUPS_PER_SEC {
                self.metrics.lookups_limited.inc();
                return ConnectLookup::Limited;
            }
            self.unknown_lookups.set((since, asked + 1));
        }
        ConnectLookup::Ask
    }

    /// Remembers that etcd, asked at `now`, said `system` is not registered (see
    /// [`Self::connect_lookup`]).
    pub fn note_unregistered(&self, system: &str, now: Instant) {
        let mut unknown = self.unknown_systems.borrow_mut();
        if unknown.len() >= UNKNOWN_MAX {
            unknown.retain(|_, at| now.duration_since(*at) < UNKNOWN_TTL);
            if unknown.len() >= UNKNOWN_MAX {
                unknown.clear();
            }
        }
        unknown.insert(Box::from(system), now);
    }
}
