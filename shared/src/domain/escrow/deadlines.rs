//! Deadlines: an escrow FUNDED or RELEASABLE past its deadline, with no
//! milestone in review, is released as if its client approved. The
//! `escrow_deadlines` cron job makes one `check_deadline` job per due
//! escrow, so a refusal for one (with its alert) never holds back the
//! others. The guard itself is the transition's (`transitions`).

use chrono::Utc;
use sqlx::PgConnection;

use crate::domain::escrow::transitions::{EscrowTransitionV1, TransitionAction};
use crate::error::Result;
use crate::ids::EscrowId;
use crate::jobs::{FollowUp, JobKind, Outcome};

/// The `escrow_deadlines` cron job: one `check_deadline` job per escrow
/// past its deadline with nothing in review (result `{"enqueued": n}`).
/// Each job is keyed by escrow and hour: a refused escrow is tried (and
/// alerted) again once an hour, not on every tick.
pub async fn release_due(conn: &mut PgConnection) -> Result<Outcome> {
    let due: Vec<EscrowId> = sqlx::query_scalar(
        "SELECT id FROM escrows e WHERE status IN ('FUNDED', 'RELEASABLE') AND deadline_at <= now()
            AND NOT EXISTS (SELECT 1 FROM milestones m WHERE m.escrow_id = e.id AND m.status = 'PENDING_REVIEW')
          ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let hour = Utc::now().format("%Y-%m-%dT%H");
    let jobs = due
        .iter()
        .map(|id| {
            let cmd = EscrowTransitionV1 { escrow_id: *id, action: TransitionAction::CheckDeadline, note: None };
            FollowUp::new(JobKind::EscrowTransition, &cmd, format!("deadline:{id}:{hour}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Outcome::succeeded(serde_json::json!({"enqueued": jobs.len()})).then(jobs))
}
