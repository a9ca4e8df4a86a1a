//! JSON bodies: the body must be a JSON object (`Content-Type:
//! application/json`); fields are read one by one so that every invalid field
//! is reported at once in a single 422, unknown fields included.
//!
//! A body that names one key twice, at any depth, is refused (422 naming
//! the key): serde_json keeps the last value silently, while a gateway or
//! a log reader in front of us may keep the first, and the two would
//! disagree on what was asked (`"total_amount":"1.00","total_amount":"999.00"`).
//! [`parse_unique`] reads the body through a visitor of our own that builds
//! the same `serde_json::Value` and stops at the first repeated key.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shared::money::{AmountIn, Currencies, Money, json_type};
use shared::text::holds_nul;
use shared::{ErrorCode, FieldError, Problem};

use crate::error::ApiError;

pub struct JsonFields(pub Fields);

/// The JSON body limit, put in the request extensions by the router.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Reads a body up to `limit` bytes. Past it the rest is read and dropped
/// (up to 8 MiB more) before answering 413, so that the client, still
/// sending, receives the problem body instead of a reset connection.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::problem(ErrorCode::ValidationError, format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit + 8 * 1024 * 1024 {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::problem(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

impl<S: Send + Sync> FromRequest<S> for JsonFields {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
            .unwrap_or(false);
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(64 * 1024);
        let _ = state;
        let bytes = read_limited(req.into_body(), limit).await?;
        if !is_json && !bytes.is_empty() {
            return Err(ApiError::problem(ErrorCode::UnsupportedMediaType, "send the body as application/json"));
        }
        Ok(JsonFields(Fields::parse(&bytes)?))
    }
}

/// A JSON object being read field by field; errors accumulate.
pub struct Fields {
    map: Map<String, Value>,
    /// Each field's raw JSON token: amounts are read from their literal
    /// text, never through a float.
    raw: HashMap<String, Box<RawValue>>,
    errors: Vec<(ErrorCode, FieldError)>,
}

fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    if full.contains("Uuid") || full.ends_with("Id") {
        "an id (UUID string)"
    } else if full.contains("String") {
        "a string"
    } else if full.contains("bool") {
        "a boolean"
    } else if full.contains("DateTime") {
        "an RFC 3339 timestamp"
    } else if full.contains("i64") || full.contains("i32") || full.contains("u32") {
        "an integer"
    } else {
        "a value of the expected type"
    }
}

impl Fields {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            Value::Object(Map::new())
        } else {
            match parse_unique(bytes) {
                Ok(value) => value,
                Err(JsonError::Duplicate(key)) => {
                    return Err(ApiError::field(
                        ErrorCode::ValidationError,
                        &key,
                        "is named twice in the body; each key may appear once",
                    ));
                }
                Err(JsonError::Malformed(e)) => {
                    return Err(ApiError::field(ErrorCode::ValidationError, "body", format!("malformed JSON: {e}")));
                }
            }
        };
        match value {
            Value::Object(map) => {
                let nul: Vec<FieldError> = map
                    .iter()
                    .filter(|(k, v)| k.contains('\0') || holds_nul(v))
                    .map(|(k, _)| FieldError::new(k.replace('\0', "\\u0000"), "must not contain U+0000"))
                    .collect();
                if !nul.is_empty() {
                    return Err(Problem::fields(ErrorCode::ValidationError, nul).into());
                }
                // The same bytes again, keeping each field's token as sent.
                let raw = if map.is_empty() {
                    HashMap::new()
                } else {
                    serde_json::from_slice(bytes).map_err(|e| {
                        ApiError::field(ErrorCode::ValidationError, "body", format!("malformed JSON: {e}"))
                    })?
                };
                Ok(Self { map, raw, errors: Vec::new() })
            }
            other => Err(ApiError::field(
                ErrorCode::ValidationError,
                "body",
                format!("must be a JSON object, not {}", json_type(&other)),
            )),
        }
    }

    fn bad(&mut self, code: ErrorCode, field: &str, message: impl Into<String>) {
        self.errors.push((code, FieldError::new(field, message)));
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.raw.remove(name);
        match self.map.remove(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// An optional field; `null` is the same as absent.
    pub fn opt<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        let v = self.take(name)?;
        let found = json_type(&v);
        match serde_json::from_value::<T>(v) {
            Ok(t) => Some(t),
            Err(_) => {
                self.bad(ErrorCode::ValidationError, name, format!("must be {}, not {found}", type_name::<T>()));
                None
            }
        }
    }

    pub fn req<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        if self.map.get(name).is_none_or(|v| v.is_null()) {
            self.map.remove(name);
            self.bad(ErrorCode::ValidationError, name, "is required");
            return None;
        }
        self.opt(name)
    }

    /// A required, trimmed, non-empty string of at most `max` characters.
    pub fn text(&mut self, name: &str, max: usize) -> Option<String> {
        let s: String = self.req(name)?;
        self.check_text(name, s, max)
    }

    pub fn opt_text(&mut self, name: &str, max: usize) -> Option<String> {
        let s: String = self.opt(name)?;
        self.check_text(name, s, max)
    }

    fn check_text(&mut self, name: &str, s: String, max: usize) -> Option<String> {
        let s = s.trim().to_string();
        if s.is_empty() {
            self.bad(ErrorCode::ValidationError, name, "must not be empty");
            None
        } else if s.chars().count() > max {
            self.bad(ErrorCode::ValidationError, name, format!("must be at most {max} characters"));
            None
        } else if s.chars().any(|c| c.is_control()) {
            self.bad(ErrorCode::ValidationError, name, "must not contain control characters");
            None
        } else {
            Some(s)
        }
    }

    /// An amount with its currency, parsed together.
    pub fn money(&mut self, amount: &str, currency: &str, currencies: &Currencies) -> Option<Money> {
        let code: Option<String> = self.req(currency);
        let raw = self.take_amount(amount);
        let cur = match code.map(|c| currencies.require(currency, c.trim())) {
            Some(Ok(c)) => c,
            Some(Err((code, e))) => {
                self.errors.push((code, e));
                // Still check the amount's shape with the usual 2 decimals.
                shared::money::Currency { code: String::new(), decimals: 2 }
            }
            None => shared::money::Currency { code: String::new(), decimals: 2 },
        };
        match Money::parse(amount, &raw, &cur) {
            Ok(m) if !cur.code.is_empty() => Some(m),
            Ok(_) => None,
            Err((code, e)) => {
                self.errors.push((code, e));
                None
            }
        }
    }

    /// An amount in a currency already known (e.g. the escrow's).
    pub fn amount(&mut self, name: &str, currency: &shared::money::Currency) -> Option<Money> {
        let raw = self.take_amount(name);
        match Money::parse(name, &raw, currency) {
            Ok(m) => Some(m),
            Err((code, e)) => {
                self.errors.push((code, e));
                None
            }
        }
    }

    /// An amount whose currency only the rule knows (an escrow's): its
    /// shape here, at most `decimals` places; `zero_allowed` for limits.
    pub fn decimal(&mut self, name: &str, decimals: u32, required: bool, zero_allowed: bool) -> Option<Decimal> {
        let raw = self.take_amount(name);
        if raw == AmountIn::Missing && !required {
            return None;
        }
        let parsed = if zero_allowed {
            shared::money::parse_non_negative(name, &raw, decimals)
        } else {
            shared::money::parse_decimal(name, &raw, decimals)
        };
        match parsed {
            Ok(v) => Some(v),
            Err((code, e)) => {
                self.errors.push((code, e));
                None
            }
        }
    }

    /// Removes a field, answering its literal token.
    fn take_amount(&mut self, name: &str) -> AmountIn {
        self.map.remove(name);
        match self.raw.remove(name) {
            Some(raw) => AmountIn::from_raw(&raw),
            None => AmountIn::Missing,
        }
    }

    pub fn error(&mut self, code: ErrorCode, field: &str, message: impl Into<String>) {
        self.bad(code, field, message);
    }

    /// Ends reading: unknown fields are errors; all errors become one 422.
    /// The code is the sharper one (`AMOUNT_INVALID`, `CURRENCY_UNSUPPORTED`)
    /// when every error shares it, `VALIDATION_ERROR` otherwise.
    pub fn finish(mut self) -> Result<(), ApiError> {
        let unknown: Vec<String> = self.map.keys().cloned().collect();
        for name in unknown {
            self.bad(ErrorCode::ValidationError, &name, "is not a known field");
        }
        if self.errors.is_empty() {
            return Ok(());
        }
        let first = self.errors[0].0;
        let code = if self.errors.iter().all(|(c, _)| *c == first) { first } else { ErrorCode::ValidationError };
        Err(Problem::fields(code, self.errors.into_iter().map(|(_, e)| e).collect()).into())
    }
}

/// After a successful `finish`, every required field is present; a missing
/// one is a bug, answered as a 500 rather than a panic.
pub fn got<T>(v: Option<T>) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::Shared(shared::Error::internal("field missing after validation")))
}

/// Why a body could not be read by [`parse_unique`].
#[derive(Debug)]
pub enum JsonError {
    /// A key named twice in one object: its path (`release_conditions.steps[1].x`).
    Duplicate(String),
    Malformed(serde_json::Error),
}

/// Parses JSON like `serde_json::from_slice::<Value>`, except that an
/// object naming one key twice, at any depth, is refused with the key's path.
pub fn parse_unique(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Unique { path: String::new(), duplicate: &duplicate }.deserialize(&mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match (parsed, duplicate.into_inner()) {
        (_, Some(path)) => Err(JsonError::Duplicate(path)),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(JsonError::Malformed(e)),
    }
}

/// A `Value` being read at `path`; the first repeated key's path goes to
/// `duplicate` (the error serde returns cannot carry it).
struct Unique<'a> {
    path: String,
    duplicate: &'a std::cell::RefCell<Option<String>>,
}

impl Unique<'_> {
    fn child(&self, step: std::fmt::Arguments<'_>) -> Self {
        Unique { path: format!("{}{step}", self.path), duplicate: self.duplicate }
    }
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(format_args!("[{}]", items.len())))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = if self.path.is_empty() {
                self.child(format_args!("{key}"))
            } else {
                self.child(format_args!(".{key}"))
            };
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(child.path.replace('\0', "\\u0000"));
                return Err(de::Error::custom(format!("the key `{key}` is named twice")));
            }
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<String> {
        match parse_unique(text.as_bytes()) {
            Err(JsonError::Duplicate(path)) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn a_key_named_twice_at_any_depth_is_refused_with_its_path() {
        assert_eq!(dup(r#"{"total_amount":"1.00","total_amount":"999.00"}"#).as_deref(), Some("total_amount"));
        assert_eq!(dup(r#"{"a":{"b":1,"b":1}}"#).as_deref(), Some("a.b"), "the same value twice is refused too");
        assert_eq!(dup(r#"{"a":[{"x":1},{"y":1,"y":2}]}"#).as_deref(), Some("a[1].y"));
        assert_eq!(dup(r#"[{"k":1,"k":2}]"#).as_deref(), Some("[0].k"));
        // An escaped spelling of the same key is the same key.
        assert_eq!(dup(r#"{"amount":"1","\u0061mount":"2"}"#).as_deref(), Some("amount"));
    }

    #[test]
    fn unique_keys_parse_as_serde_json_would() {
        let text = r#"{"a":1,"b":[1,2.5,-3,"x",null,true,{"a":2}],"c":{"a":{"a":3}},"big":18446744073709551615}"#;
        let ours = parse_unique(text.as_bytes()).expect("valid");
        let theirs: Value = serde_json::from_str(text).expect("valid");
        assert_eq!(ours, theirs);
        assert!(matches!(parse_unique(b"{\"a\": 1"), Err(JsonError::Malformed(_))));
        assert!(matches!(parse_unique(b"{\"a\": 1} x"), Err(JsonError::Malformed(_))), "trailing bytes");
    }

    #[test]
    fn a_body_with_a_repeated_key_is_a_422_naming_it() {
        let Err(ApiError::Shared(shared::Error::Problem(p))) = Fields::parse(br#"{"note":"a","note":"b"}"#) else {
            panic!("a repeated key must be refused");
        };
        assert_eq!(p.code, ErrorCode::ValidationError);
        assert_eq!(p.errors[0].field, "note");
    }
}
