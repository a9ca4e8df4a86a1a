//! Reads and guarded moves that several escrow rules share: loading an
//! escrow (principal-scoped or locked), its milestones and payments, the
//! escrow event trail, a milestone's state machine and the closing of an
//! escrow once everything is paid. Every state change here is a guarded
//! `UPDATE … WHERE status …`: anything else changes nothing.

use sqlx::PgConnection;

use crate::domain::access::users::refuse_inactive;
use crate::domain::escrow::model::{
    ESCROW_COLUMNS, Escrow, MILESTONE_COLUMNS, Milestone, PAYMENT_COLUMNS, Payment, PaymentOut,
};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, MilestoneId, PaymentId};
use crate::principal::Principal;

/// An escrow event and its audit row (`ESCROW_<kind>`), in the caller's
/// transaction.
pub async fn event(
    conn: &mut PgConnection,
    escrow: EscrowId,
    kind: &str,
    actor: &str,
    data: serde_json::Value,
) -> Result<()> {
    sqlx::query("INSERT INTO escrow_events (id, escrow_id, kind, actor, data) VALUES ($1, $2, $3, $4, $5)")
        .bind(uuid::Uuid::now_v7())
        .bind(escrow)
        .bind(kind)
        .bind(actor)
        .bind(&data)
        .execute(&mut *conn)
        .await?;
    audit::write(conn, actor, &format!("ESCROW_{kind}"), "escrow", escrow, data).await
}

/// Loads an escrow the caller may see (parties, support, admin), locked
/// for update when `lock`; anyone else gets `ESCROW_NOT_FOUND`.
pub async fn load_for(conn: &mut PgConnection, id: EscrowId, who: &Principal, lock: bool) -> Result<Escrow> {
    let sql = format!(
        "SELECT {ESCROW_COLUMNS} FROM escrows WHERE id = $1 AND ($2 OR client_id = $3 OR provider_id = $3){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let e: Option<Escrow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(who.reads_all())
        .bind(who.user_id)
        .fetch_optional(conn)
        .await?;
    e.ok_or_else(|| Error::not_found(ErrorCode::EscrowNotFound, "escrow"))
}

/// Any escrow, locked (jobs acting for the system or the PSP).
pub async fn load(conn: &mut PgConnection, id: EscrowId) -> Result<Escrow> {
    load_for(conn, id, &Principal::system(), true).await
}

pub async fn milestones(conn: &mut PgConnection, escrow: EscrowId) -> Result<Vec<Milestone>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MILESTONE_COLUMNS} FROM milestones WHERE escrow_id = $1 ORDER BY idx"
    )))
    .bind(escrow)
    .fetch_all(conn)
    .await?)
}

/// A milestone, locked; `MILESTONE_NOT_FOUND` when there is none.
pub async fn milestone(conn: &mut PgConnection, id: MilestoneId) -> Result<Milestone> {
    let m: Option<Milestone> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MILESTONE_COLUMNS} FROM milestones WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    m.ok_or_else(|| Error::not_found(ErrorCode::MilestoneNotFound, "milestone"))
}

/// Milestone `idx` of an escrow, locked.
pub async fn milestone_by_idx(conn: &mut PgConnection, escrow: EscrowId, idx: i32) -> Result<Milestone> {
    let m: Option<Milestone> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MILESTONE_COLUMNS} FROM milestones WHERE escrow_id = $1 AND idx = $2 FOR UPDATE"
    )))
    .bind(escrow)
    .bind(idx)
    .fetch_optional(conn)
    .await?;
    m.ok_or_else(|| Error::not_found(ErrorCode::MilestoneNotFound, "milestone"))
}

/// An escrow's payments, oldest first, as clients see them.
pub async fn payments_of(conn: &mut PgConnection, escrow: EscrowId) -> Result<Vec<PaymentOut>> {
    let rows: Vec<Payment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE escrow_id = $1 ORDER BY id"
    )))
    .bind(escrow)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(Into::into).collect())
}

/// A payment, locked.
pub async fn payment(conn: &mut PgConnection, id: PaymentId) -> Result<Option<Payment>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE")))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// Money moves on an escrow only while both its parties are active: the
/// client acts or is refunded, the provider is paid.
pub async fn require_parties_active(conn: &mut PgConnection, e: &Escrow) -> Result<()> {
    refuse_inactive(conn, &[(e.client_id, "the escrow's client"), (e.provider_id, "the escrow's provider")]).await
}

/// Moves a milestone along one guarded edge of its state machine: only from
/// one of `from`. Answers whether it moved; nothing changes otherwise.
pub async fn move_milestone(conn: &mut PgConnection, id: MilestoneId, from: &[&str], to: &str) -> Result<bool> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let done =
        sqlx::query("UPDATE milestones SET status = $3, updated_at = now() WHERE id = $1 AND (status || '') = ANY($2)")
            .bind(id)
            .bind(&from)
            .bind(to)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// [`move_milestone`] where anything else is a refusal:
/// `MILESTONE_INVALID_TRANSITION`, and the caller's writes roll back.
pub async fn transition_milestone(conn: &mut PgConnection, m: &Milestone, from: &[&str], to: &str) -> Result<()> {
    if move_milestone(conn, m.id, from, to).await? {
        Ok(())
    } else {
        Err(Error::problem(
            ErrorCode::MilestoneInvalidTransition,
            format!("milestone {} is {} and cannot become {to}", m.idx, m.status),
        ))
    }
}

/// The escrow ended (released, refunded) while proofs waited for a
/// person: no decision can apply to them any more (decisions need an
/// active escrow), so they are closed now, as a validation that finds the
/// escrow ended closes its proof: `REJECTED` with `ESCROW_NOT_ACTIVE`,
/// audited. Left alone they would wait in review forever. Milestones still
/// in review go back to `WAITING` (a release has already approved its own).
pub async fn close_reviews(conn: &mut PgConnection, escrow: EscrowId, status: &str, actor: &str) -> Result<()> {
    let closed: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE proofs SET status = 'REJECTED', rejection_code = 'ESCROW_NOT_ACTIVE'
         WHERE escrow_id = $1 AND status = 'PENDING_REVIEW' RETURNING id",
    )
    .bind(escrow)
    .fetch_all(&mut *conn)
    .await?;
    for (proof,) in closed {
        let data = serde_json::json!({"code": "ESCROW_NOT_ACTIVE", "escrow_status": status});
        audit::write(conn, actor, "PROOF_REJECTED", "proof", proof, data).await?;
    }
    for m in milestones(conn, escrow).await? {
        if m.status == "PENDING_REVIEW" {
            transition_milestone(conn, &m, &["PENDING_REVIEW"], "WAITING").await?;
        }
    }
    Ok(())
}

/// After a settlement: when every milestone is PAID and no remainder is
/// left (the balance is 0), the escrow is RELEASED. A remainder is paid
/// by the client's approval or the deadline, which release it.
pub async fn close_if_done(conn: &mut PgConnection, escrow: EscrowId, actor: &str) -> Result<()> {
    let (total, paid): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'PAID') FROM milestones WHERE escrow_id = $1")
            .bind(escrow)
            .fetch_one(&mut *conn)
            .await?;
    if total > 0 && total == paid {
        let done = sqlx::query(
            "UPDATE escrows SET status = 'RELEASED', updated_at = now()
              WHERE id = $1 AND (status || '') IN ('FUNDED', 'RELEASABLE') AND funded_amount = reserved_amount",
        )
        .bind(escrow)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            event(conn, escrow, "RELEASED", actor, serde_json::json!({"by": "all_milestones_paid"})).await?;
        }
    }
    Ok(())
}
