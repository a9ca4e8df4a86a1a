//! SAKA, the engagement currency: harvests (job `saka_harvest`), spends (job
//! `saka_spend`), manual adjustments with dual approval (job
//! `saka_adjustment`, reject, the `saka_approval_expiry` cron) and the day
//! roll-over (cron `saka_day_rollover`).
//!
//! Grains are never money. They move only by inserting a `saka_ledger` row:
//! the database applies the row to the wallet and refuses any other balance
//! change (migrations/0003_saka.sql), so `balance = sum(EARN) - sum(SPEND)`
//! holds whatever the code above does. Daily limits belong to the SAKA day,
//! the calendar date of `now` in `SAKA_TIMEZONE`; the clock and the zone are
//! arguments so tests can move time. Every limit is checked and counted in
//! one guarded statement, so parallel jobs, replicas and several calls in one
//! transaction all see each other (the prototype's cap could not), and a
//! counter from an earlier day counts as zero in the guard itself: nothing
//! depends on the roll-over running on time.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{JobId, SakaAdjustmentId, SakaTxId, UserId};
use crate::jobs::Outcome;
use crate::money::Grains;
use crate::principal::{Principal, Role};

/// The ledger reason of a manual adjustment; never a harvest reason.
pub const MANUAL_ADJUST: &str = "MANUAL_ADJUST";
/// The largest single manual adjustment.
pub const ADJUSTMENT_MAX: Grains = Grains(1000);
/// Adjustments above this need a second, different admin.
pub const DUAL_APPROVAL_ABOVE: Grains = Grains(500);
/// Manually adjusted grains per user per SAKA day, across all admins.
pub const DAILY_MANUAL_CAP: Grains = Grains(1000);
/// How long a request waits for its second approval.
pub const APPROVAL_TTL_HOURS: i64 = 24;

const NOTE_MAX_CHARS: usize = 1000;
const SPEND_REASON_MAX_CHARS: usize = 200;

const WALLET_ENTITY: &str = "saka_wallet";
const ADJUSTMENT_ENTITY: &str = "saka_adjustment";

/// The SAKA day `now` belongs to: its calendar date in `tz`.
pub fn saka_day(now: DateTime<Utc>, tz: Tz) -> NaiveDate {
    now.with_timezone(&tz).date_naive()
}

/// Harvest reasons, their fixed rewards and per-day count limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HarvestReason {
    ContentRead,
    PollVote,
    InviteAccepted,
    InvestBonus,
}

impl HarvestReason {
    pub const ALL: &'static [HarvestReason] = &[
        HarvestReason::ContentRead,
        HarvestReason::PollVote,
        HarvestReason::InviteAccepted,
        HarvestReason::InvestBonus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HarvestReason::ContentRead => "CONTENT_READ",
            HarvestReason::PollVote => "POLL_VOTE",
            HarvestReason::InviteAccepted => "INVITE_ACCEPTED",
            HarvestReason::InvestBonus => "INVEST_BONUS",
        }
    }

    pub fn parse(text: &str) -> Option<HarvestReason> {
        HarvestReason::ALL.iter().copied().find(|r| r.as_str() == text)
    }

    /// The fixed reward; a client never chooses it.
    pub fn reward(self) -> Grains {
        match self {
            HarvestReason::ContentRead => Grains(10),
            HarvestReason::PollVote => Grains(5),
            HarvestReason::InviteAccepted => Grains(50),
            HarvestReason::InvestBonus => Grains(100),
        }
    }

    /// Harvests credited per user per SAKA day.
    pub fn daily_limit(self) -> i32 {
        match self {
            HarvestReason::ContentRead => 3,
            HarvestReason::PollVote => 10,
            HarvestReason::InviteAccepted => 5,
            HarvestReason::InvestBonus => 1,
        }
    }
}

/// The `saka_harvest` job payload, version 1. `reason` stays text so that
/// an unknown one reaches the rule and is refused with its own code;
/// `amount` exists only to be refused, rewards being fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SakaHarvestV1 {
    pub user_id: UserId,
    pub reason: String,
    #[serde(default)]
    pub amount: Option<Grains>,
}

/// The `saka_spend` job payload, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SakaSpendV1 {
    pub user_id: UserId,
    pub amount: Grains,
    pub reason: String,
}

/// A manual adjustment request (`POST /saka/adjustments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAdjustment {
    pub user_id: UserId,
    pub amount: Grains,
    pub note: String,
}

/// The `saka_adjustment` job payload, version 1: a request, or the second
/// admin's approval of a pending one.
/// `{"action": "request", "user_id": …, "amount": 700, "note": "…"}` or
/// `{"action": "approve", "adjustment_id": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SakaAdjustmentV1 {
    Request(NewAdjustment),
    Approve { adjustment_id: SakaAdjustmentId },
}

/// `GET /saka/wallets/{user_id}`. `manual_adjust_today` is the count of
/// `day` (zero when the stored counter belongs to an earlier day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalletOut {
    pub user_id: UserId,
    pub balance: Grains,
    pub total_harvested: Grains,
    pub total_spent: Grains,
    pub manual_adjust_today: Grains,
    pub day: NaiveDate,
}

/// One ledger row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerEntry {
    pub id: SakaTxId,
    pub user_id: UserId,
    pub seq: i64,
    pub direction: String,
    pub reason: String,
    pub amount: Grains,
    pub balance_after: Grains,
    pub job_id: Option<JobId>,
    pub adjustment_id: Option<SakaAdjustmentId>,
    pub created_at: DateTime<Utc>,
}

const LEDGER_COLUMNS: &str =
    "id, user_id, seq, direction, reason, amount, balance_after, job_id, adjustment_id, created_at";

/// A SAKA transaction as a job result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SakaTxOut {
    pub id: SakaTxId,
    pub user_id: UserId,
    pub direction: String,
    pub reason: String,
    pub amount: Grains,
    pub balance_after: Grains,
    pub created_at: DateTime<Utc>,
}

impl From<LedgerEntry> for SakaTxOut {
    fn from(e: LedgerEntry) -> Self {
        SakaTxOut {
            id: e.id,
            user_id: e.user_id,
            direction: e.direction,
            reason: e.reason,
            amount: e.amount,
            balance_after: e.balance_after,
            created_at: e.created_at,
        }
    }
}

/// Adjustment states.
pub mod status {
    pub const PENDING_APPROVAL: &str = "PENDING_APPROVAL";
    pub const APPLIED: &str = "APPLIED";
    pub const REJECTED: &str = "REJECTED";
    pub const EXPIRED: &str = "EXPIRED";
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Adjustment {
    pub id: SakaAdjustmentId,
    pub user_id: UserId,
    pub amount: Grains,
    pub note: String,
    pub status: String,
    pub requested_by: UserId,
    pub approved_by: Option<UserId>,
    pub rejected_by: Option<UserId>,
    pub decision_note: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

const ADJUSTMENT_COLUMNS: &str = "id, user_id, amount, note, status, requested_by, approved_by, rejected_by, decision_note, decided_at, created_at, expires_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjustmentOut {
    pub id: SakaAdjustmentId,
    pub user_id: UserId,
    pub amount: Grains,
    pub status: String,
    pub requested_by: UserId,
    pub approved_by: Option<UserId>,
    pub rejected_by: Option<UserId>,
    pub note: String,
    pub decision_note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub href: String,
}

impl From<Adjustment> for AdjustmentOut {
    fn from(a: Adjustment) -> Self {
        AdjustmentOut {
            href: format!("/saka/adjustments/{}", a.id),
            id: a.id,
            user_id: a.user_id,
            amount: a.amount,
            status: a.status,
            requested_by: a.requested_by,
            approved_by: a.approved_by,
            rejected_by: a.rejected_by,
            note: a.note,
            decision_note: a.decision_note,
            created_at: a.created_at,
            decided_at: a.decided_at,
            expires_at: a.expires_at,
        }
    }
}

fn invalid(errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() { Ok(()) } else { Err(Error::Problem(Problem::fields(ErrorCode::ValidationError, errors))) }
}

/// Creates the user's wallet on first use, empty (the database refuses any
/// other starting balance).
async fn ensure_wallet(conn: &mut PgConnection, user_id: UserId) -> Result<()> {
    sqlx::query("INSERT INTO saka_wallets (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Credits grains by inserting an EARN ledger row; the database applies it.
async fn credit(
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

/// The manual-adjustment daily cap, checked and counted in ONE guarded
/// UPDATE: a counter from an earlier day counts as zero in the guard itself.
/// Returns the day's new total, or `None` when `amount` would pass the cap.
async fn take_daily_cap(
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
async fn used_today(conn: &mut PgConnection, user_id: UserId, day: NaiveDate) -> Result<Grains> {
    let used: Option<Grains> = sqlx::query_scalar(
        "SELECT CASE WHEN manual_adjust_day = $2 THEN manual_adjust_today ELSE 0 END FROM saka_wallets WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(day)
    .fetch_optional(conn)
    .await?;
    Ok(used.unwrap_or(Grains::ZERO))
}

fn cap_problem(used: Grains, amount: Grains, day: NaiveDate) -> Problem {
    Problem::new(
        ErrorCode::SakaDailyCapReached,
        format!(
            "{used} of {DAILY_MANUAL_CAP} manually adjusted grains already used for this user on SAKA day {day}; {amount} more would pass the cap"
        ),
    )
}

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
        return Ok(Outcome::Succeeded(serde_json::json!({"credited": 0, "reason": "DAILY_LIMIT"})));
    };
    let entry = credit(conn, cmd.user_id, reason.as_str(), reason.reward(), job_id, None).await?;
    audit::write(conn, &actor, "SAKA_HARVESTED", WALLET_ENTITY, cmd.user_id, serde_json::json!({
        "ledger_id": entry.id, "reason": reason.as_str(), "credited": entry.amount, "balance_after": entry.balance_after,
        "count_today": count, "daily_limit": reason.daily_limit(), "day": day, "job_id": job_id,
    }))
    .await?;
    Ok(Outcome::Succeeded(serde_json::to_value(SakaTxOut::from(entry))?))
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
    Ok(Outcome::Succeeded(serde_json::to_value(SakaTxOut::from(entry))?))
}

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
/// A cap refusal is returned as `Ok(Outcome::Refused)`: it changed nothing
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
    who.require(&[Role::Admin])?;
    // Otherwise an admin could grant themselves 500 grains a day with no
    // second pair of eyes: SAKA is never minted freely.
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
    require_active_user(conn, cmd.user_id, "user_id").await?;
    let actor = who.actor();
    let id = SakaAdjustmentId::new();

    if cmd.amount > DUAL_APPROVAL_ABOVE {
        let expires_at = now + Duration::hours(APPROVAL_TTL_HOURS);
        let adj: Adjustment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO saka_adjustments (id, user_id, amount, note, status, requested_by, request_job_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, 'PENDING_APPROVAL', $5, $6, $7, $8) RETURNING {ADJUSTMENT_COLUMNS}"
        )))
        .bind(id)
        .bind(cmd.user_id)
        .bind(cmd.amount)
        .bind(note)
        .bind(who.user_id)
        .bind(job_id)
        .bind(now)
        .bind(expires_at)
        .fetch_one(&mut *conn)
        .await?;
        audit::write(
            conn,
            &actor,
            "SAKA_ADJUSTMENT_REQUESTED",
            ADJUSTMENT_ENTITY,
            id,
            serde_json::json!({
                "user_id": cmd.user_id, "amount": cmd.amount, "note": note, "status": status::PENDING_APPROVAL,
                "expires_at": expires_at, "job_id": job_id,
            }),
        )
        .await?;
        return Ok(Outcome::Succeeded(serde_json::to_value(AdjustmentOut::from(adj))?));
    }

    ensure_wallet(conn, cmd.user_id).await?;
    let day = saka_day(now, tz);
    let Some(used) = take_daily_cap(conn, cmd.user_id, cmd.amount, day).await? else {
        let problem = cap_problem(used_today(conn, cmd.user_id, day).await?, cmd.amount, day);
        // No adjustment row: a request that is applied at once either is
        // APPLIED or never existed. The refusal is on the wallet's trail.
        audit::write(
            conn,
            &actor,
            "SAKA_ADJUSTMENT_REFUSED",
            WALLET_ENTITY,
            cmd.user_id,
            serde_json::json!({
                "amount": cmd.amount, "note": note, "code": problem.code.as_str(), "detail": problem.detail,
                "day": day, "job_id": job_id,
            }),
        )
        .await?;
        return Ok(Outcome::Refused(problem));
    };
    let adj: Adjustment = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO saka_adjustments (id, user_id, amount, note, status, requested_by, request_job_id, decided_at, created_at)
         VALUES ($1, $2, $3, $4, 'APPLIED', $5, $6, $7, $7) RETURNING {ADJUSTMENT_COLUMNS}"
    )))
    .bind(id)
    .bind(cmd.user_id)
    .bind(cmd.amount)
    .bind(note)
    .bind(who.user_id)
    .bind(job_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let entry = credit(conn, cmd.user_id, MANUAL_ADJUST, cmd.amount, job_id, Some(id)).await?;
    audit::write(
        conn,
        &actor,
        "SAKA_ADJUSTMENT_REQUESTED",
        ADJUSTMENT_ENTITY,
        id,
        serde_json::json!({
            "user_id": cmd.user_id, "amount": cmd.amount, "note": note, "status": status::APPLIED, "job_id": job_id,
        }),
    )
    .await?;
    audit::write(
        conn,
        &actor,
        "SAKA_ADJUSTMENT_APPLIED",
        ADJUSTMENT_ENTITY,
        id,
        serde_json::json!({
            "user_id": cmd.user_id, "amount": cmd.amount, "ledger_id": entry.id, "balance_after": entry.balance_after,
            "manual_adjust_today": used, "day": day, "job_id": job_id,
        }),
    )
    .await?;
    Ok(Outcome::Succeeded(serde_json::to_value(AdjustmentOut::from(adj))?))
}

async fn lock_adjustment(conn: &mut PgConnection, id: SakaAdjustmentId) -> Result<Adjustment> {
    let adj: Option<Adjustment> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM saka_adjustments WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    adj.ok_or_else(|| Error::not_found(ErrorCode::SakaAdjustmentNotFound, "SAKA adjustment"))
}

fn not_pending(adj: &Adjustment) -> Error {
    Error::problem(
        ErrorCode::SakaAdjustmentNotPending,
        format!("the adjustment is {}, not {}", adj.status, status::PENDING_APPROVAL),
    )
}

/// Approves a pending adjustment (job `saka_adjustment`, action `approve`):
/// an admin other than the requester (and other than the credited user)
/// applies it within the daily cap. A request past its expiry is expired
/// here (kept) and refused. A cap refusal leaves the request pending and is
/// returned as `Ok(Outcome::Refused)` with its audit row kept.
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
        return Err(not_pending(&adj));
    }
    let actor = who.actor();
    if adj.expires_at.is_some_and(|at| at <= now) {
        expire_one(conn, &actor, &adj, now, Some(job_id)).await?;
        return Ok(Outcome::Refused(Problem::new(
            ErrorCode::SakaAdjustmentNotPending,
            "the adjustment expired before it was approved; it is now EXPIRED",
        )));
    }
    require_active_user(conn, adj.user_id, "user_id").await?;
    ensure_wallet(conn, adj.user_id).await?;
    let day = saka_day(now, tz);
    let Some(used) = take_daily_cap(conn, adj.user_id, adj.amount, day).await? else {
        let problem = cap_problem(used_today(conn, adj.user_id, day).await?, adj.amount, day);
        audit::write(
            conn,
            &actor,
            "SAKA_ADJUSTMENT_REFUSED",
            ADJUSTMENT_ENTITY,
            adj.id,
            serde_json::json!({
                "user_id": adj.user_id, "amount": adj.amount, "code": problem.code.as_str(), "detail": problem.detail,
                "status": status::PENDING_APPROVAL, "day": day, "job_id": job_id,
            }),
        )
        .await?;
        return Ok(Outcome::Refused(problem));
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
    let entry = credit(conn, adj.user_id, MANUAL_ADJUST, adj.amount, job_id, Some(adj.id)).await?;
    audit::write(conn, &actor, "SAKA_ADJUSTMENT_APPROVED", ADJUSTMENT_ENTITY, adj.id, serde_json::json!({
        "user_id": adj.user_id, "amount": adj.amount, "requested_by": adj.requested_by, "approved_by": who.user_id, "job_id": job_id,
    }))
    .await?;
    audit::write(
        conn,
        &actor,
        "SAKA_ADJUSTMENT_APPLIED",
        ADJUSTMENT_ENTITY,
        adj.id,
        serde_json::json!({
            "user_id": adj.user_id, "amount": adj.amount, "ledger_id": entry.id, "balance_after": entry.balance_after,
            "manual_adjust_today": used, "day": day, "job_id": job_id,
        }),
    )
    .await?;
    Ok(Outcome::Succeeded(serde_json::to_value(AdjustmentOut::from(applied))?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn reasons_parse_and_have_fixed_rewards_and_limits() {
        for r in HarvestReason::ALL {
            assert_eq!(HarvestReason::parse(r.as_str()), Some(*r));
            assert!(r.reward().is_positive() && r.daily_limit() >= 1);
        }
        assert_eq!(HarvestReason::parse(MANUAL_ADJUST), None);
        assert_eq!(HarvestReason::ContentRead.reward(), Grains(10));
        assert_eq!(HarvestReason::ContentRead.daily_limit(), 3);
    }

    #[test]
    fn the_saka_day_is_the_calendar_date_in_the_zone() {
        let now = Utc.with_ymd_and_hms(2025, 3, 10, 23, 30, 0).single().expect("valid");
        assert_eq!(saka_day(now, chrono_tz::UTC), NaiveDate::from_ymd_opt(2025, 3, 10).expect("valid"));
        assert_eq!(saka_day(now, chrono_tz::Africa::Kinshasa), NaiveDate::from_ymd_opt(2025, 3, 11).expect("valid"));
    }

    #[test]
    fn adjustment_payloads_carry_their_action() {
        let user = UserId::new();
        let v = serde_json::to_value(SakaAdjustmentV1::Request(NewAdjustment {
            user_id: user,
            amount: Grains(700),
            note: "n".into(),
        }))
        .expect("serializes");
        assert_eq!(v["action"], "request");
        assert_eq!(v["amount"], 700);
        let back: SakaAdjustmentV1 = serde_json::from_value(v).expect("round trip");
        assert!(matches!(back, SakaAdjustmentV1::Request(ref n) if n.amount == Grains(700)));
        let id = SakaAdjustmentId::new();
        let v = serde_json::json!({"action": "approve", "adjustment_id": id});
        assert_eq!(
            serde_json::from_value::<SakaAdjustmentV1>(v).expect("parses"),
            SakaAdjustmentV1::Approve { adjustment_id: id }
        );
    }
}
