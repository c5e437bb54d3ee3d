//! Registering and looking up systems: core 0 is the single writer on one node, etcd decides
//! in a cluster, and every core of this node learns the result ([`Op::AddSystem`]). The table
//! each core keeps is the shard's ([`crate::shard::systems`]).

use super::Router;
use crate::shard::inbox::{Op, Refusal, Reply};
use crate::shard::systems::ConnectLookup;
use crate::types::SystemInfo;
use futures_util::future::join_all;
use std::rc::Rc;
use std::sync::Arc;

/// Why a system could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Cluster mode: etcd could not answer (the text says why).
    #[error("{0}")]
    Etcd(String),
    /// A `/ws` connect of a system this core does not know, past the lookups it makes a second.
    #[error("too many connects for unknown systems on this core")]
    Limited,
}

/// Why `register` did not record a system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Cluster mode: etcd could not answer (the text says why).
    #[error("{0}")]
    Etcd(String),
    /// `MaxSystems` systems are known already.
    #[error("{0}")]
    Full(Refusal),
}

impl Router {
    /// Whether a system is registered (see [`Self::lookup_system`]).
    pub async fn is_registered(self: &Rc<Self>, system: &str) -> Result<bool, LookupError> {
        Ok(self.lookup_system(system).await?.is_some())
    }

    /// A registered system's options, `None` when it is not registered. In cluster mode a name
    /// this core has not heard of yet is looked up in etcd (value and all), so a request racing
    /// the watch is neither wrongly refused nor let through without its secret's checks.
    pub async fn lookup_system(
        self: &Rc<Self>,
        system: &str,
    ) -> Result<Option<Arc<SystemInfo>>, LookupError> {
        if let Some(info) = self.shard.system_info(system) {
            return Ok(Some(info));
        }
        let Some(cluster) = self.cluster() else {
            return Ok(None);
        };
        self.shard.metrics.etcd_lookups.inc();
        let found = cluster.lookup_system(system).await;
        let Some(info) = found.map_err(LookupError::Etcd)? else {
            return Ok(None);
        };
        let info = Arc::new(info);
        self.add_system_everywhere(Arc::from(system), info.clone())
            .await;
        // The watch may have delivered it meanwhile: answer with what the core kept.
        Ok(Some(self.shard.system_info(system).unwrap_or(info)))
    }

    /// [`Self::lookup_system`] for a `/ws` connect, within the limits of
    /// [`crate::shard::Shard::connect_lookup`]: a system etcd said is not registered is
    /// remembered as such for a while, and once etcd's list of systems is here, a core asks
    /// about few unknown systems a second; past that the connect is refused (`Err`, a 503 with
    /// Retry-After) without asking.
    pub async fn lookup_system_for_connect(
        self: &Rc<Self>,
        system: &str,
    ) -> Result<Option<Arc<SystemInfo>>, LookupError> {
        match self.shard.connect_lookup(system) {
            ConnectLookup::Known(info) => Ok(Some(info)),
            ConnectLookup::NotRegistered => Ok(None),
            ConnectLookup::Limited => Err(LookupError::Limited),
            ConnectLookup::Ask => {
                let asked_at = std::time::Instant::now();
                let info = self.lookup_system(system).await?;
                if info.is_none() {
                    self.shard.note_unregistered(system, asked_at);
                }
                Ok(info)
            }
        }
    }

    async fn add_system_everywhere(self: &Rc<Self>, system: Arc<str>, info: Arc<SystemInfo>) {
        let calls = (0..self.shard.nr_cores).map(|core| {
            self.call(
                core,
                Op::AddSystem {
                    system: system.clone(),
                    info: info.clone(),
                },
            )
        });
        join_all(calls).await;
    }

    /// Registers a system. Single node: core 0 is the single writer, so two concurrent
    /// registrations of one name cannot both succeed. Cluster: an etcd transaction decides, then
    /// every core here learns it at once (the watch tells the other nodes). Ok(false): it
    /// already existed; Err: etcd could not be reached, or `MaxSystems` are known already.
    ///
    /// The limit counts the systems this node knows: core 0's table on a single node; in a
    /// cluster, this core's copy of what etcd holds (snapshot and watch), checked before the
    /// transaction. Nodes racing near the limit may pass it by a few; it bounds memory, not an
    /// exact count. A name already known is answered "already registered", never "full".
    pub async fn register(
        self: &Rc<Self>,
        system: Arc<str>,
        info: Arc<SystemInfo>,
    ) -> Result<bool, RegisterError> {
        let Some(cluster) = self.cluster() else {
            return match self.call(0, Op::Register { system, info }).await {
                Reply::Refused(why) => Err(RegisterError::Full(why)),
                reply => Ok(reply.found()),
            };
        };
        if self.shard.system_info(&system).is_some() {
            return Ok(false);
        }
        self.shard.check_room().map_err(RegisterError::Full)?;
        let created = cluster
            .register(&system, &info)
            .await
            .map_err(RegisterError::Etcd)?;
        if created {
            tracing::info!(system = %system, secret = info.secret.is_some(),
                single_connection = info.single_connection, "system registered in etcd");
            self.add_system_everywhere(system, info).await;
        }
        Ok(created)
    }

    /// `Op::Register` on core 0, the single writer of a node without a cluster.
    pub(super) async fn register_here(
        self: &Rc<Self>,
        system: Arc<str>,
        info: Arc<SystemInfo>,
    ) -> Reply {
        let shard = &self.shard;
        debug_assert_eq!(shard.id, 0, "bug: Register must run on core 0");
        if shard.system_info(&system).is_some() {
            return Reply::Done(false);
        }
        if let Err(why) = shard.check_room() {
            return Reply::Refused(why);
        }
        // Only a new name is recorded: a secret cannot be changed by registering again.
        if !shard.learn_system(&system, info.clone(), false) {
            return Reply::Done(false);
        }
        let mut waits = Vec::new();
        for core in 1..shard.nr_cores {
            waits.push(self.call(
                core,
                Op::AddSystem {
                    system: system.clone(),
                    info: info.clone(),
                },
            ));
        }
        for wait in waits {
            wait.await;
        }
        tracing::info!(system = %system, secret = info.secret.is_some(),
            single_connection = info.single_connection, "system registered");
        Reply::Done(true)
    }
}
