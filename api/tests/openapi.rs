//! The OpenAPI document against the router's source: every route the code
//! serves has its operation (method and path) in `/openapi.json` and every
//! operation there is a route; every `$ref` resolves; job endpoints carry
//! their headers and receipts; every operation lists its problem answers.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// `(method, path)` of every `.route("…", get(…).post(…))` in `api/src/routes`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("api/src/routes").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("a route file");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(\"") {
            rest = &rest[at + ".route(\"".len()..];
            let Some((path, after)) = rest.split_once('"') else { break };
            // The route call's arguments: up to its closing parenthesis.
            let mut depth = 1;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &after[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let calls = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                });
                if calls {
                    out.insert((method.to_string(), path.to_string()));
                }
            }
            rest = after;
        }
    }
    out
}

fn document() -> Value {
    serde_json::from_str(kobatela_api::openapi::json()).expect("the document is JSON")
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_has_its_operation_in_the_document_and_no_operation_lacks_a_route() {
    let routes = routes_in_source();
    assert!(routes.len() >= 50, "the scan found only {routes:?}");
    let documented = operations(&document());
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(missing.is_empty(), "routes without an OpenAPI entry: {missing:?}");
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(extra.is_empty(), "OpenAPI entries without a route: {extra:?}");
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_reference_resolves() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    for scheme in ["bearer", "api_key", "psp_signature", "psp_timestamp"] {
        assert!(schemes.contains_key(scheme), "{scheme} missing");
    }
    assert_eq!(doc["paths"]["/psp/webhook"]["post"]["security"][0]["psp_signature"], serde_json::json!([]));
    assert_eq!(doc["paths"]["/health"]["get"]["security"], serde_json::json!([{}]), "public");
}

#[test]
fn job_endpoints_document_their_headers_receipts_and_every_operation_its_problems() {
    let doc = document();
    for (method, path) in kobatela_api::openapi::JOB_OPERATIONS {
        let op = &doc["paths"][path][method];
        let params = op["parameters"].as_array().unwrap_or_else(|| panic!("{method} {path}: no parameters"));
        let key = params.iter().find(|p| p["name"] == "Idempotency-Key").expect("Idempotency-Key");
        assert_eq!((key["in"].as_str(), key["required"].as_bool()), (Some("header"), Some(true)), "{path}");
        assert!(params.iter().any(|p| p["name"] == "Prefer"), "{path}");
        for status in ["200", "202"] {
            assert_eq!(
                op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Receipt",
                "{method} {path} {status}"
            );
        }
        assert!(op["responses"]["202"]["headers"]["Location"].is_object(), "{path}");
    }
    for (method, path) in operations(&doc) {
        let responses = &doc["paths"][&path][&method]["responses"];
        for status in ["401", "404", "422", "429", "500", "503"] {
            let schema = &responses[status]["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/Problem", "{method} {path} {status}");
        }
    }
}

#[test]
fn the_docs_page_loads_nothing_but_the_document_and_its_own_assets() {
    let page = include_str!("../assets/docs.html");
    let script = include_str!("../assets/docs.js");
    assert!(script.contains("fetch(\"/openapi.json\")"));
    for text in [page, script, include_str!("../assets/docs.css")] {
        for outside in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(outside), "the docs page reaches outside the api: {outside}");
        }
    }
    // What the page itself loads: its script and style sheet, from the api.
    let loads: Vec<&str> =
        page.split(['"', '\'']).filter(|s| s.starts_with('/') && !s.starts_with("/openapi.json")).collect();
    assert_eq!(loads, ["/assets/docs.css", "/assets/docs.js"]);
}

#[test]
fn every_operation_documents_its_429_and_503_with_retry_after() {
    let doc = document();
    for (method, path) in operations(&doc) {
        for status in ["429", "503"] {
            let response = &doc["paths"][&path][&method]["responses"][status];
            assert!(response.is_object(), "{method} {path}: no {status}");
            let header = &response["headers"]["Retry-After"];
            assert_eq!(header["schema"]["type"], "integer", "{method} {path} {status}: Retry-After {header}");
        }
    }
}

#[test]
#[ignore = "prints the document: cargo test -p kobatela-api --test openapi -- --ignored --nocapture"]
fn print_the_document() {
    println!("{}", kobatela_api::openapi::json());
}

/// Found by schemathesis: before the first invariants run the answer has
/// `run_id` and `checked_at` null, which the document must allow.
#[test]
fn the_invariants_answer_allows_no_run_yet() {
    let doc = document();
    let schema = &doc["paths"]["/ops/invariants"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    let name = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()).expect("a named schema");
    let props = &doc["components"]["schemas"][name]["properties"];
    for field in ["run_id", "checked_at"] {
        let text = props[field].to_string();
        assert!(text.contains("null"), "{field} must be nullable: {text}");
    }
}
