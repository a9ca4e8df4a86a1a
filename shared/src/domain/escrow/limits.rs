//! A usage payee and its limits. The day is the UTC calendar date and the
//! counter carries its date, so a late or missed reset can never allow
//! more than the limit. A payment holds its share of the limits while it
//! is PENDING, SENT or SETTLED: spends and re-drives take them here,
//! failures give them back.

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, PayeeId};
use crate::money::display;

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

pub(crate) const PAYEE_COLUMNS: &str =
    "id, escrow_id, payee_ref, label, daily_limit, total_limit, spent_day, spent_today, spent_total";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

    pub fn out(&self, currency: &str) -> PayeeOut {
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

/// A payee row, locked.
pub async fn load_locked(conn: &mut PgConnection, id: PayeeId) -> Result<Payee> {
    let p: Option<Payee> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYEE_COLUMNS} FROM allowed_payees WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    p.ok_or_else(|| Error::internal(format!("payee {id} vanished")))
}

/// The payee `payee_ref` of an escrow, locked; `None` when not allowed.
pub async fn find_locked(conn: &mut PgConnection, escrow: EscrowId, payee_ref: &str) -> Result<Option<Payee>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYEE_COLUMNS} FROM allowed_payees WHERE escrow_id = $1 AND payee_ref = $2 FOR UPDATE"
    )))
    .bind(escrow)
    .bind(payee_ref)
    .fetch_optional(conn)
    .await?)
}

/// Takes `amount` of a payee's limits on `day`: refused with the limit's
/// code when it would pass it (reaching it exactly is allowed). The guard
/// repeats the checks in the statement itself: a counter from an earlier
/// day counts as zero, and CHECKs on the table back it up.
pub async fn take(conn: &mut PgConnection, payee: &Payee, amount: Decimal, day: NaiveDate) -> Result<()> {
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
pub async fn give_back(conn: &mut PgConnection, payee: PayeeId, amount: Decimal, day: NaiveDate) -> Result<()> {
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

/// Records the day a payment's share of its payee's limits counts on.
pub async fn mark_payment(conn: &mut PgConnection, payment: crate::ids::PaymentId, day: NaiveDate) -> Result<()> {
    sqlx::query("UPDATE payments SET limits_day = $2 WHERE id = $1").bind(payment).bind(day).execute(conn).await?;
    Ok(())
}
