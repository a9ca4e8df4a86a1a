//! Runners: the rule each job kind applies inside its transaction. They are
//! thin: parse the payload, call `shared::domain`, shape the outcome.

mod maintenance;

use futures::future::BoxFuture;
use shared::config::Config;
use shared::domain::{mandates, purchases, saka};
use shared::error::{Error, Result};
use shared::jobs::{JobKind, JobRow, Outcome, Queue, Runner};
use sqlx::{PgConnection, PgPool};

/// The clock of the rules that depend on the date (SAKA days). One place, so
/// the domain functions take `now` as an argument and tests move it.
fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub struct Runners {
    pub pool: PgPool,
    pub queue: Queue,
    pub config: Config,
}

impl Runner for Runners {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async move {
            let who = job.principal();
            let Some(kind) = job.job_kind() else {
                return Err(Error::internal(format!("unknown job kind {}", job.kind)));
            };
            match kind {
                JobKind::Purchase => purchases::execute(conn, &who, job.id, &job.payload()?).await,
                JobKind::MandateExpiry => {
                    let expired = mandates::expire_due(conn, &who.actor()).await?;
                    Ok(Outcome::Succeeded(serde_json::json!({"expired": expired})))
                }
                JobKind::SakaHarvest => saka::harvest(conn, &who, job.id, &job.payload()?, now(), self.config.saka_timezone).await,
                JobKind::SakaSpend => saka::spend(conn, &who, job.id, &job.payload()?).await,
                JobKind::SakaAdjustment => saka::run_adjustment(conn, &who, job.id, &job.payload()?, now(), self.config.saka_timezone).await,
                JobKind::SakaDayRollover => {
                    let reset = saka::rollover(conn, now(), self.config.saka_timezone).await?;
                    Ok(Outcome::Succeeded(serde_json::json!({"reset": reset})))
                }
                JobKind::SakaApprovalExpiry => {
                    let expired = saka::expire_pending(conn, now()).await?;
                    Ok(Outcome::Succeeded(serde_json::json!({"expired": expired})))
                }
                JobKind::JobRelay => maintenance::relay(self, conn).await,
                JobKind::Retention => maintenance::retention(conn).await,
                other => Err(Error::internal(format!("no runner for job kind {other} in this version"))),
            }
        })
    }
}
