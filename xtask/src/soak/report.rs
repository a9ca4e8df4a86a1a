//! The soak's table (Markdown, printed and saved to
//! `target/soak/results.md`), its verdict, and the rows behind a failure.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::faults::{ALL, Planned};
use super::finish::Outcome;
use super::http::Tally;

pub struct Run<'a> {
    pub seed: u64,
    pub minutes: u64,
    pub actors: usize,
    pub tally: &'a Tally,
    pub faults: &'a [(Planned, String)],
    pub outcome: &'a Outcome,
}

impl Run<'_> {
    /// What makes the soak fail, one line each (empty: it passed).
    pub fn failures(&self) -> Vec<String> {
        let o = self.outcome;
        let mut failures = Vec::new();
        if o.violations() > 0 {
            failures.push(format!("{} invariant violations", o.violations()));
        }
        if let Some(e) = &o.invariant_error {
            failures.push(format!("the invariants could not be run: {e}"));
        }
        let counts = [
            (o.stuck_jobs.len(), "jobs stuck (queued or running after the drain)"),
            (o.dead_jobs.len(), "jobs dead"),
            (o.stuck_payments.len(), "payments left PENDING or SENT"),
            (o.stuck_reviews.len(), "proofs or milestones in review on an ended escrow"),
            (o.missing_receipts.len(), "receipts whose job row is missing"),
            (o.moved_back.len(), "settled payments moved by a late failure"),
            (o.undelivered_webhooks.len(), "psp-sim webhooks never delivered"),
            (self.tally.findings.len(), "findings (unexcused 5xx, processes that died, wrong answers)"),
        ];
        for (n, what) in counts {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        }
        for kind in ALL {
            if !self.faults.iter().any(|(p, _)| p.fault == kind) {
                failures.push(format!("fault never injected: {kind}"));
            }
        }
        failures
    }

    pub fn table(&self) -> String {
        let (t, o) = (self.tally, self.outcome);
        let mut s = String::new();
        let _ = writeln!(s, "| Soak | |\n|---|---|");
        let mut row = |name: &str, value: String| {
            let _ = writeln!(s, "| {name} | {value} |");
        };
        row("seed", self.seed.to_string());
        row("length", format!("{} min, {} actors, 3 workers", self.minutes, self.actors));
        row("requests sent", t.sent.to_string());
        row("answers 2xx", t.ok_2xx.to_string());
        row("answers 4xx", t.client_4xx.to_string());
        row("answers 503 while Postgres or Redis was down", t.excused_503.to_string());
        row("answers 5xx otherwise", t.other_5xx.to_string());
        row("connection errors", t.connection_errors.to_string());
        row("requests retried (same key)", t.retried.to_string());
        row("jobs accepted (receipts)", t.accepted.len().to_string());
        let statuses: Vec<String> = o.jobs_by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
        row("jobs by final status (all kinds)", statuses.join(", "));
        let mut by_fault: BTreeMap<String, usize> = BTreeMap::new();
        for (p, _) in self.faults {
            *by_fault.entry(p.fault.to_string()).or_default() += 1;
        }
        for kind in ALL {
            row(&format!("fault: {kind}"), by_fault.get(&kind.to_string()).copied().unwrap_or(0).to_string());
        }
        let per: Vec<String> = o.invariants.iter().map(|(name, n, _)| format!("{name} {n}")).collect();
        row("invariant violations", format!("**{}** ({})", o.violations(), per.join(", ")));
        row("jobs stuck", format!("**{}**", o.stuck_jobs.len()));
        row("jobs dead", o.dead_jobs.len().to_string());
        row("payments left PENDING/SENT", o.stuck_payments.len().to_string());
        row("proofs/milestones in review on an ended escrow", o.stuck_reviews.len().to_string());
        row("receipts without a job row", o.missing_receipts.len().to_string());
        row(
            "late failures sent / settled payments moved back",
            format!("{} / {}", t.late_failures.len(), o.moved_back.len()),
        );
        row("webhooks undelivered", o.undelivered_webhooks.len().to_string());
        row("drain after the faults", format!("{:.0} s", o.drained_in.as_secs_f64()));
        row("findings", t.findings.len().to_string());
        let failures = self.failures();
        row("verdict", if failures.is_empty() { "PASS".into() } else { format!("FAIL: {}", failures.join("; ")) });
        let mut tables: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (table, status, n) in &o.effects {
            tables.entry(table).or_default().push(format!("{status} {n}"));
        }
        let effects: Vec<String> = tables.iter().map(|(t, list)| format!("{t}: {}", list.join(", "))).collect();
        let _ = writeln!(s, "\nWhat the workload left: {}.", effects.join("; "));
        let ops: Vec<String> = t.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "\nOperations drawn: {}.", ops.join(", "));
        s
    }

    /// The rows behind each failure, for the terminal.
    pub fn details(&self) -> String {
        let o = self.outcome;
        let mut s = String::new();
        for (name, n, sample) in &o.invariants {
            if *n > 0 {
                let _ = writeln!(s, "invariant {name}: {n} violations; sample: {sample}");
            }
        }
        let lists: [(&str, &Vec<String>); 8] = [
            ("stuck job", &o.stuck_jobs),
            ("stuck review", &o.stuck_reviews),
            ("dead job", &o.dead_jobs),
            ("stuck payment", &o.stuck_payments),
            ("receipt without a job row", &o.missing_receipts),
            ("moved back", &o.moved_back),
            ("undelivered webhook", &o.undelivered_webhooks),
            ("finding", &self.tally.findings),
        ];
        for (what, list) in lists {
            for line in list.iter().take(20) {
                let _ = writeln!(s, "{what}: {line}");
            }
            if list.len() > 20 {
                let _ = writeln!(s, "{what}: … {} more", list.len() - 20);
            }
        }
        s
    }
}
