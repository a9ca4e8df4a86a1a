//! The day roll-over (cron `saka_day_rollover`, 00:00 in `SAKA_TIMEZONE`).
//! Correctness never depends on it: every guard counts an earlier day as
//! zero.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgConnection;

use crate::domain::ops::audit;
use crate::domain::saka::model::{WALLET_ENTITY, saka_day};
use crate::error::Result;
use crate::principal::Principal;

/// The day roll-over (cron `saka_day_rollover`, 00:00 in `SAKA_TIMEZONE`):
/// resets every wallet whose manual-adjustment counter belongs to an earlier
/// SAKA day and returns how many it reset. It also prunes harvest counters
/// older than yesterday (kept one extra day so a job whose clock still said
/// yesterday cannot recreate a pruned counter). Correctness never depends on
/// it: the guards already count an earlier day as zero.
#[tracing::instrument(skip_all)]
pub async fn rollover(conn: &mut PgConnection, now: DateTime<Utc>, tz: Tz) -> Result<i64> {
    let day = saka_day(now, tz);
    let reset = sqlx::query(
        "UPDATE saka_wallets SET manual_adjust_today = 0, manual_adjust_day = $1, updated_at = $2 WHERE manual_adjust_day < $1",
    )
    .bind(day)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    let pruned = sqlx::query("DELETE FROM saka_harvest_counts WHERE day < $1::date - 1")
        .bind(day)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    audit::write(
        conn,
        &Principal::system().actor(),
        "SAKA_DAY_ROLLOVER",
        WALLET_ENTITY,
        day,
        serde_json::json!({
            "day": day, "timezone": tz.name(), "wallets_reset": reset, "harvest_counters_pruned": pruned,
        }),
    )
    .await?;
    Ok(reset)
}
