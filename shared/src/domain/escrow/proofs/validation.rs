//! The `proof_validation` job for an upload: the EXIF facts of the stored
//! file decide (rejected, sent to review, or approved with its payout).

use sqlx::PgConnection;

use crate::domain::escrow::model::Escrow;
use crate::domain::escrow::proofs::proof::{Proof, ProofOut, approve, load, require_active};
use crate::domain::escrow::state;
use crate::domain::ops::audit;
use crate::error::{Error, Problem, Result};
use crate::ids::{JobId, ProofId};
use crate::jobs::Outcome;
use crate::principal::Principal;
use crate::proofs::geo::Geofence;
use crate::proofs::{Evaluation, ProofType, Verdict, evaluate};
use crate::storage::ProofStore;

/// The `proof_validation` job for an upload.
pub async fn validate(
    conn: &mut PgConnection,
    store: &dyn ProofStore,
    who: &Principal,
    job: JobId,
    proof_id: ProofId,
) -> Result<Outcome> {
    let p = load(conn, proof_id).await?;
    if p.status != "PENDING" {
        return Ok(Outcome::succeeded(serde_json::to_value(ProofOut::from(&p))?));
    }
    let e = state::load(conn, p.escrow_id).await?;
    let m = state::milestone(conn, p.milestone_id).await?;
    let actor = who.actor();
    // The escrow ended while the proof waited (released, refunded): the proof
    // is rejected with that reason, the milestone is left as it is.
    if let Err(Error::Problem(refusal)) = require_active(&e) {
        return reject_for_escrow(conn, &p, &e, &actor, refusal).await;
    }
    // A local read today; with an object store this is the one outside read
    // a validation makes, bounded by PROOF_MAX_BYTES.
    let bytes = store.get(&p.storage_key).await?;
    let proof_type = ProofType::parse(&m.proof_type).unwrap_or(ProofType::Document);
    let fence = m.geofence().map(|g| Geofence { lat: g.lat, lng: g.lng, radius_m: g.radius_m });
    let eval = evaluate(&bytes, proof_type, fence.as_ref(), &p.source, p.uploaded_at);
    let facts = record_facts(conn, &p, &eval).await?;
    let mut payout = None;
    match eval.verdict {
        Verdict::Rejected(code) => {
            audit::write(conn, &actor, "PROOF_REJECTED", "proof", p.id, facts).await?;
            return Ok(Outcome::refused(Problem::new(code, format!("the proof was rejected: {}", code.title()))));
        }
        Verdict::Review(_) => {
            state::transition_milestone(conn, &m, &["WAITING"], "PENDING_REVIEW").await?;
            audit::write(conn, &actor, "PROOF_SENT_TO_REVIEW", "proof", p.id, facts).await?;
        }
        Verdict::Approved => {
            audit::write(conn, &actor, "PROOF_APPROVED", "proof", p.id, facts).await?;
            payout = approve(conn, job, &e, &m, "WAITING", &actor).await?;
        }
    }
    let p = load(conn, proof_id).await?;
    Ok(Outcome::succeeded(serde_json::to_value(ProofOut::from(&p))?).then(payout))
}

/// A proof whose escrow is no longer active: REJECTED with that code, kept.
async fn reject_for_escrow(
    conn: &mut PgConnection,
    p: &Proof,
    e: &Escrow,
    actor: &str,
    refusal: Problem,
) -> Result<Outcome> {
    sqlx::query("UPDATE proofs SET status = 'REJECTED', rejection_code = $2 WHERE id = $1")
        .bind(p.id)
        .bind(refusal.code.as_str())
        .execute(&mut *conn)
        .await?;
    let data = serde_json::json!({"code": refusal.code.as_str(), "escrow_status": e.status});
    audit::write(conn, actor, "PROOF_REJECTED", "proof", p.id, data).await?;
    Ok(Outcome::refused(refusal))
}

/// The proof's status and the facts read from the file; answers them as
/// the audit row's data.
async fn record_facts(conn: &mut PgConnection, p: &Proof, eval: &Evaluation) -> Result<serde_json::Value> {
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
    Ok(serde_json::json!({
        "captured_at": eval.captured_at, "distance_m": eval.distance_m, "reasons": reasons, "code": code.map(|c| c.as_str()),
    }))
}
