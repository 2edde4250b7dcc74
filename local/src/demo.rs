//! The demo page at `GET /` of the collector: a big area to click on, with the collector's own
//! snippet recording the clicks as page `demo-page`, and a link to the viewer.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page id the demo page reports.
pub const DEMO_PAGE_ID: &str = "demo-page";

const DEMO_HTML: &str = include_str!("demo.html");

/// `GET /` and `GET /demo`, for merging into the collector's router.
pub fn router(viewer_url: &str) -> Router {
    let viewer = format!(
        "{}/?page={DEMO_PAGE_ID}&live=1",
        viewer_url.trim_end_matches('/')
    );
    let html = DEMO_HTML
        .replace("{{VIEWER_URL}}", &escape_html(&viewer))
        .replace("{{PAGE_ID}}", DEMO_PAGE_ID);
    let page = move || {
        let html = html.clone();
        async move { demo(html) }
    };
    Router::new()
        .route("/", get(page.clone()))
        .route("/demo", get(page))
}

fn demo(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_snippet_and_links_to_the_viewer() {
        let html = DEMO_HTML
            .replace(
                "{{VIEWER_URL}}",
                &escape_html("http://127.0.0.1:1/?page=demo-page&live=1"),
            )
            .replace("{{PAGE_ID}}", DEMO_PAGE_ID);
        assert!(html.contains(r#"src="/v1/snippet.js""#));
        assert!(html.contains(r#"data-page-id="demo-page""#));
        assert!(html.contains("http://127.0.0.1:1/?page=demo-page&amp;live=1"));
        assert!(!html.contains("{{"));
    }
}
