//! Path ids: a malformed id is the same 404 as an unknown one.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use shared::ErrorCode;

use crate::error::ApiError;

pub struct IdPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(IdPath(v)),
            Err(_) => Err(ApiError::problem(ErrorCode::NotFound, "no such resource")),
        }
    }
}
