//! The executor: one job, one SERIALIZABLE transaction. Claim the row
//! (outside, so the receipt shows `running`), then in the transaction check
//! the claim still holds, apply the rule, write the audit and the result,
//! commit. Serialization failures restart the transaction; a business
//! refusal commits as `failed`; any other error rolls back and is recorded
//! as an attempt (back-off, then `dead`).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tracing::{Instrument, info, warn};

use crate::db;
use crate::domain::audit;
use crate::error::{Error, Problem, Result};
use crate::ids::JobId;
use crate::jobs::record::{self, JobRow};

/// What a rule decided. `Refused` keeps the rule's writes (an alert, an
/// expiry) and the rule audits that refusal itself, whereas an
/// `Err(Error::Problem)` from the rule rolls its writes back to the savepoint
/// and the executor audits the refusal (`JobKind::refusal_audit`).
#[derive(Debug)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    Refused(Problem),
}

/// Runs the rule of a job inside the job's transaction.
pub trait Runner: Send + Sync {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>>;

    /// Work after commit (pushing follow-up jobs). Errors are logged; the
    /// relay delivers anything a failure here left behind.
    fn after_commit<'c>(&'c self, _job: &'c JobRow, _outcome: &'c serde_json::Value) -> BoxFuture<'c, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Not claimable: already finished, running elsewhere, or not due.
    Skipped,
    Succeeded,
    Failed(String),
    /// Infrastructure error, recorded; `status` is `queued` (retry) or `dead`.
    Errored { status: String, message: String },
    /// Another worker took the job over while this one ran.
    Superseded,
}

pub struct Executor<'a, R: Runner + ?Sized> {
    pub pool: &'a PgPool,
    pub runner: &'a R,
    pub worker: &'a str,
    pub lease: Duration,
    pub max_attempts: i32,
}

enum TxEnd {
    Done(serde_json::Value),
    Refused(Problem),
    Superseded,
}

impl<R: Runner + ?Sized> Executor<'_, R> {
    /// Runs one delivery of a job. `Err` only when even recording the
    /// failure was impossible (the database is down): the caller lets apalis
    /// retry the message.
    pub async fn run(&self, id: JobId) -> Result<Report> {
        let Some(job) = record::claim(self.pool, id, self.worker, self.lease).await? else {
            return Ok(Report::Skipped);
        };
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempts);
        self.run_claimed(job).instrument(span).await
    }

    async fn run_claimed(&self, job: JobRow) -> Result<Report> {
        let started = Instant::now();
        let ended = tokio::time::timeout(self.lease, self.transaction(&job)).await;
        let ended = ended.unwrap_or_else(|_| Err(Error::internal("job timed out")));
        let elapsed = started.elapsed().as_secs_f64();
        let kind = job.kind.clone();
        let (report, outcome) = match ended {
            Ok(TxEnd::Done(value)) => {
                self.runner.after_commit(&job, &value).await;
                (Report::Succeeded, "succeeded")
            }
            Ok(TxEnd::Refused(p)) => {
                info!(code = %p.code, detail = %p.detail, "job refused");
                (Report::Failed(p.code.as_str().to_string()), "failed")
            }
            Ok(TxEnd::Superseded) => (Report::Superseded, "superseded"),
            Err(e) => {
                let message = e.to_string();
                let status = record::record_failure(self.pool, job.id, job.attempts, self.max_attempts, &message).await?;
                warn!(error = %message, new_status = %status, "job attempt failed");
                let outcome = if status == "dead" { "dead" } else { "retry" };
                (Report::Errored { status, message }, outcome)
            }
        };
        metrics::counter!("kobatela_jobs_total", "kind" => kind.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("kobatela_job_seconds", "kind" => kind.clone()).record(elapsed);
        let since_created = (chrono::Utc::now() - job.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("kobatela_job_end_to_end_seconds", "kind" => kind).record(since_created);
        Ok(report)
    }

    async fn transaction(&self, job: &JobRow) -> Result<TxEnd> {
        let ctx = (job, self.runner);
        db::serializable(self.pool, &ctx, |tx, (job, runner)| {
            Box::pin(async move {
                if !record::still_owned(tx, job.id, job.attempts).await? {
                    return Ok(TxEnd::Superseded);
                }
                sqlx::query("SAVEPOINT rule").execute(&mut *tx).await?;
                match runner.run(tx, job).await {
                    Ok(Outcome::Succeeded(value)) => {
                        record::finish(tx, job.id, Ok(&value)).await?;
                        Ok(TxEnd::Done(value))
                    }
                    // The rule kept its writes and audited its own refusal.
                    Ok(Outcome::Refused(p)) => {
                        record::finish(tx, job.id, Err(&p)).await?;
                        Ok(TxEnd::Refused(p))
                    }
                    // The rule's writes are undone; the refusal is audited here.
                    Err(Error::Problem(p)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT rule").execute(&mut *tx).await?;
                        audit_refusal(tx, job, &p).await?;
                        record::finish(tx, job.id, Err(&p)).await?;
                        Ok(TxEnd::Refused(p))
                    }
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }
}

/// The audit row of a refusal the rule did not keep anything for.
pub async fn audit_refusal(conn: &mut PgConnection, job: &JobRow, p: &Problem) -> Result<()> {
    let (entity, action) = job.job_kind().map(|k| k.refusal_audit()).unwrap_or(("job", "JOB_REFUSED"));
    let data = serde_json::json!({"job_id": job.id, "code": p.code.as_str(), "detail": p.detail, "request": job.payload});
    audit::write(conn, &job.principal().actor(), action, entity, job.id, data).await
}
