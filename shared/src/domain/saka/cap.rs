//! The manual-adjustment daily cap: at most 1,000 grains per user per SAKA
//! day across all admins, a counter on the wallet carrying its day,
//! checked and counted in one guarded UPDATE.

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::domain::saka::DAILY_MANUAL_CAP;
use crate::error::{ErrorCode, Problem, Result};
use crate::ids::UserId;
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
