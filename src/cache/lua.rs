//! The Lua scripts of the Redis backend. Each multi-key step is one script, so it
//! is atomic and costs one round trip; `redis::Script` sends `EVALSHA` and loads the
//! script again when Redis lost it (a restart). Lua scripting needs Redis 2.6 or
//! later; nothing here needs Redis 7.
//!
//! Entries are `<expires_at ms>\n<content type>\n<body>`: the scripts read the
//! expiry with `string.match(v, '^(%d+)\n')` and treat an expired one as absent.

use redis::Script;

/// `KEYS: entries, lock; ARGV: variant, flight id, lock ms, now ms`.
pub const ACQUIRE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local exp = tonumber(string.match(v, '^(%d+)\n'))
  if exp and exp > tonumber(ARGV[4]) then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {2} end
return {3, redis.call('GET', KEYS[2]) or ''}
";

/// `KEYS: entries, lock, result; ARGV: variant, holder, now ms`.
pub const POLL: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local exp = tonumber(string.match(v, '^(%d+)\n'))
  if exp and exp > tonumber(ARGV[3]) then return {1, v} end
end
local r = redis.call('GET', KEYS[3])
if r then return {4, r} end
if redis.call('GET', KEYS[2]) == ARGV[2] then return {3} end
return {0}
";

/// Stores an entry (unless the upload was invalidated or holds too many variants:
/// then the answer goes out as a flight result), then releases the lock if it is
/// still ours. Returns 1 when stored.
/// `KEYS: entries, lock, gone, index, result;
///  ARGV: variant, value, expires_at, flight id, now ms, result ms, member, max variants,
///  content type, body` (the last two for the flight result).
pub const STORE: &str = r"
local stored = 0
if redis.call('EXISTS', KEYS[3]) == 0 then
  local now = tonumber(ARGV[5])
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[8]) then
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      local exp = tonumber(string.match(all[i + 1], '^(%d+)\n'))
      if not exp or exp <= now then redis.call('HDEL', KEYS[1], all[i]) end
    end
  end
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[8]) then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    local ttl = tonumber(ARGV[3]) - now
    if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[7])
    stored = 1
  end
end
if stored == 0 then
  redis.call('SET', KEYS[5], 'a\n200\n' .. ARGV[9] .. '\n' .. ARGV[10], 'PX', ARGV[6])
end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return stored
";

/// Publishes an uncached result and releases the lock if it is still ours.
/// `KEYS: lock, result; ARGV: flight id, result, result ms`.
pub const FINISH: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Drops an upload's entries and marks it gone for a while.
/// `KEYS: entries, gone, index; ARGV: upload, gone ms`.
pub const INVALIDATE: &str = r"
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. f) end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return #fields
";

/// `KEYS: index; ARGV: now ms`.
pub const COUNT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
";

/// The scripts, hashed once.
/// Deletes a key only while its value ends with the given suffix.
/// `KEYS: key; ARGV: suffix`.
pub const DELETE_IF: &str = r"
local v = redis.call('GET', KEYS[1])
if v and #v >= #ARGV[1] and string.sub(v, -#ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct Scripts {
    pub acquire: Script,
    pub poll: Script,
    pub store: Script,
    pub finish: Script,
    pub invalidate: Script,
    pub count: Script,
    pub delete_if: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            acquire: Script::new(ACQUIRE),
            poll: Script::new(POLL),
            store: Script::new(STORE),
            finish: Script::new(FINISH),
            invalidate: Script::new(INVALIDATE),
            count: Script::new(COUNT),
            delete_if: Script::new(DELETE_IF),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}
