//! Failpoints: faults a test switches on in a real binary through the
//! environment, e.g. `KOBATELA_FAILPOINTS=rule.purchase=panic` makes every
//! purchase rule panic (how the end-to-end tests show that a job whose rule
//! panics ends `dead` instead of being retried forever). Unset, a check is
//! one load of an empty list.
//!
//! Syntax: `name=action` pairs separated by `;` or `,`. Actions: `panic`,
//! `abort` (the whole process dies at once, as on a crash), `sleep:<ms>`.

use std::sync::OnceLock;

const VAR: &str = "KOBATELA_FAILPOINTS";

fn points() -> &'static [(String, String)] {
    static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(VAR).unwrap_or_default()))
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
/// sleeps.
pub async fn hit(name: &str) {
    match action(name) {
        Some("panic") => panic!("failpoint {name}: panic"),
        Some("abort") => {
            tracing::error!(failpoint = name, "failpoint: aborting the process");
            std::process::abort()
        }
        Some(other) => {
            if let Some(ms) = other.strip_prefix("sleep:").and_then(|ms| ms.parse::<u64>().ok()) {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
        None => {}
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
}
