//! Pagination: `?limit=` (default 50, max 500) and `?cursor=` (the last id
//! seen; ids are UUID v7 so they sort by creation), answered as
//! `{"items": [...], "next_cursor": ...}`.

use serde::Serialize;
use uuid::Uuid;

use crate::error::{ErrorCode, FieldError, Problem};

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    pub cursor: Option<Uuid>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, Problem> {
        let mut errors = Vec::new();
        let limit = match limit {
            None => 50,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=500).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new("limit", "must be an integer from 1 to 500"));
                    50
                }
            },
        };
        let cursor = match cursor {
            None | Some("") => None,
            Some(text) => match Uuid::parse_str(text) {
                Ok(id) => Some(id),
                Err(_) => {
                    errors.push(FieldError::new("cursor", "not a cursor from a previous page"));
                    None
                }
            },
        };
        if errors.is_empty() {
            Ok(Self { limit, cursor })
        } else {
            Err(Problem::fields(ErrorCode::ValidationError, errors))
        }
    }

    /// Rows are fetched with `limit + 1` to know whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }

    /// The cursor bound for `WHERE id < $cursor ORDER BY id DESC`.
    pub fn before(&self) -> Uuid {
        self.cursor.unwrap_or(Uuid::max())
    }
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` rows ordered newest first.
    pub fn from_rows(mut rows: Vec<T>, req: &PageRequest, id_of: impl Fn(&T) -> Uuid) -> Self {
        let more = rows.len() as i64 > req.limit;
        rows.truncate(req.limit as usize);
        let next_cursor = if more { rows.last().map(|r| id_of(r).to_string()) } else { None };
        Self { items: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}
