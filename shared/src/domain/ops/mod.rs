//! Operations: the audit trail, alerts, and the invariants that prove the
//! money (every table read in SQL, the PSP's log through its client). The
//! bottom of the domain: it depends on no other context, and the job
//! executor (`crate::jobs`) writes its refusal audits through it.

pub mod alerts;
pub mod audit;
pub mod cron;
pub mod invariants;
