//! Limits before and after identity (API.md, "Limits before identity"):
//!
//! - a budget of **failed authentications per client address** (missing,
//!   unknown, revoked or expired keys, bad webhook signatures): once it is
//!   spent, the address's requests are refused `429` before any key lookup,
//!   so guessing keys costs no database query. A request with a valid key
//!   never spends it;
//! - a budget of **requests per API key** (`RATE_LIMIT_PER_KEY`), after
//!   authentication;
//! - a short **negative cache** of bad keys (the SHA-256 of secrets that
//!   failed), so a bad key sent again costs no query either (it is still a
//!   failed authentication and spends the address's budget).
//!
//! The budgets are per process for now. A later issue keeps them in Redis
//! (one GCRA script shared by every replica) with these as the fallback
//! while Redis is away, which is why callers see them only through the
//! [`FailureBudget`] and [`KeyBudget`] traits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shared::config::RateLimit;
use shared::ids::ApiKeyId;

use crate::error::ApiError;

/// Failed authentications per client address.
///
/// Checking a budget and spending it later races: eight requests checked
/// at once all pass, all look their key up, and only then spend (measured:
/// 66 lookups where the budget allowed 33). So the budget also counts the
/// authentications in flight: once an address has failed lately, a new one
/// is admitted only while its failures and those in flight together fit
/// the budget. An address that has not failed lately is admitted whatever
/// it has in flight, so valid keys are never held back by each other.
pub trait FailureBudget: Send + Sync {
    /// Admits an authentication about to be tried, or `Err(wait)` when the
    /// address is over its budget (refused before any lookup).
    fn admit(&self, addr: IpAddr) -> BoxFuture<'_, Result<(), Duration>>;

    /// Ends an admitted authentication; `failed` spends one unit. It must
    /// take effect even when the returned future is dropped unpolled (a
    /// dropped [`Attempt`] calls it so): an implementation over the network
    /// spawns its work.
    fn settle(&self, addr: IpAddr, failed: bool) -> BoxFuture<'_, ()>;
}

/// Requests per API key.
pub trait KeyBudget: Send + Sync {
    /// Takes one request from the key's budget; `Err(wait)` when it is spent.
    fn take(&self, key: ApiKeyId) -> BoxFuture<'_, Result<(), Duration>>;
}

/// What the api holds: both budgets and the negative cache.
pub struct Limits {
    pub failures: Arc<dyn FailureBudget>,
    pub keys: Arc<dyn KeyBudget>,
    pub bad_keys: BadKeys,
}

/// An authentication admitted by [`Limits::admit`]: [`failed`](Self::failed)
/// or [`passed`](Self::passed) ends it; dropped without either (the client
/// went away mid-lookup, Postgres was unreachable) it ends as not failed,
/// so nothing stays in flight for ever.
pub struct Attempt {
    budget: Arc<dyn FailureBudget>,
    addr: IpAddr,
    settled: bool,
}

impl Attempt {
    /// The key (or signature) was bad: one unit of the address's budget is
    /// spent (`kind`: `key` or `webhook`).
    pub async fn failed(mut self, kind: &'static str) {
        self.settled = true;
        tracing::debug!(addr = %self.addr, kind, "failed authentication");
        metrics::counter!("kobatela_auth_failures_total", "kind" => kind).increment(1);
        self.budget.settle(self.addr, true).await;
    }

    /// The key (or signature) was valid: nothing is spent.
    pub async fn passed(mut self) {
        self.settled = true;
        self.budget.settle(self.addr, false).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            drop(self.budget.settle(self.addr, false));
        }
    }
}

impl Limits {
    /// The in-process budgets, pruned in the background while they live.
    pub fn local(failures: RateLimit, per_key: RateLimit) -> Self {
        let local_failures = Arc::new(LocalFailures::new(failures));
        let local_keys = Arc::new(LocalKeys::new(per_key));
        prune_in_background(Arc::downgrade(&local_failures), Arc::downgrade(&local_keys));
        Self { failures: local_failures, keys: local_keys, bad_keys: BadKeys::new(BAD_KEY_TTL, BAD_KEYS_MAX) }
    }

    /// Before anything looks a key (or a signature) up: refuses an address
    /// over its budget of failed authentications, else admits the attempt.
    pub async fn admit(&self, addr: IpAddr) -> Result<Attempt, ApiError> {
        match self.failures.admit(addr).await {
            Ok(()) => Ok(Attempt { budget: self.failures.clone(), addr, settled: false }),
            Err(wait) => {
                // One line per refused request would be the attacker's to
                // write (97,282 of them in issue #15): debug only; the warn is
                // logged once, when the address starts being throttled.
                tracing::debug!(%addr, wait_ms = wait.as_millis() as u64, "throttled: too many failed authentications");
                metrics::counter!("kobatela_auth_throttled_total").increment(1);
                Err(ApiError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil() as u64,
                    detail: "too many failed authentications from this address",
                })
            }
        }
    }
}

/// How long a bad key is remembered: a few seconds, so an inactive owner
/// made active again (the only way a refused secret can come to work)
/// waits at most that long.
pub const BAD_KEY_TTL: Duration = Duration::from_secs(5);

/// At most this many bad keys are remembered (about 1 MB).
pub const BAD_KEYS_MAX: usize = 10_000;

/// Addresses (and keys) whose budgets are tracked at most, beyond which the
/// tables are pruned at once rather than on the next round.
const TRACKED_MAX: usize = 100_000;

/// The address table is split in this many locks, so that concurrent
/// requests from different addresses seldom wait for each other.
const SHARDS: usize = 16;

/// How often the tables drop what they no longer need.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// An address not refused again for this long has ended its episode: the
/// next refusal is logged as new.
const EPISODE_QUIET: Duration = Duration::from_secs(60);

/// The address a budget belongs to: IPv4 as is (an IPv4-mapped IPv6
/// address too), IPv6 by its /64, which one host usually holds whole and
/// can walk through at will.
pub fn budget_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn quota(rate: RateLimit) -> Quota {
    // Bursts of up to N: a fresh key may use its whole allowance at once.
    match rate {
        RateLimit::PerSecond(n) => Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)),
        RateLimit::PerMinute(n) => Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)),
    }
}

fn describe(rate: RateLimit) -> String {
    match rate {
        RateLimit::PerSecond(n) => format!("{n}/s"),
        RateLimit::PerMinute(n) => format!("{n}/m"),
    }
}

/// `(N, window)` of a rate: N per second or per minute.
fn per_window(rate: RateLimit) -> (u32, Duration) {
    match rate {
        RateLimit::PerSecond(n) => (n.max(1), Duration::from_secs(1)),
        RateLimit::PerMinute(n) => (n.max(1), Duration::from_secs(60)),
    }
}

/// The in-process failure budget: a GCRA of our own per address (the
/// algorithm governor uses; governor can neither look at a budget without
/// spending it nor count what is in flight). N per window, bursts of N:
/// each failure pushes the address's theoretical arrival time (`tat`) one
/// emission interval (window / N) later, and a failure fits while `tat`
/// stays within one window of now. An address in debt (`tat` ahead of now)
/// is admitted while its debt plus one interval per authentication in
/// flight still leaves room for one more, so its lookups can never outrun
/// the budget; one without debt is always admitted (its in-flight count
/// only starts to matter once it fails, and then it is counted in full).
pub struct LocalFailures {
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    interval: Duration,
    window: Duration,
    budget: String,
}

struct Entry {
    tat: Instant,
    in_flight: u32,
    episode: Option<Episode>,
}

/// A throttled address: refused since `since`, `refused` times so far.
struct Episode {
    since: Instant,
    last_refused: Instant,
    refused: u64,
}

impl LocalFailures {
    pub fn new(rate: RateLimit) -> Self {
        let (n, window) = per_window(rate);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            interval: window / n,
            window,
            budget: describe(rate),
        }
    }

    fn shard(&self, key: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(key);
        let shard = &self.shards[(hash as usize) % self.shards.len()];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit_now(&self, addr: IpAddr) -> Result<(), Duration> {
        let key = budget_key(addr);
        let now = Instant::now();
        let mut shard = self.shard(&key);
        if shard.len() >= TRACKED_MAX / SHARDS && !shard.contains_key(&key) {
            self.prune_shard(&mut shard, now);
            // Still full of addresses in debt: one makes room (it gets a
            // fresh budget; memory stays bounded whatever the attacker owns).
            if shard.len() >= TRACKED_MAX / SHARDS
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        let entry = shard.entry(key).or_insert(Entry { tat: now, in_flight: 0, episode: None });
        if entry.tat <= now {
            entry.in_flight += 1;
            return Ok(());
        }
        // In debt: its failures, what it has in flight, and this one must fit.
        let needed = entry.tat + self.interval * (entry.in_flight + 1);
        if needed <= now + self.window {
            entry.in_flight += 1;
            return Ok(());
        }
        match &mut entry.episode {
            Some(episode) => {
                episode.refused += 1;
                episode.last_refused = now;
            }
            None => {
                tracing::warn!(
                    addr = %key,
                    budget = %self.budget,
                    "address throttled: its failed authentications are over AUTH_FAILURES_PER_ADDR; its requests get 429 before any key lookup"
                );
                entry.episode = Some(Episode { since: now, last_refused: now, refused: 1 });
            }
        }
        Err(needed - now - self.window)
    }

    fn settle_now(&self, addr: IpAddr, failed: bool) {
        let key = budget_key(addr);
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let entry = shard.entry(key).or_insert(Entry { tat: now, in_flight: 1, episode: None });
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if failed {
            entry.tat = entry.tat.max(now) + self.interval;
        }
    }

    /// Drops the addresses whose budget is whole again, with nothing in
    /// flight and whose episode (if any) ended, logging how each went.
    fn prune_shard(&self, shard: &mut HashMap<IpAddr, Entry>, now: Instant) {
        shard.retain(|addr, entry| {
            if let Some(episode) = &entry.episode
                && episode.last_refused + EPISODE_QUIET <= now
            {
                tracing::info!(
                    addr = %addr,
                    refused = episode.refused,
                    lasted_s = episode.last_refused.saturating_duration_since(episode.since).as_secs(),
                    "address no longer throttled"
                );
                entry.episode = None;
            }
            entry.tat > now || entry.in_flight > 0 || entry.episode.is_some()
        });
    }

    fn prune(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            self.prune_shard(&mut shard, now);
            shard.shrink_to_fit();
        }
    }

    /// Addresses tracked now (in debt, in flight, or throttled lately).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

impl FailureBudget for LocalFailures {
    fn admit(&self, addr: IpAddr) -> BoxFuture<'_, Result<(), Duration>> {
        let admitted = self.admit_now(addr);
        Box::pin(async move { admitted })
    }

    fn settle(&self, addr: IpAddr, failed: bool) -> BoxFuture<'_, ()> {
        // Done before the future is returned: a dropped future still counts.
        self.settle_now(addr, failed);
        Box::pin(async {})
    }
}

/// The in-process per-key budget: governor's GCRA, spent by every request
/// (so no peek is needed).
pub struct LocalKeys {
    limiter: DefaultKeyedRateLimiter<ApiKeyId>,
    clock: DefaultClock,
}

impl LocalKeys {
    pub fn new(rate: RateLimit) -> Self {
        Self { limiter: RateLimiter::keyed(quota(rate)), clock: DefaultClock::default() }
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

impl KeyBudget for LocalKeys {
    fn take(&self, key: ApiKeyId) -> BoxFuture<'_, Result<(), Duration>> {
        let taken = self.limiter.check_key(&key).map(|_| ()).map_err(|nu| nu.wait_time_from(self.clock.now()));
        Box::pin(async move { taken })
    }
}

/// Prunes both tables every [`PRUNE_EVERY`] while they live, so that many
/// addresses (or keys) seen once cannot grow them for ever.
fn prune_in_background(failures: Weak<LocalFailures>, keys: Weak<LocalKeys>) {
    // Outside a runtime (a unit test) nothing prunes; the tables still
    // prune themselves past `TRACKED_MAX`.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(PRUNE_EVERY).await;
            let (Some(failures), Some(keys)) = (failures.upgrade(), keys.upgrade()) else { return };
            failures.prune();
            keys.prune();
        }
    });
}

/// Bad keys seen lately: the SHA-256 of each presented secret that was
/// unknown, revoked, expired or whose owner is inactive, for a few seconds.
pub struct BadKeys {
    ttl: Duration,
    max: usize,
    seen: Mutex<HashMap<[u8; 32], Instant>>,
}

impl BadKeys {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max: max.max(1), seen: Mutex::new(HashMap::new()) }
    }

    /// True when this key failed less than the lifetime ago.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(hash).is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn insert(&self, hash: [u8; 32]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.max && !seen.contains_key(&hash) {
            let ttl = self.ttl;
            seen.retain(|_, at| at.elapsed() < ttl);
            // Still full of live entries: one makes room (any: they all
            // expire within seconds).
            if seen.len() >= self.max
                && let Some(victim) = seen.keys().next().copied()
            {
                seen.remove(&victim);
            }
        }
        seen.insert(hash, Instant::now());
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    /// One authentication tried and settled.
    fn attempt(budget: &LocalFailures, addr: IpAddr, failed: bool) -> Result<(), Duration> {
        budget.admit_now(addr)?;
        budget.settle_now(addr, failed);
        Ok(())
    }

    #[test]
    fn an_address_is_refused_once_its_failures_spend_the_burst_and_only_then() {
        let budget = LocalFailures::new(RateLimit::PerMinute(3));
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(attempt(&budget, a, true), Ok(()), "within the burst");
        }
        let wait = budget.admit_now(a).expect_err("past the budget");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(attempt(&budget, ip("203.0.113.8"), true), Ok(()), "another address keeps its budget");
    }

    #[test]
    fn valid_keys_spend_nothing_and_are_never_held_back_by_each_other() {
        let budget = LocalFailures::new(RateLimit::PerMinute(2));
        let a = ip("203.0.113.9");
        // A hundred valid keys looked up at once from an address that has
        // not failed: all admitted.
        for _ in 0..100 {
            assert_eq!(budget.admit_now(a), Ok(()));
        }
        for _ in 0..100 {
            budget.settle_now(a, false);
        }
        // The whole budget is still there for failures.
        assert_eq!(attempt(&budget, a, true), Ok(()));
        assert_eq!(attempt(&budget, a, true), Ok(()));
        assert!(budget.admit_now(a).is_err());
    }

    #[test]
    fn once_an_address_fails_what_it_has_in_flight_counts_so_lookups_cannot_outrun_the_budget() {
        let budget = LocalFailures::new(RateLimit::PerMinute(5));
        let a = ip("198.51.100.1");
        assert_eq!(attempt(&budget, a, true), Ok(()));
        // Eight lookups start before any of them ends: four fit beside the failure.
        let admitted = (0..8).filter(|_| budget.admit_now(a).is_ok()).count();
        assert_eq!(admitted, 4);
        for _ in 0..4 {
            budget.settle_now(a, true);
        }
        assert!(budget.admit_now(a).is_err(), "five failures: the budget");
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(budget_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_key(ip("2001:db8:1:2:ffff:1:2:3")), ip("2001:db8:1:2::"));
        assert_eq!(budget_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        let budget = LocalFailures::new(RateLimit::PerMinute(1));
        assert_eq!(attempt(&budget, ip("2001:db8::1"), true), Ok(()));
        assert!(budget.admit_now(ip("2001:db8::3")).is_err(), "one /64, one budget");
    }

    #[test]
    fn pruning_forgets_whole_budgets_and_ended_episodes() {
        let budget = LocalFailures::new(RateLimit::PerSecond(1000));
        for i in 0..200u8 {
            let _ = attempt(&budget, IpAddr::from([10, 0, 0, i]), true);
        }
        assert_eq!(budget.tracked(), 200);
        std::thread::sleep(Duration::from_millis(20));
        budget.prune();
        assert_eq!(budget.tracked(), 0, "every budget is whole again");
    }

    #[test]
    fn a_bad_key_is_remembered_for_its_lifetime_within_a_bounded_table() {
        let cache = BadKeys::new(Duration::from_millis(50), 3);
        cache.insert([1; 32]);
        assert!(cache.contains(&[1; 32]));
        assert!(!cache.contains(&[2; 32]));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(&[1; 32]), "forgotten after its lifetime");
        for i in 0..10u8 {
            cache.insert([i; 32]);
        }
        assert!(cache.len() <= 3, "bounded: {}", cache.len());
        assert!(cache.contains(&[9; 32]), "the newest is kept");
    }

    #[test]
    fn a_key_budget_refuses_past_its_burst() {
        let keys = LocalKeys::new(RateLimit::PerSecond(2));
        let k = ApiKeyId::new();
        assert!(keys.limiter.check_key(&k).is_ok());
        assert!(keys.limiter.check_key(&k).is_ok());
        assert!(keys.limiter.check_key(&k).is_err());
    }
}
