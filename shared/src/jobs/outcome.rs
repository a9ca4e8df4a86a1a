//! What a rule decided, and the follow-up jobs it asks for. The rules
//! (`crate::domain`) return an [`Outcome`]; the executor (`exec`) ends the
//! job with it and turns its follow-ups into child job rows inside the
//! rule's own transaction, so a rule and its children commit together and
//! no rule ever writes a job row itself.

use serde::Serialize;

use crate::error::{Problem, Result};
use crate::jobs::JobKind;

/// How a rule ended. `Refused` keeps the rule's writes (an alert, an
/// expiry) and the rule audits that refusal itself, whereas an
/// `Err(Error::Problem)` from the rule rolls its writes back to the
/// savepoint and the executor audits the refusal (`JobKind::refusal_audit`).
/// `Continue` commits the rule's writes and asks for `Runner::call`.
#[derive(Debug)]
pub enum End {
    Succeeded(serde_json::Value),
    Refused(Problem),
    Continue(serde_json::Value),
}

/// A job a rule asks for once its own transaction commits: created in that
/// transaction under the parent's principal, keyed so that a re-run of the
/// parent (or another parent asking for the same work) finds the same
/// child. Child keys are a namespace of their own (migration 0011).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub kind: JobKind,
    pub payload: serde_json::Value,
    pub key: String,
}

impl FollowUp {
    pub fn new(kind: JobKind, payload: &impl Serialize, key: String) -> Result<Self> {
        Ok(Self { kind, payload: serde_json::to_value(payload)?, key })
    }
}

/// What a rule decided, with the jobs to create if it commits.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub follow_ups: Vec<FollowUp>,
}

impl Outcome {
    pub fn succeeded(result: serde_json::Value) -> Self {
        Self { end: End::Succeeded(result), follow_ups: Vec::new() }
    }

    pub fn refused(problem: Problem) -> Self {
        Self { end: End::Refused(problem), follow_ups: Vec::new() }
    }

    /// The rule must call the outside world with `state` (a payout).
    pub fn call(state: serde_json::Value) -> Self {
        Self { end: End::Continue(state), follow_ups: Vec::new() }
    }

    /// … and then these jobs.
    pub fn then(mut self, follow_ups: impl IntoIterator<Item = FollowUp>) -> Self {
        self.follow_ups.extend(follow_ups);
        self
    }
}
