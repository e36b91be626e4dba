//! The admin API over HTTP semantics, in process: every endpoint's happy path and bad input,
//! with the gated MCP endpoint beside it sharing one gate.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::{
    AdminEvent, AdminKeyError, AdminService, AuditLog, ClientAddr, EventSink, FanOut, Gate,
    ManualClock, MemoryKeyStore, Metrics, PayGateConfig, PayGateLayer, Quota, UsageEvent,
};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const ADMIN: &str = "admin_0123456789abcdef0123456789abcdef";

#[derive(Default)]
struct Captured(Mutex<Vec<AdminEvent>>);

impl EventSink for Captured {
    fn admin(&self, e: &AdminEvent) {
        self.0.lock().push(e.clone());
    }
    fn usage(&self, _: &UsageEvent) {}
}

struct App {
    gate: Arc<Gate<MemoryKeyStore>>,
    clock: Arc<ManualClock>,
    admin: AdminService,
    events: Arc<Captured>,
    /// Every response body seen, to check that no secret leaks.
    seen: Mutex<Vec<String>>,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
    json: Value,
}

impl App {
    fn new(cfg: PayGateConfig) -> Self {
        let clock = common::clock_at(common::T0);
        let events = Arc::new(Captured::default());
        let metrics = Arc::new(Metrics::new(clock.clone()));
        let audit = Arc::new(AuditLog::new(clock.clone()));
        let sinks = FanOut(vec![
            events.clone() as Arc<dyn EventSink>,
            metrics.clone(),
            audit.clone(),
        ]);
        let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone())
            .unwrap()
            .with_event_sink(Arc::new(sinks));
        let gate = Arc::new(gate);
        let admin = AdminService::new(gate.clone(), ADMIN)
            .unwrap()
            .with_metrics(metrics)
            .with_audit(audit);
        Self {
            gate,
            clock,
            admin,
            events,
            seen: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = self.admin.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        self.seen.lock().push(text.clone());
        Reply {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[("x-admin-key", ADMIN)], "")
            .await
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.send(
            Method::POST,
            uri,
            &[("x-admin-key", ADMIN)],
            &body.to_string(),
        )
        .await
    }

    async fn create(&self, body: Value) -> String {
        let r = self.post("/keys", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["key"].as_str().unwrap().to_string()
    }

    /// A `tools/call` through the gated MCP stack.
    async fn call(&self, key: &str, tool: &str) -> Value {
        let svc = ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(self.gate.clone()))
            .service(service_fn(|_req: Request<Full<Bytes>>| async {
                let body =
                    json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).to_string();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            }));
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}});
        let req = Request::post("http://localhost/mcp")
            .header("x-api-key", key)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn event_types(&self) -> Vec<String> {
        self.events
            .0
            .lock()
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }
}

fn reason(v: &Value) -> &str {
    v["error"]["data"]["reason"].as_str().unwrap_or("allowed")
}

#[tokio::test]
async fn admin_key_is_required_compared_exactly_and_failures_are_audited() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "a"})).await;
    for headers in [
        vec![],
        vec![("x-admin-key", "wrong")],
        vec![("x-admin-key", key.as_str())],
        vec![("x-admin-key", &ADMIN[..ADMIN.len() - 1])],
    ] {
        let r = app.send(Method::GET, "/keys", &headers, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.json["error"].is_string());
    }
    assert_eq!(
        app.event_types()
            .iter()
            .filter(|t| *t == "admin.auth_failed")
            .count(),
        4
    );
    // The admin key is not an API key.
    assert_eq!(reason(&app.call(ADMIN, "t").await), "invalid_api_key");
    // Public endpoints need no admin key.
    for path in ["/", "/metrics", "/pricing", "/.well-known/mcp-payment"] {
        assert_eq!(
            app.send(Method::GET, path, &[], "").await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn create_key_defaults_shape_and_validation() {
    let app = App::new(PayGateConfig::default());
    let r = app.post("/keys", json!({"name": "alice"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    for field in [
        "key",
        "name",
        "credits",
        "allowedTools",
        "deniedTools",
        "expiresAt",
        "tags",
        "ipAllowlist",
        "message",
    ] {
        assert!(r.json.get(field).is_some(), "{field}");
    }
    assert_eq!(r.json["credits"], 100, "absent credits default to 100");
    let key = r.json["key"].as_str().unwrap();
    assert!(key.starts_with("pg_") && key.len() == 51);
    assert_eq!(
        app.post("/keys", json!({"credits": 0})).await.json["credits"],
        0,
        "explicit 0 is an empty key"
    );
    assert_eq!(
        app.post("/keys", json!({"credits": 12.7})).await.json["credits"],
        12,
        "fractions floor"
    );
    let bad = [
        (json!({"credits": -1}), "credits"),
        (json!({"credits": "ten"}), "credits"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (
            json!({"tags": (0..51).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "tags",
        ),
        (json!({"tags": {"k": "v".repeat(101)}}), "tag"),
        (json!({"ipAllowlist": ["10.0.0.0/33"]}), "ipAllowlist"),
        (json!({"expiresAt": "2000-01-01T00:00:00Z"}), "expiresAt"),
        (json!({"expiresAt": "tomorrow"}), "expiresAt"),
        (json!({"expiresIn": 0}), "expiresIn"),
        (json!({"allowedTools": [""]}), "tool names"),
        (json!({"quota": {"dailyCallLimit": -5}}), "quota"),
        (json!({"spendingLimit": -1}), "spendingLimit"),
    ];
    for (body, mentions) in bad {
        let r = app.post("/keys", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.json["error"].as_str().unwrap();
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    let r = app
        .send(Method::POST, "/keys", &[("x-admin-key", ADMIN)], "{nope")
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed JSON body"))
    );
    let r = app
        .send(Method::POST, "/keys", &[("x-admin-key", ADMIN)], "[1,2]")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Expiry by duration.
    let r = app.post("/keys", json!({"expiresIn": 3600})).await;
    assert_eq!(r.json["expiresAt"], "2026-03-15T11:00:00Z");
}

#[tokio::test]
async fn listing_is_masked_paginated_and_bounded() {
    let app = App::new(PayGateConfig::default());
    let mut keys = Vec::new();
    for i in 0..25 {
        keys.push(app.create(json!({"name": format!("k{i}")})).await);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut uri = "/keys?limit=10".to_string();
    loop {
        let r = app.get(&uri).await;
        assert_eq!(r.headers["x-total-count"], "25");
        for item in r.json.as_array().expect("a JSON array of keys") {
            assert!(item["keyId"].as_str().unwrap().starts_with("kid_"));
            assert!(
                seen.insert(item["keyId"].as_str().unwrap().to_string()),
                "listed twice"
            );
        }
        for k in &keys {
            assert!(!r.text.contains(k.as_str()), "a listing leaked a full key");
        }
        // RFC 8288: <uri>; rel="next", absent on the last page.
        match r
            .headers
            .get("link")
            .map(|v| v.to_str().unwrap().to_string())
        {
            Some(link) => {
                let target = link
                    .strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                    .expect("a next link");
                assert!(target.starts_with("/keys?limit=10&cursor="), "{target}");
                uri = target.to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(
        app.get("/keys?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/keys?limit=1001").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/keys?cursor=zz").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/keys").await.json[0]["key"]
            .as_str()
            .unwrap()
            .len(),
        14
    );
    // Without a limit one page holds up to 1,000 keys; `limit=` alone means 100.
    assert_eq!(app.get("/keys").await.json.as_array().unwrap().len(), 25);
    assert!(app.get("/keys").await.headers.get("link").is_none());
    assert_eq!(
        app.get("/keys?limit=").await.json.as_array().unwrap().len(),
        25
    );
}

#[tokio::test]
async fn topup_revoke_and_use() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "a", "credits": 1})).await;
    let r = app
        .post("/topup", json!({"key": key, "credits": 9.9}))
        .await;
    assert_eq!(
        (r.status, r.json["credits"].clone()),
        (StatusCode::OK, json!(10))
    );
    for body in [
        json!({"key": key, "credits": 0}),
        json!({"key": key, "credits": -3}),
        json!({"key": key}),
        json!({"credits": 5}),
    ] {
        assert_eq!(
            app.post("/topup", body.clone()).await.status,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    assert_eq!(
        app.post("/topup", json!({"key": "pg_nobody", "credits": 5}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            "/topup",
            json!({"key": key, "credits": 9_007_199_254_740_990u64})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(reason(&app.call(&key, "t").await), "allowed");
    assert_eq!(
        app.post("/keys/revoke", json!({"key": key})).await.json["revoked"],
        true
    );
    assert_eq!(reason(&app.call(&key, "t").await), "invalid_api_key");
    let r = app
        .send(Method::GET, "/balance", &[("x-api-key", &key)], "")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.post("/keys/revoke", json!({"key": "pg_nobody"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let types = app.event_types();
    assert!(types.contains(&"key.topup".to_string()) && types.contains(&"key.revoked".to_string()));
}

#[tokio::test]
async fn rotation_carries_all_state_and_kills_the_old_key() {
    let app = App::new(PayGateConfig::default());
    let old = app
        .create(json!({
            "name": "rot", "credits": 20, "tags": {"team": "a"}, "allowedTools": ["t", "u"],
            "quota": {"dailyCallLimit": 5}, "spendingLimit": 50, "expiresIn": 86400,
        }))
        .await;
    app.call(&old, "t").await;
    let r = app.post("/keys/rotate", json!({"key": old})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json["newKey"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(r.json["credits"], 19);
    assert_eq!(r.json["totalSpent"], 1);
    assert_eq!(r.json["tags"]["team"], "a");
    assert_eq!(r.json["allowedTools"], json!(["t", "u"]));
    assert_eq!(r.json["quota"]["dailyCallLimit"], 5);
    assert_eq!(r.json["spendingLimit"], 50);
    assert!(r.json["expiresAt"].is_string());
    assert_eq!(reason(&app.call(&old, "t").await), "invalid_api_key");
    assert_eq!(reason(&app.call(&new, "t").await), "allowed");
    let bal = app
        .send(Method::GET, "/balance", &[("x-api-key", &new)], "")
        .await;
    assert_eq!(
        bal.json["quotaUsage"]["dailyCalls"], 2,
        "quota counters carried over"
    );
    assert_eq!(
        app.post("/keys/rotate", json!({"key": old})).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(app.event_types().contains(&"key.rotated".to_string()));
}

#[tokio::test]
async fn acl_expiry_quota_tags_ip_and_limits() {
    let app = App::new(PayGateConfig::default().with_global_quota(Quota {
        daily_call_limit: 100,
        ..Default::default()
    }));
    let key = app.create(json!({"name": "a", "deniedTools": ["x"]})).await;

    let r = app
        .post("/keys/acl", json!({"key": key, "allowedTools": ["t", "x"]}))
        .await;
    assert_eq!(
        r.json["deniedTools"],
        json!(["x"]),
        "an omitted list is kept"
    );
    assert_eq!(reason(&app.call(&key, "u").await), "tool_not_allowed");
    assert_eq!(reason(&app.call(&key, "x").await), "tool_denied");
    assert_eq!(
        app.post("/keys/acl", json!({"key": key})).await.status,
        StatusCode::BAD_REQUEST
    );

    let r = app
        .post("/keys/expiry", json!({"key": key, "expiresIn": 60}))
        .await;
    assert_eq!(r.json["expiresAt"], "2026-03-15T10:01:00Z");
    app.clock.advance_secs(61);
    assert_eq!(reason(&app.call(&key, "t").await), "api_key_expired");
    app.post(
        "/keys/expiry",
        json!({"key": key, "expiresAt": "2026-12-31T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        reason(&app.call(&key, "t").await),
        "allowed",
        "extension revives the key"
    );
    let r = app
        .post("/keys/expiry", json!({"key": key, "expiresAt": null}))
        .await;
    assert!(r.json["expiresAt"].is_null());
    assert_eq!(
        app.post("/keys/expiry", json!({"key": key})).await.status,
        StatusCode::BAD_REQUEST
    );

    let r = app
        .post("/keys/quota", json!({"key": key, "dailyCallLimit": 2}))
        .await;
    assert_eq!(r.json["quota"]["dailyCallLimit"], 2);
    assert_eq!(reason(&app.call(&key, "t").await), "allowed");
    assert_eq!(
        reason(&app.call(&key, "t").await),
        "daily_call_quota_exceeded"
    );
    let r = app
        .post("/keys/quota", json!({"key": key, "remove": true}))
        .await;
    assert!(r.json["quota"].is_null());
    assert_eq!(
        reason(&app.call(&key, "t").await),
        "allowed",
        "falls back to the global quota"
    );

    let r = app
        .post(
            "/keys/tags",
            json!({"key": key, "tags": {"team": "blue", "tier": "gold"}}),
        )
        .await;
    assert_eq!(r.json["tags"], json!({"team": "blue", "tier": "gold"}));
    let r = app
        .post("/keys/tags", json!({"key": key, "tags": {"tier": null}}))
        .await;
    assert_eq!(r.json["tags"], json!({"team": "blue"}));
    app.create(json!({"name": "b", "tags": {"team": "blue"}}))
        .await;
    app.create(json!({"name": "c", "tags": {"team": "red"}}))
        .await;
    let r = app
        .post("/keys/search", json!({"tags": {"team": "blue"}}))
        .await;
    assert_eq!(r.json["count"], 2);
    assert!(!r.text.contains(&key));
    assert_eq!(
        app.post("/keys/search", json!({"tags": {}})).await.status,
        StatusCode::BAD_REQUEST
    );

    let r = app
        .post(
            "/keys/ip",
            json!({"key": key, "ipAllowlist": ["10.0.0.1", "2001:db8::/32"]}),
        )
        .await;
    assert_eq!(r.json["ipAllowlist"], json!(["10.0.0.1", "2001:db8::/32"]));
    assert_eq!(reason(&app.call(&key, "t").await), "ip_not_allowed");
    assert_eq!(
        app.post("/keys/ip", json!({"key": key, "ipAllowlist": ["nope"]}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // The field as paygate-mcp 1.8 names it.
    let r = app
        .post("/keys/ip", json!({"key": key, "ips": ["192.0.2.9"]}))
        .await;
    assert_eq!(r.json["ipAllowlist"], json!(["192.0.2.9"]), "{}", r.text);
    app.post("/keys/ip", json!({"key": key, "ipAllowlist": []}))
        .await;

    let spent = app
        .send(Method::GET, "/balance", &[("x-api-key", &key)], "")
        .await
        .json["totalSpent"]
        .as_u64()
        .unwrap();
    let r = app
        .post("/limits", json!({"key": key, "spendingLimit": spent}))
        .await;
    assert_eq!(r.json["spendingLimit"], spent);
    assert_eq!(
        reason(&app.call(&key, "t").await),
        "spending_limit_exceeded"
    );
    assert_eq!(
        app.post("/limits", json!({"key": key, "spendingLimit": -1}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let types = app.event_types();
    for t in [
        "key.acl_updated",
        "key.expiry_updated",
        "key.quota_updated",
        "key.tags_updated",
        "key.ip_updated",
        "key.limit_updated",
    ] {
        assert!(types.contains(&t.to_string()), "{t}");
    }
}

#[tokio::test]
async fn balance_is_self_service() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "me", "credits": 10})).await;
    app.call(&key, "t").await;
    let r = app
        .send(Method::GET, "/balance", &[("x-api-key", &key)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for field in [
        "name",
        "credits",
        "totalSpent",
        "totalCalls",
        "spendingLimit",
        "remainingBudget",
        "lastUsedAt",
        "allowedTools",
        "deniedTools",
        "expiresAt",
        "tags",
        "ipAllowlist",
        "quota",
        "quotaUsage",
    ] {
        assert!(r.json.get(field).is_some(), "{field}");
    }
    assert_eq!(
        (r.json["credits"].clone(), r.json["totalCalls"].clone()),
        (json!(9), json!(1))
    );
    assert!(r.json["remainingBudget"].is_null());
    assert_eq!(
        app.send(Method::GET, "/balance", &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn usage_json_and_csv_escape_hostile_names() {
    let app = App::new(PayGateConfig::default());
    let hostile = "=HYPERLINK(\"http://evil\"),\"x\"\nnext";
    let key = app.create(json!({"name": hostile})).await;
    app.call(&key, "t").await;
    app.call(&key, "@SUM(A1)").await;
    let r = app.get("/usage").await;
    assert_eq!(r.json["count"], 2);
    let r = app.get("/usage?format=csv").await;
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(r.text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        &rows[0][2],
        format!("'{hostile}"),
        "formula neutralized, quotes/commas/newlines kept intact"
    );
    assert_eq!(&rows[1][3], "'@SUM(A1)");
    assert!(!r.text.contains(&key));
    // As in paygate-mcp 1.8: an unknown format is JSON, a date alone is its start.
    let xml = app.get("/usage?format=xml").await;
    assert_eq!(xml.status, StatusCode::OK);
    assert!(xml.json["events"].is_array(), "{}", xml.text);
    assert_eq!(
        app.get("/usage?since=2020-01-01").await.json["count"],
        app.get("/usage").await.json["count"]
    );
    assert_eq!(app.get("/usage?since=2030-01-01").await.json["count"], 0);
    assert_eq!(
        app.get("/usage?since=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/usage?since=2030-01-01T00:00:00Z").await.json["count"],
        0
    );
}

#[tokio::test]
async fn status_analytics_alerts_metrics_pricing_discovery() {
    let app = App::new(PayGateConfig::default().with_tool_price("search", 5));
    let key = app.create(json!({"name": "a", "credits": 12})).await;
    app.call(&key, "search").await;
    app.call(&key, "search").await;
    app.call(&key, "search").await; // denied: 2 credits left

    let r = app.get("/status").await;
    assert_eq!(
        (&r.json["totalKeys"], &r.json["activeKeys"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(r.json["totalCreditsAvailable"], 2);
    assert_eq!(r.json["keys"][0]["name"], "a");
    let usage = &r.json["usage"];
    assert_eq!(
        (
            &usage["totalCalls"],
            &usage["totalCreditsSpent"],
            &usage["totalDenied"]
        ),
        (&json!(3), &json!(10), &json!(1))
    );
    assert_eq!(
        usage["perTool"]["search"],
        json!({"calls": 3, "credits": 10, "denied": 1})
    );
    assert_eq!(usage["perKey"]["a"]["calls"], 3);
    assert_eq!(usage["denyReasons"]["insufficient_credits"], 1);

    let r = app.get("/analytics?granularity=hourly&topN=5").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["summary"]["totalCalls"], 3);
    assert_eq!(r.json["summary"]["totalDenied"], 1);
    assert_eq!(r.json["tools"][0]["tool"], "search");
    assert_eq!(
        app.get("/analytics?granularity=weekly").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/analytics?from=2026-03-16T00:00:00Z&to=2026-03-15T00:00:00Z")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/analytics?topN=many").await.status,
        StatusCode::BAD_REQUEST
    );

    let r = app
        .post(
            "/alerts",
            json!({"rules": [{"type": "credits_low", "threshold": 50}]}),
        )
        .await;
    assert_eq!(r.json["count"], 1);
    assert!(app
        .event_types()
        .contains(&"admin.alerts_configured".to_string()));
    assert_eq!(
        app.post(
            "/alerts",
            json!({"rules": [{"type": "quota_warning", "threshold": 101}]})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.post(
            "/alerts",
            json!({"rules": [{"type": "nope", "threshold": 1}]})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    app.call(&key, "t").await; // 1 credit left: credits_low fires
                               // The dashboard reads without taking: a script polling /alerts still gets the alert.
    for _ in 0..2 {
        let peeked = app.get("/alerts?peek=true").await;
        assert_eq!(peeked.json["count"], 1);
        assert_eq!(peeked.json["alerts"][0]["type"], "credits_low");
    }
    assert_eq!(
        app.get("/alerts?peek=maybe").await.status,
        StatusCode::BAD_REQUEST
    );
    let r = app.get("/alerts").await;
    assert_eq!(r.json["count"], 1);
    assert_eq!(r.json["alerts"][0]["type"], "credits_low");
    assert_eq!(r.json["rules"][0]["threshold"], 50);
    assert_eq!(app.get("/alerts").await.json["count"], 0, "consumed");

    let r = app.send(Method::GET, "/metrics", &[], "").await;
    assert!(
        r.text
            .contains(r#"paygate_tool_calls_total{tool="search",status="allowed"} 2"#),
        "{}",
        r.text
    );
    assert!(r.text.contains("paygate_active_keys 1"));
    let r = app.send(Method::GET, "/pricing", &[], "").await;
    let tools = r.json["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(
        (&tools[0]["name"], &tools[0]["creditsPerCall"]),
        (&json!("search"), &json!(5))
    );
    assert_eq!(r.json["server"]["defaultCreditsPerCall"], 1);
    let r = app
        .send(Method::GET, "/.well-known/mcp-payment", &[], "")
        .await;
    assert_eq!(r.json["billingModel"], "credits");
    assert!(r.json["errorCodes"]["-32402"].is_string());
}

#[tokio::test]
async fn wrong_methods_unknown_paths_and_no_leaks() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "a"})).await;
    let r = app
        .send(Method::DELETE, "/keys", &[("x-admin-key", ADMIN)], "")
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, POST");
    assert_eq!(
        app.send(Method::GET, "/topup", &[("x-admin-key", ADMIN)], "")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(app.get("/nope").await.status, StatusCode::NOT_FOUND);
    let big = "x".repeat(2 * 1024 * 1024);
    assert_eq!(
        app.send(Method::POST, "/keys", &[("x-admin-key", ADMIN)], &big)
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for path in [
        "/keys",
        "/status",
        "/usage",
        "/analytics",
        "/alerts",
        "/metrics",
        "/pricing",
        "/",
    ] {
        app.get(path).await;
    }
    let seen = app.seen.lock();
    let creations = seen.iter().filter(|t| t.contains(&key)).count();
    assert_eq!(
        creations, 1,
        "the full key appears only in its creation response"
    );
    assert!(
        seen.iter().all(|t| !t.contains(ADMIN)),
        "the admin key never appears"
    );
    assert!(
        seen.iter()
            .all(|t| !t.contains("panicked") && !t.contains("src/")),
        "no internals"
    );
}

#[tokio::test]
async fn audit_log_query_export_and_stats() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "=evil,\"name\""})).await;
    app.post("/topup", json!({"key": key, "credits": 5})).await;
    app.send(Method::GET, "/keys", &[("x-admin-key", "wrong")], "")
        .await;
    app.call(&key, "t").await;
    app.call("pg_nobody_0000000000000", "t").await;

    let r = app.get("/audit?types=key.created,key.topup").await;
    assert_eq!(r.json["total"], 2, "{}", r.text);
    assert_eq!(r.json["events"][0]["type"], "key.topup", "newest first");
    let r = app.get("/audit?types=admin.auth_failed").await;
    assert_eq!(r.json["total"], 1);
    let r = app.get("/audit?types=gate.allow,gate.deny").await;
    assert_eq!(r.json["total"], 2);
    let r = app.get("/audit?limit=1").await;
    assert_eq!(r.json["count"], 1);
    assert!(r.json["total"].as_u64().unwrap() >= 5);
    assert_eq!(
        app.get("/audit?limit=5000").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/audit?since=never").await.status,
        StatusCode::BAD_REQUEST
    );
    let r = app.get("/audit?until=2000-01-01T00:00:00Z").await;
    assert_eq!(r.json["total"], 0);

    let r = app.get("/audit/export?format=csv").await;
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let mut rows = csv::Reader::from_reader(r.text.as_bytes());
    assert!(rows.records().all(|row| row.is_ok()), "valid CSV");
    assert!(!r.text.contains(&key), "no full key in the audit export");
    let r = app.get("/audit/export").await;
    assert!(r.json["count"].as_u64().unwrap() >= 5);
    // Any other format answers JSON, as paygate-mcp 1.8 does.
    let r = app.get("/audit/export?format=pdf").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["count"].as_u64().unwrap() >= 5);
    let r = app.get("/audit/stats").await;
    assert_eq!(r.json["eventsByType"]["key.created"], 1);
    assert_eq!(r.json["capacity"], 10_000);
}

#[tokio::test]
async fn floods_of_auth_failures_and_keyless_calls_do_not_evict_the_admin_trail() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "kept"})).await;
    app.post("/topup", json!({"key": key, "credits": 5})).await;
    app.call(&key, "t").await;
    // One more than the log's capacity of each, from callers without any credentials.
    for _ in 0..10_001 {
        let r = app
            .send(Method::GET, "/keys", &[("x-admin-key", "wrong")], "")
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..10_001 {
        app.call("pg_nobody_0000000000000", "t").await;
    }

    let r = app.get("/audit?types=key.created,key.topup").await;
    assert_eq!(r.json["total"], 2, "{}", r.text);
    assert_eq!(r.json["events"][1]["type"], "key.created");
    let r = app.get("/audit?types=gate.allow").await;
    assert_eq!(r.json["total"], 1, "a real key's call survives the flood");
    // The merged view is still newest first and holds the floods too, bounded.
    let r = app.get("/audit?limit=1").await;
    assert_eq!(r.json["events"][0]["type"], "gate.deny");
    // Each flood is bounded, and keyless calls did not evict the failed admin logins.
    let r = app.get("/audit?types=admin.auth_failed&limit=0").await;
    assert_eq!(r.json["total"], 10_000);
    let r = app.get("/audit?types=gate.deny&limit=0").await;
    assert_eq!(r.json["total"], 10_000);
    let r = app.get("/audit/stats").await;
    assert_eq!(r.json["eventsByType"]["key.created"], 1);
    assert_eq!(r.json["eventsByType"]["gate.allow"], 1);
    let r = app.get("/audit/export").await;
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "key.created", "oldest first");
    assert!(events
        .windows(2)
        .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()));
}

#[tokio::test]
async fn admin_bodies_are_exactly_one_json_document() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "one", "credits": 1})).await;
    let one = json!({"key": key, "credits": 1}).to_string();
    let more = json!({"key": key, "credits": 999}).to_string();
    for body in [
        format!("{one}{more}"),
        format!("{one} garbage"),
        format!("{one}\n{more}"),
        format!("{one},"),
        format!("{one}]"),
        format!("{one} 1"),
        format!("{one}null"),
        format!("{one}\u{0}"),
    ] {
        let r = app
            .send(Method::POST, "/topup", &[("x-admin-key", ADMIN)], &body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}: {}", r.text);
        assert!(r.json["error"].is_string(), "{}", r.text);
    }
    let r = app
        .send(
            Method::POST,
            "/topup",
            &[("x-admin-key", ADMIN)],
            &format!("{one}{more}"),
        )
        .await;
    assert_eq!(
        r.json["error"],
        "request body must be exactly one JSON document; found data after it"
    );
    let bal = app
        .send(Method::GET, "/balance", &[("x-api-key", &key)], "")
        .await;
    assert_eq!(bal.json["credits"], 1, "no refused body changed anything");
    // Whitespace after the document is fine.
    for ws in [" ", "\n", "\r\n\t  "] {
        let r = app
            .send(
                Method::POST,
                "/topup",
                &[("x-admin-key", ADMIN)],
                &format!("{one}{ws}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ws:?}");
    }

    // Every endpoint that takes a body refuses trailing data, and changes nothing.
    let before = app.get("/keys").await.json;
    for (path, body) in [
        ("/keys", json!({"name": "new"})),
        ("/topup", json!({"key": key, "credits": 5})),
        ("/keys/revoke", json!({"key": key})),
        ("/keys/rotate", json!({"key": key})),
        ("/keys/acl", json!({"key": key, "deniedTools": ["x"]})),
        ("/keys/expiry", json!({"key": key, "expiresIn": 60})),
        ("/keys/quota", json!({"key": key, "dailyCallLimit": 1})),
        ("/keys/tags", json!({"key": key, "tags": {"a": "b"}})),
        ("/keys/ip", json!({"key": key, "ipAllowlist": ["10.0.0.1"]})),
        ("/keys/search", json!({"tags": {"a": "b"}})),
        ("/limits", json!({"key": key, "spendingLimit": 3})),
        (
            "/alerts",
            json!({"rules": [{"type": "credits_low", "threshold": 1}]}),
        ),
    ] {
        for tail in [" x", "{}", "[]"] {
            let text = format!("{body}{tail}");
            let r = app
                .send(Method::POST, path, &[("x-admin-key", ADMIN)], &text)
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {text}");
        }
    }
    assert_eq!(app.get("/keys").await.json, before);
    assert_eq!(app.get("/alerts").await.json["rules"], json!([]));
}

#[tokio::test]
async fn a_revoked_key_takes_no_change() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "gone", "credits": 10})).await;
    let r = app.post("/keys/revoke", json!({"key": key})).await;
    assert_eq!(r.status, StatusCode::OK);
    let record = || common::record(&app.gate, &key);
    let before = record();
    for (path, body) in [
        ("/topup", json!({"key": key, "credits": 500})),
        ("/keys/acl", json!({"key": key, "allowedTools": ["t"]})),
        ("/keys/expiry", json!({"key": key, "expiresIn": 60})),
        ("/keys/expiry", json!({"key": key, "expiresAt": null})),
        ("/keys/quota", json!({"key": key, "dailyCallLimit": 5})),
        ("/keys/quota", json!({"key": key, "remove": true})),
        ("/keys/tags", json!({"key": key, "tags": {"team": "x"}})),
        ("/keys/ip", json!({"key": key, "ipAllowlist": ["10.0.0.1"]})),
        ("/limits", json!({"key": key, "spendingLimit": 5})),
        ("/keys/rotate", json!({"key": key})),
    ] {
        let r = app.post(path, body.clone()).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path} {body}: {}", r.text);
        assert!(
            r.json["error"].as_str().unwrap().contains("revoked"),
            "{}",
            r.text
        );
        assert!(!r.text.contains(&key), "no key in the answer");
    }
    assert_eq!(record(), before, "no credits stranded, nothing changed");
    let r = app.get("/keys").await;
    assert_eq!(r.headers["x-total-count"], "1", "rotation made no new key");
    let r = app.get("/status").await;
    assert_eq!(r.json["activeKeys"], 0, "{}", r.text);
    let types = app.event_types();
    for t in [
        "key.topup",
        "key.rotated",
        "key.acl_updated",
        "key.limit_updated",
    ] {
        assert!(!types.contains(&t.to_string()), "{t}");
    }
}

#[tokio::test]
async fn short_imported_keys_are_masked_to_at_most_a_third() {
    let app = App::new(PayGateConfig::default());
    let imported = "imported-key-123";
    app.gate.import_key(imported, "legacy", 10).await.unwrap();
    let r = app.get("/keys").await;
    let masked = r.json[0]["key"].as_str().unwrap().to_string();
    assert_eq!(masked, "imp...23", "5 of 16 characters, not 11");
    assert_eq!(
        r.json[0]["keyPrefix"], "imp...",
        "the prefix shows no more than the mask"
    );
    let shown = masked.chars().filter(|c| *c != '.').count();
    assert!(shown * 3 <= imported.len());
    // Every other place the key is shown uses the same mask.
    let r = app
        .send(Method::GET, "/balance", &[("x-api-key", imported)], "")
        .await;
    assert_eq!(r.json["key"], masked.as_str());
    let r = app
        .post("/topup", json!({"key": imported, "credits": 1}))
        .await;
    assert_eq!(r.json["key"], masked.as_str());
    for text in app.seen.lock().iter() {
        assert!(!text.contains("imported-key"), "{text}");
    }
    // Generated keys still show their first 7 and last 4.
    let key = app.create(json!({"name": "new"})).await;
    let r = app.post("/topup", json!({"key": key, "credits": 1})).await;
    assert_eq!(
        r.json["key"],
        format!("{}...{}", &key[..7], &key[key.len() - 4..])
    );
}

#[tokio::test]
async fn acl_lists_are_applied_together_or_not_at_all() {
    let app = App::new(PayGateConfig::default());
    let key = app
        .create(json!({"name": "acl", "allowedTools": ["t"], "deniedTools": ["x"]}))
        .await;
    let before = common::record(&app.gate, &key);
    // A valid allowed list beside a refused denied list: before, the allowed list was
    // applied and then the request failed, leaving the key half changed.
    for body in [
        json!({"key": key, "allowedTools": ["t", "u"], "deniedTools": [""]}),
        json!({"key": key, "allowedTools": [""], "deniedTools": ["y"]}),
        json!({"key": key, "allowedTools": ["u"], "deniedTools": ["y".repeat(201)]}),
    ] {
        let r = app.post("/keys/acl", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(common::record(&app.gate, &key), before, "{body}");
    }
    assert_eq!(reason(&app.call(&key, "u").await), "tool_not_allowed");
    // Both lists in one request change in one step, and emit one event.
    let r = app
        .post(
            "/keys/acl",
            json!({"key": key, "allowedTools": ["t", "u"], "deniedTools": ["t"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.json["allowedTools"].clone(),
            r.json["deniedTools"].clone()
        ),
        (json!(["t", "u"]), json!(["t"]))
    );
    assert_eq!(reason(&app.call(&key, "u").await), "allowed");
    assert_eq!(reason(&app.call(&key, "t").await), "tool_denied");
    let events = app.event_types();
    assert_eq!(events.iter().filter(|t| *t == "key.acl_updated").count(), 1);
}

#[tokio::test]
async fn empty_or_short_admin_keys_are_refused_at_construction() {
    let gate = || Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    for (key, want) in [
        ("", AdminKeyError::Empty),
        ("a", AdminKeyError::TooShort(1)),
        ("abcdefghijklmno", AdminKeyError::TooShort(15)),
        ("abcdefgh ijklmnop", AdminKeyError::NotPrintable),
        ("abcdefghijklmnop\n", AdminKeyError::NotPrintable),
        ("abcdéfghijklmnopq", AdminKeyError::NotPrintable),
    ] {
        let err = AdminService::new(gate(), key).err();
        assert_eq!(err, Some(want.clone()), "{key:?}");
        let msg = want.to_string();
        assert!(msg.contains("admin key"), "{msg}");
        if key.len() > 2 {
            assert!(
                !msg.contains(key),
                "the message never repeats the key: {msg}"
            );
        }
    }
    assert_eq!(
        AdminKeyError::TooShort(5).to_string(),
        "the admin key is 5 characters long; it must be at least 16 characters"
    );
    // Sixteen printable characters are enough, and that key works.
    let admin = AdminService::new(gate(), "abcdefghijklmnop").unwrap();
    let req = Request::get("/keys")
        .header("x-admin-key", "abcdefghijklmnop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(admin.oneshot(req).await.unwrap().status(), StatusCode::OK);
}

/// `GET /balance` with `key`, from `peer` (when given) with extra `headers`.
async fn balance_from(
    app: &App,
    key: &str,
    peer: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut b = Request::get("/balance").header("x-api-key", key);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if let Some(peer) = peer {
        let ip: std::net::IpAddr = peer.parse().unwrap();
        b = b.extension(ClientAddr(std::net::SocketAddr::new(ip, 40_000)));
    }
    let resp = app
        .admin
        .clone()
        .oneshot(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn balance_is_held_to_the_keys_ip_allowlist_and_expiry() {
    let app = App::new(PayGateConfig::default());
    let key = app
        .create(json!({"name": "ip", "ipAllowlist": ["10.0.0.7", "192.168.0.0/24"]}))
        .await;
    for peer in ["10.0.0.7", "192.168.0.99", "::ffff:10.0.0.7"] {
        let (status, body) = balance_from(&app, &key, Some(peer), &[]).await;
        assert_eq!(status, StatusCode::OK, "{peer}: {body}");
        assert_eq!(body["credits"], 100);
    }
    for (peer, headers) in [
        (Some("10.0.0.8"), vec![]),
        (None, vec![]),
        // A forwarded address is believed only from a configured proxy.
        (Some("10.0.0.8"), vec![("x-forwarded-for", "10.0.0.7")]),
    ] {
        let (status, body) = balance_from(&app, &key, peer, &headers).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{peer:?} {headers:?}: {body}"
        );
        assert_eq!(body["reason"], "ip_not_allowed");
        assert!(body["error"].is_string() && body.get("credits").is_none());
    }

    // Expiry is exact to the millisecond, as for a call.
    let key = app.create(json!({"name": "e", "expiresIn": 60})).await;
    app.clock.advance_ms(59_999);
    assert_eq!(balance_from(&app, &key, None, &[]).await.0, StatusCode::OK);
    app.clock.advance_ms(1);
    let (status, body) = balance_from(&app, &key, None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["reason"], "api_key_expired");
    assert!(body.get("credits").is_none());
    assert_eq!(reason(&app.call(&key, "t").await), "api_key_expired");

    // Unknown keys answer 404, missing and revoked ones 401.
    let (status, body) = balance_from(&app, "pg_unknown_unknown_unknown", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        app.send(Method::GET, "/balance", &[], "").await.json["reason"],
        "missing_api_key"
    );
    let key = app.create(json!({"name": "r"})).await;
    app.post("/keys/revoke", json!({"key": key})).await;
    let (status, body) = balance_from(&app, &key, None, &[]).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::UNAUTHORIZED, json!("invalid_api_key"))
    );
}

#[tokio::test]
async fn balance_believes_forwarded_addresses_only_from_trusted_proxies() {
    let app = App::new(
        PayGateConfig::default()
            .with_trusted_proxy_hops(1)
            .with_trusted_proxies(["127.0.0.1/32".parse().unwrap()]),
    );
    let key = app
        .create(json!({"name": "ip", "ipAllowlist": ["10.0.0.7"]}))
        .await;
    let via_proxy = [("x-forwarded-for", "10.0.0.7")];
    let (status, body) = balance_from(&app, &key, Some("127.0.0.1"), &via_proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = balance_from(&app, &key, Some("10.9.9.9"), &via_proxy).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not from a trusted proxy");
    let spoofed = [("x-forwarded-for", "10.0.0.7, 10.0.0.8")];
    let (status, _) = balance_from(&app, &key, Some("127.0.0.1"), &spoofed).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the client is the proxy's last hop"
    );
}

#[tokio::test]
async fn body_errors_name_the_field_without_parser_positions() {
    let app = App::new(PayGateConfig::default());
    let key = app.create(json!({"name": "p"})).await;
    for (path, body, field) in [
        ("/topup", json!({"key": key, "credits": "abc"}), "credits"),
        ("/keys", json!({"name": "n", "tags": 5}), "tags"),
        ("/keys", json!({"name": "n", "tags": {"a": 1}}), "tags.a"),
        (
            "/keys/acl",
            json!({"key": key, "allowedTools": [1]}),
            "allowedTools[0]",
        ),
        (
            "/keys/quota",
            json!({"key": key, "remove": "yes"}),
            "remove",
        ),
    ] {
        let r = app.post(path, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.json["error"].as_str().unwrap();
        assert!(msg.contains(&format!("'{field}'")), "{msg}");
        assert!(!msg.contains("line") && !msg.contains("column"), "{msg}");
    }
    let r = app
        .send(Method::POST, "/topup", &[("x-admin-key", ADMIN)], "[1, 2]")
        .await;
    let msg = r.json["error"].as_str().unwrap();
    assert!(!msg.contains("line") && !msg.contains("column"), "{msg}");
}

#[tokio::test]
async fn tag_search_says_when_its_list_is_cut() {
    let app = App::new(PayGateConfig::default());
    for i in 0..1_001 {
        app.create(json!({"name": format!("k{i}"), "tags": {"team": "wide"}}))
            .await;
    }
    let r = app
        .post("/keys/search", json!({"tags": {"team": "wide"}}))
        .await;
    assert_eq!(r.json["count"], 1_000);
    assert_eq!(
        r.json["truncated"], true,
        "a cut list is not passed off as whole"
    );
    let r = app
        .post("/keys/search", json!({"tags": {"team": "none"}}))
        .await;
    assert_eq!(r.json["count"], 0);
    assert_eq!(r.json["truncated"], false);
}

#[tokio::test]
async fn builder_calls_on_a_cloned_admin_service_take_effect() {
    let clock = common::clock_at(common::T0);
    let gate = Arc::new(
        Gate::with_store(
            PayGateConfig::default(),
            MemoryKeyStore::new(),
            clock.clone(),
        )
        .unwrap(),
    );
    let admin = AdminService::new(gate, "an-admin-key-of-some-length").unwrap();
    let _kept = admin.clone(); // a clone held elsewhere used to make the next calls no-ops
    let admin = admin
        .with_metrics(Arc::new(Metrics::new(clock.clone())))
        .with_upstream_health("s", || false);
    let get = |path: &str| {
        http::Request::get(path)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let metrics = admin.clone().oneshot(get("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "metrics are served");
    let text = common::body_text(metrics).await;
    assert!(
        text.contains("paygate_upstream_up{upstream=\"s\"} 0"),
        "{text}"
    );
    let health = common::body_text(admin.oneshot(get("/")).await.unwrap()).await;
    assert!(health.contains("degraded"), "{health}");
}
