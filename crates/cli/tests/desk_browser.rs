//! End to end: the agent desktop (`tandem demo-desk`) in a real headless
//! Chromium, driven through WebDriver, with two real desk processes as
//! sites dc1 and dc2 (one single-sign-on secret, a hysteresis of 1.5 s) and
//! a real `tandem demo-app` as dc1's voice service. The page, opened at dc1
//! with `?site-1=<dc2>`, moves to dc2 by itself when dc1 is killed (the
//! delay printed, never asserted), when voice stays unavailable, when
//! registration or initialisation fail or the endpoint is unregistered;
//! logged in at dc2 by token (dc2's journal says so), same session, a
//! banner telling why; it stays through a pause shorter than the
//! hysteresis; it returns to dc1 only when the user clicks "Return"; and
//! it refuses a malformed fragment or `site-1`.
#![allow(clippy::disallowed_methods)]

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use browser::Driver;
use common::{free_port, signal, tandem};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use tandem_demo::desk::token::b64url_encode;

/// The page's hysteresis (`--hysteresis-ms` of both desks).
const HYSTERESIS_MS: u64 = 1500;
/// How long the page may take to show something (not a performance bound:
/// the measured delays are printed).
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// How long a process may take to answer after it started.
const START_WAIT: Duration = Duration::from_secs(15);
/// The demo password (the desks' default).
const PASSWORD: &str = "demo";

/// One scenario at a time: each runs its own Chromium and processes, and
/// the timings must not suffer from another's load (the machine may have
/// two cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A process of the scenario: its output goes to a file (kept across
/// restarts); killed when dropped.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: Vec<String>) -> Proc {
        let mut proc = Proc {
            name: name.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        proc.start();
        proc
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(tandem())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, and reaps it.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must run again to die of SIGTERM; SIGKILL
            // needs no cooperation.
            signal(child.id(), "KILL");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// A desk process (a site).
struct Site {
    name: &'static str,
    port: u16,
    journal: PathBuf,
    proc: Proc,
}

impl Site {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn journal(&self) -> Vec<String> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Two sites, dc1's voice, a Chromium, and what the browser logged.
struct Scene {
    _dir: tempfile::TempDir,
    dc1: Site,
    dc2: Site,
    voice: Proc,
    voice_port: u16,
    driver: Driver,
    client: Client,
    console: Mutex<Vec<Value>>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

impl Scene {
    async fn start() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("sso-secret");
        std::fs::write(&secret, "desk-test single-sign-on secret 0123456789\n").expect("secret");
        let voice_port = free_port();
        let voice = Proc::spawn(
            dir.path(),
            "voice",
            vec![
                "demo-app".into(),
                "--port".into(),
                voice_port.to_string(),
                "--app".into(),
                "voice".into(),
            ],
        );
        let site = |name: &'static str, voice: Option<String>| {
            let port = free_port();
            let journal = dir.path().join(format!("journal-{name}.log"));
            let mut args: Vec<String> = vec![
                "demo-desk".into(),
                "--port".into(),
                port.to_string(),
                "--site".into(),
                name.into(),
                "--sso-secret-file".into(),
                secret.to_str().expect("utf-8 path").into(),
                "--hysteresis-ms".into(),
                HYSTERESIS_MS.to_string(),
                "--journal".into(),
                journal.to_str().expect("utf-8 path").into(),
            ];
            if let Some(voice) = voice {
                args.extend(["--voice".into(), voice]);
            }
            Site {
                name,
                port,
                journal,
                proc: Proc::spawn(dir.path(), name, args),
            }
        };
        let dc1 = site("dc1", Some(format!("http://127.0.0.1:{voice_port}/health")));
        let dc2 = site("dc2", None);
        let driver = Driver::start();
        let client = driver.session(1024, 768).await;
        let scene = Scene {
            _dir: dir,
            dc1,
            dc2,
            voice,
            voice_port,
            driver,
            client,
            console: Mutex::new(Vec::new()),
        };
        scene
            .wait_http(&format!("http://127.0.0.1:{voice_port}/health"))
            .await;
        scene.wait_http(&scene.dc1.url("/healthz")).await;
        scene.wait_http(&scene.dc2.url("/healthz")).await;
        scene
    }

    /// Waits until `url` answers 200.
    async fn wait_http(&self, url: &str) {
        let start = Instant::now();
        loop {
            if let Ok(r) = http().get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            if start.elapsed() > START_WAIT {
                self.fail(&format!("{url} answering 200 within {START_WAIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, url: &str) {
        let answer = http()
            .post(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            answer.status().is_success(),
            "POST {url}: {}",
            answer.status()
        );
    }

    /// The browser's console so far (kept: chromedriver gives each entry once).
    async fn console(&self) -> Vec<Value> {
        let fresh = self.driver.browser_log(&self.client).await;
        let mut all = self.console.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(fresh);
        all.clone()
    }

    /// Panics with what the page shows, the browser's console and every
    /// process's output.
    async fn fail(&self, what: &str) -> ! {
        let page = self.page().await;
        let console: Vec<String> = self
            .console()
            .await
            .iter()
            .map(|e| format!("{} {}", e["level"], e["message"]))
            .collect();
        panic!(
            "expected {what}\n--- the page:\n{page:#}\n--- the browser console:\n{}\n--- dc1:\n{}\n--- dc2:\n{}\n--- voice:\n{}\n--- journals: dc1 {:?} dc2 {:?}",
            console.join("\n"),
            self.dc1.proc.output(),
            self.dc2.proc.output(),
            self.voice.output(),
            self.dc1.journal(),
            self.dc2.journal(),
        );
    }

    /// What the page shows; `{"error": ..}` while it cannot be read (e.g.
    /// during a navigation).
    async fn page(&self) -> Value {
        let script = r#"
            const $ = (id) => document.getElementById(id);
            const shown = (id) => !!$(id) && !$(id).hidden;
            return {
              state: window.TandemSite ? TandemSite.state() : null,
              host: location.host,
              href: location.href,
              banner: shown('banner') ? $('banner').innerText : '',
              bannerKind: $('banner') ? $('banner').dataset.kind : null,
              returnShown: shown('return'),
              returnText: $('return') ? $('return').innerText : '',
              loginShown: shown('login'),
              deskShown: shown('desk'),
              user: $('user') ? $('user').innerText : '',
              site: $('site') ? $('site').innerText : '',
              channel: $('channel') ? $('channel').dataset.state : '',
              errors: window.__errors || null,
            };"#;
        match self.client.execute(script, vec![]).await {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    /// Polls the page until `pred` holds; returns how long that took.
    async fn wait_page(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let page = self.page().await;
            if page.get("error").is_none() && pred(&page) {
                return start.elapsed();
            }
            if start.elapsed() > PAGE_WAIT {
                self.fail(&format!("the page to show {what} within {PAGE_WAIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens dc1's page with dc2 as its backup site.
    async fn open_dc1(&self) {
        let url = format!("{}?site-1={}", self.dc1.url("/"), self.dc2.addr());
        self.client.goto(&url).await.expect("open dc1's page");
    }

    /// Types the user and the password into the login form and waits until
    /// the page is logged in at `site`; returns the session id.
    async fn log_in(&self, user: &str, site: &Site) -> String {
        self.wait_page("the login form", |p| p["loginShown"] == true)
            .await;
        for (css, text) in [("#login-user", user), ("#login-password", PASSWORD)] {
            self.client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"))
                .send_keys(text)
                .await
                .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
        }
        self.click("#login-submit").await;
        self.wait_page(
            &format!("{user} logged in at {} with the channel up", site.name),
            |p| ready_at(p, site) && p["state"]["user"] == user && p["state"]["connected"] == true,
        )
        .await;
        let page = scene_page_with_storage(self).await;
        assert_eq!(page["user"], user, "#user shows the user: {page}");
        assert_eq!(
            page["stored"], true,
            "the token is kept in sessionStorage: {page}"
        );
        assert_eq!(page["site"], site.name, "#site shows the site: {page}");
        page["state"]["session"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Waits until the page is at dc2, logged in as `user` with `session`
    /// (any session if None), having moved there; returns how long that
    /// took, the banner and the session.
    async fn wait_moved_to_dc2(
        &self,
        user: &str,
        session: Option<&str>,
    ) -> (Duration, String, String) {
        let took = self
            .wait_page("the page moved to dc2, logged in, same session", |p| {
                ready_at(p, &self.dc2)
                    && p["state"]["moved"] == true
                    && p["state"]["user"] == user
                    && session.is_none_or(|s| p["state"]["session"] == s)
            })
            .await;
        let page = self.page().await;
        let session = page["state"]["session"]
            .as_str()
            .expect("a session")
            .to_owned();
        let session = session.as_str();
        assert_eq!(page["loginShown"], false, "no login form at dc2: {page}");
        assert_eq!(page["user"], user, "{page}");
        assert_eq!(page["site"], "dc2", "{page}");
        assert!(
            page["href"].as_str().is_some_and(|h| !h.contains('#')),
            "the fragment is removed from the address: {page}"
        );
        let banner = page["banner"].as_str().unwrap_or_default().to_owned();
        assert!(
            banner.contains("Moved to site dc2 from dc1"),
            "the banner names the sites: {page}"
        );
        // dc2 logged the user in by the carried token, not a password.
        let via_token = format!("login user={user} session={session} site=dc2 via=token");
        assert!(
            self.dc2.journal().contains(&via_token),
            "dc2's journal lacks {via_token:?}: {:?}",
            self.dc2.journal()
        );
        assert!(
            !self
                .dc2
                .journal()
                .iter()
                .any(|l| l.contains(session) && l.ends_with("via=password")),
            "a password was used at dc2: {:?}",
            self.dc2.journal()
        );
        (took, banner, session.to_owned())
    }

    /// A fresh browser (nothing in its session storage).
    async fn fresh_browser(&mut self) {
        // The old browser's console stays readable in `console`.
        let _ = self.console().await;
        let fresh = self.driver.session(1024, 768).await;
        let old = std::mem::replace(&mut self.client, fresh);
        old.close().await.expect("close the old browser");
    }

    /// No uncaught error, rejected promise or console.error on the page.
    async fn assert_no_page_errors(&self) {
        let page = self.page().await;
        assert_eq!(page["errors"], json!([]), "errors on the page: {page}");
        let scripts: Vec<Value> = self
            .console()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
            .collect();
        assert!(scripts.is_empty(), "console errors: {scripts:#?}");
    }
}

/// What the page shows, and whether the tab's sessionStorage holds a token.
async fn scene_page_with_storage(scene: &Scene) -> Value {
    let mut page = scene.page().await;
    let stored = scene
        .client
        .execute(
            "return sessionStorage.getItem('tandem.token') !== null;",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read sessionStorage: {e}"));
    page["stored"] = stored;
    page
}

/// The page is logged in at `site` (its own host, the library ready).
fn ready_at(page: &Value, site: &Site) -> bool {
    page["host"] == site.addr().as_str()
        && page["state"]["site"] == site.name
        && page["state"]["phase"] == "ready"
        && page["deskShown"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_local_site_moves_the_page_to_the_backup_logged_in_and_the_user_returns() {
    let _serial = SERIAL.lock().await;
    let mut scene = Scene::start().await;
    scene.open_dc1().await;
    let session = scene.log_in("alice", &scene.dc1).await;
    assert_eq!(
        scene.dc1.journal(),
        vec![format!(
            "login user=alice session={session} site=dc1 via=password"
        )]
    );

    // (a) kill -9 of dc1's desk: the page moves to dc2 by itself.
    let killed = Instant::now();
    scene.dc1.proc.kill9();
    let (_, banner, _) = scene.wait_moved_to_dc2("alice", Some(&session)).await;
    let moved_after = killed.elapsed();
    println!(
        "kill -9 of dc1's desk: the page was logged in at dc2 {} ms after the kill (hysteresis {HYSTERESIS_MS} ms); banner: {banner}",
        moved_after.as_millis()
    );
    assert!(
        banner.contains("real-time channel lost"),
        "the banner gives the reason: {banner}"
    );
    assert!(
        moved_after >= Duration::from_millis(HYSTERESIS_MS),
        "moved before the hysteresis: {moved_after:?}"
    );
    let page = scene.page().await;
    assert_eq!(page["returnShown"], false, "dc1 is down: no return: {page}");

    // Sticky: dc2 keeps the page (dc1 is still down), no return by itself.
    tokio::time::sleep(Duration::from_millis(2 * HYSTERESIS_MS)).await;
    let page = scene.page().await;
    assert!(ready_at(&page, &scene.dc2), "the page left dc2: {page}");

    // (d) dc1 comes back: the Return button appears; the page stays at dc2
    // until it is clicked, then goes back to dc1 logged in by token.
    let restarted = Instant::now();
    scene.dc1.proc.start();
    scene.wait_http(&scene.dc1.url("/healthz")).await;
    scene
        .wait_page("the Return to dc1 button", |p| {
            p["returnShown"] == true && p["returnText"] == "Return to dc1"
        })
        .await;
    println!(
        "dc1 restarted: the Return button showed {} ms after the restart",
        restarted.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_millis(2 * HYSTERESIS_MS)).await;
    let page = scene.page().await;
    assert!(
        ready_at(&page, &scene.dc2),
        "the page went back to dc1 by itself: {page}"
    );
    scene.click("#return").await;
    scene
        .wait_page("the page back at dc1, same session", |p| {
            ready_at(p, &scene.dc1)
                && p["state"]["session"] == session.as_str()
                && p["state"]["user"] == "alice"
                && p["state"]["connected"] == true
        })
        .await;
    let page = scene.page().await;
    assert_eq!(page["loginShown"], false, "{page}");
    assert!(
        page["banner"]
            .as_str()
            .is_some_and(|b| b.contains("Moved to site dc1 from dc2: returned by the user")),
        "{page}"
    );
    let via_token = format!("login user=alice session={session} site=dc1 via=token");
    assert_eq!(
        scene.dc1.journal().last(),
        Some(&via_token),
        "dc1's journal"
    );
    scene.assert_no_page_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_unavailable_longer_than_the_hysteresis_moves_the_page_naming_voice() {
    let _serial = SERIAL.lock().await;
    let scene = Scene::start().await;
    scene.open_dc1().await;
    let session = scene.log_in("bob", &scene.dc1).await;
    scene
        .wait_page("voice available at dc1", |p| {
            p["state"]["services"]["voice"]["available"] == true
        })
        .await;

    let unhealthy = Instant::now();
    scene
        .post(&format!("http://127.0.0.1:{}/unhealthy", scene.voice_port))
        .await;
    let (_, banner, _) = scene.wait_moved_to_dc2("bob", Some(&session)).await;
    let after = unhealthy.elapsed();
    println!(
        "voice unhealthy: the page was logged in at dc2 {} ms later (hysteresis {HYSTERESIS_MS} ms); banner: {banner}",
        after.as_millis()
    );
    assert!(
        banner.contains("service voice unavailable"),
        "the banner names voice: {banner}"
    );
    assert!(
        after >= Duration::from_millis(HYSTERESIS_MS),
        "moved before the hysteresis: {after:?}"
    );
    scene.assert_no_page_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_of_the_site_shorter_than_the_hysteresis_does_not_move_the_page() {
    let _serial = SERIAL.lock().await;
    let scene = Scene::start().await;
    scene.open_dc1().await;
    let session = scene.log_in("carol", &scene.dc1).await;

    // 500 ms: shorter than the page's silence limit (1 s) too. 1200 ms:
    // the channel is lost (and reopened) for less than the hysteresis.
    let pid = scene.dc1.proc.pid();
    for pause_ms in [500, 1200] {
        signal(pid, "STOP");
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        signal(pid, "CONT");
        let watch = Duration::from_millis(3 * HYSTERESIS_MS);
        let start = Instant::now();
        let mut polls = 0;
        let mut lost = 0;
        while start.elapsed() < watch {
            let page = scene.page().await;
            if !(ready_at(&page, &scene.dc1)
                && page["state"]["moved"] == false
                && page["state"]["session"] == session.as_str())
            {
                scene
                    .fail(&format!(
                        "the page to stay at dc1 through a {pause_ms} ms pause"
                    ))
                    .await;
            }
            polls += 1;
            if page["state"]["connected"] == false {
                lost += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "SIGSTOP of dc1's desk for {pause_ms} ms: the page stayed at dc1 for the {} ms after (channel seen down in {lost} of {polls} polls)",
            watch.as_millis()
        );
        if pause_ms > 1000 && lost == 0 {
            scene
                .fail(&format!(
                    "the {pause_ms} ms pause to be seen as a channel loss"
                ))
                .await;
        }
        scene
            .wait_page("the channel up at dc1", |p| {
                ready_at(p, &scene.dc1) && p["state"]["connected"] == true
            })
            .await;
    }
    assert!(scene.dc2.journal().is_empty(), "{:?}", scene.dc2.journal());
    scene.assert_no_page_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_gone_silent_longer_than_the_hysteresis_moves_the_page() {
    // As a site cut off by the network: nothing is closed, nothing
    // answers (SIGSTOP of dc1's desk, held until the page has moved).
    let _serial = SERIAL.lock().await;
    let scene = Scene::start().await;
    scene.open_dc1().await;
    let session = scene.log_in("erin", &scene.dc1).await;
    let pid = scene.dc1.proc.pid();
    signal(pid, "STOP");
    let silent = Instant::now();
    let (_, banner, _) = scene.wait_moved_to_dc2("erin", Some(&session)).await;
    let after = silent.elapsed();
    signal(pid, "CONT");
    println!(
        "dc1 silent (SIGSTOP): the page was logged in at dc2 {} ms later (hysteresis {HYSTERESIS_MS} ms); banner: {banner}",
        after.as_millis()
    );
    assert!(
        banner.contains("dc2"),
        "the banner names the site it moved to: {banner}"
    );
    assert!(
        after >= Duration::from_millis(HYSTERESIS_MS),
        "moved before the hysteresis: {after:?}"
    );
    scene.assert_no_page_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_init_failures_and_unregistered_move_the_page() {
    let _serial = SERIAL.lock().await;
    let mut scene = Scene::start().await;

    // Registration refused (twice in a row: the page re-registers every 2 s).
    scene.open_dc1().await;
    let session = scene.log_in("dave", &scene.dc1).await;
    scene.post(&scene.dc1.url("/fault/register")).await;
    let (took, banner, _) = scene.wait_moved_to_dc2("dave", Some(&session)).await;
    println!(
        "registration refused at dc1: the page was at dc2 within {} ms; banner: {banner}",
        took.as_millis()
    );
    assert!(banner.contains("registration failed"), "{banner}");
    scene.post(&scene.dc1.url("/fault/clear")).await;

    // Initialisation failing at login (a fresh browser).
    scene.fresh_browser().await;
    scene.post(&scene.dc1.url("/fault/init")).await;
    scene.open_dc1().await;
    scene
        .wait_page("the login form", |p| p["loginShown"] == true)
        .await;
    for (css, text) in [("#login-user", "erin"), ("#login-password", PASSWORD)] {
        scene
            .client
            .find(Locator::Css(css))
            .await
            .expect("the field")
            .send_keys(text)
            .await
            .expect("type");
    }
    scene.click("#login-submit").await;
    let (took, banner, erin) = scene.wait_moved_to_dc2("erin", None).await;
    assert_eq!(
        scene.dc1.journal().last(),
        Some(&format!(
            "login user=erin session={erin} site=dc1 via=password"
        )),
        "erin logged in at dc1 with her password"
    );
    println!(
        "initialisation failing at dc1: the page was at dc2 within {} ms of the login; banner: {banner}",
        took.as_millis()
    );
    assert!(
        banner.contains("initialisation failed at login"),
        "{banner}"
    );
    scene.post(&scene.dc1.url("/fault/clear")).await;

    // The endpoint reported unregistered (a fresh browser).
    scene.fresh_browser().await;
    scene.open_dc1().await;
    let session = scene.log_in("frank", &scene.dc1).await;
    scene.post(&scene.dc1.url("/fault/unregister")).await;
    let (took, banner, _) = scene.wait_moved_to_dc2("frank", Some(&session)).await;
    println!(
        "endpoint unregistered at dc1: the page was at dc2 within {} ms; banner: {banner}",
        took.as_millis()
    );
    assert!(banner.contains("unregistered"), "{banner}");

    // Both sites in trouble: no ping-pong. Within the minimum dwell (30 s)
    // the page stays at dc2 and says it waits.
    scene.post(&scene.dc2.url("/fault/unregister")).await;
    scene
        .wait_page("the page waiting at dc2", |p| {
            ready_at(p, &scene.dc2)
                && p["bannerKind"] == "waiting"
                && p["banner"].as_str().is_some_and(|b| {
                    b.contains("Site dc2: endpoint reported unregistered")
                        && b.contains("waiting until")
                })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(2 * HYSTERESIS_MS)).await;
    let page = scene.page().await;
    assert!(
        ready_at(&page, &scene.dc2),
        "the page left dc2 within the dwell: {page}"
    );
    scene.assert_no_page_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_fragment_or_site_1_is_refused_and_never_followed() {
    let _serial = SERIAL.lock().await;
    let scene = Scene::start().await;

    // A site-1 that is not host[:port]: refused in the banner; a trouble
    // then leaves the page where it is.
    for bad in [
        "evil.example/steal",
        "javascript:alert(1)",
        "a b",
        "h:99999",
        "@x",
    ] {
        let url = format!("{}?site-1={}", scene.dc1.url("/"), url_escape(bad));
        scene.client.goto(&url).await.expect("open dc1's page");
        scene
            .wait_page(&format!("site-1 {bad:?} refused"), |p| {
                p["bannerKind"] == "notice"
                    && p["banner"]
                        .as_str()
                        .is_some_and(|b| b.contains("is refused: it is not host[:port]"))
                    && p["state"]["backup"].is_null()
            })
            .await;
    }
    let session = scene.log_in("grace", &scene.dc1).await;
    scene.post(&scene.dc1.url("/fault/unregister")).await;
    scene
        .wait_page("the page staying, saying it has no backup", |p| {
            ready_at(p, &scene.dc1)
                && p["bannerKind"] == "no-backup"
                && p["banner"]
                    .as_str()
                    .is_some_and(|b| b.contains("unregistered") && b.contains("staying here"))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(HYSTERESIS_MS)).await;
    let page = scene.page().await;
    assert!(
        ready_at(&page, &scene.dc1) && page["state"]["session"] == session.as_str(),
        "{page}"
    );

    // No site-1 at all: the page never moves, and says so.
    scene.click("#logout").await;
    scene
        .client
        .goto(&scene.dc1.url("/"))
        .await
        .expect("open dc1's page");
    scene.log_in("heidi", &scene.dc1).await;
    scene.post(&scene.dc1.url("/fault/unregister")).await;
    scene
        .wait_page("the page staying without a site-1, saying so", |p| {
            ready_at(p, &scene.dc1)
                && p["state"]["user"] == "heidi"
                && p["bannerKind"] == "no-backup"
                && p["banner"]
                    .as_str()
                    .is_some_and(|b| b.contains("No usable backup site (site-1): staying here"))
        })
        .await;

    // A malformed fragment at dc2: ignored with a warning, the login form.
    let payload = |carry: &Value| b64url_encode(carry.to_string().as_bytes());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let forged = json!({
        "token": "YWxpY2V8MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWZ8OTk5OTk5OTk5OQ.AAAA",
        "session": "0123456789abcdef0123456789abcdef",
        "from": scene.dc1.addr(),
        "fromSite": "dc1",
        "reason": "forged",
        "at": now_ms,
    });
    for (fragment, says) in [
        ("tandem=!!!".to_owned(), "ignored a malformed"),
        (
            format!("tandem={}", payload(&json!([1, 2]))),
            "ignored a malformed",
        ),
        (
            format!("tandem={}", payload(&json!({"token": "x", "session": "y"}))),
            "ignored a malformed",
        ),
        (
            format!("tandem={}", payload(&forged)),
            "the carried token was refused",
        ),
    ] {
        let url = format!(
            "{}?site-1={}#{fragment}",
            scene.dc2.url("/"),
            scene.dc1.addr()
        );
        // A new document each time (a fragment change alone would not
        // load the page again).
        scene.client.goto("about:blank").await.expect("blank page");
        let warnings = |console: &[Value]| {
            console
                .iter()
                .filter(|e| {
                    e["level"] == "WARNING"
                        && e["message"].as_str().is_some_and(|m| m.contains(says))
                })
                .count()
        };
        let before = warnings(&scene.console().await);
        scene.client.goto(&url).await.expect("open dc2's page");
        scene
            .wait_page(&format!("the login form after #{fragment}"), |p| {
                p["loginShown"] == true
                    && p["host"] == scene.dc2.addr().as_str()
                    && p["href"].as_str().is_some_and(|h| !h.contains("tandem="))
            })
            .await;
        if warnings(&scene.console().await) <= before {
            scene
                .fail(&format!("a console warning {says:?} for #{fragment}"))
                .await;
        }
    }
    assert!(
        !scene.dc2.journal().iter().any(|l| l.contains("via=token")),
        "a forged token logged in: {:?}",
        scene.dc2.journal()
    );
    scene.assert_no_page_errors().await;
}

/// Percent-encodes what is not unreserved.
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
