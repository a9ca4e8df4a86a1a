//! Proofs: the multipart upload (the file itself), reads and decisions.

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::domain::escrow::proofs::{self, Decision, ProofValidationV1};
use shared::ids::ProofId;
use shared::jobs::JobKind;
use shared::{ErrorCode, db, intake};

use crate::error::ApiResult;
use crate::extract::fields::got;
use crate::extract::upload::ProofUpload;
use crate::extract::{Auth, Fields, IdPath, JobRequest, Submission};
use crate::state::AppState;
use crate::submit::receipt_response;

pub fn router(max_bytes: usize) -> Router<AppState> {
    Router::new()
        // The file plus a few small fields.
        .route("/proofs", post(upload).layer(DefaultBodyLimit::max(max_bytes + 16 * 1024)))
        .route("/proofs/{id}", get(read))
        .route("/proofs/{id}/decision", post(decide))
}

/// The upload was read and checked at the edge ([`ProofUpload`]); the rule
/// checks the request and keeps the file only if it accepts it, in one
/// transaction with the proof row and its job.
#[tracing::instrument(skip_all)]
async fn upload(State(s): State<AppState>, upload: ProofUpload) -> ApiResult<Response> {
    let ProofUpload { job: Submission { who, key, wait }, new, staged } = upload;
    let ctx = (who, new, key, s.store.clone(), staged);
    let (proof_id, job, created) = db::serializable(&s.pool, &ctx, |tx, (who, new, key, store, staged)| {
        Box::pin(intake::proof_upload(tx, who, new, key, store.as_ref(), staged))
    })
    .await?;
    drop(ctx);
    if created {
        crate::submit::push_soon(&s, JobKind::ProofValidation, job.id);
    }
    let job = match wait {
        Some(max) if !job.is_terminal() => s.waiter.wait(&s.pool, job.id, &who, max).await?,
        _ => job,
    };
    let mut extra = serde_json::Map::new();
    extra.insert("proof_id".into(), serde_json::json!(proof_id));
    Ok(receipt_response(&job, extra))
}

async fn read(State(s): State<AppState>, Auth(who): Auth, IdPath(id): IdPath<ProofId>) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(proofs::get_for(&mut conn, id, &who).await?))
}

/// Who may decide is cheap to know here: anyone else is refused at once,
/// with no job row (the job checks again).
async fn decide(State(s): State<AppState>, r: JobRequest<Fields, IdPath<ProofId>>) -> ApiResult<Response> {
    let (IdPath(id), mut f) = (r.path, r.body);
    let mut conn = s.pool.acquire().await?;
    proofs::check_decider(&mut conn, id, &r.job.who).await?;
    drop(conn);
    let decision = match f.req::<String>("decision").as_deref() {
        Some("approve") => Some(Decision::Approve),
        Some("reject") => Some(Decision::Reject),
        Some(_) => {
            f.error(ErrorCode::ValidationError, "decision", "must be approve or reject");
            None
        }
        None => None,
    };
    let note = f.opt_text("note", 1000);
    f.finish()?;
    let cmd = ProofValidationV1::Decide { proof_id: id, decision: got(decision)?, note };
    r.job.submit(&s, JobKind::ProofValidation, &cmd).await
}
