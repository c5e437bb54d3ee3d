//! The `*_local` operations: what a core does with its own state when the router
//! ([`crate::route`]) sends it a per-client, group, system or user operation. Each finds its
//! connections in the registry or the [`super::index`], and queues frames through
//! [`super::outbound`].

use super::conn::Conn;
use super::history::Bounds;
use super::inbox::Refusal;
use super::Shard;
use crate::types::{EndReason, Kick, Member, StatsPart};
use crate::ws::frame::{self, SharedFrame};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What a bind did to the client it found ([`Shard::bind_local`]).
pub struct BoundHere {
    pub conn: Rc<Conn>,
    /// Its first bind to the group (announce it).
    pub first: bool,
    /// The userId it had ("" for none), when the bind changed it.
    pub old_user: Option<String>,
}

impl Shard {
    /// Removes a connection from every index; returns the groups it was in.
    pub fn remove_conn(&self, conn: &Rc<Conn>) -> Vec<Rc<str>> {
        self.registry
            .borrow_mut()
            .remove(conn.slot, conn.generation);
        // userId/extend stay: the 1002 pushes that follow carry them.
        let groups = conn
            .info
            .borrow_mut()
            .as_mut()
            .map(|info| std::mem::take(&mut info.groups))
            .unwrap_or_default();
        let info = conn.info.borrow();
        let user_id = info.as_ref().map(|info| info.user_id.as_str());
        self.index.borrow_mut().remove(conn, user_id, &groups);
        drop(info);
        groups
    }

    /// The connection in `slot` if it still has `generation` and belongs to `system`.
    /// Isolation: a client of another system is treated as absent.
    pub fn find(&self, slot: u32, generation: u32, system: &str) -> Option<Rc<Conn>> {
        let registry = self.registry.borrow();
        let conn = registry.get(slot, generation)?;
        (&*conn.system == system).then(|| conn.clone())
    }

    /// Queues `f` to each client `(slot, generation)` of `targets` that belongs to `system`;
    /// returns how many took it.
    pub fn deliver_local(
        self: &Rc<Self>,
        targets: &[(u32, u32)],
        system: &str,
        f: &SharedFrame,
    ) -> usize {
        let mut queued = 0;
        for &(slot, generation) in targets {
            if let Some(conn) = self.find(slot, generation, system) {
                let took = self.enqueue(&conn, f.clone());
                self.metrics.pushed(took as usize, f.len());
                queued += took as usize;
            }
        }
        self.note_fanout(queued);
        queued
    }

    /// Queues `f` to this core's members of the group but `skip` (a `(slot, generation)`,
    /// excludeClientId); a member recovering its missed pushes gets it held back instead.
    pub fn group_push_local(
        self: &Rc<Self>,
        system: &str,
        group: &str,
        f: &SharedFrame,
        skip: Option<(u32, u32)>,
    ) -> usize {
        let mut members = self.index.borrow().members(system, group);
        leave_out(&mut members, skip);
        if members.is_empty() {
            return 0;
        }
        let held = self.recovering.borrow_mut().hold(&mut members, group, f);
        held + self.push_to(&members, f)
    }

    /// This core's connections bound with a userId, with it, in the systems `pick` says yes to.
    pub fn users_where_local(&self, pick: impl FnMut(&str) -> bool) -> Vec<(Rc<Conn>, Rc<str>)> {
        self.index.borrow().users_where(pick)
    }

    pub fn online_list_local(&self, system: &str, group: &str) -> Vec<String> {
        self.index.borrow().online_list(system, group)
    }

    /// Closes the client as `kick` says (close_client's 1000, or 4001 for a connection a newer
    /// one of its user replaced). True when it was found, also when already on its way out.
    pub fn close_local(
        self: &Rc<Self>,
        slot: u32,
        generation: u32,
        system: &str,
        kick: Kick,
    ) -> bool {
        let Some(conn) = self.find(slot, generation, system) else {
            return false;
        };
        if conn.end_reason.get().is_some() {
            return true;
        }
        self.kick(&conn, kick);
        true
    }

    /// Closes `conn` as `kick` says; the client should answer the close frame and hang up, and
    /// is cut if it does not.
    pub fn kick(self: &Rc<Self>, conn: &Rc<Conn>, kick: Kick) {
        match kick {
            Kick::Api => {
                tracing::debug!(client = %conn.client_id, peer = %conn.peer, core = self.id, "closing client on API request");
                self.close_then_cut(conn, frame::close_code::NORMAL, "closed by server");
            }
            Kick::Replaced => {
                tracing::info!(client = %conn.client_id, peer = %conn.peer, core = self.id,
                    "closing a connection a newer one of its user replaced (singleConnection)");
                let reason = "replaced by a newer connection of this user";
                let code = frame::close_code::REPLACED;
                self.close_then_cut_as(conn, EndReason::Replaced, code, reason);
            }
        }
    }

    /// Sets the connection's userId and keeps send_to_user's index in step with it: besides a
    /// disconnect, the one place that index changes. bind_to_group calls it (the latest bind's
    /// userId wins, as in the original), and so may anything else that learns a connection's
    /// user (a connect token). An empty userId takes the connection out of the index. Runs on
    /// the connection's own core; a connection already removed only gets the field set.
    /// Returns the userId it had ("" for none) when this changed it.
    pub fn set_user_id(&self, conn: &Rc<Conn>, user_id: &str) -> Option<String> {
        let old = {
            let mut info = conn.info.borrow_mut();
            if info.as_ref().map_or("", |i| i.user_id.as_str()) == user_id {
                return None;
            }
            let info = info.get_or_insert_with(Box::default);
            std::mem::replace(&mut info.user_id, user_id.to_string())
        };
        self.index.borrow_mut().set_user(conn, &old, user_id);
        Some(old)
    }

    /// Removes `conn` from `group` on this core; false if it was not a member.
    pub fn leave_group_local(&self, conn: &Rc<Conn>, group: &str) -> bool {
        {
            let mut info = conn.info.borrow_mut();
            let Some(info) = info.as_mut() else {
                return false;
            };
            let Some(at) = info.groups.iter().position(|g| &**g == group) else {
                return false;
            };
            info.groups.remove(at);
        }
        self.index.borrow_mut().leave(conn, group);
        true
    }

    /// Connected and not on its way out (closing, cut, or dropped as a slow consumer).
    pub fn is_online_local(&self, slot: u32, generation: u32, system: &str) -> bool {
        self.find(slot, generation, system)
            .is_some_and(|conn| conn.end_reason.get().is_none())
    }

    /// Queues `f` to each of `conns`; returns how many took it.
    fn push_to(self: &Rc<Self>, conns: &[Rc<Conn>], f: &SharedFrame) -> usize {
        let queued = conns
            .iter()
            .filter(|conn| self.enqueue(conn, f.clone()))
            .count();
        self.metrics.pushed(queued, f.len());
        self.note_fanout(queued);
        queued
    }

    /// Queues `f` to this core's clients of the system but `skip`.
    pub fn system_push_local(
        self: &Rc<Self>,
        system: &str,
        f: &SharedFrame,
        skip: Option<(u32, u32)>,
    ) -> usize {
        let mut conns = self.index.borrow().clients(system);
        leave_out(&mut conns, skip);
        self.push_to(&conns, f)
    }

    /// Queues `f` to this core's connections of the system bound with `user_id` but `skip`;
    /// also whether `skip` was one of them (the user is online, through the left-out one).
    pub fn user_push_local(
        self: &Rc<Self>,
        system: &str,
        user_id: &str,
        f: &SharedFrame,
        skip: Option<(u32, u32)>,
    ) -> (usize, bool) {
        let mut conns = self.index.borrow().user_conns(system, user_id);
        let skipped = leave_out(&mut conns, skip);
        (self.push_to(&conns, f), skipped)
    }

    pub fn presence_local(&self, system: &str, group: &str) -> Vec<Member> {
        self.index.borrow().presence(system, group)
    }

    pub fn stats_local(&self, system: &str) -> StatsPart {
        let mut part = self.index.borrow().stats(system);
        let mut offline = self.offline.borrow_mut();
        offline.sweep(&self.offline_bounds(), std::time::Instant::now());
        part.offline = offline.count(Some(system)) as u64;
        part
    }

    /// This node's bounds on a user's offline messages.
    pub fn offline_bounds(&self) -> super::offline::Bounds {
        let config = &self.config;
        super::offline::Bounds {
            max: config.offline_max,
            ttl: config.offline_ttl,
            max_bytes: config.offline_max_bytes,
        }
    }

    /// Sets user data and joins the group. `Some`: the client and what the bind did to it,
    /// `None`: no such client, `Err`: the client is in MaxGroupsPerClient groups already
    /// (nothing changed).
    pub fn bind_local(
        &self,
        slot: u32,
        generation: u32,
        system: &str,
        group: &str,
        user_id: String,
        extend: String,
    ) -> Result<Option<BoundHere>, Refusal> {
        let Some(conn) = self.find(slot, generation, system) else {
            return Ok(None);
        };
        let member = {
            let mut info = conn.info.borrow_mut();
            let info = info.get_or_insert_with(Box::default);
            let member = info.groups.iter().any(|g| &**g == group);
            let most = self.config.max_groups_per_client;
            if !member && info.groups.len() >= most {
                tracing::debug!(client = %conn.client_id, core = self.id, group, "bind_to_group refused: MaxGroupsPerClient reached");
                return Err(Refusal::MaxGroupsPerClient { most });
            }
            info.extend = extend;
            member
        };
        // As the original: the latest bind's userId/extend win, even for a group already joined.
        let old_user = self.set_user_id(&conn, &user_id);
        if !member {
            let group = self.index.borrow_mut().join(&conn, group);
            let mut info = conn.info.borrow_mut();
            info.get_or_insert_with(Box::default).groups.push(group);
        }
        Ok(Some(BoundHere {
            conn,
            first: !member,
            old_user,
        }))
    }

    /// The bounds of a stream of a system with `history` on this node, which clamps them.
    pub fn history_bounds(&self, history: &crate::types::HistoryOpts) -> Bounds {
        let config = &self.config;
        Bounds {
            size: (history.size as usize).min(config.history_size),
            ttl: Duration::from_secs(history.ttl_seconds as u64).min(config.history_ttl),
            max_bytes: config.history_max_bytes,
        }
    }

    /// From now until [`Self::end_recovery`], pushes of `group` to `conn` are held back
    /// rather than queued: the client must get its missed pushes first. Called in the same
    /// step as the bind, so no push can slip between the two.
    pub fn begin_recovery(&self, conn: &Conn, group: &Arc<str>) {
        self.recovering.borrow_mut().begin(conn, group);
    }

    /// Queues the missed pushes of `replay`, a read of the stream (oldest first; `None` when
    /// the position could not be recovered), then the held-back live pushes that are not among
    /// them: those past `after` (the last offset the client has, replay included) or of
    /// another epoch, and those without one (member events). No duplicate, no gap; and for a
    /// while (`history::FLOOR_TTL`) late live pushes up to `after` are dropped too.
    pub fn end_recovery(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        group: &Arc<str>,
        replay: Option<super::history::Read>,
        mut after: u64,
    ) {
        let epoch = replay.as_ref().map(|read| read.epoch.clone());
        for (offset, frame) in replay.into_iter().flat_map(|read| read.frames) {
            after = after.max(offset);
            self.enqueue(conn, frame);
        }
        let floor = epoch.clone().map(|epoch| (after, epoch));
        let held = self.recovering.borrow_mut().end(conn, group, floor);
        for frame in held {
            let dup = match (crate::ws::message::frame_position(&frame), &epoch) {
                (Some((offset, e)), Some(epoch)) => offset <= after && e == epoch.as_bytes(),
                _ => false,
            };
            if !dup {
                self.enqueue(conn, frame);
            }
        }
    }
}

/// Takes the connection `skip` (slot, generation) out of `conns`; whether it was there.
fn leave_out(conns: &mut Vec<Rc<Conn>>, skip: Option<(u32, u32)>) -> bool {
    let Some((slot, generation)) = skip else {
        return false;
    };
    let before = conns.len();
    conns.retain(|c| (c.slot, c.generation) != (slot, generation));
    conns.len() != before
}

#[cfg(test)]
mod tests {
    use super::super::testing::{conns, with_shard};
    use crate::shard::inbox::Refusal;
    use crate::types::Kick;
    use crate::ws::frame::SharedFrame;
    use std::sync::Arc;

    fn frame() -> SharedFrame {
        Arc::from(&b"\x81\x02hi"[..])
    }

    fn bind(shard: &crate::shard::Shard, conn: &crate::shard::conn::Conn, group: &str, user: &str) {
        let bound = shard.bind_local(
            conn.slot,
            conn.generation,
            "sys",
            group,
            user.into(),
            "x".into(),
        );
        assert!(
            matches!(bound, Ok(Some(_))),
            "bind of {} to {group}",
            conn.client_id()
        );
    }

    #[test]
    fn a_bind_joins_once_and_an_unbind_leaves() {
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 2).await;
            let first = shard.bind_local(
                c[0].slot,
                c[0].generation,
                "sys",
                "room",
                "u".into(),
                "".into(),
            );
            assert!(
                matches!(first, Ok(Some(b)) if b.first && b.old_user.as_deref() == Some("")),
                "first bind announces"
            );
            let again = shard.bind_local(
                c[0].slot,
                c[0].generation,
                "sys",
                "room",
                "u".into(),
                "".into(),
            );
            assert!(
                matches!(again, Ok(Some(b)) if !b.first && b.old_user.is_none()),
                "a second bind does not, nor changes the user"
            );
            bind(&shard, &c[1], "room", "v");
            let mut list = shard.online_list_local("sys", "room");
            list.sort();
            let mut want = vec![c[0].client_id().to_string(), c[1].client_id().to_string()];
            want.sort();
            assert_eq!(list, want);
            assert!(shard.leave_group_local(&c[0], "room"));
            assert!(
                !shard.leave_group_local(&c[0], "room"),
                "not a member any more"
            );
            assert_eq!(
                shard.online_list_local("sys", "room"),
                vec![c[1].client_id().to_string()]
            );
            assert!(
                shard.online_list_local("other", "room").is_empty(),
                "systems are apart"
            );
        });
    }

    #[test]
    fn presence_lists_user_data_and_a_disconnect_leaves_every_group() {
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 1).await;
            bind(&shard, &c[0], "a", "alice");
            bind(&shard, &c[0], "b", "alice");
            let members = shard.presence_local("sys", "a");
            assert_eq!(members.len(), 1);
            assert_eq!(
                (members[0].user_id.as_str(), members[0].extend.as_str()),
                ("alice", "x")
            );
            assert_eq!(members[0].client_id, c[0].client_id());
            let stats = shard.stats_local("sys").counts();
            assert_eq!((stats.clients, stats.groups, stats.users), (1, 2, 1));
            let mut left = shard.remove_conn(&c[0]);
            left.sort();
            assert_eq!(left.iter().map(|g| &**g).collect::<Vec<_>>(), ["a", "b"]);
            assert!(shard.presence_local("sys", "a").is_empty());
            assert_eq!(shard.stats_local("sys").counts().clients, 0);
            assert!(shard.find(c[0].slot, c[0].generation, "sys").is_none());
        });
    }

    #[test]
    fn pushes_reach_the_group_the_system_and_the_user() {
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 3).await;
            let _other = conns(&shard, "other", 1).await;
            bind(&shard, &c[0], "room", "alice");
            bind(&shard, &c[1], "room", "bob");
            bind(&shard, &c[2], "hall", "alice");
            assert_eq!(shard.group_push_local("sys", "room", &frame(), None), 2);
            assert_eq!(shard.group_push_local("sys", "nobody", &frame(), None), 0);
            assert_eq!(shard.system_push_local("sys", &frame(), None), 3);
            assert_eq!(
                shard.user_push_local("sys", "alice", &frame(), None),
                (2, false)
            );
            assert_eq!(
                shard.user_push_local("other", "alice", &frame(), None),
                (0, false)
            );
            // A new userId moves the connection to the new user's entry.
            shard.set_user_id(&c[2], "carol");
            assert_eq!(
                shard.user_push_local("sys", "alice", &frame(), None),
                (1, false)
            );
            assert_eq!(
                shard.user_push_local("sys", "carol", &frame(), None),
                (1, false)
            );
            let targets = [
                (c[0].slot, c[0].generation),
                (c[1].slot, c[1].generation + 1),
            ];
            assert_eq!(
                shard.deliver_local(&targets, "sys", &frame()),
                1,
                "a stale generation is nobody"
            );
            assert_eq!(
                shard.deliver_local(&targets, "other", &frame()),
                0,
                "isolation"
            );
        });
    }

    #[test]
    fn a_skip_leaves_out_one_connection_and_says_so() {
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 3).await;
            bind(&shard, &c[0], "room", "alice");
            bind(&shard, &c[1], "room", "alice");
            bind(&shard, &c[2], "hall", "bob");
            let skip = Some((c[0].slot, c[0].generation));
            assert_eq!(shard.group_push_local("sys", "room", &frame(), skip), 1);
            assert_eq!(shard.system_push_local("sys", &frame(), skip), 2);
            assert_eq!(
                shard.user_push_local("sys", "alice", &frame(), skip),
                (1, true)
            );
            assert_eq!(
                shard.user_push_local("sys", "bob", &frame(), skip),
                (1, false),
                "not one of bob's"
            );
            let stale = Some((c[0].slot, c[0].generation + 1));
            assert_eq!(shard.group_push_local("sys", "room", &frame(), stale), 2);
            let queued = |i: usize| c[i].out.borrow().len();
            assert_eq!((queued(0), queued(1), queued(2)), (1, 4, 2));
        });
    }

    #[test]
    fn a_client_in_max_groups_is_refused_and_a_kick_takes_it_offline() {
        with_shard(|shard| async move {
            let most = shard.config.max_groups_per_client;
            let c = conns(&shard, "sys", 1).await;
            for g in 0..most {
                bind(&shard, &c[0], &format!("g{g}"), "");
            }
            let refused = shard.bind_local(
                c[0].slot,
                c[0].generation,
                "sys",
                "one-more",
                "".into(),
                "".into(),
            );
            assert!(matches!(refused, Err(Refusal::MaxGroupsPerClient { most: m }) if m == most));
            assert!(shard.is_online_local(c[0].slot, c[0].generation, "sys"));
            assert!(shard.close_local(c[0].slot, c[0].generation, "sys", Kick::Api));
            assert!(
                !shard.is_online_local(c[0].slot, c[0].generation, "sys"),
                "on its way out"
            );
            assert!(
                !shard.close_local(c[0].slot, c[0].generation, "other", Kick::Api),
                "isolation"
            );
        });
    }

    #[test]
    fn a_recovery_holds_live_pushes_and_drops_those_the_replay_gave() {
        use crate::shard::history::Read;
        use crate::ws::message::push_frame_at;
        let at = |offset, epoch| push_frame_at("m", "", 0, "", "1", offset, epoch);
        with_shard(|shard| async move {
            let c = conns(&shard, "sys", 2).await;
            bind(&shard, &c[0], "room", "u");
            bind(&shard, &c[1], "room", "v");
            let group: Arc<str> = Arc::from("room");
            shard.begin_recovery(&c[0], &group);
            for f in [at(3, "e"), at(5, "e"), frame()] {
                assert_eq!(shard.group_push_local("sys", "room", &f, None), 2);
            }
            let queued = |i: usize| c[i].out.borrow().len();
            assert_eq!(
                (queued(0), queued(1)),
                (0, 3),
                "held for the recovering one only"
            );
            let read = Read {
                epoch: Arc::from("e"),
                offset: 5,
                recovered: true,
                frames: vec![(3, at(3, "e")), (4, at(4, "e")), (5, at(5, "e"))],
            };
            shard.end_recovery(&c[0], &group, Some(read), 2);
            assert_eq!(
                queued(0),
                4,
                "3, 4, 5 replayed, the held 3 and 5 dropped, the event kept"
            );
            // A late live push it has is dropped; another epoch's, or a newer one, is not.
            for (f, want) in [(at(4, "e"), 4), (at(4, "other"), 5), (at(6, "e"), 6)] {
                shard.group_push_local("sys", "room", &f, None);
                assert_eq!(queued(0), want);
            }
        });
    }
}
