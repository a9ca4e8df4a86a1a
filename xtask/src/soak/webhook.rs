//! Sending a captured PSP event to the API as the PSP would: the body as
//! it was, signed now (HMAC-SHA256 of `timestamp.body`, lower-case hex).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::http::{Answer, Http};

/// Signs `body` with `secret` at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// POST /psp/webhook with `body`, retried after connection errors (the
/// PSP retries too).
pub async fn send(http: &Http, body: &str) -> Option<Answer> {
    let url = format!("{}/psp/webhook", http.api);
    let secret = http.webhook_secret.clone();
    http.call("POST /psp/webhook (replay)", true, &|c| {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        c.post(&url)
            .header("content-type", "application/json")
            .header("X-PSP-Timestamp", &timestamp)
            .header("X-PSP-Signature", sign(&secret, &timestamp, body))
            .body(body.to_string())
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_hex_hmac_sha256_of_timestamp_dot_body() {
        // `printf '1.{}' | openssl dgst -sha256 -hmac key`
        assert_eq!(super::sign("key", "1", "{}"), "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224");
    }
}
