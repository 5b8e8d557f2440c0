//! Properties of the parser: `Display` round-trips, and no input (random,
//! or a valid URL with random edits) makes it panic or point outside the
//! input. The mutation test stands in for the cargo-fuzz target when no
//! fuzzer can run.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use proptest::prelude::*;
use tandem_failover::{Endpoint, FailoverUrl, Options, Scheme, parse};

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![Just(Scheme::Tcp), Just(Scheme::Tls)]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9_-]{0,8}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,5}[a-z0-9])?){0,3}",
        any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
        any::<u128>().prop_map(|n| Ipv6Addr::from(n).to_string()),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (scheme(), host(), 1..=u16::MAX).prop_map(|(scheme, host, port)| Endpoint {
        scheme,
        host,
        port,
    })
}

fn endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    prop::collection::vec(endpoint(), 1..5).prop_map(|mut v| {
        let mut seen = Vec::new();
        v.retain(|e| {
            let new = !seen.contains(e);
            seen.push(e.clone());
            new
        });
        v
    })
}

fn limit() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![Just(None), any::<u32>().prop_map(Some)]
}

/// Valid URLs: every value `parse` can return.
fn failover_url() -> impl Strategy<Value = FailoverUrl> {
    (
        endpoints(),
        (
            0u64..100_000,
            0u64..10_000_000,
            any::<bool>(),
            0.0f64..1000.0,
        ),
        (limit(), limit(), any::<bool>(), any::<bool>()),
        (
            prop::collection::vec(any::<bool>(), 5),
            prop_oneof![
                Just(None),
                (1u64..u64::MAX).prop_map(|ms| Some(Duration::from_millis(ms)))
            ],
            prop_oneof![Just(None), (1u32..=u32::MAX).prop_map(Some)],
        ),
    )
        .prop_map(
            |(
                endpoints,
                (initial, extra, exponential, multiplier),
                (max_attempts, startup_attempts, randomize, priority_backup),
                (pick, timeout, warn),
            )| {
                let priority_uris = if priority_backup {
                    endpoints
                        .iter()
                        .zip(pick)
                        .filter(|(_, p)| *p)
                        .map(|(e, _)| e.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                let options = Options {
                    initial_reconnect_delay: Duration::from_millis(initial),
                    max_reconnect_delay: Duration::from_millis(initial + extra),
                    use_exponential_backoff: exponential,
                    // Above 1 when exponential, anything otherwise.
                    backoff_multiplier: if exponential {
                        1.0 + multiplier.max(1e-9)
                    } else {
                        multiplier
                    },
                    max_reconnect_attempts: max_attempts,
                    startup_max_reconnect_attempts: startup_attempts,
                    randomize,
                    priority_backup,
                    priority_uris,
                    timeout,
                    warn_after_reconnect_attempts: warn,
                };
                FailoverUrl { endpoints, options }
            },
        )
}

/// One random edit of `s`: insert, delete or replace a character, taken
/// from the URL alphabet so that edits stay near valid syntax.
fn mutate(s: &str, edits: &[(u8, usize, char)]) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for &(op, at, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match op % 3 {
            0 => chars.insert(at, c),
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ if at < chars.len() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

fn url_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '(', ')', ',', ':', '/', '?', '&', '=', '[', ']', '.', '-', '0', '1', '9', ' ', 'a',
            'f', 't', 'é', '%', '\n'
        ]),
        any::<char>(),
    ]
}

/// What must hold for any input: no panic (the call itself), an error
/// inside the input on a char boundary that renders, and a round trip for
/// anything accepted.
fn check_any(input: &str) -> Result<(), TestCaseError> {
    match parse(input) {
        Ok(url) => {
            let shown = url.to_string();
            prop_assert_eq!(parse(&shown), Ok(url), "display: {}", shown);
        }
        Err(e) => {
            prop_assert!(e.position <= input.len(), "{:?} for {:?}", e, input);
            prop_assert!(
                input.is_char_boundary(e.position),
                "{:?} for {:?}",
                e,
                input
            );
            let rendered = e.render(input);
            prop_assert!(rendered.contains('^'));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_round_trips(url in failover_url()) {
        let shown = url.to_string();
        prop_assert_eq!(parse(&shown), Ok(url), "display: {}", shown);
    }

    #[test]
    fn arbitrary_strings_never_panic(input in ".{0,80}") {
        check_any(&input)?;
    }

    #[test]
    fn prefixed_garbage_never_panics(tail in "[()a-z0-9:/?&=,.\\[\\]-]{0,60}") {
        check_any(&format!("failover:{tail}"))?;
    }

    #[test]
    fn mutated_valid_urls_never_panic(
        url in failover_url(),
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), url_char()), 1..4),
    ) {
        check_any(&mutate(&url.to_string(), &edits))?;
    }
}

#[test]
fn display_of_a_full_url_is_stable() {
    let input = "failover:(tcp://a:1,tls://[::1]:2)?initialReconnectDelay=100&maxReconnectDelay=5000&backOffMultiplier=1.5&maxReconnectAttempts=3&startupMaxReconnectAttempts=0&randomize=false&priorityBackup=true&priorityURIs=tls://[::1]:2&timeout=2000&warnAfterReconnectAttempts=0";
    let url = parse(input).expect("valid");
    assert_eq!(
        url.to_string(),
        "failover:(tcp://a:1,tls://[::1]:2)?initialReconnectDelay=100&maxReconnectDelay=5000&reconnectDelayExponent=1.5&maxReconnectAttempts=3&startupMaxReconnectAttempts=0&randomize=false&priorityBackup=true&priorityURIs=tls://[::1]:2&timeout=2000&warnAfterReconnectAttempts=0"
    );
    assert_eq!(parse(&url.to_string()), Ok(url));
}
