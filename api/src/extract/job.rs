//! `JobRequest`: everything a job route needs, checked in the order every
//! job route answers in: the principal (401), the path id (404), the
//! `Idempotency-Key` (400), `Prefer: wait`, the JSON body's syntax (422,
//! 415), the role (403), then the body's fields, every error at once in
//! one 422. A route is then a few lines: what only it knows, and
//! `r.job.submit(…)`.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::Response;
use serde::Serialize;
use shared::config::Config;
use shared::jobs::JobKind;
use shared::principal::{Principal, Role};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Fields, IdempotencyKey, JsonFields, PreferWait};
use crate::state::AppState;

/// A job request's body, read from its JSON fields.
pub trait JsonBody: Sized {
    /// Who may send it; empty for any role (the rule checks the object).
    const ROLES: &'static [Role] = &[];
    /// Whether the route reads a body at all (a route without one ignores
    /// whatever is sent).
    const READS: bool = true;

    /// Reads every field (`Fields::finish` included, so that every field
    /// error comes in one 422).
    fn read(f: Fields, config: &Config) -> ApiResult<Self>;
}

/// No body.
impl JsonBody for () {
    const READS: bool = false;

    fn read(_: Fields, _: &Config) -> ApiResult<Self> {
        Ok(())
    }
}

/// The fields unread, for a route that checks something first.
impl JsonBody for Fields {
    fn read(f: Fields, _: &Config) -> ApiResult<Self> {
        Ok(f)
    }
}

/// A body only an admin may send.
pub struct AdminOnly<B>(pub B);

impl<B: JsonBody> JsonBody for AdminOnly<B> {
    const ROLES: &'static [Role] = &[Role::Admin];
    const READS: bool = B::READS;

    fn read(f: Fields, config: &Config) -> ApiResult<Self> {
        B::read(f, config).map(AdminOnly)
    }
}

/// An optional note (escrow transitions).
pub struct NoteIn {
    pub note: Option<String>,
}

impl JsonBody for NoteIn {
    fn read(mut f: Fields, _: &Config) -> ApiResult<Self> {
        let note = f.opt_text("note", 1000);
        f.finish()?;
        Ok(NoteIn { note })
    }
}

impl<B: Into<NoteIn>> From<AdminOnly<B>> for NoteIn {
    fn from(b: AdminOnly<B>) -> Self {
        b.0.into()
    }
}

/// A route without a path id.
pub struct NoPath;

impl FromRequestParts<AppState> for NoPath {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(NoPath)
    }
}

/// Who submits, under which key, and how long they wait.
pub struct Submission {
    pub who: Principal,
    pub key: String,
    pub wait: Option<Duration>,
}

impl Submission {
    /// The job this principal's earlier request under this key created, if
    /// any: a route whose payload depends on state the first request has
    /// since changed rebuilds that payload from it, so a replay answers its
    /// first receipt (and another request under the key still gets `409`).
    pub async fn previous(&self, s: &AppState) -> ApiResult<Option<shared::jobs::record::JobRow>> {
        let mut conn = s.pool.acquire().await?;
        Ok(shared::jobs::record::by_key(&mut conn, &self.who, &self.key).await?)
    }

    /// Writes the job row, pushes it, answers its receipt (`202`, or `200`
    /// when it ended within the wait).
    pub async fn submit(self, s: &AppState, kind: JobKind, payload: &impl Serialize) -> ApiResult<Response> {
        crate::submit::submit(s, &self.who, kind, payload, Some(self.key), self.wait).await
    }
}

pub struct JobRequest<B, P = NoPath> {
    pub path: P,
    pub body: B,
    pub job: Submission,
}

impl<B, P> FromRequest<AppState> for JobRequest<B, P>
where
    B: JsonBody + Send,
    P: FromRequestParts<AppState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Auth(who) = Auth::from_request_parts(&mut parts, state).await?;
        let path = P::from_request_parts(&mut parts, state).await?;
        let IdempotencyKey(key) = IdempotencyKey::from_request_parts(&mut parts, state).await?;
        let Ok(PreferWait(wait)) = PreferWait::from_request_parts(&mut parts, state).await;
        let fields = if B::READS {
            JsonFields::from_request(Request::from_parts(parts, body), state).await?.0
        } else {
            Fields::parse(&[])?
        };
        if !B::ROLES.is_empty() {
            who.require(B::ROLES)?;
        }
        let body = B::read(fields, &state.config)?;
        Ok(JobRequest { path, body, job: Submission { who, key, wait } })
    }
}
