//! `ProofUpload`: a `multipart/form-data` proof upload read at the edge.
//! The file is streamed into a staging file in the store (hashed on the
//! way, bounded by `PROOF_MAX_BYTES`), the small fields are checked, and
//! every field error comes in one 422. Any refusal drops the staging file,
//! which deletes it: a refused upload leaves nothing on disk. A form with
//! two `file` parts is refused (422 naming `file`): which one would be the
//! proof is anybody's guess, and a gateway may scan the other.

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use shared::domain::escrow::proofs::NewProof;
use shared::ids::EscrowId;
use shared::principal::Role;
use shared::storage::StagedFile;
use shared::{ErrorCode, FieldError, Problem};

use crate::error::{ApiError, ApiResult};
use crate::extract::fields::got;
use crate::extract::{Auth, IdempotencyKey, PreferWait, Submission};
use crate::state::AppState;

/// The upload, checked: who sends it, the proof it names, its staged file.
pub struct ProofUpload {
    pub job: Submission,
    pub new: NewProof,
    pub staged: StagedFile,
}

impl FromRequest<AppState> for ProofUpload {
    type Rejection = ApiError;

    /// The principal, the key, `Prefer: wait`, the role (the escrow's
    /// provider is checked by the rule), then the body.
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Auth(who) = Auth::from_request_parts(&mut parts, state).await?;
        let IdempotencyKey(key) = IdempotencyKey::from_request_parts(&mut parts, state).await?;
        let Ok(PreferWait(wait)) = PreferWait::from_request_parts(&mut parts, state).await;
        let multipart = Multipart::from_request(Request::from_parts(parts, body), state).await;
        who.require(&[Role::Admin, Role::Beneficiary])?;
        let mut form = Form::default();
        form.read(multipart.map_err(unsupported)?, state).await?;
        let (new, staged) = form.finish().await?;
        Ok(ProofUpload { job: Submission { who, key, wait }, new, staged })
    }
}

/// The form as it is read, field by field.
#[derive(Default)]
struct Form {
    file: Option<StagedFile>,
    /// `file` parts seen: more than one is refused.
    file_parts: usize,
    content_type: Option<String>,
    escrow_id: Option<EscrowId>,
    milestone_idx: Option<i32>,
    source: Option<String>,
    errors: Vec<FieldError>,
}

impl Form {
    async fn read(&mut self, mut multipart: Multipart, state: &AppState) -> ApiResult<()> {
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            match name.as_str() {
                "file" => {
                    self.file_parts += 1;
                    // Nothing of a second file is staged: the form is refused.
                    if self.file_parts == 1 {
                        self.stage(field, state).await?;
                    }
                }
                "escrow_id" | "milestone_idx" | "source" => {
                    let text = field.text().await.map_err(multipart_error)?.trim().to_string();
                    self.small(&name, text);
                }
                other => self.errors.push(FieldError::new(other.replace('\0', "\\u0000"), "is not a known field")),
            }
        }
        Ok(())
    }

    /// Streams the file into a staging file, at most `PROOF_MAX_BYTES`.
    async fn stage(&mut self, mut field: Field<'_>, state: &AppState) -> ApiResult<()> {
        self.content_type = field.content_type().filter(|c| !c.chars().any(char::is_control)).map(str::to_string);
        let mut staged = state.store.stage().await?;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            staged.write(&chunk).await?;
            if staged.len() > state.config.proof_max_bytes as u64 {
                return Err(ApiError::problem(ErrorCode::PayloadTooLarge, "the file is larger than PROOF_MAX_BYTES"));
            }
        }
        self.file = Some(staged);
        Ok(())
    }

    fn small(&mut self, name: &str, text: String) {
        match name {
            "escrow_id" => match text.parse::<EscrowId>() {
                Ok(id) => self.escrow_id = Some(id),
                Err(_) => self.errors.push(FieldError::new("escrow_id", "must be an id (UUID)")),
            },
            "milestone_idx" => match text.parse::<i32>() {
                Ok(i) if i >= 1 => self.milestone_idx = Some(i),
                _ => self.errors.push(FieldError::new("milestone_idx", "must be a whole number from 1")),
            },
            _ if text.is_empty() || text.len() > 64 => {
                self.errors.push(FieldError::new("source", "must be 1 to 64 characters"))
            }
            // U+0000 cannot be stored; no control character is a source.
            _ if text.chars().any(char::is_control) => {
                self.errors.push(FieldError::new("source", "must not contain control characters"))
            }
            _ => self.source = Some(text),
        }
    }

    /// Every missing field, then the hash and the content-addressed key.
    async fn finish(mut self) -> ApiResult<(NewProof, StagedFile)> {
        if self.file_parts > 1 {
            self.errors.push(FieldError::new("file", format!("is sent {} times; send one file", self.file_parts)));
        }
        for (present, name) in [
            (self.file.is_some(), "file"),
            (self.escrow_id.is_some(), "escrow_id"),
            (self.milestone_idx.is_some(), "milestone_idx"),
            (self.source.is_some(), "source"),
        ] {
            if !present && !self.errors.iter().any(|e| e.field == name) {
                self.errors.push(FieldError::new(name, "is required"));
            }
        }
        if self.file.as_ref().is_some_and(|f| f.is_empty()) {
            self.errors.push(FieldError::new("file", "is empty"));
        }
        if !self.errors.is_empty() {
            return Err(Problem::fields(ErrorCode::ValidationError, self.errors).into());
        }
        let mut staged = got(self.file)?;
        let sha256 = staged.finish().await?;
        // Content-addressed: the same bytes always have the same key.
        let storage_key = format!("proofs/{}/{sha256}", &sha256[..2]);
        let new = NewProof {
            escrow_id: got(self.escrow_id)?,
            milestone_idx: got(self.milestone_idx)?,
            source: got(self.source)?,
            sha256,
            storage_key,
            content_type: self.content_type,
            size_bytes: i64::try_from(staged.len()).unwrap_or(i64::MAX),
        };
        Ok((new, staged))
    }
}

fn unsupported(e: MultipartRejection) -> ApiError {
    ApiError::problem(ErrorCode::UnsupportedMediaType, format!("send multipart/form-data: {e}"))
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::problem(ErrorCode::PayloadTooLarge, "the file is larger than the limit")
    } else {
        Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new("body", format!("not a valid multipart/form-data body: {}", e.body_text()))],
        )
        .into()
    }
}
