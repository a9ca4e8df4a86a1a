//! Usage payees: an escrow's client allows payee references with optional
//! daily and total limits (`limits`), then spends to them (job
//! `usage_spend`): a payout to the payee, from the balance milestones do
//! not hold, within the payee's limits.

use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::escrow::limits::{self, PAYEE_COLUMNS, Payee, PayeeOut};
use crate::domain::escrow::milestones::in_escrow_currency;
use crate::domain::escrow::model::{Escrow, PaymentKind};
use crate::domain::escrow::payouts::{self, NewPayment};
use crate::domain::escrow::state::{load_for, require_parties_active};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{EscrowId, JobId, PayeeId};
use crate::jobs::Outcome;
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

#[derive(Debug, Clone)]
pub struct NewPayee {
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    pub label: String,
    pub daily_limit: Option<Decimal>,
    pub total_limit: Option<Decimal>,
}

pub async fn allow(conn: &mut PgConnection, who: &Principal, new: &NewPayee) -> Result<PayeeOut> {
    let e = load_for(conn, new.escrow_id, who, true).await?;
    if !(who.is_admin() || who.user_id == e.client_id) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin allows payees"));
    }
    limits_in_scale(&e, new)?;
    let p: Payee = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO allowed_payees (id, escrow_id, payee_ref, label, daily_limit, total_limit) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PAYEE_COLUMNS}"
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
    let data = serde_json::json!({"payee_id": p.id, "payee_ref": p.payee_ref});
    audit::write(conn, &who.actor(), "PAYEE_ALLOWED", "escrow", e.id, data).await?;
    Ok(p.out(&e.currency))
}

/// Limits are in the escrow's currency and its minor unit (no cents in XOF).
fn limits_in_scale(e: &Escrow, new: &NewPayee) -> Result<()> {
    let decimals = crate::money::currencies().decimals(&e.currency);
    let too_fine: Vec<FieldError> = [("daily_limit", new.daily_limit), ("total_limit", new.total_limit)]
        .into_iter()
        .filter(|(_, limit)| limit.is_some_and(|l| l.normalize().scale() > decimals))
        .map(|(field, _)| FieldError::new(field, format!("has more than {decimals} decimal places for {}", e.currency)))
        .collect();
    if too_fine.is_empty() { Ok(()) } else { Err(Problem::fields(ErrorCode::AmountInvalid, too_fine).into()) }
}

/// The `usage_spend` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSpendV1 {
    pub escrow_id: EscrowId,
    pub payee_ref: String,
    /// `amount` and `currency` (the escrow's), checked again when the
    /// payload is read.
    #[serde(flatten)]
    pub money: Money,
    pub note: Option<String>,
}

pub async fn spend(conn: &mut PgConnection, who: &Principal, job: JobId, cmd: &UsageSpendV1) -> Result<Outcome> {
    let e = load_for(conn, cmd.escrow_id, who, true).await?;
    if !(who.is_admin() || (who.role == Role::Sender && who.user_id == e.client_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the escrow's client or an admin spends"));
    }
    require_parties_active(conn, &e).await?;
    if !e.is_active() {
        return Err(Error::problem(ErrorCode::EscrowNotActive, format!("the escrow is {}", e.status)));
    }
    let amount = in_escrow_currency(&e, &cmd.money)?;
    let Some(payee) = limits::find_locked(conn, e.id, &cmd.payee_ref).await? else {
        return Err(Error::problem(ErrorCode::PayeeNotAllowed, "this payee is not allowed on the escrow"));
    };
    let today = Utc::now().date_naive();
    limits::take(conn, &payee, amount, today).await?;
    let new =
        NewPayment { kind: PaymentKind::Usage, milestone: None, payee: Some((payee.id, &payee.payee_ref)), amount };
    let p = payouts::create_reserved(conn, &e, &new, &format!("usage:{job}")).await?;
    // The payment holds its share of the limits, counted on this day.
    limits::mark_payment(conn, p.id, today).await?;
    audit::write(
        conn,
        &who.actor(),
        "USAGE_SPENT",
        "escrow",
        e.id,
        serde_json::json!({
            "payment_id": p.id, "payee_ref": payee.payee_ref, "amount": display(amount, &e.currency), "note": cmd.note,
        }),
    )
    .await?;
    let result = serde_json::json!({
        "payment_id": p.id, "escrow_id": e.id, "amount": display(p.amount, &p.currency), "status": p.status,
        "payee_ref": payee.payee_ref, "href": format!("/payments/{}", p.id),
    });
    Ok(Outcome::succeeded(result).then([payouts::payout_job(&p)?]))
}
