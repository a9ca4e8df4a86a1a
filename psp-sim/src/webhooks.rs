//! Signed webhooks, sent the way a real PSP sends them: later, retried
//! until acknowledged, re-signed on every try, the same bytes each time.

use std::time::Duration;

use axum::http::header;
use serde_json::{Value, json};
use shared::psp::signature::{self, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use crate::ledger::{SharedSim, Sim};

/// Webhook retry schedule: 200 ms doubling to a 5 s cap, 30 tries in all
/// (about two minutes), enough to ride out an API restart in a test.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_TRIES: u32 = 30;
/// One webhook POST may not hang the retry loop.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The event as sent; serialized once so every retry carries the same bytes.
pub fn event_body(event_id: &str, kind: &str, data: &Value) -> Vec<u8> {
    json!({
        "id": event_id,
        "type": kind,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    })
    .to_string()
    .into_bytes()
}

fn backoff(tries_done: u32) -> Duration {
    let factor = 1u32 << tries_done.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// One signed POST of an event; returns the HTTP status, `None` without an
/// answer. The timestamp is fresh each time so a long retry never falls
/// outside the receiver's skew tolerance.
pub async fn send_once(sim: &Sim, event_id: &str, body: &[u8]) -> Option<u16> {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let sig = signature::sign(&sim.settings.secret, &timestamp, body);
    let result = sim
        .http
        .post(&sim.settings.webhook_url)
        .timeout(SEND_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, event_id)
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, sig)
        .body(body.to_vec())
        .send()
        .await;
    let status = match result {
        Ok(resp) => Some(resp.status().as_u16()),
        Err(err) => {
            tracing::warn!(event_id, error = %err, url = %sim.settings.webhook_url, "webhook not delivered");
            None
        }
    };
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if let Some(record) = sim.ledger().webhooks.iter_mut().find(|w| w.event_id == event_id) {
        record.attempts += 1;
        record.last_status = status;
        record.delivered |= delivered;
    }
    if let Some(s) = status.filter(|_| !delivered) {
        tracing::warn!(event_id, status = s, "webhook refused by the receiver");
    }
    status
}

/// Sends until a 2xx or `MAX_TRIES`, keeping the event id so the receiver
/// can drop duplicates; `tries_done` counts tries already made.
pub async fn keep_delivering(sim: SharedSim, event_id: String, body: Vec<u8>, mut tries_done: u32) {
    while tries_done < MAX_TRIES {
        if tries_done > 0 {
            tokio::time::sleep(backoff(tries_done)).await;
        }
        let status = send_once(&sim, &event_id, &body).await;
        tries_done += 1;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            tracing::info!(event_id, tries = tries_done, "webhook delivered");
            return;
        }
    }
    tracing::error!(event_id, tries = tries_done, "webhook given up");
}

/// Records an event and sends it once now; a failed first try is retried in
/// the background when `retry`. Answers the first try's status.
pub async fn send_now(sim: &SharedSim, kind: &str, data: &Value, event_id: String, retry: bool) -> Option<u16> {
    let payment_id = data.get("payment_id").and_then(Value::as_str).map(str::to_string);
    let body = event_body(&event_id, kind, data);
    sim.ledger().webhook(&event_id, kind, payment_id, &body);
    let status = send_once(sim, &event_id, &body).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if !delivered && retry {
        tokio::spawn(keep_delivering(sim.clone(), event_id, body, 1));
    }
    status
}

/// Records an event and sends it after `delay`, retried until acknowledged.
pub fn send_later(sim: &SharedSim, kind: &str, data: &Value, delay: Duration) -> String {
    let event_id = uuid::Uuid::new_v4().to_string();
    let payment_id = data.get("payment_id").and_then(Value::as_str).map(str::to_string);
    let body = event_body(&event_id, kind, data);
    sim.ledger().webhook(&event_id, kind, payment_id, &body);
    let (sim, id) = (sim.clone(), event_id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        keep_delivering(sim, id, body, 0).await;
    });
    event_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200ms_to_a_5s_cap() {
        let waits: Vec<u128> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(29), MAX_BACKOFF);
    }
}
