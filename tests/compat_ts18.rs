//! Users of paygate-mcp 1.8 (TypeScript) keep their keys and their scripts.
//!
//! * State: a 1.8 state file (plaintext keys in `[key, record]` pairs) is imported into the
//!   memory store and into Redis, after which the old keys authenticate with their balances,
//!   ACLs, quotas, tags and allowlists, bad records are reported (never with a full key), and
//!   no plaintext key is written back.
//! * Scripts: for every 1.8 admin endpoint, the request a 1.8 script sends (1.8's own field
//!   names) and the response fields such a script reads, asserted on the real admin API.
//!   What SPEC §11 deliberately changes (distinct denial codes, strict JSON-RPC, 413, empty
//!   keys from `credits: 0`, the masked `keyPrefix`) is not asserted as 1.8 behaviour.
//! * Key ids (SPEC §10): every endpoint that takes `{"key": ...}` takes `{"keyId": ...}`
//!   instead, on both stores, across rotation (the id stays, the old key is dead, the id
//!   reaches the new key); ids show in listings, usage events, analytics and the audit log.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::{
    AdminEvent, AdminService, AuditLog, CallRequest, ClientAddr, Decision, DenyReason, EventSink,
    FanOut, Gate, KeyStore, ManualClock, MemoryKeyStore, Metrics, PayGateConfig, PayGateLayer,
    UsageEvent,
};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const ALICE: &str = "pg_ts18alice0000000000000000000000000000000000001";
const BOB: &str = "pg_ts18bob000000000000000000000000000000000000002";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ts18_state.json")
}

fn config() -> PayGateConfig {
    PayGateConfig::default().with_tool_price("search", 2)
}

/// The imported keys behave as they did under 1.8 (same UTC day as the counters).
async fn check_imported<S: KeyStore>(gate: &Gate<S>) {
    let alice = gate.get_key(ALICE).await.unwrap().expect("alice imported");
    assert_eq!(alice.name, "alice");
    assert_eq!(
        (alice.credits, alice.total_spent, alice.total_calls),
        (500, 120, 60)
    );
    assert_eq!(alice.spending_limit, 1000);
    assert_eq!(alice.allowed_tools, ["search", "fetch"]);
    assert_eq!(alice.denied_tools, ["fetch"]);
    assert_eq!(alice.tags.get("plan").map(String::as_str), Some("pro"));
    assert_eq!(alice.ip_allowlist.len(), 2);
    assert_eq!(alice.quota.map(|q| q.daily_call_limit), Some(10));
    assert_eq!(alice.created_at.to_rfc3339(), "2026-01-02T03:04:05+00:00");
    assert_ne!(alice.key_masked, ALICE, "only a masked form is kept");

    let from: IpAddr = "10.1.2.3".parse().unwrap();
    let call = CallRequest::new(ALICE, "search").from_ip(from);
    let d = gate.evaluate(&call).await;
    assert!(d.allowed, "{:?} {}", d.reason, d.detail);
    assert_eq!(d.remaining_credits, Some(498));
    // 9 calls today under 1.8, this was the 10th: the daily quota carried over.
    let d = gate.evaluate(&call).await;
    assert_eq!(d.reason, Some(DenyReason::DailyCallQuotaExceeded));
    let d = gate
        .evaluate(&CallRequest::new(ALICE, "fetch").from_ip(from))
        .await;
    assert_eq!(d.reason, Some(DenyReason::ToolDenied));
    let d = gate
        .evaluate(&CallRequest::new(ALICE, "search").from_ip("172.16.0.1".parse().unwrap()))
        .await;
    assert_eq!(d.reason, Some(DenyReason::IpNotAllowed));
    // A revoked 1.8 key stays revoked.
    let d = gate.evaluate(&CallRequest::new(BOB, "search")).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidApiKey));
}

fn check_report(report: &paygate_mcp::store::state_file::ImportReport) {
    assert_eq!((report.imported, report.skipped), (2, 3), "{report:?}");
    let text = report.reasons.join("\n");
    assert!(text.contains("credits must be a whole number"), "{text}");
    assert!(text.contains("16 to 256"), "{text}");
    assert!(text.contains("ipAllowlist"), "{text}");
    assert!(!text.contains(" at line "), "no parser positions: {text}");
    assert!(
        !text.contains("pg_ts18carol00000000000000000000000000000000000003"),
        "no full key in a report: {text}"
    );
}

#[tokio::test]
async fn a_ts18_state_file_moves_into_the_memory_store_and_is_written_back_hashed() {
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Gate::with_store(config(), MemoryKeyStore::new(), clock).unwrap();
    let report = gate.import_ts18_state(&fixture()).await.unwrap();
    check_report(&report);
    check_imported(&gate).await;

    // Imported again: nothing changes, every key is reported as already there.
    let again = gate.import_ts18_state(&fixture()).await.unwrap();
    assert_eq!(again.imported, 0);
    assert!(again
        .reasons
        .iter()
        .any(|r| r.contains("already in the store")));

    // Saved in this gateway's own format: digests only.
    let dir = std::env::temp_dir().join(format!("paygate-ts18-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("state.json");
    gate.store().save_to(&saved).unwrap();
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(
        !text.contains(ALICE) && !text.contains(BOB),
        "a plaintext key was written"
    );
    let (reloaded, load) = MemoryKeyStore::load_from(&saved).unwrap();
    assert_eq!(load.loaded, 2);
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Gate::with_store(config(), reloaded, clock).unwrap();
    assert_eq!(gate.get_key(ALICE).await.unwrap().unwrap().credits, 498);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_ts18_state_file_moves_into_redis() {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};
    let server = common::redis_server::RedisServer::start();
    let store = RedisKeyStore::connect(
        RedisConfig::new(server.url())
            .with_prefix("ts18:")
            .with_time(RedisTime::Request),
    )
    .await
    .unwrap();
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Arc::new(Gate::with_store(config(), store, clock).unwrap());
    let report = gate.import_ts18_state(&fixture()).await.unwrap();
    check_report(&report);
    check_imported(&gate).await;
    // Nothing in Redis holds a plaintext key: not a key name, not a field, not a value.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = names.join("\n");
    for name in &names {
        let kind: String = redis::cmd("TYPE")
            .arg(name)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind == "hash" {
            let h: Vec<String> = redis::cmd("HGETALL")
                .arg(name)
                .query_async(&mut conn)
                .await
                .unwrap();
            dump.push_str(&h.join("\n"));
        }
    }
    assert!(dump.contains("alice"), "the dump holds the records");
    for key in [ALICE, BOB, &ALICE[3..40]] {
        assert!(!dump.contains(key), "a plaintext key in Redis");
    }
}

/// A 1.8 config file loads as it is: the gate's settings and the gateway's (port, admin key,
/// state file, imported keys) are read; nothing in it is refused.
#[test]
fn a_ts18_config_file_loads_unchanged() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ts18_config.json");
    let cfg = PayGateConfig::from_json_file(&path).expect("a 1.8 config loads");
    assert!(cfg.port.is_some() && cfg.admin_key.is_some() && cfg.state_file.is_some());
    assert!(!cfg.import_keys.is_empty());
    assert!(cfg.server_command.is_some());
    assert!(!cfg.tool_pricing.is_empty());
    // Its bad amount is refused by name, in words.
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text.replacen(
        "\"defaultCreditsPerCall\"",
        "\"defaultCreditsPerCall\": -2, \"x\"",
        1,
    );
    let err = PayGateConfig::from_json_str(&bad).unwrap_err().to_string();
    assert!(
        err.contains("defaultCreditsPerCall") && !err.contains(" line "),
        "{err}"
    );
}

/// 1.8's state file (named by a 1.8 config's `stateFile`) is not this gateway's: loading it
/// as one is refused with the way to import it, and the file is left as it is.
#[test]
fn a_ts18_state_file_given_as_the_state_file_says_how_to_import_it() {
    let before = std::fs::read(fixture()).unwrap();
    let err = MemoryKeyStore::load_from(fixture())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--import-state"), "{err}");
    assert!(!err.contains(" line "), "{err}");
    assert_eq!(std::fs::read(fixture()).unwrap(), before);
}

#[tokio::test]
async fn a_file_that_is_not_a_ts18_state_file_is_refused_whole_and_clearly() {
    let dir = std::env::temp_dir().join(format!("paygate-ts18-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("state.json");
    std::fs::write(&bad, br#"{"keys": {"pg_x": 1}}"#).unwrap();
    let gate = Gate::new(config()).unwrap();
    let err = gate.import_ts18_state(&bad).await.unwrap_err().to_string();
    assert!(err.contains("not a paygate-mcp 1.8 state file"), "{err}");
    assert!(!err.contains(" line "), "{err}");
    assert_eq!(
        gate.key_stats().await.unwrap().total_keys,
        0,
        "nothing imported"
    );
    let missing = gate.import_ts18_state(&dir.join("missing.json")).await;
    assert!(missing.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ─── The admin API as a 1.8 script meets it ────────────────────────────────────────────────

const ADMIN: &str = "admin_ts18_5d1c0a9e7b3f4e2d8c6a0b9f7e5d3c1a";

/// An address inside the allowlists the tests set (`10.0.0.0/8`).
const INSIDE: [u8; 4] = [10, 1, 2, 3];

/// The fields of a 1.8 `GET /keys` item: the state-file record without `key`, plus
/// `keyPrefix` and `expired` (`quota` is optional in 1.8 and checked on its own).
const TS18_LIST_FIELDS: [&str; 21] = [
    "name",
    "credits",
    "totalSpent",
    "totalCalls",
    "createdAt",
    "lastUsedAt",
    "active",
    "spendingLimit",
    "allowedTools",
    "deniedTools",
    "expiresAt",
    "tags",
    "ipAllowlist",
    "quotaDailyCalls",
    "quotaMonthlyCalls",
    "quotaDailyCredits",
    "quotaMonthlyCredits",
    "quotaLastResetDay",
    "quotaLastResetMonth",
    "keyPrefix",
    "expired",
];

/// The fields of 1.8's `GET /balance`.
const TS18_BALANCE_FIELDS: [&str; 14] = [
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
];

/// Every endpoint that names one key in its body, with the rest of a valid body.
fn key_endpoints() -> Vec<(&'static str, Value)> {
    vec![
        ("/topup", json!({"credits": 5})),
        ("/keys/acl", json!({"allowedTools": ["search"]})),
        ("/keys/expiry", json!({"expiresIn": 3600})),
        ("/keys/quota", json!({"dailyCallLimit": 5})),
        ("/keys/tags", json!({"tags": {"plan": "pro"}})),
        ("/keys/ip", json!({"ips": ["10.0.0.0/8"]})),
        ("/limits", json!({"spendingLimit": 50})),
        ("/keys/rotate", json!({})),
        ("/keys/revoke", json!({})),
    ]
}

/// `extra` with the fields of `target` added.
fn with(target: Value, extra: &Value) -> Value {
    let mut body = extra.clone();
    for (k, v) in target.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[derive(Default)]
struct Captured(Mutex<Vec<AdminEvent>>);

impl EventSink for Captured {
    fn admin(&self, e: &AdminEvent) {
        self.0.lock().push(e.clone());
    }
    fn usage(&self, _: &UsageEvent) {}
}

/// A gate with an audit log, metrics and an event capture, and the admin API over it,
/// called in process.
struct App<St: KeyStore> {
    gate: Arc<Gate<St>>,
    clock: Arc<ManualClock>,
    admin: AdminService<St>,
    events: Arc<Captured>,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The `error` text of a refusal, checked to be human: no parser positions.
    fn human_error(&self) -> &str {
        let text = self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {}", self.text));
        assert!(
            !text.contains(" at line ") && !text.contains("column"),
            "parser positions in an error: {text}"
        );
        text
    }
}

impl App<MemoryKeyStore> {
    fn memory(cfg: PayGateConfig) -> Self {
        Self::over(cfg, MemoryKeyStore::new())
    }

    /// A `tools/call` through the gated MCP stack (which also hands alerts and expiries to
    /// the event sink): the JSON-RPC answer.
    async fn call_through_layer(&self, key: &str, tool: &str) -> Value {
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
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }
}

#[cfg(feature = "redis")]
async fn redis_app(
    server: &common::redis_server::RedisServer,
    prefix: &str,
) -> App<paygate_mcp::store::redis::RedisKeyStore> {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};
    let store = RedisKeyStore::connect(
        RedisConfig::new(server.url())
            .with_prefix(prefix)
            .with_time(RedisTime::Request),
    )
    .await
    .unwrap();
    App::over(config(), store)
}

impl<St: KeyStore> App<St> {
    fn over(cfg: PayGateConfig, store: St) -> Self {
        let clock = common::clock_at(common::T0);
        let events = Arc::new(Captured::default());
        let metrics = Arc::new(Metrics::new(clock.clone()));
        let audit = Arc::new(AuditLog::new(clock.clone()));
        let sinks = FanOut(vec![
            events.clone() as Arc<dyn EventSink>,
            metrics.clone(),
            audit.clone(),
        ]);
        let gate = Gate::with_store(cfg, store, clock.clone())
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
        }
    }

    async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .extension(ClientAddr((INSIDE, 40_000).into()))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.admin.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
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

    /// Creates a key: the key and its id.
    async fn create(&self, body: Value) -> (String, String) {
        let r = self.post("/keys", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.json["keyId"].as_str().expect("keyId").to_string();
        (r.json["key"].as_str().unwrap().to_string(), id)
    }

    /// `GET /balance` as the key holder sends it, from inside the test allowlists.
    async fn balance(&self, key: &str) -> Reply {
        self.send(Method::GET, "/balance", &[("x-api-key", key)], "")
            .await
    }

    /// The balance of `key`, which must answer.
    async fn credits(&self, key: &str) -> u64 {
        let r = self.balance(key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["credits"].as_u64().unwrap()
    }

    /// A `tools/call` decided by the gate (charged, metered and counted like a real one).
    async fn call(&self, key: &str, tool: &str) -> Decision {
        let call = CallRequest::new(key, tool).from_ip(IpAddr::from(INSIDE));
        self.gate.evaluate(&call).await
    }

    /// Every page of `GET /keys` from `first`, following `Link: <...>; rel="next"`.
    async fn all_pages(&self, first: &str) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut uri = first.to_string();
        loop {
            let r = self.get(&uri).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
            pages.push(r.json.as_array().expect("a JSON array of keys").clone());
            match r.header("link") {
                None => return pages,
                Some(link) => {
                    uri = link
                        .strip_prefix('<')
                        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                        .unwrap_or_else(|| panic!("not an RFC 8288 next link: {link}"))
                        .to_string();
                }
            }
        }
    }

    /// The `GET /keys` item of the key with id `id` (read across every page).
    async fn listed(&self, id: &str) -> Value {
        let items: Vec<Value> = self.all_pages("/keys").await.concat();
        let mut found = items.into_iter().filter(|k| k["keyId"] == id);
        let item = found.next().unwrap_or_else(|| panic!("{id} not listed"));
        assert!(found.next().is_none(), "{id} listed twice");
        item
    }

    /// The audit entries of `event_type`, newest first.
    async fn audit(&self, event_type: &str) -> Vec<Value> {
        let r = self.get(&format!("/audit?types={event_type}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json["events"].as_array().unwrap().clone()
    }
}

fn assert_fields(v: &Value, fields: &[&str], what: &str) {
    let missing: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|f| v.get(f).is_none())
        .collect();
    assert!(missing.is_empty(), "{what} lacks {missing:?}: {v}");
}

fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
        .to_utc()
}

#[tokio::test]
async fn ts18_create_key_takes_its_fields_and_answers_with_the_key_once() {
    let app = App::memory(config());
    // The body of 1.8's README examples: every field 1.8 takes at creation.
    let r = app
        .post(
            "/keys",
            json!({
                "name": "alice",
                "credits": 500,
                "allowedTools": ["search", "fetch"],
                "deniedTools": ["fetch"],
                "expiresIn": 86400,
                "quota": {"dailyCallLimit": 10, "monthlyCallLimit": 100,
                          "dailyCreditLimit": 50, "monthlyCreditLimit": 500},
                "tags": {"plan": "pro", "team": "search"},
                "ipAllowlist": ["10.0.0.0/8", "192.168.1.0/24"],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = &r.json;
    assert_fields(
        created,
        &[
            "key",
            "name",
            "credits",
            "allowedTools",
            "deniedTools",
            "expiresAt",
            "tags",
            "ipAllowlist",
            "message",
        ],
        "POST /keys",
    );
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("pg_") && key.len() == 51, "{key}");
    assert_eq!(created["name"], "alice");
    assert_eq!(created["credits"], 500);
    assert_eq!(created["allowedTools"], json!(["search", "fetch"]));
    assert_eq!(created["deniedTools"], json!(["fetch"]));
    assert_eq!(
        instant(&created["expiresAt"]).to_rfc3339(),
        "2026-03-16T10:00:00+00:00"
    );
    assert_eq!(created["tags"], json!({"plan": "pro", "team": "search"}));
    assert_eq!(
        created["ipAllowlist"],
        json!(["10.0.0.0/8", "192.168.1.0/24"])
    );
    assert!(!created["message"].as_str().unwrap().is_empty());
    assert!(created["keyId"].as_str().unwrap().starts_with("kid_"));

    // The key works at once, with what was set.
    let b = app.balance(key).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(b.json["credits"], 500);
    assert_eq!(
        b.json["quota"],
        json!({"dailyCallLimit": 10, "monthlyCallLimit": 100,
               "dailyCreditLimit": 50, "monthlyCreditLimit": 500})
    );
    assert!(app.call(key, "search").await.allowed);
    assert_eq!(
        app.call(key, "fetch").await.reason,
        Some(DenyReason::ToolDenied)
    );

    // expiresAt as JavaScript's toISOString writes it; absent credits and name default as
    // in 1.8 (100, "unnamed").
    let r = app
        .post("/keys", json!({"expiresAt": "2026-12-31T23:59:59.000Z"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        instant(&r.json["expiresAt"]),
        instant(&json!("2026-12-31T23:59:59Z"))
    );
    assert_eq!(r.json["credits"], 100);
    assert_eq!(r.json["name"], "unnamed");

    // A bad amount is refused in words, not with parser positions.
    for bad in [json!(-50), json!(-0.5e3), json!("fifty"), json!(1e300)] {
        let r = app
            .post("/keys", json!({"name": "x", "credits": bad}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "credits {bad}: {}",
            r.text
        );
        assert!(r.human_error().contains("credits"), "{}", r.text);
    }
}

#[tokio::test]
async fn ts18_list_keys_is_an_array_of_1_8_records() {
    let app = App::memory(config());
    let (alice, alice_id) = app
        .create(json!({"name": "alice", "credits": 100, "quota": {"dailyCallLimit": 10}}))
        .await;
    let (bob, bob_id) = app
        .create(json!({"name": "bob", "credits": 1, "expiresIn": 60}))
        .await;
    assert!(app.call(&alice, "search").await.allowed);
    assert!(app.call(&alice, "search").await.allowed);
    assert_eq!(
        app.call(&bob, "search").await.reason,
        Some(DenyReason::InsufficientCredits)
    );

    let r = app.get("/keys").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.header("x-total-count"), Some("2"));
    assert_eq!(r.header("link"), None, "one page holds every key");
    let items = r.json.as_array().expect("1.8 answers a JSON array");
    assert_eq!(items.len(), 2);
    for item in items {
        assert_fields(item, &TS18_LIST_FIELDS, "a GET /keys item");
    }
    for key in [&alice, &bob] {
        assert!(!r.text.contains(key.as_str()), "a listing shows a full key");
    }
    let a = items
        .iter()
        .find(|k| k["keyId"] == alice_id.as_str())
        .unwrap();
    assert_eq!(a["name"], "alice");
    assert_eq!(
        (&a["credits"], &a["totalSpent"], &a["totalCalls"]),
        (&json!(96), &json!(4), &json!(2))
    );
    assert_eq!((&a["active"], &a["expired"]), (&json!(true), &json!(false)));
    assert_eq!(a["spendingLimit"], 0);
    assert_eq!(
        (&a["allowedTools"], &a["deniedTools"]),
        (&json!([]), &json!([]))
    );
    assert_eq!((&a["tags"], &a["ipAllowlist"]), (&json!({}), &json!([])));
    assert_eq!(a["quota"]["dailyCallLimit"], 10);
    assert_eq!(
        (
            &a["quotaDailyCalls"],
            &a["quotaMonthlyCalls"],
            &a["quotaDailyCredits"],
            &a["quotaMonthlyCredits"]
        ),
        (&json!(2), &json!(2), &json!(4), &json!(4))
    );
    assert_eq!(a["quotaLastResetDay"], "2026-03-15");
    assert_eq!(a["quotaLastResetMonth"], "2026-03");
    assert_eq!(instant(&a["createdAt"]), common::now(&app.clock));
    assert_eq!(instant(&a["lastUsedAt"]), common::now(&app.clock));
    assert_eq!(a["expiresAt"], Value::Null);
    // keyPrefix: the head of the key and "..." (SPEC §11: only the masked head is shown).
    let prefix = a["keyPrefix"].as_str().unwrap();
    let head = prefix.strip_suffix("...").expect("keyPrefix ends with ...");
    assert!(head.len() >= 3 && alice.starts_with(head), "{prefix}");

    let b = items
        .iter()
        .find(|k| k["keyId"] == bob_id.as_str())
        .unwrap();
    assert_eq!(
        (&b["credits"], &b["totalSpent"], &b["totalCalls"]),
        (&json!(1), &json!(0), &json!(0))
    );
    assert_eq!(b["quota"], Value::Null, "no quota of its own");
    assert_eq!(
        instant(&b["expiresAt"]),
        common::now(&app.clock) + chrono::Duration::seconds(60)
    );

    // Past its expiry bob is listed as expired, still active (1.8 keeps the two apart).
    app.clock.advance_secs(120);
    let r = app.get("/keys").await;
    let b = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyId"] == bob_id.as_str())
        .unwrap()
        .clone();
    assert_eq!((&b["expired"], &b["active"]), (&json!(true), &json!(true)));
}

#[tokio::test]
async fn ts18_topup_revoke_and_rotate_by_key() {
    let app = App::memory(config());
    let (key, _) = app.create(json!({"name": "alice", "credits": 100})).await;

    let r = app.post("/topup", json!({"key": key, "credits": 50})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["credits"], 150, "1.8 answers the new balance");
    assert_eq!(app.credits(&key).await, 150);
    for bad in [
        json!({"key": key, "credits": -50}),
        json!({"key": key, "credits": "fifty"}),
        json!({"key": key}),
    ] {
        let r = app.post("/topup", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        r.human_error();
    }
    assert_eq!(
        app.credits(&key).await,
        150,
        "a refused top-up adds nothing"
    );
    let unknown = format!("pg_{}", "0".repeat(48));
    let r = app
        .post("/topup", json!({"key": unknown, "credits": 5}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Rotate: the new key carries everything, the old one is dead at once.
    assert!(app.call(&key, "search").await.allowed);
    let r = app.post("/keys/rotate", json!({"key": key})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_fields(&r.json, &["newKey", "name", "credits", "message"], "rotate");
    let new_key = r.json["newKey"].as_str().unwrap().to_string();
    assert!(new_key.starts_with("pg_") && new_key != key);
    assert_eq!(
        (&r.json["name"], &r.json["credits"]),
        (&json!("alice"), &json!(148))
    );
    assert_eq!(app.balance(&key).await.status, StatusCode::NOT_FOUND);
    let b = app.balance(&new_key).await;
    assert_eq!(
        (
            &b.json["credits"],
            &b.json["totalSpent"],
            &b.json["totalCalls"]
        ),
        (&json!(148), &json!(2), &json!(1))
    );
    assert_eq!(
        app.call(&key, "search").await.reason,
        Some(DenyReason::InvalidApiKey)
    );
    let again = app.post("/keys/rotate", json!({"key": key})).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);

    // Revoke.
    let r = app.post("/keys/revoke", json!({"key": new_key})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_ne!(app.balance(&new_key).await.status, StatusCode::OK);
    assert_eq!(
        app.call(&new_key, "search").await.reason,
        Some(DenyReason::InvalidApiKey)
    );
    let listed = app.get("/keys").await;
    assert_eq!(listed.json[0]["active"], false);
    let r = app.post("/keys/revoke", json!({"key": unknown})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ts18_key_policies_take_1_8_fields_and_answer_what_1_8_scripts_read() {
    let app = App::memory(config());
    let (key, _) = app.create(json!({"name": "alice", "credits": 100})).await;

    // ACL: {key, allowedTools, deniedTools} → {allowedTools, deniedTools}.
    let r = app
        .post(
            "/keys/acl",
            json!({"key": key, "allowedTools": ["search", "fetch"], "deniedTools": ["fetch"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["allowedTools"], json!(["search", "fetch"]));
    assert_eq!(r.json["deniedTools"], json!(["fetch"]));
    assert_eq!(
        app.call(&key, "other").await.reason,
        Some(DenyReason::ToolNotAllowed)
    );
    assert_eq!(
        app.call(&key, "fetch").await.reason,
        Some(DenyReason::ToolDenied)
    );
    let r = app
        .post(
            "/keys/acl",
            json!({"key": key, "allowedTools": [], "deniedTools": []}),
        )
        .await;
    assert_eq!(r.json["allowedTools"], json!([]));

    // Quota: flat limits (0 = unlimited) → {quota}; {remove: true} falls back to global.
    let r = app
        .post(
            "/keys/quota",
            json!({"key": key, "dailyCallLimit": 2, "monthlyCallLimit": 0,
                   "dailyCreditLimit": 0, "monthlyCreditLimit": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["quota"],
        json!({"dailyCallLimit": 2, "monthlyCallLimit": 0,
               "dailyCreditLimit": 0, "monthlyCreditLimit": 0})
    );
    assert!(app.call(&key, "search").await.allowed);
    assert!(app.call(&key, "search").await.allowed);
    assert_eq!(
        app.call(&key, "search").await.reason,
        Some(DenyReason::DailyCallQuotaExceeded)
    );
    let r = app
        .post("/keys/quota", json!({"key": key, "remove": true}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.balance(&key).await.json["quota"], Value::Null);
    assert!(app.call(&key, "search").await.allowed);

    // Expiry: expiresIn seconds, expiresAt in toISOString form, expiresAt null removes.
    let r = app
        .post("/keys/expiry", json!({"key": key, "expiresIn": 3600}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        instant(&r.json["expiresAt"]),
        common::now(&app.clock) + chrono::Duration::hours(1)
    );
    let r = app
        .post(
            "/keys/expiry",
            json!({"key": key, "expiresAt": "2027-01-01T00:00:00.000Z"}),
        )
        .await;
    assert_eq!(
        instant(&r.json["expiresAt"]),
        instant(&json!("2027-01-01T00:00:00Z"))
    );
    let r = app
        .post("/keys/expiry", json!({"key": key, "expiresAt": null}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["expiresAt"], Value::Null);

    // Tags merge; a null value deletes; → {tags}.
    let r = app
        .post(
            "/keys/tags",
            json!({"key": key, "tags": {"plan": "pro", "team": "a"}}),
        )
        .await;
    assert_eq!(r.json["tags"], json!({"plan": "pro", "team": "a"}));
    let r = app
        .post(
            "/keys/tags",
            json!({"key": key, "tags": {"team": null, "region": "eu"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["tags"], json!({"plan": "pro", "region": "eu"}));

    // Search by tags → {keys, count}, masked.
    let r = app
        .post("/keys/search", json!({"tags": {"plan": "pro"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["count"], 1);
    let found = &r.json["keys"][0];
    assert_eq!(found["name"], "alice");
    assert_fields(found, &TS18_LIST_FIELDS, "a /keys/search item");
    assert!(!r.text.contains(key.as_str()), "search shows a full key");
    let r = app
        .post("/keys/search", json!({"tags": {"plan": "free"}}))
        .await;
    assert_eq!((&r.json["count"], &r.json["keys"]), (&json!(0), &json!([])));

    // IP allowlist: 1.8 sends `ips` → {ipAllowlist}.
    let r = app
        .post("/keys/ip", json!({"key": key, "ips": ["10.0.0.0/8"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["ipAllowlist"], json!(["10.0.0.0/8"]));
    assert!(app.call(&key, "search").await.allowed, "10.1.2.3 is inside");
    let outside = CallRequest::new(&key, "search").from_ip("172.16.0.1".parse().unwrap());
    assert_eq!(
        app.gate.evaluate(&outside).await.reason,
        Some(DenyReason::IpNotAllowed)
    );

    // Spending limit → {spendingLimit}; /balance's remainingBudget follows it.
    let spent = app.balance(&key).await.json["totalSpent"].as_u64().unwrap();
    let r = app
        .post("/limits", json!({"key": key, "spendingLimit": spent + 10}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["spendingLimit"], spent + 10);
    let b = app.balance(&key).await;
    assert_eq!(
        (&b.json["spendingLimit"], &b.json["remainingBudget"]),
        (&json!(spent + 10), &json!(10))
    );
    app.post("/limits", json!({"key": key, "spendingLimit": 0}))
        .await;
    assert_eq!(
        app.balance(&key).await.json["remainingBudget"],
        Value::Null,
        "unlimited"
    );
}

#[tokio::test]
async fn ts18_balance_answers_a_key_holder_with_1_8_fields() {
    let app = App::memory(config());
    let (key, _) = app
        .create(
            json!({"name": "alice", "credits": 20, "tags": {"plan": "pro"},
                       "quota": {"dailyCallLimit": 5}}),
        )
        .await;
    assert!(app.call(&key, "search").await.allowed);
    let r = app.balance(&key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_fields(&r.json, &TS18_BALANCE_FIELDS, "GET /balance");
    assert_eq!(r.json["name"], "alice");
    assert_eq!(
        (
            &r.json["credits"],
            &r.json["totalSpent"],
            &r.json["totalCalls"]
        ),
        (&json!(18), &json!(2), &json!(1))
    );
    assert_eq!(r.json["remainingBudget"], Value::Null);
    assert_eq!(instant(&r.json["lastUsedAt"]), common::now(&app.clock));
    assert_eq!(r.json["tags"], json!({"plan": "pro"}));
    assert_eq!(r.json["quota"]["dailyCallLimit"], 5);
    assert_eq!(
        r.json["quotaUsage"],
        json!({"dailyCalls": 1, "monthlyCalls": 1, "dailyCredits": 2, "monthlyCredits": 2})
    );
    assert!(
        !r.text.contains(key.as_str()),
        "the key is not echoed whole"
    );

    // An unknown key answers 404 as in 1.8; no key at all 401.
    let unknown = format!("pg_{}", "ab".repeat(24));
    assert_eq!(app.balance(&unknown).await.status, StatusCode::NOT_FOUND);
    let r = app.send(Method::GET, "/balance", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Two keys, alice (2 calls allowed) and bob (1 call denied for credits).
async fn two_keys_with_usage<St: KeyStore>(app: &App<St>) -> (String, String) {
    let (alice, _) = app.create(json!({"name": "alice", "credits": 100})).await;
    let (bob, _) = app.create(json!({"name": "bob", "credits": 1})).await;
    assert!(app.call(&alice, "search").await.allowed);
    assert!(app.call(&alice, "search").await.allowed);
    assert!(!app.call(&bob, "search").await.allowed);
    (alice, bob)
}

#[tokio::test]
async fn ts18_usage_exports_events_as_json_and_csv() {
    let app = App::memory(config());
    let (alice, bob) = two_keys_with_usage(&app).await;

    let r = app.get("/usage").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["count"], 3);
    let events = r.json["events"].as_array().unwrap();
    for e in events {
        assert_fields(
            e,
            &[
                "timestamp",
                "apiKey",
                "keyName",
                "tool",
                "creditsCharged",
                "allowed",
            ],
            "a usage event",
        );
    }
    let denied: Vec<&Value> = events.iter().filter(|e| e["allowed"] == false).collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(
        (&denied[0]["keyName"], &denied[0]["denyReason"]),
        (&json!("bob"), &json!("insufficient_credits"))
    );
    let charged: u64 = events
        .iter()
        .map(|e| e["creditsCharged"].as_u64().unwrap())
        .sum();
    assert_eq!(charged, 4);
    for key in [&alice, &bob] {
        assert!(!r.text.contains(key.as_str()), "usage shows a full key");
    }

    // `since` as a date (1.8 compares ISO strings, so a date alone works there).
    assert_eq!(app.get("/usage?since=2024-01-01").await.json["count"], 3);
    assert_eq!(app.get("/usage?since=2026-03-15").await.json["count"], 3);
    assert_eq!(app.get("/usage?since=2026-03-16").await.json["count"], 0);
    assert_eq!(
        app.get("/usage?since=2026-03-15T10:00:01Z").await.json["count"],
        0
    );

    // CSV: 1.8's columns first, in 1.8's order.
    let r = app.get("/usage?format=csv").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let mut lines = r.text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("timestamp,apiKey,keyName,tool,creditsCharged,allowed,denyReason"),
        "{}",
        r.text
    );
    assert_eq!(lines.filter(|l| !l.is_empty()).count(), 3);
    assert!(r.text.contains("insufficient_credits"));

    // Any other format is JSON, as in 1.8.
    let r = app.get("/usage?format=xml").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["count"], 3);
}

#[tokio::test]
async fn ts18_status_carries_usage_totals_and_the_keys() {
    let mut cfg = config().with_shadow_mode(false);
    cfg.webhook_url = Some("https://hooks.example/in".into());
    cfg.webhook_secret = Some("whsec_0123456789abcdef".into());
    let app = App::memory(cfg);
    let (alice, bob) = two_keys_with_usage(&app).await;
    app.post("/keys/revoke", json!({"key": bob})).await;

    let r = app.get("/status").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = &r.json;
    assert_fields(
        s,
        &[
            "name",
            "shadowMode",
            "activeKeys",
            "keys",
            "usage",
            "eventCount",
            "config",
        ],
        "GET /status",
    );
    assert_eq!(s["shadowMode"], false);
    assert_eq!(s["activeKeys"], 1);
    assert_eq!(s["eventCount"], 3);
    assert_eq!(s["keys"].as_array().unwrap().len(), 2);
    for item in s["keys"].as_array().unwrap() {
        assert_fields(item, &TS18_LIST_FIELDS, "a /status key");
    }
    let u = &s["usage"];
    assert_eq!(
        (&u["totalCalls"], &u["totalCreditsSpent"], &u["totalDenied"]),
        (&json!(3), &json!(4), &json!(1))
    );
    assert_eq!(
        u["perTool"]["search"],
        json!({"calls": 3, "credits": 4, "denied": 1})
    );
    assert_eq!(
        u["perKey"]["alice"],
        json!({"calls": 2, "credits": 4, "denied": 0})
    );
    assert_eq!(
        u["perKey"]["bob"],
        json!({"calls": 1, "credits": 0, "denied": 1})
    );
    assert_eq!(u["denyReasons"], json!({"insufficient_credits": 1}));
    let c = &s["config"];
    assert_fields(
        c,
        &[
            "defaultCreditsPerCall",
            "globalRateLimitPerMin",
            "toolPricing",
            "refundOnFailure",
            "webhookUrl",
        ],
        "/status config",
    );
    assert_eq!(c["defaultCreditsPerCall"], 1);
    assert_eq!(c["toolPricing"]["search"]["creditsPerCall"], 2);
    assert_eq!(c["webhookSecret"], "***");
    for secret in [
        "whsec_0123456789abcdef",
        ADMIN,
        alice.as_str(),
        bob.as_str(),
    ] {
        assert!(!r.text.contains(secret), "/status shows a secret");
    }
}

#[tokio::test]
async fn ts18_analytics_answers_the_readme_queries() {
    let app = App::memory(config());
    two_keys_with_usage(&app).await;

    let r = app
        .get("/analytics?from=2026-03-15T00:00:00Z&to=2026-03-16T00:00:00Z&granularity=hourly")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let a = &r.json;
    assert_fields(
        a,
        &[
            "from",
            "to",
            "granularity",
            "timeSeries",
            "tools",
            "topConsumers",
            "trend",
            "summary",
        ],
        "GET /analytics",
    );
    assert_eq!(a["granularity"], "hourly");
    let series = a["timeSeries"].as_array().unwrap();
    assert_eq!(series.len(), 24);
    for bucket in series {
        assert_fields(
            bucket,
            &["start", "end", "calls", "allowed", "denied", "credits"],
            "a time bucket",
        );
    }
    let ten = series
        .iter()
        .find(|b| instant(&b["start"]).to_rfc3339() == "2026-03-15T10:00:00+00:00")
        .unwrap();
    assert_eq!(
        (
            &ten["calls"],
            &ten["allowed"],
            &ten["denied"],
            &ten["credits"]
        ),
        (&json!(3), &json!(2), &json!(1), &json!(4))
    );
    let tool = &a["tools"][0];
    assert_fields(
        tool,
        &[
            "tool",
            "calls",
            "allowed",
            "denied",
            "credits",
            "successRate",
            "avgCreditsPerCall",
        ],
        "a tool breakdown",
    );
    assert_eq!(
        (&tool["tool"], &tool["calls"]),
        (&json!("search"), &json!(3))
    );
    assert_eq!(tool["avgCreditsPerCall"], 2.0);
    let top = a["topConsumers"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    for c in top {
        assert_fields(
            c,
            &["keyName", "calls", "credits", "denied", "topTool"],
            "a top consumer",
        );
    }
    assert_eq!(
        (&top[0]["keyName"], &top[0]["credits"], &top[0]["topTool"]),
        (&json!("alice"), &json!(4), &json!("search"))
    );
    for part in ["current", "previous", "change"] {
        assert_fields(&a["trend"][part], &["calls", "credits", "denied"], part);
    }
    assert_eq!(a["trend"]["current"]["calls"], 3);
    assert_eq!(
        a["trend"]["change"]["calls"],
        Value::Null,
        "no previous calls"
    );
    let s = &a["summary"];
    assert_fields(
        s,
        &[
            "totalCalls",
            "totalCredits",
            "totalDenied",
            "uniqueKeys",
            "uniqueTools",
            "successRate",
        ],
        "the summary",
    );
    assert_eq!(
        (
            &s["totalCalls"],
            &s["totalCredits"],
            &s["uniqueKeys"],
            &s["uniqueTools"]
        ),
        (&json!(3), &json!(4), &json!(2), &json!(1))
    );

    let r = app.get("/analytics?granularity=daily&topN=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["granularity"], "daily");
    assert_eq!(r.json["topConsumers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn ts18_alert_rules_from_the_readme_fire_and_are_consumed() {
    let app = App::memory(config());
    let rules = json!([
        {"type": "spending_threshold", "threshold": 80},
        {"type": "credits_low", "threshold": 50},
        {"type": "quota_warning", "threshold": 90},
        {"type": "key_expiry_soon", "threshold": 86400},
        {"type": "rate_limit_spike", "threshold": 10, "cooldownSeconds": 60}
    ]);
    let r = app.post("/alerts", json!({"rules": rules})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["rules"], rules);

    let r = app.get("/alerts").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_fields(&r.json, &["alerts", "count", "rules"], "GET /alerts");
    assert_eq!(
        (&r.json["count"], &r.json["alerts"]),
        (&json!(0), &json!([]))
    );
    assert_eq!(r.json["rules"], rules);

    let (key, _) = app.create(json!({"name": "alice", "credits": 52})).await;
    assert!(app.call(&key, "search").await.allowed);
    let r = app.get("/alerts").await;
    let alerts = r.json["alerts"].as_array().unwrap();
    assert_eq!(r.json["count"], alerts.len());
    let low = alerts
        .iter()
        .find(|a| a["type"] == "credits_low")
        .unwrap_or_else(|| panic!("credits_low did not fire: {}", r.text));
    assert_fields(
        low,
        &[
            "type",
            "timestamp",
            "keyPrefix",
            "keyName",
            "message",
            "threshold",
            "currentValue",
            "metadata",
        ],
        "an alert",
    );
    assert_eq!(
        (&low["keyName"], &low["threshold"], &low["currentValue"]),
        (&json!("alice"), &json!(50), &json!(50.0))
    );
    assert!(!r.text.contains(key.as_str()));
    let r = app.get("/alerts").await;
    assert_eq!(r.json["count"], 0, "GET /alerts consumes the queue");

    let r = app
        .post(
            "/alerts",
            json!({"rules": [{"type": "no_such_alert", "threshold": 1}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.human_error();
}

#[tokio::test]
async fn ts18_audit_query_export_and_stats() {
    let app = App::memory(config());
    let (key, _) = app.create(json!({"name": "alice", "credits": 100})).await;
    app.post("/topup", json!({"key": key, "credits": 5})).await;
    app.send(
        Method::GET,
        "/status",
        &[("x-admin-key", "wrong-admin-key-0000")],
        "",
    )
    .await;

    let r = app
        .get("/audit?types=key.created,key.topup&actor=admin&limit=10")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 2);
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    for e in events {
        assert_fields(
            e,
            &["id", "timestamp", "type", "actor", "message", "metadata"],
            "an audit event",
        );
        assert_eq!(e["actor"], "admin");
    }
    assert_eq!(
        (&events[0]["type"], &events[1]["type"]),
        (&json!("key.topup"), &json!("key.created")),
        "newest first, as in 1.8"
    );
    assert_eq!(events[0]["metadata"]["creditsAdded"], 5);
    assert_eq!(events[0]["metadata"]["newBalance"], 105);
    assert!(events[0]["metadata"]["keyMasked"].is_string());
    assert_eq!(app.audit("admin.auth_failed").await.len(), 1);
    assert_eq!(
        app.get("/audit?since=2026-03-15&until=2026-03-16")
            .await
            .json["total"],
        app.get("/audit").await.json["total"]
    );

    let r = app.get("/audit/export").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_fields(&r.json, &["count", "events"], "GET /audit/export");
    assert_eq!(r.json["count"], r.json["events"].as_array().unwrap().len());
    let r = app.get("/audit/export?format=csv").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        r.text.starts_with("id,timestamp,type,actor,message"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(key.as_str()));

    let r = app.get("/audit/stats").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_fields(
        &r.json,
        &["totalEvents", "oldestEvent", "newestEvent", "eventsByType"],
        "GET /audit/stats",
    );
    assert_eq!(r.json["eventsByType"]["key.created"], 1);
    assert_eq!(r.json["eventsByType"]["key.topup"], 1);
}

#[tokio::test]
async fn ts18_public_endpoints_answer_without_the_admin_key() {
    let app = App::memory(config());
    two_keys_with_usage(&app).await;
    let r = app.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    for line in [
        r#"paygate_tool_calls_total{tool="search",status="allowed"} 2"#,
        r#"paygate_tool_calls_total{tool="search",status="denied"} 1"#,
        r#"paygate_credits_charged_total{tool="search"} 4"#,
        r#"paygate_denials_total{reason="insufficient_credits"} 1"#,
    ] {
        assert!(r.text.contains(line), "{line} not in\n{}", r.text);
    }
    for name in ["paygate_uptime_seconds", "paygate_http_requests_total"] {
        assert!(r.text.contains(name), "{name} not in\n{}", r.text);
    }
    for path in ["/pricing", "/.well-known/mcp-payment"] {
        let r = app.send(Method::GET, path, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json["billingModel"], "credits", "{path}: {}", r.text);
    }
    let r = app
        .send(Method::GET, "/.well-known/mcp-payment", &[], "")
        .await;
    assert!(r.json["authMethods"]
        .as_array()
        .unwrap()
        .contains(&json!("X-API-Key")));
}

/// Every response field a 1.8 admin endpoint answered is still there (SPEC §11: "Admin
/// responses keep 1.8's fields alongside ours"). 1.8 answered a `message` on every write
/// and `since` on `/usage`, `offset` and `limit` on `/audit`.
#[tokio::test]
async fn ts18_every_1_8_response_field_is_kept() {
    let app = App::memory(config());
    let (key, _) = app.create(json!({"name": "alice", "credits": 100})).await;
    let (other, _) = app.create(json!({"name": "bob"})).await;
    let mut missing = Vec::new();
    let mut check = |what: &str, r: &Reply, fields: &[&str]| {
        assert!(r.status.is_success(), "{what}: {}", r.text);
        for f in fields {
            if r.json.get(f).is_none() {
                missing.push(format!("{what} → {f}"));
            }
        }
    };
    let writes = [
        (
            "/topup",
            json!({"key": key, "credits": 5}),
            vec!["credits", "message"],
        ),
        (
            "/keys/acl",
            json!({"key": key, "allowedTools": ["search"]}),
            vec!["allowedTools", "deniedTools", "message"],
        ),
        (
            "/keys/expiry",
            json!({"key": key, "expiresIn": 3600}),
            vec!["expiresAt", "message"],
        ),
        (
            "/keys/quota",
            json!({"key": key, "dailyCallLimit": 5}),
            vec!["quota", "message"],
        ),
        (
            "/keys/quota (remove)",
            json!({"key": key, "remove": true}),
            vec!["message"],
        ),
        (
            "/keys/tags",
            json!({"key": key, "tags": {"plan": "pro"}}),
            vec!["tags", "message"],
        ),
        (
            "/keys/ip",
            json!({"key": key, "ips": ["10.0.0.0/8"]}),
            vec!["ipAllowlist", "message"],
        ),
        (
            "/limits",
            json!({"key": key, "spendingLimit": 50}),
            vec!["spendingLimit", "message"],
        ),
        (
            "/alerts",
            json!({"rules": [{"type": "credits_low", "threshold": 5}]}),
            vec!["rules", "message"],
        ),
        ("/keys/revoke", json!({"key": other}), vec!["message"]),
        (
            "/keys/rotate",
            json!({"key": key}),
            vec!["message", "newKey", "name", "credits"],
        ),
    ];
    for (label, body, fields) in writes {
        let path = label.split(' ').next().unwrap();
        let r = app.post(path, body).await;
        check(&format!("POST {label}"), &r, &fields);
    }
    let reads = [
        ("/usage", vec!["count", "since", "events"]),
        ("/audit", vec!["total", "offset", "limit", "events"]),
        ("/audit/export", vec!["count", "events"]),
        ("/alerts", vec!["alerts", "count", "rules"]),
    ];
    for (path, fields) in reads {
        let r = app.get(path).await;
        check(&format!("GET {path}"), &r, &fields);
    }
    assert!(
        missing.is_empty(),
        "1.8 response fields missing: {missing:#?}"
    );
}

/// 1.8 pages `GET /audit` with `offset` (and says which page it answered): a script that
/// walks the log with offset=0,1,2... must not see the first page again and again.
#[tokio::test]
async fn ts18_audit_pages_with_offset() {
    let app = App::memory(config());
    for name in ["a", "b", "c"] {
        app.create(json!({"name": name})).await;
    }
    let mut names = Vec::new();
    for offset in 0..3 {
        let r = app
            .get(&format!("/audit?types=key.created&limit=1&offset={offset}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["total"], 3);
        let events = r.json["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{}", r.text);
        names.push(events[0]["metadata"]["name"].as_str().unwrap().to_string());
    }
    assert_eq!(names, ["c", "b", "a"], "offset walks the log newest first");
}

/// 1.8's `/.well-known/mcp-payment` and `/pricing` fields (SEP-2007 metadata; `/pricing` is
/// `{server: <the same>, tools: [{name, creditsPerCall, ...}]}`), which agents read.
#[tokio::test]
async fn ts18_payment_metadata_and_pricing_keep_1_8_fields() {
    let app = App::memory(config());
    let r = app
        .send(Method::GET, "/.well-known/mcp-payment", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ts18_metadata = [
        "specVersion",
        "serverName",
        "billingModel",
        "defaultCreditsPerCall",
        "globalRateLimitPerMin",
        "shadowMode",
        "authMethods",
        "oauthSupported",
        "paymentErrorCode",
        "pricingEndpoint",
        "globalQuota",
        "toolCount",
    ];
    let missing: Vec<&str> = ts18_metadata
        .iter()
        .copied()
        .filter(|f| r.json.get(f).is_none())
        .collect();
    let p = app.send(Method::GET, "/pricing", &[], "").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        missing.is_empty()
            && r.json["defaultCreditsPerCall"] == 1
            && r.json["paymentErrorCode"] == -32402
            && r.json["pricingEndpoint"] == "/pricing",
        "/.well-known/mcp-payment lacks 1.8's {missing:?}: {}",
        r.text
    );
    assert!(
        p.json["server"]["defaultCreditsPerCall"] == 1 && p.json["tools"].is_array(),
        "/pricing is not 1.8's {{server, tools: [...]}}: {}",
        p.text
    );
    for tool in p.json["tools"].as_array().unwrap() {
        assert_fields(tool, &["name", "creditsPerCall"], "a /pricing tool");
    }
}

/// 1.8's handler reads the number of top consumers from `top` (its README says `topN`,
/// which 1.8 ignored): a script that limited consumers with `top` gets what it asked for.
#[tokio::test]
async fn ts18_analytics_takes_top_as_1_8_read_it() {
    let app = App::memory(config());
    two_keys_with_usage(&app).await;
    let r = app.get("/analytics?top=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["topConsumers"].as_array().unwrap().len(),
        1,
        "{}",
        r.json["topConsumers"]
    );
}

/// A wrong type or amount in a key endpoint's body is refused naming the field, as the other
/// admin bodies are (`POST /keys {"credits": -50}` → "invalid 'credits': ..."): the fields
/// that name the key are merged into these bodies, which must not lose the name.
#[tokio::test]
async fn key_endpoint_errors_name_the_offending_field() {
    let app = App::memory(config());
    let (key, _) = app.create(json!({"name": "alice"})).await;
    let cases = [
        ("/keys", json!({"credits": -50}), &["credits"][..]),
        ("/topup", json!({"key": key, "credits": -50}), &["credits"]),
        (
            "/topup",
            json!({"key": key, "credits": "fifty"}),
            &["credits"],
        ),
        ("/topup", json!({"keyId": 42, "credits": 5}), &["keyId"]),
        ("/topup", json!({"key": 42, "credits": 5}), &["key"]),
        (
            "/limits",
            json!({"key": key, "spendingLimit": -1}),
            &["spendingLimit"],
        ),
        (
            "/keys/quota",
            json!({"key": key, "dailyCallLimit": -1}),
            &["dailyCallLimit"],
        ),
        ("/keys/tags", json!({"key": key, "tags": "plan"}), &["tags"]),
        (
            "/keys/ip",
            json!({"key": key, "ips": "10.0.0.0/8"}),
            &["ips", "ipAllowlist"],
        ),
        (
            "/keys/acl",
            json!({"key": key, "allowedTools": "search"}),
            &["allowedTools"],
        ),
    ];
    let mut unnamed = Vec::new();
    for (path, body, names) in cases {
        let r = app.post(path, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            r.text
        );
        let error = r.human_error();
        if !names.iter().any(|n| error.contains(&format!("'{n}'"))) {
            unnamed.push(format!("{path} {body} → {error}"));
        }
    }
    assert!(
        unnamed.is_empty(),
        "errors that do not name the field: {unnamed:#?}"
    );
}

// ─── Key ids (SPEC §10) ──────────────────────────────────────────────────────────────────

/// Every endpoint that takes `key` does its work with `keyId` instead, answers with the id,
/// and the effect shows on the key (read with the key itself).
async fn every_key_endpoint_takes_the_key_id<St: KeyStore>(app: &App<St>) {
    let (key, id) = app.create(json!({"name": "alice", "credits": 100})).await;
    let by_id = |extra: Value| with(json!({"keyId": id}), &extra);

    let r = app.post("/topup", by_id(json!({"credits": 25}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (&r.json["credits"], &r.json["keyId"]),
        (&json!(125), &json!(id))
    );
    assert_eq!(app.credits(&key).await, 125, "topped up by id, read by key");

    let r = app
        .post("/keys/acl", by_id(json!({"allowedTools": ["search"]})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(
        app.balance(&key).await.json["allowedTools"],
        json!(["search"])
    );

    let r = app
        .post("/keys/expiry", by_id(json!({"expiresIn": 3600})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(
        instant(&app.balance(&key).await.json["expiresAt"]),
        common::now(&app.clock) + chrono::Duration::hours(1)
    );

    let r = app
        .post("/keys/quota", by_id(json!({"dailyCallLimit": 7})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(app.balance(&key).await.json["quota"]["dailyCallLimit"], 7);

    let r = app
        .post("/keys/tags", by_id(json!({"tags": {"plan": "pro"}})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(app.balance(&key).await.json["tags"], json!({"plan": "pro"}));
    let r = app
        .post("/keys/search", json!({"tags": {"plan": "pro"}}))
        .await;
    assert_eq!(r.json["keys"][0]["keyId"], id.as_str());

    let r = app
        .post("/keys/ip", by_id(json!({"ips": ["10.0.0.0/8"]})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(
        app.balance(&key).await.json["ipAllowlist"],
        json!(["10.0.0.0/8"])
    );

    let r = app
        .post("/limits", by_id(json!({"spendingLimit": 40})))
        .await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_eq!(app.balance(&key).await.json["spendingLimit"], 40);

    let r = app
        .post("/keys/quota", by_id(json!({"remove": true})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.balance(&key).await.json["quota"], Value::Null);

    // The listing agrees, under the same id.
    let item = app.listed(&id).await;
    assert_eq!(
        (&item["credits"], &item["spendingLimit"], &item["tags"]),
        (&json!(125), &json!(40), &json!({"plan": "pro"}))
    );

    let r = app.post("/keys/revoke", by_id(json!({}))).await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    assert_ne!(app.balance(&key).await.status, StatusCode::OK);
    assert_eq!(app.listed(&id).await["active"], false);
    assert!(!app.call(&key, "search").await.allowed);
}

/// Rotation by id: the id stays, the old key is dead (unknown to `/balance`: 404), and the
/// id reaches the new key; so does a second rotation, by key or by id.
async fn rotation_keeps_the_id<St: KeyStore>(app: &App<St>) {
    let (first, id) = app.create(json!({"name": "alice", "credits": 100})).await;
    assert!(app.call(&first, "search").await.allowed);

    let r = app.post("/keys/rotate", json!({"keyId": id})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["keyId"], id.as_str(), "the id names the account");
    let second = r.json["newKey"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(r.json["credits"], 98);

    assert_eq!(app.balance(&first).await.status, StatusCode::NOT_FOUND);
    let b = app.balance(&second).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(
        (&b.json["keyId"], &b.json["credits"]),
        (&json!(id), &json!(98))
    );
    let r = app.get("/keys").await;
    assert_eq!(
        r.header("x-total-count"),
        Some("1"),
        "rotation adds no account"
    );
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    assert_eq!(
        (&r.json[0]["keyId"], &r.json[0]["totalCalls"]),
        (&json!(id), &json!(1))
    );

    // The id reaches the new key; the old key reaches nothing.
    let r = app
        .post("/topup", json!({"keyId": id, "credits": 10}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.credits(&second).await, 108);
    let r = app
        .post("/topup", json!({"key": first, "credits": 10}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(
        app.call(&first, "search").await.reason,
        Some(DenyReason::InvalidApiKey)
    );
    assert!(app.call(&second, "search").await.allowed);

    // Again, by key: still the same id.
    let r = app.post("/keys/rotate", json!({"key": second})).await;
    assert_eq!(
        (r.status, &r.json["keyId"]),
        (StatusCode::OK, &json!(id)),
        "{}",
        r.text
    );
    let third = r.json["newKey"].as_str().unwrap().to_string();
    assert_eq!(app.balance(&second).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.credits(&third).await, 106);
    assert_eq!(app.listed(&id).await["credits"], 106);
    let r = app
        .post("/keys/acl", json!({"keyId": id, "deniedTools": ["fetch"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        app.call(&third, "fetch").await.reason,
        Some(DenyReason::ToolDenied)
    );
}

/// A malformed id is 400, a well-formed unknown one 404, `key` and `keyId` together or
/// neither 400: on every endpoint, with words and nothing changed.
async fn key_id_mistakes<St: KeyStore>(app: &App<St>) {
    let (key, id) = app.create(json!({"name": "alice", "credits": 100})).await;
    let unknown = "kid_00000000000000000000";
    assert_ne!(id, unknown);
    for (path, extra) in key_endpoints() {
        for bad in [
            json!("kid_XYZ"),
            json!("kid_0123"),
            json!("kid_0123456789ABCDEF0123"),
            json!("KID_0123456789abcdef0123"),
            json!(" kid_0123456789abcdef0123"),
            json!(key.clone()),
            json!(""),
            json!(42),
        ] {
            let r = app.post(path, with(json!({"keyId": bad}), &extra)).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{path} keyId {bad}: {}",
                r.text
            );
            let error = r.human_error();
            // (A non-string id naming the field is held in its own test below.)
            if bad.is_string() {
                assert!(error.contains("keyId"), "{path}: {}", r.text);
            }
        }
        let r = app
            .post(path, with(json!({"keyId": unknown}), &extra))
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{path} unknown id: {}",
            r.text
        );
        r.human_error();
        let r = app
            .post(path, with(json!({"key": key, "keyId": id}), &extra))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} both: {}", r.text);
        r.human_error();
        let r = app.post(path, extra.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} neither: {}",
            r.text
        );
        r.human_error();
    }
    // Nothing was changed by any of it.
    let b = app.balance(&key).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(
        (&b.json["credits"], &b.json["allowedTools"], &b.json["tags"]),
        (&json!(100), &json!([]), &json!({}))
    );
    assert_eq!(b.json["keyId"], id.as_str());
}

/// `GET /keys` in pages: `limit` pages follow `Link: <...>; rel="next"` to the end, each
/// with `X-Total-Count`; without `limit` one page holds up to 1,000 keys.
async fn keys_page_through_link<St: KeyStore>(app: &App<St>) {
    let mut created = BTreeSet::new();
    let mut keys = Vec::new();
    for i in 0..25 {
        let (key, id) = app
            .create(json!({"name": format!("k{i}"), "credits": i + 1}))
            .await;
        created.insert(id);
        keys.push(key);
    }
    let pages = app.all_pages("/keys?limit=10").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [10, 10, 5],
        "three pages"
    );
    let mut seen = BTreeSet::new();
    for item in pages.concat() {
        assert_fields(&item, &TS18_LIST_FIELDS, "a paged item");
        let id = item["keyId"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} listed twice");
        let n: u64 = item["name"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(item["credits"], n + 1, "each item is its own key's");
    }
    assert_eq!(seen, created);
    let r = app.get("/keys?limit=10").await;
    assert_eq!(r.header("x-total-count"), Some("25"));
    let next = r.header("link").unwrap().to_string();
    let r2 = app
        .get(next.trim_start_matches('<').split('>').next().unwrap())
        .await;
    assert_eq!(r2.header("x-total-count"), Some("25"));

    // A 1.8 script asks without limit: every key in one array. `limit=` alone is 100.
    for uri in ["/keys", "/keys?limit="] {
        let r = app.get(uri).await;
        assert_eq!(r.json.as_array().unwrap().len(), 25, "{uri}");
        assert_eq!(r.header("link"), None, "{uri}");
    }
    for bad in [
        "/keys?limit=0",
        "/keys?limit=1001",
        "/keys?limit=ten",
        "/keys?cursor=zz",
    ] {
        let r = app.get(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        r.human_error();
    }
    let all = app.get("/keys").await;
    for key in &keys {
        assert!(
            !all.text.contains(key.as_str()),
            "a listing shows a full key"
        );
    }
}

#[tokio::test]
async fn key_ids_every_key_endpoint_takes_the_key_id() {
    every_key_endpoint_takes_the_key_id(&App::memory(config())).await;
}

#[tokio::test]
async fn key_ids_rotation_keeps_the_id_and_the_id_reaches_the_new_key() {
    rotation_keeps_the_id(&App::memory(config())).await;
}

#[tokio::test]
async fn key_ids_malformed_400_unknown_404_both_or_neither_400() {
    key_id_mistakes(&App::memory(config())).await;
}

#[tokio::test]
async fn key_ids_keys_page_through_the_link_header() {
    keys_page_through_link(&App::memory(config())).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn key_ids_on_redis() {
    let server = common::redis_server::RedisServer::start();
    every_key_endpoint_takes_the_key_id(&redis_app(&server, "kid1:").await).await;
    rotation_keeps_the_id(&redis_app(&server, "kid2:").await).await;
    key_id_mistakes(&redis_app(&server, "kid3:").await).await;
    keys_page_through_link(&redis_app(&server, "kid4:").await).await;
}

/// Admin events name the account: after each operation by id, its audit entry (and the
/// event handed to webhooks) carries the keyId; so do usage events and analytics consumers.
#[tokio::test]
async fn key_ids_in_admin_audit_entries_usage_events_and_analytics() {
    let app = App::memory(config());
    let (key, id) = app.create(json!({"name": "alice", "credits": 100})).await;
    let by_id = |extra: Value| with(json!({"keyId": id}), &extra);
    app.post("/topup", by_id(json!({"credits": 7}))).await;
    app.post("/keys/acl", by_id(json!({"deniedTools": ["fetch"]})))
        .await;
    app.post("/keys/expiry", by_id(json!({"expiresIn": 3600})))
        .await;
    app.post("/keys/quota", by_id(json!({"dailyCallLimit": 9})))
        .await;
    app.post("/limits", by_id(json!({"spendingLimit": 90})))
        .await;
    app.post("/keys/tags", by_id(json!({"tags": {"a": "b"}})))
        .await;
    app.post("/keys/ip", by_id(json!({"ips": ["10.0.0.0/8"]})))
        .await;
    assert!(app.call(&key, "search").await.allowed);
    let r = app.post("/keys/rotate", by_id(json!({}))).await;
    let new_key = r.json["newKey"].as_str().unwrap().to_string();
    app.post("/keys/revoke", by_id(json!({}))).await;

    let topups = app.audit("key.topup").await;
    assert_eq!(topups.len(), 1);
    assert_eq!(topups[0]["metadata"]["keyId"], id.as_str());
    assert_eq!(topups[0]["metadata"]["creditsAdded"], 7);
    assert_eq!(topups[0]["metadata"]["newBalance"], 107);
    for event_type in [
        "key.created",
        "key.topup",
        "key.acl_updated",
        "key.expiry_updated",
        "key.quota_updated",
        "key.limit_updated",
        "key.tags_updated",
        "key.ip_updated",
        "key.rotated",
        "key.revoked",
    ] {
        let entries = app.audit(event_type).await;
        assert_eq!(entries.len(), 1, "{event_type}");
        assert_eq!(
            entries[0]["metadata"]["keyId"],
            id.as_str(),
            "{event_type}: {}",
            entries[0]
        );
        let captured = app
            .events
            .0
            .lock()
            .iter()
            .find(|e| e.event_type == event_type)
            .map(|e| e.data["keyId"].clone());
        assert_eq!(
            captured,
            Some(json!(id)),
            "{event_type} as sent to webhooks"
        );
    }
    let rotated = &app.audit("key.rotated").await[0]["metadata"];
    assert!(rotated["oldKeyMasked"].is_string() && rotated["newKeyMasked"].is_string());
    let text = app.get("/audit/export").await.text;
    for k in [&key, &new_key] {
        assert!(!text.contains(k.as_str()), "the audit log holds a full key");
    }

    let usage = app.get("/usage").await;
    assert_eq!(usage.json["events"][0]["keyId"], id.as_str());
    let report = app.get("/analytics").await;
    assert_eq!(report.json["topConsumers"][0]["keyId"], id.as_str());
}

/// SPEC §10: every audit entry about a key carries its id, so the calls of an account
/// (`gate.allow`, `gate.deny`) can be found by id across rotations.
#[tokio::test]
async fn key_ids_in_audit_entries_of_calls() {
    let app = App::memory(config());
    let (key, id) = app.create(json!({"name": "alice", "credits": 3})).await;
    assert!(app.call(&key, "search").await.allowed);
    assert!(!app.call(&key, "search").await.allowed);
    for event_type in ["gate.allow", "gate.deny"] {
        let entries = app.audit(event_type).await;
        assert_eq!(entries.len(), 1, "{event_type}");
        assert_eq!(
            entries[0]["metadata"]["keyId"],
            id.as_str(),
            "{event_type} entry without the key id: {}",
            entries[0]
        );
    }
}

/// SPEC §10: events the gate raises about a key (`key.expired`, `alert.fired`) carry its id
/// in the audit log and in what webhooks receive.
#[tokio::test]
async fn key_ids_in_expiry_and_alert_events() {
    let cfg = config().with_alert_rule(paygate_mcp::AlertRule::new(
        paygate_mcp::AlertType::CreditsLow,
        50,
    ));
    let app = App::memory(cfg);
    let (key, id) = app
        .create(json!({"name": "alice", "credits": 52, "expiresIn": 60}))
        .await;
    let answer = app.call_through_layer(&key, "search").await;
    assert!(answer.get("result").is_some(), "{answer}");
    app.clock.advance_secs(120);
    let answer = app.call_through_layer(&key, "search").await;
    assert_eq!(answer["error"]["data"]["reason"], "api_key_expired");
    let mut missing = Vec::new();
    for event_type in ["alert.fired", "key.expired"] {
        let entries = app.audit(event_type).await;
        assert_eq!(entries.len(), 1, "{event_type} was not raised");
        if entries[0]["metadata"]["keyId"] != id.as_str() {
            missing.push(format!("audit {event_type}: {}", entries[0]["metadata"]));
        }
        let sent = app
            .events
            .0
            .lock()
            .iter()
            .find(|e| e.event_type == event_type)
            .map(|e| e.data.clone())
            .unwrap();
        if sent["keyId"] != id.as_str() {
            missing.push(format!("webhook {event_type}: {sent}"));
        }
    }
    assert!(
        missing.is_empty(),
        "events without the key id: {missing:#?}"
    );
}
