//! SAKA grains: wallets, harvests, spends, manual adjustments with a second
//! admin's approval. Grains are integers, never money.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::ErrorCode;
use shared::config::Config;
use shared::db;
use shared::domain::saka::{self, HarvestReason, NewAdjustment, SakaAdjustmentV1, SakaHarvestV1, SakaSpendV1};
use shared::ids::{SakaAdjustmentId, UserId};
use shared::jobs::JobKind;
use shared::money::Grains;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{AdminOnly, Auth, Fields, IdPath, JobRequest, JsonBody, JsonFields};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/saka/wallets/{user_id}", get(wallet))
        .route("/saka/harvest", post(harvest))
        .route("/saka/spend", post(spend))
        .route("/saka/adjustments", post(request_adjustment).get(list_adjustments))
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

impl JsonBody for SakaHarvestV1 {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Support];

    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
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
        Ok(SakaHarvestV1 { user_id: got(user_id)?, reason: got(reason)?, amount: None })
    }
}

async fn harvest(State(s): State<AppState>, r: JobRequest<SakaHarvestV1>) -> ApiResult<Response> {
    r.job.submit(&s, JobKind::SakaHarvest, &r.body).await
}

fn grains(f: &mut Fields, name: &str, max: i64) -> Option<Grains> {
    let n = f.req::<i64>(name)?;
    if !(1..=max).contains(&n) {
        f.error(ErrorCode::ValidationError, name, format!("must be a whole number of grains from 1 to {max}"));
        return None;
    }
    Some(Grains(n))
}

impl JsonBody for SakaSpendV1 {
    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
        let user_id = f.req::<UserId>("user_id");
        let amount = grains(&mut f, "amount", i64::MAX);
        let reason = f.text("reason", 200);
        f.finish()?;
        Ok(SakaSpendV1 { user_id: got(user_id)?, amount: got(amount)?, reason: got(reason)? })
    }
}

async fn spend(State(s): State<AppState>, r: JobRequest<SakaSpendV1>) -> ApiResult<Response> {
    // A user spends their own grains; an admin may spend for them.
    r.job.who.require_self_or_admin(r.body.user_id, &[Role::Sender, Role::Beneficiary, Role::Support])?;
    r.job.submit(&s, JobKind::SakaSpend, &r.body).await
}

impl JsonBody for NewAdjustment {
    const ROLES: &'static [Role] = &[Role::Admin];

    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
        let user_id = f.req::<UserId>("user_id");
        let amount = grains(&mut f, "amount", 1000);
        let note = f.text("note", 500);
        f.finish()?;
        Ok(NewAdjustment { user_id: got(user_id)?, amount: got(amount)?, note: got(note)? })
    }
}

async fn request_adjustment(State(s): State<AppState>, r: JobRequest<NewAdjustment>) -> ApiResult<Response> {
    r.job.submit(&s, JobKind::SakaAdjustment, &SakaAdjustmentV1::Request(r.body)).await
}

async fn approve_adjustment(
    State(s): State<AppState>,
    r: JobRequest<AdminOnly<()>, IdPath<SakaAdjustmentId>>,
) -> ApiResult<Response> {
    let IdPath(adjustment_id) = r.path;
    r.job.submit(&s, JobKind::SakaAdjustment, &SakaAdjustmentV1::Approve { adjustment_id }).await
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

/// `GET /saka/adjustments?status=PENDING_APPROVAL` (admin, support): what
/// waits for a second admin, newest first.
async fn list_adjustments(
    State(s): State<AppState>,
    Auth(who): Auth,
    q: crate::extract::QueryMap,
) -> ApiResult<impl IntoResponse> {
    let page = q.page()?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(saka::list_adjustments(&mut conn, &who, q.get("status"), &page).await?))
}
