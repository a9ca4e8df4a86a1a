//! Applying a manual adjustment: the daily cap (at most 1,000 grains per
//! user per SAKA day across all admins, a counter on the wallet carrying
//! its day, checked and counted in one guarded UPDATE) and the credit of
//! an applied adjustment. Shared by requests applied at once and approvals.

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::domain::ops::audit;
use crate::domain::saka::model::{
    ADJUSTMENT_COLUMNS, ADJUSTMENT_ENTITY, Adjustment, DAILY_MANUAL_CAP, MANUAL_ADJUST, status,
};
use crate::domain::saka::wallet::{credit, ensure_wallet};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{JobId, SakaAdjustmentId, UserId};
use crate::money::Grains;

/// The manual-adjustment daily cap, checked and counted in ONE guarded
/// UPDATE: a counter from an earlier day counts as zero in the guard itself.
/// Returns the day's new total, or `None` when `amount` would pass the cap.
pub(crate) async fn take_daily_cap(
    conn: &mut PgConnection,
    user_id: UserId,
    amount: Grains,
    day: NaiveDate,
) -> Result<Option<Grains>> {
    let used = sqlx::query_scalar(
        "UPDATE saka_wallets
            SET manual_adjust_today = (CASE WHEN manual_adjust_day = $2 THEN manual_adjust_today ELSE 0 END) + $3,
                manual_adjust_day = $2,
                updated_at = now()
          WHERE user_id = $1
            AND (CASE WHEN manual_adjust_day = $2 THEN manual_adjust_today ELSE 0 END) + $3 <= $4
          RETURNING manual_adjust_today",
    )
    .bind(user_id)
    .bind(day)
    .bind(amount)
    .bind(DAILY_MANUAL_CAP)
    .fetch_optional(conn)
    .await?;
    Ok(used)
}

/// Grains already adjusted for the user on `day`, for a refusal's message.
pub(crate) async fn used_today(conn: &mut PgConnection, user_id: UserId, day: NaiveDate) -> Result<Grains> {
    let used: Option<Grains> = sqlx::query_scalar(
        "SELECT CASE WHEN manual_adjust_day = $2 THEN manual_adjust_today ELSE 0 END FROM saka_wallets WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(day)
    .fetch_optional(conn)
    .await?;
    Ok(used.unwrap_or(Grains::ZERO))
}

pub(crate) fn cap_problem(used: Grains, amount: Grains, day: NaiveDate) -> Problem {
    Problem::new(
        ErrorCode::SakaDailyCapReached,
        format!(
            "{used} of {DAILY_MANUAL_CAP} manually adjusted grains already used for this user on SAKA day {day}; {amount} more would pass the cap"
        ),
    )
}

/// Takes `amount` of the user's daily cap (creating the wallet on first
/// use): the day's new total, or the refusal saying how much was used.
pub(crate) async fn take_cap(
    conn: &mut PgConnection,
    user: UserId,
    amount: Grains,
    day: NaiveDate,
) -> Result<std::result::Result<Grains, Problem>> {
    ensure_wallet(conn, user).await?;
    Ok(match take_daily_cap(conn, user, amount, day).await? {
        Some(used) => Ok(used),
        None => Err(cap_problem(used_today(conn, user, day).await?, amount, day)),
    })
}

/// What the cap said when an adjustment was applied.
pub(crate) struct Applied {
    pub used: Grains,
    pub day: NaiveDate,
    pub job_id: JobId,
}

/// Credits an applied adjustment (a MANUAL_ADJUST ledger row the database
/// accepts only with its applied adjustment) and writes its audit row.
pub(crate) async fn credit_applied(conn: &mut PgConnection, actor: &str, adj: &Adjustment, at: Applied) -> Result<()> {
    let entry = credit(conn, adj.user_id, MANUAL_ADJUST, adj.amount, at.job_id, Some(adj.id)).await?;
    let data = serde_json::json!({
        "user_id": adj.user_id, "amount": adj.amount, "ledger_id": entry.id, "balance_after": entry.balance_after,
        "manual_adjust_today": at.used, "day": at.day, "job_id": at.job_id,
    });
    audit::write(conn, actor, "SAKA_ADJUSTMENT_APPLIED", ADJUSTMENT_ENTITY, adj.id, data).await
}

pub(crate) async fn lock_adjustment(conn: &mut PgConnection, id: SakaAdjustmentId) -> Result<Adjustment> {
    let adj: Option<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM saka_adjustments WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    adj.ok_or_else(|| Error::not_found(ErrorCode::SakaAdjustmentNotFound, "SAKA adjustment"))
}

pub(crate) fn not_pending(adj: &Adjustment) -> Error {
    Error::problem(
        ErrorCode::SakaAdjustmentNotPending,
        format!("the adjustment is {}, not {}", adj.status, status::PENDING_APPROVAL),
    )
}
