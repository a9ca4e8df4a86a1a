//! Restricted transfers and alerts.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::domain::ops::alerts;
use shared::domain::spend::transfers::{self, TransferV1};
use shared::ids::{TransferId, UserId};
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, IdempotencyKey, JsonFields, PreferWait, QueryMap};
use crate::state::AppState;
use crate::submit::submit;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/transactions", post(create))
        .route("/transactions/{id}", get(read))
        .route("/alerts", get(list_alerts))
}

async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Sender])?;
    let sender_id = f.req::<UserId>("sender_id");
    let receiver_id = f.req::<UserId>("receiver_id");
    let money = f.money("amount", "currency", &s.config.currencies);
    f.finish()?;
    let sender_id = got(sender_id)?;
    who.require_self_or_admin(sender_id, &[Role::Sender])?;
    let money = got(money)?;
    let cmd = TransferV1 { sender_id, receiver_id: got(receiver_id)?, money };
    submit(&s, &who, JobKind::Transfer, &cmd, Some(key), wait).await
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<TransferId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(transfers::get_for(&mut conn, id, &who).await?))
}

async fn list_alerts(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let page = q.page()?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(alerts::list(&mut conn, q.get("type"), &page).await?))
}
