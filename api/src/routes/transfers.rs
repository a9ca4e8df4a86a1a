//! Restricted transfers and alerts.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::config::Config;
use shared::domain::ops::alerts;
use shared::domain::spend::transfers::{self, TransferV1};
use shared::ids::{TransferId, UserId};
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, Fields, IdPath, JobRequest, JsonBody, QueryMap};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/transactions", post(create))
        .route("/transactions/{id}", get(read))
        .route("/alerts", get(list_alerts))
}

impl JsonBody for TransferV1 {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Sender];

    fn read(mut f: Fields, config: &Config) -> ApiResult<Self> {
        let sender_id = f.req::<UserId>("sender_id");
        let receiver_id = f.req::<UserId>("receiver_id");
        let money = f.money("amount", "currency", &config.currencies);
        f.finish()?;
        Ok(TransferV1 { sender_id: got(sender_id)?, receiver_id: got(receiver_id)?, money: got(money)? })
    }
}

async fn create(State(s): State<AppState>, r: JobRequest<TransferV1>) -> ApiResult<Response> {
    // A sender transfers only their own money.
    r.job.who.require_self_or_admin(r.body.sender_id, &[Role::Sender])?;
    r.job.submit(&s, JobKind::Transfer, &r.body).await
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
