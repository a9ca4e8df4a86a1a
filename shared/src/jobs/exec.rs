//! The executor: one job, one SERIALIZABLE transaction. Claim the row
//! (outside, so the receipt shows `running`), then in the transaction check
//! the claim still holds, apply the rule, write the audit and the result,
//! commit. Serialization failures restart the transaction; a business
//! refusal commits as `failed`; any other error rolls back and is recorded
//! as an attempt (back-off, then `dead`).
//!
//! A rule that must call the outside world (a payout to the PSP) answers
//! `Outcome::Continue`: its first transaction commits without ending the
//! job, the call happens outside any transaction, and a second transaction
//! records the reply and ends the job. A crash in between leaves the job
//! `running` with an expired lease; the relay hands it to another worker,
//! whose first step finds and reuses what the first one reserved.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tracing::{Instrument, info, warn};

use crate::db;
use crate::domain::audit;
use crate::error::{Error, Problem, Result};
use crate::ids::JobId;
use crate::jobs::Queue;
use crate::jobs::record::{self, JobRow};

/// What a rule decided. `Refused` keeps the rule's writes (an alert, an
/// expiry) and the rule audits that refusal itself, whereas an
/// `Err(Error::Problem)` from the rule rolls its writes back to the savepoint
/// and the executor audits the refusal (`JobKind::refusal_audit`).
/// `Continue` commits the rule's writes and asks for [`Runner::call`].
#[derive(Debug)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    Refused(Problem),
    Continue(serde_json::Value),
}

/// Runs the rule of a job inside the job's transaction.
pub trait Runner: Send + Sync {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>>;

    /// The outside call after `Outcome::Continue(state)`, in no transaction.
    /// `Err` is an infrastructure failure (the job is retried).
    fn call<'c>(&'c self, _job: &'c JobRow, _state: &'c serde_json::Value) -> BoxFuture<'c, Result<serde_json::Value>> {
        Box::pin(async { Err(Error::internal("this job kind makes no outside call")) })
    }

    /// Records the call's reply in a second transaction and ends the job.
    fn complete<'c>(
        &'c self,
        _conn: &'c mut PgConnection,
        _job: &'c JobRow,
        _state: &'c serde_json::Value,
        _reply: &'c serde_json::Value,
    ) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async { Err(Error::internal("this job kind makes no outside call")) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Not claimable: already finished, running elsewhere, or not due.
    Skipped,
    Succeeded,
    Failed(String),
    /// Infrastructure error, recorded; `status` is `queued` (retry) or `dead`.
    Errored {
        status: String,
        message: String,
    },
    /// Another worker took the job over while this one ran.
    Superseded,
}

pub struct Executor<'a, R: Runner + ?Sized> {
    pub pool: &'a PgPool,
    pub runner: &'a R,
    pub queue: &'a Queue,
    pub worker: &'a str,
    pub lease: Duration,
    pub max_attempts: i32,
}

enum TxEnd {
    Done,
    Refused(Problem),
    Continue(serde_json::Value),
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
        let ended = tokio::time::timeout(self.lease, self.steps(&job)).await;
        let ended = ended.unwrap_or_else(|_| Err(Error::internal("job timed out")));
        let elapsed = started.elapsed().as_secs_f64();
        let kind = job.kind.clone();
        let (report, outcome) = match ended {
            Ok(TxEnd::Done) => (Report::Succeeded, "succeeded"),
            Ok(TxEnd::Refused(p)) => {
                info!(code = %p.code, detail = %p.detail, "job refused");
                (Report::Failed(p.code.as_str().to_string()), "failed")
            }
            Ok(TxEnd::Superseded) | Ok(TxEnd::Continue(_)) => (Report::Superseded, "superseded"),
            Err(e) => {
                let message = e.to_string();
                let status =
                    record::record_failure(self.pool, job.id, job.attempts, self.max_attempts, &message).await?;
                warn!(error = %message, new_status = %status, "job attempt failed");
                let outcome = if status == "dead" { "dead" } else { "retry" };
                (Report::Errored { status, message }, outcome)
            }
        };
        if matches!(report, Report::Succeeded | Report::Failed(_)) {
            self.push_children(&job).await;
        }
        metrics::counter!("kobatela_jobs_total", "kind" => kind.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("kobatela_job_seconds", "kind" => kind.clone()).record(elapsed);
        let since_created = (chrono::Utc::now() - job.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("kobatela_job_end_to_end_seconds", "kind" => kind).record(since_created);
        Ok(report)
    }

    /// The rule's transaction and, for `Continue`, the call and the second
    /// transaction.
    async fn steps(&self, job: &JobRow) -> Result<TxEnd> {
        let first = self.transaction(job, None).await?;
        let TxEnd::Continue(state) = first else {
            return Ok(first);
        };
        let reply = self.runner.call(job, &state).await?;
        self.transaction(job, Some((&state, &reply))).await
    }

    async fn transaction(
        &self,
        job: &JobRow,
        second: Option<(&serde_json::Value, &serde_json::Value)>,
    ) -> Result<TxEnd> {
        let ctx = (job, self.runner, second);
        db::serializable(self.pool, &ctx, |tx, (job, runner, second)| {
            Box::pin(async move {
                if !record::still_owned(tx, job).await? {
                    return Ok(TxEnd::Superseded);
                }
                sqlx::query("SAVEPOINT rule").execute(&mut *tx).await?;
                let outcome = match second {
                    None => runner.run(tx, job).await,
                    Some((state, reply)) => runner.complete(tx, job, state, reply).await,
                };
                match outcome {
                    Ok(Outcome::Succeeded(value)) => {
                        record::finish(tx, job, Ok(&value)).await?;
                        Ok(TxEnd::Done)
                    }
                    // The rule kept its writes and audited its own refusal.
                    Ok(Outcome::Refused(p)) => {
                        record::finish(tx, job, Err(&p)).await?;
                        Ok(TxEnd::Refused(p))
                    }
                    Ok(Outcome::Continue(state)) if second.is_none() => Ok(TxEnd::Continue(state)),
                    Ok(Outcome::Continue(_)) => Err(Error::internal("a job may call out only once")),
                    // The rule's writes are undone; the refusal is audited here.
                    Err(Error::Problem(p)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT rule").execute(&mut *tx).await?;
                        audit_refusal(tx, job, &p).await?;
                        record::finish(tx, job, Err(&p)).await?;
                        Ok(TxEnd::Refused(p))
                    }
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    /// Pushes the jobs this job created in its transaction (the relay would
    /// deliver them too, only later).
    async fn push_children(&self, job: &JobRow) {
        if !job.job_kind().is_some_and(|k| k.spawns_jobs()) {
            return;
        }
        match record::queued_children(self.pool, job.id).await {
            Ok(children) => {
                for (id, kind) in children {
                    if let Err(e) = self.queue.push(kind, id).await {
                        warn!(child = %id, error = %e, "push of a follow-up job failed; the relay will deliver it");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list follow-up jobs; the relay will deliver them"),
        }
    }
}

/// The audit row of a refusal the rule did not keep anything for.
pub async fn audit_refusal(conn: &mut PgConnection, job: &JobRow, p: &Problem) -> Result<()> {
    let (entity, action) = job.job_kind().map(|k| k.refusal_audit()).unwrap_or(("job", "JOB_REFUSED"));
    let data =
        serde_json::json!({"job_id": job.id, "code": p.code.as_str(), "detail": p.detail, "request": job.payload});
    audit::write(conn, &job.actor(), action, entity, job.id, data).await
}
