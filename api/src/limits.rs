//! Limits before and after identity (API.md, "Limits before identity"):
//!
//! - a budget of **failed authentications per client address** (missing,
//!   unknown, revoked or expired keys, bad webhook signatures): once it is
//!   spent, the address's requests are refused `429` before any key lookup,
//!   so guessing keys costs no database query. A request with a valid key
//!   never spends it;
//! - a budget of **requests per API key** (`RATE_LIMIT_PER_KEY`), by the
//!   SHA-256 of the presented secret, so it is checked with the address's
//!   before the lookup, in the same round trip;
//! - a short **negative cache** of bad keys, so a bad key sent again costs
//!   no query either (it is still a failed authentication and spends the
//!   address's budget).
//!
//! Both budgets are shared by every api replica: they live in Redis
//! (`shared::ratelimit`, one Lua script, one round trip on the valid-key
//! path). While Redis cannot be reached the process falls back to budgets
//! of its own ([`LocalFailures`], [`LocalKeys`]), says so once in its log,
//! counts every request it limited on its own
//! (`kobatela_rate_limit_fallback_total`) and shows it in
//! `kobatela_rate_limits_shared` (0); it tries Redis again a second later.
//! A Redis outage must never take the api down.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shared::config::RateLimit;
use shared::ratelimit::{Admission, SharedBudgets};

use crate::error::ApiError;

/// A key's identity for its budget: the SHA-256 of the presented secret.
pub type KeyHash = [u8; 32];

/// How long one call to the shared budgets may take before this request
/// is limited locally instead.
const SHARED_TIMEOUT: Duration = Duration::from_millis(300);

/// After the shared budgets failed, how long the process keeps to its own
/// before it tries Redis again (so an outage costs one slow call a second,
/// not one per request).
const RETRY_SHARED_AFTER: Duration = Duration::from_secs(1);

/// Both budgets and the negative cache.
#[derive(Clone)]
pub struct Limits(Arc<Inner>);

pub struct Inner {
    shared: Option<SharedBudgets>,
    failures: Arc<LocalFailures>,
    keys: Arc<LocalKeys>,
    pub bad_keys: BadKeys,
    /// While set, the shared budgets are skipped until this instant.
    shared_down_until: Mutex<Option<Instant>>,
    /// The process limits on its own now (logged on each change).
    falling_back: AtomicBool,
}

impl std::ops::Deref for Limits {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Where an admitted authentication was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Shared { reserved: bool },
    Local,
}

/// An authentication admitted by [`Limits::admit`]: [`failed`](Self::failed)
/// or [`passed`](Self::passed) ends it; dropped without either (the client
/// went away mid-lookup, Postgres was unreachable) it ends as not failed,
/// so nothing stays in flight for ever.
pub struct Attempt {
    limits: Limits,
    addr: IpAddr,
    counted: Counted,
    settled: bool,
}

impl Attempt {
    /// The key (or signature) was bad: one unit of the address's budget is
    /// spent (`kind`: `key` or `webhook`).
    pub async fn failed(mut self, kind: &'static str) {
        self.settled = true;
        tracing::debug!(addr = %self.addr, kind, "failed authentication");
        metrics::counter!("kobatela_auth_failures_total", "kind" => kind).increment(1);
        self.limits.settle(self.addr, self.counted, true);
    }

    /// The key (or signature) was valid: nothing is spent.
    pub async fn passed(mut self) {
        self.settled = true;
        self.limits.settle(self.addr, self.counted, false);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limits.settle(self.addr, self.counted, false);
        }
    }
}

impl Limits {
    /// The budgets: shared through Redis when `shared` is given, with the
    /// in-process ones as the fallback (pruned in the background).
    pub fn new(shared: Option<SharedBudgets>, failures: RateLimit, per_key: RateLimit) -> Self {
        let local_failures = Arc::new(LocalFailures::new(failures));
        let local_keys = Arc::new(LocalKeys::new(per_key));
        prune_in_background(Arc::downgrade(&local_failures), Arc::downgrade(&local_keys));
        metrics::gauge!("kobatela_rate_limits_shared").set(if shared.is_some() { 1.0 } else { 0.0 });
        Limits(Arc::new(Inner {
            shared,
            failures: local_failures,
            keys: local_keys,
            bad_keys: BadKeys::new(BAD_KEY_TTL, BAD_KEYS_MAX),
            shared_down_until: Mutex::new(None),
            falling_back: AtomicBool::new(false),
        }))
    }

    /// The in-process budgets only (tests, and a process without Redis).
    pub fn local(failures: RateLimit, per_key: RateLimit) -> Self {
        Self::new(None, failures, per_key)
    }

    /// Before anything looks a key (or a signature) up: refuses an address
    /// over its budget of failed authentications, then a presented key over
    /// its budget of requests; else admits the attempt.
    pub async fn admit(&self, addr: IpAddr, key: Option<&KeyHash>) -> Result<Attempt, ApiError> {
        let counted = match self.admit_shared(addr, key).await {
            Some(Admission::Admitted { reserved }) => Counted::Shared { reserved },
            Some(Admission::AddressOver(wait)) => return Err(throttled(addr, wait)),
            Some(Admission::KeyOver(wait)) => return Err(key_over(wait)),
            None => {
                metrics::counter!("kobatela_rate_limit_fallback_total").increment(1);
                self.failures.admit_now(addr).map_err(|wait| throttled(addr, wait))?;
                if let Some(key) = key
                    && let Err(wait) = self.keys.take(key)
                {
                    self.failures.settle_now(addr, false);
                    return Err(key_over(wait));
                }
                Counted::Local
            }
        };
        Ok(Attempt { limits: self.clone(), addr, counted, settled: false })
    }

    /// The shared budgets' answer, or `None` when they cannot be asked now
    /// (no Redis configured, or it failed within the last second).
    async fn admit_shared(&self, addr: IpAddr, key: Option<&KeyHash>) -> Option<Admission> {
        let shared = self.shared.as_ref()?;
        {
            let down = self.shared_down_until.lock().unwrap_or_else(|e| e.into_inner());
            if down.is_some_and(|until| Instant::now() < until) {
                return None;
            }
        }
        let asked = tokio::time::timeout(SHARED_TIMEOUT, shared.admit(&budget_key(addr).to_string(), key)).await;
        match asked {
            Ok(Ok(admission)) => {
                if self.falling_back.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limits are shared again: Redis answers");
                    metrics::gauge!("kobatela_rate_limits_shared").set(1.0);
                }
                Some(admission)
            }
            Ok(Err(e)) => self.shared_failed(&e.to_string()),
            Err(_) => self.shared_failed("no answer within 300 ms"),
        }
    }

    fn shared_failed(&self, why: &str) -> Option<Admission> {
        *self.shared_down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + RETRY_SHARED_AFTER);
        if !self.falling_back.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "rate limits cannot reach Redis: this api process keeps budgets of its own until it can (each replica then allows a full budget)"
            );
            metrics::gauge!("kobatela_rate_limits_shared").set(0.0);
        }
        None
    }

    /// Ends an attempt where it was counted. The shared budget is told in
    /// the background (a valid key with nothing reserved costs nothing); if
    /// Redis fails then, a failure is spent locally so it still counts here.
    fn settle(&self, addr: IpAddr, counted: Counted, failed: bool) {
        match counted {
            Counted::Local => self.failures.settle_now(addr, failed),
            Counted::Shared { reserved } => {
                if failed == reserved {
                    // Failed and reserved: spent already. Passed, nothing reserved: nothing to do.
                    return;
                }
                let (limits, key) = (self.clone(), budget_key(addr).to_string());
                let spawned = tokio::runtime::Handle::try_current().map(|rt| {
                    rt.spawn(async move {
                        let Some(shared) = limits.shared.as_ref() else { return };
                        let told = match failed {
                            true => shared.failed(&key, reserved).await,
                            false => shared.passed(&key, reserved).await,
                        };
                        if told.is_err() && failed {
                            limits.failures.admit_now(addr).ok();
                            limits.failures.settle_now(addr, true);
                        }
                    })
                });
                if spawned.is_err() && failed {
                    self.failures.settle_now(addr, true);
                }
            }
        }
    }
}

fn throttled(addr: IpAddr, wait: Duration) -> ApiError {
    // One line per refused request would be the attacker's to write (97,282
    // of them in issue #15): debug only; the warn is logged once, when the
    // address starts being throttled (`LocalFailures`, or here for the
    // shared budget: its first refusal in a quiet minute).
    tracing::debug!(%addr, wait_ms = wait.as_millis() as u64, "throttled: too many failed authentications");
    metrics::counter!("kobatela_auth_throttled_total").increment(1);
    episodes().note(budget_key(addr));
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil() as u64,
        detail: "too many failed authentications from this address",
    }
}

fn key_over(wait: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil() as u64,
        detail: "too many requests for this API key",
    }
}

/// Throttled addresses seen by this process, for one warn per episode
/// whichever budget refused them.
struct Episodes(Mutex<HashMap<IpAddr, Instant>>);

fn episodes() -> &'static Episodes {
    static EPISODES: std::sync::OnceLock<Episodes> = std::sync::OnceLock::new();
    EPISODES.get_or_init(|| Episodes(Mutex::new(HashMap::new())))
}

impl Episodes {
    fn note(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > TRACKED_MAX {
            seen.retain(|_, last| now.duration_since(*last) < EPISODE_QUIET);
        }
        let new = seen.insert(addr, now).is_none_or(|last| now.duration_since(last) >= EPISODE_QUIET);
        if new {
            tracing::warn!(
                addr = %addr,
                "address throttled: its failed authentications are over AUTH_FAILURES_PER_ADDR; its requests get 429 before any key lookup"
            );
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
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), interval: window / n, window }
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
            None => entry.episode = Some(Episode { since: now, last_refused: now, refused: 1 }),
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

/// The in-process per-key budget: governor's GCRA, spent by every request
/// (so no peek is needed).
pub struct LocalKeys {
    limiter: DefaultKeyedRateLimiter<KeyHash>,
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

impl LocalKeys {
    /// Takes one request from the key's budget; `Err(wait)` when it is spent.
    pub fn take(&self, key: &KeyHash) -> Result<(), Duration> {
        self.limiter.check_key(key).map(|_| ()).map_err(|nu| nu.wait_time_from(self.clock.now()))
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
        let k = [7u8; 32];
        assert!(keys.take(&k).is_ok());
        assert!(keys.take(&k).is_ok());
        assert!(keys.take(&k).is_err());
        assert!(keys.take(&[8u8; 32]).is_ok(), "another key keeps its budget");
    }
}
