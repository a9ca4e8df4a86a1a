//! A proof upload: the checks in DOMAIN.md's order on the staged file and
//! the proof row (`crate::intake` writes its `proof_validation` job in the
//! same transaction); and the retention of stored files no proof
//! references.

use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::escrow::model::{Escrow, Milestone};
use crate::domain::escrow::proofs::proof::{COLUMNS, Proof, ProofValidationV1};
use crate::domain::escrow::state;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{EscrowId, JobId, ProofId};
use crate::principal::Principal;
use crate::storage::ProofStore;

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

/// The proof of an earlier upload under the same idempotency key (its
/// job's payload): the
/// same file for the same milestone answers it again; anything else is
/// `IDEMPOTENCY_KEY_REUSED`.
pub fn replayed(payload: &serde_json::Value, new: &NewProof) -> Result<ProofId> {
    match serde_json::from_value::<ProofValidationV1>(payload.clone()) {
        Ok(ProofValidationV1::Validate { proof_id, ref sha256, escrow_id, milestone_idx, .. })
            if *sha256 == new.sha256 && escrow_id == new.escrow_id && milestone_idx == new.milestone_idx =>
        {
            Ok(proof_id)
        }
        _ => Err(Error::problem(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was already used with another request",
        )),
    }
}

/// An accepted upload: its proof row and the payload of its validation job.
pub struct Accepted {
    pub proof: Proof,
    pub payload: ProofValidationV1,
}

/// The upload's checks in DOMAIN.md's order, then the proof row.
pub async fn accept(conn: &mut PgConnection, who: &Principal, new: &NewProof) -> Result<Accepted> {
    let (e, m) = check(conn, who, new).await?;
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
    Ok(Accepted { proof: p, payload })
}

/// The caller is the provider (or an admin; anyone else gets the same 404
/// as for a missing escrow), the file is new, the escrow is active, the
/// milestone exists, every earlier one is PAID, and it waits for a proof.
async fn check(conn: &mut PgConnection, who: &Principal, new: &NewProof) -> Result<(Escrow, Milestone)> {
    let e = state::load_for(conn, new.escrow_id, who, true).await?;
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
    if !e.is_active() {
        return Err(Error::problem(
            ErrorCode::EscrowNotActive,
            format!("proofs are taken for a FUNDED or RELEASABLE escrow, not {}", e.status),
        ));
    }
    let m = state::milestone_by_idx(conn, e.id, new.milestone_idx).await?;
    let (unpaid_before, in_flight): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM milestones WHERE escrow_id = $1 AND idx < $2 AND status <> 'PAID'),
                EXISTS (SELECT 1 FROM proofs WHERE milestone_id = $3 AND status IN ('PENDING', 'PENDING_REVIEW'))",
    )
    .bind(e.id)
    .bind(m.idx)
    .bind(m.id)
    .fetch_one(&mut *conn)
    .await?;
    if unpaid_before > 0 {
        return Err(Error::problem(
            ErrorCode::SequenceError,
            format!("{unpaid_before} earlier milestone(s) are not paid yet"),
        ));
    }
    if m.status != "WAITING" || in_flight {
        return Err(Error::problem(
            ErrorCode::MilestoneNotWaiting,
            format!("the milestone is {} and not waiting for a proof", m.status),
        ));
    }
    Ok((e, m))
}

/// The audit row of an accepted upload, naming its job.
pub async fn submitted(conn: &mut PgConnection, who: &Principal, p: &Proof, job: JobId) -> Result<()> {
    let data =
        serde_json::json!({"milestone_id": p.milestone_id, "sha256": p.sha256, "source": p.source, "job_id": job});
    audit::write(conn, &who.actor(), "PROOF_SUBMITTED", "proof", p.id, data).await
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
            // Written again since the listing (an upload of the same bytes,
            // its row not yet committed): not an orphan.
            let still_old = store.written_at(key).await?.is_some_and(|at| at < cutoff);
            if still_old && store.delete(key).await? {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}
