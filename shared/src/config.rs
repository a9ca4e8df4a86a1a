//! Configuration: one struct, defaults first, then the environment, checked
//! at boot with the offending variable named. Secrets are never printed
//! (`Debug` redacts them) and nothing depends on the working directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::money::Currencies;

#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub redis_url: String,
    /// Prefix of every Redis key we use, so several deployments or test runs
    /// can share one Redis.
    pub queue_prefix: String,
    pub bind_addr: SocketAddr,
    pub psp_webhook_secrets: Vec<String>,
    pub psp_base_url: String,
    pub psp_api_key: Option<String>,
    pub bootstrap_admin_key: Option<String>,
    pub currencies: Currencies,
    pub cors_origins: Vec<String>,
    /// Requests allowed per API key (`RATE_LIMIT_PER_KEY`, `N/s` or `N/m`).
    pub rate_limit: RateLimit,
    /// Failed authentications a client address may make before its
    /// requests are refused ahead of any key lookup (`AUTH_FAILURES_PER_ADDR`).
    pub auth_failures_per_addr: RateLimit,
    /// Peers whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub worker_concurrency: usize,
    pub worker_name: String,
    pub saka_timezone: chrono_tz::Tz,
    pub log_json: bool,
    pub psp_sim_port: u16,
    pub psp_sim_webhook_url: String,
    pub psp_sim_fail_amounts: Vec<String>,
    /// A `queued` job no worker has started after this long is pushed again.
    pub job_relay_after: Duration,
    /// A running job's lease; past it, the relay hands the job to another worker.
    pub job_timeout: Duration,
    /// Attempts on infrastructure errors before a job is `dead`.
    pub job_max_attempts: i32,
    /// How often the relay runs (seconds, 1..=59; 0 turns it off, for tests
    /// of the transport alone).
    pub relay_every_secs: u32,
    /// `MAXLEN ~` of each kind's stream: the backlog Redis keeps at most.
    pub stream_maxlen: u64,
    /// How long one `XREADGROUP … BLOCK` waits; a consumer that has not
    /// completed a poll for three of these is unhealthy.
    pub stream_block: Duration,
    /// Where the worker serves `/health` and `/metrics` (port 0: a free one,
    /// logged at start).
    pub worker_metrics_addr: SocketAddr,
    /// The api's ops listener (`/metrics`), apart from the public port.
    pub metrics_addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub proof_max_bytes: usize,
    /// Where proof objects live (`STORAGE_URL`, or `STORAGE_DIR` as a
    /// shorthand for `file://`).
    pub storage: StorageUrl,
    pub migrate_on_start: bool,
    pub db_pool_size: u32,
    /// Cron expression (with seconds) of the `mandate_expiry` job.
    pub mandate_expiry_cron: String,
    /// Cron expression (with seconds) of the `escrow_deadlines` job.
    pub escrow_deadlines_cron: String,
    /// Cron expression (with seconds) of the invariants run (hourly).
    pub invariants_cron: String,
    /// Cron expression (with seconds) of the retention job (hourly).
    pub retention_cron: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("queue_prefix", &self.queue_prefix)
            .field("bind_addr", &self.bind_addr)
            .field("psp_webhook_secrets", &format!("<{} secrets>", self.psp_webhook_secrets.len()))
            .field("psp_base_url", &self.psp_base_url)
            .field("bootstrap_admin_key", &self.bootstrap_admin_key.as_ref().map(|_| "<set>"))
            .field("currencies", &self.currencies)
            .field("cors_origins", &self.cors_origins)
            .field("rate_limit", &self.rate_limit)
            .field("auth_failures_per_addr", &self.auth_failures_per_addr)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("worker_concurrency", &self.worker_concurrency)
            .field("worker_name", &self.worker_name)
            .field("saka_timezone", &self.saka_timezone)
            .finish_non_exhaustive()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { key, message: message.into() }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let parse_num = |key: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| err(key, format!("`{v}` is not a whole number"))),
            }
        };
        let port = parse_num("PORT", 8080)?;
        let port = u16::try_from(port).map_err(|_| err("PORT", "out of range"))?;
        let bind_addr = match get("BIND_ADDR") {
            Some(v) => v.parse().map_err(|_| err("BIND_ADDR", format!("`{v}` is not host:port")))?,
            None => SocketAddr::from(([0, 0, 0, 0], port)),
        };
        let list = |key: &str| -> Vec<String> {
            get(key)
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        };
        let currencies = match get("CURRENCIES") {
            Some(v) => Currencies::parse(&v).map_err(|m| err("CURRENCIES", m))?,
            None => Currencies::default(),
        };
        let rate_limit = match get("RATE_LIMIT_PER_KEY") {
            None => RateLimit::PerSecond(50),
            Some(v) => parse_rate(&v).ok_or_else(|| err("RATE_LIMIT_PER_KEY", format!("`{v}` is not N/s or N/m")))?,
        };
        let auth_failures_per_addr = match get("AUTH_FAILURES_PER_ADDR") {
            None => RateLimit::PerSecond(20),
            Some(v) => {
                parse_rate(&v).ok_or_else(|| err("AUTH_FAILURES_PER_ADDR", format!("`{v}` is not N/s or N/m")))?
            }
        };
        let trusted_proxies = list("TRUSTED_PROXIES")
            .iter()
            .map(|v| parse_net(v).ok_or_else(|| err("TRUSTED_PROXIES", format!("`{v}` is not an IP address or CIDR"))))
            .collect::<Result<Vec<_>, _>>()?;
        let saka_timezone = match get("SAKA_TIMEZONE") {
            None => chrono_tz::UTC,
            Some(v) => v.parse().map_err(|_| err("SAKA_TIMEZONE", format!("`{v}` is not an IANA time zone")))?,
        };
        let log_json = match get("LOG_FORMAT").as_deref() {
            None | Some("json") => true,
            Some("pretty") => false,
            Some(other) => return Err(err("LOG_FORMAT", format!("`{other}` is not json or pretty"))),
        };
        let worker_name = get("WORKER_NAME").unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        });
        let psp_webhook_secrets = list("PSP_WEBHOOK_SECRETS");
        if psp_webhook_secrets.iter().any(|s| s.len() < 16) {
            return Err(err("PSP_WEBHOOK_SECRETS", "every secret must be at least 16 characters"));
        }
        let bootstrap_admin_key = get("BOOTSTRAP_ADMIN_KEY");
        if bootstrap_admin_key.as_ref().is_some_and(|k| k.len() < 24) {
            return Err(err("BOOTSTRAP_ADMIN_KEY", "must be at least 24 characters"));
        }
        let relay_every_secs = parse_num("RELAY_EVERY_SECS", 2)?;
        if relay_every_secs > 59 {
            return Err(err("RELAY_EVERY_SECS", "must be from 1 to 59 (0 turns the relay off)"));
        }
        let stream_maxlen = parse_num("STREAM_MAXLEN", 1_000_000)?;
        if stream_maxlen < 1_000 {
            return Err(err("STREAM_MAXLEN", "must be at least 1000"));
        }
        let stream_block_ms = parse_num("STREAM_BLOCK_MS", 2_000)?;
        if !(100..=30_000).contains(&stream_block_ms) {
            return Err(err("STREAM_BLOCK_MS", "must be from 100 to 30000"));
        }
        let worker_metrics_addr = match get("WORKER_METRICS_ADDR") {
            Some(v) => v.parse().map_err(|_| err("WORKER_METRICS_ADDR", format!("`{v}` is not host:port")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let metrics_addr = match get("METRICS_ADDR") {
            Some(v) => v.parse().map_err(|_| err("METRICS_ADDR", format!("`{v}` is not host:port")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 9100)),
        };
        if metrics_addr == bind_addr && metrics_addr.port() != 0 {
            return Err(err("METRICS_ADDR", "must differ from the public address (BIND_ADDR / PORT)"));
        }
        let worker_concurrency = parse_num("WORKER_CONCURRENCY", 8)?;
        if worker_concurrency == 0 {
            return Err(err("WORKER_CONCURRENCY", "must be at least 1"));
        }
        let job_max_attempts = parse_num("JOB_MAX_ATTEMPTS", 5)?;
        Ok(Self {
            database_url: get("DATABASE_URL").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/kobatela".into()),
            redis_url: get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            queue_prefix: get("QUEUE_PREFIX").unwrap_or_else(|| "kobatela".into()),
            bind_addr,
            psp_webhook_secrets,
            psp_base_url: get("PSP_BASE_URL").unwrap_or_else(|| "http://127.0.0.1:8090".into()),
            psp_api_key: get("PSP_API_KEY"),
            bootstrap_admin_key,
            currencies,
            cors_origins: list("CORS_ORIGINS"),
            rate_limit,
            auth_failures_per_addr,
            trusted_proxies,
            worker_concurrency: worker_concurrency as usize,
            worker_name,
            saka_timezone,
            log_json,
            psp_sim_port: u16::try_from(parse_num("PSP_SIM_PORT", 8090)?)
                .map_err(|_| err("PSP_SIM_PORT", "out of range"))?,
            psp_sim_webhook_url: get("PSP_SIM_WEBHOOK_URL")
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}/psp/webhook")),
            psp_sim_fail_amounts: list("PSP_SIM_FAIL_AMOUNTS"),
            job_relay_after: Duration::from_secs(parse_num("JOB_RELAY_AFTER_SECS", 10)?),
            job_timeout: Duration::from_secs(parse_num("JOB_TIMEOUT_SECS", 30)?.max(1)),
            job_max_attempts: i32::try_from(job_max_attempts.clamp(1, 100)).unwrap_or(5),
            relay_every_secs: relay_every_secs as u32,
            stream_maxlen,
            stream_block: Duration::from_millis(stream_block_ms),
            worker_metrics_addr,
            metrics_addr,
            body_limit_bytes: parse_num("BODY_LIMIT_BYTES", 64 * 1024)? as usize,
            proof_max_bytes: parse_num("PROOF_MAX_BYTES", 10 * 1024 * 1024)? as usize,
            storage: storage_url(get("STORAGE_URL"), get("STORAGE_DIR"))?,
            migrate_on_start: matches!(get("MIGRATE_ON_START").as_deref(), Some("1" | "true" | "yes")),
            db_pool_size: u32::try_from(parse_num("DB_POOL_SIZE", 16)?.clamp(1, 200)).unwrap_or(16),
            mandate_expiry_cron: get("MANDATE_EXPIRY_CRON").unwrap_or_else(|| "0 * * * * *".into()),
            escrow_deadlines_cron: get("ESCROW_DEADLINES_CRON").unwrap_or_else(|| "15 * * * * *".into()),
            invariants_cron: get("INVARIANTS_CRON").unwrap_or_else(|| "0 41 * * * *".into()),
            retention_cron: get("RETENTION_CRON").unwrap_or_else(|| "0 17 * * * *".into()),
        })
    }

    /// The API refuses to start without a webhook secret (no unsigned PSP calls).
    pub fn require_webhook_secrets(&self) -> Result<(), ConfigError> {
        if self.psp_webhook_secrets.is_empty() {
            return Err(err("PSP_WEBHOOK_SECRETS", "required: comma-separated secrets the PSP signs webhooks with"));
        }
        Ok(())
    }
}

/// The proof object store: `file:///abs/dir` (one host) or
/// `s3://bucket[/prefix]` (any S3-compatible store; endpoint, region and
/// credentials from the standard `AWS_*` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: Option<String> },
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::File(dir) => write!(f, "file://{}", dir.display()),
            StorageUrl::S3 { bucket, prefix: None } => write!(f, "s3://{bucket}"),
            StorageUrl::S3 { bucket, prefix: Some(p) } => write!(f, "s3://{bucket}/{p}"),
        }
    }
}

/// `STORAGE_URL`, else `STORAGE_DIR` (a local directory, made absolute
/// once here so nothing later depends on the working directory), else
/// `./data/proofs` (never a temporary directory that a reboot or a cleaner
/// may empty). Both at once would be ambiguous.
fn storage_url(url: Option<String>, dir: Option<String>) -> Result<StorageUrl, ConfigError> {
    let url = match (url, dir) {
        (Some(_), Some(_)) => return Err(err("STORAGE_URL", "set STORAGE_URL or STORAGE_DIR, not both")),
        (Some(url), None) => url,
        (None, dir) => {
            let dir = PathBuf::from(dir.unwrap_or_else(|| "./data/proofs".into()));
            let abs = std::path::absolute(&dir)
                .map_err(|e| err("STORAGE_DIR", format!("`{}` cannot be made absolute: {e}", dir.display())))?;
            return Ok(StorageUrl::File(abs));
        }
    };
    let bad = |why: &str| err("STORAGE_URL", format!("`{url}`: {why} (file:///abs/dir or s3://bucket[/prefix])"));
    if let Some(path) = url.strip_prefix("file://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(bad("a file:// URL takes an absolute path"));
        }
        return Ok(StorageUrl::File(path));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(bad("not a file:// or s3:// URL"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Err(bad("the bucket must be 3 to 63 lower-case letters, digits, dots or hyphens"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(bad("the prefix must be plain path segments"));
    }
    let prefix = (!prefix.is_empty()).then(|| prefix.to_string());
    Ok(StorageUrl::S3 { bucket: bucket.to_string(), prefix })
}

/// A per-key request rate: `N` per second or per minute, with bursts of up
/// to `N` (a fresh key may send its whole allowance at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    PerSecond(u32),
    PerMinute(u32),
}

fn parse_rate(text: &str) -> Option<RateLimit> {
    let (n, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    match unit.trim() {
        "s" | "sec" | "second" => Some(RateLimit::PerSecond(n)),
        // Per minute stays per minute: `10/m` is 10 a minute, not one a second.
        "m" | "min" | "minute" => Some(RateLimit::PerMinute(n)),
        _ => None,
    }
}

/// An address (`10.0.0.7`, `::1`: that host only) or a CIDR (`10.0.0.0/8`).
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_load() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.bind_addr.port(), 8080);
        assert_eq!(c.metrics_addr, SocketAddr::from(([127, 0, 0, 1], 9100)));
        assert_eq!(c.rate_limit, RateLimit::PerSecond(50));
        assert_eq!(c.auth_failures_per_addr, RateLimit::PerSecond(20));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.saka_timezone, chrono_tz::UTC);
        assert!(c.require_webhook_secrets().is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(load(&[("PORT", "x")]).err().map(|e| e.key), Some("PORT"));
        assert_eq!(load(&[("SAKA_TIMEZONE", "Mars/Base")]).err().map(|e| e.key), Some("SAKA_TIMEZONE"));
        assert_eq!(load(&[("RATE_LIMIT_PER_KEY", "fast")]).err().map(|e| e.key), Some("RATE_LIMIT_PER_KEY"));
        assert_eq!(load(&[("AUTH_FAILURES_PER_ADDR", "0/s")]).err().map(|e| e.key), Some("AUTH_FAILURES_PER_ADDR"));
        assert_eq!(load(&[("TRUSTED_PROXIES", "10.0.0.0/33")]).err().map(|e| e.key), Some("TRUSTED_PROXIES"));
        assert_eq!(load(&[("TRUSTED_PROXIES", "proxy.local")]).err().map(|e| e.key), Some("TRUSTED_PROXIES"));
        assert_eq!(load(&[("PSP_WEBHOOK_SECRETS", "short")]).err().map(|e| e.key), Some("PSP_WEBHOOK_SECRETS"));
        assert_eq!(load(&[("STREAM_MAXLEN", "10")]).err().map(|e| e.key), Some("STREAM_MAXLEN"));
        assert_eq!(load(&[("STREAM_BLOCK_MS", "0")]).err().map(|e| e.key), Some("STREAM_BLOCK_MS"));
        assert_eq!(load(&[("RELAY_EVERY_SECS", "60")]).err().map(|e| e.key), Some("RELAY_EVERY_SECS"));
        assert_eq!(load(&[("WORKER_METRICS_ADDR", "nowhere")]).err().map(|e| e.key), Some("WORKER_METRICS_ADDR"));
        assert_eq!(load(&[("METRICS_ADDR", "nowhere")]).err().map(|e| e.key), Some("METRICS_ADDR"));
        let same = [("BIND_ADDR", "127.0.0.1:9100"), ("METRICS_ADDR", "127.0.0.1:9100")];
        assert_eq!(load(&same).err().map(|e| e.key), Some("METRICS_ADDR"));
    }

    #[test]
    fn a_rate_per_minute_stays_per_minute() {
        let rate = |v: &str| load(&[("RATE_LIMIT_PER_KEY", v)]).map(|c| c.rate_limit).ok();
        assert_eq!(rate("10/m"), Some(RateLimit::PerMinute(10)));
        assert_eq!(rate("90/min"), Some(RateLimit::PerMinute(90)));
        assert_eq!(rate("50/s"), Some(RateLimit::PerSecond(50)));
        assert_eq!(rate("7"), Some(RateLimit::PerSecond(7)));
        assert_eq!(rate("0/m"), None);
        assert_eq!(rate("10/h"), None);
    }

    #[test]
    fn trusted_proxies_take_addresses_and_cidrs_and_failures_take_the_rate_syntax() {
        let c = load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1"), ("AUTH_FAILURES_PER_ADDR", "100/m")])
            .expect("valid");
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
        assert_eq!(c.auth_failures_per_addr, RateLimit::PerMinute(100));
    }

    #[test]
    fn the_storage_dir_is_absolute_and_by_default_not_temporary() {
        let dir = |pairs: &[(&str, &str)]| match load(pairs).expect("valid").storage {
            StorageUrl::File(dir) => dir,
            other => panic!("not a directory: {other}"),
        };
        let default = dir(&[]);
        assert!(default.is_absolute(), "{}", default.display());
        assert!(default.ends_with("data/proofs"), "{}", default.display());
        assert!(!default.starts_with(std::env::temp_dir()), "{}", default.display());
        let relative = dir(&[("STORAGE_DIR", "relative/proofs")]);
        assert_eq!(relative, std::env::current_dir().expect("cwd").join("relative/proofs"));
        assert_eq!(dir(&[("STORAGE_DIR", "/srv/proofs")]), PathBuf::from("/srv/proofs"));
        assert_eq!(dir(&[("STORAGE_URL", "file:///srv/proofs")]), PathBuf::from("/srv/proofs"));
    }

    #[test]
    fn a_storage_url_names_a_directory_or_a_bucket_and_its_prefix() {
        let url = |v: &str| load(&[("STORAGE_URL", v)]).map(|c| c.storage).map_err(|e| e.key);
        let s3 = |bucket: &str, prefix: Option<&str>| {
            Ok(StorageUrl::S3 { bucket: bucket.into(), prefix: prefix.map(str::to_string) })
        };
        assert_eq!(url("s3://proofs"), s3("proofs", None));
        assert_eq!(url("s3://proofs/"), s3("proofs", None));
        assert_eq!(url("s3://my.proofs-1/eu/prod/"), s3("my.proofs-1", Some("eu/prod")));
        for bad in ["s3://", "s3://UPPER", "s3://ab", "s3://b/../x", "s3://b/a//c", "file://relative", "http://x"] {
            assert_eq!(url(bad), Err("STORAGE_URL"), "{bad}");
        }
        let both = [("STORAGE_URL", "s3://proofs"), ("STORAGE_DIR", "/srv")];
        assert_eq!(load(&both).err().map(|e| e.key), Some("STORAGE_URL"));
        assert_eq!(url("s3://proofs/eu").map(|u| u.to_string()), Ok("s3://proofs/eu".to_string()));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = load(&[
            ("PSP_WEBHOOK_SECRETS", "supersecretvalue-1234"),
            ("BOOTSTRAP_ADMIN_KEY", "bootstrap-secret-value-123456"),
            ("DATABASE_URL", "postgres://u:pw@h/db"),
        ])
        .expect("valid");
        let text = format!("{c:?}");
        assert!(!text.contains("supersecretvalue"));
        assert!(!text.contains("bootstrap-secret"));
        assert!(!text.contains("pw@"));
    }
}
