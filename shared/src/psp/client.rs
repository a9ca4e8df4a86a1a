//! The PSP payout call: a trait the payout runner depends on (so tests can
//! swap in a fake) and its HTTP implementation. The payment id is the PSP's
//! idempotency key, which is what makes retrying a timed-out call safe: the
//! PSP answers a repeat with the payout it already made.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What we ask the PSP to pay. Amounts travel as decimal strings, never floats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutRequest {
    /// Our payment id, echoed back in the PSP's webhooks.
    pub payment_id: String,
    /// The `Idempotency-Key`: the payment id, suffixed with the re-drive
    /// number after the PSP failed a payment (a new payout for the PSP, where
    /// the bare id would only replay the failure).
    #[serde(skip)]
    pub idempotency_key: String,
    pub amount: String,
    pub currency: String,
    pub payee_ref: String,
    /// `milestone`, `usage`, `refund`… as the payment records it.
    pub kind: String,
}

/// The PSP's acknowledgement. Settlement comes later, by webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutResponse {
    pub psp_ref: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PspError {
    /// We could not get an answer that decides (connect error, timeout,
    /// `408`, `409` "a request with this key is in flight", `429`, `5xx`,
    /// an unreadable 2xx): the outcome is unknown, so the call may be made
    /// again with the same idempotency key.
    #[error("PSP transport error: {0}")]
    Transport(String),
    /// `401` or `403`: our credentials are wrong (a rotated key). Nothing
    /// was decided about the payout; it waits, reserved, for the
    /// credentials to be fixed.
    #[error("PSP refused our credentials ({status}): {message}")]
    Auth { status: u16, message: String },
    /// The PSP answered and said no (any other 4xx): final, retrying gives
    /// the same no.
    #[error("PSP refused the payout: {code}: {message}")]
    Refused { code: String, message: String },
}

impl PspError {
    /// Worth asking again within the same call (the same key, a moment later).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PspError::Transport(_))
    }
}

/// Object safe so the runner can hold an `Arc<dyn PspClient>`.
pub trait PspClient: Send + Sync {
    fn payout<'a>(&'a self, req: &'a PayoutRequest) -> BoxFuture<'a, Result<PayoutResponse, PspError>>;

    /// The payout the PSP holds under `idempotency_key` (`None`: it never
    /// got one), asked before a payment is driven again.
    fn payout_status<'a>(&'a self, idempotency_key: &'a str) -> BoxFuture<'a, Result<Option<PspPayout>, PspError>>;
}

/// Tries per call, and the pause before each retry.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];

/// Payouts over HTTP: `POST {base_url}/payouts` with a JSON body.
#[derive(Clone)]
pub struct HttpPspClient {
    http: reqwest::Client,
    payouts_url: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpPspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPspClient")
            .field("payouts_url", &self.payouts_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpPspClient {
    /// `timeout` bounds each attempt (connect plus answer), so one call takes
    /// at most about `3 × timeout + 0.6 s`.
    pub fn new(base_url: impl Into<String>, api_key: Option<String>, timeout: Duration) -> Self {
        let base_url = base_url.into();
        // Without TLS the builder has nothing that can fail; the per-request
        // timeout below still applies if we ever fall back to the default.
        let http = reqwest::Client::builder().connect_timeout(timeout).build().unwrap_or_default();
        Self {
            http,
            payouts_url: format!("{}/payouts", base_url.trim_end_matches('/')),
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout,
        }
    }

    async fn send_payout(&self, req: &PayoutRequest) -> Result<PayoutResponse, PspError> {
        let mut last = PspError::Transport("not attempted".into());
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            match self.attempt(req).await {
                Err(err @ PspError::Transport(_)) => {
                    tracing::warn!(payment_id = %req.payment_id, attempt = attempt + 1, error = %err, "PSP payout attempt failed");
                    last = err;
                }
                other => return other,
            }
        }
        Err(last)
    }

    async fn attempt(&self, req: &PayoutRequest) -> Result<PayoutResponse, PspError> {
        let mut call = self
            .http
            .post(&self.payouts_url)
            .timeout(self.timeout)
            .header(
                "Idempotency-Key",
                if req.idempotency_key.is_empty() { &req.payment_id } else { &req.idempotency_key },
            )
            .json(req);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let resp = call.send().await.map_err(|e| PspError::Transport(describe(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| PspError::Transport(describe(&e)))?;
        classify(status.as_u16(), &body)
    }
}

/// A payout as the PSP holds it (`GET /payouts`), for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PspPayout {
    pub seq: u64,
    pub payment_id: String,
    /// The key it was asked under (one per drive of a payment).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub psp_ref: Option<String>,
    pub amount: String,
    pub currency: String,
    /// `accepted` or `refused`.
    pub status: String,
    /// What the PSP reported of an accepted payout: `settled` or `failed`.
    pub outcome: Option<String>,
}

/// A funding as the PSP holds it (`GET /fundings`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PspFunding {
    pub seq: u64,
    pub id: String,
    pub escrow_id: String,
    pub amount: String,
    pub currency: String,
    /// The `funding.succeeded` event that announced it.
    pub event_id: String,
}

#[derive(Deserialize)]
struct PageIn<T> {
    items: Vec<T>,
    next_since: Option<u64>,
}

/// Records per page when reading the PSP's log.
const PAGE: usize = 500;

impl HttpPspClient {
    /// Every payout the PSP holds, read page by page (`?since=`), each page
    /// with the payout call's timeout and retries.
    pub async fn payouts(&self) -> Result<Vec<PspPayout>, PspError> {
        self.all_pages("payouts").await
    }

    /// Every funding the PSP holds.
    pub async fn fundings(&self) -> Result<Vec<PspFunding>, PspError> {
        self.all_pages("fundings").await
    }

    async fn all_pages<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<Vec<T>, PspError> {
        let base = self.payouts_url.trim_end_matches("/payouts");
        let mut items = Vec::new();
        let mut since = 0u64;
        loop {
            let url = format!("{base}/{what}?since={since}&limit={PAGE}");
            let page: PageIn<T> = self.get_json(&url).await?;
            items.extend(page.items);
            match page.next_since {
                Some(next) if next > since => since = next,
                _ => return Ok(items),
            }
        }
    }

    /// `GET {base}/payouts/{idempotency_key}`: the payout under that key,
    /// `None` on a 404, with the payout call's timeout and retries.
    async fn payout_by_key(&self, idempotency_key: &str) -> Result<Option<PspPayout>, PspError> {
        let mut url = reqwest::Url::parse(&self.payouts_url)
            .map_err(|e| PspError::Transport(format!("PSP_BASE_URL cannot be read as a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| PspError::Transport("PSP_BASE_URL cannot take a path".into()))?
            .push(idempotency_key);
        let mut last = PspError::Transport("not attempted".into());
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            let mut call = self.http.get(url.clone()).timeout(self.timeout);
            if let Some(key) = &self.api_key {
                call = call.bearer_auth(key);
            }
            let answer = match call.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(body) => classify_lookup(status, &body),
                        Err(e) => Err(PspError::Transport(describe(&e))),
                    }
                }
                Err(e) => Err(PspError::Transport(describe(&e))),
            };
            match answer {
                Err(err @ PspError::Transport(_)) => {
                    tracing::warn!(idempotency_key, attempt = attempt + 1, error = %err, "PSP payout lookup failed");
                    last = err;
                }
                other => return other,
            }
        }
        Err(last)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, PspError> {
        let mut last = PspError::Transport("not attempted".into());
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            let mut call = self.http.get(url).timeout(self.timeout);
            if let Some(key) = &self.api_key {
                call = call.bearer_auth(key);
            }
            let answer = match call.send().await {
                Ok(resp) if resp.status().is_success() => resp.json::<T>().await.map_err(|e| describe(&e)),
                Ok(resp) => Err(format!("PSP answered {}", resp.status())),
                Err(e) => Err(describe(&e)),
            };
            match answer {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::warn!(url, attempt = attempt + 1, error = %e, "PSP read failed");
                    last = PspError::Transport(e);
                }
            }
        }
        Err(last)
    }
}

impl PspClient for HttpPspClient {
    fn payout<'a>(&'a self, req: &'a PayoutRequest) -> BoxFuture<'a, Result<PayoutResponse, PspError>> {
        self.send_payout(req).boxed()
    }

    fn payout_status<'a>(&'a self, idempotency_key: &'a str) -> BoxFuture<'a, Result<Option<PspPayout>, PspError>> {
        self.payout_by_key(idempotency_key).boxed()
    }
}

/// Turns one HTTP answer to a payout into an outcome, as a PSP means it:
/// only a 2xx we can read is an acceptance and only a 4xx that decides is a
/// refusal; everything that says "not now" or "not you" leaves the payout
/// undecided.
fn classify(status: u16, body: &[u8]) -> Result<PayoutResponse, PspError> {
    match status {
        // A 2xx we cannot read still means the PSP may have paid: treat it as
        // unknown and ask again; the idempotency key returns the same payout.
        200..=299 => serde_json::from_slice::<PayoutResponse>(body)
            .map_err(|e| PspError::Transport(format!("unreadable {status} answer: {e}"))),
        401 | 403 => Err(PspError::Auth { status, message: snippet(body) }),
        // 408 and 429 say "not now"; 409 says "a request with this key is
        // in flight": none of them is "no".
        408 | 409 | 429 => Err(PspError::Transport(format!("PSP answered {status}: {}", snippet(body)))),
        400..=499 => {
            #[derive(Deserialize)]
            struct RefusalIn {
                code: Option<String>,
                message: Option<String>,
            }
            let refusal = serde_json::from_slice::<RefusalIn>(body).ok();
            let code = refusal.as_ref().and_then(|r| r.code.clone()).unwrap_or_else(|| format!("PSP_HTTP_{status}"));
            let message = refusal.and_then(|r| r.message).unwrap_or_else(|| snippet(body));
            Err(PspError::Refused { code, message })
        }
        _ => Err(PspError::Transport(format!("PSP answered {status}: {}", snippet(body)))),
    }
}

/// The answer to `GET /payouts/{key}`: the payout, or `None` (404: the PSP
/// never got one under this key).
fn classify_lookup(status: u16, body: &[u8]) -> Result<Option<PspPayout>, PspError> {
    match status {
        200..=299 => serde_json::from_slice::<PspPayout>(body)
            .map(Some)
            .map_err(|e| PspError::Transport(format!("unreadable {status} answer to a payout lookup: {e}"))),
        404 => Ok(None),
        401 | 403 => Err(PspError::Auth { status, message: snippet(body) }),
        _ => Err(PspError::Transport(format!("PSP answered {status} to a payout lookup: {}", snippet(body)))),
    }
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// reqwest's Display hides the cause ("error sending request"); keep the chain.
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-request-per-connection HTTP server that plays a script of
    /// answers and keeps each request's head and body.
    struct FakePsp {
        base_url: String,
        seen: Arc<Mutex<Vec<String>>>,
    }

    async fn fake_psp(script: Vec<(u16, &'static str)>) -> FakePsp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in script {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                log.lock().expect("lock").push(String::from_utf8_lossy(&buf).to_string());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(answer.as_bytes()).await.expect("write");
                sock.shutdown().await.ok();
            }
        });
        FakePsp { base_url, seen }
    }

    fn request() -> PayoutRequest {
        PayoutRequest {
            payment_id: "3f1c0a4e-0000-4000-8000-000000000001".into(),
            idempotency_key: String::new(),
            amount: "25.00".into(),
            currency: "USD".into(),
            payee_ref: "payee-1".into(),
            kind: "milestone".into(),
        }
    }

    const ACCEPTED: &str = r#"{"psp_ref":"sim_1","status":"accepted"}"#;

    #[tokio::test]
    async fn a_payout_posts_json_with_the_idempotency_key_and_bearer_key() {
        let psp = fake_psp(vec![(200, ACCEPTED)]).await;
        let client = HttpPspClient::new(format!("{}/", psp.base_url), Some("psp-key-1".into()), Duration::from_secs(5));
        let resp = client.payout(&request()).await.expect("accepted");
        assert_eq!(resp, PayoutResponse { psp_ref: "sim_1".into(), status: "accepted".into() });
        let seen = psp.seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1);
        let raw = seen[0].to_ascii_lowercase();
        assert!(raw.starts_with("post /payouts http/1.1"), "{raw}");
        assert!(raw.contains("idempotency-key: 3f1c0a4e-0000-4000-8000-000000000001"));
        assert!(raw.contains("authorization: bearer psp-key-1"));
        assert!(raw.contains(r#""amount":"25.00""#));
    }

    #[tokio::test]
    async fn without_an_api_key_no_authorization_header_is_sent() {
        let psp = fake_psp(vec![(200, ACCEPTED)]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        client.payout(&request()).await.expect("accepted");
        let seen = psp.seen.lock().expect("lock").clone();
        assert!(!seen[0].to_ascii_lowercase().contains("authorization:"));
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_the_same_key_until_an_answer() {
        let psp = fake_psp(vec![(503, "{}"), (500, "oops"), (200, ACCEPTED)]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        let resp = client.payout(&request()).await.expect("third try succeeds");
        assert_eq!(resp.psp_ref, "sim_1");
        let seen = psp.seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| r.contains("3f1c0a4e-0000-4000-8000-000000000001")));
    }

    #[tokio::test]
    async fn three_server_errors_give_a_retryable_transport_error() {
        let psp = fake_psp(vec![(502, ""), (502, ""), (502, ""), (200, ACCEPTED)]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        let err = client.payout(&request()).await.expect_err("gives up");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(psp.seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn a_refusal_is_final_and_keeps_the_psp_code() {
        let psp = fake_psp(vec![(422, r#"{"code":"PSP_REFUSED","message":"amount refused"}"#), (200, ACCEPTED)]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        let err = client.payout(&request()).await.expect_err("refused");
        assert_eq!(err, PspError::Refused { code: "PSP_REFUSED".into(), message: "amount refused".into() });
        assert!(!err.is_retryable());
        assert_eq!(psp.seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = HttpPspClient::new(format!("http://{addr}"), None, Duration::from_secs(2));
        let err = client.payout(&request()).await.expect_err("nobody listens");
        assert!(matches!(err, PspError::Transport(_)), "{err}");
    }

    #[tokio::test]
    async fn the_psp_log_is_read_page_by_page_with_retries() {
        let first = r#"{"items":[{"seq":1,"id":"f1","escrow_id":"e","amount":"10.00","currency":"USD","event_id":"ev1"}],"next_since":1}"#;
        let second = r#"{"items":[{"seq":2,"id":"f2","escrow_id":"e","amount":"5","currency":"XOF","event_id":"ev2"}],"next_since":null}"#;
        let psp = fake_psp(vec![(200, first), (503, ""), (200, second)]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        let fundings = client.fundings().await.expect("both pages");
        assert_eq!(fundings.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["f1", "f2"]);
        let seen = psp.seen.lock().expect("lock").clone();
        assert!(seen[0].starts_with("GET /fundings?since=0&limit=500"), "{}", seen[0]);
        assert!(seen[2].starts_with("GET /fundings?since=1&limit=500"), "{}", seen[2]);
    }

    #[tokio::test]
    async fn a_payout_lookup_reads_the_payout_or_none_and_retries_what_is_undecided() {
        let held = r#"{"seq":3,"payment_id":"p","idempotency_key":"p-r1","psp_ref":"sim_9","amount":"5.00","currency":"USD","status":"accepted","outcome":"settled"}"#;
        let psp = fake_psp(vec![(404, r#"{"code":"NOT_FOUND"}"#), (503, ""), (200, held), (401, "")]).await;
        let client = HttpPspClient::new(psp.base_url.clone(), None, Duration::from_secs(5));
        assert_eq!(client.payout_status("p").await, Ok(None), "404: never asked under this key");
        let found = client.payout_status("p-r1").await.expect("after one 503").expect("held");
        assert_eq!((found.psp_ref.as_deref(), found.outcome.as_deref()), (Some("sim_9"), Some("settled")));
        assert!(matches!(client.payout_status("p").await, Err(PspError::Auth { status: 401, .. })));
        let seen = psp.seen.lock().expect("lock").clone();
        assert!(seen[0].starts_with("GET /payouts/p HTTP/1.1"), "{}", seen[0]);
        assert!(seen[2].starts_with("GET /payouts/p-r1 HTTP/1.1"), "{}", seen[2]);
    }

    #[test]
    fn answers_are_classified_by_status() {
        assert!(classify(200, ACCEPTED.as_bytes()).is_ok());
        assert!(matches!(classify(200, b"not json"), Err(PspError::Transport(_))));
        assert!(matches!(classify(429, b""), Err(PspError::Transport(_))));
        assert!(matches!(classify(408, b""), Err(PspError::Transport(_))));
        assert!(matches!(classify(409, b"{}"), Err(PspError::Transport(_))), "a request with this key is in flight");
        assert!(matches!(classify(504, b""), Err(PspError::Transport(_))));
        assert!(matches!(classify(503, b""), Err(PspError::Transport(_))));
        assert!(matches!(classify(401, b"bad key"), Err(PspError::Auth { status: 401, .. })));
        assert!(matches!(classify(403, b""), Err(PspError::Auth { status: 403, .. })));
        assert!(matches!(classify(302, b""), Err(PspError::Transport(_))));
        assert_eq!(
            classify(400, b"bad request"),
            Err(PspError::Refused { code: "PSP_HTTP_400".into(), message: "bad request".into() })
        );
    }
}
