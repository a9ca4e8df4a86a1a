//! Wallets and the ledger: grains move only by inserting a `saka_ledger`
//! row, which the database applies to the wallet (and refuses to fake).
//! Spends (job `saka_spend`) take at most the balance.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::domain::saka::model::{LEDGER_COLUMNS, LedgerEntry, SakaSpendV1, SakaTxOut, WalletOut, invalid};
use crate::domain::saka::model::{SPEND_REASON_MAX_CHARS, WALLET_ENTITY, saka_day};
use crate::error::{Error, ErrorCode, FieldError, Result};
use crate::ids::{JobId, SakaAdjustmentId, SakaTxId, UserId};
use crate::jobs::Outcome;
use crate::money::Grains;
use crate::principal::{Principal, Role};

/// Creates the user's wallet on first use, empty (the database refuses any
/// other starting balance).
pub(crate) async fn ensure_wallet(conn: &mut PgConnection, user_id: UserId) -> Result<()> {
    sqlx::query("INSERT INTO saka_wallets (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Credits grains by inserting an EARN ledger row; the database applies it.
pub(crate) async fn credit(
    conn: &mut PgConnection,
    user_id: UserId,
    reason: &str,
    amount: Grains,
    job_id: JobId,
    adjustment_id: Option<SakaAdjustmentId>,
) -> Result<LedgerEntry> {
    let entry = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO saka_ledger (id, user_id, direction, reason, amount, job_id, adjustment_id)
         VALUES ($1, $2, 'EARN', $3, $4, $5, $6) RETURNING {LEDGER_COLUMNS}"
    )))
    .bind(SakaTxId::new())
    .bind(user_id)
    .bind(reason)
    .bind(amount)
    .bind(job_id)
    .bind(adjustment_id)
    .fetch_one(conn)
    .await?;
    Ok(entry)
}

/// Spend (job `saka_spend`): the user (or an admin) spends at most the
/// balance. The debit is one guarded INSERT into the ledger; the database's
/// `balance_after >= 0` CHECK backs it up under any isolation level.
#[tracing::instrument(skip_all, fields(job_id = %job_id, user_id = %cmd.user_id))]
pub async fn spend(conn: &mut PgConnection, who: &Principal, job_id: JobId, cmd: &SakaSpendV1) -> Result<Outcome> {
    who.require_self_or_admin(cmd.user_id, &[Role::Sender, Role::Beneficiary, Role::Support])?;
    let reason = cmd.reason.trim();
    let mut errors = Vec::new();
    if !cmd.amount.is_positive() {
        errors.push(FieldError::new("amount", "must be a whole number of grains greater than zero"));
    }
    if reason.is_empty() || reason.chars().count() > SPEND_REASON_MAX_CHARS {
        errors.push(FieldError::new("reason", format!("must be 1 to {SPEND_REASON_MAX_CHARS} characters")));
    }
    invalid(errors)?;
    require_active_user(conn, cmd.user_id, "user_id").await?;
    ensure_wallet(conn, cmd.user_id).await?;
    let entry: Option<LedgerEntry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO saka_ledger (id, user_id, direction, reason, amount, job_id)
         SELECT $1, user_id, 'SPEND', $3, $4, $5 FROM saka_wallets WHERE user_id = $2 AND balance >= $4
         RETURNING {LEDGER_COLUMNS}"
    )))
    .bind(SakaTxId::new())
    .bind(cmd.user_id)
    .bind(reason)
    .bind(cmd.amount)
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await
    .on_constraint("saka_ledger_balance_after_nonneg", ErrorCode::SakaInsufficient, "not enough SAKA grains")?;
    let Some(entry) = entry else {
        let balance: Grains = sqlx::query_scalar("SELECT balance FROM saka_wallets WHERE user_id = $1")
            .bind(cmd.user_id)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(Grains::ZERO);
        return Err(Error::problem(
            ErrorCode::SakaInsufficient,
            format!("balance is {balance} grains, {} asked", cmd.amount),
        ));
    };
    audit::write(conn, &who.actor(), "SAKA_SPENT", WALLET_ENTITY, cmd.user_id, serde_json::json!({
        "ledger_id": entry.id, "reason": entry.reason, "amount": entry.amount, "balance_after": entry.balance_after, "job_id": job_id,
    }))
    .await?;
    Ok(Outcome::succeeded(serde_json::to_value(SakaTxOut::from(entry))?))
}

/// A user's wallet as of `now`'s SAKA day, for the user, support and admin;
/// anyone else gets the same 404 as for an unknown user. A user without a
/// wallet yet has an empty one.
pub async fn get_wallet_for(
    conn: &mut PgConnection,
    who: &Principal,
    user_id: UserId,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<WalletOut> {
    let day = saka_day(now, tz);
    let row: Option<(UserId, Grains, Grains, Grains, Grains)> = sqlx::query_as(
        "SELECT u.id, COALESCE(w.balance, 0), COALESCE(w.total_harvested, 0), COALESCE(w.total_spent, 0),
                CASE WHEN w.manual_adjust_day = $2 THEN w.manual_adjust_today ELSE 0 END
           FROM users u LEFT JOIN saka_wallets w ON w.user_id = u.id
          WHERE u.id = $1 AND ($3 OR u.id = $4)",
    )
    .bind(user_id)
    .bind(day)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    let (user_id, balance, total_harvested, total_spent, manual_adjust_today) =
        row.ok_or_else(|| Error::not_found(ErrorCode::UserNotFound, "user"))?;
    Ok(WalletOut { user_id, balance, total_harvested, total_spent, manual_adjust_today, day })
}
