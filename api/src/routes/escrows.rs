//! Escrows, their milestones, deposits and transitions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use shared::config::Config;
use shared::db;
use shared::domain::escrow::deposits::EscrowDepositV1;
use shared::domain::escrow::escrows::{self, NewEscrow};
use shared::domain::escrow::milestones::{self, NewMilestone};
use shared::domain::escrow::model::GeofenceIn;
use shared::domain::escrow::transitions::{EscrowTransitionV1, TransitionAction};
use shared::ids::{EscrowId, UserId};
use shared::jobs::JobKind;
use shared::money::Money;
use shared::principal::Principal;
use shared::principal::Role;
use shared::{ErrorCode, Problem};

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{AdminOnly, Auth, Fields, IdPath, JobRequest, JsonBody, JsonFields, NoteIn};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/escrows", post(create))
        .route("/escrows/{id}", get(read))
        .route("/escrows/{id}/milestones", post(add_milestone))
        .route("/escrows/{id}/deposit", post(deposit))
        .route("/escrows/{id}/mark-delivered", post(mark_delivered))
        .route("/escrows/{id}/client-approve", post(client_approve))
        .route("/escrows/{id}/client-reject", post(client_reject))
        .route("/escrows/{id}/check-deadline", post(check_deadline))
}

/// An amount whose currency is the escrow's: its shape first, with the
/// other fields (positive, at most 2 decimals), then [`escrow_money`].
pub(crate) fn escrow_amount(f: &mut Fields, name: &str, required: bool) -> Option<Decimal> {
    f.decimal(name, 2, required, false)
}

/// The amount in the escrow's own currency and minor unit (an escrow the
/// caller cannot see is `ESCROW_NOT_FOUND`; cents for XOF `AMOUNT_INVALID`).
pub(crate) async fn escrow_money(
    s: &AppState,
    who: &Principal,
    id: EscrowId,
    field: &str,
    amount: Decimal,
) -> ApiResult<Money> {
    let mut conn = s.pool.acquire().await?;
    let currency = escrows::currency_for(&mut conn, id, who).await?;
    Money::of(field, amount, &currency).map_err(|(code, e)| Problem::fields(code, vec![e]).into())
}

#[tracing::instrument(skip_all)]
async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Sender])?;
    let client_id = f.req::<UserId>("client_id");
    let provider_id = f.req::<UserId>("provider_id");
    let total = f.money("amount_total", "currency", &s.config.currencies);
    let conditions = f.opt::<serde_json::Value>("release_conditions").unwrap_or_else(|| serde_json::json!({}));
    if !conditions.is_object() {
        f.error(ErrorCode::ValidationError, "release_conditions", "must be a JSON object");
    }
    let deadline_at = f.req::<chrono::DateTime<chrono::Utc>>("deadline_at");
    f.finish()?;
    let new = NewEscrow {
        client_id: got(client_id)?,
        provider_id: got(provider_id)?,
        total: got(total)?,
        release_conditions: conditions,
        deadline_at: got(deadline_at)?,
    };
    let e = db::serializable(&s.pool, &(who, new), |tx, (who, new)| Box::pin(escrows::create(tx, who, new))).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<EscrowId>,
) -> ApiResult<impl IntoResponse> {
    // One snapshot: a payment's end never shows with the balance from before it.
    let escrow = db::snapshot(&s.pool, &(id, who), |tx, (id, who)| Box::pin(escrows::get_for(tx, *id, who))).await?;
    Ok(Json(escrow))
}

#[tracing::instrument(skip_all)]
async fn add_milestone(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<EscrowId>,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Sender])?;
    let idx = f.req::<i32>("idx");
    if idx.is_some_and(|i| i < 1) {
        f.error(ErrorCode::ValidationError, "idx", "milestones are numbered from 1");
    }
    let label = f.text("label", 200);
    let amount = escrow_amount(&mut f, "amount", true);
    let proof_type: Option<String> = f.req("proof_type");
    if proof_type.as_deref().is_some_and(|p| p != "PHOTO" && p != "DOCUMENT") {
        f.error(ErrorCode::ValidationError, "proof_type", "must be PHOTO or DOCUMENT");
    }
    let geofence = f.opt::<GeofenceIn>("geofence");
    if let Some(g) = geofence
        && !(g.lat.is_finite()
            && g.lng.is_finite()
            && (-90.0..=90.0).contains(&g.lat)
            && (-180.0..=180.0).contains(&g.lng)
            && g.radius_m > 0.0
            && g.radius_m.is_finite())
    {
        f.error(ErrorCode::ValidationError, "geofence", "needs lat in [-90, 90], lng in [-180, 180] and radius_m > 0");
    }
    f.finish()?;
    let new = NewMilestone {
        idx: got(idx)?,
        label: got(label)?,
        amount: escrow_money(&s, &who, id, "amount", got(amount)?).await?,
        proof_type: got(proof_type)?,
        geofence,
    };
    let m = db::serializable(&s.pool, &(who, id, new), |tx, (who, id, new)| {
        Box::pin(milestones::add_milestone(tx, who, *id, new))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(m)))
}

/// An amount in the escrow's currency: its shape here, with the other
/// fields, then [`escrow_money`].
pub struct AmountIn {
    amount: Decimal,
}

impl JsonBody for AmountIn {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Sender];

    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
        let amount = escrow_amount(&mut f, "amount", true);
        f.finish()?;
        Ok(AmountIn { amount: got(amount)? })
    }
}

async fn deposit(State(s): State<AppState>, r: JobRequest<AmountIn, IdPath<EscrowId>>) -> ApiResult<Response> {
    let IdPath(id) = r.path;
    let money = escrow_money(&s, &r.job.who, id, "amount", r.body.amount).await?;
    r.job.submit(&s, JobKind::EscrowDeposit, &EscrowDepositV1 { escrow_id: id, money }).await
}

async fn transition<B>(
    s: &AppState,
    r: JobRequest<B, IdPath<EscrowId>>,
    action: TransitionAction,
) -> ApiResult<Response>
where
    B: Into<NoteIn>,
{
    let (IdPath(id), NoteIn { note }) = (r.path, r.body.into());
    r.job.submit(s, JobKind::EscrowTransition, &EscrowTransitionV1 { escrow_id: id, action, note }).await
}

async fn mark_delivered(State(s): State<AppState>, r: JobRequest<NoteIn, IdPath<EscrowId>>) -> ApiResult<Response> {
    transition(&s, r, TransitionAction::MarkDelivered).await
}

async fn client_approve(State(s): State<AppState>, r: JobRequest<NoteIn, IdPath<EscrowId>>) -> ApiResult<Response> {
    transition(&s, r, TransitionAction::ClientApprove).await
}

async fn client_reject(State(s): State<AppState>, r: JobRequest<NoteIn, IdPath<EscrowId>>) -> ApiResult<Response> {
    transition(&s, r, TransitionAction::ClientReject).await
}

/// Only an admin may ask (the job refuses anyone else): refused here at
/// once, with no job row.
async fn check_deadline(
    State(s): State<AppState>,
    r: JobRequest<AdminOnly<NoteIn>, IdPath<EscrowId>>,
) -> ApiResult<Response> {
    transition(&s, r, TransitionAction::CheckDeadline).await
}
