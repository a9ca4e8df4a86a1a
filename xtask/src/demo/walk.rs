//! A walk through the scenes: each step sent, its job followed to its end,
//! its answer checked and shown, the values it saves kept for later steps.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::Setup;
use super::check::{Answer, check, describe, is_receipt, is_terminal, summary, text_at};
use super::step::{Step, Target, Upload};

/// How long the demo follows a job that `Prefer: wait` did not see finish.
pub(super) const JOB_DEADLINE: Duration = Duration::from_secs(60);
/// How long a polling step may wait for its fields, and how often it looks.
pub(super) const POLL_DEADLINE: Duration = Duration::from_secs(40);
pub(super) const POLL_EVERY: Duration = Duration::from_millis(500);

/// The state of a walk through the scenes: saved values, step count.
pub(super) struct Walk {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) psp_base: String,
    pub(super) run: String,
    pub(super) vars: HashMap<String, String>,
    pub(super) count: usize,
    /// The `api` binary and its environment, for host steps.
    pub(super) api_bin: std::path::PathBuf,
    pub(super) host_env: Vec<(String, String)>,
}

impl Walk {
    pub(super) fn new(setup: &Setup, api_bin: &std::path::Path) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(45))
            .build()
            .context("building an HTTP client")?;
        let in_30_days =
            (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let vars =
            HashMap::from([("admin.key".to_string(), setup.admin_key.clone()), ("in_30_days".to_string(), in_30_days)]);
        Ok(Self {
            http,
            base: setup.api_base.clone(),
            psp_base: format!("http://127.0.0.1:{}", setup.psp_port),
            run: setup.queue_prefix.clone(),
            vars,
            count: 0,
            api_bin: api_bin.to_path_buf(),
            host_env: setup.api_env(),
        })
    }

    pub(super) async fn step(&mut self, step: &Step) -> Result<()> {
        self.count += 1;
        let n = self.count;
        if step.target == Target::Host {
            return self.host(step).await.with_context(|| format!("step {n} ({}): api {}", step.title, step.path));
        }
        let path = self.fill(step.path)?;
        let fields =
            step.fields.iter().map(|(pointer, want)| Ok((*pointer, self.fill(want)?))).collect::<Result<Vec<_>>>()?;
        let key = match step.target {
            Target::Api => Some(self.var(step.key)?.to_string()),
            Target::PspSim | Target::Host => None,
        };
        let context = || format!("step {n} ({}): {} {path}", step.title, step.method);
        let (answer, photo) = if step.poll {
            println!(
                "{n:>2}. {:<52} {} {path} (polling, up to {} s)",
                step.title,
                step.method,
                POLL_DEADLINE.as_secs()
            );
            (self.poll(step, &path, key.as_deref(), &fields).await.with_context(context)?, None)
        } else {
            self.send_once(step, &path, key.as_deref()).await.with_context(context)?
        };
        self.show(step, &path, &answer, photo);
        check(step, &answer, &fields).map_err(|expected| {
            let within = match step.poll {
                true => format!(" within {} s", POLL_DEADLINE.as_secs()),
                false => String::new(),
            };
            anyhow!("step {n} ({}): expected {expected}{within}, got {}", step.title, describe(&answer))
        })?;
        for (name, pointer) in &step.save {
            let value = text_at(&answer.body, pointer)
                .with_context(|| format!("step {n} ({}): the answer has no {pointer} to save as {name}", step.title))?;
            self.vars.insert(name.to_string(), value);
        }
        Ok(())
    }

    /// Sends a step once (a job followed to its end); the answer, and what
    /// the photo of an upload holds.
    async fn send_once(&self, step: &Step, path: &str, key: Option<&str>) -> Result<(Answer, Option<String>)> {
        let mut request = self.request(step, path, key)?;
        if step.job {
            let idempotency = format!("{}-step-{}", self.run, self.count);
            request = request.header("Idempotency-Key", idempotency).header("Prefer", "wait=10");
        }
        if let Some(body) = &step.body {
            request = request.json(&self.fill_json(body)?);
        }
        let mut photo = None;
        if let Some(upload) = &step.upload {
            let (form, about) = self.form(upload)?;
            request = request.multipart(form);
            photo = Some(about);
        }
        let mut answer = self.send(request).await?;
        if step.job && is_receipt(&answer.body) {
            answer = self.follow(answer, key).await.context("following the job")?;
        }
        Ok((answer, photo))
    }

    /// One line per step, then the receipt or the body worth seeing.
    fn show(&self, step: &Step, path: &str, answer: &Answer, photo: Option<String>) {
        let result = summary(answer, step, &self.saved_preview(step, answer));
        match step.poll {
            true => println!("    -> {result}"),
            false => println!("{:>2}. {:<52} {} {path} -> {result}", self.count, step.title, step.method),
        }
        if let Some(photo) = photo {
            println!("    photo: {photo}");
        }
        if step.job && is_receipt(&answer.body) {
            println!("    receipt {}", answer.body);
        } else if step.method == Method::GET || answer.status >= 400 {
            println!("    {}", answer.body);
        }
    }

    /// The request of a step, without its body: to the API with the key,
    /// or to the simulator.
    pub(super) fn request(&self, step: &Step, path: &str, key: Option<&str>) -> Result<reqwest::RequestBuilder> {
        let base = match step.target {
            Target::Api => &self.base,
            Target::PspSim => &self.psp_base,
            Target::Host => bail!("a host step is no HTTP request"),
        };
        let request = self.http.request(step.method.clone(), format!("{base}{path}"));
        Ok(match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        })
    }

    /// Runs the `api` binary on the host, as the operator would (its
    /// arguments in the step's `path`), and keeps the user id and key it
    /// prints ("created admin key … for user NAME (<id>)", then the key).
    async fn host(&mut self, step: &Step) -> Result<()> {
        let args: Vec<&str> = step.path.split_whitespace().collect();
        let username = match args.as_slice() {
            ["keys", "create", "--user", name, "--role", "admin"] => *name,
            _ => bail!("a host step makes an admin: keys create --user NAME --role admin"),
        };
        let made = crate::procs::host_admin(&self.api_bin, &self.host_env, username).await?;
        let (id, key, said) = (made.id, made.key, made.said);
        let body = serde_json::json!({"id": id, "key": key});
        println!("{:>2}. {:<52} on the host: api {} -> {said}", self.count, step.title, step.path);
        println!("    (needs the database's credentials: the API alone cannot make a second admin)");
        for (name, pointer) in &step.save {
            let value = text_at(&body, pointer).with_context(|| format!("nothing to save as {name}"))?;
            self.vars.insert(name.to_string(), value);
        }
        Ok(())
    }

    /// The multipart form of a proof upload, with a photo made now; and
    /// what the photo's EXIF says.
    pub(super) fn form(&self, upload: &Upload) -> Result<(reqwest::multipart::Form, String)> {
        let (file, about) = upload.photo.file(chrono::Utc::now());
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(format!("proof-{}.jpg", upload.photo.seed))
            .mime_str("image/jpeg")
            .context("the JPEG part")?;
        let form = reqwest::multipart::Form::new()
            .text("escrow_id", self.fill(upload.escrow)?)
            .text("milestone_idx", upload.milestone_idx.to_string())
            .text("source", upload.source)
            .part("file", part);
        Ok((form, about))
    }

    /// Repeats a GET until the step's expectation and fields hold or
    /// [`POLL_DEADLINE`] passes; prints what it sees each time it changes.
    /// The last answer either way.
    pub(super) async fn poll(
        &self,
        step: &Step,
        path: &str,
        key: Option<&str>,
        fields: &[(&str, String)],
    ) -> Result<Answer> {
        let start = Instant::now();
        let mut shown = String::new();
        let mut pointers: Vec<&str> = fields.iter().map(|(pointer, _)| *pointer).collect();
        pointers.extend(step.watch.iter().copied());
        loop {
            let answer = self.send(self.request(step, path, key)?).await?;
            let done = check(step, &answer, fields).is_ok();
            let seen = match answer.status {
                200 => pointers
                    .iter()
                    .map(|p| {
                        let value = text_at(&answer.body, p).unwrap_or_else(|| "-".into());
                        format!("{}={value}", p.trim_start_matches('/'))
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => describe(&answer),
            };
            if seen != shown {
                println!("    {:>5.1} s  {seen}", start.elapsed().as_secs_f64());
                shown = seen;
            }
            if done || start.elapsed() >= POLL_DEADLINE {
                return Ok(answer);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        let response = request.send().await.map_err(|e| anyhow!("{}", e.without_url()))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading the answer")?;
        let body = match text.trim() {
            "" => Value::Null,
            trimmed => serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(text.clone())),
        };
        Ok(Answer { status, body })
    }

    /// Follows a receipt with `GET /jobs/{id}` and `Prefer: wait=10` until
    /// the job ends or [`JOB_DEADLINE`] passes. Fields the first answer had
    /// beside the receipt's (a proof's `proof_id`) are kept.
    pub(super) async fn follow(&self, mut answer: Answer, key: Option<&str>) -> Result<Answer> {
        let deadline = Instant::now() + JOB_DEADLINE;
        let first = answer.body.clone();
        while !is_terminal(&answer.body) {
            if Instant::now() >= deadline {
                bail!(
                    "the job is still {} after {} s",
                    text_at(&answer.body, "/status").unwrap_or_default(),
                    JOB_DEADLINE.as_secs()
                );
            }
            let job_id = text_at(&answer.body, "/job_id").context("the receipt has no job_id")?;
            let mut request = self.http.get(format!("{}/jobs/{job_id}", self.base)).header("Prefer", "wait=10");
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            answer = self.send(request).await?;
            if !is_receipt(&answer.body) {
                bail!("GET /jobs/{job_id} answered {}", describe(&answer));
            }
        }
        if let (Some(first), Some(last)) = (first.as_object(), answer.body.as_object_mut()) {
            for (name, value) in first {
                last.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        Ok(answer)
    }

    pub(super) fn var(&self, name: &str) -> Result<&str> {
        self.vars.get(name).map(String::as_str).with_context(|| format!("no saved value named `{name}`"))
    }

    /// Replaces each `{name}` with the saved value.
    pub(super) fn fill(&self, template: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').with_context(|| format!("unclosed {{ in `{template}`"))?;
            out.push_str(self.var(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    pub(super) fn fill_json(&self, value: &Value) -> Result<Value> {
        Ok(match value {
            Value::String(s) => Value::String(self.fill(s)?),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect::<Result<_>>()?),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), self.fill_json(v)?))).collect::<Result<_>>()?)
            }
            other => other.clone(),
        })
    }

    /// `name=value` for each value the step saves; secrets shown by prefix.
    pub(super) fn saved_preview(&self, step: &Step, answer: &Answer) -> String {
        step.save
            .iter()
            .filter_map(|(name, pointer)| {
                let value = text_at(&answer.body, pointer)?;
                let shown = match name.ends_with(".key") {
                    true => format!("{}…", value.chars().take(8).collect::<String>()),
                    false => value,
                };
                Some(format!("{name}={shown}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn walk() -> Walk {
        Walk {
            http: reqwest::Client::new(),
            base: String::new(),
            psp_base: String::new(),
            run: "demo-test".into(),
            vars: HashMap::from([("alice.id".to_string(), "a-1".to_string())]),
            count: 0,
            api_bin: std::path::PathBuf::new(),
            host_env: Vec::new(),
        }
    }

    #[test]
    fn placeholders_are_filled_in_paths_and_bodies() -> Result<()> {
        let walk = walk();
        assert_eq!(walk.fill("/users/{alice.id}/x")?, "/users/a-1/x");
        let body = walk.fill_json(&json!({"sender_id": "{alice.id}", "n": 3, "list": ["{alice.id}"]}))?;
        assert_eq!(body, json!({"sender_id": "a-1", "n": 3, "list": ["a-1"]}));
        assert!(walk.fill("/users/{bob.id}").is_err());
        Ok(())
    }
}
