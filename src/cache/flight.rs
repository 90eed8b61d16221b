//! Single flight: concurrent misses on one key make one call.
//!
//! The first request to miss a key becomes the *leader* and registers a flight; the others
//! subscribe to it and sleep (no spinning) until the leader publishes. The leader ends its
//! flight in one of three ways:
//! - it publishes a value that was stored: waiters return a clone of it;
//! - it ends without a value to share (the inner service failed, or the response was not to
//!   be stored, which for HTTP can mean it was private to one user): each waiter then calls
//!   the inner service itself;
//! - its future is dropped mid-way: waiters contend again and one of them takes over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::tier::l1::Value;

#[derive(Clone)]
pub(crate) enum State {
    Running,
    Value(Value),
    Unshared,
}

pub(crate) enum End {
    Value(Value),
    Unshared,
    Abandoned,
}

/// A registered flight: its id (so a leader unregisters only its own flight) and, once
/// somebody waits, the channel the leader publishes on. Most flights are never joined, so
/// the channel is made by the first waiter, not by every leader.
struct Registered {
    id: u64,
    tx: Option<watch::Sender<State>>,
}

/// Shards of the flight map. Two locks per miss on one shared map made threads queue on
/// each other under load; with keys spread over shards they rarely meet.
const SHARDS: usize = 32;

type Shard = Mutex<HashMap<Box<[u8]>, Registered, foldhash::fast::RandomState>>;

pub(crate) struct Flights {
    shards: Box<[Shard]>,
    /// Picks a shard; a per-process random seed, like the maps' own hashers.
    hasher: foldhash::fast::RandomState,
    ids: AtomicU64,
}

impl Default for Flights {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            ids: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.len())
            .finish()
    }
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<State>),
}

impl Flights {
    fn lock(
        &self,
        key: &[u8],
    ) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Registered, foldhash::fast::RandomState>>
    {
        use std::hash::BuildHasher;
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        // The map stays consistent whatever panicked while holding the lock: every update
        // is a single insert or remove.
        match shard.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn join<'a>(&'a self, key: &'a [u8]) -> Role<'a> {
        let mut map = self.lock(key);
        if let Some(flight) = map.get_mut(key) {
            let tx = flight
                .tx
                .get_or_insert_with(|| watch::channel(State::Running).0);
            return Role::Waiter(tx.subscribe());
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        map.insert(key.into(), Registered { id, tx: None });
        Role::Leader(Leader {
            flights: self,
            key,
            id,
            unregistered: false,
        })
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

/// The leader's side of a flight. Dropping it without [`Leader::finish`] abandons the flight.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: &'a [u8],
    id: u64,
    unregistered: bool,
}

impl Leader<'_> {
    /// Ends the flight. `share` makes the value for the waiters (`None`: nothing to share);
    /// it runs only if somebody waits, so a flight nobody joined clones nothing.
    pub(crate) fn finish(mut self, share: impl FnOnce() -> Option<Value>) {
        // Unregister first: waiters join under the map lock, so once the flight is out of
        // the map nobody else can join it.
        if let Some(tx) = self.unregister() {
            tx.send_replace(match share() {
                Some(v) => State::Value(v),
                None => State::Unshared,
            });
        }
    }

    /// Removes this flight from the map, returning its channel if anybody joined.
    fn unregister(&mut self) -> Option<watch::Sender<State>> {
        if std::mem::replace(&mut self.unregistered, true) {
            return None;
        }
        let mut map = self.flights.lock(self.key);
        match map.get(self.key) {
            Some(flight) if flight.id == self.id => map.remove(self.key).and_then(|f| f.tx),
            _ => None,
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Without `finish`, the channel is dropped here still holding `Running`: waiters see
        // it close and know the flight was abandoned.
        drop(self.unregister());
    }
}

/// Waits for a flight to end.
pub(crate) async fn wait(mut rx: watch::Receiver<State>) -> End {
    loop {
        match &*rx.borrow_and_update() {
            State::Value(v) => return End::Value(Arc::clone(v)),
            State::Unshared => return End::Unshared,
            State::Running => {}
        }
        if rx.changed().await.is_err() {
            return match &*rx.borrow() {
                State::Value(v) => End::Value(Arc::clone(v)),
                State::Unshared => End::Unshared,
                State::Running => End::Abandoned,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn value_reaches_waiters_and_map_empties() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!("first is leader")
        };
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!("second waits")
        };
        let waiting = tokio::spawn(wait(rx));
        leader.finish(|| Some(Arc::new(5u8)));
        match waiting.await.unwrap() {
            End::Value(v) => assert_eq!(v.downcast_ref::<u8>(), Some(&5)),
            _ => panic!("expected the value"),
        }
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_is_abandoned_and_replaceable() {
        let flights = Flights::default();
        let leader = flights.join(b"k");
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!("second waits")
        };
        drop(leader);
        assert!(matches!(wait(rx).await, End::Abandoned));
        assert!(matches!(flights.join(b"k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn unshared_end() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!()
        };
        leader.finish(|| None);
        assert!(matches!(wait(rx).await, End::Unshared));
    }
}
