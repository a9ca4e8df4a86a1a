//! SAKA grains: wallets, harvests, spends, manual adjustments with a second
//! admin's approval. Grains are integers, never money.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::ErrorCode;
use shared::db;
use shared::domain::saka::{self, HarvestReason, NewAdjustment, SakaAdjustmentV1, SakaHarvestV1, SakaSpendV1};
use shared::ids::{SakaAdjustmentId, UserId};
use shared::jobs::JobKind;
use shared::money::Grains;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, IdempotencyKey, JsonFields, PreferWait};
use crate::state::AppState;
use crate::submit::submit;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/saka/wallets/{user_id}", get(wallet))
        .route("/saka/harvest", post(harvest))
        .route("/saka/spend", post(spend))
        .route("/saka/adjustments", post(request_adjustment))
        .route("/saka/adjustments/{id}", get(read_adjustment))
        .route("/saka/adjustments/{id}/approve", post(approve_adjustment))
        .route("/saka/adjustments/{id}/reject", post(reject_adjustment))
}

async fn wallet(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(user): IdPath<UserId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(saka::get_wallet_for(&mut conn, &who, user, chrono::Utc::now(), s.config.saka_timezone).await?))
}

async fn harvest(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Support])?;
    let user_id = f.req::<UserId>("user_id");
    let reason = f.text("reason", 64);
    let amount = f.opt::<i64>("amount");
    if let Some(r) = &reason
        && HarvestReason::parse(r).is_none()
    {
        f.error(
            ErrorCode::SakaReasonUnknown,
            "reason",
            "is not a harvest reason (CONTENT_READ, POLL_VOTE, INVITE_ACCEPTED, INVEST_BONUS)",
        );
    }
    if amount.is_some() {
        f.error(ErrorCode::SakaAmountNotAllowed, "amount", "harvest rewards are fixed; send no amount");
    }
    f.finish()?;
    let cmd = SakaHarvestV1 { user_id: got(user_id)?, reason: got(reason)?, amount: None };
    submit(&s, &who, JobKind::SakaHarvest, &cmd, Some(key), wait).await
}

fn grains(f: &mut crate::extract::Fields, name: &str, max: i64) -> Option<Grains> {
    let n = f.req::<i64>(name)?;
    if !(1..=max).contains(&n) {
        f.error(ErrorCode::ValidationError, name, format!("must be a whole number of grains from 1 to {max}"));
        return None;
    }
    Some(Grains(n))
}

async fn spend(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    let user_id = f.req::<UserId>("user_id");
    let amount = grains(&mut f, "amount", i64::MAX);
    let reason = f.text("reason", 200);
    f.finish()?;
    let user_id = got(user_id)?;
    // A user spends their own grains; an admin may spend for them.
    who.require_self_or_admin(user_id, &[Role::Sender, Role::Beneficiary, Role::Support])?;
    let cmd = SakaSpendV1 { user_id, amount: got(amount)?, reason: got(reason)? };
    submit(&s, &who, JobKind::SakaSpend, &cmd, Some(key), wait).await
}

async fn request_adjustment(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let user_id = f.req::<UserId>("user_id");
    let amount = grains(&mut f, "amount", 1000);
    let note = f.text("note", 500);
    f.finish()?;
    let cmd =
        SakaAdjustmentV1::Request(NewAdjustment { user_id: got(user_id)?, amount: got(amount)?, note: got(note)? });
    submit(&s, &who, JobKind::SakaAdjustment, &cmd, Some(key), wait).await
}

async fn approve_adjustment(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<SakaAdjustmentId>,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let cmd = SakaAdjustmentV1::Approve { adjustment_id: id };
    submit(&s, &who, JobKind::SakaAdjustment, &cmd, Some(key), wait).await
}

async fn reject_adjustment(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<SakaAdjustmentId>,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let note = f.opt_text("note", 500);
    f.finish()?;
    let args = (who, id, note);
    let out = db::serializable(&s.pool, &args, |tx, (who, id, note)| {
        Box::pin(saka::reject_adjustment(tx, who, *id, note.as_deref(), chrono::Utc::now()))
    })
    .await?;
    Ok(Json(out))
}

async fn read_adjustment(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<SakaAdjustmentId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(saka::get_adjustment(&mut conn, &who, id).await?))
}
