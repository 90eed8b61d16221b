//! Replica invalidation: `invalidate` and `clear` on one replica reach the L1 of every other
//! replica that shares its Redis and cache name.
//!
//! - **Channel.** Redis pub/sub on `{namespace}:{cache name}:invalidations`
//!   ([`KeyScheme::channel`](crate::key::KeyScheme::channel)). The sender publishes on its
//!   shared connection, in one pipeline after the `UNLINK` (so that a replica told of it can
//!   no longer read the old value from Redis); every replica subscribes on a dedicated
//!   connection of its own (one without L1 applies only `tag` messages, for its tag
//!   times).
//! - **Messages** (a stable format, in the README): ASCII, space-separated,
//!   `lc1 {origin} key {digest}`, `lc1 {origin} tag {digest}` or `lc1 {origin} clear`, where `lc1` is the format and its
//!   version, `origin` the sending cache's random 64-bit id as 16 lowercase hex digits (a
//!   replica ignores its own), and `digest` the key's (or tag's) digest as in its Redis key.
//!   A receiver applies them to its L1 only: the sender already removed the Redis entries
//!   (or, for a tag, wrote its invalidation time, which a receiver records as its own now,
//!   `tags.rs`). A build without tags takes a `tag` message for junk, hence a `clear`.
//!   Anything else on the channel (another version, junk) is taken as a `clear`: a replica
//!   that cannot read an invalidation must not trust its L1.
//! - **Gaps.** A message published while a replica is not subscribed is lost, so every
//!   resubscription makes nothing in L1, nor any load under way, trusted any more (the
//!   shared epochs, `epoch.rs`), and empties L1, counted. The first subscription empties
//!   L1 (counted when it held anything) but leaves loads under way alone (see
//!   [`Listener::subscribed`]).
//! - **Supervision.** The subscriber is a task that never touches a request: it connects
//!   within `connect_timeout`, `PING`s every `probe_interval` (a blackholed connection
//!   shows no end otherwise), reconnects with jittered exponential backoff, and ends when
//!   the cache's last handle is dropped (which drops the [`Replica`] and its stop signal).
//!
//! Pub/sub rather than RESP3 client tracking (`CLIENT TRACKING ... BCAST PREFIX`): tracking
//! needs RESP3 on the connection, reports keys rather than our digests' meaning (a `clear`
//! is a flood of one message per key, and `SET` by the writer would invalidate every
//! replica's fresh entry too), and managed Redis services and proxies often lack it, while
//! `PUBLISH`/`SUBSCRIBE` work on every Redis since 2.0 and through RESP2.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_core::Stream;
use redis::aio::{PubSubSink, PubSubStream};
use redis::ConnectionAddr;
use tokio::sync::oneshot;

use super::l2::L2;
use crate::cache::epoch::Epochs;
use crate::cache::stats::{Instruments, Received};
use crate::cache::tags::TagTimes;
use crate::clock::Clock;
use crate::key::{hex_digits, parse_hex_digest, DIGEST_BYTES};
use crate::queue::Backoff;
use crate::redis::error::describe;
use crate::redis::target::Target;
use crate::redis::throttle::Throttle;

/// The format tag and version that starts every message.
const FORMAT: &str = "lc1";

/// What a replica announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The key of this digest was invalidated.
    Key([u8; DIGEST_BYTES]),
    /// The cache was cleared.
    Clear,
    /// The tag of this digest was invalidated (`invalidate_tag`).
    Tag([u8; DIGEST_BYTES]),
}

/// A message as a receiver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// Sent by this very cache.
    Own,
    Notice(Notice),
    /// Not a message this build can read.
    Unknown,
}

fn encode(origin: u64, notice: Notice) -> String {
    let hex = |digest: &[u8; DIGEST_BYTES]| {
        let digits = hex_digits(digest);
        digits.iter().map(|&b| char::from(b)).collect::<String>()
    };
    match notice {
        Notice::Key(digest) => format!("{FORMAT} {origin:016x} key {}", hex(&digest)),
        Notice::Tag(digest) => format!("{FORMAT} {origin:016x} tag {}", hex(&digest)),
        Notice::Clear => format!("{FORMAT} {origin:016x} clear"),
    }
}

fn parse(message: &[u8], own: u64) -> Parsed {
    let Ok(text) = std::str::from_utf8(message) else {
        return Parsed::Unknown;
    };
    let mut parts = text.split(' ');
    let (Some(FORMAT), Some(origin)) = (parts.next(), parts.next()) else {
        return Parsed::Unknown;
    };
    let Some(origin) = (origin.len() == 16)
        .then(|| u64::from_str_radix(origin, 16).ok())
        .flatten()
    else {
        return Parsed::Unknown;
    };
    let notice = match (parts.next(), parts.next(), parts.next()) {
        (Some("key"), Some(digest), None) => match parse_hex_digest(digest) {
            Some(digest) => Notice::Key(digest),
            None => return Parsed::Unknown,
        },
        (Some("tag"), Some(digest), None) => match parse_hex_digest(digest) {
            Some(digest) => Notice::Tag(digest),
            None => return Parsed::Unknown,
        },
        (Some("clear"), None, None) => Notice::Clear,
        _ => return Parsed::Unknown,
    };
    if origin == own {
        Parsed::Own
    } else {
        Parsed::Notice(notice)
    }
}

/// What the subscriber empties: a cache's L1, whatever its value type.
pub(crate) trait FlushL1: Send + Sync + 'static {
    /// Empties L1; returns how many entries it held.
    fn flush_l1(&self) -> usize;
}

/// One cache's side of replica invalidation, owned by its L2 tier.
pub(crate) struct Replica {
    origin: u64,
    channel: Arc<str>,
    /// The cache's L1, to keep coherent (`None`: no L1; only tag times are kept).
    flush: Option<Weak<dyn FlushL1>>,
    epochs: Arc<Epochs>,
    tags: Arc<TagTimes>,
    clock: Clock,
    ins: Arc<Instruments>,
    cache: Arc<str>,
    /// Dropped with the cache, which ends the subscriber.
    _stop: oneshot::Sender<()>,
    stop_rx: Mutex<Option<oneshot::Receiver<()>>>,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("origin", &format_args!("{:016x}", self.origin))
            .field("channel", &self.channel)
            .field("keeps_l1", &self.flush.is_some())
            .finish_non_exhaustive()
    }
}

impl Replica {
    pub(crate) fn new(
        channel: &str,
        flush: Option<Weak<dyn FlushL1>>,
        (epochs, tags, clock): (Arc<Epochs>, Arc<TagTimes>, Clock),
        ins: Arc<Instruments>,
        cache: Arc<str>,
    ) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        Self {
            // Random per cache, not per process: two caches of one name in one process are
            // replicas of each other too.
            origin: fastrand::u64(..),
            channel: Arc::from(channel),
            flush,
            epochs,
            tags,
            clock,
            ins,
            cache,
            _stop: stop,
            stop_rx: Mutex::new(Some(stop_rx)),
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The message announcing `notice`.
    pub(crate) fn message(&self, notice: Notice) -> String {
        encode(self.origin, notice)
    }

    /// Starts the subscriber on `rt`, once: for an L1 to keep coherent, and for the tag
    /// times (without L1, only `tag` messages are applied).
    pub(crate) fn start(&self, rt: &tokio::runtime::Handle, l2: Weak<L2>) {
        let flush = self.flush.clone();
        let stop = self.stop_rx.lock().ok().and_then(|mut rx| rx.take());
        let Some(stop) = stop else { return };
        let listener = Listener {
            origin: self.origin,
            channel: Arc::clone(&self.channel),
            flush,
            epochs: Arc::clone(&self.epochs),
            tags: Arc::clone(&self.tags),
            clock: self.clock.clone(),
            ins: Arc::clone(&self.ins),
            cache: Arc::clone(&self.cache),
        };
        rt.spawn(subscribe_loop(l2, listener, stop));
    }
}

/// What the subscriber task holds: nothing that keeps the cache alive.
struct Listener {
    origin: u64,
    channel: Arc<str>,
    /// `None`: no L1; only the tag times are kept.
    flush: Option<Weak<dyn FlushL1>>,
    epochs: Arc<Epochs>,
    tags: Arc<TagTimes>,
    clock: Clock,
    ins: Arc<Instruments>,
    cache: Arc<str>,
}

impl Listener {
    fn flush(&self) -> usize {
        self.flush
            .as_ref()
            .and_then(Weak::upgrade)
            .map_or(0, |l1| l1.flush_l1())
    }

    fn receive(&self, payload: &[u8]) {
        let parsed = parse(payload, self.origin);
        if self.flush.is_none() {
            // No L1: Redis is all this cache reads, and the sender already changed it; only
            // the tag times need keeping (an unreadable message may have been a tag's).
            match parsed {
                Parsed::Notice(Notice::Tag(_)) => {}
                Parsed::Unknown => return self.tags.forget(),
                _ => return,
            }
        }
        match parsed {
            Parsed::Own => {}
            Parsed::Notice(Notice::Key(digest)) => {
                self.epochs.bump_digest(&digest);
                self.ins.received(Received::Key);
            }
            Parsed::Notice(Notice::Tag(digest)) => {
                // Loads under way store nothing (their keys' tags are not known here).
                self.epochs.bump_all();
                let now = self.clock.unix_ms();
                self.tags.record(digest, now, now);
                self.ins.received(Received::Tag);
            }
            Parsed::Notice(Notice::Clear) => {
                self.epochs.bump_shared_all();
                self.flush();
                self.ins.received(Received::Clear);
            }
            Parsed::Unknown => {
                self.epochs.bump_shared_all();
                self.flush();
                self.ins.received(Received::Unknown);
                tracing::debug!(cache = %self.cache, channel = %self.channel, "unreadable invalidation message: L1 emptied");
            }
        }
    }

    /// Subscribed (again): whatever was published before is lost, so nothing stored before
    /// now is trusted.
    ///
    /// After a gap, loads under way are outdated too (the bump), so that a value read
    /// before a missed invalidation is not stored after it, in L1 or Redis. The first
    /// subscription only empties L1: the loads and inserts of the moment between `build()`
    /// and it would otherwise all be dropped, in Redis too, on every start, for a race
    /// that needs another replica to invalidate the same key in that moment.
    fn subscribed(&self, again: bool, url: &str) {
        // Tag times heard of so far may have missed some: read them from Redis again.
        self.tags.subscribed();
        self.ins.set_subscribed(true);
        if self.flush.is_none() {
            tracing::info!(cache = %self.cache, redis = %url, channel = %self.channel, "replica invalidations subscribed (tags only: no L1)");
            return;
        }
        if again {
            self.epochs.bump_shared_all();
        }
        let dropped = self.flush();
        if again || dropped > 0 {
            self.ins.l1_gap_flush();
        }
        if again {
            tracing::warn!(cache = %self.cache, redis = %url, channel = %self.channel, dropped, "replica invalidations subscribed again: L1 emptied, since invalidations sent meanwhile were missed");
        } else {
            tracing::info!(cache = %self.cache, redis = %url, channel = %self.channel, dropped, "replica invalidations subscribed");
        }
    }
}

/// Connects, subscribes, listens; again after a failure, with backoff; until `stop`.
async fn subscribe_loop(l2: Weak<L2>, listener: Listener, mut stop: oneshot::Receiver<()>) {
    let warn = Throttle::new(Duration::from_secs(10));
    let mut failures = 0u32;
    let mut subscribed_before = false;
    loop {
        // Only what the attempt needs: holding the tier across an await would keep the
        // cache's stop signal alive.
        let Some((target, url, connect_timeout, probe)) = l2.upgrade().map(|l2| {
            let ep = l2.endpoint();
            (
                ep.target().clone(),
                ep.url().to_owned(),
                ep.connect_timeout,
                ep.probe_interval,
            )
        }) else {
            return;
        };
        // From a fifth of the probe interval (100 ms by default) up to twice it: a replica
        // that resubscribes late serves its pre-gap L1 for that much longer.
        let first = (probe / 5).max(Duration::from_millis(1));
        let backoff = Backoff::exponential(first).max_delay(probe * 2);
        let channel = Arc::clone(&listener.channel);
        let attempt = tokio::select! {
            _ = &mut stop => return,
            attempt = tokio::time::timeout(connect_timeout, async {
                let client = target.client().await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&*channel).await?;
                let addr = client.get_connection_info().addr().clone();
                Ok::<_, redis::RedisError>((pubsub.split(), addr))
            }) => attempt,
        };
        let why = match attempt {
            Ok(Ok(((mut sink, mut stream), addr))) => {
                failures = 0;
                listener.subscribed(subscribed_before, &url);
                subscribed_before = true;
                let why = tokio::select! {
                    _ = &mut stop => return,
                    why = listen(&listener, &mut sink, &mut stream, probe, connect_timeout, (&target, &addr)) => why,
                };
                listener.ins.set_subscribed(false);
                listener.tags.unsubscribed();
                format!("subscription lost: {why}")
            }
            Ok(Err(e)) => {
                failures = failures.saturating_add(1);
                format!("cannot subscribe: {}", describe(&e))
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                format!("cannot subscribe: no connection within {connect_timeout:?}")
            }
        };
        // The first failure after a subscription is always told; later ones every 10 s.
        let allowed = warn.allow();
        if failures <= 1 || allowed.is_some() {
            let why = l2
                .upgrade()
                .map_or(why.clone(), |l2| l2.endpoint().scrub(why));
            tracing::warn!(
                cache = %listener.cache,
                redis = %url,
                channel = %listener.channel,
                held_back = allowed.unwrap_or(0),
                "replica invalidations: {why}; other replicas' invalidations are missed until subscribed again, when L1 is emptied"
            );
        }
        let delay = backoff.delay(failures.max(1));
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Applies messages until the connection fails; says why it did.
async fn listen(
    listener: &Listener,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
    probe: Duration,
    answer_within: Duration,
    (target, addr): (&Target, &ConnectionAddr),
) -> String {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + probe, probe);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)) => match msg {
                Some(msg) => listener.receive(msg.get_payload_bytes()),
                None => return "the connection closed".to_owned(),
            },
            _ = tick.tick() => {
                match tokio::time::timeout(answer_within, sink.ping::<redis::Value>()).await {
                    // Behind Sentinels, a subscription on a primary that was replaced (a
                    // planned failover keeps it up for a while) misses what is published on
                    // the new one: resubscribe there, emptying L1 as after any gap.
                    Ok(Ok(_)) => {
                        let moved = tokio::time::timeout(answer_within, target.primary_moved(addr));
                        if moved.await == Ok(true) {
                            return "the Sentinels name another primary".to_owned();
                        }
                    }
                    Ok(Err(e)) => return format!("PING failed: {}", describe(&e)),
                    Err(_) => return format!("PING unanswered within {answer_within:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_name_their_origin() {
        let digest = crate::key::digest(b"query=rust");
        let key = encode(0xfeed, Notice::Key(digest));
        assert_eq!(
            key,
            format!(
                "lc1 000000000000feed key {}",
                &blake3::hash(b"query=rust").to_hex()[..32]
            )
        );
        assert_eq!(
            parse(key.as_bytes(), 1),
            Parsed::Notice(Notice::Key(digest))
        );
        assert_eq!(parse(key.as_bytes(), 0xfeed), Parsed::Own);
        let tag = encode(0xfeed, Notice::Tag(digest));
        assert_eq!(
            tag,
            format!(
                "lc1 000000000000feed tag {}",
                &blake3::hash(b"query=rust").to_hex()[..32]
            )
        );
        assert_eq!(
            parse(tag.as_bytes(), 1),
            Parsed::Notice(Notice::Tag(digest))
        );
        let clear = encode(u64::MAX, Notice::Clear);
        assert_eq!(clear, "lc1 ffffffffffffffff clear");
        assert_eq!(parse(clear.as_bytes(), 1), Parsed::Notice(Notice::Clear));
    }

    #[test]
    fn anything_else_is_unknown() {
        let digest = "0".repeat(32);
        for bad in [
            String::new(),
            "lc1".into(),
            "lc2 000000000000feed clear".into(),
            "lc1 feed clear".into(),
            "lc1 000000000000feed clear extra".into(),
            "lc1 000000000000feed key".into(),
            "lc1 000000000000feed tag".into(),
            format!("lc1 000000000000feed tag {digest} extra"),
            format!("lc1 000000000000feed key {digest} extra"),
            format!("lc1 000000000000feed key {}", &digest[1..]),
            "lc1 000000000000feed flush".into(),
            "lc1 00000000000-feed clear".into(),
        ] {
            assert_eq!(parse(bad.as_bytes(), 1), Parsed::Unknown, "{bad:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe], 1), Parsed::Unknown);
    }
}
