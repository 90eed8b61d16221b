//! The two tiers: in-process L1 and Redis L2.

pub(crate) mod breaker;
pub(crate) mod l1;
pub(crate) mod l2;
pub(crate) mod replica;
