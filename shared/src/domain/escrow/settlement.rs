//! How a payment ends: the PSP's failure (ERROR, its reservation and its
//! payee's limits given back, its milestone back to APPROVED) or its
//! settlement (SETTLED, final: counted as paid, its milestone PAID, the
//! escrow closed once everything is). Out-of-order events never move a
//! payment backwards.

use chrono::Utc;
use sqlx::PgConnection;

use crate::domain::escrow::drives::{self, PspSaid};
use crate::domain::escrow::model::Payment;
use crate::domain::escrow::{balance, limits, state};
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, Result};
use crate::money::display;

/// PENDING or SENT → ERROR: the reservation is released, the payee's
/// limits are given back, and the milestone goes back to APPROVED for a
/// retry. SETTLED never moves. Answers whether it moved.
pub async fn fail(conn: &mut PgConnection, p: &Payment, reason: &str, actor: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE payments SET status = 'ERROR', error_reason = $2, limits_day = NULL, updated_at = now() WHERE id = $1 AND status IN ('PENDING', 'SENT')")
        .bind(p.id)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    balance::unreserve(conn, p.escrow_id, p.amount).await?;
    if let (Some(payee), Some(day)) = (p.payee_id, p.limits_day) {
        limits::give_back(conn, payee, p.amount, day).await?;
    }
    if let Some(m) = p.milestone_id {
        state::move_milestone(conn, m, &["PAYING"], "APPROVED").await?;
    }
    audit::write(conn, actor, "PAYMENT_FAILED", "payment", p.id, serde_json::json!({"reason": reason})).await?;
    Ok(true)
}

/// → SETTLED (final): counted as paid; its milestone is PAID; the escrow
/// closes when every milestone is (and no remainder is left). Answers
/// whether it moved (a SETTLED payment stays as it is).
///
/// A late settlement of an ERROR payment is recorded anyway: the PSP paid.
/// See [`retake_late`]. It is the settlement of the payment's current
/// drive: the caller matched the event to it (`drives::named_by`).
pub async fn settle(conn: &mut PgConnection, p: &Payment, psp_ref: Option<&str>, actor: &str) -> Result<bool> {
    drives::record(conn, p.id, p.drive, psp_ref, PspSaid::Settled).await?;
    let counted = match p.status.as_str() {
        "SETTLED" => return Ok(false),
        "ERROR" => retake_late(conn, p).await?,
        _ => true,
    };
    sqlx::query(
        "UPDATE payments SET status = 'SETTLED', psp_ref = coalesce($2, psp_ref), updated_at = now() WHERE id = $1",
    )
    .bind(p.id)
    .bind(psp_ref)
    .execute(&mut *conn)
    .await?;
    if counted {
        balance::add_paid(conn, p.escrow_id, p.amount).await?;
    }
    let data = serde_json::json!({"psp_ref": psp_ref, "counted": counted});
    audit::write(conn, actor, "PAYMENT_SETTLED", "payment", p.id, data).await?;
    if let Some(m) = p.milestone_id {
        // APPROVED (the webhook came before the PSP's reply was recorded, or
        // after a failure) or PAYING → PAID.
        if state::move_milestone(conn, m, &["APPROVED", "PAYING"], "PAID").await? {
            let data = serde_json::json!({"payment_id": p.id});
            audit::write(conn, actor, "MILESTONE_PAID", "milestone", m, data).await?;
        }
        state::close_if_done(conn, p.escrow_id, actor).await?;
    }
    Ok(true)
}

/// A settlement of an ERROR payment takes its reservation and its payee's
/// limits again where they can still hold it; where they cannot, the money
/// has left all the same, so it is recorded without them and ops get an
/// alert (`ESCROW_OVERDRAWN`, `PAYEE_LIMIT_OVERRUN`). Answers whether the
/// balance holds it (whether it counts as paid).
async fn retake_late(conn: &mut PgConnection, p: &Payment) -> Result<bool> {
    let counted = balance::try_reserve(conn, p.escrow_id, p.amount).await?;
    if !counted {
        let data = serde_json::json!({
            "payment_id": p.id, "escrow_id": p.escrow_id, "amount": display(p.amount, &p.currency),
        });
        let why = "the PSP settled a failed payment the escrow balance can no longer hold";
        alerts::raise(conn, "ESCROW_OVERDRAWN", why, None, data).await?;
    }
    if let Some(payee) = p.payee_id {
        retake_limits(conn, p, payee).await?;
    }
    Ok(counted)
}

async fn retake_limits(conn: &mut PgConnection, p: &Payment, payee: crate::ids::PayeeId) -> Result<()> {
    let today = Utc::now().date_naive();
    let payee = limits::load_locked(conn, payee).await?;
    sqlx::query("SAVEPOINT late_limits").execute(&mut *conn).await?;
    match limits::take(conn, &payee, p.amount, today).await {
        Ok(()) => limits::mark_payment(conn, p.id, today).await,
        Err(Error::Problem(refusal)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT late_limits").execute(&mut *conn).await?;
            let data = serde_json::json!({
                "payment_id": p.id, "escrow_id": p.escrow_id, "payee_id": payee.id,
                "amount": display(p.amount, &p.currency), "limit": refusal.code.as_str(),
            });
            let why = "the PSP settled a failed usage payment its payee's limits can no longer hold";
            alerts::raise(conn, "PAYEE_LIMIT_OVERRUN", why, None, data).await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}
