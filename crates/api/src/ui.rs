//! The live web dashboard: `GET /` and `GET /ui/{file}`, embedded in the
//! binary (no build step, nothing to install beside `tandem`).
//!
//! The files live under `crates/api/ui/`: `index.html`, `app.js` (the
//! shared client: token, API calls, the event stream, the status refresh),
//! `style.css`, and one module per view under `views/`. `GET /` answers
//! `index.html` with a `<script type="module">` tag for every embedded file
//! of `views/`, in name order, in place of its `<!-- views -->` marker: adding
//! a view is adding a file. The assets need no token; the views call the API
//! with the operator's token.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

use crate::error::ApiError;

/// Every file under `crates/api/ui/`, embedded at build time (also in debug
/// builds: the binary never reads the source tree).
#[derive(Embed)]
#[folder = "ui/"]
struct Assets;

/// Where `index.html` gets the view modules' script tags.
const VIEWS_MARKER: &str = "<!-- views -->";

/// The embedded view modules (`views/*.js`), in name order.
pub(crate) fn views() -> Vec<String> {
    let mut views: Vec<String> = Assets::iter()
        .filter(|p| p.starts_with("views/") && p.ends_with(".js"))
        .map(|p| p.into_owned())
        .collect();
    views.sort();
    views
}

/// `index.html` with one module script tag per view.
fn index_html() -> Result<String, ApiError> {
    let file = Assets::get("index.html")
        .ok_or_else(|| ApiError::internal("the dashboard's index.html is not embedded"))?;
    let text = std::str::from_utf8(&file.data)
        .map_err(|e| ApiError::internal(format!("the dashboard's index.html is not UTF-8: {e}")))?;
    let tags: String = views()
        .iter()
        .map(|v| format!("<script type=\"module\" src=\"/ui/{v}\"></script>\n"))
        .collect();
    Ok(text.replacen(VIEWS_MARKER, &tags, 1))
}

/// `GET /`: the dashboard.
pub(crate) async fn index() -> Result<Response, ApiError> {
    let html = index_html()?;
    Ok(with_headers(html.into_bytes(), "text/html; charset=utf-8"))
}

/// `GET /ui/{*file}`: one embedded asset.
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let found = Assets::get(&file)
        .ok_or_else(|| ApiError::not_found(format!("no dashboard file named {file:?}")))?;
    let mime = mime_of(&file);
    Ok(with_headers(found.data.into_owned(), mime))
}

/// The browser client that fails over between sites by itself
/// (`tandem_client::browser::SITE_JS`; its own file, so that the API does
/// not depend on the client crate).
const SITE_JS: &str = include_str!("../../client/assets/tandem-site.js");

/// `GET /v1/client.js`: the browser client a web page embeds (no token
/// needed, like the dashboard's files).
pub(crate) async fn site_js() -> Response {
    with_headers(
        SITE_JS.as_bytes().to_vec(),
        "text/javascript; charset=utf-8",
    )
}

fn mime_of(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn with_headers(body: Vec<u8>, mime: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    // The binary is the version: a new one must not run stale scripts.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_every_view_file() {
        let html = index_html().expect("index");
        assert!(!html.contains(VIEWS_MARKER));
        let views = views();
        assert!(views.len() >= 4, "{views:?}");
        for v in &views {
            assert!(html.contains(&format!("src=\"/ui/{v}\"")), "{v} missing");
        }
    }

    #[tokio::test]
    async fn files_come_with_their_type_and_unknown_ones_are_404() {
        let r = asset(Path("app.js".to_owned())).await.expect("app.js");
        // A module script with another type is refused by browsers.
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let r = asset(Path("style.css".to_owned())).await.expect("css");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
        let e = asset(Path("views/nope.js".to_owned()))
            .await
            .expect_err("no such file");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.doc.error.contains("views/nope.js"), "{}", e.doc.error);
    }

    #[test]
    fn shared_assets_are_embedded() {
        for f in ["app.js", "style.css", "index.html"] {
            assert!(Assets::get(f).is_some(), "{f}");
        }
    }
}
