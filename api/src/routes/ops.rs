//! `GET /ops/invariants` (support, admin): the last invariants run, or a
//! run now with `?run=1` (DOMAIN.md, "Invariants and reconciliation").
//! `GET /ops/queues` (support, admin): each job kind's queue, rows and stream.
//! `GET /ops/cron` (support, admin): each schedule's last claimed tick.
//! `GET /ops`: the ops console, one page in the binary (`assets/ops.html`)
//! that calls these and the other JSON endpoints with a key typed into it.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use shared::domain::ops::invariants::{self, PspSide};
use shared::principal::Role;
use shared::{Error, ErrorCode};

use crate::error::ApiResult;
use crate::extract::{Auth, QueryMap};
use crate::state::AppState;

/// The console page: public, no database.
pub fn console() -> Router<AppState> {
    Router::new().route("/ops", get(console_page))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/ops/invariants", get(read)).route("/ops/queues", get(queues)).route("/ops/cron", get(cron))
}

async fn read(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let run_now = match q.get("run") {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return Err(Error::problem(ErrorCode::ValidationError, "run: 1 or 0").into()),
    };
    let run = if run_now {
        let psp = PspSide { client: &s.psp };
        Some(
            invariants::run(&s.pool, Some(psp), s.config.saka_timezone.name(), invariants::stale_lease_secs(&s.config))
                .await?,
        )
    } else {
        let mut conn = s.pool.acquire().await?;
        invariants::latest(&mut conn).await?
    };
    match run {
        Some(run) => Ok(Json(serde_json::to_value(run).map_err(Error::from)?)),
        None => Ok(Json(serde_json::json!({"run_id": null, "checked_at": null, "invariants": []}))),
    }
}

/// Every kind, zeros included, in a list like every other (never paged:
/// there are as many entries as job kinds).
async fn queues(State(s): State<AppState>, Auth(who): Auth) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let items = shared::jobs::stats::queues(&s.pool, &s.queue).await?;
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

async fn cron(State(s): State<AppState>, Auth(who): Auth) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let mut conn = s.pool.acquire().await?;
    let items = shared::domain::ops::cron::last_ticks(&mut conn).await?;
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

const CONSOLE_HTML: &str = include_str!("../../assets/ops.html");

/// The page only: public, like `/docs`; every call it makes needs a key.
/// Its script and style are `/assets/console.js` and `console.css`.
async fn console_page() -> impl IntoResponse {
    crate::routes::assets::page(CONSOLE_HTML)
}
