//! Failpoints: faults a test switches on in a real binary through the
//! environment, e.g. `KOBATELA_FAILPOINTS=rule.purchase=panic` makes every
//! purchase rule panic (how the end-to-end tests show that a job whose rule
//! panics ends `dead` instead of being retried forever). Unset, a check is
//! one load of an empty list.
//!
//! Points: `rule.<kind>` (before a job's rule, in its transaction),
//! `held.<kind>` (after the rule's writes, their row locks held, before the
//! commit), `deliver.<kind>` (a delivery taken, before its job runs).
//!
//! Syntax: `name=action` pairs separated by `;` or `,`. Actions: `panic`,
//! `abort` (the whole process dies at once, as on a crash), `sleep:<ms>`.
//! `N*action` does it on the first `N` hits only (as the `fail` crate
//! writes it), then nothing: a fault that heals, e.g.
//! `rule.purchase=4*sleep:5000`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const VAR: &str = "KOBATELA_FAILPOINTS";

fn points() -> &'static [(String, String)] {
    static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(VAR).unwrap_or_default()))
}

/// Hits so far of each point (same order as `points()`), for `N*` actions.
fn hits() -> &'static [AtomicU64] {
    static HITS: OnceLock<Vec<AtomicU64>> = OnceLock::new();
    HITS.get_or_init(|| points().iter().map(|_| AtomicU64::new(0)).collect())
}

/// `N*action` → `(Some(N), action)`; `action` → `(None, action)`.
fn limited(action: &str) -> (Option<u64>, &str) {
    match action.split_once('*') {
        Some((n, rest)) => match n.trim().parse() {
            Ok(n) => (Some(n), rest.trim()),
            Err(_) => (None, action),
        },
        None => (None, action),
    }
}

fn parse(text: &str) -> Vec<(String, String)> {
    text.split([';', ','])
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, action)| (name.trim().to_string(), action.trim().to_string()))
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// True when any failpoint is set (so callers can skip building names).
pub fn any() -> bool {
    !points().is_empty()
}

/// The action set for `name`, if any.
pub fn action(name: &str) -> Option<&'static str> {
    points().iter().find(|(n, _)| n == name).map(|(_, a)| a.as_str())
}

/// Carries out the action set for `name`: panics, aborts the process, or
/// sleeps (an `N*` action only on its first `N` hits).
pub async fn hit(name: &str) {
    let Some(index) = points().iter().position(|(n, _)| n == name) else { return };
    let (limit, action) = limited(points()[index].1.as_str());
    if let Some(limit) = limit
        && hits()[index].fetch_add(1, Ordering::AcqRel) >= limit
    {
        return;
    }
    match action {
        "panic" => panic!("failpoint {name}: panic"),
        "abort" => {
            tracing::error!(failpoint = name, "failpoint: aborting the process");
            std::process::abort()
        }
        other => {
            if let Some(ms) = other.strip_prefix("sleep:").and_then(|ms| ms.parse::<u64>().ok()) {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pairs_are_read_and_junk_is_ignored() {
        let p = parse("rule.purchase=panic; ,junk,=x, rule.transfer = panic");
        assert_eq!(
            p,
            vec![
                ("rule.purchase".to_string(), "panic".to_string()),
                ("rule.transfer".to_string(), "panic".to_string())
            ]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn a_count_limits_an_action_to_its_first_hits() {
        assert_eq!(super::limited("3*sleep:500"), (Some(3), "sleep:500"));
        assert_eq!(super::limited("panic"), (None, "panic"));
        assert_eq!(super::limited("x*panic"), (None, "x*panic"));
    }
}
