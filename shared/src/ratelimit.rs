//! Request budgets shared by every api replica, kept in Redis (API.md,
//! "Limits before identity"): a budget of failed authentications per client
//! address, and a budget of requests per API key, each a GCRA (the
//! generic cell rate algorithm: one "theoretical arrival time" per budget,
//! pushed one emission interval later by each use, a use fitting while it
//! stays within one window of now, so N per window with bursts of N).
//!
//! Both are checked in one Lua script before the key is looked up, so the
//! valid-key path costs one Redis round trip: the address's budget is only
//! looked at (a valid key never spends it) unless the address is in debt,
//! in which case this attempt is reserved against it (refunded if the key
//! turns out valid), so lookups from an address that keeps failing can
//! never outrun its budget; the key's budget (by the SHA-256 of the
//! presented secret, known before the lookup) is spent. A failure spends the
//! address's budget in a second script. Time is Redis's own (`TIME`), so
//! replicas with skewed clocks agree.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::RateLimit;

/// A budget as the script takes it: microseconds per use and per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval_us: u64,
    pub window_us: u64,
}

impl From<RateLimit> for Gcra {
    fn from(rate: RateLimit) -> Self {
        let (n, window) = match rate {
            RateLimit::PerSecond(n) => (n.max(1), 1_000_000u64),
            RateLimit::PerMinute(n) => (n.max(1), 60_000_000u64),
        };
        Gcra { interval_us: (window / u64::from(n)).max(1), window_us: window }
    }
}

/// What [`SharedBudgets::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on and look the key up; `reserved`: this attempt was counted
    /// against the address in advance (it is in debt).
    Admitted { reserved: bool },
    /// The address is over its budget of failed authentications.
    AddressOver(Duration),
    /// The presented key is over its budget of requests.
    KeyOver(Duration),
}

/// KEYS[1] the address's budget, KEYS[2] (optional) the key's.
/// ARGV: address interval, address window, key interval, key window (µs).
/// Answers {verdict, wait_us, reserved}: 0 admitted, 1 address over, 2 key over.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local a_int, a_win = tonumber(ARGV[1]), tonumber(ARGV[2])
local reserved = 0
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then
  local after = tat + a_int
  if after > now + a_win then
    return {1, after - now - a_win, 0}
  end
  redis.call('SET', KEYS[1], after, 'PX', math.floor((after - now) / 1000) + 1000)
  reserved = 1
end
if #KEYS > 1 then
  local k_int, k_win = tonumber(ARGV[3]), tonumber(ARGV[4])
  local ktat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ktat < now then ktat = now end
  local kafter = ktat + k_int
  if kafter > now + k_win then
    if reserved == 1 then
      redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1000)
    end
    return {2, kafter - now - k_win, 0}
  end
  redis.call('SET', KEYS[2], kafter, 'PX', math.floor((kafter - now) / 1000) + 1000)
end
return {0, 0, reserved}
";

/// KEYS[1] the address's budget; ARGV[1] the interval (µs), ARGV[2] +1 to
/// spend one use, -1 to give a reserved one back.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local int, dir = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local after
if dir > 0 then
  if tat < now then tat = now end
  after = tat + int
else
  after = tat - int
end
if after > now then
  redis.call('SET', KEYS[1], after, 'PX', math.floor((after - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// The budgets in Redis, over a connection the caller owns (the queue's).
#[derive(Clone)]
pub struct SharedBudgets {
    conn: ConnectionManager,
    prefix: String,
    address: Gcra,
    key: Gcra,
    admit: redis::Script,
    settle: redis::Script,
}

impl SharedBudgets {
    pub fn new(conn: ConnectionManager, prefix: &str, address: RateLimit, key: RateLimit) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            address: address.into(),
            key: key.into(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
        }
    }

    fn address_key(&self, addr: &str) -> String {
        format!("{}.limits.addr.{addr}", self.prefix)
    }

    fn key_key(&self, key: &[u8; 32]) -> String {
        format!("{}.limits.key.{}", self.prefix, hex::encode(key))
    }

    /// Before a lookup: the address's budget looked at (reserved when in
    /// debt), the key's spent. One round trip (`EVALSHA`, or `EVAL` once
    /// after a restart or a flush).
    pub async fn admit(&self, addr: &str, key: Option<&[u8; 32]>) -> redis::RedisResult<Admission> {
        let mut invocation = self.admit.key(self.address_key(addr));
        if let Some(key) = key {
            invocation.key(self.key_key(key));
        }
        invocation.arg(self.address.interval_us).arg(self.address.window_us);
        invocation.arg(self.key.interval_us).arg(self.key.window_us);
        let mut conn = self.conn.clone();
        let (verdict, wait_us, reserved): (i64, i64, i64) = invocation.invoke_async(&mut conn).await?;
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        Ok(match verdict {
            1 => Admission::AddressOver(wait),
            2 => Admission::KeyOver(wait),
            _ => Admission::Admitted { reserved: reserved == 1 },
        })
    }

    /// A failed authentication spends one use of the address's budget
    /// (unless it was reserved at admission: then it is spent already).
    pub async fn failed(&self, addr: &str, reserved: bool) -> redis::RedisResult<()> {
        if reserved {
            return Ok(());
        }
        self.settle_dir(addr, 1).await
    }

    /// A valid key gives back the use reserved at admission.
    pub async fn passed(&self, addr: &str, reserved: bool) -> redis::RedisResult<()> {
        if !reserved {
            return Ok(());
        }
        self.settle_dir(addr, -1).await
    }

    async fn settle_dir(&self, addr: &str, dir: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .settle
            .key(self.address_key(addr))
            .arg(self.address.interval_us)
            .arg(dir)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_becomes_an_emission_interval_and_a_window() {
        assert_eq!(Gcra::from(RateLimit::PerSecond(20)), Gcra { interval_us: 50_000, window_us: 1_000_000 });
        assert_eq!(Gcra::from(RateLimit::PerMinute(3)), Gcra { interval_us: 20_000_000, window_us: 60_000_000 });
    }
}
