//! Harvests (job `saka_harvest`): a reason's fixed reward, at most its
//! count a SAKA day, checked and counted in one statement.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgConnection;

use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::domain::saka::model::{HarvestReason, SakaHarvestV1, SakaTxOut};
use crate::domain::saka::model::{WALLET_ENTITY, saka_day};
use crate::domain::saka::wallet::{credit, ensure_wallet};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::JobId;
use crate::jobs::Outcome;
use crate::principal::{Principal, Role};

/// Harvest (job `saka_harvest`): the reason's fixed reward, at most its
/// daily count. Over the limit the job succeeds with `credited: 0` (a silent
/// anti-farming no-op).
#[tracing::instrument(skip_all, fields(job_id = %job_id, user_id = %cmd.user_id, reason = %cmd.reason))]
pub async fn harvest(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: JobId,
    cmd: &SakaHarvestV1,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Outcome> {
    who.require(&[Role::Admin, Role::Support])?;
    let reason = reason_of(cmd)?;
    require_active_user(conn, cmd.user_id, "user_id").await?;
    ensure_wallet(conn, cmd.user_id).await?;
    let day = saka_day(now, tz);
    // Check and count in one statement: parallel harvests queue on the row
    // (or retry on 40001) and can never pass the limit.
    let count: Option<i32> = sqlx::query_scalar(
        "INSERT INTO saka_harvest_counts AS c (user_id, reason, day, count) VALUES ($1, $2, $3, 1)
         ON CONFLICT (user_id, reason, day) DO UPDATE SET count = c.count + 1 WHERE c.count < $4
         RETURNING count",
    )
    .bind(cmd.user_id)
    .bind(reason.as_str())
    .bind(day)
    .bind(reason.daily_limit())
    .fetch_optional(&mut *conn)
    .await?;
    let actor = who.actor();
    let Some(count) = count else {
        audit::write(
            conn,
            &actor,
            "SAKA_HARVESTED",
            WALLET_ENTITY,
            cmd.user_id,
            serde_json::json!({
                "reason": reason.as_str(), "credited": 0, "limited": "DAILY_LIMIT", "daily_limit": reason.daily_limit(),
                "day": day, "job_id": job_id,
            }),
        )
        .await?;
        return Ok(Outcome::succeeded(serde_json::json!({"credited": 0, "reason": "DAILY_LIMIT"})));
    };
    let entry = credit(conn, cmd.user_id, reason.as_str(), reason.reward(), job_id, None).await?;
    audit::write(conn, &actor, "SAKA_HARVESTED", WALLET_ENTITY, cmd.user_id, serde_json::json!({
        "ledger_id": entry.id, "reason": reason.as_str(), "credited": entry.amount, "balance_after": entry.balance_after,
        "count_today": count, "daily_limit": reason.daily_limit(), "day": day, "job_id": job_id,
    }))
    .await?;
    Ok(Outcome::succeeded(serde_json::to_value(SakaTxOut::from(entry))?))
}

/// A known reason, with no client-chosen amount (rewards are fixed).
fn reason_of(cmd: &SakaHarvestV1) -> Result<HarvestReason> {
    let Some(reason) = HarvestReason::parse(&cmd.reason) else {
        let known = HarvestReason::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
        return Err(Error::problem(
            ErrorCode::SakaReasonUnknown,
            format!("unknown harvest reason `{}` (known: {known})", cmd.reason),
        ));
    };
    if cmd.amount.is_some() {
        return Err(Error::problem(
            ErrorCode::SakaAmountNotAllowed,
            format!("the reward for {} is fixed at {} grains; send no amount", reason.as_str(), reason.reward()),
        ));
    }
    Ok(reason)
}
