//! `GET /audit` for support and admin.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use shared::domain::ops::audit::{self, AuditFilter};
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::{Auth, QueryMap};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

async fn list(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let page = q.page()?;
    let filter = AuditFilter {
        entity: q.get("entity").map(str::to_string),
        entity_id: q.get("entity_id").map(str::to_string),
        action: q.get("action").map(str::to_string),
    };
    let mut conn = s.pool.acquire().await?;
    Ok(Json(audit::list(&mut conn, &filter, &page).await?))
}
