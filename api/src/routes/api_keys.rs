//! API keys: create (the secret is shown once), list, revoke. An admin key
//! is not made here: it is a grant request a second admin approves (202,
//! `routes::admin_grants`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Json, Router};
use shared::ErrorCode;
use shared::db;
use shared::domain::access::grants::{self, Issued};
use shared::domain::access::keys::{self, NewKey};
use shared::ids::{ApiKeyId, UserId};
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, JsonFields, QueryMap};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api-keys", post(create).get(list)).route("/api-keys/{id}", delete(revoke))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let user_id = f.req::<UserId>("user_id");
    let role_text: Option<String> = f.req("role");
    let role = role_text.as_deref().and_then(Role::parse);
    if role_text.is_some() && role.is_none() {
        f.error(ErrorCode::ValidationError, "role", "must be one of admin, support, sender, beneficiary, psp");
    }
    let name = f.text("name", 100);
    let expires_at = f.opt::<chrono::DateTime<chrono::Utc>>("expires_at");
    f.finish()?;
    let new = NewKey { user_id: got(user_id)?, role: got(role)?, name: got(name)?, expires_at };
    let issued = db::serializable(&s.pool, &(who, new), |tx, (who, new)| {
        Box::pin(grants::issue(tx, who, new, chrono::Utc::now()))
    })
    .await?;
    Ok(match issued {
        Issued::Key(key) => (StatusCode::CREATED, Json(key)).into_response(),
        Issued::Requested(grant) => {
            let location = [(axum::http::header::LOCATION, grant.grant.href.clone())];
            (StatusCode::ACCEPTED, location, Json(grant)).into_response()
        }
    })
}

async fn list(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let user = q.id::<UserId>("user_id")?;
    let mut conn = s.pool.acquire().await?;
    let items = keys::list(&mut conn, user).await?;
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

async fn revoke(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<ApiKeyId>,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    db::serializable(&s.pool, &(who, id), |tx, (who, id)| Box::pin(keys::revoke(tx, who, *id))).await?;
    Ok(StatusCode::NO_CONTENT)
}
