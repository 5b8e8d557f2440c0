//! End to end: the web dashboard (`GET /`) in a real headless Chromium,
//! driven through WebDriver (chromedriver, started and stopped by the
//! test), against a real `tandem up` with real demo processes and real
//! signals: roles as `/v1/status` has them, a kill -9 shown live without a
//! reload (the delay printed, never asserted), operator actions through
//! the confirmation dialog with their outcome or refusal, tokens (login,
//! `read` refused, `operate` done, log out), a phone-sized window, a
//! restarted API, and no console errors.
#![allow(clippy::disallowed_methods)]

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use browser::Driver;
use common::{Up, signal, tandem};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use tandem_api::types::StatusDoc;

/// How long the page may take to show something (not a performance bound:
/// the measured delays are printed).
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
async fn js(client: &Client, script: &str, args: Vec<Value>) -> Value {
    client
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `script` until it returns `true`; returns how long that took.
async fn wait_js(client: &Client, what: &str, script: &str, args: Vec<Value>) -> Duration {
    let start = Instant::now();
    loop {
        if js(client, script, args.clone()).await == Value::Bool(true) {
            return start.elapsed();
        }
        if start.elapsed() > PAGE_WAIT {
            let body = js(client, "return document.body.innerText;", vec![]).await;
            panic!(
                "the page did not show {what} within {PAGE_WAIT:?}; it shows:\n{}",
                body.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the page shows for each instance: `"app/id" -> (data-role, text of
/// the role cell)`.
async fn page_roles(client: &Client) -> BTreeMap<String, (String, String)> {
    let v = js(
        client,
        r#"const out = {};
           for (const tr of document.querySelectorAll('#status tr[data-instance]')) {
             const cell = tr.querySelector('td[data-role]');
             out[tr.dataset.app + '/' + tr.dataset.instance] = [cell.dataset.role, cell.innerText];
           }
           return out;"#,
        vec![],
    )
    .await;
    serde_json::from_value(v).expect("roles map")
}

fn status_roles(doc: &StatusDoc) -> BTreeMap<String, String> {
    doc.apps
        .iter()
        .flat_map(|a| {
            a.instances
                .iter()
                .map(move |i| (format!("{}/{}", a.name, i.id), i.role.as_str().to_owned()))
        })
        .collect()
}

/// Waits until the page shows every instance with the role `/v1/status`
/// gives it, written out as a word (not only a colour or a symbol).
async fn assert_page_matches_status(up: &Up, client: &Client) {
    let start = Instant::now();
    loop {
        let want = status_roles(&up.status().await);
        let seen = page_roles(client).await;
        let shown: BTreeMap<String, String> = seen
            .iter()
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect();
        let words = seen
            .values()
            .all(|(role, text)| text.contains(role.as_str()));
        if shown == want && words {
            return;
        }
        assert!(
            start.elapsed() < PAGE_WAIT,
            "the page's roles {seen:?} never matched /v1/status {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chromium's console entries at level SEVERE (errors), and what the
/// page's own recorder caught (`window.__errors`).
async fn console_errors(driver: &Driver, client: &Client) -> (Vec<Value>, Value) {
    let severe = driver
        .browser_log(client)
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    let recorded = js(client, "return window.__errors;", vec![]).await;
    (severe, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_roles_and_a_kill_9_failover_live_and_switches_over_on_a_phone() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let driver = Driver::start();
    let client = driver.session(1280, 900).await;
    let url = format!("http://{}/", up.api);
    client.goto(&url).await.expect("open the dashboard");

    // 1. Every instance's role, as /v1/status has it.
    assert_page_matches_status(&up, &client).await;
    wait_js(
        &client,
        "the live event stream",
        "return document.getElementById('live').dataset.ok === '1';",
        vec![],
    )
    .await;

    // 2. kill -9 of the primary shows up without a reload.
    js(&client, "window.__marker = 1; return null;", vec![]).await;
    let old_pid = p.pid.expect("primary pid");
    let killed = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    signal(old_pid, "KILL");
    let new_primary_shown = wait_js(
        &client,
        &format!("web/{} as the new primary", b.id),
        r#"const line = document.querySelector('#status article[data-app="web"] .primary-line');
           const row = document.querySelector(`#status tr[data-app="web"][data-instance="${arguments[0]}"] td[data-role]`);
           return !!line && line.dataset.primary === arguments[0] && !!row && row.dataset.role === 'primary';"#,
        vec![json!(b.id)],
    )
    .await;
    let event_shown = wait_js(
        &client,
        "the failure and the promotion in the event log",
        r#"const rows = [...document.querySelectorAll('#events tr[data-kind]')];
           const failed = rows.some(r => r.dataset.kind === 'primary-failed' && r.innerText.includes(arguments[0]));
           const promoted = rows.some(r => r.dataset.kind === 'promoted' && r.innerText.includes(arguments[1]));
           return failed && promoted;"#,
        vec![json!(format!("web/{}", p.id)), json!(format!("promoted web/{}", b.id))],
    )
    .await;
    let timeline_shown = wait_js(
        &client,
        "the failover in the timeline",
        r#"return [...document.querySelectorAll('#timeline li[data-kind="failover"]')]
             .some(li => li.dataset.app === 'web' && / ms/.test(li.innerText))
           && !!document.querySelector('#timeline svg .handover-failover');"#,
        vec![],
    )
    .await;
    let since_kill = killed.elapsed();
    println!(
        "kill -9 of web/{} (pid {old_pid}): the page showed web/{} as primary {} ms after the kill, \
         the events {} ms after, the timeline {} ms after (all within {} ms)",
        p.id,
        b.id,
        new_primary_shown.as_millis(),
        (new_primary_shown + event_shown).as_millis(),
        (new_primary_shown + event_shown + timeline_shown).as_millis(),
        since_kill.as_millis(),
    );
    // For comparison: when the log itself said the new primary serves.
    let events = up.client().events(None, Some(200)).await.expect("events");
    if let Some(serving) = events
        .iter()
        .find(|e| e.kind.as_str() == "serving" && e.instance.as_deref() == Some(b.id.as_str()))
    {
        println!(
            "the log's `serving` event of web/{} is stamped {} ms after the kill",
            b.id,
            serving.t_ms.saturating_sub(killed_ms)
        );
    }
    assert_eq!(
        js(&client, "return window.__marker;", vec![]).await,
        json!(1),
        "the page was reloaded"
    );
    let timeline = js(
        &client,
        "return document.querySelector('#timeline li[data-kind=\"failover\"]').innerText;",
        vec![],
    )
    .await;
    println!("timeline: {}", timeline.as_str().unwrap_or_default());
    assert_page_matches_status(&up, &client).await;

    // 3. A switchover from the page to a named instance, through its
    // confirmation dialog (no token: this API needs none).
    let before = up.app("web").await;
    let from = before.primary.clone().expect("a primary");
    let to = before
        .instances
        .iter()
        .find(|i| i.id != from)
        .map(|i| i.id.clone())
        .expect("another instance");
    wait_js(
        &client,
        "the target in the list",
        "return [...document.getElementById('action-to').options].some(o => o.value === arguments[0]);",
        vec![json!(to)],
    )
    .await;
    client
        .find(Locator::Css("#action-to"))
        .await
        .expect("target list")
        .select_by_value(&to)
        .await
        .expect("choose the target");
    reset_result(&client).await;
    click(&client, "#do-switchover").await;
    wait_js(
        &client,
        "the confirmation dialog",
        "return document.getElementById('confirm').open;",
        vec![],
    )
    .await;
    let question = js(
        &client,
        "return document.getElementById('confirm-text').innerText;",
        vec![],
    )
    .await;
    assert!(
        question
            .as_str()
            .is_some_and(|q| q.contains(&format!("web/{to}"))),
        "the dialog does not name the target: {question}"
    );
    assert_eq!(
        before.primary.as_deref(),
        up.app("web").await.primary.as_deref(),
        "nothing happens before the operator confirms"
    );
    click(&client, "#confirm-ok").await;
    let (outcome, text) = action_outcome(&client).await;
    println!("switchover from the page: {text}");
    assert_eq!(outcome, "ok", "{text}");
    let after = up
        .wait_for("the switchover done", 15, |a| {
            a.primary.as_deref() == Some(to.as_str())
        })
        .await;
    assert!(after.epoch > before.epoch);
    assert_page_matches_status(&up, &client).await;
    wait_js(
        &client,
        "the switchover in the timeline",
        "return !!document.querySelector('#timeline li[data-kind=\"switchover\"]');",
        vec![],
    )
    .await;

    // Maintenance on, then off, from the page; the log shows both.
    for (button, on) in [("#do-maintenance-on", true), ("#do-maintenance-off", false)] {
        let (outcome, text) = confirm_action(&client, button).await;
        println!("maintenance {}: {text}", if on { "on" } else { "off" });
        assert_eq!(outcome, "ok", "{text}");
    }
    wait_js(
        &client,
        "both maintenance events in the log",
        "return document.querySelectorAll('#events tr[data-kind=\"maintenance\"]').length >= 2;",
        vec![],
    )
    .await;

    // The log's filters: by kind, by app, by text.
    let filtered = js(
        &client,
        r#"const kind = document.getElementById('filter-kind');
           kind.value = 'promoted'; kind.dispatchEvent(new Event('change'));
           const byKind = [...document.querySelectorAll('#events tr[data-kind]')].map(r => r.dataset.kind);
           kind.value = ''; kind.dispatchEvent(new Event('change'));
           const text = document.getElementById('filter-text');
           text.value = 'SIGKILL'; text.dispatchEvent(new Event('input'));
           const byText = [...document.querySelectorAll('#events tr[data-kind]')].map(r => r.innerText);
           text.value = ''; text.dispatchEvent(new Event('input'));
           return { byKind, byText };"#,
        vec![],
    )
    .await;
    let by_kind = filtered["byKind"].as_array().expect("kinds");
    assert!(
        !by_kind.is_empty() && by_kind.iter().all(|k| k == "promoted"),
        "kind filter: {filtered}"
    );
    let by_text = filtered["byText"].as_array().expect("texts");
    assert!(
        !by_text.is_empty()
            && by_text
                .iter()
                .all(|t| t.as_str().is_some_and(|t| t.contains("SIGKILL"))),
        "text filter: {filtered}"
    );

    // 5. A phone-sized window: instances and actions visible, no sideways
    // scrolling of the page.
    client.set_window_size(390, 844).await.expect("resize");
    let layout = js(
        &client,
        r#"const visible = (el) => {
             if (!el) return false;
             const r = el.getBoundingClientRect();
             return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= window.innerWidth;
           };
           return {
             inner: window.innerWidth,
             scroll: document.documentElement.scrollWidth,
             instances: [...document.querySelectorAll('#status tr[data-instance]')].every(visible)
               && document.querySelectorAll('#status tr[data-instance]').length > 0,
             roles: [...document.querySelectorAll('#status td[data-role]')].every(visible),
             actions: ['#do-switchover', '#do-maintenance-on', '#do-maintenance-off', '#do-fence', '#action-app']
               .every((s) => visible(document.querySelector(s))),
           };"#,
        vec![],
    )
    .await;
    println!("phone layout: {layout}");
    assert!(
        layout["inner"].as_u64().is_some_and(|w| w <= 420),
        "the window did not shrink: {layout}"
    );
    assert!(
        layout["scroll"].as_u64() <= layout["inner"].as_u64(),
        "the page scrolls sideways on a phone: {layout}"
    );
    for part in ["instances", "roles", "actions"] {
        assert_eq!(
            layout[part],
            json!(true),
            "{part} not visible on a phone: {layout}"
        );
    }

    // 4. No console errors, as Chromium logged them and as the page's own
    // recorder caught them.
    let (severe, recorded) = console_errors(&driver, &client).await;
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    assert_eq!(recorded, json!([]), "errors recorded by the page");

    // 3b. Fencing a host without a fence device: refused, with the API's
    // sentence on the page (Chromium logs the 409 itself: expected).
    let (outcome, text) = confirm_action(&client, "#do-fence").await;
    println!("fence from the page: {text}");
    assert_eq!(outcome, "refused", "{text}");
    assert!(text.contains("has no fence device"), "{text}");

    // 6. The API goes away and comes back: the page reconnects by itself
    // (resuming the log with since=), without a reload.
    client.set_window_size(1280, 900).await.expect("resize");
    let seqs_before = js(
        &client,
        "return document.querySelectorAll('#events tr[data-seq]').length;",
        vec![],
    )
    .await;
    let mut up = up;
    let newest = up
        .client()
        .events(None, Some(1))
        .await
        .expect("events")
        .last()
        .map(|e| e.seq)
        .unwrap_or(0);
    up.restart();
    let back = wait_js(
        &client,
        "the page live again with the events after the restart",
        r#"const seqs = [...document.querySelectorAll('#events tr[data-seq]')].map(r => Number(r.dataset.seq));
           return document.getElementById('live').dataset.ok === '1'
             && seqs.some(s => s > arguments[0])
             && new Set(seqs).size === seqs.length;"#,
        vec![json!(newest)],
    )
    .await;
    println!(
        "tandem up restarted: the page was live again with the new events {} ms after the API was back ({seqs_before} events shown before)",
        back.as_millis()
    );
    assert_page_matches_status(&up, &client).await;
    assert_eq!(
        js(&client, "return window.__marker;", vec![]).await,
        json!(1),
        "the page was reloaded"
    );
    let (severe, recorded) = console_errors(&driver, &client).await;
    let severe: Vec<Value> = severe
        .into_iter()
        .filter(|e| e["source"] != "network")
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    assert_eq!(recorded, json!([]), "errors recorded by the page");

    client.close().await.expect("close the browser");
}

/// The console check can fail: an error the page raises is caught both by
/// Chromium's log and by the page's recorder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_error_on_the_dashboard_is_caught() {
    let up = Up::pair();
    let driver = Driver::start();
    let client = driver.session(1280, 900).await;
    client
        .goto(&format!("http://{}/", up.api))
        .await
        .expect("open the dashboard");
    assert_page_matches_status(&up, &client).await;
    let (severe, recorded) = console_errors(&driver, &client).await;
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    assert_eq!(recorded, json!([]));
    js(
        &client,
        // An inline script of the page's own origin (a script run through
        // WebDriver would only show as a cross-origin "Script error.").
        "const s = document.createElement('script'); \
         s.textContent = \"setTimeout(() => { throw new Error('deliberate failure'); }, 0);\"; \
         document.head.append(s); return null;",
        vec![],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (severe, recorded) = console_errors(&driver, &client).await;
    assert!(
        severe.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("deliberate failure"))),
        "Chromium's log missed the error: {severe:#?}"
    );
    assert!(
        recorded.to_string().contains("deliberate failure"),
        "the page's recorder missed the error: {recorded}"
    );
    client.close().await.expect("close the browser");
}

/// `tandem token new NAME --role ROLE --file FILE`: the token printed.
fn new_token(file: &std::path::Path, name: &str, role: &str) -> String {
    let o = std::process::Command::new(tandem())
        .args(["token", "new", name, "--role", role, "--file"])
        .arg(file)
        .env_remove("TANDEM_TOKEN")
        .output()
        .expect("run tandem token new");
    assert!(o.status.success(), "tandem token new: {o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Types `token` into the page's login dialog (which must be open) and
/// submits it.
async fn log_in(client: &Client, token: &str) {
    wait_js(
        client,
        "the login dialog",
        "return document.getElementById('login').open;",
        vec![],
    )
    .await;
    client
        .find(Locator::Css("#login-token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type the token");
    click(client, "#login-ok").await;
}

/// Console entries of Chromium at level SEVERE, except the network lines
/// it logs by itself for the answers the test provoked on purpose (401
/// without a token, 403 for the read token's switchover).
fn unexpected(severe: Vec<Value>) -> Vec<Value> {
    severe
        .into_iter()
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or_default();
            !(e["source"] == "network"
                && (m.contains("status of 401") || m.contains("status of 403")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_token_and_a_read_token_cannot_switch_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    let ops = new_token(&file, "ops", "operate");
    let viewer = new_token(&file, "viewer", "read");
    let file_arg = file.to_str().expect("utf-8 path").to_owned();
    let up = Up::pair_args(dir, &["--tokens", &file_arg], Some(&ops));
    up.wait_pair().await;
    let driver = Driver::start();
    let client = driver.session(1280, 900).await;
    client
        .goto(&format!("http://{}/", up.api))
        .await
        .expect("open the dashboard (its assets need no token)");

    // No token: the page asks for one, with the API's sentence.
    let reason = wait_js(
        &client,
        "the API's 401 sentence in the login dialog",
        "return document.getElementById('login').open && \
         document.getElementById('login-reason').innerText.includes('token');",
        vec![],
    )
    .await;
    let sentence = js(
        &client,
        "return document.getElementById('login-reason').innerText;",
        vec![],
    )
    .await;
    println!("login asked after {} ms: {sentence}", reason.as_millis());
    // An unknown token is refused, and asked for again.
    log_in(&client, "tdm_not_a_token").await;
    wait_js(
        &client,
        "the login dialog again after an unknown token",
        "return document.getElementById('login').open && \
         document.getElementById('login-reason').innerText.includes('not known');",
        vec![],
    )
    .await;

    // A read token: the page shows the cluster...
    client
        .find(Locator::Css("#login-token"))
        .await
        .expect("token field")
        .clear()
        .await
        .expect("clear");
    log_in(&client, &viewer).await;
    assert_page_matches_status(&up, &client).await;
    let stored = js(
        &client,
        "return sessionStorage.getItem('tandem.token');",
        vec![],
    )
    .await;
    assert_eq!(stored, json!(viewer), "the token is kept for the tab");

    // ...but its switchover is refused with the API's sentence, and the
    // cluster does not change.
    let before = up.app("web").await;
    let before_roles = status_roles(&up.status().await);
    let refusal: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("http://{}/v1/apps/web/switchover", up.api))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("API answers")
        .json()
        .await
        .expect("JSON error");
    let refusal = refusal["error"]
        .as_str()
        .expect("an error sentence")
        .to_owned();
    click(&client, "#do-switchover").await;
    click(&client, "#confirm-ok").await;
    wait_js(
        &client,
        "the refusal on the page",
        "const r = document.getElementById('action-result'); \
         return r.dataset.outcome === 'refused' && r.innerText.includes(arguments[0]);",
        vec![json!(refusal)],
    )
    .await;
    let shown = js(
        &client,
        "return document.getElementById('action-result').innerText;",
        vec![],
    )
    .await;
    println!(
        "switchover with the read token: {}",
        shown.as_str().unwrap_or_default()
    );
    let after = up.app("web").await;
    assert_eq!(
        (after.primary.as_deref(), after.epoch),
        (before.primary.as_deref(), before.epoch),
        "a read token changed the cluster"
    );
    assert_eq!(
        status_roles(&up.status().await),
        before_roles,
        "a read token changed roles"
    );

    // Log out: the token is gone and the page asks again; an operate
    // token switches over from the page.
    click(&client, "#logout").await;
    assert_eq!(
        js(
            &client,
            "return document.querySelectorAll('#status tr[data-instance], #events tr[data-seq]').length;",
            vec![],
        )
        .await,
        json!(0),
        "what the token read stays on the page after logging out"
    );
    assert_eq!(
        js(
            &client,
            "return sessionStorage.getItem('tandem.token');",
            vec![]
        )
        .await,
        Value::Null
    );
    log_in(&client, &ops).await;
    assert_page_matches_status(&up, &client).await;
    click(&client, "#do-switchover").await;
    click(&client, "#confirm-ok").await;
    wait_js(
        &client,
        "the operate token's switchover done",
        "return document.getElementById('action-result').dataset.outcome === 'ok';",
        vec![],
    )
    .await;
    let moved = up
        .wait_for("the switchover", 15, |a| {
            a.primary.is_some() && a.primary != before.primary
        })
        .await;
    assert!(moved.epoch > before.epoch);
    assert_page_matches_status(&up, &client).await;

    let (severe, recorded) = console_errors(&driver, &client).await;
    println!("Chromium's SEVERE entries (expected 401/403 network lines): {severe:#?}");
    let severe = unexpected(severe);
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    assert_eq!(recorded, json!([]), "errors recorded by the page");
    client.close().await.expect("close the browser");
}

/// Clears the action result, so that the next outcome is a new one.
async fn reset_result(client: &Client) {
    js(
        client,
        "const r = document.getElementById('action-result'); r.dataset.outcome = ''; r.textContent = ''; return null;",
        vec![],
    )
    .await;
}

/// Waits for the outcome of the action under way: ("ok" | "refused", text).
async fn action_outcome(client: &Client) -> (String, String) {
    wait_js(
        client,
        "the action's outcome",
        "const o = document.getElementById('action-result').dataset.outcome; return o === 'ok' || o === 'refused';",
        vec![],
    )
    .await;
    let v = js(
        client,
        "const r = document.getElementById('action-result'); return [r.dataset.outcome, r.innerText];",
        vec![],
    )
    .await;
    let (Some(outcome), Some(text)) = (v[0].as_str(), v[1].as_str()) else {
        panic!("no outcome: {v}")
    };
    (outcome.to_owned(), text.to_owned())
}

/// Clicks an action's button, confirms its dialog, waits for the outcome.
async fn confirm_action(client: &Client, button: &str) -> (String, String) {
    reset_result(client).await;
    click(client, button).await;
    wait_js(
        client,
        "the confirmation dialog",
        "return document.getElementById('confirm').open;",
        vec![],
    )
    .await;
    click(client, "#confirm-ok").await;
    action_outcome(client).await
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// The link graph: each edge's state per instance, live. The switch (an
/// endpoint the test holds) goes away and comes back; the page follows
/// without a reload, and has no console errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_each_links_state_live() {
    let switch = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the switch");
    let switch_port = switch.local_addr().expect("addr").port();
    let ports = [common::free_port(), common::free_port()];
    let text = common::pair_topology(ports[0], ports[1], common::DemoHook::Http)
        + &common::switch_link(switch_port);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("links.toml");
    std::fs::write(&file, text).expect("write topology");
    let up = Up::start_in(dir, file, ports);
    up.wait_pair().await;
    let driver = Driver::start();
    let client = driver.session(1280, 900).await;
    client
        .goto(&format!("http://{}/", up.api))
        .await
        .expect("open the dashboard");
    let states = "return [...document.querySelectorAll('#links tr[data-link=\"uplink\"]')]\
                  .map((tr) => tr.dataset.instance + '=' + tr.dataset.state).sort().join(',') \
                  === arguments[0];";
    wait_js(
        &client,
        "uplink up on web/a and web/b",
        states,
        vec![json!("a=up,b=up")],
    )
    .await;
    drop(switch);
    let took = wait_js(
        &client,
        "uplink down on web/a and web/b, without a reload",
        states,
        vec![json!("a=down,b=down")],
    )
    .await;
    println!("the lost switch showed on the page after {took:?}");
    let text = js(
        &client,
        "return document.querySelector('#links tr[data-link=\"uplink\"][data-instance=\"a\"]').textContent;",
        vec![],
    )
    .await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("▼ down") && t.contains("unreachable")),
        "{text}"
    );
    let (severe, recorded) = console_errors(&driver, &client).await;
    assert!(
        unexpected(severe.clone()).is_empty(),
        "console errors: {severe:#?}"
    );
    assert_eq!(recorded, json!([]));
    client.close().await.expect("close the browser");
}

/// Sites on the dashboard: each site's role and state, and a pinned app's
/// read-only state, live, on the shipped Workspace example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_site_states_and_a_read_only_app_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workspace.toml"
    ));
    let up = Up::start_in(dir, example, [0, 0]);
    up.wait_for_app("conf", "conf/a primary", 30, |a| {
        a.primary.as_deref() == Some("a")
    })
    .await;
    let driver = Driver::start();
    let client = driver.session(1280, 900).await;
    client
        .goto(&format!("http://{}/", up.api))
        .await
        .expect("open the dashboard");
    wait_js(
        &client,
        "dc1 active and up, dc2 a spare",
        "const a = document.querySelector('[data-site=\"dc1\"]'), b = document.querySelector('[data-site=\"dc2\"]');
         return !!a && !!b && a.dataset.siteRole === 'active' && a.dataset.siteState === 'up'
           && b.dataset.siteRole === 'spare' && a.innerText.includes('site dc1 (active, up)');",
        vec![],
    )
    .await;
    assert_eq!(
        js(
            &client,
            "return document.querySelectorAll('.read-only').length;",
            vec![]
        )
        .await,
        json!(0)
    );
    let request = tandem_api::types::SiteRequest {
        force: true,
        confirm: Some("dc1".into()),
    };
    let outcome = up
        .client()
        .site_action("dc1", "fail", &request, Duration::from_secs(10))
        .await
        .expect("fail dc1");
    assert!(
        matches!(outcome, tandem_client::SwitchoverOutcome::Done { .. }),
        "{outcome:?}"
    );
    let took = wait_js(
        &client,
        "dc1 failed and conf read-only",
        "const a = document.querySelector('[data-site=\"dc1\"]');
         const ro = document.querySelector('[data-app=\"conf\"] [data-read-only=\"dc1\"]');
         return !!a && a.dataset.siteState === 'failed' && !!ro
           && ro.innerText.includes('read-only: site dc1 was declared failed');",
        vec![],
    )
    .await;
    println!(
        "site failure shown on the dashboard {} ms after it was done",
        took.as_millis()
    );
    let (severe, _) = console_errors(&driver, &client).await;
    assert!(severe.is_empty(), "console errors: {severe:#?}");
}
