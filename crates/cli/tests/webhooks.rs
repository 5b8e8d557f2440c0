//! End to end: webhooks from the real `tandem up`, to receivers run by the
//! test, around a real failover (kill -9 of the primary). Every wait is
//! bounded; nothing is timed: order is read from the event log.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{Up, free_port, pair_topology, signal};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tandem_api::types::Event;

const SECRET: &str = "correct horse battery staple";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    event: String,
    id: String,
    signature: Option<String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A receiver on 127.0.0.1:0 that answers 500 to the first `fail_first`
/// attempts of each delivery id, then 200; it records every request.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        type Shared = (Arc<Mutex<Vec<Delivery>>>, usize);
        async fn hook(
            State((got, fail_first)): State<Shared>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let h = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let id = h("x-tandem-delivery").unwrap_or_default();
            let mut got = got.lock().unwrap();
            let before = got.iter().filter(|d| d.id == id).count();
            let status = if before < fail_first { 500 } else { 200 };
            got.push(Delivery {
                event: h("x-tandem-event").unwrap_or_default(),
                id,
                signature: h("x-tandem-signature"),
                body: body.to_vec(),
                status,
            });
            StatusCode::from_u16(status).unwrap()
        }
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state((got.clone(), fail_first));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until a delivery satisfies `pred`.
    async fn wait_for(&self, what: &str, up: &Up, pred: impl Fn(&Delivery) -> bool) -> Delivery {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(d) = self.deliveries().into_iter().find(|d| pred(d)) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver never got {what}; it got {:#?}\n{}",
                self.deliveries()
                    .iter()
                    .map(|d| (
                        d.event.clone(),
                        d.status,
                        String::from_utf8_lossy(&d.body).into_owned()
                    ))
                    .collect::<Vec<_>>(),
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A receiver that accepts connections and never answers.
async fn hanging_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    format!("http://{addr}/hook")
}

/// Writes the secret file (mode 600) in `dir`; returns its path.
fn secret_file(dir: &std::path::Path) -> String {
    let path = dir.join("oncall.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Runs `tandem up` on the warm pair `web` with `webhooks` (TOML) appended.
fn up_with(webhooks: impl FnOnce(&std::path::Path) -> String) -> Up {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port()];
    let text = format!(
        "{}\n{}",
        pair_topology(ports[0], ports[1], common::DemoHook::Http),
        webhooks(dir.path())
    );
    let topology = dir.path().join("pair.toml");
    std::fs::write(&topology, text).expect("write topology");
    Up::start_in(dir, topology, ports)
}

/// Checks `X-Tandem-Signature: t=<ms>,sha256=<hex>` against `secret`, as a
/// receiver would (the README shows the same steps).
fn signature_verifies(header: &str, body: &[u8], secret: &[u8]) -> bool {
    let Some((t, sig)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",sha256="))
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let Ok(bytes) = (0..sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(sig.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    mac.verify_slice(&bytes).is_ok()
}

/// Kills the primary of `web` with SIGKILL and waits for the backup to be
/// promoted; returns (old primary id, new primary id, new epoch).
async fn fail_over(up: &Up) -> (String, String, u64) {
    let (p, b) = up.wait_pair().await;
    signal(p.pid.expect("primary pid"), "KILL");
    let app = up
        .wait_for("the backup promoted", 15, |a| {
            a.primary.as_deref() == Some(b.id.as_str())
        })
        .await;
    let epoch = app
        .instances
        .iter()
        .find(|i| i.id == b.id)
        .and_then(|i| i.epoch)
        .expect("new epoch");
    (p.id, b.id, epoch)
}

async fn events(up: &Up) -> Vec<Event> {
    up.client()
        .events(None, Some(10_000))
        .await
        .expect("events")
}

/// The promotion of `web/{id}` at `epoch` in the log.
async fn promotion(up: &Up, id: &str, epoch: u64) -> Event {
    events(up)
        .await
        .into_iter()
        .find(|e| {
            e.kind == tandem_core::model::EventKind::Promoted
                && e.instance.as_deref() == Some(id)
                && e.epoch == Some(epoch)
        })
        .expect("the promotion in the log")
}

async fn metrics(up: &Up) -> String {
    reqwest::get(format!("http://{}/metrics", up.api))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `name{labels}` in a metrics exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_notified_signed_to_the_webhook() {
    let receiver = Receiver::start(0).await;
    let up = up_with(|dir| {
        format!(
            "[[webhooks]]\nname = \"oncall\"\nurl = \"{}\"\nevents = [\"promoted\"]\nsecret_file = \"{}\"\n",
            receiver.url,
            secret_file(dir)
        )
    });
    let (_, new, epoch) = fail_over(&up).await;
    let promoted = promotion(&up, &new, epoch).await;

    let d = receiver
        .wait_for("the promotion of the backup", &up, |d| {
            d.json()["seq"] == promoted.seq
        })
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.event, "promoted");
    let body = d.json();
    assert_eq!(body["kind"], "promoted");
    assert_eq!(body["app"], "web");
    assert_eq!(body["instance"], new.as_str());
    assert_eq!(body["epoch"], epoch);
    assert!(
        body["topology"]
            .as_str()
            .is_some_and(|t| t.starts_with("pair")),
        "topology {}",
        body["topology"]
    );
    assert_eq!(body["message"], promoted.message.as_str());
    assert_eq!(d.id.len(), 32, "delivery id {:?}", d.id);

    let header = d.signature.as_deref().expect("a signature header");
    assert!(
        signature_verifies(header, &d.body, SECRET.as_bytes()),
        "signature {header} does not verify"
    );
    assert!(
        !signature_verifies(header, &d.body, b"wrong secret"),
        "a wrong secret verifies"
    );
    let mut tampered = d.body.clone();
    tampered.push(b' ');
    assert!(!signature_verifies(header, &tampered, SECRET.as_bytes()));
    // Only what was asked for: promotions.
    assert!(receiver.deliveries().iter().all(|d| d.event == "promoted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_or_hanging_delays_no_failover_and_its_failures_show() {
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let hanging = hanging_receiver().await;
    let up = up_with(|_| {
        format!(
            "[[webhooks]]\nname = \"down\"\nurl = \"{down}\"\nevents = [\"promoted\"]\ntimeout = \"300ms\"\nretries = 1\n\n\
             [[webhooks]]\nname = \"hanging\"\nurl = \"{hanging}\"\nevents = [\"promoted\"]\ntimeout = \"300ms\"\nretries = 1\n"
        )
    });
    // The failover happens (bounded wait, as without webhooks).
    let (_, new, epoch) = fail_over(&up).await;
    let promoted = promotion(&up, &new, epoch).await;

    // Each webhook gives the delivery up; the log says so, after the
    // promotion it was about.
    for name in ["down", "hanging"] {
        let needle = format!("webhook {name} gave up delivering event {} ", promoted.seq);
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = loop {
            let found = events(&up).await.into_iter().find(|e| {
                e.kind == tandem_core::model::EventKind::Webhook && e.message.starts_with(&needle)
            });
            if let Some(e) = found {
                break e;
            }
            assert!(
                Instant::now() < deadline,
                "no failed delivery of {name} in the log\n{}",
                up.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            failed.seq > promoted.seq,
            "the failure ({}) is logged before the promotion ({})",
            failed.seq,
            promoted.seq
        );
        assert_eq!(failed.reason.as_deref(), Some("delivery_failed"));
        assert_eq!(failed.app.as_deref(), Some("web"));
        assert_eq!(failed.instance.as_deref(), Some(new.as_str()));
        assert!(
            failed.message.contains("after 2 attempt(s)"),
            "{}",
            failed.message
        );
        let why = if name == "down" {
            "cannot connect"
        } else {
            "timed out"
        };
        assert!(failed.message.contains(why), "{}", failed.message);
    }
    // And they are counted.
    let text = metrics(&up).await;
    for name in ["down", "hanging"] {
        let failed = sample(
            &text,
            &format!("tandem_webhook_deliveries_total{{webhook=\"{name}\",outcome=\"failed\"}}"),
        );
        assert!(
            failed.is_some_and(|n| n >= 1.0),
            "no failed delivery of {name} counted:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_the_first_attempts_gets_each_event_once() {
    const FAILS: usize = 2;
    let receiver = Receiver::start(FAILS).await;
    let up = up_with(|_| {
        format!(
            "[[webhooks]]\nname = \"flaky\"\nurl = \"{}\"\nevents = [\"promoted\", \"serving\"]\nretries = 3\n",
            receiver.url
        )
    });
    let (_, new, epoch) = fail_over(&up).await;
    let promoted = promotion(&up, &new, epoch).await;
    // Delivery is in log order: once the backup's "serving" (after its
    // promotion) is delivered, the promotion's delivery is over.
    receiver
        .wait_for("the backup serving", &up, |d| {
            let b = d.json();
            d.status == 200
                && b["kind"] == "serving"
                && b["instance"] == new.as_str()
                && b["epoch"] == epoch
        })
        .await;

    let mut by_id: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    for d in receiver.deliveries() {
        by_id.entry(d.id.clone()).or_default().push(d);
    }
    let attempts = by_id
        .values()
        .find(|ds| ds[0].json()["seq"] == promoted.seq)
        .expect("the promotion was delivered");
    let statuses: Vec<u16> = attempts.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [500, 500, 200], "attempts of the promotion");
    // Every attempt carries the same body; every delivery succeeded once.
    assert!(attempts.iter().all(|d| d.body == attempts[0].body));
    for (id, ds) in &by_id {
        let ok = ds.iter().filter(|d| d.status == 200).count();
        assert_eq!(ok, 1, "delivery {id} succeeded {ok} times");
    }
    let log = events(&up).await;
    assert!(
        !log.iter()
            .any(|e| e.kind == tandem_core::model::EventKind::Webhook),
        "a delivery was given up: {log:#?}"
    );
    let text = metrics(&up).await;
    assert!(
        sample(
            &text,
            "tandem_webhook_deliveries_total{webhook=\"flaky\",outcome=\"delivered\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tandem_webhook_deliveries_total{webhook=\"flaky\",outcome=\"failed\"}"
        ),
        None,
        "{text}"
    );
}
