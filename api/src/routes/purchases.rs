//! Purchases: `POST /spend/purchases` queues a `purchase` job.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::config::Config;
use shared::domain::spend::purchases::{self, PurchaseV1};
use shared::ids::{CategoryId, MerchantId, PurchaseId, UserId};
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::{Auth, Fields, IdPath, JobRequest, JsonBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/spend/purchases", post(create)).route("/spend/purchases/{id}", get(read))
}

impl JsonBody for PurchaseV1 {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Beneficiary];

    fn read(mut f: Fields, config: &Config) -> ApiResult<Self> {
        let sender_id = f.req::<UserId>("sender_id");
        let beneficiary_id = f.req::<UserId>("beneficiary_id");
        let merchant_id = f.req::<MerchantId>("merchant_id");
        let money = f.money("amount", "currency", &config.currencies);
        let category_id = f.opt::<CategoryId>("category_id");
        f.finish()?;
        Ok(PurchaseV1 {
            sender_id: got(sender_id)?,
            beneficiary_id: got(beneficiary_id)?,
            merchant_id: got(merchant_id)?,
            money: got(money)?,
            category_id,
        })
    }
}

#[tracing::instrument(skip_all)]
async fn create(State(s): State<AppState>, r: JobRequest<PurchaseV1>) -> ApiResult<Response> {
    // A beneficiary spends only what is sealed to them.
    r.job.who.require_self_or_admin(r.body.beneficiary_id, &[Role::Beneficiary])?;
    r.job.submit(&s, JobKind::Purchase, &r.body).await
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<PurchaseId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(purchases::get_for(&mut conn, id, &who).await?))
}
