//! The escrow context's rows and what clients see of them: escrows,
//! milestones and payments. Every rule of the context reads these; they
//! depend on nothing else in it, so the rules above them never need each
//! other for a type.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{EscrowId, MilestoneId, PayeeId, PaymentId, UserId};
use crate::money::{Currency, display};
use crate::principal::Principal;

pub(crate) const ESCROW_COLUMNS: &str = "id, client_id, provider_id, amount_total, currency, status, funded_amount, reserved_amount, paid_amount, release_conditions, deadline_at, created_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Escrow {
    pub id: EscrowId,
    pub client_id: UserId,
    pub provider_id: UserId,
    pub amount_total: Decimal,
    pub currency: String,
    pub status: String,
    pub funded_amount: Decimal,
    pub reserved_amount: Decimal,
    pub paid_amount: Decimal,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl Escrow {
    /// Deposits minus payouts PENDING, SENT or SETTLED.
    pub fn balance(&self) -> Decimal {
        self.funded_amount - self.reserved_amount
    }

    pub fn is_party(&self, who: &Principal) -> bool {
        who.user_id == self.client_id || who.user_id == self.provider_id
    }

    /// The escrow's currency with its decimals: every amount of the escrow
    /// is in it.
    pub fn currency(&self) -> Currency {
        Currency { code: self.currency.clone(), decimals: crate::money::currencies().decimals(&self.currency) }
    }

    /// FUNDED or RELEASABLE: money may move (proofs, spends, releases).
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "FUNDED" | "RELEASABLE")
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EscrowOut {
    pub id: EscrowId,
    pub client_id: UserId,
    pub provider_id: UserId,
    pub amount_total: String,
    pub currency: String,
    pub status: String,
    pub funded_amount: String,
    pub paid_amount: String,
    pub balance: String,
    pub release_conditions: serde_json::Value,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<MilestoneOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments: Option<Vec<PaymentOut>>,
}

impl From<&Escrow> for EscrowOut {
    fn from(e: &Escrow) -> Self {
        let d = |v| display(v, &e.currency);
        EscrowOut {
            id: e.id,
            client_id: e.client_id,
            provider_id: e.provider_id,
            amount_total: d(e.amount_total),
            currency: e.currency.clone(),
            status: e.status.clone(),
            funded_amount: d(e.funded_amount),
            paid_amount: d(e.paid_amount),
            balance: d(e.balance()),
            release_conditions: e.release_conditions.clone(),
            deadline_at: e.deadline_at,
            created_at: e.created_at,
            milestones: None,
            payments: None,
        }
    }
}

pub(crate) const MILESTONE_COLUMNS: &str =
    "id, escrow_id, idx, label, amount, proof_type, geofence_lat, geofence_lng, geofence_radius_m, status";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Milestone {
    pub id: MilestoneId,
    pub escrow_id: EscrowId,
    pub idx: i32,
    pub label: String,
    pub amount: Decimal,
    pub proof_type: String,
    pub geofence_lat: Option<f64>,
    pub geofence_lng: Option<f64>,
    pub geofence_radius_m: Option<f64>,
    pub status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GeofenceIn {
    pub lat: f64,
    pub lng: f64,
    pub radius_m: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MilestoneOut {
    pub id: MilestoneId,
    pub escrow_id: EscrowId,
    pub idx: i32,
    pub label: String,
    pub amount: String,
    pub proof_type: String,
    pub geofence: Option<GeofenceIn>,
    pub status: String,
}

impl Milestone {
    pub fn geofence(&self) -> Option<GeofenceIn> {
        match (self.geofence_lat, self.geofence_lng, self.geofence_radius_m) {
            (Some(lat), Some(lng), Some(radius_m)) => Some(GeofenceIn { lat, lng, radius_m }),
            _ => None,
        }
    }

    pub fn out(&self, currency: &str) -> MilestoneOut {
        MilestoneOut {
            id: self.id,
            escrow_id: self.escrow_id,
            idx: self.idx,
            label: self.label.clone(),
            amount: display(self.amount, currency),
            proof_type: self.proof_type.clone(),
            geofence: self.geofence(),
            status: self.status.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentKind {
    Milestone,
    Release,
    Refund,
    Usage,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Milestone => "MILESTONE",
            PaymentKind::Release => "RELEASE",
            PaymentKind::Refund => "REFUND",
            PaymentKind::Usage => "USAGE",
        }
    }
}

pub(crate) const PAYMENT_COLUMNS: &str = "id, escrow_id, milestone_id, payee_id, kind, recipient, amount, currency, status, idempotency_key, psp_ref, error_reason, attempts, created_at, limits_day, redrives, drive";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub id: PaymentId,
    pub escrow_id: EscrowId,
    pub milestone_id: Option<MilestoneId>,
    pub payee_id: Option<PayeeId>,
    pub kind: String,
    pub recipient: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub idempotency_key: String,
    pub psp_ref: Option<String>,
    pub error_reason: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// The day this (usage) payment's share of its payee's limits counts
    /// on; `None` while it holds none.
    pub limits_day: Option<NaiveDate>,
    /// How many times an ERROR drive was driven again: the newest drive's
    /// number (`drives`).
    pub redrives: i32,
    /// The current drive: the one whose settlement counts (the newest, or
    /// an earlier one the PSP had accepted after all and that was adopted).
    pub drive: i32,
}

impl Payment {
    /// Usage payments take only the balance milestones do not hold.
    pub fn is_usage(&self) -> bool {
        self.kind == PaymentKind::Usage.as_str()
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentOut {
    pub id: PaymentId,
    pub escrow_id: EscrowId,
    pub milestone_id: Option<MilestoneId>,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub psp_ref: Option<String>,
    pub kind: String,
    pub recipient: String,
    pub error_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub href: String,
}

impl From<&Payment> for PaymentOut {
    fn from(p: &Payment) -> Self {
        PaymentOut {
            id: p.id,
            escrow_id: p.escrow_id,
            milestone_id: p.milestone_id,
            amount: display(p.amount, &p.currency),
            currency: p.currency.clone(),
            status: p.status.clone(),
            psp_ref: p.psp_ref.clone(),
            kind: p.kind.clone(),
            recipient: p.recipient.clone(),
            error_reason: p.error_reason.clone(),
            created_at: p.created_at,
            href: format!("/payments/{}", p.id),
        }
    }
}
