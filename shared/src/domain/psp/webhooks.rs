//! PSP webhooks as they arrive: the API reads the signed body's envelope,
//! stores the raw event under its unique id and enqueues a `psp_webhook`
//! job in one short statement; the job applies it (`events`).
//!
//! Only the body is signed, so everything the job acts on comes from the
//! raw body: the event id is the body's `id` (an `X-PSP-Event-Id` header
//! must repeat it), and amounts are read from their literal text.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Problem};
use crate::principal::{Principal, Role};
use crate::text::holds_nul;

/// The longest event id we store.
pub const MAX_EVENT_ID_LEN: usize = 255;

/// What the API reads from a verified body before storing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: String,
    pub event_type: String,
    /// The body as `jsonb`, or `None` when Postgres cannot hold it (U+0000
    /// inside): the raw text is stored all the same and the job refuses it.
    pub payload: Option<serde_json::Value>,
}

/// Reads a signed body: a JSON object with a string `id` (1 to 255
/// characters, no control character). The id is the body's, because only
/// the body is signed; an `X-PSP-Event-Id` header, when sent (an empty one
/// counts as absent, as for the signature headers), must be the same id.
/// So identical signed bytes replayed under any header are the same event.
pub fn envelope(body: &[u8], header_id: Option<&str>) -> std::result::Result<Envelope, Problem> {
    let invalid = |why: &str| Problem::new(ErrorCode::WebhookPayloadInvalid, why.to_string());
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON"))?;
    let Some(object) = payload.as_object() else {
        return Err(invalid("the body is not a JSON object"));
    };
    let Some(serde_json::Value::String(id)) = object.get("id") else {
        return Err(invalid("the body has no string `id`"));
    };
    if id.is_empty() || id.chars().count() > MAX_EVENT_ID_LEN || id.chars().any(char::is_control) {
        return Err(invalid("the body's `id` must be 1 to 255 characters without control characters"));
    }
    if let Some(header) = header_id.filter(|h| !h.is_empty())
        && header != id
    {
        return Err(invalid("the X-PSP-Event-Id header differs from the signed body's `id`"));
    }
    let event_type = match object.get("type") {
        Some(serde_json::Value::String(t)) if !t.contains('\0') => t.clone(),
        _ => "unknown".to_string(),
    };
    let event_id = id.clone();
    let payload = (!holds_nul(&payload)).then_some(payload);
    Ok(Envelope { event_id, event_type, payload })
}

/// The `psp_webhook` job payload, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PspWebhookV1 {
    pub event_id: String,
}

/// The principal PSP callbacks act as.
pub fn psp_principal() -> Principal {
    let mut p = Principal::system();
    p.role = Role::Psp;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn body(id: &serde_json::Value) -> Vec<u8> {
        json!({"id": id, "type": "funding.succeeded", "data": {"amount": "10.00"}}).to_string().into_bytes()
    }

    #[test]
    fn the_event_id_is_the_signed_bodys_and_a_differing_header_is_refused() {
        let b = body(&json!("evt-1"));
        assert_eq!(envelope(&b, None).map(|e| e.event_id), Ok("evt-1".to_string()));
        assert_eq!(envelope(&b, Some("evt-1")).map(|e| e.event_id), Ok("evt-1".to_string()));
        assert_eq!(envelope(&b, Some("")).map(|e| e.event_id), Ok("evt-1".to_string()));
        for header in ["evt-2", "EVT-1", "evt-1 ", "x"] {
            assert_eq!(envelope(&b, Some(header)).map_err(|p| p.code), Err(ErrorCode::WebhookPayloadInvalid));
        }
        for id in [json!(""), json!(7), json!(null), json!("a\u{0}"), json!("a\nb"), json!("x".repeat(256))] {
            assert_eq!(envelope(&body(&id), None).map_err(|p| p.code), Err(ErrorCode::WebhookPayloadInvalid), "{id}");
        }
        for bad in [&b"not json"[..], b"[1]", b"{}", br#"{"type": "x"}"#] {
            assert!(envelope(bad, Some("evt-1")).is_err());
        }
    }

    #[test]
    fn a_body_postgres_cannot_hold_keeps_its_id_and_loses_only_its_jsonb() {
        let raw = br#"{"id": "evt-9", "type": "funding.succeeded", "data": {"note": "a\u0000b"}}"#;
        let e = envelope(raw, None).expect("acknowledged");
        assert_eq!((e.event_id.as_str(), e.event_type.as_str(), e.payload), ("evt-9", "funding.succeeded", None));
        let raw = br#"{"id": "evt-9", "type": "a\u0000"}"#;
        assert_eq!(envelope(raw, None).map(|e| e.event_type), Ok("unknown".to_string()));
    }

    /// For random ids and headers: identical bytes name one event whatever
    /// the header says (the same id, or a refusal), never another one.
    #[test]
    fn property_a_replay_under_any_header_is_the_same_event_or_refused() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let alphabet: Vec<char> = "abcXYZ019-_:.é€😀 \t\n\u{0}\u{7f}\"\\/".chars().collect();
        let text = |rng: &mut StdRng, max: usize| -> String {
            let len = rng.random_range(0..max);
            (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
        };
        for _ in 0..5_000 {
            let id =
                if rng.random_range(0..20) == 0 { "x".repeat(rng.random_range(250..260)) } else { text(&mut rng, 12) };
            let b = body(&json!(id));
            let valid = !id.is_empty() && id.chars().count() <= MAX_EVENT_ID_LEN && !id.chars().any(char::is_control);
            let plain = envelope(&b, None);
            assert_eq!(plain.is_ok(), valid, "{id:?}");
            for _ in 0..4 {
                let header = match rng.random_range(0..3) {
                    0 => id.clone(),
                    1 => String::new(),
                    _ => text(&mut rng, 12),
                };
                match envelope(&b, Some(&header)) {
                    Ok(e) => {
                        assert_eq!(e.event_id, id, "the id is always the body's");
                        assert!(header.is_empty() || header == id);
                        assert!(e.payload.is_some());
                    }
                    Err(p) => {
                        assert_eq!(p.code, ErrorCode::WebhookPayloadInvalid);
                        assert!(!valid || (!header.is_empty() && header != id), "{id:?} / {header:?}");
                    }
                }
            }
        }
    }
}
