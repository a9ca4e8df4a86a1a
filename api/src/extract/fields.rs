//! JSON bodies: the body must be a JSON object (`Content-Type:
//! application/json`); fields are read one by one so that every invalid field
//! is reported at once in a single 422, unknown fields included.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
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
            serde_json::from_slice(bytes)
                .map_err(|e| ApiError::field(ErrorCode::ValidationError, "body", format!("malformed JSON: {e}")))?
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
