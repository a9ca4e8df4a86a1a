//! The dependency direction of the code, read from the source itself (no
//! database): the modules of `shared` form no cycle, each domain context
//! depends only on the contexts its `mod.rs` names, the rules never write
//! job rows (`jobs::record`) or reach the executor, the executor reaches
//! the domain only for the audit trail, and `api/` holds no SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
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

/// `domain/escrow/state.rs` → `domain::escrow::state`; a `mod.rs` is its folder.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its comments and its `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every `crate::…` path a file names, `use` lists with braces expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let head: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let head = head.trim_end_matches(':').to_string();
        let after = &rest[head.len()..];
        if let Some(inner) = after.strip_prefix("::{") {
            let list = &inner[..inner.find('}').unwrap_or(inner.len())];
            for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let item = item.split_whitespace().next().unwrap_or("");
                if item == "self" {
                    paths.push(head.clone());
                } else {
                    paths.push(format!("{head}::{item}"));
                }
            }
        } else {
            paths.push(head);
        }
    }
    paths
}

/// Declarations and re-exports only: no item of its own.
fn is_facade(code: &str) -> bool {
    ["fn ", "struct ", "enum ", "const ", "static ", "impl ", "trait ", "macro_rules!"]
        .iter()
        .all(|k| !code.contains(k))
}

struct Graph {
    /// Module → the modules it names.
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).expect("readable"));
        let facade = is_facade(&code);
        let mut to = BTreeSet::new();
        for path in crate_paths(&code) {
            // The longest prefix that is a module of ours.
            let parts: Vec<&str> = path.split("::").collect();
            let target = (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| modules.contains(m));
            let Some(target) = target else { continue };
            // A folder that only declares and re-exports its children is
            // their facade, not a dependency of theirs.
            let reexport = facade && (target.starts_with(&format!("{from}::")) || from.is_empty());
            if target != from && !reexport {
                to.insert(target);
            }
        }
        edges.insert(from, to);
    }
    Graph { edges }
}

impl Graph {
    fn deps(&self, module: &str) -> impl Iterator<Item = &String> {
        self.edges.get(module).into_iter().flatten()
    }

    /// A cycle through the module graph, if there is one.
    fn cycle(&self) -> Option<Vec<String>> {
        fn visit<'a>(
            g: &'a Graph,
            m: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| *p == m) {
                return Some(path[at..].iter().map(|s| s.to_string()).chain([m.to_string()]).collect());
            }
            if done.contains(m) {
                return None;
            }
            path.push(m);
            for next in g.deps(m) {
                if let Some(cycle) = visit(g, next, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(m);
            None
        }
        let mut done = BTreeSet::new();
        self.edges.keys().find_map(|m| visit(self, m, &mut Vec::new(), &mut done))
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let edge = |a: &str, b: &str| (a.to_string(), [b.to_string()].into_iter().collect::<BTreeSet<_>>());
    let g = Graph { edges: [edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("d", "a")].into_iter().collect() };
    assert_eq!(g.cycle().map(|c| c.len()), Some(4), "a → b → c → a");
    let g = Graph { edges: [edge("a", "b"), edge("b", "c"), edge("d", "a")].into_iter().collect() };
    assert_eq!(g.cycle(), None);
}

#[test]
fn the_modules_of_shared_form_no_cycle() {
    let g = graph();
    assert!(g.edges.len() > 40, "the source was read: {} modules", g.edges.len());
    // The graph sees real dependencies (a blind reader would find no cycle).
    for (from, to) in [("domain::escrow::transitions", "domain::escrow::payouts"), ("jobs::exec", "domain::ops::audit")]
    {
        assert!(g.deps(from).any(|d| d == to), "{from} → {to} not seen");
    }
    assert_eq!(g.cycle(), None);
}

fn context_of(module: &str) -> Option<&str> {
    module.strip_prefix("domain::").map(|rest| rest.split("::").next().unwrap_or(rest))
}

#[test]
fn each_domain_context_depends_only_on_the_contexts_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = [
        ("ops", &[][..]),
        ("access", &["ops"][..]),
        ("spend", &["access", "ops"][..]),
        ("escrow", &["access", "ops"][..]),
        ("saka", &["access", "ops"][..]),
        ("psp", &["escrow", "ops"][..]),
    ]
    .into_iter()
    .collect();
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        let Some(ctx) = context_of(from) else { continue };
        for to in tos {
            if let Some(other) = context_of(to)
                && other != ctx
                && !allowed.get(ctx).is_some_and(|a| a.contains(&other))
            {
                wrong.push(format!("{from} → {to}"));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

#[test]
fn rules_never_write_job_rows_and_the_executor_reaches_the_domain_only_for_its_audit() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            let rule_to_jobs = from.starts_with("domain")
                && (to.starts_with("jobs") && !matches!(to.as_str(), "jobs" | "jobs::kinds" | "jobs::outcome")
                    || to.starts_with("intake"));
            let ops_up = from.starts_with("domain::ops")
                && (to.starts_with("jobs") || to.starts_with("domain::") && !to.starts_with("domain::ops"));
            let jobs_to_rules = from.starts_with("jobs") && to.starts_with("domain") && to != "domain::ops::audit";
            if rule_to_jobs || ops_up || jobs_to_rules {
                wrong.push(format!("{from} → {to}"));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
    // `crate::jobs` itself re-exports its parts: a rule that names it may
    // only take the vocabulary.
    let src = root().join("src/domain");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let code = code_of(&std::fs::read_to_string(&file).expect("readable"));
        for path in crate_paths(&code).iter().filter(|p| p.starts_with("jobs::")) {
            let item = path.trim_start_matches("jobs::");
            assert!(
                ["JobKind", "Outcome", "End", "FollowUp", "kinds", "outcome"].iter().any(|ok| item.starts_with(ok)),
                "{}: {path}",
                file.display()
            );
        }
    }
}
#[test]
fn the_base_modules_depend_on_no_rule_and_no_job() {
    let upper = |m: &str| m.starts_with("domain") || m.starts_with("jobs") || m.starts_with("intake");
    let g = graph();
    let wrong: Vec<String> = g
        .edges
        .iter()
        .filter(|(from, _)| !from.is_empty() && !upper(from))
        .flat_map(|(from, tos)| tos.iter().filter(|to| upper(to)).map(move |to| format!("{from} → {to}")))
        .collect();
    assert_eq!(wrong, Vec::<String>::new());
}

#[test]
fn the_api_holds_no_sql() {
    let api = root().join("../api/src");
    let mut files = Vec::new();
    rust_files(&api, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let code = code_of(&std::fs::read_to_string(&file).expect("readable"));
        for needle in ["sqlx::query", "query_as(", "query_scalar(", "SELECT ", "INSERT ", "UPDATE ", "DELETE "] {
            assert!(!code.contains(needle), "{} has SQL ({needle})", file.display());
        }
    }
}
