//! Runners: the rule each job kind applies inside its transaction. They are
//! thin: parse the payload, call `shared::domain`, shape the outcome.

pub mod maintenance;

use futures::future::BoxFuture;
use shared::config::Config;
use shared::db;
use shared::domain::access::grants;
use shared::domain::escrow::deposits::{self, Source};
use shared::domain::escrow::proofs::ProofValidationV1;
use shared::domain::escrow::{deadlines, escrows, payees, payouts, proofs, transitions};
use shared::domain::psp::{events, health};
use shared::domain::saka;
use shared::domain::spend::{mandates, purchases, transfers};
use shared::error::{Error, Result};
use shared::jobs::{JobKind, JobRow, Outcome, Queue, Runner};
use shared::psp::client::{PspClient, PspError};
use shared::storage::ProofStore;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;

/// The clock of the rules that depend on the date (SAKA days). One place, so
/// the domain functions take `now` as an argument and tests move it.
fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub struct Runners {
    pub pool: PgPool,
    pub queue: Queue,
    pub config: Config,
    pub store: Arc<dyn ProofStore>,
    pub psp: Arc<dyn PspClient>,
    /// The same PSP over HTTP, for reading its log (reconciliation).
    pub psp_http: shared::psp::client::HttpPspClient,
}

impl Runner for Runners {
    fn run<'c>(&'c self, conn: &'c mut PgConnection, job: &'c JobRow) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async move {
            let who = job.principal()?;
            let Some(kind) = job.job_kind() else {
                return Err(Error::internal(format!("unknown job kind {}", job.kind)));
            };
            if shared::failpoint::any() {
                shared::failpoint::hit(&format!("rule.{kind}")).await;
            }
            match kind {
                JobKind::Purchase => purchases::execute(conn, &who, job.id, &job.payload()?).await,
                JobKind::MandateExpiry => {
                    let expired = mandates::expire_due(conn, &who.actor()).await?;
                    Ok(Outcome::succeeded(serde_json::json!({"expired": expired})))
                }
                JobKind::SakaHarvest => {
                    saka::harvest(conn, &who, job.id, &job.payload()?, now(), self.config.saka_timezone).await
                }
                JobKind::SakaSpend => saka::spend(conn, &who, job.id, &job.payload()?).await,
                JobKind::SakaAdjustment => {
                    saka::run_adjustment(conn, &who, job.id, &job.payload()?, now(), self.config.saka_timezone).await
                }
                JobKind::SakaDayRollover => {
                    let reset = saka::rollover(conn, now(), self.config.saka_timezone).await?;
                    Ok(Outcome::succeeded(serde_json::json!({"reset": reset})))
                }
                // The pending-approval expiry: SAKA adjustments and admin
                // grants wait 24 h for their second admin alike, so one
                // schedule expires both (`expired` stays the SAKA count).
                JobKind::SakaApprovalExpiry => {
                    let at = now();
                    let expired = saka::expire_pending(conn, at).await?;
                    let grants = grants::expire_pending(conn, at).await?;
                    Ok(Outcome::succeeded(serde_json::json!({"expired": expired, "admin_grants_expired": grants})))
                }
                JobKind::Transfer => transfers::execute(conn, &who, job.id, &job.payload()?).await,
                JobKind::EscrowDeposit => {
                    let e = deposits::deposit(conn, &who, Source::Job(job.id), &job.payload()?).await?;
                    Ok(Outcome::succeeded(serde_json::to_value(escrows::full(conn, &e).await?)?))
                }
                JobKind::EscrowTransition => transitions::transition(conn, &who, job.id, &job.payload()?).await,
                // One check_deadline job per due escrow, pushed once this commits.
                JobKind::EscrowDeadlines => deadlines::release_due(conn).await,
                JobKind::UsageSpend => payees::spend(conn, &who, job.id, &job.payload()?).await,
                JobKind::ProofValidation => match job.payload()? {
                    ProofValidationV1::Validate { proof_id, .. } => {
                        proofs::validate(conn, self.store.as_ref(), &who, job.id, proof_id).await
                    }
                    ProofValidationV1::Decide { proof_id, decision, note } => {
                        proofs::decide(conn, &who, job.id, proof_id, decision, note.as_deref()).await
                    }
                },
                JobKind::Payout => payouts::prepare(conn, &job.payload()?).await,
                JobKind::PspWebhook => events::apply(conn, &job.payload()?).await,
                JobKind::JobRelay => maintenance::relay_job(self).await,
                JobKind::Retention => maintenance::retention(self, conn).await,
            }
        })
    }

    /// The PSP call of a payout, outside any transaction. An answer that
    /// decides nothing is an error: the job is tried again with back-off,
    /// the payment PENDING with its reservation.
    fn call<'c>(&'c self, _job: &'c JobRow, state: &'c serde_json::Value) -> BoxFuture<'c, Result<serde_json::Value>> {
        Box::pin(async move {
            let state: payouts::CallState = serde_json::from_value(state.clone())?;
            match payouts::call(self.psp.as_ref(), &state).await {
                Ok(reply) => {
                    let mut conn = self.pool.acquire().await?;
                    if health::answered(&mut conn).await? {
                        tracing::info!("the PSP accepts our credentials again");
                    }
                    Ok(serde_json::to_value(reply)?)
                }
                Err(PspError::Auth { status, message }) => {
                    let ctx = (status, message.as_str());
                    let started = db::serializable(&self.pool, &ctx, |tx, (status, message)| {
                        Box::pin(health::auth_failed(tx, *status, message))
                    })
                    .await?;
                    if started {
                        tracing::error!(
                            status,
                            "the PSP refuses our credentials: payouts wait until PSP_API_KEY is fixed"
                        );
                    }
                    Err(Error::internal(PspError::Auth { status, message }))
                }
                // Unknown outcome: retry the job later under the same key.
                Err(e) => Err(Error::internal(e)),
            }
        })
    }

    fn complete<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        job: &'c JobRow,
        state: &'c serde_json::Value,
        reply: &'c serde_json::Value,
    ) -> BoxFuture<'c, Result<Outcome>> {
        Box::pin(async move {
            let state: payouts::CallState = serde_json::from_value(state.clone())?;
            let reply: payouts::CallReply = serde_json::from_value(reply.clone())?;
            payouts::record_reply(conn, &job.principal()?, &state, &reply).await
        })
    }
}
