//! Proofs: the multipart upload (the file itself), reads and decisions.

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::db;
use shared::domain::escrow::proofs::{self, Decision, NewProof, ProofValidationV1};
use shared::ids::{EscrowId, ProofId};
use shared::jobs::JobKind;
use shared::principal::Role;
use shared::{ErrorCode, FieldError, Problem};

use crate::error::{ApiError, ApiResult};
use crate::extract::fields::got;
use crate::extract::{Auth, IdPath, IdempotencyKey, JsonFields, PreferWait};
use crate::state::AppState;
use crate::submit::{receipt_response, submit};

pub fn router(max_bytes: usize) -> Router<AppState> {
    Router::new()
        // The file plus a few small fields.
        .route("/proofs", post(upload).layer(DefaultBodyLimit::max(max_bytes + 16 * 1024)))
        .route("/proofs/{id}", get(read))
        .route("/proofs/{id}/decision", post(decide))
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    Problem::fields(ErrorCode::ValidationError, vec![FieldError::new(field, message)]).into()
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::problem(ErrorCode::PayloadTooLarge, "the file is larger than the limit")
    } else {
        bad("body", format!("not a valid multipart/form-data body: {}", e.body_text()))
    }
}

/// Streams the upload into a staging file (hashing it on the way), checks
/// the fields, then lets the rule check the request and keep the file only
/// if it accepts it. Any early return drops the staging file, which
/// deletes it: a refused upload leaves nothing on disk.
#[tracing::instrument(skip_all)]
async fn upload(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Beneficiary])?;
    let mut multipart = multipart
        .map_err(|e| ApiError::problem(ErrorCode::UnsupportedMediaType, format!("send multipart/form-data: {e}")))?;
    let (mut file, mut content_type, mut escrow_id, mut idx, mut source) = (None, None, None, None, None);
    let mut errors = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" => {
                content_type = field.content_type().filter(|c| !c.chars().any(char::is_control)).map(str::to_string);
                let mut staged = s.store.stage().await?;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    staged.write(&chunk).await?;
                    if staged.len() > s.config.proof_max_bytes as u64 {
                        return Err(ApiError::problem(
                            ErrorCode::PayloadTooLarge,
                            "the file is larger than PROOF_MAX_BYTES",
                        ));
                    }
                }
                file = Some(staged);
            }
            "escrow_id" | "milestone_idx" | "source" => {
                let text = field.text().await.map_err(multipart_error)?.trim().to_string();
                match name.as_str() {
                    "escrow_id" => match text.parse::<EscrowId>() {
                        Ok(id) => escrow_id = Some(id),
                        Err(_) => errors.push(FieldError::new("escrow_id", "must be an id (UUID)")),
                    },
                    "milestone_idx" => match text.parse::<i32>() {
                        Ok(i) if i >= 1 => idx = Some(i),
                        _ => errors.push(FieldError::new("milestone_idx", "must be a whole number from 1")),
                    },
                    _ if text.is_empty() || text.len() > 64 => {
                        errors.push(FieldError::new("source", "must be 1 to 64 characters"))
                    }
                    // U+0000 cannot be stored; no control character is a source.
                    _ if text.chars().any(char::is_control) => {
                        errors.push(FieldError::new("source", "must not contain control characters"))
                    }
                    _ => source = Some(text),
                }
            }
            other => errors.push(FieldError::new(other.replace('\0', "\\u0000"), "is not a known field")),
        }
    }
    for (present, name) in [
        (file.is_some(), "file"),
        (escrow_id.is_some(), "escrow_id"),
        (idx.is_some(), "milestone_idx"),
        (source.is_some(), "source"),
    ] {
        if !present && !errors.iter().any(|e| e.field == name) {
            errors.push(FieldError::new(name, "is required"));
        }
    }
    if file.as_ref().is_some_and(|f| f.is_empty()) {
        errors.push(FieldError::new("file", "is empty"));
    }
    if !errors.is_empty() {
        return Err(Problem::fields(ErrorCode::ValidationError, errors).into());
    }
    let mut staged = got(file)?;
    let sha256 = staged.finish().await?;
    // Content-addressed: the same bytes always have the same key.
    let storage_key = format!("proofs/{}/{sha256}", &sha256[..2]);
    let new = NewProof {
        escrow_id: got(escrow_id)?,
        milestone_idx: got(idx)?,
        source: got(source)?,
        sha256,
        storage_key,
        content_type,
        size_bytes: i64::try_from(staged.len()).unwrap_or(i64::MAX),
    };
    let ctx = (who, new, key, s.store.clone(), staged);
    let (proof_id, job, created) = db::serializable(&s.pool, &ctx, |tx, (who, new, key, store, staged)| {
        Box::pin(shared::intake::proof_upload(tx, who, new, key, store.as_ref(), staged))
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

async fn decide(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<ProofId>,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    // Who may decide is cheap to know here: anyone else is refused at once,
    // with no job row (the job checks again).
    let mut conn = s.pool.acquire().await?;
    proofs::check_decider(&mut conn, id, &who).await?;
    drop(conn);
    let decision: Option<String> = f.req("decision");
    let decision = match decision.as_deref() {
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
    submit(&s, &who, JobKind::ProofValidation, &cmd, Some(key), wait).await
}
