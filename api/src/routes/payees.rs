//! Usage payees of an escrow and spends to them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rust_decimal::Decimal;
use shared::config::Config;
use shared::db;
use shared::domain::escrow::payees::{self, NewPayee, UsageSpendV1};
use shared::ids::EscrowId;
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, Fields, JobRequest, JsonBody, JsonFields};
use crate::routes::escrows::{escrow_amount, escrow_money};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/spend/allowed", post(allow_payee)).route("/spend", post(spend))
}

/// A payee limit: ≥ 0 (zero freezes the payee), its shape here; the rule
/// checks it against the escrow currency's minor unit.
fn limit(f: &mut Fields, name: &str) -> Option<Decimal> {
    f.decimal(name, 2, false, true)
}

async fn allow_payee(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Sender])?;
    let escrow_id = f.req::<EscrowId>("escrow_id");
    let payee_ref = f.text("payee_ref", 200);
    let label = f.text("label", 200);
    let daily_limit = limit(&mut f, "daily_limit");
    let total_limit = limit(&mut f, "total_limit");
    f.finish()?;
    let new = NewPayee {
        escrow_id: got(escrow_id)?,
        payee_ref: got(payee_ref)?,
        label: got(label)?,
        daily_limit,
        total_limit,
    };
    let p = db::serializable(&s.pool, &(who, new), |tx, (who, new)| Box::pin(payees::allow(tx, who, new))).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// A usage spend: to a payee of an escrow, in its currency.
pub struct SpendIn {
    escrow_id: EscrowId,
    payee_ref: String,
    amount: Decimal,
    note: Option<String>,
}

impl JsonBody for SpendIn {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Sender];

    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
        let escrow_id = f.req::<EscrowId>("escrow_id");
        let payee_ref = f.text("payee_ref", 200);
        let amount = escrow_amount(&mut f, "amount", true);
        let note = f.opt_text("note", 1000);
        f.finish()?;
        Ok(SpendIn { escrow_id: got(escrow_id)?, payee_ref: got(payee_ref)?, amount: got(amount)?, note })
    }
}

async fn spend(State(s): State<AppState>, r: JobRequest<SpendIn>) -> ApiResult<Response> {
    let SpendIn { escrow_id, payee_ref, amount, note } = r.body;
    let money = escrow_money(&s, &r.job.who, escrow_id, "amount", amount).await?;
    r.job.submit(&s, JobKind::UsageSpend, &UsageSpendV1 { escrow_id, payee_ref, money, note }).await
}
