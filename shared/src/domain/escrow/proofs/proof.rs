//! The proof row, what its parties read of it, the job payload of its
//! validation and decision, and the approval both of them may end with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::escrow::model::{Escrow, Milestone, PaymentKind};
use crate::domain::escrow::{payouts, state};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, JobId, MilestoneId, ProofId, UserId};
use crate::jobs::FollowUp;
use crate::principal::Principal;

pub(crate) const COLUMNS: &str = "id, escrow_id, milestone_id, sha256, storage_key, content_type, size_bytes, source, status, captured_at, gps_lat, gps_lng, distance_m, review_reasons, rejection_code, uploaded_by, uploaded_at, decided_by, decided_at, decision_note";

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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

pub(crate) async fn load(conn: &mut PgConnection, id: ProofId) -> Result<Proof> {
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

/// `from` → APPROVED (guarded), and the payout job it asks for.
pub(crate) async fn approve(
    conn: &mut PgConnection,
    job: JobId,
    e: &Escrow,
    m: &Milestone,
    from: &str,
    actor: &str,
) -> Result<Option<FollowUp>> {
    state::require_parties_active(conn, e).await?;
    state::transition_milestone(conn, m, &[from], "APPROVED").await?;
    audit::write(conn, actor, "MILESTONE_APPROVED", "milestone", m.id, serde_json::json!({"escrow_id": e.id})).await?;
    Ok(payouts::enqueue(conn, job, e, PaymentKind::Milestone, Some(m), m.amount).await?.1)
}

/// Validations and decisions need the escrow FUNDED or RELEASABLE: after a
/// release or a refund nothing moves a milestone any more.
pub(crate) fn require_active(e: &Escrow) -> Result<()> {
    if e.is_active() {
        Ok(())
    } else {
        Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("proofs are validated and decided for a FUNDED or RELEASABLE escrow, not {}", e.status),
        ))
    }
}
