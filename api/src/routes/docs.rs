//! `GET /openapi.json` (the document, see `crate::openapi`) and `GET
//! /docs`, a reference page rendered from it in the browser. Public; every
//! byte is in the binary (no CDN, nothing fetched but `/openapi.json` and
//! the page's own script and style sheet under `/assets/`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const DOCS_HTML: &str = include_str!("../../assets/docs.html");

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json)).route("/docs", get(docs))
}

async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::json())
}

async fn docs() -> impl IntoResponse {
    crate::routes::assets::page(DOCS_HTML)
}
