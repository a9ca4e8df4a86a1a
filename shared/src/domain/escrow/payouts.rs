//! Payouts in three phases, never a network call inside a transaction:
//! 1. (transaction) create or reuse the payment under its deterministic key
//!    and reserve its amount from the escrow balance with a guarded UPDATE;
//!    the rule that wants it paid asks for its `payout` job (a follow-up);
//! 2. (no transaction) call the PSP with the payment id as idempotency key;
//! 3. (transaction) record `SENT` with the PSP reference, or `ERROR` with the
//!    PSP's reason, releasing the reservation.
//!
//! Settlement arrives later by webhook (`settlement`). The escrow balance
//! counts PENDING, SENT and SETTLED payments, so concurrent payouts never
//! overdraw it. A usage payment may only take the balance that milestones
//! do not hold, and holds its share of its payee's limits while it is
//! PENDING, SENT or SETTLED (`limits_day` says on which day it counted).

use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::escrow::model::{Escrow, Milestone, PAYMENT_COLUMNS, Payment, PaymentKind, PaymentOut};
use crate::domain::escrow::{balance, limits, settlement, state};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{JobId, PayeeId, PaymentId};
use crate::jobs::{FollowUp, JobKind, Outcome};
use crate::money::display;
use crate::principal::Principal;

/// The `payout` job payload, version 1: the payment to drive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayoutV1 {
    pub payment_id: PaymentId,
    /// A re-drive (`POST /payments/execute/{id}`) names the failed drive it
    /// drives again (the payment's `redrives` when it was asked): only that
    /// drive, once. A payout job without it never drives an ERROR payment
    /// again: a PSP failure is final until an admin asks, whatever the
    /// job's own retries after a transport error find.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_of: Option<i32>,
}

impl PayoutV1 {
    /// The payout job of a payment as it stands.
    pub fn of(p: &Payment) -> Self {
        PayoutV1 { payment_id: p.id, redrive_of: (p.status == "ERROR").then_some(p.redrives) }
    }
}

/// Parties of the escrow, support and admin see a payment.
pub async fn get_for(conn: &mut PgConnection, id: PaymentId, who: &Principal) -> Result<PaymentOut> {
    let p: Option<Payment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments p WHERE id = $1 AND ($2 OR EXISTS (SELECT 1 FROM escrows e WHERE e.id = p.escrow_id AND (e.client_id = $3 OR e.provider_id = $3)))"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    p.as_ref().map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::NotFound, "payment"))
}

/// What a new payment is for: its kind, milestone or payee, and amount.
pub struct NewPayment<'a> {
    pub kind: PaymentKind,
    pub milestone: Option<&'a Milestone>,
    pub payee: Option<(PayeeId, &'a str)>,
    pub amount: Decimal,
}

impl NewPayment<'_> {
    fn recipient(&self, e: &Escrow) -> String {
        match (self.kind, self.payee) {
            (_, Some((_, payee_ref))) => payee_ref.to_string(),
            (PaymentKind::Refund, _) => format!("user:{}", e.client_id),
            _ => format!("user:{}", e.provider_id),
        }
    }
}

/// Phase 1 for a new payment: creates it PENDING with its reservation, or
/// finds the one its key already names.
pub async fn create_reserved(conn: &mut PgConnection, e: &Escrow, new: &NewPayment<'_>, key: &str) -> Result<Payment> {
    if let Some(existing) = sqlx::query_as::<_, Payment>(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE idempotency_key = $1 FOR UPDATE"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(existing);
    }
    match new.kind {
        PaymentKind::Usage => balance::reserve_unheld(conn, e.id, new.amount).await?,
        _ => balance::reserve(conn, e.id, new.amount).await?,
    }
    let p: Payment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO payments (id, escrow_id, milestone_id, payee_id, kind, recipient, amount, currency, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {PAYMENT_COLUMNS}"
    )))
    .bind(PaymentId::new())
    .bind(e.id)
    .bind(new.milestone.map(|m| m.id))
    .bind(new.payee.map(|p| p.0))
    .bind(new.kind.as_str())
    .bind(new.recipient(e))
    .bind(new.amount)
    .bind(&e.currency)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let data = serde_json::json!({
        "escrow_id": e.id, "kind": p.kind, "amount": display(new.amount, &e.currency), "milestone_id": p.milestone_id,
    });
    audit::write(conn, "system", "PAYMENT_CREATED", "payment", p.id, data).await?;
    Ok(p)
}

/// Creates the payment (phase 1) inside the caller's transaction and asks
/// for its payout job (created by the executor in the same transaction,
/// pushed once it commits). A payment its key already names is reused: an
/// ERROR one takes its reservation again and is driven again, a live one
/// is left to the job driving it (no follow-up).
pub async fn enqueue(
    conn: &mut PgConnection,
    parent: JobId,
    e: &Escrow,
    kind: PaymentKind,
    milestone: Option<&Milestone>,
    amount: Decimal,
) -> Result<(Payment, Option<FollowUp>)> {
    let key = match (kind, milestone) {
        (PaymentKind::Milestone, Some(m)) => format!("milestone:{}", m.id),
        (PaymentKind::Release, _) => format!("release:{}", e.id),
        (PaymentKind::Refund, _) => format!("refund:{}", e.id),
        _ => format!("{}:{parent}", kind.as_str().to_lowercase()),
    };
    let new = NewPayment { kind, milestone, payee: None, amount };
    let mut p = create_reserved(conn, e, &new, &key).await?;
    if p.status == "ERROR" {
        revive(conn, &p).await?;
        p = state::payment(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
    }
    let job = if p.status == "PENDING" { Some(payout_job(&p)?) } else { None };
    Ok((p, job))
}

/// ERROR → PENDING for a new drive: the payment takes its share of its
/// payee's limits again first (refused with the limit's code when they are
/// full), then its reservation (the balance not held for milestones, for a
/// usage payment). A new PSP idempotency key follows from `redrives`.
async fn revive(conn: &mut PgConnection, p: &Payment) -> Result<()> {
    let today = Utc::now().date_naive();
    if let Some(payee) = p.payee_id {
        let payee = limits::load_locked(conn, payee).await?;
        limits::take(conn, &payee, p.amount, today).await?;
    }
    if p.is_usage() {
        balance::reserve_unheld(conn, p.escrow_id, p.amount).await?;
    } else {
        balance::reserve(conn, p.escrow_id, p.amount).await?;
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

/// The payout job of a payment, keyed by payment and drive: a re-run of
/// the parent finds the same child.
pub fn payout_job(p: &Payment) -> Result<FollowUp> {
    FollowUp::new(JobKind::Payout, &PayoutV1::of(p), format!("payout:{}:{}", p.id, p.attempts))
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
/// reserved again and driven when the job is the re-drive of that very
/// drive, and otherwise stays as the PSP left it; SENT and SETTLED ones
/// are done.
pub async fn prepare(conn: &mut PgConnection, cmd: &PayoutV1) -> Result<Outcome> {
    let Some(p) = state::payment(conn, cmd.payment_id).await? else {
        return Err(Error::not_found(ErrorCode::NotFound, "payment"));
    };
    match p.status.as_str() {
        "SENT" | "SETTLED" => return Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?)),
        "ERROR" if cmd.redrive_of == Some(p.redrives) => revive(conn, &p).await?,
        "ERROR" => {
            let why = format!(
                "the payout failed ({}); an admin may drive it again",
                p.error_reason.as_deref().unwrap_or("PSP_FAILED")
            );
            return Ok(Outcome::refused(Problem::new(ErrorCode::PayoutFailed, why)));
        }
        _ => {}
    }
    let redrives: i32 = sqlx::query_scalar(
        "UPDATE payments SET attempts = attempts + 1, updated_at = now() WHERE id = $1 RETURNING redrives",
    )
    .bind(p.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Outcome::call(serde_json::to_value(CallState {
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
    call: &CallState,
    reply: &CallReply,
) -> Result<Outcome> {
    let Some(p) = state::payment(conn, call.payment_id).await? else {
        return Err(Error::not_found(ErrorCode::NotFound, "payment"));
    };
    if p.status != "PENDING" {
        // A webhook got here first (settled or failed): never move back.
        return Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?));
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
                state::move_milestone(conn, m, &["APPROVED"], "PAYING").await?;
            }
            let data = serde_json::json!({"psp_ref": psp_ref});
            audit::write(conn, &who.actor(), "PAYMENT_SENT", "payment", p.id, data).await?;
            let p = state::payment(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
            Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?))
        }
        CallReply::Refused { code, message } => {
            let reason = format!("{code}: {message}");
            settlement::fail(conn, &p, &reason, &who.actor()).await?;
            Ok(Outcome::refused(Problem::new(ErrorCode::PayoutFailed, format!("the PSP refused the payout: {reason}"))))
        }
    }
}

/// `POST /payments/execute/{id}`: a PENDING or ERROR payment is driven
/// again through a payout job.
pub async fn redrive(conn: &mut PgConnection, id: PaymentId) -> Result<Payment> {
    let p = state::payment(conn, id).await?.ok_or_else(|| Error::not_found(ErrorCode::NotFound, "payment"))?;
    if !matches!(p.status.as_str(), "PENDING" | "ERROR") {
        return Err(Error::problem(
            ErrorCode::PaymentNotRedrivable,
            format!("a {} payment cannot be executed again", p.status),
        ));
    }
    Ok(p)
}
