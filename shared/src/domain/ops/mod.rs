//! Operations: the audit trail and alerts. The bottom of the domain: it
//! depends on no other context, and the job executor (`crate::jobs`) writes
//! its refusal audits through it.

pub mod alerts;
pub mod audit;
