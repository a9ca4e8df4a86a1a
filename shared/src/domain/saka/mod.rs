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

pub use adjustments::{request_adjustment, run_adjustment};
pub use approvals::{approve_adjustment, expire_pending, get_adjustment, list_adjustments, reject_adjustment};
pub use harvest::harvest;
pub use model::{
    ADJUSTMENT_MAX, APPROVAL_TTL_HOURS, Adjustment, AdjustmentOut, DAILY_MANUAL_CAP, DUAL_APPROVAL_ABOVE,
    HarvestReason, LedgerEntry, MANUAL_ADJUST, NewAdjustment, SakaAdjustmentV1, SakaHarvestV1, SakaSpendV1, SakaTxOut,
    WalletOut, saka_day, status,
};
pub use rollover::rollover;
pub use wallet::{get_wallet_for, spend};
