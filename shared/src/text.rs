//! Text a client or the PSP sends, as Postgres can hold it: `text` and
//! `jsonb` refuse U+0000, so a request carrying one is refused at the edge
//! (or, for a signed webhook, kept raw) instead of failing as a 500.

use serde_json::Value;

/// Whether a JSON value holds U+0000 anywhere, object keys included.
pub fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn u0000_is_found_in_strings_keys_and_nested_values() {
        assert!(!holds_nul(&json!({"a": ["b", {"c": 1}], "d": null})));
        assert!(holds_nul(&json!("a\u{0}")));
        assert!(holds_nul(&json!({"a": [{"b": "x\u{0}"}]})));
        assert!(holds_nul(&json!({"a\u{0}": 1})));
        let parsed: Value = serde_json::from_str(r#"{"note": "a\u0000b"}"#).unwrap_or_default();
        assert!(holds_nul(&parsed));
    }
}
