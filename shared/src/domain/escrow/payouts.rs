//! Payouts in three phases, never a network call inside a transaction:
//! 1. (transaction) create or reuse the payment under its deterministic key
//!    and reserve its amount from the escrow balance with a guarded UPDATE;
//!    the rule that wants it paid asks for its `payout` job (a follow-up);
//! 2. (no transaction) call the PSP under the drive's idempotency key; a
//!    re-drive first asks the PSP about the payment's earlier drives and
//!    adopts one it holds as accepted or paid instead of paying again
//!    ([`call`]);
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

use crate::domain::escrow::drives::{self, PspSaid};
use crate::domain::escrow::model::{Escrow, Milestone, PAYMENT_COLUMNS, Payment, PaymentKind, PaymentOut};
use crate::domain::escrow::{balance, limits, settlement, state};
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{JobId, PayeeId, PaymentId};
use crate::jobs::{FollowUp, JobKind, Outcome};
use crate::money::display;
use crate::principal::Principal;
use crate::psp::client::{PayoutRequest, PspClient, PspError};

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
/// usage payment). It becomes a new drive (`redrives` + 1), with a PSP
/// idempotency key of its own and no `psp_ref` yet.
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
        "UPDATE payments SET status = 'PENDING', error_reason = NULL, redrives = redrives + 1, drive = redrives + 1,
                psp_ref = NULL, updated_at = now(), limits_day = CASE WHEN payee_id IS NULL THEN NULL ELSE $2::date END
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
    /// The PSP's idempotency key: the drive's, stable across retries of it.
    pub idempotency_key: String,
    pub amount: String,
    pub currency: String,
    pub recipient: String,
    pub kind: String,
    /// The drive this call is (`None` in states written before drives
    /// were numbered: the payment's current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive: Option<i32>,
    /// The payment's earlier drives, asked about before this one is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierDrive>,
}

/// A drive made before the one being sent, by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierDrive {
    pub drive: i32,
    pub idempotency_key: String,
}

/// The PSP's answer as the second transaction records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CallReply {
    Accepted {
        psp_ref: String,
    },
    Refused {
        code: String,
        message: String,
    },
    /// An earlier drive the PSP holds as accepted (or paid): it is the
    /// payment's payout, so this drive was never sent.
    Adopted {
        drive: i32,
        psp_ref: String,
        settled: bool,
    },
}

/// Phase 2, outside any transaction: before a re-drive pays, the PSP is
/// asked about each earlier drive, and one it holds as accepted or paid is
/// adopted instead (one payment, at most one payout the PSP pays); only
/// when each earlier drive failed, was refused or never reached it is this
/// drive sent. An answer that decides nothing (a transport error, `409`,
/// `5xx`, `401`/`403`) is an `Err`: the job tries again later with the same
/// key and the payment stays PENDING with its reservation.
pub async fn call(psp: &dyn PspClient, state: &CallState) -> std::result::Result<CallReply, PspError> {
    if !state.earlier.is_empty()
        && let Some(held) = psp.payout_status(&state.idempotency_key).await?
        && let (true, Some(psp_ref)) = (held.status == "accepted", held.psp_ref)
    {
        // This drive reached the PSP already (a run that died before
        // recording the answer): it is the one, whatever came before.
        return Ok(CallReply::Accepted { psp_ref });
    }
    for earlier in &state.earlier {
        let Some(held) = psp.payout_status(&earlier.idempotency_key).await? else { continue };
        let failed = held.status != "accepted" || held.outcome.as_deref() == Some("failed");
        if let (false, Some(psp_ref)) = (failed, held.psp_ref) {
            let settled = held.outcome.as_deref() == Some("settled");
            return Ok(CallReply::Adopted { drive: earlier.drive, psp_ref, settled });
        }
    }
    let req = PayoutRequest {
        payment_id: state.payment_id.to_string(),
        idempotency_key: state.idempotency_key.clone(),
        amount: state.amount.clone(),
        currency: state.currency.clone(),
        payee_ref: state.recipient.clone(),
        kind: state.kind.clone(),
    };
    match psp.payout(&req).await {
        Ok(res) => Ok(CallReply::Accepted { psp_ref: res.psp_ref }),
        Err(PspError::Refused { code, message }) => Ok(CallReply::Refused { code, message }),
        Err(undecided) => Err(undecided),
    }
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
    let drive: i32 = sqlx::query_scalar(
        "UPDATE payments SET attempts = attempts + 1, updated_at = now() WHERE id = $1 RETURNING drive",
    )
    .bind(p.id)
    .fetch_one(&mut *conn)
    .await?;
    drives::open(conn, p.id, drive).await?;
    let earlier = drives::earlier_keys(p.id, drive)
        .into_iter()
        .enumerate()
        .map(|(n, idempotency_key)| EarlierDrive { drive: n as i32, idempotency_key })
        .collect();
    Ok(Outcome::call(serde_json::to_value(CallState {
        idempotency_key: drives::key(p.id, drive),
        payment_id: p.id,
        amount: display(p.amount, &p.currency),
        currency: p.currency.clone(),
        recipient: p.recipient.clone(),
        kind: p.kind.to_lowercase(),
        drive: Some(drive),
        earlier,
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
    let drive = call.drive.unwrap_or(p.drive);
    if p.status != "PENDING" {
        // A webhook got here first (settled or failed): never move back;
        // keep what the PSP said of the drive.
        if let CallReply::Accepted { psp_ref } = reply {
            drives::record(conn, p.id, drive, Some(psp_ref), PspSaid::Accepted).await?;
        }
        return Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?));
    }
    let actor = who.actor();
    match reply {
        CallReply::Accepted { psp_ref } => {
            drives::record(conn, p.id, drive, Some(psp_ref), PspSaid::Accepted).await?;
            let p = mark_sent(conn, &p, psp_ref, &actor).await?;
            // The PSP may have paid an earlier drive it had reported
            // failed, after this one's lookup: now both are paid.
            for other in drives::settled_others(conn, p.id, drive).await? {
                double_payout(conn, &p, &other).await?;
            }
            Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?))
        }
        CallReply::Refused { code, message } => {
            let reason = format!("{code}: {message}");
            drives::record(conn, p.id, drive, None, PspSaid::Refused).await?;
            settlement::fail(conn, &p, &reason, &actor).await?;
            Ok(Outcome::refused(Problem::new(ErrorCode::PayoutFailed, format!("the PSP refused the payout: {reason}"))))
        }
        CallReply::Adopted { drive: adopted, psp_ref, settled } => {
            adopt(conn, &p, drive, *adopted, psp_ref, *settled, &actor).await?;
            let p = state::payment(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
            Ok(Outcome::succeeded(serde_json::to_value(PaymentOut::from(&p))?))
        }
    }
}

/// PENDING → SENT with the PSP's reference of the current drive; its
/// milestone APPROVED → PAYING (a milestone elsewhere is not moved: the
/// payment's own state is the PSP's fact and is recorded).
async fn mark_sent(conn: &mut PgConnection, p: &Payment, psp_ref: &str, actor: &str) -> Result<Payment> {
    sqlx::query("UPDATE payments SET status = 'SENT', psp_ref = $2, updated_at = now() WHERE id = $1")
        .bind(p.id)
        .bind(psp_ref)
        .execute(&mut *conn)
        .await?;
    if let Some(m) = p.milestone_id {
        state::move_milestone(conn, m, &["APPROVED"], "PAYING").await?;
    }
    audit::write(conn, actor, "PAYMENT_SENT", "payment", p.id, serde_json::json!({"psp_ref": psp_ref})).await?;
    state::payment(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))
}

/// An earlier drive the PSP holds as accepted or paid becomes the
/// payment's current drive (the one about to be sent is never sent):
/// `SENT`, or `SETTLED` when the PSP says it paid.
async fn adopt(
    conn: &mut PgConnection,
    p: &Payment,
    skipped: i32,
    adopted: i32,
    psp_ref: &str,
    settled: bool,
    actor: &str,
) -> Result<()> {
    drives::record(conn, p.id, skipped, None, PspSaid::NotSent).await?;
    let said = if settled { PspSaid::Settled } else { PspSaid::Accepted };
    drives::record(conn, p.id, adopted, Some(psp_ref), said).await?;
    sqlx::query("UPDATE payments SET drive = $2, updated_at = now() WHERE id = $1")
        .bind(p.id)
        .bind(adopted)
        .execute(&mut *conn)
        .await?;
    let data = serde_json::json!({
        "adopted_drive": adopted, "idempotency_key": drives::key(p.id, adopted), "psp_ref": psp_ref,
        "not_sent_drive": skipped, "settled": settled,
    });
    audit::write(conn, actor, "PAYMENT_DRIVE_ADOPTED", "payment", p.id, data).await?;
    let p = mark_sent(conn, p, psp_ref, actor).await?;
    if settled {
        settlement::settle(conn, &p, Some(psp_ref), actor).await?;
    }
    Ok(())
}

/// Two drives of one payment paid: the PSP paid `other` besides the
/// current drive. Nothing moves (the current drive is the payment's);
/// ops get `PSP_DOUBLE_PAYOUT` with both drives, to claw one back.
pub async fn double_payout(conn: &mut PgConnection, p: &Payment, other: &drives::Drive) -> Result<()> {
    let data = serde_json::json!({
        "payment_id": p.id, "escrow_id": p.escrow_id, "amount": display(p.amount, &p.currency),
        "currency": p.currency, "status": p.status, "current_drive": drives::current(p), "other_drive": other,
    });
    let why = "the PSP paid two drives of one payment: one payout must be recovered";
    alerts::raise(conn, "PSP_DOUBLE_PAYOUT", why, None, data.clone()).await?;
    audit::write(conn, "psp", "PAYMENT_DOUBLE_PAYOUT", "payment", p.id, data).await
}

/// What the PSP said of a drive other than the payment's current one
/// (`drives::named_by`). A failure of it moves nothing. A settlement of it:
/// while the current drive failed too, it is the one payout the PSP made,
/// recorded as a late settlement (the drive becomes current); while the
/// current drive is SENT or SETTLED, two drives paid: `PSP_DOUBLE_PAYOUT`,
/// nothing moves; while the current drive is still PENDING, it is only
/// recorded: the drive's own call adopts it, or its acceptance raises the
/// alert. Answers whether the payment moved.
pub async fn other_drive_said(
    conn: &mut PgConnection,
    p: &Payment,
    other: &drives::Drive,
    settled: bool,
    actor: &str,
) -> Result<bool> {
    let said = if settled { PspSaid::Settled } else { PspSaid::Failed };
    if let Some(n) = other.drive {
        drives::record(conn, p.id, n, other.psp_ref.as_deref(), said).await?;
    }
    let data = serde_json::json!({"current_drive": drives::current(p), "other_drive": other, "said": said.as_str()});
    if !settled {
        audit::write(conn, actor, "PAYMENT_OTHER_DRIVE_FAILED", "payment", p.id, data).await?;
        return Ok(false);
    }
    match p.status.as_str() {
        "ERROR" => {
            if let Some(n) = other.drive {
                sqlx::query("UPDATE payments SET drive = $2, updated_at = now() WHERE id = $1")
                    .bind(p.id)
                    .bind(n)
                    .execute(&mut *conn)
                    .await?;
            }
            audit::write(conn, actor, "PAYMENT_DRIVE_ADOPTED", "payment", p.id, data).await?;
            let p = state::payment(conn, p.id).await?.ok_or_else(|| Error::internal("payment vanished"))?;
            settlement::settle(conn, &p, other.psp_ref.as_deref(), actor).await
        }
        "SENT" | "SETTLED" => {
            double_payout(conn, p, other).await?;
            Ok(false)
        }
        _ => {
            audit::write(conn, actor, "PAYMENT_OTHER_DRIVE_SETTLED", "payment", p.id, data).await?;
            Ok(false)
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
