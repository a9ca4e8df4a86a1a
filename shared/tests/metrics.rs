//! The metric names are one list (`shared::telemetry::METRICS`), read from
//! the source itself (no database): every `metrics::counter!`, `gauge!` and
//! `histogram!` call of the api, the worker and `shared` names a metric of
//! that list with its type, every entry of the list is recorded somewhere,
//! and the alerts (`ops/prometheus/alerts.yml`) and the dashboard
//! (`ops/grafana/kobatela.json`) query only names of the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use shared::telemetry::{METRICS, MetricType};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(name, type, file)` of every `metrics::<type>!("name"` call in `text`;
/// a call whose name is not a string literal is an error (the list could
/// not be checked).
fn recorded_in(text: &str, file: &str) -> Vec<(String, MetricType)> {
    let mut out = Vec::new();
    for (macro_name, kind) in
        [("counter", MetricType::Counter), ("gauge", MetricType::Gauge), ("histogram", MetricType::Histogram)]
    {
        let needle = format!("metrics::{macro_name}!(");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let arg = rest.trim_start();
            let name =
                arg.strip_prefix('"').and_then(|a| a.split_once('"')).map(|(name, _)| name.to_string()).unwrap_or_else(
                    || panic!("{file}: metrics::{macro_name}! without a literal name: {}", &arg[..40.min(arg.len())]),
                );
            out.push((name, kind));
        }
    }
    out
}

/// Every `kobatela_…` identifier in a query text.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kobatela_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let len =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            out.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// The catalogue entry a queried series belongs to: a histogram's
/// `_bucket`, `_sum` and `_count` series are its own.
fn exported(series: &str) -> Option<MetricType> {
    let by_name: BTreeMap<&str, MetricType> = METRICS.iter().map(|m| (m.name, m.kind)).collect();
    if let Some(kind) = by_name.get(series) {
        return Some(*kind);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| by_name.get(base) == Some(&MetricType::Histogram))
        .map(|_| MetricType::Histogram)
}

#[test]
fn every_recorded_metric_is_in_the_list_with_its_type_and_every_listed_one_is_recorded() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["api/src", "worker/src", "shared/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let listed: BTreeMap<&str, MetricType> = METRICS.iter().map(|m| (m.name, m.kind)).collect();
    assert_eq!(listed.len(), METRICS.len(), "a name is listed twice");
    let mut recorded = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let shown = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        for (name, kind) in recorded_in(&text, &shown) {
            assert_eq!(listed.get(name.as_str()), Some(&kind), "{shown} records {name} as {kind:?}: not so in METRICS");
            recorded.insert(name);
        }
    }
    let never: Vec<&&str> = listed.keys().filter(|n| !recorded.contains(**n)).collect();
    assert!(never.is_empty(), "listed in METRICS but recorded nowhere: {never:?}");
    assert!(recorded.len() >= 20, "the scan found only {recorded:?}");
}

#[test]
fn the_alerts_query_only_exported_metrics_and_cover_every_page() {
    let text = std::fs::read_to_string(workspace().join("ops/prometheus/alerts.yml")).expect("alerts.yml");
    let names = names_in(&text);
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        assert!(exported(name).is_some(), "alerts.yml queries {name}, which no code exports");
    }
    for alert in [
        "KobatelaWorkerConsumersDown",
        "KobatelaQueuedJobTooOld",
        "KobatelaDeadJobs",
        "KobatelaInvariantViolated",
        "KobatelaWebhookAckSlow",
    ] {
        assert!(text.contains(&format!("alert: {alert}\n")), "alerts.yml lacks {alert}");
    }
    // Every alert is in the README's table of what to do.
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(readme.contains(&format!("`{line}`")), "README.md does not say what to do about {line}");
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_shows_what_pages() {
    let text = std::fs::read_to_string(workspace().join("ops/grafana/kobatela.json")).expect("kobatela.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            for name in names_in(expr) {
                assert!(exported(&name).is_some(), "panel {} queries {name}, which no code exports", panel["title"]);
                queried.insert(name);
            }
        }
    }
    for paged in [
        "kobatela_queue_consumers_alive",
        "kobatela_queue_oldest_queued_seconds",
        "kobatela_jobs",
        "kobatela_invariant_violations",
        "kobatela_webhook_ack_seconds_bucket",
        "kobatela_job_seconds_bucket",
        "kobatela_serialization_retries_total",
    ] {
        assert!(queried.contains(paged), "the dashboard does not show {paged}");
    }
}

#[test]
fn the_scanners_see_what_they_should() {
    let text = "metrics::gauge!(\"kobatela_a\", \"k\" => v).set(1.0);\n metrics::counter!(\n  \"kobatela_b_total\").increment(1);";
    assert_eq!(
        recorded_in(text, "x"),
        vec![("kobatela_b_total".to_string(), MetricType::Counter), ("kobatela_a".to_string(), MetricType::Gauge)]
    );
    let names = names_in("histogram_quantile(0.99, rate(kobatela_x_bucket[5m])) / not_kobatela_y");
    assert_eq!(names, BTreeSet::from(["kobatela_x_bucket".to_string()]));
    assert_eq!(exported("kobatela_webhook_ack_seconds_bucket"), Some(MetricType::Histogram));
    assert_eq!(exported("kobatela_jobs_bucket"), None, "a gauge has no buckets");
    assert_eq!(exported("kobatela_nope"), None);
}
