//! `GET /assets/{name}`: the scripts and style sheets of the two pages
//! (`/ops`, `/docs`), from the binary, public. They are files of their own
//! so that the pages' `Content-Security-Policy` can forbid inline script
//! and style: an injected `<script>` or `onclick=` never runs.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shared::{ErrorCode, Problem};

use crate::error::problem_response;
use crate::state::AppState;

/// The pages' policy: everything from the api's own origin only; no
/// inline script or style, no `eval`, no plugin, no framing, no form
/// posted elsewhere. `data:` images only for what a style sheet may embed.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `(name, content type, body)` of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../assets/console.js")),
    ("console.css", "text/css; charset=utf-8", include_str!("../../assets/console.css")),
    ("docs.js", "text/javascript; charset=utf-8", include_str!("../../assets/docs.js")),
    ("docs.css", "text/css; charset=utf-8", include_str!("../../assets/docs.css")),
];

pub fn router() -> Router<AppState> {
    Router::new().route("/assets/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => ([(header::CONTENT_TYPE, *content_type)], *body).into_response(),
        None => problem_response(&Problem::new(ErrorCode::NotFound, "no such asset")),
    }
}

/// One of the pages, with its policy.
pub fn page(html: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pages_hold_no_inline_script_style_or_handler() {
        for (page, html) in
            [("ops", include_str!("../../assets/ops.html")), ("docs", include_str!("../../assets/docs.html"))]
        {
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("<style"), "{page}: an inline <style>");
            assert!(!lower.contains(" style="), "{page}: a style attribute");
            for (at, _) in lower.match_indices("<script") {
                let tag = &lower[at..at + lower[at..].find('>').unwrap_or(0)];
                assert!(tag.contains(" src=\"/assets/"), "{page}: an inline script: {tag}");
            }
            // No `onclick=`, `onload=`…: any attribute starting with `on`.
            let handler = lower.split(|c: char| c.is_whitespace()).any(|word| {
                word.starts_with("on")
                    && word.split_once('=').is_some_and(|(name, _)| name.chars().all(|c| c.is_ascii_alphabetic()))
            });
            assert!(!handler, "{page}: an on… attribute");
        }
    }
}
