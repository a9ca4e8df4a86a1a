//! `api serve` (default), `api migrate`, `api keys create --user NAME --role ROLE`.

use anyhow::{Context, bail};
use kobatela_api::state::AppState;
use kobatela_api::waiter::JobWaiter;
use shared::config::Config;
use shared::domain::access::keys as api_keys;
use shared::jobs::Queue;
use shared::principal::Role;
use shared::{db, telemetry};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("api: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    shared::tls::install_crypto_provider();
    let config = Config::from_env()?;
    telemetry::init(config.log_json);
    shared::money::install_currencies(config.currencies.clone());
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => serve(config).await,
        ["migrate"] => {
            let pool = db::connect(&config.database_url, 2).await.context("connecting to Postgres")?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        ["keys", "create", rest @ ..] => {
            let (mut user, mut role) = (None, None);
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                match *flag {
                    "--user" => user = it.next().map(|s| s.to_string()),
                    "--role" => role = it.next().and_then(|r| Role::parse(r)),
                    other => bail!("unknown argument {other}; usage: api keys create --user NAME --role ROLE"),
                }
            }
            let (Some(user), Some(role)) = (user, role) else {
                bail!("usage: api keys create --user NAME --role admin|support|sender|beneficiary|psp");
            };
            let pool = db::connect(&config.database_url, 2).await.context("connecting to Postgres")?;
            let args = (user, role);
            let key = db::serializable(&pool, &args, |tx, (user, role)| {
                Box::pin(api_keys::create_for_username(tx, user, *role))
            })
            .await?;
            println!("created {} key {} for user {} ({})", key.role, key.prefix, user_name(&args.0), key.user_id);
            println!("{}", key.key);
            Ok(())
        }
        ["check", rest @ ..] => check(&config, rest).await,
        _ => bail!("usage: api [serve] | api migrate | api keys create --user NAME --role ROLE | api check [--no-psp]"),
    }
}

/// `api check [--no-psp]`: runs the invariants and the PSP reconciliation
/// now, stores the run (alerts included), prints a table, and exits 1 when
/// any row violates one (for ops scripts and CI).
async fn check(config: &Config, args: &[&str]) -> anyhow::Result<()> {
    let with_psp = match args {
        [] => true,
        ["--no-psp"] => false,
        _ => bail!("usage: api check [--no-psp]"),
    };
    let pool = db::connect(&config.database_url, 2).await.context("connecting to Postgres")?;
    let client = shared::psp::client::HttpPspClient::new(
        config.psp_base_url.clone(),
        config.psp_api_key.clone(),
        std::time::Duration::from_secs(5),
    );
    let psp = with_psp.then_some(shared::domain::ops::invariants::PspSide { client: &client });
    let run = shared::domain::ops::invariants::run(
        &pool,
        psp,
        config.saka_timezone.name(),
        shared::domain::ops::invariants::stale_lease_secs(config),
    )
    .await
    .context("running the invariants")?;
    println!("invariants run {} at {}", run.run_id, run.checked_at.to_rfc3339());
    println!("{:<20} {:>10}  description", "invariant", "violations");
    for inv in &run.invariants {
        println!("{:<20} {:>10}  {}", inv.name, inv.violations, inv.description);
        for row in &inv.sample {
            println!("{:<20} {:>10}  {row}", "", "");
        }
    }
    let total = run.violations();
    println!("{total} violating row(s)");
    if total > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn user_name(s: &str) -> &str {
    s
}

/// How long a request waits for a Postgres connection before its `503`:
/// the backstop behind the breaker (`kobatela_api::breaker`), for requests
/// that started before it opened. The worker keeps `db::ACQUIRE_TIMEOUT`.
const REQUEST_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve(config: Config) -> anyhow::Result<()> {
    config.require_webhook_secrets()?;
    let bounds = db::SessionBounds::for_lease(config.job_timeout);
    let pool = db::connect_with(&config.database_url, config.db_pool_size, REQUEST_ACQUIRE_TIMEOUT, bounds)
        .await
        .context("connecting to Postgres")?;
    if config.migrate_on_start {
        db::migrate(&pool).await?;
    }
    if let Some(secret) = &config.bootstrap_admin_key {
        let created =
            db::serializable(&pool, secret.as_str(), |tx, s| Box::pin(api_keys::bootstrap_admin(tx, s))).await?;
        if created {
            tracing::info!("bootstrap admin key installed for user admin");
        }
    }
    // Lazy: the api starts and answers (`/ready` says Redis is down) while
    // Redis is away; pushes that fail are the relay's to make.
    let queue = Queue::new(&config.redis_url, &config.queue_prefix, config.stream_maxlen).context("REDIS_URL")?;
    let metrics = kobatela_api::ops_listener::install()?;
    let sampler = kobatela_api::ops_listener::Sampler::new(pool.clone(), queue.clone(), metrics, config.stream_block);
    let metrics_addr = sampler.serve(config.metrics_addr).await?;
    tracing::info!(addr = %metrics_addr, "api ops listener (/metrics) listening");
    let waiter = JobWaiter::start(queue.client().clone(), queue.ended_channel());
    let store = shared::storage::ObjectProofStore::open(&config.storage).context("STORAGE_URL")?;
    let swept = store.sweep_staging().await;
    if swept > 0 {
        tracing::info!(swept, "staging files left by a crash deleted");
    }
    let addr = config.bind_addr;
    let state = AppState::new(pool, queue, config, waiter, std::sync::Arc::new(store));
    let app = kobatela_api::router(state);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "api listening");
    // The peer's address is the client's (or its proxy's): `extract::ClientAddr`.
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("api stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
