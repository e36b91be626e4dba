//! The dashboard's answers over HTTP (SPEC §14): every file the page loads is served with
//! headers that keep it from running anything but itself, from being framed or cached;
//! writes are refused; and no answer carries the admin key or an API key.

mod common;

use common::gateway::{config, Req, TestGateway, ADMIN_KEY};
use serde_json::json;

/// The page and every file it reaches: links in the page, imports in its scripts.
async fn every_file(gw: &TestGateway) -> Vec<String> {
    let mut files = vec!["/dashboard".to_string()];
    let mut seen = 0;
    while seen < files.len() {
        let path = files[seen].clone();
        seen += 1;
        let resp = gw.send(Req::new("GET", &path, "")).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.brief());
        let text = resp.text();
        // `href="dashboard/x"` and `src="dashboard/x"` in the page; `from './x.js'` in scripts.
        let linked = text
            .split(['"', '\''])
            .filter_map(|s| {
                s.strip_prefix("dashboard/")
                    .or_else(|| s.strip_prefix("./"))
                    .filter(|name| !name.is_empty() && !name.contains(['/', ' ']))
            })
            .map(|name| format!("/dashboard/{name}"));
        for file in linked {
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

fn assert_page_headers(label: &str, resp: &common::gateway::Resp) {
    let csp = resp
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{label}: no CSP"));
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find(|d| d.starts_with(name))
            .unwrap_or_else(|| panic!("{label}: no {name} in {csp}"))
    };
    assert_eq!(directive("script-src"), "script-src 'self'", "{label}");
    assert_eq!(
        directive("frame-ancestors"),
        "frame-ancestors 'none'",
        "{label}"
    );
    assert_eq!(directive("default-src"), "default-src 'none'", "{label}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{label}: {csp}"
    );
    assert_eq!(resp.header("x-frame-options"), Some("DENY"), "{label}");
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{label}");
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{label}"
    );
}

#[tokio::test]
async fn every_file_of_the_page_carries_the_page_headers_and_its_type() {
    let gw = TestGateway::start(config(json!({})).unwrap())
        .await
        .unwrap();
    let files = every_file(&gw).await;
    assert!(
        files.len() >= 8,
        "the page and its scripts, styles and icon: {files:?}"
    );
    for path in &files {
        let resp = gw.send(Req::new("GET", path, "")).await;
        assert_page_headers(path, &resp);
        let ty = resp.header("content-type").unwrap_or_default();
        let want = match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            _ => "text/html",
        };
        assert!(ty.starts_with(want), "{path}: {ty}");
    }
    for (path, status) in [("/dashboard/nothing.js", 404), ("/dashboard/", 308)] {
        let resp = gw.send(Req::new("GET", path, "")).await;
        assert_eq!(resp.status, status, "{path}");
        assert_page_headers(path, &resp);
    }
    let head = gw.send(Req::new("HEAD", "/dashboard", "")).await;
    assert_eq!(head.status, 200);
    assert_page_headers("HEAD /dashboard", &head);
}

#[tokio::test]
async fn the_page_holds_no_inline_script_and_scripts_never_write_markup() {
    let gw = TestGateway::start(config(json!({})).unwrap())
        .await
        .unwrap();
    for path in every_file(&gw).await {
        let text = gw.send(Req::new("GET", &path, "")).await.text();
        if path == "/dashboard" {
            assert!(!text.contains("<script>"), "no inline script");
            assert!(text.contains(r#"<input id="admin-key" name="adminKey" type="password""#));
        }
        for sink in [
            "innerHTML",
            "outerHTML =",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!text.contains(sink), "{path} uses {sink}");
        }
    }
}

#[tokio::test]
async fn writes_to_the_dashboard_are_refused_and_change_nothing() {
    let gw = TestGateway::start(config(json!({})).unwrap())
        .await
        .unwrap();
    let key = gw.key(10).await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/dashboard", "/dashboard/app.js", "/dashboard/keys"] {
            let req = Req::new(method, path, r#"{"name":"x","credits":5}"#)
                .header("x-admin-key", ADMIN_KEY)
                .header("content-type", "application/json");
            let resp = gw.send(req).await;
            assert_eq!(resp.status, 405, "{method} {path}");
            assert_eq!(resp.header("allow"), Some("GET, HEAD"), "{method} {path}");
            assert_page_headers(&format!("{method} {path}"), &resp);
        }
    }
    assert_eq!(gw.credits(&key).await, 10);
    let listed = gw.admin("GET", "/keys", "").await;
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(1),
        "no key was made"
    );
}

#[tokio::test]
async fn no_dashboard_answer_carries_the_admin_key_or_an_api_key() {
    let gw = TestGateway::start(config(json!({})).unwrap())
        .await
        .unwrap();
    gw.secret(ADMIN_KEY);
    let key = gw.key(10).await;
    for path in every_file(&gw).await {
        // With the admin key and an API key sent along, as a signed-in browser might.
        let resp = gw
            .send(
                Req::new("GET", &path, "")
                    .header("x-admin-key", ADMIN_KEY)
                    .key(Some(&key)),
            )
            .await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.header("set-cookie").is_none(), "{path} sets no cookie");
    }
    for path in [
        "/dashboard/x",
        "/dashboard/%2e%2e/keys",
        "/dashboard/../keys",
    ] {
        let resp = gw
            .send(Req::new("GET", path, "").header("x-admin-key", ADMIN_KEY))
            .await;
        assert_eq!(resp.status, 404, "{path} is no file of the page");
    }
    assert!(gw.leaks().is_empty(), "{:?}", gw.leaks());
}
