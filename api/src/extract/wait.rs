//! `Prefer: wait=N` (N ≤ 30): hold the answer until the job ends.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

pub struct PreferWait(pub Option<Duration>);

impl<S: Send + Sync> FromRequestParts<S> for PreferWait {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let secs = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|pref| pref.trim().strip_prefix("wait="))
            .filter_map(|n| n.trim().parse::<f64>().ok())
            .find(|n| n.is_finite() && *n > 0.0);
        Ok(PreferWait(secs.map(|s| Duration::from_secs_f64(s.min(30.0)))))
    }
}
