//! Spending a sender's money at home: the catalogue (categories, merchants,
//! usage rules, the transfer allowlist, certifications), usage mandates,
//! purchases against them and restricted transfers. Depends on `access`
//! and `ops`.

pub mod catalogue;
pub mod mandates;
pub mod purchases;
pub mod transfers;
