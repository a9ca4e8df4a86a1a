//! Proofs of a milestone: the row and its approval (`proof`), the upload's
//! checks (`upload`; `crate::intake` writes its job), the
//! `proof_validation` job (`validation`: EXIF rules from `crate::proofs` on
//! the stored bytes, never on client claims) and the human decision on
//! proofs sent to review (`decision`).

pub mod decision;
pub mod proof;
pub mod upload;
pub mod validation;

pub use decision::{check_decider, decide};
pub use proof::{Decision, Proof, ProofOut, ProofValidationV1, get_for};
pub use upload::{NewProof, sweep_files};
pub use validation::validate;
