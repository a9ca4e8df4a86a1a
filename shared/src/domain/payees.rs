//! Usage payees: an escrow's client allows payee references with optional
//! daily and total limits, then spends to them (job `usage_spend`). The day
//! is the UTC calendar date and the counter carries its date, so a late or
//! missed reset can never allow more than the limit.

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::audit;
use crate::domain::escrows::{self};
use crate::domain::payouts::{self, PaymentKind};
use crate::error::{Error, ErrorCode, Result};
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
    if payee.daily_limit.is_some_and(|limit| payee.spent_on(today) + cmd.amount > limit) {
        return Err(Error::problem(ErrorCode::DailyLimitReached, "this spend would pass the payee's daily limit"));
    }
    if payee.total_limit.is_some_and(|limit| payee.spent_total + cmd.amount > limit) {
        return Err(Error::problem(ErrorCode::TotalLimitReached, "this spend would pass the payee's total limit"));
    }
    // The guard repeats the checks in the statement itself: a counter from an
    // earlier day counts as zero, and CHECKs on the table back it up.
    let done = sqlx::query(
        "UPDATE allowed_payees SET
            spent_today = CASE WHEN spent_day = $3 THEN spent_today ELSE 0 END + $2,
            spent_day = $3, spent_total = spent_total + $2
          WHERE id = $1
            AND (daily_limit IS NULL OR CASE WHEN spent_day = $3 THEN spent_today ELSE 0 END + $2 <= daily_limit)
            AND (total_limit IS NULL OR spent_total + $2 <= total_limit)",
    )
    .bind(payee.id)
    .bind(cmd.amount)
    .bind(today)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::problem(ErrorCode::DailyLimitReached, "this spend would pass the payee's limits"));
    }
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
    payouts::enqueue_payout(conn, job, &p).await?;
    audit::write(conn, &who.actor(), "USAGE_SPENT", "escrow", e.id, serde_json::json!({
        "payment_id": p.id, "payee_ref": payee.payee_ref, "amount": display(cmd.amount, &e.currency), "note": cmd.note,
    })).await?;
    Ok(Outcome::Succeeded(serde_json::json!({
        "payment_id": p.id, "escrow_id": e.id, "amount": display(p.amount, &p.currency), "status": p.status,
        "payee_ref": payee.payee_ref, "href": format!("/payments/{}", p.id),
    })))
}
