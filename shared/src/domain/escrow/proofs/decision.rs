//! A person's decision on a proof sent to review: support, an admin or the
//! escrow's client approves (the milestone is APPROVED and paid out) or
//! rejects it (the milestone waits for a new proof).

use sqlx::PgConnection;

use crate::domain::escrow::proofs::proof::{Decision, ProofOut, approve, load, require_active};
use crate::domain::escrow::state;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{JobId, ProofId, UserId};
use crate::jobs::Outcome;
use crate::principal::{Principal, Role};

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
    job: JobId,
    proof_id: ProofId,
    decision: Decision,
    note: Option<&str>,
) -> Result<Outcome> {
    let p = load(conn, proof_id).await?;
    let e = state::load(conn, p.escrow_id).await?;
    if !(who.reads_all() || e.is_party(who)) {
        return Err(Error::not_found(ErrorCode::NotFound, "proof"));
    }
    may_decide(who, e.client_id)?;
    if p.status != "PENDING_REVIEW" {
        return Err(Error::problem(ErrorCode::ProofAlreadyDecided, format!("the proof is {}", p.status)));
    }
    require_active(&e)?;
    let m = state::milestone(conn, p.milestone_id).await?;
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
    let data = serde_json::json!({"decision": decision, "note": note, "job_id": job});
    audit::write(conn, &actor, action, "proof", p.id, data).await?;
    let payout = match decision {
        Decision::Approve => approve(conn, job, &e, &m, "PENDING_REVIEW", &actor).await?,
        Decision::Reject => {
            state::transition_milestone(conn, &m, &["PENDING_REVIEW"], "WAITING").await?;
            None
        }
    };
    let p = load(conn, proof_id).await?;
    Ok(Outcome::succeeded(serde_json::to_value(ProofOut::from(&p))?).then(payout))
}
