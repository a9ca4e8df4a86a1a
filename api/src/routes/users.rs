//! Users and `/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::db;
use shared::domain::access::keys;
use shared::domain::access::users::{self, NewUser};
use shared::ids::UserId;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, JsonFields};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/users", post(create)).route("/users/{id}", get(read)).route("/me", get(me))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let username = f.text("username", 64);
    let email = f.text("email", 254);
    let is_active = f.opt::<bool>("is_active").unwrap_or(true);
    if let Some(e) = &email
        && !(e.contains('@') && !e.starts_with('@') && !e.ends_with('@'))
    {
        f.error(shared::ErrorCode::ValidationError, "email", "must be an e-mail address");
    }
    f.finish()?;
    let new = NewUser { username: got(username)?, email: got(email)?, is_active };
    let user = db::serializable(&s.pool, &(who, new), |tx, (who, new)| Box::pin(users::create(tx, who, new))).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[tracing::instrument(skip_all)]
async fn read(State(s): State<AppState>, Auth(who): Auth, IdPath(id): IdPath<UserId>) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(users::get_for(&mut conn, id, &who).await?))
}

async fn me(State(s): State<AppState>, Auth(who): Auth) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    let user = users::get(&mut conn, who.user_id).await?;
    let key = keys::get(&mut conn, who.key_id).await?;
    let (prefix, expires_at) = key.map(|k| (k.prefix, k.expires_at)).unwrap_or_default();
    Ok(Json(serde_json::json!({
        "user": user,
        "key": {"id": who.key_id, "role": who.role.as_str(), "prefix": prefix, "expires_at": expires_at},
    })))
}
