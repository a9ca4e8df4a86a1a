//! Escrow transitions (job `escrow_transition`): mark delivered, the
//! client's approval (a release), the client's rejection (a refund or a
//! cancellation) and the deadline (a release, as if the client approved).
//! Every transition is guarded (`UPDATE … WHERE status IN (…)`), writes an
//! escrow event and an audit row, and creates its payout jobs inside the
//! same transaction, so a committed transition always has its payouts.

use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::escrow::escrows::full;
use crate::domain::escrow::model::{ESCROW_COLUMNS, Escrow, PaymentKind};
use crate::domain::escrow::payouts;
use crate::domain::escrow::state::{
    close_reviews, event, load, load_for, milestones, require_parties_active, transition_milestone,
};
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::EscrowId;
use crate::ids::JobId;
use crate::jobs::{FollowUp, Outcome};
use crate::principal::{Principal, Role};

/// `escrow_transition` job payload, version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionAction {
    MarkDelivered,
    ClientApprove,
    ClientReject,
    CheckDeadline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EscrowTransitionV1 {
    pub escrow_id: EscrowId,
    pub action: TransitionAction,
    pub note: Option<String>,
}

async fn set_status(conn: &mut PgConnection, e: &Escrow, from: &[&str], to: &str) -> Result<Escrow> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let after: Option<Escrow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE escrows SET status = $3, updated_at = now() WHERE id = $1 AND (status || '') = ANY($2) RETURNING {ESCROW_COLUMNS}"
    )))
    .bind(e.id)
    .bind(&from)
    .bind(to)
    .fetch_optional(conn)
    .await?;
    after.ok_or_else(|| {
        Error::problem(ErrorCode::EscrowInvalidTransition, format!("an escrow in {} cannot become {to}", e.status))
    })
}

/// Refuses with `FORBIDDEN` unless `allowed`.
fn only(allowed: bool, detail: &str) -> Result<()> {
    if allowed { Ok(()) } else { Err(Error::problem(ErrorCode::Forbidden, detail)) }
}

pub async fn transition(
    conn: &mut PgConnection,
    who: &Principal,
    job: JobId,
    cmd: &EscrowTransitionV1,
) -> Result<Outcome> {
    let e = load_for(conn, cmd.escrow_id, who, true).await?;
    let actor = who.actor();
    let note = serde_json::json!({"note": cmd.note});
    // The deadline's release checks the parties itself, so that a refusal
    // raises its alert.
    if cmd.action != TransitionAction::CheckDeadline {
        require_parties_active(conn, &e).await?;
    }
    let client = who.is_admin() || who.user_id == e.client_id;
    let (after, payouts) = match cmd.action {
        TransitionAction::MarkDelivered => {
            only(
                who.is_admin() || who.user_id == e.provider_id,
                "only the provider or an admin marks an escrow delivered",
            )?;
            let after = set_status(conn, &e, &["FUNDED"], "RELEASABLE").await?;
            event(conn, e.id, "RELEASABLE", &actor, note).await?;
            (after, Vec::new())
        }
        TransitionAction::ClientApprove => {
            only(client, "only the client or an admin approves")?;
            release(conn, &e, job, &actor, "client_approve").await?
        }
        TransitionAction::ClientReject => {
            only(client, "only the client or an admin rejects")?;
            reject(conn, &e, job, &actor, note).await?
        }
        TransitionAction::CheckDeadline => {
            who.require(&[Role::Admin])?;
            match check_deadline(conn, &e, job, &actor).await? {
                Ok(after) => after,
                Err(refused) => return Ok(refused),
            }
        }
    };
    let after = load(conn, after.id).await?;
    Ok(Outcome::succeeded(serde_json::to_value(full(conn, &after).await?)?).then(payouts))
}

/// DRAFT → CANCELLED, or FUNDED|RELEASABLE → REFUNDED; either way what
/// was deposited and not reserved by a payout goes back to the client.
async fn reject(
    conn: &mut PgConnection,
    e: &Escrow,
    job: JobId,
    actor: &str,
    note: serde_json::Value,
) -> Result<(Escrow, Vec<FollowUp>)> {
    let (from, to): (&[&str], &str) =
        if e.status == "DRAFT" { (&["DRAFT"], "CANCELLED") } else { (&["FUNDED", "RELEASABLE"], "REFUNDED") };
    let after = set_status(conn, e, from, to).await?;
    event(conn, e.id, to, actor, note).await?;
    close_reviews(conn, e.id, to, actor).await?;
    let mut jobs = Vec::new();
    if after.balance() > Decimal::ZERO {
        jobs.extend(payouts::enqueue(conn, job, &after, PaymentKind::Refund, None, after.balance()).await?.1);
    }
    Ok((after, jobs))
}

/// The deadline: releases a due escrow as if the client approved. A
/// refused release raises an alert for this escrow, which survives the
/// refusal: only the release is rolled back (`Err` holds that outcome).
async fn check_deadline(
    conn: &mut PgConnection,
    e: &Escrow,
    job: JobId,
    actor: &str,
) -> Result<std::result::Result<(Escrow, Vec<FollowUp>), Outcome>> {
    if !deadline_due(conn, e).await? {
        return Ok(Ok((e.clone(), Vec::new())));
    }
    sqlx::query("SAVEPOINT deadline_release").execute(&mut *conn).await?;
    match release(conn, e, job, actor, "deadline").await {
        Ok(after) => Ok(Ok(after)),
        Err(Error::Problem(p)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT deadline_release").execute(&mut *conn).await?;
            Ok(Err(refuse_deadline(conn, e, job, actor, p).await?))
        }
        Err(other) => Err(other),
    }
}

async fn refuse_deadline(conn: &mut PgConnection, e: &Escrow, job: JobId, actor: &str, p: Problem) -> Result<Outcome> {
    let data = serde_json::json!({"escrow_id": e.id, "job_id": job, "code": p.code.as_str(), "detail": p.detail});
    alerts::raise(conn, "ESCROW_DEADLINE_REFUSED", "the deadline release of an escrow was refused", None, data.clone())
        .await?;
    audit::write(conn, actor, "ESCROW_TRANSITION_REFUSED", "escrow", e.id, data).await?;
    Ok(Outcome::refused(p))
}

/// FUNDED|RELEASABLE → RELEASED, in this transaction with its payout jobs:
/// the client's approval (or the deadline, acting as it) approves every
/// unpaid milestone and pays it out; then whatever balance remains is paid
/// to the provider as one RELEASE payout. A released escrow ends with
/// balance 0: no money is stranded above the milestones.
async fn release(
    conn: &mut PgConnection,
    e: &Escrow,
    job: JobId,
    actor: &str,
    why: &str,
) -> Result<(Escrow, Vec<FollowUp>)> {
    require_parties_active(conn, e).await?;
    let after = set_status(conn, e, &["FUNDED", "RELEASABLE"], "RELEASED").await?;
    event(conn, e.id, "RELEASED", actor, serde_json::json!({"by": why})).await?;
    let mut jobs = Vec::new();
    for m in milestones(conn, e.id).await? {
        if matches!(m.status.as_str(), "WAITING" | "PENDING_REVIEW") {
            transition_milestone(conn, &m, &["WAITING", "PENDING_REVIEW"], "APPROVED").await?;
            let data = serde_json::json!({"escrow_id": e.id, "by": why});
            audit::write(conn, actor, "MILESTONE_APPROVED", "milestone", m.id, data).await?;
        }
        if matches!(m.status.as_str(), "WAITING" | "PENDING_REVIEW" | "APPROVED") {
            jobs.extend(payouts::enqueue(conn, job, &after, PaymentKind::Milestone, Some(&m), m.amount).await?.1);
        }
    }
    close_reviews(conn, e.id, "RELEASED", actor).await?;
    let after = load(conn, e.id).await?;
    if after.balance() > Decimal::ZERO {
        jobs.extend(payouts::enqueue(conn, job, &after, PaymentKind::Release, None, after.balance()).await?.1);
    }
    Ok((after, jobs))
}

/// Past its deadline, FUNDED or RELEASABLE, and no milestone in review.
async fn deadline_due(conn: &mut PgConnection, e: &Escrow) -> Result<bool> {
    if !e.is_active() || e.deadline_at > Utc::now() {
        return Ok(false);
    }
    let in_review: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM milestones WHERE escrow_id = $1 AND status = 'PENDING_REVIEW')",
    )
    .bind(e.id)
    .fetch_one(conn)
    .await?;
    Ok(!in_review)
}
