//! What the simulator needs from the environment, checked before it
//! listens: where it listens and posts, the secret it signs with, and the
//! amounts it answers in a particular way (to test how each answer of a
//! PSP is classified).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use shared::config::Config;

#[derive(Debug)]
pub struct Settings {
    pub port: u16,
    pub webhook_url: String,
    /// The last configured secret: after a rotation the newest is last, and
    /// the API still accepts it alongside the old ones.
    pub secret: String,
    /// Amounts answered 200 and then reported `payment.failed`.
    pub fail_amounts: Vec<Decimal>,
    /// Amounts refused at once with a 422 (`PSP_SIM_FAIL_STATUS`), recorded
    /// as refused payouts.
    pub refuse_amounts: Vec<Decimal>,
    /// Amounts answered with an HTTP status and nothing recorded
    /// (`PSP_SIM_STATUS_AMOUNTS`: `409`, `401`, `503`, `422`…).
    pub status_amounts: BTreeMap<Decimal, u16>,
    /// Pause before a payout's first webhook, so the API has stored `SENT`.
    pub first_delay: Duration,
}

impl Settings {
    pub fn load(config: &Config, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let secret = config
            .psp_webhook_secrets
            .last()
            .cloned()
            .ok_or("PSP_WEBHOOK_SECRETS: required: psp-sim signs its webhooks with the last of these secrets")?;
        let refuse_list: Vec<String> = get("PSP_SIM_FAIL_STATUS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let first_delay = match get("PSP_SIM_WEBHOOK_DELAY_MS") {
            None => Duration::from_millis(100),
            Some(v) => Duration::from_millis(
                v.trim().parse().map_err(|_| format!("PSP_SIM_WEBHOOK_DELAY_MS: `{v}` is not a whole number"))?,
            ),
        };
        let status_amounts = match get("PSP_SIM_STATUS_AMOUNTS") {
            None => BTreeMap::new(),
            Some(v) => parse_status_amounts(&v).map_err(|e| format!("PSP_SIM_STATUS_AMOUNTS: {e}"))?,
        };
        Ok(Self {
            port: config.psp_sim_port,
            webhook_url: config.psp_sim_webhook_url.clone(),
            secret,
            fail_amounts: amounts("PSP_SIM_FAIL_AMOUNTS", &config.psp_sim_fail_amounts)?,
            refuse_amounts: amounts("PSP_SIM_FAIL_STATUS", &refuse_list)?,
            status_amounts,
            first_delay,
        })
    }
}

/// Decimal amounts; equality is by value (`25` is `25.00`).
pub fn amounts(key: &str, list: &[String]) -> Result<Vec<Decimal>, String> {
    list.iter()
        .map(|a| Decimal::from_str(a.trim()).map_err(|_| format!("{key}: `{a}` is not a decimal amount")))
        .collect()
}

/// `12.00=409,13=401`: an amount and the HTTP status it is answered with
/// (400 to 599).
pub fn parse_status_amounts(text: &str) -> Result<BTreeMap<Decimal, u16>, String> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (amount, status) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not amount=status"))?;
        let amount = Decimal::from_str(amount.trim()).map_err(|_| format!("`{amount}` is not a decimal amount"))?;
        let status: u16 = status
            .trim()
            .parse()
            .ok()
            .filter(|s| (400..=599).contains(s))
            .ok_or_else(|| format!("`{status}` is not an HTTP error status (400 to 599)"))?;
        map.insert(amount, status);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_amounts_read_as_decimal_and_status() {
        let map = parse_status_amounts("12.00=409, 13=401,14.5=503").expect("valid");
        assert_eq!(map.get(&Decimal::from(12)), Some(&409));
        assert_eq!(map.get(&Decimal::from_str("13.00").expect("decimal")), Some(&401));
        assert_eq!(map.len(), 3);
        for bad in ["12", "x=409", "12=200", "12=abc", "12=600"] {
            assert!(parse_status_amounts(bad).is_err(), "{bad}");
        }
    }
}
