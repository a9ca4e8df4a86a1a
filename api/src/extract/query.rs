//! Query strings as a map, with typed accessors that report bad values.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use shared::ErrorCode;
use shared::page::PageRequest;

use crate::error::ApiError;

pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::field(ErrorCode::ValidationError, "query", e.to_string()))?;
        // Postgres cannot compare with U+0000: refused here, never a 500.
        if let Some(name) = map.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')).map(|(k, _)| k) {
            return Err(ApiError::field(
                ErrorCode::ValidationError,
                &name.replace('\0', "\\u0000"),
                "must not contain U+0000",
            ));
        }
        Ok(QueryMap(map))
    }
}

impl QueryMap {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest::parse(self.get("limit"), self.get("cursor"))?)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn id<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::field(ErrorCode::ValidationError, name, "must be an id (UUID)")),
        }
    }
}
