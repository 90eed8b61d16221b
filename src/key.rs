//! The L2 key scheme and TTL jitter.
//!
//! Every Redis key this crate writes has the form
//!
//! ```text
//! {namespace}:{cache name}:v{schema version}:{digest}
//! ```
//!
//! where `digest` is the first 16 bytes (32 lowercase hex characters) of the BLAKE3 hash of
//! the application's key bytes. Hashing keeps keys short and free of glob characters, and a
//! cryptographic hash means that user input chosen to collide cannot poison another entry.
//! The namespace and cache name are restricted to `[A-Za-z0-9_.-]` so that the prefix can be
//! matched with `SCAN MATCH {namespace}:{name}:*` without escaping. Bumping the schema
//! version orphans every older entry, which then expires by its TTL.
//!
//! Replicas of a cache tell each other about invalidations on the pub/sub channel
//! `{namespace}:{cache name}:invalidations` (no schema version: an invalidation is about the
//! application's key, whatever shape its value has), naming keys by the same digest; the
//! message format is in `src/cache/tier/replica.rs` and the README.
//!
//! A tag's invalidation time (`Cache::invalidate_tag`) is kept under
//! `{namespace}:{cache name}:tag:{digest}`, the digest of the tag's bytes computed as a
//! key's, holding decimal Unix milliseconds (see `src/cache/tags.rs`).

use std::time::Duration;

use crate::ConfigError;

/// Bytes of the BLAKE3 output kept in a key (128 bits: collision resistance of 2^64).
pub(crate) const DIGEST_BYTES: usize = 16;

/// The digest of the application key `key`: the last part of its Redis key, and how
/// replicas name it to each other.
pub(crate) fn digest(key: &[u8]) -> [u8; DIGEST_BYTES] {
    let hash = blake3::hash(key);
    let mut out = [0u8; DIGEST_BYTES];
    out.copy_from_slice(&hash.as_bytes()[..DIGEST_BYTES]);
    out
}

/// `digest` as 32 lowercase hex digits.
pub(crate) fn hex_digits(digest: &[u8; DIGEST_BYTES]) -> [u8; DIGEST_BYTES * 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; DIGEST_BYTES * 2];
    for (pair, b) in digits.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    digits
}

/// The digest written as 32 lowercase hex digits, or `None`.
pub(crate) fn parse_hex_digest(text: &str) -> Option<[u8; DIGEST_BYTES]> {
    let bytes = text.as_bytes();
    if bytes.len() != DIGEST_BYTES * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; DIGEST_BYTES];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Builds the Redis keys of one cache.
#[derive(Debug, Clone)]
pub(crate) struct KeyScheme {
    /// `{namespace}:{name}:v{version}:`
    prefix: String,
    /// `{namespace}:{name}:*`, the pattern that matches every version of this cache.
    pattern: String,
    /// `{namespace}:{name}:invalidations`, the replicas' pub/sub channel.
    channel: String,
    /// `{namespace}:{name}:tag:`, before a tag's digest: its invalidation time.
    tag_prefix: String,
}

impl KeyScheme {
    pub(crate) fn new(namespace: &str, name: &str, version: u32) -> Self {
        Self {
            prefix: format!("{namespace}:{name}:v{version}:"),
            pattern: format!("{namespace}:{name}:*"),
            channel: format!("{namespace}:{name}:invalidations"),
            tag_prefix: format!("{namespace}:{name}:tag:"),
        }
    }

    /// The Redis key for the application key `key`.
    pub(crate) fn redis_key(&self, key: &[u8]) -> String {
        // Digits into a buffer, then one copy: `String::push` per digit cost more than the
        // hash on the L2 read path.
        let digits = hex_digits(&digest(key));
        let mut out = String::with_capacity(self.prefix.len() + digits.len());
        out.push_str(&self.prefix);
        out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
        out
    }

    /// The Redis key holding the invalidation time of the tag of `digest` (no schema
    /// version: a tag is the application's, whatever shape its entries' values have).
    pub(crate) fn tag_key(&self, digest: &[u8; DIGEST_BYTES]) -> String {
        let digits = hex_digits(digest);
        let mut out = String::with_capacity(self.tag_prefix.len() + digits.len());
        out.push_str(&self.tag_prefix);
        out.extend(digits.iter().map(|&b| char::from(b)));
        out
    }

    /// The `SCAN MATCH` pattern covering every entry of this cache, all schema versions.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The pub/sub channel on which this cache's replicas announce invalidations.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }
}

/// Checks a namespace or cache name: non-empty, at most 64 bytes of `[A-Za-z0-9_.-]`.
pub(crate) fn validate_part(setting: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(setting, "must not be empty"));
    }
    if value.len() > 64 {
        return Err(ConfigError::new(setting, "must be at most 64 bytes long"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ConfigError::new(
            setting,
            format!(
                "may contain only ASCII letters, digits, '_', '.' and '-', found {c:?} \
                 (it is part of every Redis key and of the SCAN pattern used by clear())"
            ),
        ));
    }
    Ok(())
}

/// Shortens `ttl` by a random fraction in `[0, jitter)`, so entries written together do not
/// expire together. Never lengthens it, never returns less than one millisecond.
pub(crate) fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let cut = ttl.mul_f64(jitter * fastrand::f64());
    ttl.saturating_sub(cut).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_has_documented_shape() {
        let scheme = KeyScheme::new("myapp", "provider", 3);
        let key = scheme.redis_key(b"query=rust");
        let (prefix, digest) = key.split_at("myapp:provider:v3:".len());
        assert_eq!(prefix, "myapp:provider:v3:");
        assert_eq!(digest.len(), 32);
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Stable: the digest is the BLAKE3 prefix, so other languages can compute it.
        let expected: String = blake3::hash(b"query=rust").to_hex()[..32].to_string();
        assert_eq!(digest, expected);
        assert_eq!(scheme.pattern(), "myapp:provider:*");
        assert_eq!(scheme.channel(), "myapp:provider:invalidations");
        assert_eq!(parse_hex_digest(digest), Some(self::digest(b"query=rust")));
        assert_eq!(parse_hex_digest(&digest.to_uppercase()), None);
        assert_eq!(parse_hex_digest(&digest[1..]), None);
    }

    #[test]
    fn distinct_keys_distinct_digests() {
        let scheme = KeyScheme::new("a", "b", 1);
        assert_ne!(scheme.redis_key(b"x"), scheme.redis_key(b"y"));
        assert_ne!(scheme.redis_key(b""), scheme.redis_key(b"\0"));
    }

    #[test]
    fn rejects_glob_and_separator_characters() {
        for bad in ["", "a:b", "a*", "a?b", "[x]", "sp ace", "é"] {
            assert!(validate_part("namespace", bad).is_err(), "{bad:?} accepted");
        }
        validate_part("namespace", "my-app_2.v").unwrap();
    }

    #[test]
    fn jitter_only_shortens() {
        let ttl = Duration::from_secs(100);
        for _ in 0..1000 {
            let j = jittered(ttl, 0.1);
            assert!(j <= ttl && j >= Duration::from_secs(90), "{j:?}");
        }
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
