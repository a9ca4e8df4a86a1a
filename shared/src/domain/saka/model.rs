//! SAKA's rows, payloads and what clients see: harvest reasons with their
//! fixed rewards and daily counts, the job payloads, wallets, ledger
//! entries and manual adjustments with their states.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{JobId, SakaAdjustmentId, SakaTxId, UserId};
use crate::money::Grains;

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

pub(crate) const NOTE_MAX_CHARS: usize = 1000;
pub(crate) const SPEND_REASON_MAX_CHARS: usize = 200;

pub(crate) const WALLET_ENTITY: &str = "saka_wallet";
pub(crate) const ADJUSTMENT_ENTITY: &str = "saka_adjustment";

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

pub(crate) const LEDGER_COLUMNS: &str =
    "id, user_id, seq, direction, reason, amount, balance_after, job_id, adjustment_id, created_at";

/// A SAKA transaction as a job result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

pub(crate) const ADJUSTMENT_COLUMNS: &str = "id, user_id, amount, note, status, requested_by, approved_by, rejected_by, decision_note, decided_at, created_at, expires_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// Every field error at once, as one 422; `Ok` when there is none.
pub(crate) fn invalid(errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() { Ok(()) } else { Err(Error::Problem(Problem::fields(ErrorCode::ValidationError, errors))) }
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
