//! Finding or starting the Postgres and Redis that `test` and `demo` use.
//!
//! For each service, in order: the URL in `DATABASE_URL` / `REDIS_URL` when
//! it is set and answers (Postgres' answer to an SSLRequest, a `PING`
//! answered `+PONG` for Redis); else the local default (127.0.0.1:5432 user
//! `postgres` with trust auth, 127.0.0.1:6379); else a private instance under
//! `target/kobatela-services/<pid>/` on a free port, stopped by
//! [`Services::stop`]. `KOBATELA_SERVICES=private` skips straight to private
//! instances.
//!
//! The Postgres URL handed out is the server's maintenance URL (database
//! `postgres`): the tools create their own databases on that server.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;

use crate::Layout;
use crate::procs::{self, Proc};

mod owned;
mod private;
mod probe;

pub use owned::Owned;
pub use private::Psql;
use private::{PostgresBins, PrivatePostgres, RunDir, find_redis_server, start_postgres, start_redis};
pub(crate) use probe::percent_decode;
use probe::{postgres_answers, redis_ping, tcp_answers};

pub const POSTGRES_MISSING: &str = "Postgres not found: install it with: sudo apt-get install -y postgresql";
pub const REDIS_MISSING: &str = "Redis not found: install it with: sudo apt-get install -y redis-server";
pub const PSQL_MISSING: &str = "psql not found: install it with: sudo apt-get install -y postgresql-client";

const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Private instances start with a clean slate per run, so durability buys
/// nothing; the headroom in connections is for parallel test databases.
const PRIVATE_POSTGRES_SETTINGS: &str =
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300";

/// Where a service came from.
#[derive(Clone, Debug)]
pub enum Origin {
    Env(&'static str),
    LocalDefault,
    Private(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::LocalDefault => write!(f, "local default"),
            Origin::Private(dir) => write!(f, "private instance under {}", dir.display()),
        }
    }
}

/// The Postgres server and Redis in use, and what we started to get them.
pub struct Services {
    /// The server's maintenance URL (database `postgres`).
    pub postgres: Url,
    pub postgres_origin: Origin,
    pub redis: Url,
    pub redis_origin: Origin,
    private_postgres: Option<PrivatePostgres>,
    private_redis: Option<Proc>,
}

enum Found {
    Use(Url, Origin),
    Start,
}

impl Services {
    /// Finds both services, starting private ones where needed. Every
    /// missing program is reported before anything is started.
    pub async fn ensure(layout: &Layout) -> Result<Self> {
        let postgres = find_postgres().await?;
        let redis = find_redis().await?;
        let postgres_bins = matches!(postgres, Found::Start).then(PostgresBins::find);
        let redis_bin = matches!(redis, Found::Start).then(find_redis_server);
        let missing: Vec<String> =
            [postgres_bins.as_ref().and_then(|r| r.as_ref().err()), redis_bin.as_ref().and_then(|r| r.as_ref().err())]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect();
        if !missing.is_empty() {
            bail!("{}", missing.join("\n"));
        }
        let postgres_bins = postgres_bins.transpose()?;
        let redis_bin = redis_bin.transpose()?;
        let dir = match postgres_bins.is_some() || redis_bin.is_some() {
            true => Some(RunDir::create(layout, postgres_bins.is_some()).await?),
            false => None,
        };

        let (postgres, postgres_origin, private_postgres) = match (postgres, postgres_bins, &dir) {
            (Found::Use(url, origin), _, _) => (url, origin, None),
            (Found::Start, Some(bins), Some(dir)) => {
                let (url, private) = start_postgres(&bins, dir).await?;
                (url, Origin::Private(private.pgdir.clone()), Some(private))
            }
            (Found::Start, _, _) => bail!("internal: no Postgres binaries or directory"),
        };
        let mut services = Self {
            postgres,
            postgres_origin,
            redis: Url::parse(LOCAL_REDIS).context("parsing the default Redis URL")?,
            redis_origin: Origin::LocalDefault,
            private_postgres,
            private_redis: None,
        };
        match (redis, redis_bin, &dir) {
            (Found::Use(url, origin), _, _) => {
                services.redis = url;
                services.redis_origin = origin;
            }
            (Found::Start, Some(bin), Some(dir)) => match start_redis(&bin, &dir.path).await {
                Ok((url, proc)) => {
                    services.redis = url;
                    services.redis_origin = Origin::Private(dir.path.clone());
                    services.private_redis = Some(proc);
                }
                Err(e) => {
                    services.stop().await;
                    return Err(e);
                }
            },
            (Found::Start, _, _) => {
                services.stop().await;
                bail!("internal: no redis-server or directory");
            }
        }
        Ok(services)
    }

    /// Two lines naming the services (passwords hidden) and their origin.
    pub fn describe(&self) -> String {
        format!(
            "postgres: {} ({})\nredis:    {} ({})",
            redact(&self.postgres),
            self.postgres_origin,
            redact(&self.redis),
            self.redis_origin
        )
    }

    /// Stops what we started; services we found are left alone.
    pub async fn stop(self) {
        if let Some(redis) = self.private_redis {
            procs::stop_all(vec![redis]).await;
        }
        if let Some(postgres) = self.private_postgres
            && let Err(e) = postgres.stop().await
        {
            eprintln!("xtask: stopping the private Postgres: {e:#}");
        }
    }
}

/// `cargo xtask services`: what `ensure` would use, without starting
/// anything. False when a program needed for a private instance is missing.
pub async fn show(layout: &Layout) -> Result<bool> {
    let mut all_found = true;
    match find_postgres().await? {
        Found::Use(url, origin) => println!("postgres: {} ({origin})", redact(&url)),
        Found::Start => match PostgresBins::find() {
            Ok(bins) => println!(
                "postgres: would start a private instance ({}) under {} on a free port",
                bins.initdb.display(),
                layout.services().display()
            ),
            Err(e) => {
                all_found = false;
                println!("postgres: {e}");
            }
        },
    }
    match find_redis().await? {
        Found::Use(url, origin) => println!("redis:    {} ({origin})", redact(&url)),
        Found::Start => match find_redis_server() {
            Ok(bin) => println!(
                "redis:    would start a private instance ({}) under {} on a free port",
                bin.display(),
                layout.services().display()
            ),
            Err(e) => {
                all_found = false;
                println!("redis:    {e}");
            }
        },
    }
    Ok(all_found)
}

/// The same server as `url` with another database.
pub fn with_database(url: &Url, database: &str) -> Url {
    let mut url = url.clone();
    url.set_path(&format!("/{database}"));
    url
}

/// The URL for printing: the password replaced by `***`.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() && shown.set_password(Some("***")).is_err() {
        return format!("{}://***", url.scheme());
    }
    shown.to_string()
}

fn force_private() -> bool {
    std::env::var("KOBATELA_SERVICES").is_ok_and(|v| v.trim() == "private")
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn note(message: &str) {
    eprintln!("xtask: {message}");
}

async fn find_postgres() -> Result<Found> {
    if force_private() {
        return Ok(Found::Start);
    }
    if let Some(raw) = env_var("DATABASE_URL") {
        let url = maintenance_url(&raw).context("DATABASE_URL is not a postgres:// URL")?;
        match host_port(&url, 5432) {
            Some((host, port)) if postgres_answers(&host, port).await => {
                return Ok(Found::Use(url, Origin::Env("DATABASE_URL")));
            }
            Some((host, port)) => note(&format!("DATABASE_URL is set but no Postgres answers on {host}:{port}")),
            None => note("DATABASE_URL names no host (a Unix socket?): only TCP is supported here"),
        }
    }
    let local = Url::parse(LOCAL_POSTGRES).context("parsing the default Postgres URL")?;
    if postgres_answers("127.0.0.1", 5432).await {
        // The port answering is not enough: the default needs user postgres
        // without a password. psql can tell; without it, trust the port.
        let Ok(psql) = Psql::find() else {
            return Ok(Found::Use(local, Origin::LocalDefault));
        };
        match psql.exec(&local, "SELECT 1").await {
            Ok(()) => return Ok(Found::Use(local, Origin::LocalDefault)),
            Err(e) => note(&format!("127.0.0.1:5432 answers but refuses user postgres without a password: {e:#}")),
        }
    }
    Ok(Found::Start)
}

async fn find_redis() -> Result<Found> {
    if force_private() {
        return Ok(Found::Start);
    }
    if let Some(raw) = env_var("REDIS_URL") {
        let url = Url::parse(&raw).context("REDIS_URL is not a URL")?;
        let answer = match url.scheme() {
            "redis" => redis_ping(&url).await,
            // No TLS client here: a connect is all we can check.
            "rediss" => match host_port(&url, 6379) {
                Some((host, port)) if tcp_answers(&host, port).await => Ok(()),
                _ => Err(anyhow!("no TCP answer")),
            },
            other => Err(anyhow!("scheme `{other}` is not redis:// or rediss://")),
        };
        match answer {
            Ok(()) => return Ok(Found::Use(url, Origin::Env("REDIS_URL"))),
            Err(e) => note(&format!("REDIS_URL is set but does not answer: {e:#}")),
        }
    }
    let local = Url::parse(LOCAL_REDIS).context("parsing the default Redis URL")?;
    if redis_ping(&local).await.is_ok() {
        return Ok(Found::Use(local, Origin::LocalDefault));
    }
    Ok(Found::Start)
}

/// The server of a Postgres URL with the `postgres` database (user,
/// password, host, port and query kept).
fn maintenance_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw)?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!("scheme `{}` is not postgres://", url.scheme());
    }
    Ok(with_database(&url, "postgres"))
}

fn host_port(url: &Url, default_port: u16) -> Option<(String, u16)> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), url.port().unwrap_or(default_port)))
}

/// Drops and creates `name` on the server (ending sessions a killed earlier
/// run left behind); its URL.
pub(crate) async fn fresh_database(server: &Url, name: &str) -> Result<Url> {
    let psql = Psql::find()?;
    // FORCE (Postgres 13+) ends the sessions of a run that was killed.
    let forced = psql.exec(server, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    if forced.is_err() {
        psql.exec(server, &format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .with_context(|| format!("dropping the database {name}"))?;
    }
    psql.exec(server, &format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating the database {name}"))?;
    Ok(with_database(server, name))
}

/// A random alphanumeric string (keys, secrets, prefixes).
pub(crate) fn random_text(len: usize) -> String {
    use rand::Rng;
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(len).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_url_keeps_the_server_and_credentials() -> Result<()> {
        let url = maintenance_url("postgres://app:s%40cret@db.internal:6543/kobatela?sslmode=disable")?;
        assert_eq!(url.as_str(), "postgres://app:s%40cret@db.internal:6543/postgres?sslmode=disable");
        assert_eq!(host_port(&url, 5432), Some(("db.internal".to_string(), 6543)));
        assert_eq!(redact(&url), "postgres://app:***@db.internal:6543/postgres?sslmode=disable");
        Ok(())
    }

    #[test]
    fn maintenance_url_refuses_other_schemes() {
        assert!(maintenance_url("mysql://root@localhost/db").is_err());
    }

    #[test]
    fn percent_decoding_handles_escapes_and_stray_percents() {
        assert_eq!(percent_decode("s%40cret%2F"), "s@cret/");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
