//! Manual adjustments (job `saka_adjustment`, action `request`): admin
//! only, 1 to 1,000 grains, never to one's own wallet; up to 500 applied at
//! once within the daily cap, above that waiting for a second admin.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use sqlx::PgConnection;

use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::domain::saka::approvals::approve_adjustment;
use crate::domain::saka::cap::{Applied, credit_applied, take_cap};
use crate::domain::saka::model::{
    ADJUSTMENT_COLUMNS, Adjustment, AdjustmentOut, NewAdjustment, SakaAdjustmentV1, invalid, status,
};
use crate::domain::saka::model::{
    ADJUSTMENT_ENTITY, ADJUSTMENT_MAX, APPROVAL_TTL_HOURS, DUAL_APPROVAL_ABOVE, NOTE_MAX_CHARS, WALLET_ENTITY, saka_day,
};
use crate::error::{Error, ErrorCode, FieldError, Result};
use crate::ids::{JobId, SakaAdjustmentId};
use crate::jobs::Outcome;
use crate::money::Grains;
use crate::principal::{Principal, Role};

/// Runs a `saka_adjustment` job: a request or an approval.
pub async fn run_adjustment(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: JobId,
    cmd: &SakaAdjustmentV1,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Outcome> {
    match cmd {
        SakaAdjustmentV1::Request(new) => request_adjustment(conn, who, job_id, new, now, tz).await,
        SakaAdjustmentV1::Approve { adjustment_id } => {
            approve_adjustment(conn, who, job_id, *adjustment_id, now, tz).await
        }
    }
}

/// Requests a manual adjustment (admin only, 1..=1000 grains). Up to 500 it
/// is applied at once within the daily cap (`APPLIED`); above, it waits
/// `PENDING_APPROVAL` for a second admin for 24 h.
///
/// A cap refusal is returned as `Ok` with `End::Refused`: it changed nothing
/// but its audit row, which is kept. Other refusals are `Err` (the caller
/// rolls back).
#[tracing::instrument(skip_all, fields(job_id = %job_id, user_id = %cmd.user_id, amount = %cmd.amount))]
pub async fn request_adjustment(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: JobId,
    cmd: &NewAdjustment,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Outcome> {
    let note = check_request(who, cmd)?;
    require_active_user(conn, cmd.user_id, "user_id").await?;
    let req = Request { who, job_id, cmd, note, now };
    if cmd.amount > DUAL_APPROVAL_ABOVE { req.wait_for_approval(conn).await } else { req.apply_now(conn, tz).await }
}

/// Admin only, never for one's own wallet (otherwise an admin could grant
/// themselves 500 grains a day with no second pair of eyes: SAKA is never
/// minted freely), 1 to 1,000 grains, and a note saying why. Answers the
/// trimmed note.
fn check_request<'a>(who: &Principal, cmd: &'a NewAdjustment) -> Result<&'a str> {
    who.require(&[Role::Admin])?;
    if who.user_id == cmd.user_id {
        return Err(Error::problem(ErrorCode::Forbidden, "an admin may not adjust their own SAKA wallet"));
    }
    let note = cmd.note.trim();
    let mut errors = Vec::new();
    if !(Grains(1)..=ADJUSTMENT_MAX).contains(&cmd.amount) {
        errors.push(FieldError::new("amount", format!("must be a whole number of grains from 1 to {ADJUSTMENT_MAX}")));
    }
    if note.is_empty() || note.chars().count() > NOTE_MAX_CHARS {
        errors.push(FieldError::new("note", format!("must say why, in 1 to {NOTE_MAX_CHARS} characters")));
    }
    invalid(errors)?;
    Ok(note)
}

/// A checked request, on its way to a row.
struct Request<'a> {
    who: &'a Principal,
    job_id: JobId,
    cmd: &'a NewAdjustment,
    note: &'a str,
    now: DateTime<Utc>,
}

impl Request<'_> {
    /// Above 500 grains: stored `PENDING_APPROVAL` until a second admin
    /// approves it, or 24 h pass.
    async fn wait_for_approval(&self, conn: &mut PgConnection) -> Result<Outcome> {
        let expires_at = self.now + Duration::hours(APPROVAL_TTL_HOURS);
        let adj = self.insert(conn, status::PENDING_APPROVAL, Some(expires_at)).await?;
        Ok(Outcome::succeeded(serde_json::to_value(AdjustmentOut::from(adj))?))
    }

    /// Up to 500 grains: applied at once within the daily cap, or refused
    /// with no adjustment row (a request applied at once either is APPLIED
    /// or never existed; the refusal is on the wallet's trail).
    async fn apply_now(&self, conn: &mut PgConnection, tz: Tz) -> Result<Outcome> {
        let cmd = self.cmd;
        let day = saka_day(self.now, tz);
        let used = match take_cap(conn, cmd.user_id, cmd.amount, day).await? {
            Ok(used) => used,
            Err(problem) => {
                let data = serde_json::json!({
                    "amount": cmd.amount, "note": self.note, "code": problem.code.as_str(), "detail": problem.detail,
                    "day": day, "job_id": self.job_id,
                });
                audit::write(conn, &self.who.actor(), "SAKA_ADJUSTMENT_REFUSED", WALLET_ENTITY, cmd.user_id, data)
                    .await?;
                return Ok(Outcome::refused(problem));
            }
        };
        let adj = self.insert(conn, status::APPLIED, None).await?;
        credit_applied(conn, &self.who.actor(), &adj, Applied { used, day, job_id: self.job_id }).await?;
        Ok(Outcome::succeeded(serde_json::to_value(AdjustmentOut::from(adj))?))
    }

    /// The request's row, `PENDING_APPROVAL` until `expires_at` or
    /// `APPLIED` now, and its audit row.
    async fn insert(
        &self,
        conn: &mut PgConnection,
        status: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Adjustment> {
        let (cmd, id) = (self.cmd, SakaAdjustmentId::new());
        let decided_at = (status == status::APPLIED).then_some(self.now);
        let adj: Adjustment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO saka_adjustments
                    (id, user_id, amount, note, status, requested_by, request_job_id, created_at, expires_at, decided_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {ADJUSTMENT_COLUMNS}"
        )))
        .bind(id)
        .bind(cmd.user_id)
        .bind(cmd.amount)
        .bind(self.note)
        .bind(status)
        .bind(self.who.user_id)
        .bind(self.job_id)
        .bind(self.now)
        .bind(expires_at)
        .bind(decided_at)
        .fetch_one(&mut *conn)
        .await?;
        let mut data = serde_json::json!({
            "user_id": cmd.user_id, "amount": cmd.amount, "note": self.note, "status": status, "job_id": self.job_id,
        });
        if let Some(at) = expires_at {
            data["expires_at"] = serde_json::json!(at);
        }
        audit::write(conn, &self.who.actor(), "SAKA_ADJUSTMENT_REQUESTED", ADJUSTMENT_ENTITY, id, data).await?;
        Ok(adj)
    }
}
