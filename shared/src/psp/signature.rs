//! PSP webhook signatures: lower-case hex HMAC-SHA256 over
//! `<timestamp>.<raw body>`, checked against every configured secret so a
//! secret can be rotated without refusing events in flight, with a timestamp
//! tolerance that stops an old captured request from being replayed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ErrorCode;

/// Header carrying the hex signature.
pub const SIGNATURE_HEADER: &str = "X-PSP-Signature";
/// Header carrying the Unix time (seconds) the signature was made at.
pub const TIMESTAMP_HEADER: &str = "X-PSP-Timestamp";
/// Header the PSP may repeat its event id in. It is not signed: the id is
/// the signed body's `id`, and a header that differs is refused.
pub const EVENT_ID_HEADER: &str = "X-PSP-Event-Id";
/// Largest accepted distance, either way, between the signed timestamp and now.
pub const TOLERANCE_SECS: u64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn present(header: Option<&str>) -> Option<&str> {
    header.map(str::trim).filter(|v| !v.is_empty())
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC hashes a long key and pads a short one, so no key length is refused.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature a PSP sends for `body` signed at `timestamp` with `secret`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// Checks a webhook's signature headers against the raw body.
///
/// The checks run cheapest first and each refusal has its own code, so the
/// PSP's operators can tell a clock problem from a wrong secret. An empty
/// header counts as missing: some proxies keep a header but drop its value.
pub fn verify(
    secrets: &[String],
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), ErrorCode> {
    let (Some(signature), Some(timestamp)) = (present(signature), present(timestamp)) else {
        return Err(ErrorCode::WebhookSignatureMissing);
    };
    let ts: i64 = timestamp.parse().map_err(|_| ErrorCode::WebhookTimestampInvalid)?;
    // `abs_diff` cannot overflow, whatever integer the sender chose.
    if now_unix.abs_diff(ts) > TOLERANCE_SECS {
        return Err(ErrorCode::WebhookTimestampSkew);
    }
    let Ok(expected) = hex::decode(signature) else {
        return Err(ErrorCode::WebhookSignatureInvalid);
    };
    // Every secret is tried (no early exit) so the timing does not tell an
    // attacker which of the secrets is the live one; `verify_slice` compares
    // in constant time.
    let matched = secrets
        .iter()
        .fold(false, |found, secret| mac(secret, timestamp, body).verify_slice(&expected).is_ok() | found);
    if matched { Ok(()) } else { Err(ErrorCode::WebhookSignatureInvalid) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    const NOW: i64 = 1_790_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment.settled"}"#;

    fn secrets() -> Vec<String> {
        vec!["old-secret-0123456789".to_string(), "new-secret-0123456789".to_string()]
    }

    fn check(sig: Option<&str>, ts: Option<&str>, body: &[u8], now: i64) -> Result<(), ErrorCode> {
        verify(&secrets(), sig, ts, body, now)
    }

    #[test]
    fn signature_is_lower_case_hex_of_sha256() {
        let sig = sign("k", "1", b"x");
        assert_eq!(sig.len(), 64);
        assert!(sig.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn signature_matches_an_independently_computed_vector() {
        // Python: hmac.new(b"0123456789abcdef0123", b'1700000000.{"id":"evt_1"}', sha256).hexdigest()
        assert_eq!(
            sign("0123456789abcdef0123", "1700000000", br#"{"id":"evt_1"}"#),
            "22a9ee4d88959c88b66e3c97c702e866536bfeb8422ca20ded81d102f5d87d35"
        );
    }

    #[test]
    fn a_body_signed_with_any_configured_secret_is_accepted() {
        let ts = NOW.to_string();
        for secret in secrets() {
            let sig = sign(&secret, &ts, BODY);
            assert_eq!(check(Some(&sig), Some(&ts), BODY, NOW), Ok(()));
        }
    }

    #[test]
    fn upper_case_hex_is_accepted_because_it_is_the_same_bytes() {
        let ts = NOW.to_string();
        let sig = sign(&secrets()[0], &ts, BODY).to_uppercase();
        assert_eq!(check(Some(&sig), Some(&ts), BODY, NOW), Ok(()));
    }

    #[test]
    fn a_missing_or_empty_header_is_signature_missing() {
        let ts = NOW.to_string();
        let sig = sign(&secrets()[0], &ts, BODY);
        assert_eq!(check(None, Some(&ts), BODY, NOW), Err(ErrorCode::WebhookSignatureMissing));
        assert_eq!(check(Some(&sig), None, BODY, NOW), Err(ErrorCode::WebhookSignatureMissing));
        assert_eq!(check(None, None, BODY, NOW), Err(ErrorCode::WebhookSignatureMissing));
        assert_eq!(check(Some(""), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookSignatureMissing));
        assert_eq!(check(Some(&sig), Some("  "), BODY, NOW), Err(ErrorCode::WebhookSignatureMissing));
    }

    #[test]
    fn a_timestamp_that_is_not_an_integer_is_invalid() {
        let sig = sign(&secrets()[0], "abc", BODY);
        for ts in ["abc", "1790000000.5", "1e9", "99999999999999999999999", "0x10"] {
            assert_eq!(check(Some(&sig), Some(ts), BODY, NOW), Err(ErrorCode::WebhookTimestampInvalid), "{ts}");
        }
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_away_either_way_is_skew() {
        for offset in [-301, 301, -100_000, 100_000] {
            let ts = (NOW + offset).to_string();
            let sig = sign(&secrets()[0], &ts, BODY);
            assert_eq!(check(Some(&sig), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookTimestampSkew), "{offset}");
        }
        for extreme in [i64::MIN, i64::MAX] {
            let ts = extreme.to_string();
            assert_eq!(check(Some("00"), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookTimestampSkew));
        }
    }

    #[test]
    fn a_timestamp_exactly_five_minutes_away_is_still_accepted() {
        for offset in [-300, 300] {
            let ts = (NOW + offset).to_string();
            let sig = sign(&secrets()[1], &ts, BODY);
            assert_eq!(check(Some(&sig), Some(&ts), BODY, NOW), Ok(()), "{offset}");
        }
    }

    #[test]
    fn an_unknown_secret_a_changed_body_or_a_changed_timestamp_is_invalid() {
        let ts = NOW.to_string();
        let foreign = sign("not-a-configured-secret", &ts, BODY);
        assert_eq!(check(Some(&foreign), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookSignatureInvalid));

        let sig = sign(&secrets()[0], &ts, BODY);
        let tampered = br#"{"id":"evt_1","type":"payment.failed"}"#;
        assert_eq!(check(Some(&sig), Some(&ts), tampered, NOW), Err(ErrorCode::WebhookSignatureInvalid));

        // The timestamp is signed too, so it cannot be refreshed to replay an old body.
        let later = (NOW + 1).to_string();
        assert_eq!(check(Some(&sig), Some(&later), BODY, NOW), Err(ErrorCode::WebhookSignatureInvalid));
    }

    #[test]
    fn bad_hex_or_a_truncated_signature_is_invalid() {
        let ts = NOW.to_string();
        let sig = sign(&secrets()[0], &ts, BODY);
        for bad in ["zz", "abc", &sig[..62], &format!("{sig}00"), "sha256=00"] {
            assert_eq!(check(Some(bad), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookSignatureInvalid), "{bad}");
        }
    }

    #[test]
    fn no_configured_secret_accepts_nothing() {
        let ts = NOW.to_string();
        let sig = sign("whatever-secret-123", &ts, BODY);
        assert_eq!(verify(&[], Some(&sig), Some(&ts), BODY, NOW), Err(ErrorCode::WebhookSignatureInvalid));
    }

    fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; rng.random_range(0..=max)];
        rng.fill_bytes(&mut bytes);
        bytes
    }

    #[test]
    fn random_headers_and_bodies_never_panic_and_only_real_signatures_pass() {
        let mut rng = StdRng::seed_from_u64(0x6b6f_6261_7465_6c61);
        let secrets = secrets();
        for i in 0..5_000 {
            let body = random_bytes(&mut rng, 256);
            // Mix pure noise with near-valid inputs so every branch is reached.
            let ts = match i % 3 {
                0 => String::from_utf8_lossy(&random_bytes(&mut rng, 24)).into_owned(),
                _ => (NOW + rng.random_range(-400..=400)).to_string(),
            };
            let sig = match i % 4 {
                0 => String::from_utf8_lossy(&random_bytes(&mut rng, 80)).into_owned(),
                1 => hex::encode(random_bytes(&mut rng, 40)),
                _ => sign(&secrets[i % 2], &ts, &body),
            };
            let sig_header = (i % 17 != 0).then_some(sig.as_str());
            let ts_header = (i % 19 != 0).then_some(ts.as_str());
            let result = verify(&secrets, sig_header, ts_header, &body, NOW);
            if result.is_ok() {
                // Only a real signature with a timestamp in tolerance may pass.
                let ts_ok = ts.trim().parse::<i64>().is_ok_and(|t| NOW.abs_diff(t) <= TOLERANCE_SECS);
                let sig_ok = secrets.iter().any(|s| sign(s, ts.trim(), &body).eq_ignore_ascii_case(sig.trim()));
                assert!(ts_ok && sig_ok, "iteration {i} passed without a valid signature");
            }
            // Flipping any body byte must break a signature that passed.
            if result.is_ok() && !body.is_empty() {
                let mut flipped = body.clone();
                let at = rng.random_range(0..flipped.len());
                flipped[at] ^= 1 << rng.random_range(0..8);
                assert_eq!(
                    verify(&secrets, sig_header, ts_header, &flipped, NOW),
                    Err(ErrorCode::WebhookSignatureInvalid)
                );
            }
        }
    }
}
