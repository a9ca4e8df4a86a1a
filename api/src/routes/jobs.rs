//! Receipts: `GET /jobs/{id}` (with `Prefer: wait`), `GET /jobs` for
//! support and admin, `POST /jobs/{id}/retry` for a dead job (admin).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::ids::JobId;
use shared::jobs::{JobKind, record};
use shared::principal::Role;
use shared::{ErrorCode, db};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, IdPath, PreferWait, QueryMap};
use crate::state::AppState;
use crate::submit::receipt_response;

pub fn router() -> Router<AppState> {
    Router::new().route("/jobs", get(list)).route("/jobs/{id}", get(read)).route("/jobs/{id}/retry", post(retry))
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<JobId>,
    PreferWait(wait): PreferWait,
) -> ApiResult<impl IntoResponse> {
    let row = match wait {
        Some(max) => s.waiter.wait(&s.pool, id, &who, max).await?,
        None => {
            let mut conn = s.pool.acquire().await?;
            record::get_for(&mut conn, id, &who).await?
        }
    };
    let mut res = receipt_response(&row, serde_json::Map::new());
    // A GET of a receipt is always 200; the status field says where it is.
    *res.status_mut() = axum::http::StatusCode::OK;
    if wait.is_some() && !row.is_terminal() {
        *res.status_mut() = axum::http::StatusCode::ACCEPTED;
    }
    Ok(res)
}

async fn list(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let page = q.page()?;
    let status = q.get("status");
    if status.is_some_and(|st| !["queued", "running", "succeeded", "failed", "dead"].contains(&st)) {
        return Err(ApiError::field(
            ErrorCode::ValidationError,
            "status",
            "must be queued, running, succeeded, failed or dead",
        ));
    }
    let kind = q.get("kind");
    if kind.is_some_and(|k| JobKind::parse(k).is_none()) {
        return Err(ApiError::field(ErrorCode::ValidationError, "kind", "is not a job kind"));
    }
    let mut conn = s.pool.acquire().await?;
    let page = record::list(&mut conn, status, kind, &page).await?;
    Ok(Json(page.map(|r| r.receipt())))
}

async fn retry(State(s): State<AppState>, Auth(who): Auth, IdPath(id): IdPath<JobId>) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    // The retry and its audit row commit together.
    let row = db::serializable(&s.pool, &(id, who), |tx, (id, who)| Box::pin(record::retry_dead(tx, *id, who))).await?;
    if let Some(kind) = row.job_kind() {
        crate::submit::push_soon(&s, kind, row.id);
    }
    Ok(receipt_response(&row, serde_json::Map::new()))
}
