//! Money and grains. `Money` only comes from [`Money::parse`], which refuses
//! zero, negatives, more decimals than the currency's minor unit and unknown
//! currencies; amounts are `rust_decimal::Decimal`, never floats, and travel
//! in JSON as strings with the currency's decimals. SAKA [`Grains`] are a
//! separate integer type that never converts to money.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, FieldError};

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

/// An amount as a client sent it, kept as its literal text: a JSON number
/// is never read through a float (`100000000000000.01` stays exactly that),
/// and a wrong type becomes a field error instead of a parse failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AmountIn {
    /// Absent or `null`.
    #[default]
    Missing,
    /// The content of a JSON string.
    Text(String),
    /// The literal text of a JSON number, exactly as sent.
    Number(String),
    /// Any other JSON type, by name (`"a boolean"`).
    Other(&'static str),
}

impl AmountIn {
    /// From the raw JSON token of a field (see `serde_json::value::RawValue`).
    pub fn from_raw(raw: &serde_json::value::RawValue) -> Self {
        let text = raw.get().trim();
        match text.as_bytes().first() {
            Some(b'"') => match serde_json::from_str::<String>(text) {
                Ok(s) => AmountIn::Text(s),
                Err(_) => AmountIn::Other("a malformed string"),
            },
            Some(b'-' | b'0'..=b'9') => AmountIn::Number(text.to_string()),
            Some(b'n') => AmountIn::Missing,
            Some(b't' | b'f') => AmountIn::Other("a boolean"),
            Some(b'[') => AmountIn::Other("an array"),
            Some(b'{') => AmountIn::Other("an object"),
            _ => AmountIn::Other("not a JSON value"),
        }
    }

    /// From JSON text holding one value (a test and tooling convenience).
    pub fn from_json(text: &str) -> Self {
        match serde_json::from_str::<Box<serde_json::value::RawValue>>(text) {
            Ok(raw) => AmountIn::from_raw(&raw),
            Err(_) => AmountIn::Other("not a JSON value"),
        }
    }
}

/// A positive amount in a supported currency, within its minor unit.
///
/// In JSON (job payloads) it is `{"amount": "12.50", "currency": "USD"}`,
/// usually flattened into the payload, and reading it checks it again
/// against the currency table installed at boot: a payload can never carry
/// an amount its currency cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MoneyWire", into = "MoneyWire")]
pub struct Money {
    amount: Decimal,
    currency: String,
}

/// `Money` as it travels: the amount as its exact decimal string.
#[derive(Serialize, Deserialize)]
struct MoneyWire {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency: String,
}

impl TryFrom<MoneyWire> for Money {
    type Error = String;

    fn try_from(w: MoneyWire) -> Result<Self, Self::Error> {
        let currencies = currencies();
        let currency = currencies.require("currency", &w.currency).map_err(|(_, e)| e.message)?;
        Money::of("amount", w.amount, &currency)
            .map_err(|(code, e)| format!("{}: {} {}", code.as_str(), e.field, e.message))
    }
}

impl From<Money> for MoneyWire {
    fn from(m: Money) -> Self {
        MoneyWire { amount: m.amount, currency: m.currency }
    }
}

impl Money {
    /// Parses a client amount for `currency`; every refusal is
    /// `AMOUNT_INVALID` with a message saying why. No rounding ever happens.
    pub fn parse(field: &str, raw: &AmountIn, currency: &Currency) -> Result<Money, (ErrorCode, FieldError)> {
        let amount = parse_decimal(field, raw, currency.decimals)?;
        Ok(Money { amount, currency: currency.code.clone() })
    }

    /// An amount already read as a decimal (its shape checked at some other
    /// scale, say), checked again for `currency` exactly as
    /// [`Money::parse`] checks a client's text.
    pub fn of(field: &str, amount: Decimal, currency: &Currency) -> Result<Money, (ErrorCode, FieldError)> {
        Money::parse(field, &AmountIn::Text(amount.to_string()), currency)
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

/// Integer digits a `NUMERIC(18,2)` amount can have.
const MAX_INTEGER_DIGITS: usize = 16;

/// Parses a positive decimal with at most `decimals` places.
pub fn parse_decimal(field: &str, raw: &AmountIn, decimals: u32) -> Result<Decimal, (ErrorCode, FieldError)> {
    parse_amount(field, raw, decimals, false)
}

/// Parses a decimal ≥ 0 with at most `decimals` places (a limit, where 0
/// freezes the payee).
pub fn parse_non_negative(field: &str, raw: &AmountIn, decimals: u32) -> Result<Decimal, (ErrorCode, FieldError)> {
    parse_amount(field, raw, decimals, true)
}

fn parse_amount(
    field: &str,
    raw: &AmountIn,
    decimals: u32,
    zero_allowed: bool,
) -> Result<Decimal, (ErrorCode, FieldError)> {
    let bad = |msg: String| (ErrorCode::AmountInvalid, FieldError::new(field, msg));
    let text = match raw {
        AmountIn::Missing => return Err((ErrorCode::ValidationError, FieldError::new(field, "is required"))),
        AmountIn::Text(s) | AmountIn::Number(s) => s,
        AmountIn::Other(kind) => return Err(bad(format!("must be a decimal string or number, not {kind}"))),
    };
    let value = plain_decimal(text, decimals).map_err(|why| bad(why.message(text, decimals)))?;
    if value.is_zero() && !zero_allowed {
        return Err(bad("must be greater than zero".into()));
    }
    Ok(value)
}

/// Why a text is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountRefusal {
    /// Not `digits[.digits]`: a sign, an exponent, an underscore, a space…
    NotPlain,
    TooManyDecimals,
    TooLarge,
}

impl AmountRefusal {
    fn message(self, text: &str, decimals: u32) -> String {
        // The text is echoed shortened and escaped: it may be long or odd.
        let shown: String = text.chars().take(32).collect::<String>().escape_debug().to_string();
        let shown = if text.chars().count() > 32 { format!("{shown}…") } else { shown };
        match self {
            AmountRefusal::NotPlain => {
                format!(
                    "`{shown}` is not a plain decimal (digits with an optional fraction, such as \"12\" or \"12.50\")"
                )
            }
            AmountRefusal::TooManyDecimals => {
                format!("`{shown}` has more than {decimals} decimal places for this currency")
            }
            AmountRefusal::TooLarge => "is too large (at most 9999999999999999.99)".to_string(),
        }
    }
}

/// Reads `digits[.digits]` exactly, at `decimals` scale: no sign, exponent,
/// underscore, space or `+`. Trailing fraction zeros beyond the scale are
/// the same number (`"5000.00"` is a valid XOF amount); any other digit
/// beyond it is refused, never rounded. Nothing here can overflow or panic,
/// whatever the length of the text.
pub fn plain_decimal(text: &str, decimals: u32) -> Result<Decimal, AmountRefusal> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(AmountRefusal::NotPlain);
    }
    let int = int.trim_start_matches('0');
    let frac = frac.unwrap_or("").trim_end_matches('0');
    if frac.len() > decimals as usize {
        return Err(AmountRefusal::TooManyDecimals);
    }
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(AmountRefusal::TooLarge);
    }
    // At most 16 integer digits and the scale's fraction digits, checked
    // all the same so that no `decimals` can overflow.
    let mut mantissa: i128 = 0;
    for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', decimals as usize - frac.len())) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(b - b'0')))
            .ok_or(AmountRefusal::TooLarge)?;
    }
    Decimal::try_from_i128_with_scale(mantissa, decimals).map_err(|_| AmountRefusal::TooLarge)
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
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
        AmountIn::from_json(&v.to_string())
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
    fn money_in_a_payload_is_checked_again_when_it_is_read() {
        let m = Money::parse("amount", &amt(serde_json::json!("12.5")), &usd()).expect("valid");
        let v = serde_json::to_value(&m).expect("serializes");
        assert_eq!(v, serde_json::json!({"amount": "12.50", "currency": "USD"}));
        assert_eq!(serde_json::from_value::<Money>(v).ok(), Some(m));
        for bad in [
            serde_json::json!({"amount": "10.5", "currency": "XOF"}),
            serde_json::json!({"amount": "0.001", "currency": "USD"}),
            serde_json::json!({"amount": "0", "currency": "USD"}),
            serde_json::json!({"amount": "-3", "currency": "EUR"}),
            serde_json::json!({"amount": "10", "currency": "GBP"}),
            serde_json::json!({"amount": "10"}),
            serde_json::json!({"amount": 10, "currency": "USD"}),
        ] {
            assert!(serde_json::from_value::<Money>(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(Money::of("a", Decimal::new(5000, 0), &xof()).map(|m| m.amount().to_string()), Ok("5000".into()));
        assert_eq!(Money::of("a", Decimal::new(105, 1), &xof()).map_err(|e| e.0), Err(ErrorCode::AmountInvalid));
    }

    #[test]
    fn mixed_currencies_do_not_add() {
        let a = Money::parse("a", &amt(serde_json::json!("1")), &usd()).expect("valid");
        let b = Money::parse("b", &amt(serde_json::json!("1")), &xof()).expect("valid");
        assert!(a.checked_add(&b).is_none());
        assert_eq!(a.checked_add(&a).map(|m| m.amount()), Some(Decimal::from(2)));
    }

    fn number(text: &str) -> AmountIn {
        AmountIn::from_json(text)
    }

    #[test]
    fn underscores_signs_exponents_and_spaces_are_refused_in_strings_and_numbers() {
        for text in [
            "1_0", "1_000", "+1", "-1", "1e2", "1E2", " 1", "1 ", "1.", ".5", "1..2", "0x10", "１", "1,5", "Infinity",
            "NaN", "", "٣", "1.2.3", "\u{0}1",
        ] {
            let err = parse_decimal("amount", &AmountIn::Text(text.into()), 2).expect_err(text);
            assert_eq!(err.0, ErrorCode::AmountInvalid, "{text:?}");
        }
        for text in ["1e2", "1E2", "-1", "-0.5", "1.5e1", "100E-2", "0e0"] {
            let err = parse_decimal("amount", &number(text), 2).expect_err(text);
            assert_eq!(err.0, ErrorCode::AmountInvalid, "{text}");
        }
    }

    #[test]
    fn large_numbers_are_kept_to_the_cent_or_refused_never_rounded() {
        let exact = |text: &str| parse_decimal("amount", &number(text), 2).map(|d| d.to_string());
        assert_eq!(exact("100000000000000.01").as_deref(), Ok("100000000000000.01"));
        assert_eq!(exact("1234567890123456.78").as_deref(), Ok("1234567890123456.78"));
        assert_eq!(exact("9999999999999999.99").as_deref(), Ok("9999999999999999.99"));
        // JSON numbers have no leading zeros; strings may.
        assert!(exact("01.10").is_err());
        let text = AmountIn::Text("0000000000000000000001.10".into());
        assert_eq!(parse_decimal("amount", &text, 2).map(|d| d.to_string()).as_deref(), Ok("1.10"));
        assert_eq!(exact("1.1000000000000000000000000000000000").as_deref(), Ok("1.10"));
        for too_large in ["10000000000000000", "12345678901234567.8", &"9".repeat(400)] {
            let err = parse_decimal("amount", &number(too_large), 2).expect_err(too_large);
            assert_eq!(err.0, ErrorCode::AmountInvalid);
        }
        assert!(parse_decimal("amount", &number("0.001"), 2).is_err());
        assert!(parse_non_negative("limit", &number("0"), 2).is_ok_and(|d| d.is_zero()));
        assert!(parse_decimal("amount", &number("0"), 2).is_err());
    }

    /// The reference: digits-only big-number arithmetic on the text, written
    /// apart from `plain_decimal`, answering the canonical amount text
    /// (`"12.50"`) or `None` for a refusal.
    fn reference(text: &str, decimals: usize, zero_allowed: bool) -> Option<String> {
        let mut parts = text.split('.');
        let int = parts.next()?;
        let frac = parts.next();
        if parts.next().is_some() || int.is_empty() || frac == Some("") {
            return None;
        }
        let frac = frac.unwrap_or("");
        if !int.chars().chain(frac.chars()).all(|c| "0123456789".contains(c)) {
            return None;
        }
        let significant_frac = frac.trim_end_matches('0');
        if significant_frac.len() > decimals {
            return None;
        }
        let int = match int.trim_start_matches('0') {
            "" => "0",
            rest => rest,
        };
        if int.len() > 16 {
            return None;
        }
        let padded = format!("{significant_frac:0<decimals$}");
        if !zero_allowed && int == "0" && padded.chars().all(|c| c == '0') {
            return None;
        }
        Some(if decimals == 0 { int.to_string() } else { format!("{int}.{padded}") })
    }

    fn check_against_reference(raw: &AmountIn, text: &str, decimals: u32) {
        for zero_allowed in [false, true] {
            let ours =
                if zero_allowed { parse_non_negative("a", raw, decimals) } else { parse_decimal("a", raw, decimals) };
            let expected = reference(text, decimals as usize, zero_allowed);
            match (&ours, &expected) {
                (Ok(value), Some(canonical)) => {
                    assert_eq!(&value.to_string(), canonical, "{text:?} at {decimals} decimals");
                    assert_eq!(value.scale(), decimals);
                    // Short texts also agree with rust_decimal's own exact parser.
                    if text.len() <= 28 {
                        let theirs = Decimal::from_str_exact(text).map(|d| d.normalize());
                        assert_eq!(theirs, Ok(value.normalize()), "{text:?}");
                    }
                }
                (Err(e), None) => assert!(matches!(e.0, ErrorCode::AmountInvalid | ErrorCode::ValidationError)),
                _ => panic!("{text:?} at {decimals} decimals: ours {ours:?}, reference {expected:?}"),
            }
        }
    }

    fn rng() -> rand::rngs::StdRng {
        use rand::SeedableRng;
        let seed: u64 = rand::random();
        println!("seed {seed}");
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn property_random_strings_never_round_never_panic_and_agree_with_the_reference() {
        use rand::Rng;
        let mut rng = rng();
        let alphabet: Vec<char> = "0000123456789...__--++eE ,x\u{0}１".chars().collect();
        for _ in 0..20_000 {
            let len = match rng.random_range(0..100) {
                0 => rng.random_range(0..400),
                _ => rng.random_range(0..24),
            };
            let text: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let decimals = rng.random_range(0..=2);
            check_against_reference(&AmountIn::Text(text.clone()), &text, decimals);
        }
    }

    #[test]
    fn property_json_numbers_are_read_from_their_literal_text() {
        use rand::Rng;
        let mut rng = rng();
        let digit = |rng: &mut rand::rngs::StdRng| char::from(b'0' + rng.random_range(0..10u8));
        for _ in 0..20_000 {
            // JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
            let mut text = String::new();
            if rng.random_range(0..10) == 0 {
                text.push('-');
            }
            let int_len = rng.random_range(1..24);
            if int_len == 1 || rng.random_range(0..5) == 0 {
                text.push(digit(&mut rng));
            } else {
                text.push(char::from(b'1' + rng.random_range(0..9u8)));
                (1..int_len).for_each(|_| text.push(digit(&mut rng)));
            }
            if rng.random_bool(0.7) {
                text.push('.');
                (0..rng.random_range(1..8)).for_each(|_| text.push(digit(&mut rng)));
            }
            if rng.random_range(0..10) == 0 {
                text.push(if rng.random_bool(0.5) { 'e' } else { 'E' });
                text.push_str(["", "+", "-"][rng.random_range(0..3)]);
                text.push(digit(&mut rng));
            }
            let raw = AmountIn::from_json(&format!(" {text} "));
            assert_eq!(raw, AmountIn::Number(text.clone()), "the literal text is kept");
            let decimals = rng.random_range(0..=2);
            check_against_reference(&raw, &text, decimals);
        }
    }

    #[test]
    fn property_float_spellings_are_kept_exactly_or_refused() {
        use rand::Rng;
        let mut rng = rng();
        for _ in 0..20_000 {
            let f: f64 = rng.random_range(0.0..1e17) / 10f64.powi(rng.random_range(0..6));
            let text = serde_json::to_string(&f).unwrap_or_default();
            match parse_decimal("a", &number(&text), 2) {
                Ok(d) => assert_eq!(Decimal::from_str_exact(&text).map(|t| t.normalize()), Ok(d.normalize()), "{text}"),
                Err(e) => assert_eq!(e.0, ErrorCode::AmountInvalid, "{text}"),
            }
        }
    }
}
