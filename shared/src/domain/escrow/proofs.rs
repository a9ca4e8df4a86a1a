//! Proof records: upload pre-checks and the row, the `proof_validation`
//! job (EXIF rules from `crate::proofs` on the stored bytes, never on client
//! claims) and the human decision on proofs sent to review.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::escrow::escrows::{self, Escrow, MILESTONE_COLUMNS, Milestone};
use crate::domain::escrow::payouts::{self, PaymentKind};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{EscrowId, JobId, MilestoneId, ProofId, UserId};
use crate::jobs::{JobKind, JobRow, NewJob, Outcome, record};
use crate::principal::{Principal, Role};
use crate::proofs::geo::Geofence;
use crate::proofs::{ProofType, Verdict, evaluate};
use crate::storage::{ProofStore, StagedFile};

const COLUMNS: &str = "id, escrow_id, milestone_id, sha256, storage_key, content_type, size_bytes, source, status, captured_at, gps_lat, gps_lng, distance_m, review_reasons, rejection_code, uploaded_by, uploaded_at, decided_by, decided_at, decision_note";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Proof {
    pub id: ProofId,
    pub escrow_id: EscrowId,
    pub milestone_id: MilestoneId,
    pub sha256: String,
    pub storage_key: String,
    pub content_type: Option<String>,
    pub size_bytes: i64,
    pub source: String,
    pub status: String,
    pub captured_at: Option<DateTime<Utc>>,
    pub gps_lat: Option<f64>,
    pub gps_lng: Option<f64>,
    pub distance_m: Option<f64>,
    pub review_reasons: serde_json::Value,
    pub rejection_code: Option<String>,
    pub uploaded_by: UserId,
    pub uploaded_at: DateTime<Utc>,
    pub decided_by: Option<UserId>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProofOut {
    pub id: ProofId,
    pub escrow_id: EscrowId,
    pub milestone_id: MilestoneId,
    pub sha256: String,
    pub status: String,
    pub source: String,
    pub captured_at: Option<DateTime<Utc>>,
    pub gps: Option<serde_json::Value>,
    pub distance_m: Option<f64>,
    pub review_reasons: serde_json::Value,
    pub rejection_code: Option<String>,
    pub uploaded_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub href: String,
}

impl From<&Proof> for ProofOut {
    fn from(p: &Proof) -> Self {
        ProofOut {
            id: p.id,
            escrow_id: p.escrow_id,
            milestone_id: p.milestone_id,
            sha256: p.sha256.clone(),
            status: p.status.clone(),
            source: p.source.clone(),
            captured_at: p.captured_at,
            gps: match (p.gps_lat, p.gps_lng) {
                (Some(lat), Some(lng)) => Some(serde_json::json!({"lat": lat, "lng": lng})),
                _ => None,
            },
            distance_m: p.distance_m.map(|d| (d * 10.0).round() / 10.0),
            review_reasons: p.review_reasons.clone(),
            rejection_code: p.rejection_code.clone(),
            uploaded_at: p.uploaded_at,
            decided_at: p.decided_at,
            href: format!("/proofs/{}", p.id),
        }
    }
}

/// The `proof_validation` job payload, version 1: the validation of an
/// upload, or a person's decision on a proof in review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ProofValidationV1 {
    Validate { proof_id: ProofId, escrow_id: EscrowId, milestone_idx: i32, sha256: String, source: String },
    Decide { proof_id: ProofId, decision: Decision, note: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Clone)]
pub struct NewProof {
    pub escrow_id: EscrowId,
    pub milestone_idx: i32,
    pub source: String,
    pub sha256: String,
    pub storage_key: String,
    pub content_type: Option<String>,
    pub size_bytes: i64,
}

async fn milestone_by_idx(conn: &mut PgConnection, escrow: EscrowId, idx: i32) -> Result<Milestone> {
    let m: Option<Milestone> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MILESTONE_COLUMNS} FROM milestones WHERE escrow_id = $1 AND idx = $2 FOR UPDATE"
    )))
    .bind(escrow)
    .bind(idx)
    .fetch_optional(conn)
    .await?;
    m.ok_or_else(|| Error::not_found(ErrorCode::MilestoneNotFound, "milestone"))
}

async fn milestone(conn: &mut PgConnection, id: MilestoneId) -> Result<Milestone> {
    let m: Option<Milestone> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MILESTONE_COLUMNS} FROM milestones WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    m.ok_or_else(|| Error::not_found(ErrorCode::MilestoneNotFound, "milestone"))
}

/// The upload's checks (DOMAIN.md order, on the staged file), the proof
/// row and its job, in the caller's transaction; only an accepted upload
/// moves its staged file into the store, as the last step before the
/// commit. A refusal leaves the staged file to be deleted when dropped; a
/// commit that fails after the placement leaves a file no proof references,
/// which retention deletes. The same idempotency key with the same file
/// answers the first job.
pub async fn submit(
    conn: &mut PgConnection,
    who: &Principal,
    new: &NewProof,
    idempotency_key: &str,
    store: &dyn ProofStore,
    staged: &StagedFile,
) -> Result<(ProofId, JobRow, bool)> {
    let existing: Option<JobId> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE actor_user_id = $1 AND idempotency_key = $2 AND parent_job_id IS NULL",
    )
    .bind(who.user_id)
    .bind(idempotency_key)
    .fetch_optional(&mut *conn)
    .await?;
    let existing = match existing {
        Some(id) => record::get(conn, id).await?,
        None => None,
    };
    if let Some(job) = existing {
        let same = matches!(job.payload::<ProofValidationV1>(), Ok(ProofValidationV1::Validate { ref sha256, escrow_id, milestone_idx, .. })
            if *sha256 == new.sha256 && escrow_id == new.escrow_id && milestone_idx == new.milestone_idx);
        if !same {
            return Err(Error::problem(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with another request",
            ));
        }
        let id = match job.payload::<ProofValidationV1>()? {
            ProofValidationV1::Validate { proof_id, .. } => proof_id,
            ProofValidationV1::Decide { proof_id, .. } => proof_id,
        };
        return Ok((id, job, false));
    }
    let e = escrows::load_for(conn, new.escrow_id, who, true).await?;
    // Anyone but the provider (or an admin) gets the same 404 as for a
    // missing escrow.
    if !(who.is_admin() || who.user_id == e.provider_id) {
        return Err(Error::not_found(ErrorCode::EscrowNotFound, "escrow"));
    }
    // DOMAIN.md's order: the file first (a file already used), then the milestone.
    let used: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM proofs WHERE sha256 = $1)")
        .bind(&new.sha256)
        .fetch_one(&mut *conn)
        .await?;
    if used {
        return Err(Error::problem(ErrorCode::ProofDuplicate, "this file was already used as a proof"));
    }
    if !matches!(e.status.as_str(), "FUNDED" | "RELEASABLE") {
        return Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("proofs are taken for a FUNDED or RELEASABLE escrow, not {}", e.status),
        ));
    }
    let m = milestone_by_idx(conn, e.id, new.milestone_idx).await?;
    let unpaid_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM milestones WHERE escrow_id = $1 AND idx < $2 AND status <> 'PAID'")
            .bind(e.id)
            .bind(m.idx)
            .fetch_one(&mut *conn)
            .await?;
    if unpaid_before > 0 {
        return Err(Error::problem(
            ErrorCode::SequenceError,
            format!("{unpaid_before} earlier milestone(s) are not paid yet"),
        ));
    }
    let in_flight: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM proofs WHERE milestone_id = $1 AND status IN ('PENDING', 'PENDING_REVIEW'))",
    )
    .bind(m.id)
    .fetch_one(&mut *conn)
    .await?;
    if m.status != "WAITING" || in_flight {
        return Err(Error::problem(
            ErrorCode::MilestoneNotWaiting,
            format!("the milestone is {} and not waiting for a proof", m.status),
        ));
    }
    let p: Proof = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO proofs (id, escrow_id, milestone_id, sha256, storage_key, content_type, size_bytes, source, uploaded_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(ProofId::new())
    .bind(e.id)
    .bind(m.id)
    .bind(&new.sha256)
    .bind(&new.storage_key)
    .bind(&new.content_type)
    .bind(new.size_bytes)
    .bind(&new.source)
    .bind(who.user_id)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("proofs_sha256_key", ErrorCode::ProofDuplicate, "this file was already used as a proof")?;
    let payload = ProofValidationV1::Validate {
        proof_id: p.id,
        escrow_id: e.id,
        milestone_idx: m.idx,
        sha256: p.sha256.clone(),
        source: p.source.clone(),
    };
    let (job, _) = record::insert(
        &mut *conn,
        &NewJob::new(JobKind::ProofValidation, &payload, who, Some(idempotency_key.to_string()))?,
    )
    .await?;
    audit::write(
        conn,
        &who.actor(),
        "PROOF_SUBMITTED",
        "proof",
        p.id,
        serde_json::json!({"milestone_id": m.id, "sha256": p.sha256, "source": p.source, "job_id": job.id}),
    )
    .await?;
    store.place(staged, &new.storage_key).await?;
    Ok((p.id, job, true))
}

/// Retention of proof files: deletes the stored files written more than
/// `older_than` ago that no proof references (an upload whose commit failed
/// after its file was placed, a staging file a crash left behind). Answers
/// how many were deleted.
pub async fn sweep_files(
    conn: &mut PgConnection,
    store: &dyn ProofStore,
    older_than: std::time::Duration,
) -> Result<u64> {
    let cutoff = std::time::SystemTime::now() - older_than;
    let mut deleted = 0;
    for keys in store.written_before(cutoff).await?.chunks(1000) {
        let referenced: Vec<String> = sqlx::query_scalar("SELECT storage_key FROM proofs WHERE storage_key = ANY($1)")
            .bind(keys)
            .fetch_all(&mut *conn)
            .await?;
        for key in keys.iter().filter(|k| !referenced.contains(k)) {
            if store.delete(key).await? {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

async fn load(conn: &mut PgConnection, id: ProofId) -> Result<Proof> {
    let p: Option<Proof> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM proofs WHERE id = $1 FOR UPDATE")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    p.ok_or_else(|| Error::not_found(ErrorCode::NotFound, "proof"))
}

/// Parties of the escrow, support and admin see a proof.
pub async fn get_for(conn: &mut PgConnection, id: ProofId, who: &Principal) -> Result<ProofOut> {
    let p: Option<Proof> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM proofs p WHERE id = $1 AND ($2 OR EXISTS (SELECT 1 FROM escrows e WHERE e.id = p.escrow_id AND (e.client_id = $3 OR e.provider_id = $3)))"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    p.as_ref().map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::NotFound, "proof"))
}

/// `from` → APPROVED (guarded) and its payout job.
async fn approve(
    conn: &mut PgConnection,
    job: &JobRow,
    e: &Escrow,
    m: &Milestone,
    from: &str,
    actor: &str,
) -> Result<()> {
    escrows::require_parties_active(conn, e).await?;
    escrows::transition_milestone(conn, m, &[from], "APPROVED").await?;
    audit::write(conn, actor, "MILESTONE_APPROVED", "milestone", m.id, serde_json::json!({"escrow_id": e.id})).await?;
    payouts::enqueue(conn, job, e, PaymentKind::Milestone, Some(m), m.amount).await?;
    Ok(())
}

/// Validations and decisions need the escrow FUNDED or RELEASABLE: after a
/// release or a refund nothing moves a milestone any more.
fn require_active(e: &Escrow) -> Result<()> {
    if matches!(e.status.as_str(), "FUNDED" | "RELEASABLE") {
        Ok(())
    } else {
        Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("proofs are validated and decided for a FUNDED or RELEASABLE escrow, not {}", e.status),
        ))
    }
}

/// The `proof_validation` job for an upload.
pub async fn validate(
    conn: &mut PgConnection,
    store: &dyn ProofStore,
    job: &JobRow,
    proof_id: ProofId,
) -> Result<Outcome> {
    let p = load(conn, proof_id).await?;
    if p.status != "PENDING" {
        return Ok(Outcome::Succeeded(serde_json::to_value(ProofOut::from(&p))?));
    }
    let e = escrows::load(conn, p.escrow_id).await?;
    let m = milestone(conn, p.milestone_id).await?;
    let actor = job.actor();
    // The escrow ended while the proof waited (released, refunded): the proof
    // is rejected with that reason, the milestone is left as it is.
    if let Err(Error::Problem(refusal)) = require_active(&e) {
        sqlx::query("UPDATE proofs SET status = 'REJECTED', rejection_code = $2 WHERE id = $1")
            .bind(p.id)
            .bind(refusal.code.as_str())
            .execute(&mut *conn)
            .await?;
        audit::write(
            conn,
            &actor,
            "PROOF_REJECTED",
            "proof",
            p.id,
            serde_json::json!({"code": refusal.code.as_str(), "escrow_status": e.status}),
        )
        .await?;
        return Ok(Outcome::Refused(refusal));
    }
    // A local read today; with an object store this is the one outside read
    // a validation makes, bounded by PROOF_MAX_BYTES.
    let bytes = store.get(&p.storage_key).await?;
    let proof_type = ProofType::parse(&m.proof_type).unwrap_or(ProofType::Document);
    let fence = m.geofence().map(|g| Geofence { lat: g.lat, lng: g.lng, radius_m: g.radius_m });
    let eval = evaluate(&bytes, proof_type, fence.as_ref(), &p.source, p.uploaded_at);
    let (status, reasons, code) = match &eval.verdict {
        Verdict::Rejected(code) => ("REJECTED", Vec::new(), Some(*code)),
        Verdict::Review(reasons) => ("PENDING_REVIEW", reasons.clone(), None),
        Verdict::Approved => ("APPROVED", Vec::new(), None),
    };
    sqlx::query(
        "UPDATE proofs SET status = $2, captured_at = $3, gps_lat = $4, gps_lng = $5, distance_m = $6, review_reasons = $7, rejection_code = $8 WHERE id = $1",
    )
    .bind(p.id)
    .bind(status)
    .bind(eval.captured_at)
    .bind(eval.gps.map(|g| g.lat))
    .bind(eval.gps.map(|g| g.lng))
    .bind(eval.distance_m)
    .bind(serde_json::json!(reasons))
    .bind(code.map(|c| c.as_str()))
    .execute(&mut *conn)
    .await?;
    let facts = serde_json::json!({"captured_at": eval.captured_at, "distance_m": eval.distance_m, "reasons": reasons, "code": code.map(|c| c.as_str())});
    match eval.verdict {
        Verdict::Rejected(code) => {
            audit::write(conn, &actor, "PROOF_REJECTED", "proof", p.id, facts).await?;
            return Ok(Outcome::Refused(Problem::new(code, format!("the proof was rejected: {}", code.title()))));
        }
        Verdict::Review(_) => {
            escrows::transition_milestone(conn, &m, &["WAITING"], "PENDING_REVIEW").await?;
            audit::write(conn, &actor, "PROOF_SENT_TO_REVIEW", "proof", p.id, facts).await?;
        }
        Verdict::Approved => {
            audit::write(conn, &actor, "PROOF_APPROVED", "proof", p.id, facts).await?;
            approve(conn, job, &e, &m, "WAITING", &actor).await?;
        }
    }
    let p = load(conn, proof_id).await?;
    Ok(Outcome::Succeeded(serde_json::to_value(ProofOut::from(&p))?))
}

/// The decision's pre-check at the edge: a proof the caller cannot see is
/// the same 404 as a missing one; anyone but support, an admin or the
/// escrow's client is `FORBIDDEN`. [`decide`] checks again in the job.
pub async fn check_decider(conn: &mut PgConnection, id: ProofId, who: &Principal) -> Result<()> {
    let parties: Option<(UserId, UserId)> = sqlx::query_as(
        "SELECT e.client_id, e.provider_id FROM proofs p JOIN escrows e ON e.id = p.escrow_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    match parties {
        Some((client, provider)) if who.reads_all() || who.user_id == client || who.user_id == provider => {
            may_decide(who, client)
        }
        _ => Err(Error::not_found(ErrorCode::NotFound, "proof")),
    }
}

fn may_decide(who: &Principal, client: UserId) -> Result<()> {
    if matches!(who.role, Role::Admin | Role::Support) || who.user_id == client {
        Ok(())
    } else {
        Err(Error::problem(ErrorCode::Forbidden, "support, an admin or the escrow's client decides"))
    }
}

/// A person's decision on a proof in review (support, admin, the client).
pub async fn decide(
    conn: &mut PgConnection,
    who: &Principal,
    job: &JobRow,
    proof_id: ProofId,
    decision: Decision,
    note: Option<&str>,
) -> Result<Outcome> {
    let p = load(conn, proof_id).await?;
    let e = escrows::load(conn, p.escrow_id).await?;
    if !(who.reads_all() || e.is_party(who)) {
        return Err(Error::not_found(ErrorCode::NotFound, "proof"));
    }
    may_decide(who, e.client_id)?;
    if p.status != "PENDING_REVIEW" {
        return Err(Error::problem(ErrorCode::ProofAlreadyDecided, format!("the proof is {}", p.status)));
    }
    require_active(&e)?;
    let m = milestone(conn, p.milestone_id).await?;
    let actor = who.actor();
    let (status, action) = match decision {
        Decision::Approve => ("APPROVED", "PROOF_APPROVED"),
        Decision::Reject => ("REJECTED", "PROOF_REJECTED"),
    };
    sqlx::query("UPDATE proofs SET status = $2, decided_by = $3, decided_at = now(), decision_note = $4 WHERE id = $1")
        .bind(p.id)
        .bind(status)
        .bind(who.user_id)
        .bind(note)
        .execute(&mut *conn)
        .await?;
    audit::write(
        conn,
        &actor,
        action,
        "proof",
        p.id,
        serde_json::json!({"decision": decision, "note": note, "job_id": job.id}),
    )
    .await?;
    match decision {
        Decision::Approve => approve(conn, job, &e, &m, "PENDING_REVIEW", &actor).await?,
        Decision::Reject => escrows::transition_milestone(conn, &m, &["PENDING_REVIEW"], "WAITING").await?,
    }
    let p = load(conn, proof_id).await?;
    Ok(Outcome::Succeeded(serde_json::to_value(ProofOut::from(&p))?))
}

/// Runs a `proof_validation` job.
pub async fn run(conn: &mut PgConnection, store: &dyn ProofStore, job: &JobRow) -> Result<Outcome> {
    match job.payload::<ProofValidationV1>()? {
        ProofValidationV1::Validate { proof_id, .. } => validate(conn, store, job, proof_id).await,
        ProofValidationV1::Decide { proof_id, decision, note } => {
            decide(conn, &job.principal()?, job, proof_id, decision, note.as_deref()).await
        }
    }
}
