//! The executor: one job, one SERIALIZABLE transaction, one commit.
//!
//! A first delivery takes the fast path: in the job's transaction, lock the
//! `queued` row (by the address its message carries), apply the rule, write
//! the audit, the rule's follow-up jobs and the result with the attempt
//! counted, commit; push the follow-ups. A receipt goes
//! from `queued` to its end with no visible `running` in between: that
//! state would cost a commit of its own.
//!
//! A redelivery (a message taken over from a consumer that went quiet, most
//! likely a worker that crashed on this very job) takes the counted path: a
//! claim commits `running` and the attempt first, so a job that kills its
//! worker every time still runs out of attempts and ends `dead`; then the
//! transaction checks the claim still holds, applies the rule and ends the
//! job.
//!
//! Serialization failures restart the transaction; a business refusal
//! commits as `failed`; any other error (a panic included) rolls back and is
//! recorded as an attempt (back-off, then `dead`).
//!
//! A rule that must call the outside world (a payout to the PSP) answers
//! `End::Continue`: its first transaction commits the job `running`
//! under this worker's lease, the call happens outside any transaction, and
//! a second transaction records the reply and ends the job. A crash in
//! between leaves the job `running` with an expired lease; the relay hands
//! it to another worker, whose first step finds and reuses what the first
//! one reserved.

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tracing::{Instrument, info, warn};

use crate::db;
use crate::domain::ops::audit;
use crate::error::{Error, Problem, Result};
use crate::ids::JobId;
use crate::jobs::outcome::{End, Outcome};
use crate::jobs::record::{self, Claim, JobRow};
use crate::jobs::{JobRef, Queue};

/// Runs the rule of a job inside the job's transaction.
pub trait Runner: Send + Sync {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>>;

    /// The outside call after `Outcome::call(state)`, in no transaction.
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
    /// Not claimable: already finished, not due yet, or not there. The
    /// delivery is done with.
    Skipped,
    /// Running on another worker under a live lease: the delivery is kept
    /// (unacknowledged) in case that worker dies.
    Busy,
    /// The claim found the job's attempts used up and made it `dead`.
    GaveUp,
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

/// The error of a run stopped by its time limit (the lease): the one
/// source of that text, which [`Report::timed_out`] reads back.
pub const TIMED_OUT: &str = "job timed out";

impl Report {
    /// The run was stopped by its time limit: it finished nothing of its own
    /// (the worker's `/health` does not count it as progress).
    pub fn timed_out(&self) -> bool {
        match self {
            Report::Errored { message, .. } => message == &Error::internal(TIMED_OUT).to_string(),
            _ => false,
        }
    }

    /// The job reached an end here (receipt waiters want to know).
    pub fn ended(&self) -> bool {
        match self {
            Report::Succeeded | Report::Failed(_) | Report::GaveUp => true,
            Report::Errored { status, .. } => status == "dead",
            Report::Skipped | Report::Busy | Report::Superseded => false,
        }
    }
}

/// What the message told about the job.
#[derive(Debug, Clone, Default)]
pub struct Hint {
    /// The row's address when it was pushed (a TID scan finds it).
    pub ctid: Option<String>,
    /// The entry was delivered before to a consumer that did not
    /// acknowledge it: take the counted path.
    pub redelivered: bool,
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
    /// Ended; the follow-up jobs its transaction created, to push.
    Done(Vec<JobRef>),
    Refused(Problem, Vec<JobRef>),
    /// The first transaction of a `Continue` committed: the job (now
    /// `running` under this worker) and the state for the call.
    Continue(Box<JobRow>, serde_json::Value),
    /// Not this run's to end: a first delivery found the row no longer
    /// queued, or a claimed job's claim was taken over.
    NotQueued,
}

/// How a transaction reaches its job row.
#[derive(Clone, Copy)]
enum Entry<'j> {
    /// Claimed by a committed claim: check it still holds.
    Claimed(&'j JobRow),
    /// First delivery: claim the queued row in the transaction.
    Fresh(JobId, Option<&'j str>),
}

impl<R: Runner + ?Sized> Executor<'_, R> {
    /// Runs one delivery of a job. `Err` only when even recording the
    /// failure was impossible (the database is down): the caller leaves the
    /// message pending, to be delivered again.
    pub async fn run(&self, id: JobId, hint: &Hint) -> Result<Report> {
        if !hint.redelivered {
            let span = tracing::info_span!("job", job_id = %id);
            let report = self.run_first(id, hint.ctid.as_deref()).instrument(span).await?;
            if report != Report::Skipped {
                return Ok(report);
            }
            // Not queued: finished, running elsewhere, or waiting for a
            // retry. The counted claim below tells which (and takes over an
            // expired lease).
        }
        let job = match record::claim(self.pool, id, self.worker, self.lease, self.max_attempts).await? {
            Claim::Run(job) => job,
            Claim::Busy => return Ok(Report::Busy),
            Claim::Nothing => return Ok(Report::Skipped),
            Claim::Dead(job) => {
                warn!(job_id = %id, kind = %job.kind, attempts = job.attempts, "job gave up: its attempts were used up by runs that never ended");
                metrics::counter!("kobatela_jobs_total", "kind" => job.kind, "outcome" => "dead").increment(1);
                return Ok(Report::GaveUp);
            }
        };
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempts);
        self.run_claimed(job, None).instrument(span).await
    }

    /// The fast path: claim, rule and end in one transaction.
    async fn run_first(&self, id: JobId, ctid: Option<&str>) -> Result<Report> {
        let started = Instant::now();
        match self.guarded(self.transaction(Entry::Fresh(id, ctid), None)).await {
            Ok((TxEnd::NotQueued, _)) => Ok(Report::Skipped),
            // Committed `running` under this worker's lease: on as a claimed job.
            Ok((TxEnd::Continue(job, state), _)) => self.run_claimed(*job, Some(state)).await,
            Ok((end, job)) => self.report(job.as_ref(), id, started, Ok(end)).await,
            Err(e) => {
                // Rolled back: nothing of this attempt is written; count it now.
                let message = e.to_string();
                let status = record::record_failed_attempt(self.pool, id, self.max_attempts, &message).await?;
                self.report(None, id, started, Err((status, message))).await
            }
        }
    }

    /// The counted path, for a job claimed by a committed claim (or
    /// committed `running` by its first transaction, `continued` holding the
    /// state for its outside call).
    async fn run_claimed(&self, job: JobRow, continued: Option<serde_json::Value>) -> Result<Report> {
        let started = Instant::now();
        let ended = match &continued {
            None => self.guarded(self.claimed_steps(&job)).await,
            Some(state) => self.guarded(self.call_and_complete(&job, state)).await,
        };
        match ended {
            Ok(end) => self.report(Some(&job), job.id, started, Ok(end)).await,
            Err(e) => {
                let message = e.to_string();
                let status =
                    record::record_failure(self.pool, job.id, job.attempts, self.max_attempts, &message).await?;
                self.report(Some(&job), job.id, started, Err((status, message))).await
            }
        }
    }

    async fn claimed_steps(&self, job: &JobRow) -> Result<TxEnd> {
        let (first, _) = self.transaction(Entry::Claimed(job), None).await?;
        match first {
            TxEnd::Continue(running, state) => self.call_and_complete(&running, &state).await,
            other => Ok(other),
        }
    }

    async fn call_and_complete(&self, job: &JobRow, state: &serde_json::Value) -> Result<TxEnd> {
        let reply = self.runner.call(job, state).await?;
        let (end, _) = self.transaction(Entry::Claimed(job), Some((state, &reply))).await?;
        Ok(end)
    }

    /// Runs `steps` under the lease as a time limit, a panic in a rule
    /// becoming an error like any other (its transaction rolls back as the
    /// connection is dropped).
    async fn guarded<T>(&self, steps: impl Future<Output = Result<T>>) -> Result<T> {
        let steps = std::panic::AssertUnwindSafe(steps).catch_unwind();
        match tokio::time::timeout(self.lease, steps).await {
            Ok(Ok(ended)) => ended,
            Ok(Err(panic)) => Err(Error::internal(format!("the rule panicked: {}", panic_text(&panic)))),
            Err(_) => Err(Error::internal(TIMED_OUT)),
        }
    }

    /// Logs, counts and reports how a run ended; pushes the jobs it created.
    async fn report(
        &self,
        job: Option<&JobRow>,
        id: JobId,
        started: Instant,
        ended: std::result::Result<TxEnd, (String, String)>,
    ) -> Result<Report> {
        let kind = job.map(|j| j.kind.clone()).unwrap_or_else(|| "unknown".into());
        let (report, outcome) = match ended {
            Ok(TxEnd::Done(children)) => {
                self.push_children(&children).await;
                (Report::Succeeded, "succeeded")
            }
            Ok(TxEnd::Refused(p, children)) => {
                self.push_children(&children).await;
                info!(code = %p.code, detail = %p.detail, "job refused");
                (Report::Failed(p.code.as_str().to_string()), "failed")
            }
            Ok(TxEnd::Continue(..) | TxEnd::NotQueued) => (Report::Superseded, "superseded"),
            Err((status, message)) => {
                warn!(job_id = %id, error = %message, new_status = %status, "job attempt failed");
                let outcome = if status == "dead" { "dead" } else { "retry" };
                (Report::Errored { status, message }, outcome)
            }
        };
        metrics::counter!("kobatela_jobs_total", "kind" => kind.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("kobatela_job_seconds", "kind" => kind.clone()).record(started.elapsed().as_secs_f64());
        if let Some(job) = job {
            let since_created = (chrono::Utc::now() - job.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("kobatela_job_end_to_end_seconds", "kind" => kind).record(since_created);
        }
        Ok(report)
    }

    /// One transaction of a job: reach the row, apply the rule (or record
    /// the call's reply), end the job. Returns how it ended and, on the fast
    /// path, the row it locked.
    async fn transaction(
        &self,
        entry: Entry<'_>,
        second: Option<(&serde_json::Value, &serde_json::Value)>,
    ) -> Result<(TxEnd, Option<JobRow>)> {
        let ctx = (entry, self.runner, second, self.worker, self.lease);
        let ran = db::serializable(self.pool, &ctx, |tx, (entry, runner, second, worker, lease)| {
            Box::pin(async move {
                let Some(job) = reach(tx, entry).await? else {
                    return Ok((TxEnd::NotQueued, None));
                };
                let outcome = match second {
                    None => runner.run(tx, &job).await,
                    Some((state, reply)) => runner.complete(tx, &job, state, reply).await,
                };
                // An `Err` (a refusal the rule keeps nothing of included)
                // rolls the whole transaction back.
                let Outcome { end, follow_ups } = outcome?;
                if crate::failpoint::any() {
                    // The rule's writes done, their row locks held, not yet
                    // committed (tests: a host that vanishes right here).
                    crate::failpoint::hit(&format!("held.{}", job.kind)).await;
                }
                // The rule's follow-up jobs commit with it (no statement when none).
                let children = record::insert_children(tx, &job, &follow_ups).await?;
                let end = match end {
                    End::Succeeded(value) => {
                        record::finish(tx, &job, Ok(&value)).await?;
                        TxEnd::Done(children)
                    }
                    // The rule kept its writes and audited its own refusal.
                    End::Refused(p) => {
                        record::finish(tx, &job, Err(&p)).await?;
                        TxEnd::Refused(p, children)
                    }
                    End::Continue(state) if second.is_none() => {
                        let running = match entry {
                            Entry::Fresh(..) => record::mark_running(tx, &job, worker, *lease).await?,
                            Entry::Claimed(_) => job.clone(),
                        };
                        TxEnd::Continue(Box::new(running), state)
                    }
                    End::Continue(_) => return Err(Error::internal("a job may call out only once")),
                };
                Ok((end, Some(job)))
            })
        })
        .await;
        match ran {
            // Nothing of the rule was written; the refusal is audited and
            // the job ended in a transaction of its own. (A savepoint around
            // the rule would do it in one, but a savepoint that writes is a
            // subtransaction with an id of its own in every job: the common
            // case pays for the rare one.)
            Err(Error::Problem(p)) => self.refuse(entry, p).await,
            other => other,
        }
    }

    /// Audits a refusal whose rule's writes were rolled back, and ends the job.
    async fn refuse(&self, entry: Entry<'_>, p: Problem) -> Result<(TxEnd, Option<JobRow>)> {
        db::serializable(self.pool, &(entry, p), |tx, (entry, p)| {
            Box::pin(async move {
                let Some(job) = reach(tx, entry).await? else {
                    return Ok((TxEnd::NotQueued, None));
                };
                audit_refusal(tx, &job, p).await?;
                record::finish(tx, &job, Err(p)).await?;
                Ok((TxEnd::Refused(p.clone(), Vec::new()), Some(job)))
            })
        })
        .await
    }

    /// Pushes the jobs this job created in its transaction (the relay would
    /// deliver them too, only later).
    async fn push_children(&self, children: &[JobRef]) {
        if children.is_empty() {
            return;
        }
        if let Err(e) = self.queue.push_batch(children).await {
            warn!(error = %e, "push of follow-up jobs failed; the relay will deliver them");
        }
    }
}

/// The job's row in its transaction: a claimed job's claim must still hold
/// (`Superseded` reads as "not here"), a first delivery's row must still be
/// queued.
async fn reach(tx: &mut PgConnection, entry: &Entry<'_>) -> Result<Option<JobRow>> {
    match entry {
        Entry::Claimed(job) => Ok(record::still_owned(tx, job).await?.then(|| (*job).clone())),
        Entry::Fresh(id, ctid) => record::queued_row(tx, *id, *ctid).await,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}

/// The audit row of a refusal the rule did not keep anything for.
pub async fn audit_refusal(conn: &mut PgConnection, job: &JobRow, p: &Problem) -> Result<()> {
    let (entity, action) = job.job_kind().map(|k| k.refusal_audit()).unwrap_or(("job", "JOB_REFUSED"));
    let data =
        serde_json::json!({"job_id": job.id, "code": p.code.as_str(), "detail": p.detail, "request": job.payload});
    audit::write(conn, &job.actor(), action, entity, job.id, data).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_run_stopped_by_its_lease_reads_as_timed_out() {
        let timed_out = Report::Errored { status: "queued".into(), message: Error::internal(TIMED_OUT).to_string() };
        assert!(timed_out.timed_out());
        let failed = Report::Errored { status: "queued".into(), message: "database: pool timed out".into() };
        assert!(!failed.timed_out());
        assert!(!Report::Succeeded.timed_out());
    }
}
