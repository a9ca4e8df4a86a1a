//! Money and grains. `Money` only comes from [`Money::parse`], which refuses
//! zero, negatives, more decimals than the currency's minor unit and unknown
//! currencies; amounts are `rust_decimal::Decimal`, never floats, and travel
//! in JSON as strings with the currency's decimals. SAKA [`Grains`] are a
//! separate integer type that never converts to money.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, FieldError};

/// The largest amount a `NUMERIC(18,2)` column holds, exclusive.
fn amount_ceiling() -> Decimal {
    Decimal::from(10_000_000_000_000_000_i64)
}

/// Supported currencies and their decimals, from `CURRENCIES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies(BTreeMap<String, u32>);

impl Currencies {
    /// Parses `USD:2,EUR:2,XOF:0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (code, decimals) = item.split_once(':').ok_or_else(|| format!("`{item}` is not CODE:DECIMALS"))?;
            let code = code.trim();
            if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!("`{code}` is not an ISO 4217 code"));
            }
            let decimals: u32 = decimals
                .trim()
                .parse()
                .ok()
                .filter(|d| *d <= 2)
                .ok_or_else(|| format!("`{item}`: decimals must be 0, 1 or 2 (amounts are NUMERIC(18,2))"))?;
            map.insert(code.to_string(), decimals);
        }
        if map.is_empty() {
            return Err("no currency configured".into());
        }
        Ok(Self(map))
    }

    pub fn get(&self, code: &str) -> Option<Currency> {
        self.0.get(code).map(|d| Currency { code: code.to_string(), decimals: *d })
    }

    /// Looks a currency up for a request field (`CURRENCY_UNSUPPORTED`).
    pub fn require(&self, field: &str, code: &str) -> Result<Currency, (ErrorCode, FieldError)> {
        self.get(code).ok_or_else(|| {
            let known = self.0.keys().cloned().collect::<Vec<_>>().join(", ");
            (
                ErrorCode::CurrencyUnsupported,
                FieldError::new(field, format!("unsupported currency `{code}` (supported: {known})")),
            )
        })
    }

    /// Decimals of a currency known to be configured (rows in the database).
    pub fn decimals(&self, code: &str) -> u32 {
        self.0.get(code).copied().unwrap_or(2)
    }
}

impl Default for Currencies {
    fn default() -> Self {
        let mut map = BTreeMap::new();
        map.insert("USD".into(), 2);
        map.insert("EUR".into(), 2);
        map.insert("XOF".into(), 0);
        Self(map)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Currency {
    pub code: String,
    pub decimals: u32,
}

/// An amount as a client sent it: a JSON string or number, checked later so
/// that a wrong type becomes a field error instead of a parse failure.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct AmountIn(pub serde_json::Value);

/// A positive amount in a supported currency, within its minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    amount: Decimal,
    currency: String,
}

impl Money {
    /// Parses a client amount for `currency`; every refusal is
    /// `AMOUNT_INVALID` with a message saying why. No rounding ever happens.
    pub fn parse(field: &str, raw: &AmountIn, currency: &Currency) -> Result<Money, (ErrorCode, FieldError)> {
        let amount = parse_decimal(field, raw, currency.decimals)?;
        Ok(Money { amount, currency: currency.code.clone() })
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Adds two amounts of the same currency; mixed currencies are refused.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        let amount = self.amount.checked_add(other.amount)?;
        Some(Money { amount, currency: self.currency.clone() })
    }
}

/// Parses a positive decimal with at most `decimals` places.
pub fn parse_decimal(field: &str, raw: &AmountIn, decimals: u32) -> Result<Decimal, (ErrorCode, FieldError)> {
    let bad = |msg: String| (ErrorCode::AmountInvalid, FieldError::new(field, msg));
    let text = match &raw.0 {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Null => return Err((ErrorCode::ValidationError, FieldError::new(field, "is required"))),
        other => return Err(bad(format!("must be a decimal string or number, not {}", json_type(other)))),
    };
    let value = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| bad(format!("`{text}` is not a decimal number")))?;
    if value <= Decimal::ZERO {
        return Err(bad("must be greater than zero".into()));
    }
    if value.normalize().scale() > decimals {
        return Err(bad(format!("`{text}` has more than {decimals} decimal places for this currency")));
    }
    if value >= amount_ceiling() {
        return Err(bad("is too large".into()));
    }
    // One spelling per amount ("10" and "10.00" are the same request); the
    // checks above guarantee this never rounds.
    let mut value = value.normalize();
    value.rescale(decimals);
    Ok(value)
}

pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

static REGISTRY: std::sync::OnceLock<Currencies> = std::sync::OnceLock::new();

/// Sets the process-wide currency table used to format amounts read back
/// from the database (rows carry the code, not the decimals). Called once at
/// boot with `CURRENCIES`; later calls are ignored.
pub fn install_currencies(c: Currencies) {
    let _ = REGISTRY.set(c);
}

/// The currency table installed at boot (defaults otherwise).
pub fn currencies() -> Currencies {
    REGISTRY.get().cloned().unwrap_or_default()
}

/// Formats an amount of `currency` with its decimals.
pub fn display(amount: Decimal, currency: &str) -> String {
    let decimals =
        REGISTRY.get().map(|c| c.decimals(currency)).unwrap_or_else(|| Currencies::default().decimals(currency));
    format_amount(amount, decimals)
}

/// Formats an amount with exactly the currency's decimals: `"12.50"`, XOF `"5000"`.
pub fn format_amount(amount: Decimal, decimals: u32) -> String {
    let mut d = amount.round_dp(decimals);
    d.rescale(decimals);
    d.to_string()
}

/// SAKA grains: whole numbers, never money. There is deliberately no
/// conversion to or from `Money` or `Decimal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct Grains(pub i64);

impl Grains {
    pub const ZERO: Grains = Grains(0);

    pub fn checked_add(self, other: Grains) -> Option<Grains> {
        self.0.checked_add(other.0).map(Grains)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
}

impl std::fmt::Display for Grains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency { code: "USD".into(), decimals: 2 }
    }
    fn xof() -> Currency {
        Currency { code: "XOF".into(), decimals: 0 }
    }
    fn amt(v: serde_json::Value) -> AmountIn {
        AmountIn(v)
    }

    #[test]
    fn parses_strings_and_numbers_without_rounding() {
        let m = Money::parse("amount", &amt(serde_json::json!("12.50")), &usd()).expect("valid");
        assert_eq!(m.amount(), Decimal::new(1250, 2));
        let m = Money::parse("amount", &amt(serde_json::json!(10)), &usd()).expect("valid");
        assert_eq!(m.amount(), Decimal::from(10));
        let m = Money::parse("amount", &amt(serde_json::json!(0.1)), &usd()).expect("valid");
        assert_eq!(m.amount(), Decimal::new(1, 1));
        assert!(Money::parse("amount", &amt(serde_json::json!("5000")), &xof()).is_ok());
        assert!(Money::parse("amount", &amt(serde_json::json!("5000.00")), &xof()).is_ok());
    }

    #[test]
    fn refuses_zero_negative_too_precise_and_wrong_types() {
        for bad in [
            serde_json::json!("0"),
            serde_json::json!("-1"),
            serde_json::json!(-0.5),
            serde_json::json!("10.001"),
            serde_json::json!("abc"),
            serde_json::json!(true),
            serde_json::json!([1]),
            serde_json::json!("1e20"),
            serde_json::json!("NaN"),
        ] {
            let err = Money::parse("amount", &amt(bad.clone()), &usd()).expect_err("must refuse");
            assert_eq!(err.0, ErrorCode::AmountInvalid, "{bad}");
        }
        let err = Money::parse("amount", &amt(serde_json::json!("10.5")), &xof()).expect_err("XOF has no decimals");
        assert_eq!(err.0, ErrorCode::AmountInvalid);
    }

    #[test]
    fn formats_with_the_currency_decimals() {
        assert_eq!(format_amount(Decimal::new(125, 1), 2), "12.50");
        assert_eq!(format_amount(Decimal::new(500000, 2), 0), "5000");
    }

    #[test]
    fn currencies_parse_and_refuse() {
        let c = Currencies::parse("USD:2, XOF:0").expect("valid");
        assert_eq!(c.get("XOF").map(|c| c.decimals), Some(0));
        assert!(c.require("currency", "GBP").is_err());
        assert!(Currencies::parse("usd:2").is_err());
        assert!(Currencies::parse("USD:3").is_err());
        assert!(Currencies::parse("").is_err());
    }

    #[test]
    fn mixed_currencies_do_not_add() {
        let a = Money::parse("a", &amt(serde_json::json!("1")), &usd()).expect("valid");
        let b = Money::parse("b", &amt(serde_json::json!("1")), &xof()).expect("valid");
        assert!(a.checked_add(&b).is_none());
        assert_eq!(a.checked_add(&a).map(|m| m.amount()), Some(Decimal::from(2)));
    }
}
