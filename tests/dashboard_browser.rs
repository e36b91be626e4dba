//! The dashboard in a real browser: headless Chromium over WebDriver, against the example
//! gateway as users run it (and the admin API mounted under a prefix). The operator signs in,
//! lists, creates, tops up and revokes keys, sees the overview chart of real calls, and
//! hostile key names and tags show as text and run nothing. The console stays free of errors.

#[path = "common/browser.rs"]
mod browser;

use browser::{Browser, ExampleGateway};
use serde_json::{json, Value};

const ADMIN: &str = "dashboard-admin-key-0123456789-abcdefghij";
const HOSTILE_NAME: &str = r#"<img src=x onerror="window.__xss=1">Mallory"#;
const HOSTILE_TAG: &str = "<script>window.__xss=2</script>";

/// A JavaScript string literal of `s`.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The expression for the keys table's row of the key named `name`.
fn row_named(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('#keys-table tbody tr')].find(tr => tr.querySelector('.key-name').textContent === {})",
        js_str(name)
    )
}

async fn sign_in(browser: &Browser, page: &str, admin_key: &str) {
    browser.client.goto(page).await.expect("the page loads");
    browser
        .until(
            "the login form",
            "document.querySelector('input[name=adminKey]')",
        )
        .await;
    browser.type_into("input[name=adminKey]", admin_key).await;
    browser.click("#login-form button[type=submit]").await;
}

async fn open_view(browser: &Browser, view: &str) {
    browser.click(&format!("#nav a[data-view={view}]")).await;
    browser
        .until(
            &format!("the {view} view"),
            &format!("!document.querySelector('#view-{view}').hidden"),
        )
        .await;
}

/// A `tools/call` of the demo server's `tool` with `api_key`; the JSON-RPC answer.
async fn call(gateway: &ExampleGateway, api_key: &str, tool: &str) -> Value {
    reqwest::Client::new()
        .post(gateway.url("/mcp"))
        .header("x-api-key", api_key)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": {"query": "hi"}}}))
        .send()
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("a JSON-RPC answer")
}

/// Creates a key through the admin API; its secret.
async fn create_key(gateway: &ExampleGateway, name: &str, credits: u64) -> String {
    let body = json!({"name": name, "credits": credits});
    let created = admin(gateway, reqwest::Method::POST, "/keys", Some(body)).await;
    created["key"].as_str().expect("the new key").to_string()
}

/// An admin API request with the admin key; its JSON answer.
async fn admin(
    gateway: &ExampleGateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, gateway.url(path))
        .header("x-admin-key", ADMIN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("the admin API answers");
    resp.json().await.expect("a JSON answer")
}

/// Saves the overview as a PNG under `target/screenshots/`, and over `docs/` when
/// `UPDATE_SCREENSHOTS=1` (how the README's picture is made).
async fn save_screenshot(browser: &Browser, name: &str) {
    let png = browser.client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("target").join("screenshots")];
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        dirs.push(root.join("docs"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).expect("a screenshot folder");
        std::fs::write(dir.join(name), &png).expect("the screenshot is written");
    }
}

/// Opens a key's dialog with `manage`, presses `action` and agrees in the page's own
/// confirmation.
async fn confirmed(browser: &Browser, manage: &str, action: &str) {
    browser.click(manage).await;
    browser.click(action).await;
    browser
        .until(
            "the confirmation",
            "document.querySelector('#confirm-dialog').open",
        )
        .await;
    browser.click("#confirm-ok").await;
}

/// Reads a key as the admin API lists it, by keyId.
async fn listed(gateway: &ExampleGateway, key_id: &str) -> Value {
    let keys = admin(gateway, reqwest::Method::GET, "/keys", None).await;
    keys.as_array()
        .and_then(|keys| keys.iter().find(|k| k["keyId"] == key_id))
        .cloned()
        .unwrap_or_else(|| panic!("{key_id} is listed: {keys}"))
}

/// Makes `times` calls of `tool` with `key`, each one let through.
async fn calls(gateway: &ExampleGateway, key: &str, tool: &str, times: usize) {
    for _ in 0..times {
        let answer = call(gateway, key, tool).await;
        assert!(
            answer.get("result").is_some(),
            "the call went through: {answer}"
        );
    }
}

/// The sum of `data-value` over the elements `css` matches.
async fn charted(browser: &Browser, css: &str) -> Value {
    browser
        .js(
            "return [...document.querySelectorAll(arguments[0])].reduce((n, e) => n + Number(e.dataset.value), 0)",
            vec![json!(css)],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_business_from_the_dashboard() {
    let gateway = ExampleGateway::start(&["--admin-key", ADMIN, "--tool-price", "search:5,echo:1"]);
    // Two agents at work before the operator looks.
    let research = create_key(&gateway, "research-agent", 200).await;
    let support = create_key(&gateway, "support-bot", 100).await;
    calls(&gateway, &research, "search", 6).await;
    calls(&gateway, &research, "echo", 4).await;
    calls(&gateway, &support, "echo", 5).await;

    let browser = Browser::start().await;
    sign_in(&browser, &gateway.url("/dashboard"), ADMIN).await;
    browser
        .until(
            "the overview",
            "!document.querySelector('#view-overview').hidden",
        )
        .await;
    // The key is held by this tab only: no cookie, not in the address, not in the page.
    let kept = browser
        .js(
            "return [sessionStorage.getItem('paygate.adminKey'), document.cookie, location.href, \
             document.documentElement.outerHTML.includes(arguments[0]), localStorage.length];",
            vec![json!(ADMIN)],
        )
        .await;
    assert_eq!(kept[0], ADMIN);
    assert_eq!(kept[1], "");
    assert!(!kept[2].as_str().unwrap().contains(ADMIN));
    assert_eq!(kept[3], false);
    assert_eq!(kept[4], 0);

    // The overview charts the calls: columns add up to the calls, the line to the credits.
    browser
        .until(
            "the chart of the calls",
            "document.querySelectorAll('#chart-series svg rect.point.s1').length > 0 \
             && document.querySelectorAll('#chart-tools svg rect.bar-fill').length === 2",
        )
        .await;
    assert_eq!(
        charted(&browser, "#chart-series svg rect.point.s1").await,
        15
    );
    assert_eq!(
        charted(&browser, "#chart-series svg circle.point.s2").await,
        6 * 5 + 4 + 5
    );
    assert_eq!(
        charted(&browser, "#chart-tools svg rect.bar-fill").await,
        39
    );
    save_screenshot(&browser, "dashboard-overview.png").await;

    // The key list: the key the gateway made at start and the two agents.
    open_view(&browser, "keys").await;
    browser
        .until(
            "the keys",
            "document.querySelectorAll('#keys-table tbody tr').length === 3",
        )
        .await;

    // Create a key whose name and tag are markup: it shows as text and runs nothing.
    browser.click("#create-open").await;
    browser
        .type_into("#create-form input[name=name]", HOSTILE_NAME)
        .await;
    browser
        .type_into("#create-form input[name=credits]", "50")
        .await;
    browser
        .type_into(
            "#create-form input[name=tags]",
            &format!("team={HOSTILE_TAG}"),
        )
        .await;
    browser.click("#create-form button[type=submit]").await;
    let secret = browser
        .until(
            "the new key's secret",
            "!document.querySelector('#secret').hidden && document.querySelector('#secret-value').textContent",
        )
        .await;
    let secret = secret.as_str().expect("the secret is text").to_string();
    assert!(secret.starts_with("pg_"), "{secret}");
    let row = row_named(HOSTILE_NAME);
    browser.until("the new key's row", &row).await;
    let shown = browser
        .js(
            &format!(
                "const tr = {row}; return [tr.dataset.keyId, tr.querySelector('.key-tags').textContent, \
                 tr.querySelector('.key-credits').textContent, \
                 document.querySelectorAll('main img, main script, #keys-table [onerror]').length, \
                 window.__xss === undefined, document.querySelector('#keys-table').textContent.includes(arguments[0])];"
            ),
            vec![json!(secret)],
        )
        .await;
    let key_id = shown[0].as_str().expect("a keyId").to_string();
    assert!(key_id.starts_with("kid_"), "{key_id}");
    assert_eq!(shown[1], format!("team={HOSTILE_TAG}"));
    assert_eq!(shown[2], "50");
    assert_eq!(shown[3], 0, "no element was made from the name or tag");
    assert_eq!(shown[4], true, "nothing ran");
    assert_eq!(shown[5], false, "the table shows the masked key only");

    // The secret is shown once: after Done it is nowhere in the page.
    browser.click("#secret-done").await;
    let gone = browser
        .js(
            "return [document.querySelector('#secret').hidden, \
             document.documentElement.outerHTML.includes(arguments[0]), \
             JSON.stringify(sessionStorage).includes(arguments[0])];",
            vec![json!(secret)],
        )
        .await;
    assert_eq!(gone, json!([true, false, false]));

    // Top up by keyId, and see the new balance.
    let manage = format!("tr[data-key-id='{key_id}'] button[data-action=manage]");
    browser.click(&manage).await;
    browser
        .until(
            "the key dialog",
            "document.querySelector('#key-dialog').open",
        )
        .await;
    browser
        .type_into("#topup-form input[name=credits]", "25")
        .await;
    browser.click("#topup-form button[type=submit]").await;
    browser
        .until(
            "the new balance",
            &format!("({row})?.querySelector('.key-credits').textContent === '75'"),
        )
        .await;

    // Tags: remove the markup one, add another; then, in the same dialog, swap again (the
    // dialog follows what the API answered, so the second save deletes the first's tag).
    let edit_tags = |remove: &'static str, add: (&'static str, &'static str)| {
        let browser = &browser;
        async move {
            browser
                .js(
                    "[...document.querySelectorAll('#tags-table tbody tr')] \
                     .find(tr => tr.querySelector('[name=tagName]').value === arguments[0]) \
                     .querySelector('button').click();",
                    vec![json!(remove)],
                )
                .await;
            browser.click("#tag-add").await;
            let last = "#tags-table tbody tr:last-child";
            browser
                .type_into(&format!("{last} input[name=tagName]"), add.0)
                .await;
            browser
                .type_into(&format!("{last} input[name=tagValue]"), add.1)
                .await;
            browser.click("#tags-form button[type=submit]").await;
        }
    };
    edit_tags("team", ("region", "eu")).await;
    let tags_are = |text: &str| {
        format!(
            "({row})?.querySelector('.key-tags').textContent === {}",
            js_str(text)
        )
    };
    browser
        .until("the first tag edit", &tags_are("region=eu"))
        .await;
    edit_tags("region", ("tier", "gold")).await;
    browser
        .until("the second tag edit", &tags_are("tier=gold"))
        .await;

    // Tools, quota and spending limit, read back from the API.
    browser
        .type_into("#acl-form input[name=deniedTools]", "search")
        .await;
    browser.click("#acl-form button[type=submit]").await;
    browser
        .type_into("#quota-form input[name=dailyCallLimit]", "100")
        .await;
    browser.click("#quota-form button[type=submit]").await;
    browser
        .type_into("#limits-form input[name=spendingLimit]", "500")
        .await;
    browser.click("#limits-form button[type=submit]").await;
    browser
        .until(
            "the saved limit",
            "document.querySelector('#key-dialog .dialog-notice').textContent.startsWith('Saved the spending limit')",
        )
        .await;
    let saved = listed(&gateway, &key_id).await;
    assert_eq!(saved["deniedTools"], json!(["search"]));
    assert_eq!(
        saved["quota"],
        json!({"dailyCallLimit": 100, "monthlyCallLimit": 0, "dailyCreditLimit": 0, "monthlyCreditLimit": 0})
    );
    assert_eq!(saved["spendingLimit"], 500);
    assert_eq!(saved["tags"], json!({"tier": "gold"}));
    browser.click("#key-dialog-close").await;

    // An alert rule saved in the alerts view fires on the calls below.
    open_view(&browser, "alerts").await;
    browser.click("#rule-add").await;
    let rule = "#rules-table tbody tr:last-child";
    browser
        .client
        .find(fantoccini::Locator::Css(&format!(
            "{rule} select[name=type]"
        )))
        .await
        .expect("the rule's type")
        .select_by_value("credits_low")
        .await
        .expect("credits_low is offered");
    browser
        .type_into(&format!("{rule} input[name=threshold]"), "1000")
        .await;
    browser.click("#rules-form button[type=submit]").await;
    browser
        .until(
            "the saved rules",
            "document.querySelector('#notice').textContent.includes('1 alert rules configured')",
        )
        .await;

    // The new key's calls reach the overview.
    calls(&gateway, &secret, "echo", 3).await;
    open_view(&browser, "overview").await;
    browser
        .until(
            "the new calls",
            "document.querySelector('[data-stat=calls] dd').textContent === '18'",
        )
        .await;
    assert_eq!(
        charted(&browser, "#chart-series svg rect.point.s1").await,
        18
    );
    assert_eq!(
        charted(&browser, "#chart-series svg circle.point.s2").await,
        42
    );
    let consumers = browser
        .js(
            "return document.querySelector('#top-consumers').textContent",
            vec![],
        )
        .await;
    assert!(
        consumers.as_str().unwrap().contains(HOSTILE_NAME),
        "{consumers}"
    );

    // The alerts the calls fired, read without taking them: a script still gets them.
    open_view(&browser, "alerts").await;
    let fired = browser
        .until(
            "the fired alerts",
            "[...document.querySelectorAll('#fired-alerts tbody tr')].map(tr => tr.cells[1].textContent)",
        )
        .await;
    assert!(
        fired
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|t| t == "credits_low")),
        "{fired}"
    );
    let rules = browser
        .js(
            "return [...document.querySelectorAll('#rules-table tbody tr')].map(tr => \
             [tr.querySelector('[name=type]').value, tr.querySelector('[name=threshold]').value])",
            vec![],
        )
        .await;
    assert_eq!(rules, json!([["credits_low", "1000"]]));
    let polled = admin(&gateway, reqwest::Method::GET, "/alerts", None).await;
    assert_eq!(polled["count"], json!(fired.as_array().unwrap().len()));

    // The audit log lists what the operator did, and filters by type.
    open_view(&browser, "audit").await;
    browser
        .until(
            "the audit events",
            "document.querySelectorAll('#audit-events tbody tr').length >= 3",
        )
        .await;
    browser
        .type_into("#audit-form input[name=types]", "key.topup")
        .await;
    browser.click("#audit-form button[type=submit]").await;
    let types = browser
        .until(
            "only top-ups",
            "(() => { const t = [...document.querySelectorAll('#audit-events tbody tr')].map(tr => tr.cells[1].textContent); \
             return t.length > 0 && t.every(x => x === 'key.topup') && t; })()",
        )
        .await;
    assert_eq!(types, json!(["key.topup"]), "one top-up was made");

    // Rotate: a new secret, shown once; the old key stops, the new one works.
    open_view(&browser, "keys").await;
    browser.until("the key's row", &row).await;
    confirmed(&browser, &manage, "#key-rotate").await;
    let rotated = browser
        .until(
            "the rotated key's secret",
            "!document.querySelector('#secret').hidden && document.querySelector('#secret-value').textContent",
        )
        .await;
    let rotated = rotated.as_str().unwrap().to_string();
    assert_ne!(rotated, secret);
    assert!(call(&gateway, &secret, "echo").await.get("error").is_some());
    calls(&gateway, &rotated, "echo", 1).await;
    browser.click("#secret-done").await;

    // Revoke, through the page's own confirmation.
    browser.until("the key's row", &row).await;
    confirmed(&browser, &manage, "#key-revoke").await;
    browser
        .until(
            "the revoked status",
            &format!("({row})?.querySelector('.key-status').textContent === 'revoked'"),
        )
        .await;
    let refused = call(&gateway, &rotated, "echo").await;
    assert!(
        refused.get("error").is_some(),
        "a revoked key is refused: {refused}"
    );
    assert_eq!(
        browser.js("return window.__xss === undefined && document.querySelectorAll('img[src=x], script:not([src])').length === 0", vec![]).await,
        true,
        "the markup ran nowhere: keys, overview, alerts, dialogs"
    );

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.client.close().await.expect("the session ends");
}

/// Waits for the keys page `range` (of 60) and reads its keyIds, whether Previous and Next are
/// disabled, and the credits of the key named `prefixed` when it is on the page.
async fn keys_page(browser: &Browser, range: &str) -> Value {
    let text = format!("Keys {range} of 60");
    browser
        .until(
            &text,
            &format!(
                "document.querySelector('#keys-count').textContent === {}",
                js_str(&text)
            ),
        )
        .await;
    browser
        .js(
            &format!(
                "return [[...document.querySelectorAll('#keys-table tbody tr')].map(tr => tr.dataset.keyId), \
                 document.querySelector('#keys-prev').disabled, document.querySelector('#keys-next').disabled, \
                 ({})?.querySelector('.key-credits').textContent ?? null]",
                row_named("prefixed")
            ),
            vec![],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_behind_a_path_prefix_and_refuses_a_wrong_key() {
    use paygate_mcp::{AdminService, Gate, PayGateConfig};

    let gate = std::sync::Arc::new(Gate::new(PayGateConfig::default()).expect("a valid config"));
    for n in 0..59 {
        gate.create_key(&format!("agent-{n}"), 1)
            .await
            .expect("a key");
    }
    let admin = AdminService::new(gate, ADMIN).expect("a valid admin key");
    let app = axum::Router::new().nest_service("/ops/paygate", admin);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let created = reqwest::Client::new()
        .post(format!("{base}/ops/paygate/keys"))
        .header("x-admin-key", ADMIN)
        .json(&json!({"name": "prefixed", "credits": 7}))
        .send()
        .await
        .expect("the admin API answers");
    assert_eq!(created.status(), 201);

    let browser = Browser::start().await;
    let page = format!("{base}/ops/paygate/dashboard");
    sign_in(
        &browser,
        &page,
        "not-the-admin-key-but-just-as-long-0123456",
    )
    .await;
    let refused = browser
        .until(
            "the refusal",
            "document.querySelector('#login-error').textContent",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("refused"), "{refused}");
    let state = browser
        .js(
            "return [sessionStorage.length, document.querySelector('#nav').hidden];",
            vec![],
        )
        .await;
    assert_eq!(state, json!([0, true]), "a refused key is not kept");
    // The refusal's 401 is in the console (and shows the console is read); nothing else is.
    let console = browser.console().await;
    assert!(
        console
            .iter()
            .any(|(level, m)| level == "SEVERE" && m.contains("401")),
        "{console:?}"
    );

    browser.type_into("input[name=adminKey]", ADMIN).await;
    browser.click("#login-form button[type=submit]").await;
    // 60 keys, 25 a page: the API's cursor pages, forward and back.
    open_view(&browser, "keys").await;
    browser
        .until(
            "the first page",
            "document.querySelectorAll('#keys-table tbody tr').length === 50",
        )
        .await;
    browser
        .client
        .find(fantoccini::Locator::Css("#keys-page-size"))
        .await
        .expect("the page size")
        .select_by_value("25")
        .await
        .expect("25 a page is offered");
    let mut seen = std::collections::BTreeSet::new();
    let first = keys_page(&browser, "1–25").await;
    assert_eq!(first[1], true, "no page before the first");
    let second = {
        browser.click("#keys-next").await;
        keys_page(&browser, "26–50").await
    };
    let third = {
        browser.click("#keys-next").await;
        keys_page(&browser, "51–60").await
    };
    assert_eq!(third[2], true, "no page after the last");
    for p in [&first, &second, &third] {
        seen.extend(p[0].as_array().unwrap().iter().map(|id| id.to_string()));
    }
    assert_eq!(seen.len(), 60, "every key once across the pages");
    browser.click("#keys-prev").await;
    assert_eq!(
        keys_page(&browser, "26–50").await[0],
        second[0],
        "back to the same page"
    );
    browser.click("#keys-prev").await;
    keys_page(&browser, "1–25").await;
    // The key made through the prefixed API is on one of the pages, with its credits.
    let prefixed: Vec<&Value> = [&first, &second, &third]
        .into_iter()
        .map(|p| &p[3])
        .filter(|c| !c.is_null())
        .collect();
    assert_eq!(prefixed, vec![&json!("7")]);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.client.close().await.expect("the session ends");
}
