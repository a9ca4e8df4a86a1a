//! Escrows: a client funds money that a provider receives milestone by
//! milestone, against proofs, or all at once when the client approves.
//! Every transition is guarded (`UPDATE … WHERE status IN (…)`), writes an
//! escrow event and an audit row, and creates payout jobs inside the same
//! transaction, so a committed transition always has its payouts.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::users::{refuse_inactive, require_active_user};
use crate::domain::escrow::payouts::{self, PaymentKind, PaymentOut};
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{EscrowId, JobId, MilestoneId, UserId};
use crate::jobs::{JobKind, JobRow, Outcome, record};
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

pub(crate) const COLUMNS: &str = "id, client_id, provider_id, amount_total, currency, status, funded_amount, reserved_amount, paid_amount, release_conditions, deadline_at, created_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Escrow {
    pub id: EscrowId,
    pub client_id: UserId,
    pub provider_id: UserId,
    pub amount_total: Decimal,
    pub currency: String,
    pub status: String,
    pub funded_amount: Decimal,
    pub reserved_amount: Decimal,
    pub paid_amount: Decimal,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl Escrow {
    /// Deposits minus payouts PENDING, SENT or SETTLED.
    pub fn balance(&self) -> Decimal {
        self.funded_amount - self.reserved_amount
    }

    pub fn is_party(&self, who: &Principal) -> bool {
        who.user_id == self.client_id || who.user_id == self.provider_id
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EscrowOut {
    pub id: EscrowId,
    pub client_id: UserId,
    pub provider_id: UserId,
    pub amount_total: String,
    pub currency: String,
    pub status: String,
    pub funded_amount: String,
    pub paid_amount: String,
    pub balance: String,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<MilestoneOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments: Option<Vec<PaymentOut>>,
}

impl From<&Escrow> for EscrowOut {
    fn from(e: &Escrow) -> Self {
        let d = |v| display(v, &e.currency);
        EscrowOut {
            id: e.id,
            client_id: e.client_id,
            provider_id: e.provider_id,
            amount_total: d(e.amount_total),
            currency: e.currency.clone(),
            status: e.status.clone(),
            funded_amount: d(e.funded_amount),
            paid_amount: d(e.paid_amount),
            balance: d(e.balance()),
            release_conditions: e.release_conditions.clone(),
            deadline_at: e.deadline_at,
            created_at: e.created_at,
            milestones: None,
            payments: None,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Milestone {
    pub id: MilestoneId,
    pub escrow_id: EscrowId,
    pub idx: i32,
    pub label: String,
    pub amount: Decimal,
    pub proof_type: String,
    pub geofence_lat: Option<f64>,
    pub geofence_lng: Option<f64>,
    pub geofence_radius_m: Option<f64>,
    pub status: String,
}

pub(crate) const MILESTONE_COLUMNS: &str =
    "id, escrow_id, idx, label, amount, proof_type, geofence_lat, geofence_lng, geofence_radius_m, status";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeofenceIn {
    pub lat: f64,
    pub lng: f64,
    pub radius_m: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MilestoneOut {
    pub id: MilestoneId,
    pub escrow_id: EscrowId,
    pub idx: i32,
    pub label: String,
    pub amount: String,
    pub proof_type: String,
    pub geofence: Option<GeofenceIn>,
    pub status: String,
}

impl Milestone {
    pub fn geofence(&self) -> Option<GeofenceIn> {
        match (self.geofence_lat, self.geofence_lng, self.geofence_radius_m) {
            (Some(lat), Some(lng), Some(radius_m)) => Some(GeofenceIn { lat, lng, radius_m }),
            _ => None,
        }
    }

    pub fn out(&self, currency: &str) -> MilestoneOut {
        MilestoneOut {
            id: self.id,
            escrow_id: self.escrow_id,
            idx: self.idx,
            label: self.label.clone(),
            amount: display(self.amount, currency),
            proof_type: self.proof_type.clone(),
            geofence: self.geofence(),
            status: self.status.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewEscrow {
    pub client_id: UserId,
    pub provider_id: UserId,
    pub total: Money,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
}

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

pub async fn create(conn: &mut PgConnection, who: &Principal, new: &NewEscrow) -> Result<EscrowOut> {
    who.require_self_or_admin(new.client_id, &[Role::Sender])?;
    if new.client_id == new.provider_id {
        return Err(Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new("provider_id", "must differ from client_id")],
        )
        .into());
    }
    if new.deadline_at <= Utc::now() {
        return Err(Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new("deadline_at", "must be in the future")],
        )
        .into());
    }
    require_active_user(conn, new.client_id, "client_id").await?;
    require_active_user(conn, new.provider_id, "provider_id").await?;
    let e: Escrow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO escrows (id, client_id, provider_id, amount_total, currency, release_conditions, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(EscrowId::new())
    .bind(new.client_id)
    .bind(new.provider_id)
    .bind(new.total.amount())
    .bind(new.total.currency())
    .bind(&new.release_conditions)
    .bind(new.deadline_at)
    .fetch_one(&mut *conn)
    .await?;
    event(
        conn,
        e.id,
        "CREATED",
        &who.actor(),
        serde_json::json!({"amount_total": display(e.amount_total, &e.currency), "currency": e.currency}),
    )
    .await?;
    Ok((&e).into())
}

/// Loads an escrow the caller may see (parties, support, admin), locked
/// for update when `lock`; anyone else gets `ESCROW_NOT_FOUND`.
pub async fn load_for(conn: &mut PgConnection, id: EscrowId, who: &Principal, lock: bool) -> Result<Escrow> {
    let sql = format!(
        "SELECT {COLUMNS} FROM escrows WHERE id = $1 AND ($2 OR client_id = $3 OR provider_id = $3){}",
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

/// The escrow with its milestones and payments.
pub async fn get_for(conn: &mut PgConnection, id: EscrowId, who: &Principal) -> Result<EscrowOut> {
    let e = load_for(conn, id, who, false).await?;
    full(conn, &e).await
}

pub async fn full(conn: &mut PgConnection, e: &Escrow) -> Result<EscrowOut> {
    let ms = milestones(conn, e.id).await?;
    let pays = payouts::list_for_escrow(conn, e.id).await?;
    let mut out: EscrowOut = e.into();
    out.milestones = Some(ms.iter().map(|m| m.out(&e.currency)).collect());
    out.payments = Some(pays);
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct NewMilestone {
    pub idx: i32,
    pub label: String,
    pub amount: Decimal,
    pub proof_type: String,
    pub geofence: Option<GeofenceIn>,
}

pub async fn add_milestone(
    conn: &mut PgConnection,
    who: &Principal,
    escrow: EscrowId,
    new: &NewMilestone,
) -> Result<MilestoneOut> {
    let e = load_for(conn, escrow, who, true).await?;
    if !(who.is_admin() || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin adds milestones"));
    }
    if !matches!(e.status.as_str(), "DRAFT" | "FUNDED") {
        return Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("milestones can be added to a DRAFT or FUNDED escrow, not {}", e.status),
        ));
    }
    let decimals = crate::money::currencies().decimals(&e.currency);
    if new.amount.normalize().scale() > decimals {
        return Err(Problem::fields(
            ErrorCode::AmountInvalid,
            vec![FieldError::new("amount", format!("has more than {decimals} decimal places for {}", e.currency))],
        )
        .into());
    }
    let (count, sum): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(amount) FROM milestones WHERE escrow_id = $1")
            .bind(escrow)
            .fetch_one(&mut *conn)
            .await?;
    if i64::from(new.idx) != count + 1 {
        return Err(Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new(
                "idx",
                format!("milestones are numbered in sequence from 1; the next is {}", count + 1),
            )],
        )
        .into());
    }
    if sum.unwrap_or_default() + new.amount > e.amount_total {
        return Err(Error::problem(
            ErrorCode::MilestoneSumExceedsTotal,
            format!(
                "milestones would total {} of an escrow of {}",
                display(sum.unwrap_or_default() + new.amount, &e.currency),
                display(e.amount_total, &e.currency)
            ),
        ));
    }
    let g = new.geofence;
    let m: Milestone = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO milestones (id, escrow_id, idx, label, amount, proof_type, geofence_lat, geofence_lng, geofence_radius_m)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {MILESTONE_COLUMNS}"
    )))
    .bind(MilestoneId::new())
    .bind(escrow)
    .bind(new.idx)
    .bind(&new.label)
    .bind(new.amount)
    .bind(&new.proof_type)
    .bind(g.map(|g| g.lat))
    .bind(g.map(|g| g.lng))
    .bind(g.map(|g| g.radius_m))
    .fetch_one(&mut *conn)
    .await
    .on_constraint("milestones_escrow_idx_key", ErrorCode::ValidationError, "this milestone index is taken")?;
    event(
        conn,
        escrow,
        "MILESTONE_ADDED",
        &who.actor(),
        serde_json::json!({"milestone_id": m.id, "idx": m.idx, "amount": display(m.amount, &e.currency)}),
    )
    .await?;
    audit::write(
        conn,
        &who.actor(),
        "MILESTONE_CREATED",
        "milestone",
        m.id,
        serde_json::json!({"escrow_id": escrow, "idx": m.idx}),
    )
    .await?;
    Ok(m.out(&e.currency))
}

/// `escrow_deposit` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EscrowDepositV1 {
    pub escrow_id: EscrowId,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// A deposit: never over-funds; reaching the total makes a DRAFT `FUNDED`.
pub async fn deposit(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: Option<JobId>,
    event_id: Option<&str>,
    cmd: &EscrowDepositV1,
) -> Result<Escrow> {
    // A verified PSP event (`funding.succeeded`) names any escrow.
    let e = if event_id.is_some() {
        load(conn, cmd.escrow_id).await?
    } else {
        load_for(conn, cmd.escrow_id, who, true).await?
    };
    if !(who.is_admin() || who.role == Role::Psp || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin deposits"));
    }
    // A client's deposit needs both parties active; a PSP funding is the
    // PSP's fact (the money has arrived) and is recorded whatever.
    if event_id.is_none() {
        require_parties_active(conn, &e).await?;
    }
    if !matches!(e.status.as_str(), "DRAFT" | "FUNDED") {
        return Err(Error::problem(ErrorCode::EscrowNotActive, format!("the escrow is {}", e.status)));
    }
    let decimals = crate::money::currencies().decimals(&e.currency);
    if cmd.amount <= Decimal::ZERO || cmd.amount.normalize().scale() > decimals {
        return Err(Error::problem(
            ErrorCode::AmountInvalid,
            format!("a deposit must be positive with at most {decimals} decimals"),
        ));
    }
    let after: Option<Escrow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE escrows SET funded_amount = funded_amount + $2,
                status = CASE WHEN funded_amount + $2 = amount_total THEN 'FUNDED' ELSE status END, updated_at = now()
          WHERE id = $1 AND (status || '') IN ('DRAFT', 'FUNDED') AND funded_amount + $2 <= amount_total RETURNING {COLUMNS}"
    )))
    .bind(e.id)
    .bind(cmd.amount)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(after) = after else {
        return Err(Error::problem(
            ErrorCode::EscrowOverfunded,
            format!(
                "a deposit of {} would take the escrow past its total of {} (funded {})",
                display(cmd.amount, &e.currency),
                display(e.amount_total, &e.currency),
                display(e.funded_amount, &e.currency)
            ),
        ));
    };
    sqlx::query(
        "INSERT INTO escrow_deposits (id, escrow_id, amount, source, job_id, event_id) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(e.id)
    .bind(cmd.amount)
    .bind(if event_id.is_some() { "psp" } else { "api" })
    .bind(job_id)
    .bind(event_id)
    .execute(&mut *conn)
    .await?;
    let actor = who.actor();
    event(conn, e.id, "DEPOSITED", &actor, serde_json::json!({"amount": display(cmd.amount, &e.currency), "funded_amount": display(after.funded_amount, &e.currency), "event_id": event_id})).await?;
    if e.status == "DRAFT" && after.status == "FUNDED" {
        event(conn, e.id, "FUNDED", &actor, serde_json::json!({"from": "DRAFT", "to": "FUNDED"})).await?;
    }
    Ok(after)
}

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
        "UPDATE escrows SET status = $3, updated_at = now() WHERE id = $1 AND (status || '') = ANY($2) RETURNING {COLUMNS}"
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

pub async fn transition(
    conn: &mut PgConnection,
    who: &Principal,
    job: &JobRow,
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
    let after = match cmd.action {
        TransitionAction::MarkDelivered => {
            if !(who.is_admin() || who.user_id == e.provider_id) {
                return Err(Error::problem(
                    ErrorCode::Forbidden,
                    "only the provider or an admin marks an escrow delivered",
                ));
            }
            let after = set_status(conn, &e, &["FUNDED"], "RELEASABLE").await?;
            event(conn, e.id, "RELEASABLE", &actor, note).await?;
            after
        }
        TransitionAction::ClientApprove => {
            if !(who.is_admin() || who.user_id == e.client_id) {
                return Err(Error::problem(ErrorCode::Forbidden, "only the client or an admin approves"));
            }
            release(conn, &e, job, &actor, "client_approve").await?
        }
        TransitionAction::ClientReject => {
            if !(who.is_admin() || who.user_id == e.client_id) {
                return Err(Error::problem(ErrorCode::Forbidden, "only the client or an admin rejects"));
            }
            if e.status == "DRAFT" {
                let after = set_status(conn, &e, &["DRAFT"], "CANCELLED").await?;
                event(conn, e.id, "CANCELLED", &actor, note).await?;
                refund_balance(conn, &after, job).await?;
                after
            } else {
                let after = set_status(conn, &e, &["FUNDED", "RELEASABLE"], "REFUNDED").await?;
                event(conn, e.id, "REFUNDED", &actor, note).await?;
                refund_balance(conn, &after, job).await?;
                after
            }
        }
        TransitionAction::CheckDeadline => {
            who.require(&[Role::Admin])?;
            if !deadline_due(conn, &e).await? {
                e
            } else {
                // A refused release raises an alert for this escrow, which
                // survives the refusal: only the release is rolled back.
                sqlx::query("SAVEPOINT deadline_release").execute(&mut *conn).await?;
                match release(conn, &e, job, &actor, "deadline").await {
                    Ok(after) => after,
                    Err(Error::Problem(p)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT deadline_release").execute(&mut *conn).await?;
                        return refuse_deadline(conn, &e, job, &actor, p).await;
                    }
                    Err(other) => return Err(other),
                }
            }
        }
    };
    let after = load(conn, after.id).await?;
    Ok(Outcome::Succeeded(serde_json::to_value(full(conn, &after).await?)?))
}

async fn refuse_deadline(
    conn: &mut PgConnection,
    e: &Escrow,
    job: &JobRow,
    actor: &str,
    p: Problem,
) -> Result<Outcome> {
    let data = serde_json::json!({"escrow_id": e.id, "job_id": job.id, "code": p.code.as_str(), "detail": p.detail});
    alerts::raise(conn, "ESCROW_DEADLINE_REFUSED", "the deadline release of an escrow was refused", None, data.clone())
        .await?;
    audit::write(conn, actor, "ESCROW_TRANSITION_REFUSED", "escrow", e.id, data).await?;
    Ok(Outcome::Refused(p))
}

/// Past its deadline, FUNDED or RELEASABLE, and no milestone in review.
async fn deadline_due(conn: &mut PgConnection, e: &Escrow) -> Result<bool> {
    if !matches!(e.status.as_str(), "FUNDED" | "RELEASABLE") || e.deadline_at > Utc::now() {
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

/// FUNDED|RELEASABLE → RELEASED, in this transaction with its payout jobs:
/// the client's approval (or the deadline, acting as it) approves every
/// unpaid milestone and pays it out; then whatever balance remains is paid
/// to the provider as one RELEASE payout. A released escrow ends with
/// balance 0: no money is stranded above the milestones.
async fn release(conn: &mut PgConnection, e: &Escrow, job: &JobRow, actor: &str, why: &str) -> Result<Escrow> {
    require_parties_active(conn, e).await?;
    let after = set_status(conn, e, &["FUNDED", "RELEASABLE"], "RELEASED").await?;
    event(conn, e.id, "RELEASED", actor, serde_json::json!({"by": why})).await?;
    for m in milestones(conn, e.id).await? {
        if matches!(m.status.as_str(), "WAITING" | "PENDING_REVIEW") {
            transition_milestone(conn, &m, &["WAITING", "PENDING_REVIEW"], "APPROVED").await?;
            audit::write(
                conn,
                actor,
                "MILESTONE_APPROVED",
                "milestone",
                m.id,
                serde_json::json!({"escrow_id": e.id, "by": why}),
            )
            .await?;
        }
        if matches!(m.status.as_str(), "WAITING" | "PENDING_REVIEW" | "APPROVED") {
            payouts::enqueue(conn, job, &after, PaymentKind::Milestone, Some(&m), m.amount).await?;
        }
    }
    let after = load(conn, e.id).await?;
    if after.balance() > Decimal::ZERO {
        payouts::enqueue(conn, job, &after, PaymentKind::Release, None, after.balance()).await?;
    }
    Ok(after)
}

/// Refunds what was deposited and not reserved by a payout.
async fn refund_balance(conn: &mut PgConnection, e: &Escrow, job: &JobRow) -> Result<()> {
    if e.balance() > Decimal::ZERO {
        payouts::enqueue(conn, job, e, PaymentKind::Refund, None, e.balance()).await?;
    }
    Ok(())
}

/// The `escrow_deadlines` cron job: one `check_deadline` job per escrow
/// past its deadline with nothing in review, so a refusal for one escrow
/// (with its alert) never holds back the others. Each job is keyed by
/// escrow and hour: a refused escrow is tried (and alerted) again once an
/// hour, not on every tick. Returns how many jobs it made.
pub async fn release_due(conn: &mut PgConnection, job: &JobRow) -> Result<i64> {
    let due: Vec<EscrowId> = sqlx::query_scalar(
        "SELECT id FROM escrows e WHERE status IN ('FUNDED', 'RELEASABLE') AND deadline_at <= now()
            AND NOT EXISTS (SELECT 1 FROM milestones m WHERE m.escrow_id = e.id AND m.status = 'PENDING_REVIEW')
          ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let hour = Utc::now().format("%Y-%m-%dT%H");
    let mut made = 0;
    for id in due {
        let cmd = EscrowTransitionV1 { escrow_id: id, action: TransitionAction::CheckDeadline, note: None };
        record::insert_child(conn, job, JobKind::EscrowTransition, &cmd, format!("deadline:{id}:{hour}")).await?;
        made += 1;
    }
    Ok(made)
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
