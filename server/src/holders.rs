//! Which sessions hold which objects: the push targets of a commit.
//!
//! Owns: the map object → sessions holding a copy, sharded by object id so
//! commits to different objects do not contend.
//! Not: the sessions' own sets (each session keeps the ids it holds, to
//! forget them when it ends), sending pushes.
//! Invariants: a session is listed for an object from before the server
//! reads the object's image for it (so any change applied after that read
//! is pushed to it) until it drops the object or ends.

use std::collections::HashMap;
use std::sync::Mutex;

use tc_model::ObjectId;

use crate::locks::SessionId;

const SHARDS: usize = 64;

pub struct Holders {
    shards: Vec<Mutex<HashMap<ObjectId, Vec<SessionId>>>>,
}

impl Holders {
    pub fn new() -> Holders {
        Holders {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, id: ObjectId) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Vec<SessionId>>> {
        let shard = &self.shards[(id.0 % SHARDS as u64) as usize];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `session` holds `id`; true if it did not before.
    pub fn add(&self, id: ObjectId, session: SessionId) -> bool {
        let mut shard = self.shard(id);
        let sessions = shard.entry(id).or_default();
        if sessions.contains(&session) {
            return false;
        }
        sessions.push(session);
        true
    }

    pub fn remove(&self, id: ObjectId, session: SessionId) {
        let mut shard = self.shard(id);
        if let Some(sessions) = shard.get_mut(&id) {
            sessions.retain(|&s| s != session);
            if sessions.is_empty() {
                shard.remove(&id);
            }
        }
    }

    /// Adds to `out` every session holding `id` other than `except`.
    pub fn holders_of(&self, id: ObjectId, except: SessionId, out: &mut Vec<SessionId>) {
        if let Some(sessions) = self.shard(id).get(&id) {
            out.extend(sessions.iter().copied().filter(|&s| s != except));
        }
    }

    /// How many (object, session) holdings there are.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                shard.values().map(Vec::len).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_tracked_per_object_and_session() {
        let holders = Holders::new();
        assert!(holders.add(ObjectId(7), 1));
        assert!(!holders.add(ObjectId(7), 1));
        assert!(holders.add(ObjectId(7), 2));
        assert!(holders.add(ObjectId(7 + SHARDS as u64), 3));
        let mut out = Vec::new();
        holders.holders_of(ObjectId(7), 1, &mut out);
        assert_eq!(out, vec![2]);
        holders.remove(ObjectId(7), 2);
        out.clear();
        holders.holders_of(ObjectId(7), 0, &mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(holders.len(), 2);
        holders.remove(ObjectId(7), 1);
        holders.remove(ObjectId(7 + SHARDS as u64), 3);
        assert_eq!(holders.len(), 0);
    }
}
