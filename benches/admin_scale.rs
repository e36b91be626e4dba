//! The admin API at 1,000,000 keys, through `AdminService` as the gateway serves it:
//! `GET /keys` pages (the first, one deep in the listing, the default 1,000-key page),
//! `POST /keys/search` by a tag 100 keys carry while 100,000 others carry another value of
//! the same tag, a top-up by key id, and `GET /status`.
//!
//! `cargo bench --bench admin_scale` prints the median and the slowest of 200 requests each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{
    block_on, AdminService, Gate, KeyRecord, KeyStore, MemoryKeyStore, PayGateConfig,
};
use tower::ServiceExt;

const ADMIN: &str = "bench-admin-key-0123456789";

fn request(admin: &AdminService, method: Method, uri: &str, body: &str) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-admin-key", ADMIN)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    block_on(async {
        let resp = admin.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    })
}

/// Median and maximum of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[t.len() - 1])
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let (n, runs) = if quick {
        (20_000u32, 5)
    } else {
        (1_000_000, 200)
    };
    let store = MemoryKeyStore::new();
    let t0 = Instant::now();
    let mut some_id = None;
    for i in 0..n {
        let mut rec = KeyRecord::new(
            &format!("pg_{i:048x}"),
            &format!("customer-{i}"),
            1_000,
            1_700_000_000_000,
        );
        // 100 keys on team red; every tenth key on team blue.
        if i % (n / 100) == 7 {
            rec.tags.insert("team".into(), "red".into());
        } else if i % 10 == 0 {
            rec.tags.insert("team".into(), "blue".into());
        }
        some_id.get_or_insert(rec.id());
        block_on(store.insert(rec)).expect("insert");
    }
    println!(
        "admin_scale: {n} keys stored in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let gate = Arc::new(
        Gate::with_store(
            PayGateConfig::default(),
            store,
            Arc::new(paygate_mcp::SystemClock),
        )
        .expect("gate"),
    );
    let admin = AdminService::new(gate, ADMIN).expect("admin");

    // A cursor half-way through the listing.
    let (status, first) = request(&admin, Method::GET, "/keys?limit=100", "");
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&first).expect("json");
    assert_eq!(page.as_array().map(Vec::len), Some(100));
    let middle = format!("/keys?limit=100&cursor=80{}", "0".repeat(62));

    let search = r#"{"tags": {"team": "red"}}"#;
    let (status, found) = request(&admin, Method::POST, "/keys/search", search);
    assert_eq!(status, StatusCode::OK);
    let found: serde_json::Value = serde_json::from_slice(&found).expect("json");
    assert_eq!(found["count"], 100, "every red key found");
    let topup = format!(
        r#"{{"keyId": "{}", "credits": 1}}"#,
        some_id.expect("a key")
    );

    let cases: [(&str, Method, &str, &str); 6] = [
        (
            "GET /keys?limit=100 (first page)",
            Method::GET,
            "/keys?limit=100",
            "",
        ),
        (
            "GET /keys?limit=100 (mid-listing cursor)",
            Method::GET,
            &middle,
            "",
        ),
        (
            "GET /keys (default page: 1,000 keys)",
            Method::GET,
            "/keys",
            "",
        ),
        (
            "POST /keys/search (100 of 1,000,000 match)",
            Method::POST,
            "/keys/search",
            search,
        ),
        ("POST /topup by keyId", Method::POST, "/topup", &topup),
        ("GET /status", Method::GET, "/status", ""),
    ];
    for (label, method, uri, body) in cases {
        let (median, max) = time(runs, || {
            let (status, _) = request(&admin, method.clone(), uri, body);
            assert_eq!(status, StatusCode::OK, "{label}");
        });
        println!(
            "{label}: median {:.3} ms, max {:.3} ms",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
}
