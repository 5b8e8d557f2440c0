//! Parsing `etcd://` store URLs, and what `EtcdStore::connect` refuses
//! before (or without) reaching any member.

#![allow(clippy::disallowed_methods)] // tests keep time

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tandem_store::StoreError;
use tandem_store_etcd::{EtcdOptions, EtcdStore, EtcdTls, parse_store_url};

#[test]
fn valid_store_urls_parse_into_endpoints() {
    let table: &[(&str, &[&str])] = &[
        ("etcd://127.0.0.1:2379", &["http://127.0.0.1:2379"]),
        (
            "etcd://h1:2379,h2:22379,h3:32379",
            &["http://h1:2379", "http://h2:22379", "http://h3:32379"],
        ),
        ("etcd://h1", &["http://h1:2379"]),
        ("etcd://h1:2379/", &["http://h1:2379"]),
        (
            "etcd+tls://etcd-1.dc1.example:2379,etcd_2.dc1.example",
            &[
                "https://etcd-1.dc1.example:2379",
                "https://etcd_2.dc1.example:2379",
            ],
        ),
        (
            "etcd://[::1]:2379,[fe80::1]",
            &["http://[::1]:2379", "http://[fe80::1]:2379"],
        ),
        ("etcd://h1:1,h1:65535", &["http://h1:1", "http://h1:65535"]),
    ];
    for (url, expected) in table {
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(parse_store_url(url), Ok(expected), "{url}");
    }
}

#[test]
fn malformed_store_urls_are_refused_with_what_is_wrong() {
    // (input, a part of the message that says what is wrong)
    let table: &[(&str, &str)] = &[
        ("", "empty store URL"),
        ("h1:2379", "has no scheme"),
        ("http://h1:2379", "has scheme \"http\""),
        ("etcd3://h1:2379", "has scheme \"etcd3\""),
        ("etcd://", "names no etcd member"),
        ("etcd:///", "names no etcd member"),
        ("etcd://h1:2379,,h2:2379", "member 2 is empty"),
        ("etcd://h1:2379,", "member 2 is empty"),
        ("etcd://h1:", "has ':' but no port"),
        ("etcd://h1:abc", "port \"abc\" is not a number"),
        ("etcd://h1:65536", "port \"65536\" is not a number"),
        ("etcd://h1:0", "port 0 is not a valid port"),
        ("etcd://:2379", "has no host"),
        ("etcd://h1:2379,h1:2379", "listed twice"),
        ("etcd://user:secret@h1:2379", "contains credentials"),
        ("etcd://h1:2379/tandem", "has a path, query or fragment"),
        ("etcd://h1:2379?timeout=5", "has a path, query or fragment"),
        ("etcd://h1 :2379", "contains whitespace"),
        ("etcd://h1;h2", "contains ';'"),
        ("etcd://::1:2379", "more than one ':'"),
        ("etcd://[::1:2379", "unclosed '['"),
        ("etcd://[h1]:2379", "is not an IPv6 address"),
        ("etcd://[::1]2379", "expected ':port' after ']'"),
    ];
    for (url, why) in table {
        match parse_store_url(url) {
            Ok(endpoints) => panic!("{url:?} was accepted as {endpoints:?}"),
            Err(message) => {
                assert!(
                    message.contains(why),
                    "{url:?}: message {message:?} does not say {why:?}"
                );
                if !url.is_empty() && !url.contains("secret") {
                    assert!(
                        message.contains(&format!("{url:?}")) || message.contains(url),
                        "{url:?}: message {message:?} does not quote the URL"
                    );
                }
                assert!(
                    !message.contains("secret"),
                    "{url:?}: message {message:?} repeats the password"
                );
            }
        }
    }
}

fn invalid(result: Result<impl std::fmt::Debug, StoreError>, why: &str) {
    match result {
        Err(StoreError::InvalidArgument(m)) => {
            assert!(m.contains(why), "message {m:?} does not say {why:?}")
        }
        other => panic!("expected InvalidArgument({why:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn connect_refuses_malformed_endpoints_and_options() {
    let opts = EtcdOptions::default;
    invalid(EtcdStore::connect(&[], opts()).await, "no etcd endpoint");
    invalid(
        EtcdStore::connect(&["127.0.0.1:2379".into()], opts()).await,
        "must start with http:// or https://",
    );
    invalid(
        EtcdStore::connect(&["https://127.0.0.1:2379".into()], opts()).await,
        "no TLS options",
    );
    invalid(
        EtcdStore::connect(&["http://a:2379".into(), "http://a:2379".into()], opts()).await,
        "listed twice",
    );
    invalid(
        EtcdStore::connect(
            &["http://a:2379".into()],
            EtcdOptions {
                request_timeout: Duration::ZERO,
                ..opts()
            },
        )
        .await,
        "must be positive",
    );
    let tls = EtcdOptions {
        tls: Some(EtcdTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: None,
            key: None,
        }),
        ..opts()
    };
    invalid(
        EtcdStore::connect(&["http://a:2379".into()], tls.clone()).await,
        "use https://",
    );
    invalid(
        EtcdStore::connect(&["https://a:2379".into()], tls).await,
        "cannot read the etcd TLS CA /nonexistent/ca.pem",
    );
    let debug = format!(
        "{:?}",
        EtcdOptions {
            user: Some(("tandem".into(), "hunter2".into())),
            ..opts()
        }
    );
    assert!(
        debug.contains("tandem") && !debug.contains("hunter2"),
        "{debug}"
    );
}

#[tokio::test]
async fn connect_fails_clearly_when_no_member_answers() {
    // Ports nobody listens on.
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        })
        .collect();
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let connect_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let result = EtcdStore::connect(
        &endpoints,
        EtcdOptions {
            connect_timeout,
            ..EtcdOptions::default()
        },
    )
    .await;
    let took = start.elapsed();
    match result {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("no member answered"), "{m}");
            for e in &endpoints {
                assert!(m.contains(e.as_str()), "{m} does not name {e}");
            }
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        took < connect_timeout + Duration::from_secs(1),
        "took {took:?}"
    );
}
