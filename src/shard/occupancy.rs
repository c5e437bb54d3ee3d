//! Which (node, core) pairs hold members of a group, kept by the group's stream owner
//! (`types::stream_owner`, the same home as its history), so that the cluster emits
//! `group_occupied` and `group_vacated` once per transition (docs/webhooks.md, "Occupancy").
//!
//! Each core tells the owner when its own member count of a group goes from 0 to 1 or back
//! to 0, numbered by a per-core sequence. The owner keeps, per group, the holders with a
//! member and the sequence of their last word; a word older than the one kept for that
//! holder is ignored (a reordered message cannot undo a newer one).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

/// One core of one node.
pub type Holder = (SocketAddrV4, u32);

/// What a change did to the group as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The group had no holder and has one now.
    Occupied,
    /// Its last holder went.
    Vacated,
}

/// The groups this core owns and has heard of a holder for.
#[derive(Default)]
pub struct Occupancy {
    /// (system, group) -> holder -> the sequence of its latest "I hold members".
    groups: HashMap<(Arc<str>, Arc<str>), HashMap<Holder, u64>>,
}

impl Occupancy {
    /// `holder` says it holds members of the group (`present`) or no longer does, as of its
    /// sequence `seq`. Answers the group's transition, if there was one.
    pub fn change(
        &mut self,
        system: &str,
        group: &str,
        holder: Holder,
        seq: u64,
        present: bool,
    ) -> Option<Transition> {
        let key = (Arc::from(system), Arc::from(group));
        if present {
            let holders = self.groups.entry(key).or_default();
            let was_empty = holders.is_empty();
            match holders.get(&holder) {
                Some(&kept) if kept >= seq => return None,
                _ => {
                    holders.insert(holder, seq);
                }
            }
            return was_empty.then_some(Transition::Occupied);
        }
        let holders = self.groups.get_mut(&key)?;
        match holders.get(&holder) {
            Some(&kept) if kept < seq => {
                holders.remove(&holder);
            }
            _ => return None,
        }
        if holders.is_empty() {
            self.groups.remove(&key);
            return Some(Transition::Vacated);
        }
        None
    }

    /// Forgets every holder on a node `alive` says is gone; answers the groups left with no
    /// holder (each vacated now).
    pub fn drop_nodes(
        &mut self,
        alive: impl Fn(SocketAddrV4) -> bool,
    ) -> Vec<(Arc<str>, Arc<str>)> {
        let mut vacated = Vec::new();
        self.groups.retain(|key, holders| {
            holders.retain(|(node, _), _| alive(*node));
            if holders.is_empty() {
                vacated.push(key.clone());
                return false;
            }
            true
        });
        vacated
    }

    /// Keeps only the groups `keep` says this core still owns (the others are forgotten
    /// without an event: their new owner learns of holders from their next change).
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.groups.retain(|(system, group), _| keep(system, group));
    }

    /// How many groups have a holder.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn occupied_once_vacated_once() {
        let mut o = Occupancy::default();
        let (a, b) = ((node(1), 0), (node(2), 1));
        assert_eq!(o.change("s", "g", a, 1, true), Some(Transition::Occupied));
        assert_eq!(o.change("s", "g", b, 1, true), None);
        assert_eq!(o.change("s", "g", a, 2, false), None);
        assert_eq!(o.change("s", "g", b, 2, false), Some(Transition::Vacated));
        assert!(o.is_empty());
    }

    #[test]
    fn a_stale_word_is_ignored() {
        let mut o = Occupancy::default();
        let a = (node(1), 0);
        assert_eq!(o.change("s", "g", a, 5, true), Some(Transition::Occupied));
        assert_eq!(o.change("s", "g", a, 4, false), None, "older than the join");
        assert_eq!(o.len(), 1);
        assert_eq!(o.change("s", "g", a, 6, false), Some(Transition::Vacated));
    }

    #[test]
    fn a_gone_node_vacates_what_only_it_held() {
        let mut o = Occupancy::default();
        o.change("s", "only", (node(2), 0), 1, true);
        o.change("s", "both", (node(2), 0), 2, true);
        o.change("s", "both", (node(1), 0), 1, true);
        let vacated = o.drop_nodes(|n| n != node(2));
        assert_eq!(vacated, vec![(Arc::from("s"), Arc::from("only"))]);
        assert_eq!(o.len(), 1);
    }
}
