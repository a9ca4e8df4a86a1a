//! The second admin's part: approving a pending adjustment within the
//! daily cap, rejecting it (final), and its expiry after 24 h (cron
//! `saka_approval_expiry`).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgConnection;

use crate::domain::access::power::require_independent;
use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::domain::saka::cap::{Applied, credit_applied, lock_adjustment, not_pending, take_cap};
use crate::domain::saka::model::{ADJUSTMENT_COLUMNS, Adjustment, AdjustmentOut, invalid, status};
use crate::domain::saka::model::{ADJUSTMENT_ENTITY, NOTE_MAX_CHARS, saka_day};
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{JobId, SakaAdjustmentId};
use crate::jobs::Outcome;
use crate::principal::{Principal, Role};

/// Approves a pending adjustment (job `saka_adjustment`, action `approve`):
/// an admin other than the requester (and other than the credited user),
/// independent of the requester (`APPROVER_NOT_INDEPENDENT`: admin power
/// held before the request, not from the requester), applies it within the
/// daily cap. A request past its expiry is expired
/// here (kept) and refused. A cap refusal leaves the request pending and is
/// returned as `Ok` with `End::Refused` with its audit row kept.
#[tracing::instrument(skip_all, fields(job_id = %job_id, adjustment_id = %id))]
pub async fn approve_adjustment(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: JobId,
    id: SakaAdjustmentId,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Outcome> {
    who.require(&[Role::Admin])?;
    let adj = lock_adjustment(conn, id).await?;
    may_approve(who, &adj)?;
    let actor = who.actor();
    if adj.expires_at.is_some_and(|at| at <= now) {
        expire_one(conn, &actor, &adj, now, Some(job_id)).await?;
        return Ok(Outcome::refused(Problem::new(
            ErrorCode::SakaAdjustmentNotPending,
            "the adjustment expired before it was approved; it is now EXPIRED",
        )));
    }
    // The second pair of eyes must belong to someone else: a puppet admin
    // the requester made, or one made after the request, does not count.
    require_independent(conn, who, adj.requested_by, adj.created_at).await?;
    require_active_user(conn, adj.user_id, "user_id").await?;
    let day = saka_day(now, tz);
    let used = match take_cap(conn, adj.user_id, adj.amount, day).await? {
        Ok(used) => used,
        Err(problem) => {
            let data = serde_json::json!({
                "user_id": adj.user_id, "amount": adj.amount, "code": problem.code.as_str(), "detail": problem.detail,
                "status": status::PENDING_APPROVAL, "day": day, "job_id": job_id,
            });
            audit::write(conn, &actor, "SAKA_ADJUSTMENT_REFUSED", ADJUSTMENT_ENTITY, adj.id, data).await?;
            return Ok(Outcome::refused(problem));
        }
    };
    let applied: Option<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE saka_adjustments SET status = 'APPLIED', approved_by = $2, decided_at = $3
          WHERE id = $1 AND status = 'PENDING_APPROVAL' RETURNING {ADJUSTMENT_COLUMNS}"
    )))
    .bind(adj.id)
    .bind(who.user_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    // The row is locked since `lock_adjustment`; this only guards the guard.
    let Some(applied) = applied else {
        return Err(not_pending(&adj));
    };
    let data = serde_json::json!({
        "user_id": adj.user_id, "amount": adj.amount, "requested_by": adj.requested_by, "approved_by": who.user_id,
        "job_id": job_id,
    });
    audit::write(conn, &actor, "SAKA_ADJUSTMENT_APPROVED", ADJUSTMENT_ENTITY, adj.id, data).await?;
    credit_applied(conn, &actor, &applied, Applied { used, day, job_id }).await?;
    Ok(Outcome::succeeded(serde_json::to_value(AdjustmentOut::from(applied))?))
}

/// A second admin, other than the credited user, approves a pending request.
fn may_approve(who: &Principal, adj: &Adjustment) -> Result<()> {
    if adj.requested_by == who.user_id {
        return Err(Error::problem(
            ErrorCode::SakaSelfApproval,
            "the requester cannot approve their own adjustment; a second admin must",
        ));
    }
    if adj.user_id == who.user_id {
        return Err(Error::problem(
            ErrorCode::Forbidden,
            "an admin may not approve an adjustment of their own SAKA wallet",
        ));
    }
    if adj.status != status::PENDING_APPROVAL {
        return Err(not_pending(adj));
    }
    Ok(())
}

/// Rejects a pending adjustment (admin; the requester may withdraw their
/// own). Final.
#[tracing::instrument(skip_all, fields(adjustment_id = %id))]
pub async fn reject_adjustment(
    conn: &mut PgConnection,
    who: &Principal,
    id: SakaAdjustmentId,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<AdjustmentOut> {
    who.require(&[Role::Admin])?;
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > NOTE_MAX_CHARS) {
        invalid(vec![FieldError::new("note", format!("must be at most {NOTE_MAX_CHARS} characters"))])?;
    }
    let adj = lock_adjustment(conn, id).await?;
    if adj.status != status::PENDING_APPROVAL {
        return Err(not_pending(&adj));
    }
    if adj.expires_at.is_some_and(|at| at <= now) {
        return Err(Error::problem(ErrorCode::SakaAdjustmentNotPending, "the adjustment has expired"));
    }
    let rejected: Option<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE saka_adjustments SET status = 'REJECTED', rejected_by = $2, decision_note = $3, decided_at = $4
          WHERE id = $1 AND status = 'PENDING_APPROVAL' RETURNING {ADJUSTMENT_COLUMNS}"
    )))
    .bind(id)
    .bind(who.user_id)
    .bind(note)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(rejected) = rejected else {
        return Err(not_pending(&adj));
    };
    audit::write(
        conn,
        &who.actor(),
        "SAKA_ADJUSTMENT_REJECTED",
        ADJUSTMENT_ENTITY,
        id,
        serde_json::json!({
            "user_id": adj.user_id, "amount": adj.amount, "requested_by": adj.requested_by, "note": note,
        }),
    )
    .await?;
    Ok(rejected.into())
}

async fn expire_one(
    conn: &mut PgConnection,
    actor: &str,
    adj: &Adjustment,
    now: DateTime<Utc>,
    job_id: Option<JobId>,
) -> Result<()> {
    sqlx::query(
        "UPDATE saka_adjustments SET status = 'EXPIRED', decided_at = $2 WHERE id = $1 AND status = 'PENDING_APPROVAL'",
    )
    .bind(adj.id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    audit::write(conn, actor, "SAKA_ADJUSTMENT_EXPIRED", ADJUSTMENT_ENTITY, adj.id, serde_json::json!({
        "user_id": adj.user_id, "amount": adj.amount, "requested_by": adj.requested_by, "expires_at": adj.expires_at,
        "job_id": job_id,
    }))
    .await
}

/// Expires every pending request whose 24 h have passed (cron
/// `saka_approval_expiry`). Returns how many.
#[tracing::instrument(skip_all)]
pub async fn expire_pending(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<i64> {
    let expired: Vec<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE saka_adjustments SET status = 'EXPIRED', decided_at = $1
          WHERE status = 'PENDING_APPROVAL' AND expires_at <= $1 RETURNING {ADJUSTMENT_COLUMNS}"
    )))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let actor = Principal::system().actor();
    for adj in &expired {
        audit::write(conn, &actor, "SAKA_ADJUSTMENT_EXPIRED", ADJUSTMENT_ENTITY, adj.id, serde_json::json!({
            "user_id": adj.user_id, "amount": adj.amount, "requested_by": adj.requested_by, "expires_at": adj.expires_at,
        }))
        .await?;
    }
    Ok(expired.len() as i64)
}

/// An adjustment, for admin and support.
pub async fn get_adjustment(conn: &mut PgConnection, who: &Principal, id: SakaAdjustmentId) -> Result<AdjustmentOut> {
    who.require(&[Role::Admin, Role::Support])?;
    let adj: Option<Adjustment> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ADJUSTMENT_COLUMNS} FROM saka_adjustments WHERE id = $1")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    adj.map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::SakaAdjustmentNotFound, "SAKA adjustment"))
}

/// Adjustments, newest first, for admin and support; `status` (one of
/// [`status`]) filters, e.g. those waiting for a second admin.
pub async fn list_adjustments(
    conn: &mut PgConnection,
    who: &Principal,
    status_filter: Option<&str>,
    page: &crate::page::PageRequest,
) -> Result<crate::page::Page<AdjustmentOut>> {
    who.require(&[Role::Admin, Role::Support])?;
    let known = [status::PENDING_APPROVAL, status::APPLIED, status::REJECTED, status::EXPIRED];
    if let Some(st) = status_filter
        && !known.contains(&st)
    {
        let why = FieldError::new("status", "must be PENDING_APPROVAL, APPLIED, REJECTED or EXPIRED");
        return Err(Problem::fields(ErrorCode::ValidationError, vec![why]).into());
    }
    let rows: Vec<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM saka_adjustments
          WHERE ($1::text IS NULL OR status = $1) AND id < $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(status_filter)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    let page = crate::page::Page::from_rows(rows, page, |a| a.id.0);
    Ok(page.map(AdjustmentOut::from))
}
