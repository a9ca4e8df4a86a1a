//! Intake: what the api writes in one transaction (or one statement)
//! together with a job row, because the two must exist together or not at
//! all: an accepted proof upload and its `proof_validation` job, a PSP
//! event's raw body and its `psp_webhook` job. It sits above both the rules
//! (`domain`) and the job record (`jobs::record`), which know nothing of
//! each other; everything else that creates a job row goes through
//! `jobs::record` (the api's submissions, the executor's follow-ups).

use serde::Serialize;
use sqlx::PgConnection;

use crate::domain::escrow::proofs::upload::{self, NewProof};
use crate::domain::psp::webhooks::{Envelope, PspWebhookV1, psp_principal};
use crate::error::Result;
use crate::ids::{AuditId, JobId, ProofId, WebhookEventId};
use crate::jobs::{JobKind, JobRow, NewJob, record};
use crate::principal::Principal;
use crate::storage::{ProofStore, StagedFile};

/// The upload's checks (DOMAIN.md order, on the staged file), the proof
/// row and its job, in the caller's transaction; only an accepted upload
/// moves its staged file into the store, as the last step before the
/// commit. A refusal leaves the staged file to be deleted when dropped; a
/// commit that fails after the placement leaves a file no proof references,
/// which retention deletes. The same idempotency key with the same file
/// answers the first job.
pub async fn proof_upload(
    conn: &mut PgConnection,
    who: &Principal,
    new: &NewProof,
    idempotency_key: &str,
    store: &dyn ProofStore,
    staged: &StagedFile,
) -> Result<(ProofId, JobRow, bool)> {
    if let Some(job) = record::by_key(conn, who, idempotency_key).await? {
        return Ok((upload::replayed(&job.payload, new)?, job, false));
    }
    let p = upload::accept(conn, who, new).await?;
    let (job, _) = record::insert(
        &mut *conn,
        &NewJob::new(JobKind::ProofValidation, &p.payload, who, Some(idempotency_key.to_string()))?,
    )
    .await?;
    upload::submitted(conn, who, &p.proof, job.id).await?;
    store.place(staged, &new.storage_key).await?;
    Ok((p.proof.id, job, true))
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub received: bool,
    pub event_id: String,
    pub duplicate: bool,
    #[serde(skip)]
    pub job: Option<(JobId, JobKind)>,
}

/// Stores a verified event and its job, once per event id, in one
/// statement (atomic on its own, one round trip): a replay inserts nothing.
pub async fn webhook(pool: &sqlx::PgPool, envelope: &Envelope, raw: &str) -> Result<Received> {
    let (event_id, event_type, payload) = (&envelope.event_id, &envelope.event_type, &envelope.payload);
    let job_id = JobId::new();
    let p = psp_principal();
    let job_payload = serde_json::to_value(PspWebhookV1 { event_id: event_id.to_string() })?;
    let key = format!("webhook:{event_id}");
    let hash = record::request_hash(JobKind::PspWebhook, &job_payload);
    let stored: Option<JobId> = sqlx::query_scalar(
        "WITH ev AS (
            INSERT INTO psp_webhook_events (id, event_id, type, payload, raw_body, job_id) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT ON CONSTRAINT psp_webhook_events_event_key DO NOTHING RETURNING job_id
         ), job AS (
            INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at)
            SELECT job_id, 'psp_webhook', $7, $8, $9, 'psp', $10, $11, now() FROM ev RETURNING id
         ), audit AS (
            INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
            SELECT $12, 'psp', 'WEBHOOK_RECEIVED', 'webhook_event', $2, jsonb_build_object('type', $3::text, 'job_id', id) FROM job
         )
         SELECT id FROM job",
    )
    .bind(WebhookEventId::new())
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(raw)
    .bind(job_id)
    .bind(&job_payload)
    .bind(p.user_id)
    .bind(p.key_id)
    .bind(&key)
    .bind(&hash)
    .bind(AuditId::new())
    .fetch_optional(pool)
    .await?;
    Ok(match stored {
        Some(id) => Received {
            received: true,
            event_id: event_id.to_string(),
            duplicate: false,
            job: Some((id, JobKind::PspWebhook)),
        },
        None => Received { received: true, event_id: event_id.to_string(), duplicate: true, job: None },
    })
}
