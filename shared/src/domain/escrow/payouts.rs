//! Payouts in three phases, never a network call inside a transaction:
//! 1. (transaction) create or reuse the payment under its deterministic key
//!    and reserve its amount from the escrow balance with a guarded UPDATE;
//! 2. (no transaction) call the PSP with the payment id as idempotency key;
//! 3. (transaction) record `SENT` with the PSP reference, or `ERROR` with the
//!    PSP's reason, releasing the reservation.
//!
//! Settlement arrives later by webhook. The escrow balance counts PENDING,
//! SENT and SETTLED payments, so concurrent payouts never overdraw it. A
//! usage payment may only take the balance that milestones do not hold,
//! and holds its share of its payee's limits while it is PENDING, SENT or
//! SETTLED (`limits_day` says on which day it counted).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::escrow::escrows::{self, Escrow, Milestone};
use crate::domain::escrow::payees;
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{EscrowId, MilestoneId, PayeeId, PaymentId};
use crate::jobs::{JobKind, JobRow, Outcome, record};
use crate::money::display;
use crate::principal::Principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentKind {
    Milestone,
    Release,
    Refund,
    Usage,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Milestone => "MILESTONE",
            PaymentKind::Release => "RELEASE",
            PaymentKind::Refund => "REFUND",
            PaymentKind::Usage => "USAGE",
        }
    }
}

const COLUMNS: &str = "id, escrow_id, milestone_id, payee_id, kind, recipient, amount, currency, status, idempotency_key, psp_ref, error_reason, attempts, created_at, limits_day";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub id: PaymentId,
    pub escrow_id: EscrowId,
    pub milestone_id: Option<MilestoneId>,
    pub payee_id: Option<PayeeId>,
    pub kind: String,
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub idempotency_key: String,
    pub psp_ref: Option<String>,
    pub error_reason: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// The day this (usage) payment's share of its payee's limits counts
    /// on; `None` while it holds none.
    pub limits_day: Option<NaiveDate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentOut {
    pub id: PaymentId,
    pub escrow_id: EscrowId,
    pub milestone_id: Option<MilestoneId>,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub psp_ref: Option<String>,
    pub kind: String,
    pub recipient: String,
    pub error_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub href: String,
}

impl From<&Payment> for PaymentOut {
    fn from(p: &Payment) -> Self {
        PaymentOut {
            id: p.id,
            escrow_id: p.escrow_id,
            milestone_id: p.milestone_id,
            amount: display(p.amount, &p.currency),
            currency: p.currency.clone(),
            status: p.status.clone(),
            psp_ref: p.psp_ref.clone(),
            kind: p.kind.clone(),
            recipient: p.recipient.clone(),
            error_reason: p.error_reason.clone(),
            created_at: p.created_at,
            href: format!("/payments/{}", p.id),
        }
    }
}

/// The `payout` job payload, version 1: the payment to drive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayoutV1 {
    pub payment_id: PaymentId,
}

pub async fn list_for_escrow(conn: &mut PgConnection, escrow: EscrowId) -> Result<Vec<PaymentOut>> {
    let rows: Vec<Payment> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM payments WHERE escrow_id = $1 ORDER BY id")))
            .bind(escrow)
            .fetch_all(conn)
            .await?;
    Ok(rows.iter().map(Into::into).collect())
}

pub async fn load(conn: &mut PgConnection, id: PaymentId) -> Result<Option<Payment>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM payments WHERE id = $1 FOR UPDATE")))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// Parties of the escrow, support and admin see a payment.
pub async fn get_for(conn: &mut PgConnection, id: PaymentId, who: &Principal) -> Result<PaymentOut> {
    let p: Option<Payment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM payments p WHERE id = $1 AND ($2 OR EXISTS (SELECT 1 FROM escrows e WHERE e.id = p.escrow_id AND (e.client_id = $3 OR e.provider_id = $3)))"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    p.as_ref().map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::NotFound, "payment"))
}

/// Moves `amount` out of the escrow's balance, or refuses.
async fn reserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    if try_reserve(conn, escrow, amount).await? {
        Ok(())
    } else {
        Err(Error::problem(ErrorCode::InsufficientEscrowBalance, "the escrow balance is too small for this payout"))
    }
}

/// The guarded reservation; `false` when the balance is too small.
async fn try_reserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<bool> {
    let done = sqlx::query("UPDATE escrows SET reserved_amount = reserved_amount + $2, updated_at = now() WHERE id = $1 AND funded_amount - reserved_amount >= $2")
        .bind(escrow)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A usage payment's reservation: only from the balance that milestones do
/// not hold. A milestone holds its amount until a payment of it is live
/// (PENDING, SENT or SETTLED), so approving a proof never finds the money
/// gone.
async fn reserve_unheld(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    let done = sqlx::query(
        "UPDATE escrows e SET reserved_amount = reserved_amount + $2, updated_at = now()
          WHERE id = $1 AND funded_amount - reserved_amount - (
                SELECT coalesce(sum(m.amount), 0) FROM milestones m
                 WHERE m.escrow_id = e.id
                   AND NOT EXISTS (SELECT 1 FROM payments p
                                    WHERE p.escrow_id = e.id AND p.milestone_id = m.id
                                      AND p.status IN ('PENDING', 'SENT', 'SETTLED'))
              ) >= $2",
    )
    .bind(escrow)
    .bind(amount)
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::problem(
            ErrorCode::InsufficientEscrowBalance,
            "the escrow balance not held for milestones is too small for this spend",
        ));
    }
    Ok(())
}

async fn unreserve(conn: &mut PgConnection, escrow: EscrowId, amount: Decimal) -> Result<()> {
    sqlx::query("UPDATE escrows SET reserved_amount = reserved_amount - $2, updated_at = now() WHERE id = $1")
        .bind(escrow)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// Phase 1 for a new payment: creates it PENDING with its reservation, or
/// finds the one its key already names.
pub async fn create_reserved(
    conn: &mut PgConnection,
    e: &Escrow,
    kind: PaymentKind,
    milestone: Option<&Milestone>,
    payee: Option<(PayeeId, &str)>,
    amount: Decimal,
    key: &str,
) -> Result<Payment> {
    if let Some(existing) = sqlx::query_as::<_, Payment>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM payments WHERE idempotency_key = $1 FOR UPDATE"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(existing);
    }
    match kind {
        PaymentKind::Usage => reserve_unheld(conn, e.id, amount).await?,
        _ => reserve(conn, e.id, amount).await?,
    }
    let recipient = match (kind, payee) {
        (_, Some((_, payee_ref))) => payee_ref.to_string(),
        (PaymentKind::Refund, _) => format!("user:{}", e.client_id),
        _ => format!("user:{}", e.provider_id),
    };
    let p: Payment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO payments (id, escrow_id, milestone_id, payee_id, kind, recipient, amount, currency, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(PaymentId::new())
    .bind(e.id)
    .bind(milestone.map(|m| m.id))
    .bind(payee.map(|p| p.0))
    .bind(kind.as_str())
    .bind(&recipient)
    .bind(amount)
    .bind(&e.currency)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    audit::write(
        conn,
        "system",
        "PAYMENT_CREATED",
        "payment",
        p.id,
        serde_json::json!({
            "escrow_id": e.id, "kind": p.kind, "amount": display(amount, &e.currency), "milestone_id": p.milestone_id,
        }),
    )
    .await?;
    Ok(p)
}

/// Creates the payment (phase 1) and its payout job inside the caller's
/// transaction; the job is pushed when the caller commits. A payment its
/// key already names is reused: an ERROR one takes its reservation again
/// and is driven again, a live one is left to the job driving it.
pub async fn enqueue(
    conn: &mut PgConnection,
    parent: &JobRow,
    e: &Escrow,
    kind: PaymentKind,
    milestone: Option<&Milestone>,
    amount: Decimal,
) -> Result<Payment> {
    let key = match (kind, milestone) {
        (PaymentKind::Milestone, Some(m)) => format!("milestone:{}", m.id),
        (PaymentKind::Release, _) => format!("release:{}", e.id),
        (PaymentKind::Refund, _) => format!("refund:{}", e.id),
        _ => format!("{}:{}", kind.as_str().to_lowercase(), parent.id),
    };
    let mut p = create_reserved(conn, e, kind, milestone, None, amount, &key).await?;
    if p.status == "ERROR" {
        revive(conn, &p).await?;
        p = load(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
    }
    if p.status == "PENDING" {
        enqueue_payout(conn, parent, &p).await?;
    }
    Ok(p)
}

/// ERROR → PENDING for a new drive: the payment takes its share of its
/// payee's limits again first (refused with the limit's code when they are
/// full), then its reservation (the balance not held for milestones, for a
/// usage payment). A new PSP idempotency key follows from `redrives`.
async fn revive(conn: &mut PgConnection, p: &Payment) -> Result<()> {
    let today = Utc::now().date_naive();
    if let Some(payee) = p.payee_id {
        let payee = payees::load_locked(conn, payee).await?;
        payees::take_limits(conn, &payee, p.amount, today).await?;
    }
    if p.kind == PaymentKind::Usage.as_str() {
        reserve_unheld(conn, p.escrow_id, p.amount).await?;
    } else {
        reserve(conn, p.escrow_id, p.amount).await?;
    }
    sqlx::query(
        "UPDATE payments SET status = 'PENDING', error_reason = NULL, redrives = redrives + 1, updated_at = now(),
                limits_day = CASE WHEN payee_id IS NULL THEN NULL ELSE $2::date END
          WHERE id = $1 AND status = 'ERROR'",
    )
    .bind(p.id)
    .bind(today)
    .execute(&mut *conn)
    .await?;
    audit::write(conn, "system", "PAYMENT_REDRIVEN", "payment", p.id, serde_json::json!({})).await
}

/// A payout job for an existing payment, created by `parent`.
pub async fn enqueue_payout(conn: &mut PgConnection, parent: &JobRow, p: &Payment) -> Result<()> {
    record::insert_child(
        conn,
        parent,
        JobKind::Payout,
        &PayoutV1 { payment_id: p.id },
        format!("payout:{}:{}", p.id, p.attempts),
    )
    .await?;
    Ok(())
}

/// What phase 1 hands to the PSP call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallState {
    pub payment_id: PaymentId,
    /// The PSP's idempotency key: stable across retries of one drive.
    pub idempotency_key: String,
    pub amount: String,
    pub currency: String,
    pub recipient: String,
    pub kind: String,
}

/// The PSP's answer as the second transaction records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CallReply {
    Accepted { psp_ref: String },
    Refused { code: String, message: String },
}

/// Phase 1 of a payout job: a PENDING payment is driven; an ERROR one is
/// reserved again and driven (a re-drive); SENT and SETTLED ones are done.
pub async fn prepare(conn: &mut PgConnection, cmd: &PayoutV1) -> Result<Outcome> {
    let Some(p) = load(conn, cmd.payment_id).await? else {
        return Err(Error::not_found(ErrorCode::NotFound, "payment"));
    };
    match p.status.as_str() {
        "SENT" | "SETTLED" => return Ok(Outcome::Succeeded(serde_json::to_value(PaymentOut::from(&p))?)),
        "ERROR" => revive(conn, &p).await?,
        _ => {}
    }
    let redrives: i32 = sqlx::query_scalar(
        "UPDATE payments SET attempts = attempts + 1, updated_at = now() WHERE id = $1 RETURNING redrives",
    )
    .bind(p.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Outcome::Continue(serde_json::to_value(CallState {
        idempotency_key: if redrives == 0 { p.id.to_string() } else { format!("{}-r{redrives}", p.id) },
        payment_id: p.id,
        amount: display(p.amount, &p.currency),
        currency: p.currency.clone(),
        recipient: p.recipient.clone(),
        kind: p.kind.to_lowercase(),
    })?))
}

/// Phase 3: record the PSP's answer.
pub async fn record_reply(
    conn: &mut PgConnection,
    who: &Principal,
    state: &CallState,
    reply: &CallReply,
) -> Result<Outcome> {
    let Some(p) = load(conn, state.payment_id).await? else {
        return Err(Error::not_found(ErrorCode::NotFound, "payment"));
    };
    if p.status != "PENDING" {
        // A webhook got here first (settled or failed): never move back.
        return Ok(Outcome::Succeeded(serde_json::to_value(PaymentOut::from(&p))?));
    }
    match reply {
        CallReply::Accepted { psp_ref } => {
            sqlx::query("UPDATE payments SET status = 'SENT', psp_ref = $2, updated_at = now() WHERE id = $1")
                .bind(p.id)
                .bind(psp_ref)
                .execute(&mut *conn)
                .await?;
            // APPROVED → PAYING; a milestone elsewhere is not moved (the
            // payment's own state is the PSP's fact and is recorded).
            if let Some(m) = p.milestone_id {
                escrows::move_milestone(conn, m, &["APPROVED"], "PAYING").await?;
            }
            audit::write(conn, &who.actor(), "PAYMENT_SENT", "payment", p.id, serde_json::json!({"psp_ref": psp_ref}))
                .await?;
            let p = load(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
            Ok(Outcome::Succeeded(serde_json::to_value(PaymentOut::from(&p))?))
        }
        CallReply::Refused { code, message } => {
            let reason = format!("{code}: {message}");
            fail(conn, &p, &reason, &who.actor()).await?;
            Ok(Outcome::Refused(Problem::new(ErrorCode::PayoutFailed, format!("the PSP refused the payout: {reason}"))))
        }
    }
}

/// PENDING or SENT → ERROR: the reservation is released, the payee's
/// limits are given back, and the milestone goes back to APPROVED for a
/// retry. SETTLED never moves.
pub async fn fail(conn: &mut PgConnection, p: &Payment, reason: &str, actor: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE payments SET status = 'ERROR', error_reason = $2, limits_day = NULL, updated_at = now() WHERE id = $1 AND status IN ('PENDING', 'SENT')")
        .bind(p.id)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    unreserve(conn, p.escrow_id, p.amount).await?;
    if let (Some(payee), Some(day)) = (p.payee_id, p.limits_day) {
        payees::give_back_limits(conn, payee, p.amount, day).await?;
    }
    if let Some(m) = p.milestone_id {
        escrows::move_milestone(conn, m, &["PAYING"], "APPROVED").await?;
    }
    audit::write(conn, actor, "PAYMENT_FAILED", "payment", p.id, serde_json::json!({"reason": reason})).await?;
    Ok(true)
}

/// → SETTLED (final): counted as paid; its milestone is PAID; the escrow
/// closes when every milestone is (and no remainder is left).
///
/// A late settlement of an ERROR payment is recorded anyway: the PSP paid.
/// It takes its reservation and its payee's limits again where they can
/// still hold it; where they cannot, the money has left all the same, so it
/// is recorded without them and ops get an alert (`ESCROW_OVERDRAWN`,
/// `PAYEE_LIMIT_OVERRUN`).
pub async fn settle(conn: &mut PgConnection, p: &Payment, psp_ref: Option<&str>, actor: &str) -> Result<bool> {
    let mut counted = true;
    match p.status.as_str() {
        "SETTLED" => return Ok(false),
        "ERROR" => {
            counted = try_reserve(conn, p.escrow_id, p.amount).await?;
            if !counted {
                alerts::raise(
                    conn,
                    "ESCROW_OVERDRAWN",
                    "the PSP settled a failed payment the escrow balance can no longer hold",
                    None,
                    serde_json::json!({"payment_id": p.id, "escrow_id": p.escrow_id, "amount": display(p.amount, &p.currency)}),
                )
                .await?;
            }
            if let Some(payee) = p.payee_id {
                let today = Utc::now().date_naive();
                let payee = payees::load_locked(conn, payee).await?;
                sqlx::query("SAVEPOINT late_limits").execute(&mut *conn).await?;
                match payees::take_limits(conn, &payee, p.amount, today).await {
                    Ok(()) => {
                        sqlx::query("UPDATE payments SET limits_day = $2 WHERE id = $1")
                            .bind(p.id)
                            .bind(today)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Err(Error::Problem(refusal)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT late_limits").execute(&mut *conn).await?;
                        alerts::raise(
                            conn,
                            "PAYEE_LIMIT_OVERRUN",
                            "the PSP settled a failed usage payment its payee's limits can no longer hold",
                            None,
                            serde_json::json!({
                                "payment_id": p.id, "escrow_id": p.escrow_id, "payee_id": payee.id,
                                "amount": display(p.amount, &p.currency), "limit": refusal.code.as_str(),
                            }),
                        )
                        .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        _ => {}
    }
    sqlx::query(
        "UPDATE payments SET status = 'SETTLED', psp_ref = coalesce(psp_ref, $2), updated_at = now() WHERE id = $1",
    )
    .bind(p.id)
    .bind(psp_ref)
    .execute(&mut *conn)
    .await?;
    if counted {
        sqlx::query("UPDATE escrows SET paid_amount = paid_amount + $2, updated_at = now() WHERE id = $1")
            .bind(p.escrow_id)
            .bind(p.amount)
            .execute(&mut *conn)
            .await?;
    }
    audit::write(
        conn,
        actor,
        "PAYMENT_SETTLED",
        "payment",
        p.id,
        serde_json::json!({"psp_ref": psp_ref, "counted": counted}),
    )
    .await?;
    if let Some(m) = p.milestone_id {
        // APPROVED (the webhook came before the PSP's reply was recorded, or
        // after a failure) or PAYING → PAID.
        if escrows::move_milestone(conn, m, &["APPROVED", "PAYING"], "PAID").await? {
            audit::write(conn, actor, "MILESTONE_PAID", "milestone", m, serde_json::json!({"payment_id": p.id}))
                .await?;
        }
        escrows::close_if_done(conn, p.escrow_id, actor).await?;
    }
    Ok(true)
}

/// `POST /payments/execute/{id}`: a PENDING or ERROR payment is driven
/// again through a payout job.
pub async fn redrive(conn: &mut PgConnection, id: PaymentId) -> Result<Payment> {
    let p = load(conn, id).await?.ok_or_else(|| Error::not_found(ErrorCode::NotFound, "payment"))?;
    if !matches!(p.status.as_str(), "PENDING" | "ERROR") {
        return Err(Error::problem(
            ErrorCode::PaymentNotRedrivable,
            format!("a {} payment cannot be executed again", p.status),
        ));
    }
    Ok(p)
}
