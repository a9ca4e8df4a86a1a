//! Typed ids: every id is a newtype over a UUID (v7, so ids sort by
//! creation time and serve as pagination cursors), transparent for serde and
//! sqlx. No function takes two bare `Uuid`s.

use uuid::Uuid;

macro_rules! id_type {
    ($($name:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self { Self(Uuid::now_v7()) }
        }

        impl Default for $name {
            fn default() -> Self { Self::new() }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> { Uuid::parse_str(s).map(Self) }
        }
    )*};
}

id_type!(
    UserId,
    ApiKeyId,
    AdminGrantId,
    JobId,
    CategoryId,
    MerchantId,
    UsageRuleId,
    AllowlistId,
    MandateId,
    PurchaseId,
    TransferId,
    AlertId,
    EscrowId,
    MilestoneId,
    ProofId,
    PaymentId,
    PayeeId,
    WebhookEventId,
    SakaTxId,
    SakaAdjustmentId,
    AuditId,
    InvariantRunId,
);
