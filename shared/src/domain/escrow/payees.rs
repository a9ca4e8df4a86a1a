//! Usage payees: an escrow's client allows payee references with optional
//! daily and total limits, then spends to them (job `usage_spend`). The day
//! is the UTC calendar date and the counter carries its date, so a late or
//! missed reset can never allow more than the limit.

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::escrow::escrows::{self};
use crate::domain::escrow::payouts::{self, PaymentKind};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{EscrowId, PayeeId};
use crate::jobs::{JobRow, Outcome};
use crate::money::display;
use crate::principal::{Principal, Role};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payee {
    pub id: PayeeId,
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    pub label: String,
    pub daily_limit: Option<Decimal>,
    pub total_limit: Option<Decimal>,
    pub spent_day: Option<NaiveDate>,
    pub spent_today: Decimal,
    pub spent_total: Decimal,
}

const COLUMNS: &str = "id, escrow_id, payee_ref, label, daily_limit, total_limit, spent_day, spent_today, spent_total";

#[derive(Debug, Clone, Serialize)]
pub struct PayeeOut {
    pub id: PayeeId,
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    pub label: String,
    pub daily_limit: Option<String>,
    pub total_limit: Option<String>,
    pub spent_today: String,
    pub spent_total: String,
}

impl Payee {
    /// What counts for today: a counter from another day counts as zero.
    pub fn spent_on(&self, day: NaiveDate) -> Decimal {
        if self.spent_day == Some(day) { self.spent_today } else { Decimal::ZERO }
    }

    fn out(&self, currency: &str) -> PayeeOut {
        let d = |v| display(v, currency);
        PayeeOut {
            id: self.id,
            escrow_id: self.escrow_id,
            payee_ref: self.payee_ref.clone(),
            label: self.label.clone(),
            daily_limit: self.daily_limit.map(d),
            total_limit: self.total_limit.map(d),
            spent_today: d(self.spent_on(Utc::now().date_naive())),
            spent_total: d(self.spent_total),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewPayee {
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    pub label: String,
    pub daily_limit: Option<Decimal>,
    pub total_limit: Option<Decimal>,
}

pub async fn allow(conn: &mut PgConnection, who: &Principal, new: &NewPayee) -> Result<PayeeOut> {
    let e = escrows::load_for(conn, new.escrow_id, who, true).await?;
    if !(who.is_admin() || who.user_id == e.client_id) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin allows payees"));
    }
    // Limits are in the escrow's currency and its minor unit (no cents in XOF).
    let decimals = crate::money::currencies().decimals(&e.currency);
    let too_fine: Vec<FieldError> = [("daily_limit", new.daily_limit), ("total_limit", new.total_limit)]
        .into_iter()
        .filter(|(_, limit)| limit.is_some_and(|l| l.normalize().scale() > decimals))
        .map(|(field, _)| FieldError::new(field, format!("has more than {decimals} decimal places for {}", e.currency)))
        .collect();
    if !too_fine.is_empty() {
        return Err(Problem::fields(ErrorCode::AmountInvalid, too_fine).into());
    }
    let p: Payee = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO allowed_payees (id, escrow_id, payee_ref, label, daily_limit, total_limit) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(PayeeId::new())
    .bind(e.id)
    .bind(&new.payee_ref)
    .bind(&new.label)
    .bind(new.daily_limit)
    .bind(new.total_limit)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("allowed_payees_ref_key", ErrorCode::PayeeAlreadyAllowed, "this payee is already allowed on the escrow")?;
    audit::write(
        conn,
        &who.actor(),
        "PAYEE_ALLOWED",
        "escrow",
        e.id,
        serde_json::json!({"payee_id": p.id, "payee_ref": p.payee_ref}),
    )
    .await?;
    Ok(p.out(&e.currency))
}

/// A payee row, locked.
pub(crate) async fn load_locked(conn: &mut PgConnection, id: PayeeId) -> Result<Payee> {
    let p: Option<Payee> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM allowed_payees WHERE id = $1 FOR UPDATE")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    p.ok_or_else(|| Error::internal(format!("payee {id} vanished")))
}

/// Takes `amount` of a payee's limits on `day`: refused with the limit's
/// code when it would pass it (reaching it exactly is allowed). The guard
/// repeats the checks in the statement itself: a counter from an earlier
/// day counts as zero, and CHECKs on the table back it up.
pub(crate) async fn take_limits(conn: &mut PgConnection, payee: &Payee, amount: Decimal, day: NaiveDate) -> Result<()> {
    if payee.daily_limit.is_some_and(|limit| payee.spent_on(day) + amount > limit) {
        return Err(Error::problem(ErrorCode::DailyLimitReached, "this spend would pass the payee's daily limit"));
    }
    if payee.total_limit.is_some_and(|limit| payee.spent_total + amount > limit) {
        return Err(Error::problem(ErrorCode::TotalLimitReached, "this spend would pass the payee's total limit"));
    }
    let done = sqlx::query(
        "UPDATE allowed_payees SET
            spent_today = CASE WHEN spent_day = $3 THEN spent_today ELSE 0 END + $2,
            spent_day = $3, spent_total = spent_total + $2
          WHERE id = $1
            AND (daily_limit IS NULL OR CASE WHEN spent_day = $3 THEN spent_today ELSE 0 END + $2 <= daily_limit)
            AND (total_limit IS NULL OR spent_total + $2 <= total_limit)",
    )
    .bind(payee.id)
    .bind(amount)
    .bind(day)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::problem(ErrorCode::DailyLimitReached, "this spend would pass the payee's limits"));
    }
    Ok(())
}

/// Gives back what a payment took on `day`: the all-time total always, the
/// day counter only while it still counts that day.
pub(crate) async fn give_back_limits(
    conn: &mut PgConnection,
    payee: PayeeId,
    amount: Decimal,
    day: NaiveDate,
) -> Result<()> {
    sqlx::query(
        "UPDATE allowed_payees SET spent_total = greatest(spent_total - $2, 0),
                spent_today = CASE WHEN spent_day = $3 THEN greatest(spent_today - $2, 0) ELSE spent_today END
          WHERE id = $1",
    )
    .bind(payee)
    .bind(amount)
    .bind(day)
    .execute(conn)
    .await?;
    Ok(())
}

/// The `usage_spend` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSpendV1 {
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub note: Option<String>,
}

pub async fn spend(conn: &mut PgConnection, who: &Principal, job: &JobRow, cmd: &UsageSpendV1) -> Result<Outcome> {
    let e = escrows::load_for(conn, cmd.escrow_id, who, true).await?;
    if !(who.is_admin() || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin spends"));
    }
    escrows::require_parties_active(conn, &e).await?;
    if !matches!(e.status.as_str(), "FUNDED" | "RELEASABLE") {
        return Err(Error::problem(ErrorCode::EscrowNotActive, format!("the escrow is {}", e.status)));
    }
    let decimals = crate::money::currencies().decimals(&e.currency);
    if cmd.amount <= Decimal::ZERO || cmd.amount.normalize().scale() > decimals {
        return Err(Error::problem(
            ErrorCode::AmountInvalid,
            format!("the amount must be positive with at most {decimals} decimals"),
        ));
    }
    let payee: Option<Payee> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM allowed_payees WHERE escrow_id = $1 AND payee_ref = $2 FOR UPDATE"
    )))
    .bind(e.id)
    .bind(&cmd.payee_ref)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(payee) = payee else {
        return Err(Error::problem(ErrorCode::PayeeNotAllowed, "this payee is not allowed on the escrow"));
    };
    let today = Utc::now().date_naive();
    take_limits(conn, &payee, cmd.amount, today).await?;
    let p = payouts::create_reserved(
        conn,
        &e,
        PaymentKind::Usage,
        None,
        Some((payee.id, &payee.payee_ref)),
        cmd.amount,
        &format!("usage:{}", job.id),
    )
    .await?;
    // The payment holds its share of the limits, counted on this day.
    sqlx::query("UPDATE payments SET limits_day = $2 WHERE id = $1").bind(p.id).bind(today).execute(&mut *conn).await?;
    payouts::enqueue_payout(conn, job, &p).await?;
    audit::write(conn, &who.actor(), "USAGE_SPENT", "escrow", e.id, serde_json::json!({
        "payment_id": p.id, "payee_ref": payee.payee_ref, "amount": display(cmd.amount, &e.currency), "note": cmd.note,
    })).await?;
    Ok(Outcome::Succeeded(serde_json::json!({
        "payment_id": p.id, "escrow_id": e.id, "amount": display(p.amount, &p.currency), "status": p.status,
        "payee_ref": payee.payee_ref, "href": format!("/payments/{}", p.id),
    })))
}
