//! A small HTTP client for the tests: JSON in, status and JSON out.

use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// A field of the body as a string (`""` when absent).
    pub fn s(&self, field: &str) -> String {
        match self.body.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    /// The problem code of an error body, or of a failed receipt.
    pub fn code(&self) -> String {
        if let Some(c) = self.body.get("code").and_then(Value::as_str) {
            return c.to_string();
        }
        self.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("").to_string()
    }

    pub fn is_problem(&self) -> bool {
        self.content_type.starts_with("application/problem+json") && self.body.get("code").is_some()
    }
}

impl Client {
    pub fn new(base: &str, key: Option<&str>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self { base: base.to_string(), key: key.map(str::to_string), http }
    }

    /// A client whose connections come from `local` (any 127.x.y.z reaches
    /// the api on 127.0.0.1): another client address, as the api sees it.
    pub fn from_address(base: &str, key: Option<&str>, local: std::net::IpAddr) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .local_address(local)
            .build()
            .unwrap_or_default();
        Self { base: base.to_string(), key: key.map(str::to_string), http }
    }

    pub fn with_key(&self, key: &str) -> Self {
        Self { base: self.base.clone(), key: Some(key.to_string()), http: self.http.clone() }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let res = r.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = res.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, content_type, headers, body, text })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
        self.send(self.req(reqwest::Method::POST, path).header("content-type", content_type).body(body)).await
    }

    /// A job request with its idempotency key, waiting up to `wait` seconds.
    pub async fn job(&self, path: &str, key: &str, body: Value, wait: u32) -> anyhow::Result<Reply> {
        let mut r = self.req(reqwest::Method::POST, path).header("Idempotency-Key", key).json(&body);
        if wait > 0 {
            r = r.header("Prefer", format!("wait={wait}"));
        }
        self.send(r).await
    }

    /// A job request whose JSON body is sent as written (numbers keep the
    /// exact spelling given), with its idempotency key.
    pub async fn job_raw(&self, path: &str, key: &str, body: &str, wait: u32) -> anyhow::Result<Reply> {
        let mut r = self
            .req(reqwest::Method::POST, path)
            .header("Idempotency-Key", key)
            .header("content-type", "application/json")
            .body(body.to_string());
        if wait > 0 {
            r = r.header("Prefer", format!("wait={wait}"));
        }
        self.send(r).await
    }

    /// `POST /proofs` as multipart/form-data with the file itself.
    pub async fn upload_proof(
        &self,
        key: &str,
        escrow_id: &str,
        idx: i32,
        source: &str,
        file: Vec<u8>,
        wait: u32,
    ) -> anyhow::Result<Reply> {
        let part = reqwest::multipart::Part::bytes(file).file_name("proof.jpg").mime_str("image/jpeg")?;
        let form = reqwest::multipart::Form::new()
            .text("escrow_id", escrow_id.to_string())
            .text("milestone_idx", idx.to_string())
            .text("source", source.to_string())
            .part("file", part);
        let mut r = self.req(reqwest::Method::POST, "/proofs").header("Idempotency-Key", key).multipart(form);
        if wait > 0 {
            r = r.header("Prefer", format!("wait={wait}"));
        }
        self.send(r).await
    }

    /// Reads a receipt, waiting up to `wait` seconds for it to end.
    pub async fn receipt(&self, job_id: &str, wait: u32) -> anyhow::Result<Reply> {
        let mut r = self.req(reqwest::Method::GET, &format!("/jobs/{job_id}"));
        if wait > 0 {
            r = r.header("Prefer", format!("wait={wait}"));
        }
        self.send(r).await
    }

    /// Waits (up to `secs`) until a receipt is terminal; returns it.
    pub async fn finished(&self, job_id: &str, secs: u64) -> anyhow::Result<Reply> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.receipt(job_id, 10).await?;
            let st = r.s("status");
            if st == "succeeded" || st == "failed" || st == "dead" || tokio::time::Instant::now() >= deadline {
                return Ok(r);
            }
        }
    }
}
