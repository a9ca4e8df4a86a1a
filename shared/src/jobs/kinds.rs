//! Job kinds, their queue names and the audit action of a refusal.

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($($variant:ident = $text:literal => ($entity:literal, $refused:literal),)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum JobKind { $($variant,)* }

        impl JobKind {
            pub const ALL: &'static [JobKind] = &[$(JobKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(JobKind::$variant => $text,)* }
            }

            pub fn parse(text: &str) -> Option<JobKind> {
                match text { $($text => Some(JobKind::$variant),)* _ => None }
            }

            /// The audit entity and action written when a job of this kind
            /// is refused.
            pub fn refusal_audit(self) -> (&'static str, &'static str) {
                match self { $(JobKind::$variant => ($entity, $refused),)* }
            }
        }
    };
}

kinds! {
    Purchase = "purchase" => ("purchase", "PURCHASE_REFUSED"),
    Transfer = "transfer" => ("transfer", "TRANSFER_REFUSED"),
    EscrowDeposit = "escrow_deposit" => ("escrow", "ESCROW_DEPOSIT_REFUSED"),
    EscrowTransition = "escrow_transition" => ("escrow", "ESCROW_TRANSITION_REFUSED"),
    UsageSpend = "usage_spend" => ("payment", "USAGE_SPEND_REFUSED"),
    ProofValidation = "proof_validation" => ("proof", "PROOF_VALIDATION_REFUSED"),
    Payout = "payout" => ("payment", "PAYOUT_REFUSED"),
    PspWebhook = "psp_webhook" => ("webhook_event", "WEBHOOK_REFUSED"),
    SakaHarvest = "saka_harvest" => ("saka_wallet", "SAKA_HARVEST_REFUSED"),
    SakaSpend = "saka_spend" => ("saka_wallet", "SAKA_SPEND_REFUSED"),
    SakaAdjustment = "saka_adjustment" => ("saka_adjustment", "SAKA_ADJUSTMENT_REFUSED"),
    MandateExpiry = "mandate_expiry" => ("mandate", "MANDATE_EXPIRY_REFUSED"),
    EscrowDeadlines = "escrow_deadlines" => ("escrow", "ESCROW_DEADLINES_REFUSED"),
    SakaDayRollover = "saka_day_rollover" => ("saka_wallet", "SAKA_DAY_ROLLOVER_REFUSED"),
    SakaApprovalExpiry = "saka_approval_expiry" => ("saka_adjustment", "SAKA_APPROVAL_EXPIRY_REFUSED"),
    JobRelay = "job_relay" => ("job", "JOB_RELAY_REFUSED"),
    Retention = "retention" => ("job", "RETENTION_REFUSED"),
}

impl JobKind {
    /// The row jobs of this kind contend on, read from the payload: a
    /// worker runs jobs of one key one after the other instead of letting
    /// them fail each other's SERIALIZABLE transactions (a hot mandate, a
    /// busy escrow or wallet). Only a hint: the transaction stays the guard.
    pub fn conflict_key(self, payload: &serde_json::Value) -> Option<String> {
        let field = |name: &str| payload.get(name).and_then(|v| v.as_str());
        match self {
            JobKind::Purchase => {
                Some(format!("mandate:{}:{}:{}", field("sender_id")?, field("beneficiary_id")?, field("currency")?))
            }
            JobKind::UsageSpend | JobKind::EscrowDeposit => Some(format!("escrow:{}", field("escrow_id")?)),
            JobKind::SakaHarvest | JobKind::SakaSpend | JobKind::SakaAdjustment => {
                Some(format!("wallet:{}", field("user_id")?))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
