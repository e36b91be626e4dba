//! The operators' dashboard (SPEC §14): one web page, served by
//! [`AdminService`](crate::AdminService) at `GET /dashboard`, that runs the business through
//! the admin API.
//!
//! Every file is embedded in the binary, so the page works offline and behind any path
//! prefix (its links are relative). The page holds no secret: the operator types the admin
//! key into its login form, the script keeps it in `sessionStorage` and sends it as
//! `X-Admin-Key` to the API next to the page. Each answer carries headers that let it run
//! only its own scripts, never inside a frame, and never from a cache.
//!
//! ```
//! use http_body_util::BodyExt;
//! use paygate_mcp::{AdminService, Gate, PayGateConfig};
//! use std::sync::Arc;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
//! let admin = AdminService::new(gate, "admin-key-at-least-32-characters-long").unwrap();
//! let page = admin.oneshot(http::Request::get("/dashboard").body(String::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(page.status(), 200);
//! assert_eq!(page.headers()["x-frame-options"], "DENY");
//! let html = page.into_body().collect().await.unwrap().to_bytes();
//! assert!(std::str::from_utf8(&html).unwrap().contains(r#"name="adminKey""#));
//! # });
//! ```

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

/// Where the dashboard lives on the admin API.
pub const DASHBOARD_PATH: &str = "/dashboard";

/// Scripts, styles and images from the page's own origin only: no inline script, no `eval`,
/// no form that submits anywhere (the login form is read by the script; should the script
/// fail, the key is not sent in a URL), never in a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file: its path under [`DASHBOARD_PATH`], its media type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// An embedded file of `assets/`, served as `/dashboard/<name>`.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            path: concat!("/", $name),
            content_type: $content_type,
            body: include_str!(concat!("assets/", $name)),
        }
    };
}

/// Every file of the page. The page itself is the empty path; the others are named
/// relative to it (`dashboard/app.js`), so a prefix in front of the admin API carries over.
const ASSETS: &[Asset] = &[
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("overview.js", JS),
    asset!("keys.js", JS),
    asset!("key_forms.js", JS),
    asset!("alerts.js", JS),
    asset!("audit.js", JS),
];

/// Whether `path` (as the request named it, before any trailing `/` is trimmed) belongs to
/// the dashboard.
pub(crate) fn owns(path: &str) -> bool {
    path.strip_prefix(DASHBOARD_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The answer to `method` on `path`, a path [`owns`] accepted: a file for `GET` and `HEAD`,
/// 405 for any other method, 404 for a name that is not one of the page's files.
///
/// `/dashboard/` is sent to `../dashboard` (relative, so a prefix survives): from there the
/// page's relative links resolve inside `/dashboard/`.
pub(crate) fn serve(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let rest = path.strip_prefix(DASHBOARD_PATH).unwrap_or(path);
    if rest == "/" {
        let mut resp = plain(StatusCode::PERMANENT_REDIRECT, "");
        resp.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("../dashboard"));
        return resp;
    }
    let Some(asset) = ASSETS.iter().find(|a| a.path == rest) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    // For HEAD the server sends the headers of this answer (its length included), no body.
    let body = Bytes::from_static(asset.body.as_bytes());
    let mut resp = with_page_headers(Response::new(Full::new(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    resp
}

/// A short text answer, with the same headers as the page's files.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = with_page_headers(Response::new(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The headers every dashboard answer carries (SPEC §14).
fn with_page_headers<B>(mut resp: Response<B>) -> Response<B> {
    let h = resp.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_the_page_and_its_folder_only() {
        assert!(owns("/dashboard"));
        assert!(owns("/dashboard/"));
        assert!(owns("/dashboard/app.js"));
        assert!(!owns("/dashboards"));
        assert!(!owns("/keys"));
    }

    #[test]
    fn every_file_is_served_with_its_type_and_the_page_headers() {
        for asset in ASSETS {
            let resp = serve(&Method::GET, &format!("{DASHBOARD_PATH}{}", asset.path));
            assert_eq!(resp.status(), StatusCode::OK, "{}", asset.path);
            assert_eq!(resp.headers()[CONTENT_TYPE], asset.content_type);
            assert_eq!(resp.headers()["x-frame-options"], "DENY");
            assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn the_policy_allows_no_inline_script_or_eval() {
        let script = CONTENT_SECURITY_POLICY
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert_eq!(script.trim(), "script-src 'self'");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn scripts_import_only_files_that_are_served() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let name = line
                    .rsplit_once("'./")
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| panic!("{}: unreadable import {line}", asset.path));
                let path = format!("/{name}");
                assert!(
                    ASSETS.iter().any(|a| a.path == path),
                    "{} imports {name}, which is not served",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = ASSETS[0].body;
        assert!(!page.contains("<script>"));
        assert!(!page.contains(" style="));
        let inline_handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!inline_handler, "no inline event handlers");
    }

    #[test]
    fn other_methods_and_names_are_refused() {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let resp = serve(&method, DASHBOARD_PATH);
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        }
        assert_eq!(
            serve(&Method::GET, "/dashboard/../keys").status(),
            StatusCode::NOT_FOUND
        );
        let head = serve(&Method::HEAD, DASHBOARD_PATH);
        assert_eq!(head.status(), StatusCode::OK);
    }

    #[test]
    fn the_folder_sends_the_browser_to_the_page_relatively() {
        let resp = serve(&Method::GET, "/dashboard/");
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()[LOCATION], "../dashboard");
    }
}
