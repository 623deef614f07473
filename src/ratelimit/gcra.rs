//! The arithmetic of one limit, as a GCRA (generic cell rate algorithm, the
//! token bucket told by one number per key): the key's "theoretical arrival time"
//! `tat`, in microseconds. A request at `now` is allowed when
//! `max(tat, now) + interval - now <= capacity`, and then moves `tat` on by
//! `interval`; a refused one changes nothing. `interval = per / rate`, `capacity =
//! burst * interval`: a full bucket lets `burst` requests through at once and then
//! one every `interval`.
//!
//! A key whose `tat` is in the past is in the same state as a key never seen (a
//! full bucket), which is what lets the stores forget such keys for free. The Lua
//! script of the Redis backend (`redis.rs`) is this same arithmetic.

use crate::config::Limit;
use crate::error::LimitKind;

/// A limit prepared for checking, with its `RateLimit-Policy` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub kind: LimitKind,
    pub interval_us: u64,
    pub capacity_us: u64,
    pub burst: u32,
    /// `"user";q=100;w=1`: see [`policy_item`].
    pub policy: String,
}

/// What one step found: whether it passed, how many more would pass now, and when
/// the bucket is full again (`reset_us`) or, refused, when one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub allowed: bool,
    pub remaining: u64,
    /// Allowed: microseconds until the bucket is full again. Refused: until the
    /// next request would pass.
    pub wait_us: u64,
}

impl Rule {
    pub fn new(kind: LimitKind, limit: &Limit) -> Rule {
        let per_us = u64::try_from(limit.per.as_micros()).unwrap_or(u64::MAX);
        // The config guarantees at least one microsecond per request.
        let interval_us = (per_us / u64::from(limit.rate.max(1))).max(1);
        let capacity_us = interval_us.saturating_mul(u64::from(limit.burst));
        Rule {
            kind,
            interval_us,
            capacity_us,
            burst: limit.burst,
            policy: policy_item(kind, limit.burst, capacity_us),
        }
    }

    /// One request at `now` against `tat` (`None`: never seen): the new `tat` to
    /// store when allowed.
    pub fn step(&self, tat: Option<u64>, now: u64) -> (Option<u64>, Step) {
        let tat = tat.unwrap_or(0).max(now);
        let next = tat.saturating_add(self.interval_us);
        let used = next - now;
        if used > self.capacity_us {
            return (
                None,
                Step {
                    allowed: false,
                    remaining: 0,
                    wait_us: used - self.capacity_us,
                },
            );
        }
        (
            Some(next),
            Step {
                allowed: true,
                remaining: (self.capacity_us - used) / self.interval_us,
                wait_us: used,
            },
        )
    }

    /// Whether the next request at `now` would be refused, and if so how long until
    /// it would not: the auth-failure check before verifying.
    pub fn exhausted(&self, tat: Option<u64>, now: u64) -> Option<u64> {
        let (_, step) = self.step(tat, now);
        (!step.allowed).then_some(step.wait_us)
    }
}

/// Whole seconds, rounded up, at least 1: `Retry-After` and `t`.
pub fn whole_seconds(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
}

/// One item of `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers, structured
/// field syntax): the policy name, `q` the burst (what may be sent at once) and `w`
/// the seconds a drained bucket takes to fill again (rounded up, at least 1).
pub fn policy_item(kind: LimitKind, burst: u32, capacity_us: u64) -> String {
    format!(
        "\"{}\";q={burst};w={}",
        kind.as_str(),
        whole_seconds(capacity_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rule(rate: u32, per_ms: u64, burst: u32) -> Rule {
        Rule::new(
            LimitKind::User,
            &Limit {
                rate,
                per: Duration::from_millis(per_ms),
                burst,
            },
        )
    }

    /// Runs `n` requests at the same instant; returns how many passed.
    fn burst_at(r: &Rule, tat: &mut Option<u64>, now: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let (next, step) = r.step(*tat, now);
                if let Some(next) = next {
                    *tat = Some(next);
                }
                step.allowed
            })
            .count()
    }

    #[test]
    fn a_full_bucket_passes_burst_requests_then_one_per_interval() {
        let r = rule(10, 1000, 5); // 100 ms apart, 5 at once
        let mut tat = None;
        assert_eq!(burst_at(&r, &mut tat, 1_000_000, 8), 5);
        let (_, refused) = r.step(tat, 1_000_000);
        assert_eq!(refused.wait_us, 100_000, "one interval until the next");
        assert_eq!(burst_at(&r, &mut tat, 1_099_999, 1), 0);
        assert_eq!(burst_at(&r, &mut tat, 1_100_000, 2), 1);
        // Long after: full again.
        assert_eq!(burst_at(&r, &mut tat, 9_000_000, 8), 5);
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let r = rule(1, 1000, 3);
        let (tat, first) = r.step(None, 0);
        assert_eq!((first.allowed, first.remaining), (true, 2));
        assert_eq!(first.wait_us, 1_000_000, "one second until full again");
        let (_, second) = r.step(tat, 0);
        assert_eq!(second.remaining, 1);
        assert_eq!(second.wait_us, 2_000_000);
    }

    #[test]
    fn exhausted_peeks_without_consuming() {
        let r = rule(1, 1000, 2);
        let mut tat = None;
        assert_eq!(r.exhausted(tat, 0), None);
        assert_eq!(burst_at(&r, &mut tat, 0, 2), 2);
        assert_eq!(r.exhausted(tat, 0), Some(1_000_000));
        assert_eq!(
            r.exhausted(tat, 0),
            Some(1_000_000),
            "a peek consumes nothing"
        );
        assert_eq!(r.exhausted(tat, 1_000_000), None);
    }

    #[test]
    fn a_past_tat_is_a_full_bucket() {
        let r = rule(5, 1000, 4);
        assert_eq!(r.step(Some(10), 1_000_000), r.step(None, 1_000_000));
    }

    #[test]
    fn policy_items_use_the_structured_field_syntax() {
        assert_eq!(rule(100, 1000, 100).policy, "\"user\";q=100;w=1");
        assert_eq!(rule(10, 1000, 50).policy, "\"user\";q=50;w=5");
        // Sub-second refills round up to one second.
        assert_eq!(rule(1, 100, 1).policy, "\"user\";q=1;w=1");
        assert_eq!(whole_seconds(1), 1);
        assert_eq!(whole_seconds(1_000_001), 2);
        assert_eq!(whole_seconds(0), 1);
    }
}
