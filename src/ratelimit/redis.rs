//! The Redis backend: counts shared by every replica, one round trip per check.
//!
//! ```text
//! smhgw:v1:rl:l:<digest>   string  tat (µs, Redis clock) of a library     PX: until it has passed
//! smhgw:v1:rl:u:<digest>   string  tat of a (library, user)
//! smhgw:v1:rl:af:<digest>  string  tat of a client address's auth failures
//! ```
//!
//! Digests are SHA-256 prefixes, so no user id or address is stored in plain. Each
//! check is one Lua script (GCRA, `gcra.rs`'s arithmetic) that reads Redis's own
//! clock (`TIME`), so replicas with skewed clocks agree; every key expires once its
//! `tat` has passed, so Redis holds only keys that still limit something.
//!
//! Calls go through [`Link`] (the renew cache's timeouts and breaker, and its
//! connection when the cache uses the same Redis). A failed or slow call is
//! [`Unavailable`]: the caller lets the request through and counts it.

use std::sync::Arc;

use redis::Script;
use sha2::{Digest, Sha256};

use super::gcra::Rule;
use crate::redis_link::{Link, Unavailable};

/// `KEYS: k1 [k2]; ARGV: interval1, capacity1 [, interval2, capacity2]` (µs).
/// All or nothing: stores the new tats only when every key allows. Returns
/// `{0, remaining1, wait1 [, remaining2, wait2]}` when allowed, `{i, wait}` when
/// key `i` refused (wait: µs until it would pass).
pub const CHECK: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {0}
local next = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local used = tat + interval - now
  if used > capacity then return {i, used - capacity} end
  next[i] = tat + interval
  out[#out + 1] = math.floor((capacity - used) / interval)
  out[#out + 1] = used
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', next[i]), 'PX', string.format('%.0f', math.ceil((next[i] - now) / 1000) + 1))
end
return out
";

/// `KEYS: k; ARGV: interval, capacity` (µs). Counts one auth failure unless the key
/// is already exhausted; returns the µs until the next failure would be allowed
/// (0 while it still would).
pub const FAIL: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
if tat + interval - now <= capacity then
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1))
end
local wait = tat + interval - capacity - now
if wait < 0 then wait = 0 end
return wait
";

/// What a check found, per key in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// `(remaining, µs until full)` per key.
    Allowed(Vec<(u64, u64)>),
    /// The index of the key that refused, and µs until it would pass.
    Refused(usize, u64),
}

pub struct RedisLimiter {
    link: Arc<Link>,
    check: Script,
    fail: Script,
}

impl RedisLimiter {
    pub fn new(link: Arc<Link>) -> RedisLimiter {
        RedisLimiter {
            link,
            check: Script::new(CHECK),
            fail: Script::new(FAIL),
        }
    }

    /// One request against every `(key, rule)`: one round trip.
    pub async fn check(&self, keys: &[(String, &Rule)]) -> Result<Checked, Unavailable> {
        let reply: Vec<i64> = self
            .link
            .call(async |mut conn| {
                let mut invocation = self.check.prepare_invoke();
                for (key, rule) in keys {
                    invocation
                        .key(key)
                        .arg(rule.interval_us)
                        .arg(rule.capacity_us);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let to_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
        match reply.as_slice() {
            [0, rest @ ..] if rest.len() == 2 * keys.len() => Ok(Checked::Allowed(
                rest.chunks(2)
                    .map(|c| (to_u64(c[0]), to_u64(c[1])))
                    .collect(),
            )),
            [i, wait] if *i >= 1 && (*i as usize) <= keys.len() => {
                Ok(Checked::Refused(*i as usize - 1, to_u64(*wait)))
            }
            _ => Err(Unavailable),
        }
    }

    /// Counts one auth failure; returns µs until the address may fail again (0:
    /// not exhausted).
    pub async fn fail(&self, key: &str, rule: &Rule) -> Result<u64, Unavailable> {
        let wait: i64 = self
            .link
            .call(async |mut conn| {
                self.fail
                    .key(key)
                    .arg(rule.interval_us)
                    .arg(rule.capacity_us)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(u64::try_from(wait).unwrap_or(0))
    }
}

/// `smhgw:v1:rl:<tag>:<32 hex digits of SHA-256 over the parts, NUL-separated>`.
pub fn key(tag: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(16 + tag.len() + 32);
    out.push_str("smhgw:v1:rl:");
    out.push_str(tag);
    out.push(':');
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_digests_only_and_tell_parts_apart() {
        let k = key("u", &[b"lib1", b"alice"]);
        assert!(k.starts_with("smhgw:v1:rl:u:"), "{k}");
        assert!(!k.contains("lib1") && !k.contains("alice"), "{k}");
        assert_ne!(k, key("u", &[b"lib1a", b"lice"]));
        assert_ne!(k, key("l", &[b"lib1", b"alice"]));
    }
}
