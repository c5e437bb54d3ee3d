//! One connection per user (issue 17, docs/api-additions.md "One connection per user"): which
//! connection holds each (system, userId) of the systems registered with `singleConnection`.
//!
//! The table lives on the user's owner core, the home of its offline messages
//! (`crate::route::single`). Every claim of a user reaches that one core and is taken there
//! one after another, so of two connections that claim at once exactly one is the holder when
//! both are answered: the later claim's, which the earlier one's connection is closed for.
//! Holders are remembered by clientId only; a stale one (its release lost) costs a close of a
//! connection that is gone already.

use crate::types::Claimed;
use std::collections::HashMap;

/// The holders this core owns, by (system, userId).
#[derive(Default)]
pub struct Holders {
    users: HashMap<(Box<str>, Box<str>), Box<str>>,
}

impl Holders {
    /// `client` claims the user. A new connection (`take`) becomes the holder and learns the
    /// one it replaced; a re-claim (after the owner moved: `take` false) becomes the holder
    /// only when nobody is, else it loses.
    pub fn claim(&mut self, system: &str, user_id: &str, client: &str, take: bool) -> Claimed {
        let key = (Box::from(system), Box::from(user_id));
        match self.users.get_mut(&key) {
            None => {
                self.users.insert(key, Box::from(client));
                Claimed::Kept
            }
            Some(holder) if &**holder == client => Claimed::Kept,
            Some(_) if !take => Claimed::Lost,
            Some(holder) => {
                let old = std::mem::replace(holder, Box::from(client));
                Claimed::Replaced(old.into())
            }
        }
    }

    /// `client` no longer holds the user (it disconnected, or got another userId): forgets
    /// it, unless another connection holds the user by now.
    pub fn release(&mut self, system: &str, user_id: &str, client: &str) {
        let key = (Box::from(system), Box::from(user_id));
        if self
            .users
            .get(&key)
            .is_some_and(|holder| &**holder == client)
        {
            self.users.remove(&key);
        }
    }

    /// How many users have a holder here.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Keeps only the users `keep` says yes to (those this node still owns).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.users.retain(|(system, user), _| keep(system, user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_claim_holds_and_names_the_one_it_replaced() {
        let mut h = Holders::default();
        assert_eq!(h.claim("s", "u", "a", true), Claimed::Kept);
        assert_eq!(h.claim("s", "u", "a", true), Claimed::Kept, "a claim again");
        assert_eq!(h.claim("s", "u", "b", true), Claimed::Replaced("a".into()));
        assert_eq!(h.claim("s", "v", "c", true), Claimed::Kept, "another user");
        assert_eq!(
            h.claim("t", "u", "d", true),
            Claimed::Kept,
            "another system"
        );
        // The replaced one's late release changes nothing; the holder's own does.
        h.release("s", "u", "a");
        assert_eq!(h.claim("s", "u", "b", false), Claimed::Kept);
        h.release("s", "u", "b");
        assert_eq!(h.len(), 2);
        assert_eq!(h.claim("s", "u", "e", true), Claimed::Kept);
    }

    #[test]
    fn a_re_claim_holds_only_a_user_nobody_holds() {
        let mut h = Holders::default();
        assert_eq!(h.claim("s", "u", "old", false), Claimed::Kept);
        assert_eq!(h.claim("s", "u", "other", false), Claimed::Lost);
        assert_eq!(
            h.claim("s", "u", "new", true),
            Claimed::Replaced("old".into())
        );
        assert_eq!(h.claim("s", "u", "old", false), Claimed::Lost);
        h.retain(|_, user| user != "u");
        assert!(h.is_empty());
    }
}
