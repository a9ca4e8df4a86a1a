//! Purchases: `POST /spend/purchases` queues a `purchase` job.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::domain::spend::purchases::{self, PurchaseV1};
use shared::ids::{CategoryId, MerchantId, PurchaseId, UserId};
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, IdempotencyKey, JsonFields, PreferWait};
use crate::state::AppState;
use crate::submit::submit;

pub fn router() -> Router<AppState> {
    Router::new().route("/spend/purchases", post(create)).route("/spend/purchases/{id}", get(read))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Beneficiary])?;
    let sender_id = f.req::<UserId>("sender_id");
    let beneficiary_id = f.req::<UserId>("beneficiary_id");
    let merchant_id = f.req::<MerchantId>("merchant_id");
    let money = f.money("amount", "currency", &s.config.currencies);
    let category_id = f.opt::<CategoryId>("category_id");
    f.finish()?;
    let beneficiary_id = got(beneficiary_id)?;
    // A beneficiary spends only what is sealed to them.
    who.require_self_or_admin(beneficiary_id, &[Role::Beneficiary])?;
    let money = got(money)?;
    let cmd =
        PurchaseV1 { sender_id: got(sender_id)?, beneficiary_id, merchant_id: got(merchant_id)?, money, category_id };
    submit(&s, &who, JobKind::Purchase, &cmd, Some(key), wait).await
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<PurchaseId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(purchases::get_for(&mut conn, id, &who).await?))
}
