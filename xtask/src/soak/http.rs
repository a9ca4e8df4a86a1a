//! The soak's HTTP client, as a real client behaves: a request with an
//! `Idempotency-Key` is sent again with the same key after a connection
//! error or a 503, until it gets an answer; every answer is counted by
//! class, every receipt's job id kept, and every 5xx judged: a 503
//! `UNAVAILABLE` while Postgres or Redis was down is excused, anything else
//! is a finding.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// How long one request may take (a `Prefer: wait` included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a keyed request is retried after connection errors and 503s.
const RETRY_FOR: Duration = Duration::from_secs(90);
/// A 503 this long after an outage ended is still excused (pools reconnect).
const OUTAGE_GRACE: Duration = Duration::from_secs(10);

/// Counts shared by the actors, the fault injector and the report.
#[derive(Default)]
pub struct Tally {
    pub sent: u64,
    pub ok_2xx: u64,
    pub client_4xx: u64,
    pub excused_503: u64,
    pub other_5xx: u64,
    pub connection_errors: u64,
    pub retried: u64,
    pub accepted: HashSet<String>,
    pub findings: Vec<String>,
    /// Payments sent a late `payment.failed` after they settled.
    pub late_failures: HashSet<String>,
    /// Operations run, by name.
    pub ops: std::collections::BTreeMap<&'static str, u64>,
}

/// The state every task of a soak shares.
#[derive(Default)]
pub struct Shared {
    tally: Mutex<Tally>,
    outages: Mutex<Vec<(Instant, Option<Instant>)>>,
    pub inflight: AtomicUsize,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Postgres or Redis goes down now; the index for [`Shared::outage_end`].
    pub fn outage_begin(&self) -> usize {
        let mut outages = self.outages.lock().unwrap_or_else(PoisonError::into_inner);
        outages.push((Instant::now(), None));
        outages.len() - 1
    }

    pub fn outage_end(&self, index: usize) {
        let mut outages = self.outages.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(window) = outages.get_mut(index) {
            window.1 = Some(Instant::now());
        }
    }

    /// Whether `[from, to]` overlaps an outage (or its grace period).
    fn during_outage(&self, from: Instant, to: Instant) -> bool {
        let outages = self.outages.lock().unwrap_or_else(PoisonError::into_inner);
        outages.iter().any(|(begin, end)| {
            let end = end.map(|e| e + OUTAGE_GRACE);
            *begin <= to && end.is_none_or(|e| from <= e)
        })
    }

    pub fn finding(&self, text: String) {
        eprintln!("soak: finding: {text}");
        self.tally().findings.push(text);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// An answer: status and JSON body (`Null` when it was not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn s(&self, pointer: &str) -> String {
        match self.body.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    pub api: String,
    pub psp: String,
    /// The secret psp-sim signs with, to replay its events.
    pub webhook_secret: String,
    pub shared: Arc<Shared>,
}

/// One request to make: built afresh for every try (a multipart body
/// cannot be cloned).
pub type Build<'a> = &'a (dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync);

impl Http {
    pub fn new(api: String, psp: String, webhook_secret: String, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Self { client, api, psp, webhook_secret, shared })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends once, or (with `retry`) until an answer that is not a
    /// connection error or a 503, for at most [`RETRY_FOR`]. `None` when no
    /// answer came. `what` names the request in findings.
    pub async fn call(&self, what: &str, retry: bool, build: Build<'_>) -> Option<Answer> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(200);
        loop {
            let answer = self.once(what, build).await;
            let again = match &answer {
                None => true,
                Some(a) => a.status == 503,
            };
            if !(retry && again) || Instant::now() >= deadline {
                return answer;
            }
            self.shared.tally().retried += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(3));
        }
    }

    async fn once(&self, what: &str, build: Build<'_>) -> Option<Answer> {
        let started = Instant::now();
        self.shared.inflight.fetch_add(1, Ordering::SeqCst);
        let result = build(&self.client).send().await;
        let result = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                response.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        self.shared.inflight.fetch_sub(1, Ordering::SeqCst);
        let ended = Instant::now();
        let mut tally = self.shared.tally();
        tally.sent += 1;
        let (status, text) = match result {
            Ok(answer) => answer,
            Err(_) => {
                tally.connection_errors += 1;
                return None;
            }
        };
        let body: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        let answer = Answer { status, body };
        match status {
            200..=299 => {
                tally.ok_2xx += 1;
                let job_id = answer.s("/job_id");
                if !job_id.is_empty() {
                    tally.accepted.insert(job_id);
                }
            }
            500..=599 => {
                drop(tally);
                let excused =
                    status == 503 && answer.s("/code") == "UNAVAILABLE" && self.shared.during_outage(started, ended);
                let mut tally = self.shared.tally();
                if excused {
                    tally.excused_503 += 1;
                } else {
                    tally.other_5xx += 1;
                    drop(tally);
                    let shown: String = text.chars().take(300).collect();
                    self.shared.finding(format!("{what}: HTTP {status} {shown}"));
                }
            }
            _ => tally.client_4xx += 1,
        }
        Some(answer)
    }
}
