//! The queue conformance suite (`tests/queue_suite/`) against the in-process store.

#[macro_use]
mod queue_suite;

use layercake::queue::store::MemoryStore;

queue_conformance!(store: MemoryStore::new(), paused_time: true);
