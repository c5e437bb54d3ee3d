//! The index of this core's connections by system, group and user: what the group, system
//! and user operations of the shard's `*_local` operations read to find their recipients. Data only: queuing
//! frames and finding clients by slot are the shard's.

use super::conn::Conn;
use crate::types::{self as stats, Member, StatsPart};
use indexmap::IndexMap;
use std::collections::HashMap;
use std::rc::Rc;

/// Connections of one system on this core, and its groups here.
#[derive(Default)]
pub struct SystemState {
    pub clients: IndexMap<u32, Rc<Conn>>,
    pub groups: HashMap<Rc<str>, IndexMap<u32, Rc<Conn>>>,
    /// send_to_user's index: userId -> this core's connections of the system bound with it.
    /// Never holds "" (a connection without a userId is no user's). Changed only by
    /// [`Index::set_user`] and [`Index::remove`].
    pub users: HashMap<Rc<str>, IndexMap<u32, Rc<Conn>>>,
}

impl SystemState {
    /// Takes the connection in `slot` out of `user_id`'s entry of the user index.
    fn forget_user(&mut self, user_id: &str, slot: u32) {
        if user_id.is_empty() {
            return;
        }
        if let Some(conns) = self.users.get_mut(user_id) {
            conns.swap_remove(&slot);
            if conns.is_empty() {
                self.users.remove(user_id);
            }
        }
    }
}

/// This core's systems, each with its connections, groups and users.
#[derive(Default)]
pub struct Index {
    systems: HashMap<Rc<str>, SystemState>,
}

impl Index {
    /// The name of `system` as the index holds it (one `Rc` per system for all its
    /// connections), or a new one.
    pub fn system_name(&self, system: &str) -> Rc<str> {
        match self.systems.get_key_value(system) {
            Some((key, _)) => key.clone(),
            None => Rc::from(system),
        }
    }

    /// Records a new connection of its system.
    pub fn add(&mut self, conn: Rc<Conn>) {
        self.systems
            .entry(conn.system.clone())
            .or_default()
            .clients
            .insert(conn.slot, conn);
    }

    /// Takes a connection out of its system, its user entry and `groups`, and forgets a
    /// system left with no clients and no groups.
    pub fn remove(&mut self, conn: &Conn, user_id: Option<&str>, groups: &[Rc<str>]) {
        let Some(state) = self.systems.get_mut(&conn.system) else {
            return;
        };
        state.clients.swap_remove(&conn.slot);
        if let Some(user_id) = user_id {
            state.forget_user(user_id, conn.slot);
        }
        for group in groups {
            if let Some(members) = state.groups.get_mut(group) {
                members.swap_remove(&conn.slot);
                if members.is_empty() {
                    state.groups.remove(group);
                }
            }
        }
        if state.clients.is_empty() && state.groups.is_empty() {
            self.systems.remove(&conn.system);
        }
    }

    /// Moves `conn` from user `old`'s entry to `new`'s ("" is nobody). Nothing changes for a
    /// connection the index no longer holds.
    pub fn set_user(&mut self, conn: &Rc<Conn>, old: &str, new: &str) {
        let Some(state) = self.systems.get_mut(&conn.system) else {
            return;
        };
        if !state
            .clients
            .get(&conn.slot)
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            return;
        }
        state.forget_user(old, conn.slot);
        if new.is_empty() {
            return;
        }
        match state.users.get_mut(new) {
            Some(conns) => {
                conns.insert(conn.slot, conn.clone());
            }
            None => {
                let mut conns = IndexMap::new();
                conns.insert(conn.slot, conn.clone());
                state.users.insert(Rc::from(new), conns);
            }
        }
    }

    /// Adds `conn` to `group`; returns the group's name as the index holds it.
    pub fn join(&mut self, conn: &Rc<Conn>, group: &str) -> Rc<str> {
        let state = self.systems.entry(conn.system.clone()).or_default();
        let group: Rc<str> = match state.groups.get_key_value(group) {
            Some((key, _)) => key.clone(),
            None => Rc::from(group),
        };
        state
            .groups
            .entry(group.clone())
            .or_default()
            .insert(conn.slot, conn.clone());
        group
    }

    /// Takes `conn` out of `group`.
    pub fn leave(&mut self, conn: &Conn, group: &str) {
        if let Some(state) = self.systems.get_mut(&conn.system) {
            if let Some(members) = state.groups.get_mut(group) {
                members.swap_remove(&conn.slot);
                if members.is_empty() {
                    state.groups.remove(group);
                }
            }
        }
    }

    /// The clients of `pick(system's state)`. Copied out (one `Vec` per push, not one
    /// allocation per recipient) so no borrow of the index is held while queuing.
    fn conns_of(
        &self,
        system: &str,
        pick: impl FnOnce(&SystemState) -> Option<&IndexMap<u32, Rc<Conn>>>,
    ) -> Vec<Rc<Conn>> {
        self.systems
            .get(system)
            .and_then(pick)
            .map(|conns| conns.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many members the group has on this core.
    pub fn group_len(&self, system: &str, group: &str) -> usize {
        self.systems
            .get(system)
            .and_then(|s| s.groups.get(group))
            .map_or(0, |m| m.len())
    }

    /// The group's members.
    pub fn members(&self, system: &str, group: &str) -> Vec<Rc<Conn>> {
        self.conns_of(system, |s| s.groups.get(group))
    }

    /// Every connection of the system.
    pub fn clients(&self, system: &str) -> Vec<Rc<Conn>> {
        self.conns_of(system, |s| Some(&s.clients))
    }

    /// This core's connections bound with a userId, with it, in the systems `pick` says yes
    /// to.
    pub fn users_where(&self, mut pick: impl FnMut(&str) -> bool) -> Vec<(Rc<Conn>, Rc<str>)> {
        let mut found = Vec::new();
        for (_, state) in self.systems.iter().filter(|(system, _)| pick(system)) {
            for (user, conns) in &state.users {
                found.extend(conns.values().map(|c| (c.clone(), user.clone())));
            }
        }
        found
    }

    /// The system's connections bound with `user_id`.
    pub fn user_conns(&self, system: &str, user_id: &str) -> Vec<Rc<Conn>> {
        self.conns_of(system, |s| s.users.get(user_id))
    }

    /// The group's members as clientIds.
    pub fn online_list(&self, system: &str, group: &str) -> Vec<String> {
        self.systems
            .get(system)
            .and_then(|s| s.groups.get(group))
            .map(|members| members.values().map(|c| c.client_id.to_string()).collect())
            .unwrap_or_default()
    }

    /// The group's members with their userId and extend.
    pub fn presence(&self, system: &str, group: &str) -> Vec<Member> {
        let Some(members) = self.systems.get(system).and_then(|s| s.groups.get(group)) else {
            return Vec::new();
        };
        members
            .values()
            .map(|conn| {
                let info = conn.info.borrow();
                let (user_id, extend) = info
                    .as_ref()
                    .map_or(("", ""), |i| (i.user_id.as_str(), i.extend.as_str()));
                Member {
                    client_id: conn.client_id.to_string(),
                    user_id: user_id.to_string(),
                    extend: extend.to_string(),
                }
            })
            .collect()
    }

    /// The system's share of get_system_stats on this core (see [`crate::types`]).
    pub fn stats(&self, system: &str) -> StatsPart {
        let Some(state) = self.systems.get(system) else {
            return StatsPart::default();
        };
        StatsPart {
            clients: state.clients.len() as u64,
            groups: state.groups.keys().map(|g| stats::name_hash(g)).collect(),
            users: state.users.keys().map(|u| stats::name_hash(u)).collect(),
            ..StatsPart::default()
        }
    }

    /// Every system with its state, for the status page.
    pub fn systems(&self) -> impl Iterator<Item = (&Rc<str>, &SystemState)> {
        self.systems.iter()
    }
}
