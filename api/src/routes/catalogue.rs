//! The catalogue: categories, merchants, allowed usage, the transfer
//! allowlist and certifications.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use shared::ErrorCode;
use shared::db;
use shared::domain::spend::catalogue::{self, Upserted};
use shared::ids::{CategoryId, MerchantId, UserId};
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, JsonFields};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/spend/categories", post(create_category))
        .route("/spend/merchants", post(create_merchant))
        .route("/spend/allow", post(allow_usage))
        .route("/allowlist", post(add_allowlist))
        .route("/certified", post(certify))
}

fn upserted(u: Upserted) -> impl IntoResponse {
    let status = if u.created() { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(u))
}

async fn create_category(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let code = f.text("code", 64);
    let label = f.text("label", 200);
    f.finish()?;
    let args = (who, got(code)?, got(label)?);
    let cat = db::serializable(&s.pool, &args, |tx, (who, code, label)| {
        Box::pin(catalogue::create_category(tx, who, code, label))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(cat)))
}

async fn create_merchant(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let name = f.text("name", 200);
    let category = f.opt::<CategoryId>("category_id");
    let certified = f.opt::<bool>("is_certified").unwrap_or(false);
    f.finish()?;
    let args = (who, got(name)?, category, certified);
    let m = db::serializable(&s.pool, &args, |tx, (who, name, cat, cert)| {
        Box::pin(catalogue::create_merchant(tx, who, name, *cat, *cert))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn allow_usage(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let owner = f.req::<UserId>("owner_id");
    let merchant = f.opt::<MerchantId>("merchant_id");
    let category = f.opt::<CategoryId>("category_id");
    f.finish()?;
    if merchant.is_some() == category.is_some() {
        return Err(crate::error::ApiError::problem(
            ErrorCode::UsageRuleInvalid,
            "give exactly one of merchant_id or category_id",
        ));
    }
    let args = (who, got(owner)?, merchant, category);
    let u =
        db::serializable(&s.pool, &args, |tx, (who, o, m, c)| Box::pin(catalogue::allow_usage(tx, who, *o, *m, *c)))
            .await?;
    Ok(upserted(u))
}

async fn add_allowlist(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    let owner = f.req::<UserId>("owner_id");
    let recipient = f.req::<UserId>("recipient_id");
    f.finish()?;
    let owner = got(owner)?;
    who.require_self_or_admin(owner, &[Role::Sender])?;
    let args = (who, owner, got(recipient)?);
    let u = db::serializable(&s.pool, &args, |tx, (who, o, r)| Box::pin(catalogue::add_to_allowlist(tx, who, *o, *r)))
        .await?;
    Ok(upserted(u))
}

async fn certify(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let user = f.req::<UserId>("user_id");
    let level: Option<String> = f.req("level");
    if level.as_deref().is_some_and(|l| l != "BASIC" && l != "GOLD") {
        f.error(ErrorCode::ValidationError, "level", "must be BASIC or GOLD");
    }
    f.finish()?;
    let args = (who, got(user)?, got(level)?);
    let u = db::serializable(&s.pool, &args, |tx, (who, u, l)| Box::pin(catalogue::certify(tx, who, *u, l))).await?;
    Ok(upserted(u))
}
