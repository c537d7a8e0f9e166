//! The web editor demo (`examples/web-editor`), embedded at build time by `build.rs` and
//! served at `GET /` (the page) and `GET /_demo/...` (its assets) when `demo.enabled`.
//!
//! Only plain GET and HEAD requests reach these routes: a WebSocket upgrade on any path,
//! `/_demo/x` included, is matched first and joins that room, so the demo takes no room name
//! away. The page picks its room from `?room=` (default `demo`).

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Reply;
use warp::Filter;

mod bundle {
    include!(concat!(env!("OUT_DIR"), "/demo_assets.rs"));
}

/// Path prefix of the assets (vite's `base`).
pub const ASSET_PREFIX: &str = "_demo";

/// The embedded file at `path` (relative to the bundle), if any.
pub fn asset(path: &str) -> Option<&'static [u8]> {
    bundle::ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

/// Whether a bundle was embedded (false when `assets/web-editor` was missing at build).
pub fn built() -> bool {
    asset("index.html").is_some()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(path: &str, bytes: &'static [u8]) -> warp::reply::Response {
    let mut resp = warp::reply::Response::new(bytes.into());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    // Vite names bundled files by content hash (assets/index-3f9a….js): cache them for
    // ever. The page itself must be revalidated, so a new build is picked up.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found(what: &str) -> warp::reply::Response {
    warp::reply::with_status(format!("not found: {what}\n"), StatusCode::NOT_FOUND).into_response()
}

/// `GET|HEAD /` and `GET|HEAD /_demo/<path>`; rejects (falls through to the 404) when
/// disabled.
pub fn routes(
    enabled: bool,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let get_or_head = warp::get().or(warp::head()).unify();
    let enabled_only = warp::any().and_then(move || async move {
        if enabled {
            Ok(())
        } else {
            Err(warp::reject::not_found())
        }
    });
    let index = get_or_head
        .and(enabled_only)
        .and(warp::path::end())
        .map(|()| match asset("index.html") {
            Some(bytes) => file("index.html", bytes),
            None => not_found(
                "the demo was not built into this binary (run `npm install && npm run build` in examples/web-editor, then rebuild)",
            ),
        });
    let assets = get_or_head
        .and(enabled_only)
        .and(warp::path(ASSET_PREFIX))
        .and(warp::path::tail())
        .map(|(), tail: warp::path::Tail| {
            let path = tail.as_str();
            match asset(path) {
                Some(bytes) => file(path, bytes),
                None => not_found(&format!("/{ASSET_PREFIX}/{path}")),
            }
        });
    index.or(assets).unify()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_page_and_hashed_assets_and_404s_the_rest() {
        assert!(
            built(),
            "assets/web-editor is committed; the bundle must be embedded"
        );
        let routes = routes(true);
        let page = warp::test::request().path("/").reply(&routes).await;
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["cache-control"], "no-cache");
        let html = String::from_utf8(page.body().to_vec()).unwrap();
        // Every asset the page names is served, with its type and a long cache life.
        let mut named = 0;
        for part in html.split('"').filter(|p| p.starts_with("/_demo/")) {
            let resp = warp::test::request().path(part).reply(&routes).await;
            assert_eq!(resp.status(), 200, "{part}");
            assert_eq!(
                resp.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(
                ct.starts_with("text/javascript") || ct.starts_with("text/css"),
                "{ct}"
            );
            named += 1;
        }
        assert!(
            named >= 2,
            "the page names its script and stylesheet: {html}"
        );

        let head = warp::test::request()
            .method("HEAD")
            .path("/")
            .reply(&routes)
            .await;
        assert_eq!(head.status(), 200);
        let missing = warp::test::request()
            .path("/_demo/assets/nope.js")
            .reply(&routes)
            .await;
        assert_eq!(missing.status(), 404);
        let traversal = warp::test::request()
            .path("/_demo/../Cargo.toml")
            .reply(&routes)
            .await;
        assert_eq!(traversal.status(), 404);
        let post = warp::test::request()
            .method("POST")
            .path("/")
            .filter(&routes)
            .await;
        assert!(post.is_err(), "POST / must fall through");
    }

    #[tokio::test]
    async fn disabled_serves_nothing() {
        let routes = routes(false);
        for path in ["/", "/_demo/index.html"] {
            let r = warp::test::request().path(path).filter(&routes).await;
            assert!(r.is_err(), "{path} served while disabled");
        }
    }
}
