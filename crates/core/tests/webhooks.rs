//! Webhooks in the topology: the model a valid `[[webhooks]]` block gives,
//! and the exact place and message of every problem in one.

use std::time::Duration;

use tandem_core::model::EventKind;
use tandem_core::topology::{Webhook, parse};

/// Follows each case's own text: one site, one host, one app.
const BASE: &str = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"

[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#;

#[test]
fn a_full_webhook_parses_into_the_model() {
    let text = format!(
        r#"[[webhooks]]
name = "oncall"
url = "https://hooks.example/tandem?team=ops"
events = ["promoted", "primary-failed", "fence"]
secret_file = "/etc/tandem/oncall.secret"
timeout = "3s"
retries = 2
{BASE}"#
    );
    let t = parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        t.webhooks,
        vec![Webhook {
            name: "oncall".into(),
            url: "https://hooks.example/tandem?team=ops".into(),
            events: vec![
                EventKind::Promoted,
                EventKind::PrimaryFailed,
                EventKind::Fence
            ],
            secret_file: Some("/etc/tandem/oncall.secret".into()),
            timeout: Duration::from_secs(3),
            retries: 2,
        }]
    );
    // Stored as JSON in the store: it comes back the same.
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""timeout_ms":3000"#), "{json}");
    let back: tandem_core::topology::Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn defaults_apply_and_a_topology_without_webhooks_has_none() {
    let text =
        format!("[[webhooks]]\nname = \"chat\"\nurl = \"http://127.0.0.1:9000/hook\"\n{BASE}");
    let t = parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let w = &t.webhooks[0];
    assert_eq!(w.events, Webhook::DEFAULT_EVENTS.to_vec());
    assert_eq!(w.timeout, Webhook::DEFAULT_TIMEOUT);
    assert_eq!(w.retries, Webhook::DEFAULT_RETRIES);
    assert_eq!(w.secret_file, None);
    assert!(w.wants(EventKind::Promoted));
    assert!(!w.wants(EventKind::Webhook));
    assert!(!w.wants(EventKind::Serving));

    let t = parse("t.toml", BASE).unwrap_or_else(|d| panic!("{d}"));
    assert!(t.webhooks.is_empty());
    // A topology stored before webhooks existed still reads.
    let mut json: serde_json::Value = serde_json::to_value(&t).unwrap();
    assert!(json.get("webhooks").is_none());
    json.as_object_mut().unwrap().remove("webhooks");
    let back: tandem_core::topology::Topology = serde_json::from_value(json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn backoff_doubles_from_half_a_second_and_is_capped() {
    let waits: Vec<u64> = (1..=9)
        .map(|r| Webhook::backoff(r).as_millis() as u64)
        .collect();
    assert_eq!(
        waits,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
    assert_eq!(Webhook::backoff(u32::MAX), Webhook::MAX_BACKOFF);
}

/// (what, toml, line, column, message substring)
const ERROR_CASES: &[(&str, &str, usize, usize, &str)] = &[
    (
        "unknown key",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nsecret = \"s3cr3t\"\n",
        4,
        1,
        r#"unknown key "secret" in webhook "a" (expected one of: name, url, events, secret_file, timeout, retries)"#,
    ),
    (
        "missing url",
        "[[webhooks]]\nname = \"a\"\n",
        1,
        1,
        r#"missing key "url" in webhook "a""#,
    ),
    (
        "missing name",
        "[[webhooks]]\nurl = \"http://x.example/\"\n",
        1,
        1,
        r#"missing key "name" in webhook"#,
    ),
    (
        "invalid name",
        "[[webhooks]]\nname = \"On Call\"\nurl = \"http://x.example/\"\n",
        2,
        8,
        r#"invalid webhook name "On Call""#,
    ),
    (
        "url that does not parse",
        "[[webhooks]]\nname = \"a\"\nurl = \"hooks.example/tandem\"\n",
        3,
        7,
        r#"invalid URL "hooks.example/tandem": relative URL without a base in webhook "a""#,
    ),
    (
        "url with another scheme",
        "[[webhooks]]\nname = \"a\"\nurl = \"ftp://hooks.example/\"\n",
        3,
        7,
        r#"URL "ftp://hooks.example/" must use http or https, not "ftp" in webhook "a""#,
    ),
    (
        "url without a host",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://:80/\"\n",
        3,
        7,
        r#"invalid URL "http://:80/": empty host"#,
    ),
    (
        "url with a fragment",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/#top\"\n",
        3,
        7,
        r#"has a fragment"#,
    ),
    (
        "url not a string",
        "[[webhooks]]\nname = \"a\"\nurl = 80\n",
        3,
        7,
        r#"expected a string for "url" in webhook "a", found an integer"#,
    ),
    (
        "unknown event kind, with a hint",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nevents = [\"promoted\", \"failed\"]\n",
        4,
        23,
        r#"instance-started, health-changed, crash-loop, host, no-candidate, intent, controller, maintenance, fence, link, admin-data, site) (did you mean "primary-failed"?)"#,
    ),
    (
        "webhook events cannot be delivered",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nevents = [\"webhook\"]\n",
        4,
        11,
        r#"event kind "webhook" in webhook "a" cannot be delivered by a webhook"#,
    ),
    (
        "an event kind listed twice",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nevents = [\"fence\", \"fence\"]\n",
        4,
        20,
        r#"event kind "fence" is listed twice in webhook "a""#,
    ),
    (
        "empty events",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nevents = []\n",
        4,
        10,
        r#"empty "events" in webhook "a""#,
    ),
    (
        "events not an array",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nevents = \"promoted\"\n",
        4,
        10,
        r#"expected an array of event kinds"#,
    ),
    (
        "zero timeout",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\ntimeout = \"0s\"\n",
        4,
        11,
        r#"bad duration "0s""#,
    ),
    (
        "timeout too long",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\ntimeout = \"2m\"\n",
        4,
        11,
        r#"timeout (2m) in webhook "a" must be at most 1m"#,
    ),
    (
        "negative retries",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nretries = -1\n",
        4,
        11,
        r#""retries" in webhook "a" must be from 0 to 20, found -1"#,
    ),
    (
        "too many retries",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nretries = 1000\n",
        4,
        11,
        r#""retries" in webhook "a" must be from 0 to 20, found 1000"#,
    ),
    (
        "relative secret file",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\nsecret_file = \"oncall.secret\"\n",
        4,
        15,
        r#"secret_file "oncall.secret" in webhook "a" must be an absolute path"#,
    ),
    (
        "duplicate name",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x.example/\"\n[[webhooks]]\nname = \"a\"\nurl = \"http://y.example/\"\n",
        5,
        8,
        r#"duplicate webhook "a" (first defined at line 2, column 8)"#,
    ),
    (
        "webhooks not an array of tables",
        "webhooks = \"http://x.example/\"\n",
        1,
        12,
        r#"expected an array of tables (write [[webhooks]]) for "webhooks" in the top level, found a string"#,
    ),
];

#[test]
fn each_webhook_problem_is_reported_once_at_its_place() {
    let mut failures = Vec::new();
    for (what, snippet, line, column, needle) in ERROR_CASES {
        let text = format!("{snippet}{BASE}");
        let diags = match parse("case.toml", &text) {
            Ok(_) => {
                failures.push(format!("{what}: parsed without error"));
                continue;
            }
            Err(d) => d.0,
        };
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let ok = diags.len() == 1
            && (diags[0].line, diags[0].column) == (*line, *column)
            && diags[0].message.contains(needle);
        if !ok {
            failures.push(format!(
                "{what}: expected exactly one case.toml:{line}:{column}: ...{needle}...\n  got:\n    {}",
                shown.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
