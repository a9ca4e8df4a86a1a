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

pub mod adjustments;
pub mod approvals;
pub mod cap;
pub mod harvest;
pub mod model;
pub mod rollover;
pub mod wallet;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::money::Grains;

pub use adjustments::{request_adjustment, run_adjustment};
pub use approvals::{approve_adjustment, expire_pending, get_adjustment, reject_adjustment};
pub use harvest::harvest;
pub use model::{
    Adjustment, AdjustmentOut, HarvestReason, LedgerEntry, NewAdjustment, SakaAdjustmentV1, SakaHarvestV1, SakaSpendV1,
    SakaTxOut, WalletOut, status,
};
pub use rollover::rollover;
pub use wallet::{get_wallet_for, spend};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SakaAdjustmentId, UserId};
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
