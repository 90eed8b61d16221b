//! Single flight: concurrent misses on one key make one call.
//!
//! The first request to miss a key becomes the *leader* and registers a flight; the others
//! subscribe to it and sleep (no spinning) until the leader publishes. The leader ends its
//! flight in one of five ways:
//! - it publishes a value: waiters return a clone of it;
//! - it publishes its error (where the caller can copy errors): waiters return a copy, so a
//!   failing backend gets one call per flight, not one per waiter;
//! - it failed with an error nobody can copy: waiters start a new flight, one of them leads
//!   it, and the backend never gets more than one call at a time for the key;
//! - it loaded a value that is private to its own request (for HTTP, a response with
//!   `Set-Cookie`): each waiter loads for itself at once;
//! - its future is dropped mid-way: waiters contend again and one of them takes over.
//!
//! A leader with a fallback (fail-safe) may also publish a stale value before it ends
//! ([`Leader::publish_stale`], at its soft timeout): waiters, and requests that join later,
//! take that value at once while the load goes on.
//!
//! A leader owns its place in the map (an `Arc` of the flights and its key), so that it can
//! move into a background task (eager refresh, a load that outlives its soft timeout).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A leader's error, published for waiters whose call site can copy it.
pub(crate) type SharedError = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) enum State<V> {
    Running,
    Value(V),
    /// A fallback: the load failed, or is still running past its soft timeout.
    Stale(V),
    Failed(Option<SharedError>),
    Private,
}

pub(crate) enum End<V> {
    Value(V),
    Stale(V),
    /// The leader failed; its error, if it could be shared.
    Failed(Option<SharedError>),
    Private,
    Abandoned,
}

/// A registered flight: its id (so a leader unregisters only its own flight) and, once
/// somebody waits, the channel the leader publishes on. Most flights are never joined, so
/// the channel is made by the first waiter, not by every leader.
struct Registered<V> {
    id: u64,
    tx: Option<watch::Sender<State<V>>>,
}

/// Shards of the flight map. Two locks per miss on one shared map made threads queue on
/// each other under load; with keys spread over shards they rarely meet.
const SHARDS: usize = 32;

type Map<V> = HashMap<Box<[u8]>, Registered<V>, foldhash::fast::RandomState>;

pub(crate) struct Flights<V> {
    shards: Box<[Mutex<Map<V>>]>,
    /// Picks a shard; a per-process random seed, like the maps' own hashers.
    hasher: foldhash::fast::RandomState,
    ids: AtomicU64,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            ids: AtomicU64::new(0),
        }
    }
}

impl<V> std::fmt::Debug for Flights<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.len())
            .finish()
    }
}

pub(crate) enum Role<V> {
    Leader(Leader<V>),
    Waiter(watch::Receiver<State<V>>),
}

impl<V> Flights<V> {
    fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Map<V>> {
        use std::hash::BuildHasher;
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        // The map stays consistent whatever panicked while holding the lock: every update
        // is a single insert or remove.
        match shard.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn join(self: &Arc<Self>, key: &[u8]) -> Role<V> {
        let mut map = self.lock(key);
        if let Some(flight) = map.get_mut(key) {
            let tx = flight
                .tx
                .get_or_insert_with(|| watch::channel(State::Running).0);
            return Role::Waiter(tx.subscribe());
        }
        Role::Leader(self.register(&mut map, key))
    }

    /// Leads a new flight for `key`, unless one is under way.
    pub(crate) fn try_lead(self: &Arc<Self>, key: &[u8]) -> Option<Leader<V>> {
        let mut map = self.lock(key);
        if map.contains_key(key) {
            return None;
        }
        Some(self.register(&mut map, key))
    }

    fn register(self: &Arc<Self>, map: &mut Map<V>, key: &[u8]) -> Leader<V> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let key: Box<[u8]> = key.into();
        map.insert(key.clone(), Registered { id, tx: None });
        Leader {
            flights: Arc::clone(self),
            key,
            id,
            unregistered: false,
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |map| map.len()))
            .sum()
    }
}

/// The leader's side of a flight. Dropping it without [`Leader::finish`] abandons the flight.
pub(crate) struct Leader<V> {
    flights: Arc<Flights<V>>,
    key: Box<[u8]>,
    id: u64,
    unregistered: bool,
}

impl<V> Leader<V> {
    /// The key of the flight.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Ends the flight. `end` makes what the waiters get; it runs only if somebody waits,
    /// so a flight nobody joined clones nothing.
    pub(crate) fn finish(mut self, end: impl FnOnce() -> State<V>) {
        // Unregister first: waiters join under the map lock, so once the flight is out of
        // the map nobody else can join it.
        if let Some(tx) = self.unregister() {
            tx.send_replace(end());
        }
    }

    /// Hands `value` to the waiters, and to whoever joins from now on, without ending the
    /// flight: the load goes on.
    pub(crate) fn publish_stale(&self, value: V) {
        self.publish(State::Stale(value));
    }

    /// [`publish_stale`](Self::publish_stale) for a live value: a refresh's current one.
    pub(crate) fn publish_current(&self, value: V) {
        self.publish(State::Value(value));
    }

    fn publish(&self, state: State<V>) {
        let mut map = self.flights.lock(&self.key);
        if let Some(flight) = map.get_mut(&self.key[..]).filter(|f| f.id == self.id) {
            flight
                .tx
                .get_or_insert_with(|| watch::channel(State::Running).0)
                .send_replace(state);
        }
    }

    /// Removes this flight from the map, returning its channel if anybody joined.
    fn unregister(&mut self) -> Option<watch::Sender<State<V>>> {
        if std::mem::replace(&mut self.unregistered, true) {
            return None;
        }
        let mut map = self.flights.lock(&self.key);
        match map.get(&self.key[..]) {
            Some(flight) if flight.id == self.id => map.remove(&self.key[..]).and_then(|f| f.tx),
            _ => None,
        }
    }
}

impl<V> Drop for Leader<V> {
    fn drop(&mut self) {
        // Without `finish`, the channel is dropped here still holding `Running`: waiters see
        // it close and know the flight was abandoned.
        drop(self.unregister());
    }
}

fn ended<V: Clone>(state: &State<V>) -> Option<End<V>> {
    match state {
        State::Running => None,
        State::Value(v) => Some(End::Value(v.clone())),
        State::Stale(v) => Some(End::Stale(v.clone())),
        State::Failed(e) => Some(End::Failed(e.clone())),
        State::Private => Some(End::Private),
    }
}

/// Waits for a flight to end.
pub(crate) async fn wait<V: Clone>(mut rx: watch::Receiver<State<V>>) -> End<V> {
    loop {
        if let Some(end) = ended(&rx.borrow_and_update()) {
            return end;
        }
        if rx.changed().await.is_err() {
            return ended(&rx.borrow()).unwrap_or(End::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn value_reaches_waiters_and_map_empties() {
        let flights = Arc::new(Flights::<u8>::default());
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!("first is leader")
        };
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!("second waits")
        };
        let waiting = tokio::spawn(wait(rx));
        leader.finish(|| State::Value(5));
        match waiting.await.unwrap() {
            End::Value(v) => assert_eq!(v, 5),
            _ => panic!("expected the value"),
        }
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_is_abandoned_and_replaceable() {
        let flights = Arc::new(Flights::<u8>::default());
        let leader = flights.join(b"k");
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!("second waits")
        };
        drop(leader);
        assert!(matches!(wait(rx).await, End::Abandoned));
        assert!(matches!(flights.join(b"k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn failed_and_private_ends() {
        let flights = Arc::new(Flights::<u8>::default());
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!()
        };
        leader.finish(|| State::Failed(Some(Arc::new("boom"))));
        match wait(rx).await {
            End::Failed(Some(e)) => assert_eq!(e.downcast_ref::<&str>(), Some(&"boom")),
            _ => panic!("expected the shared error"),
        }
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!()
        };
        leader.finish(|| State::Private);
        assert!(matches!(wait(rx).await, End::Private));
    }

    #[tokio::test]
    async fn a_stale_value_reaches_waiters_and_later_joiners_while_the_flight_runs() {
        let flights = Arc::new(Flights::<u8>::default());
        let Role::Leader(leader) = flights.join(b"k") else {
            panic!()
        };
        assert!(flights.try_lead(b"k").is_none(), "one flight per key");
        leader.publish_stale(3);
        let Role::Waiter(rx) = flights.join(b"k") else {
            panic!("the flight still runs")
        };
        assert!(matches!(wait(rx).await, End::Stale(3)));
        leader.finish(|| State::Value(4));
        assert_eq!(flights.len(), 0);
        assert!(flights.try_lead(b"k").is_some());
    }
}
