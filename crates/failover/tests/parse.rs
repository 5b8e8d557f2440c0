//! The failover URL parser: valid forms, and a table of malformed URLs with
//! the error kind and the byte position each one must report.

use std::time::Duration;

use tandem_failover::{
    Endpoint, FailoverUrl, NumberProblem, Options, ParseError, ParseErrorKind as K, Scheme, parse,
};

fn tcp(host: &str, port: u16) -> Endpoint {
    Endpoint {
        scheme: Scheme::Tcp,
        host: host.to_string(),
        port,
    }
}

fn tls(host: &str, port: u16) -> Endpoint {
    Endpoint {
        scheme: Scheme::Tls,
        host: host.to_string(),
        port,
    }
}

fn ok(input: &str) -> FailoverUrl {
    match parse(input) {
        Ok(url) => url,
        Err(e) => panic!("{input:?} should parse:\n{}", e.render(input)),
    }
}

fn fails(input: &str) -> ParseError {
    match parse(input) {
        Ok(url) => panic!("{input:?} should not parse, got {url:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_reference_example_parses_with_every_option() {
    let input = "failover:(tcp://localhost:61616,tcp://remotehost:61616)?initialReconnectDelay=10&maxReconnectDelay=30000&useExponentialBackOff=true&backOffMultiplier=2&maxReconnectAttempts=-1&startupMaxReconnectAttempts=-1&randomize=false&priorityBackup=true&timeout=-1";
    let url = ok(input);
    assert_eq!(
        url.endpoints,
        vec![tcp("localhost", 61616), tcp("remotehost", 61616)]
    );
    let o = &url.options;
    assert_eq!(o.initial_reconnect_delay, Duration::from_millis(10));
    assert_eq!(o.max_reconnect_delay, Duration::from_millis(30_000));
    assert!(o.use_exponential_backoff);
    assert_eq!(o.backoff_multiplier, 2.0);
    assert_eq!(o.max_reconnect_attempts, None);
    assert_eq!(o.startup_max_reconnect_attempts, None);
    assert!(!o.randomize);
    assert!(o.priority_backup);
    assert_eq!(o.timeout, None);
    assert!(url.is_priority(&tcp("localhost", 61616)));
    assert!(!url.is_priority(&tcp("remotehost", 61616)));
    // Only what differs from the defaults is written back.
    assert_eq!(
        url.to_string(),
        "failover:(tcp://localhost:61616,tcp://remotehost:61616)?randomize=false&priorityBackup=true"
    );
    assert_eq!(ok(&url.to_string()), url);
}

#[test]
fn defaults_are_the_brokers() {
    let url = ok("failover:(tcp://a:1)");
    assert_eq!(url.options, Options::default());
    let o = Options::default();
    assert_eq!(o.initial_reconnect_delay, Duration::from_millis(10));
    assert_eq!(o.max_reconnect_delay, Duration::from_millis(30_000));
    assert!(o.use_exponential_backoff);
    assert_eq!(o.backoff_multiplier, 2.0);
    assert_eq!(o.max_reconnect_attempts, None);
    assert_eq!(o.startup_max_reconnect_attempts, None);
    assert!(o.randomize);
    assert!(!o.priority_backup);
    assert!(o.priority_uris.is_empty());
    assert_eq!(o.timeout, None);
    assert_eq!(o.warn_after_reconnect_attempts, Some(10));
    assert_eq!(url.to_string(), "failover:(tcp://a:1)");
}

#[test]
fn bare_lists_with_and_without_prefix_and_schemes_are_accepted() {
    let expected = vec![tcp("a", 1), tcp("b", 2)];
    assert_eq!(ok("failover:a:1,b:2").endpoints, expected);
    assert_eq!(ok("failover:tcp://a:1,tcp://b:2").endpoints, expected);
    assert_eq!(ok("failover://(tcp://a:1,tcp://b:2)").endpoints, expected);
    assert_eq!(ok("tcp://a:1,tcp://b:2").endpoints, expected);
    assert_eq!(ok("a:1").endpoints, vec![tcp("a", 1)]);
    assert_eq!(ok("  failover:( a:1 , b:2 )  ").endpoints, expected);
    assert_eq!(ok("FAILOVER:(TCP://A:1,b:2)").endpoints, expected);
    assert_eq!(ok("failover:a:1,b:2").options, Options::default());
}

#[test]
fn ipv6_ipv4_and_tls_endpoints() {
    let url = ok(
        "failover:(tcp://[::1]:61616,tls://10.0.0.1:61617,tls://[0:0::2]:5,TLS://Broker-1.example.COM:443)",
    );
    assert_eq!(
        url.endpoints,
        vec![
            tcp("::1", 61616),
            tls("10.0.0.1", 61617),
            tls("::2", 5),
            tls("broker-1.example.com", 443),
        ]
    );
    assert_eq!(
        url.to_string(),
        "failover:(tcp://[::1]:61616,tls://10.0.0.1:61617,tls://[::2]:5,tls://broker-1.example.com:443)"
    );
    assert_eq!(ok(&url.to_string()), url);
    assert_eq!(
        "tls://[::1]:1".parse::<Endpoint>().map_err(|e| e.kind),
        Ok(tls("::1", 1))
    );
}

#[test]
fn priority_uris_name_the_priority_endpoints() {
    let input = "failover:(tcp://local1:61616,tcp://local2:61616,tcp://remote:61616)?randomize=false&priorityBackup=true&priorityURIs=tcp://local1:61616,tcp://local2:61616";
    let url = ok(input);
    assert_eq!(
        url.options.priority_uris,
        vec![tcp("local1", 61616), tcp("local2", 61616)]
    );
    assert!(url.is_priority(&tcp("local2", 61616)));
    assert!(!url.is_priority(&tcp("remote", 61616)));
    assert_eq!(ok(&url.to_string()), url);
}

#[test]
fn both_multiplier_names_and_other_values_are_read() {
    let a = ok("failover:(a:1)?backOffMultiplier=1.5");
    let b = ok("failover:(a:1)?reconnectDelayExponent=1.5");
    assert_eq!(a, b);
    assert_eq!(a.options.backoff_multiplier, 1.5);
    assert_eq!(
        a.to_string(),
        "failover:(tcp://a:1)?reconnectDelayExponent=1.5"
    );

    let url = ok(
        "failover:(a:1)?maxReconnectAttempts=0&startupMaxReconnectAttempts=3&timeout=2500&warnAfterReconnectAttempts=-5&randomize=TRUE&useExponentialBackOff=false&backOffMultiplier=0.5",
    );
    let o = &url.options;
    assert_eq!(o.max_reconnect_attempts, Some(0));
    assert_eq!(o.startup_max_reconnect_attempts, Some(3));
    assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(o.warn_after_reconnect_attempts, None);
    assert!(o.randomize);
    assert!(!o.use_exponential_backoff);
    assert_eq!(o.backoff_multiplier, 0.5);
    // timeout=0 means no timeout, as in the broker.
    assert_eq!(ok("failover:(a:1)?timeout=0").options.timeout, None);
    assert_eq!(ok(&url.to_string()), url);
}

/// Where a malformed URL must fail.
enum At {
    /// At this byte offset.
    Byte(usize),
    /// At the first occurrence of this text.
    Text(&'static str),
    /// At the last occurrence of this text.
    LastText(&'static str),
    /// At the end of the input.
    End,
}

fn position(input: &str, at: &At) -> usize {
    match at {
        At::Byte(n) => *n,
        At::Text(t) => input.find(t).expect("marker in input"),
        At::LastText(t) => input.rfind(t).expect("marker in input"),
        At::End => input.len(),
    }
}

fn unknown(name: &str, suggestion: Option<&'static str>, case_mismatch: bool) -> K {
    K::UnknownOption {
        name: name.into(),
        suggestion,
        case_mismatch,
    }
}

fn bad_number(name: &str, value: &str, problem: NumberProblem) -> K {
    K::BadNumber {
        name: name.into(),
        value: value.into(),
        problem,
    }
}

fn bad_host(host: &str, reason: &'static str) -> K {
    K::BadHost {
        host: host.into(),
        reason,
    }
}

#[test]
fn malformed_urls_report_the_kind_and_the_offending_byte() {
    use At::*;
    let table: Vec<(&str, K, At)> = vec![
        // Structure.
        ("", K::Empty, Byte(0)),
        ("   ", K::Empty, Byte(0)),
        ("failover:(tcp://a:1", K::UnclosedParenthesis, Text("(")),
        ("failover:((tcp://a:1)", K::UnclosedParenthesis, Byte(9)),
        (
            "failover:(tcp://a:1))",
            K::UnexpectedParenthesis,
            LastText(")"),
        ),
        ("failover:tcp://a:1)", K::UnexpectedParenthesis, Text(")")),
        ("failover:(a:1,(b:2))", K::UnexpectedParenthesis, Byte(14)),
        ("failover:(tcp://a:1)x", K::TrailingGarbage, Text("x")),
        (
            "failover:(tcp://a:1) ?randomize=false",
            K::TrailingGarbage,
            Byte(20),
        ),
        (
            "failvoer:(tcp://a:1)",
            K::UnknownPrefix {
                prefix: "failvoer".into(),
            },
            Byte(0),
        ),
        (
            "failover:tcp://a:1?randomize=false",
            K::OptionsNeedParentheses,
            Text("?"),
        ),
        (
            "failover:(failover:(tcp://a:1))",
            K::NestedFailover,
            Byte(10),
        ),
        (
            "failover:(tcp://failover:(a:1))",
            K::NestedFailover,
            Text("failover:(a"),
        ),
        ("failover:()", K::EmptyEndpointList, Byte(9)),
        ("failover:", K::EmptyEndpointList, Byte(0)),
        ("failover:(  )", K::EmptyEndpointList, Byte(9)),
        (
            "failover:(tcp://a:1,,tcp://b:2)",
            K::EmptyEndpoint,
            LastText(","),
        ),
        ("failover:(tcp://a:1,)", K::EmptyEndpoint, Text(")")),
        (
            "failover:(tcp://a:1,tcp://a:1)",
            K::DuplicateEndpoint {
                endpoint: "tcp://a:1".into(),
            },
            LastText("tcp"),
        ),
        // Endpoints.
        (
            "failover:(udp://a:1)",
            K::UnknownScheme {
                scheme: "udp".into(),
            },
            Text("udp"),
        ),
        (
            "failover:(ssl://a:1)",
            K::UnknownScheme {
                scheme: "ssl".into(),
            },
            Text("ssl"),
        ),
        (
            "failover:(://a:1)",
            K::UnknownScheme { scheme: "".into() },
            Text("://"),
        ),
        (
            "failover:(tcp:/a:1)",
            K::MissingSlashes {
                scheme: "tcp".into(),
            },
            Text("/"),
        ),
        (
            "failover:(tcp://localhost)",
            K::MissingPort,
            Text("localhost"),
        ),
        ("failover:(tcp://localhost:)", K::MissingPort, Text(")")),
        ("failover:(tcp://[::1])", K::MissingPort, Text("[")),
        (
            "failover:(tcp://a:http)",
            K::BadPort {
                text: "http".into(),
            },
            Text("http)"),
        ),
        (
            "failover:(tcp://a:-1)",
            K::BadPort { text: "-1".into() },
            Text("-1"),
        ),
        (
            "failover:(tcp://a:0)",
            K::PortOutOfRange { text: "0".into() },
            Text("0"),
        ),
        (
            "failover:(tcp://a:65536)",
            K::PortOutOfRange {
                text: "65536".into(),
            },
            Text("65536"),
        ),
        (
            "failover:(tcp://a:99999999999999999999999)",
            K::PortOutOfRange {
                text: "99999999999999999999999".into(),
            },
            Text("999"),
        ),
        (
            "failover:(tcp://a:1/queue)",
            K::UnexpectedAfterPort {
                text: "/queue".into(),
            },
            Text("/queue"),
        ),
        (
            "failover:(tcp://a:1?wireFormat.maxInactivityDuration=0)",
            K::EndpointOptions,
            Text("?"),
        ),
        (
            "failover:(tcp://:61616)",
            bad_host("", "empty host"),
            Text(":61616"),
        ),
        (
            "failover:(tcp://bad_host!:1)",
            bad_host(
                "bad_host!",
                "only letters, digits, '-', '_' and '.' are allowed in a host name",
            ),
            Text("!"),
        ),
        (
            "failover:(tcp://a..b:1)",
            bad_host("a..b", "empty label (two dots, or a dot at an end)"),
            Byte(18),
        ),
        (
            "failover:(tcp://-a.b:1)",
            bad_host("-a.b", "a label starts or ends with '-'"),
            Text("-a"),
        ),
        (
            "failover:(tcp://256.1.1.1:1)",
            bad_host("256.1.1.1", "not an IPv4 address"),
            Text("256"),
        ),
        (
            "failover:(tcp://::1:61616)",
            bad_host(
                "::1:61616",
                "an IPv6 address must be in brackets, e.g. tcp://[::1]:61616",
            ),
            Text("::1"),
        ),
        (
            "failover:(tcp://[::g]:1)",
            bad_host("::g", "not an IPv6 address"),
            Text("["),
        ),
        (
            "failover:(tcp://[::1:1)",
            bad_host("[::1:1", "\"[\" without \"]\""),
            Text("["),
        ),
        (
            "failover:(tcp://a b:1)",
            bad_host("a b", "contains whitespace"),
            Text(" "),
        ),
        // Query.
        ("failover:(tcp://a:1)?", K::EmptyQuery, Text("?")),
        (
            "failover:(tcp://a:1)?randomize=false&",
            K::EmptyOption,
            LastText("&"),
        ),
        (
            "failover:(tcp://a:1)?randomize=false&&timeout=5",
            K::EmptyOption,
            LastText("&"),
        ),
        ("failover:(tcp://a:1)?=5", K::EmptyOptionName, Text("=5")),
        (
            "failover:(tcp://a:1)?randomize",
            K::EmptyOptionValue {
                name: "randomize".into(),
            },
            End,
        ),
        (
            "failover:(tcp://a:1)?randomize=&timeout=5",
            K::EmptyOptionValue {
                name: "randomize".into(),
            },
            Text("&"),
        ),
        (
            "failover:(tcp://a:1)?initialReconectDelay=10",
            unknown("initialReconectDelay", Some("initialReconnectDelay"), false),
            Byte(21),
        ),
        (
            "failover:(tcp://a:1)?InitialReconnectDelay=10",
            unknown("InitialReconnectDelay", Some("initialReconnectDelay"), true),
            Byte(21),
        ),
        (
            "failover:(tcp://a:1)?priorityUris=tcp://a:1",
            unknown("priorityUris", Some("priorityURIs"), true),
            Text("priorityUris"),
        ),
        (
            "failover:(tcp://a:1)?retries=3",
            unknown("retries", None, false),
            Text("retries"),
        ),
        (
            "failover:(tcp://a:1)?trackMessages=true",
            K::UnsupportedOption {
                name: "trackMessages".into(),
            },
            Text("trackMessages"),
        ),
        (
            "failover:(tcp://a:1)?nested.wireFormat.x=1",
            K::UnsupportedOption {
                name: "nested.wireFormat.x".into(),
            },
            Text("nested"),
        ),
        (
            "failover:(tcp://a:1)?timeout=5&timeout=6",
            K::DuplicateOption {
                name: "timeout".into(),
                first_position: 21,
            },
            LastText("timeout"),
        ),
        (
            "failover:(tcp://a:1)?backOffMultiplier=3&reconnectDelayExponent=3",
            K::DuplicateOption {
                name: "reconnectDelayExponent".into(),
                first_position: 21,
            },
            Text("reconnect"),
        ),
        (
            "failover:(tcp://a:1)?initialReconnectDelay=ten",
            bad_number("initialReconnectDelay", "ten", NumberProblem::NotAnInteger),
            Text("ten"),
        ),
        (
            "failover:(tcp://a:1)?initialReconnectDelay=1.5",
            bad_number("initialReconnectDelay", "1.5", NumberProblem::NotAnInteger),
            Text("1.5"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectDelay=-5",
            bad_number("maxReconnectDelay", "-5", NumberProblem::Negative),
            Text("-5"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectAttempts=-2",
            bad_number("maxReconnectAttempts", "-2", NumberProblem::Negative),
            Text("-2"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectAttempts=4294967296",
            bad_number(
                "maxReconnectAttempts",
                "4294967296",
                NumberProblem::Overflow,
            ),
            Text("4294967296"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectDelay=18446744073709551616",
            bad_number(
                "maxReconnectDelay",
                "18446744073709551616",
                NumberProblem::Overflow,
            ),
            Text("1844"),
        ),
        (
            "failover:(tcp://a:1)?timeout=-7",
            bad_number("timeout", "-7", NumberProblem::Negative),
            Text("-7"),
        ),
        (
            "failover:(tcp://a:1)?backOffMultiplier=two",
            bad_number("backOffMultiplier", "two", NumberProblem::NotADecimal),
            Text("two"),
        ),
        (
            "failover:(tcp://a:1)?backOffMultiplier=NaN",
            bad_number("backOffMultiplier", "NaN", NumberProblem::NotADecimal),
            Text("NaN"),
        ),
        (
            "failover:(tcp://a:1)?randomize=yes",
            K::BadBoolean {
                name: "randomize".into(),
                value: "yes".into(),
            },
            Text("yes"),
        ),
        (
            "failover:(tcp://a:1)?backOffMultiplier=1",
            K::MultiplierTooSmall { value: "1".into() },
            LastText("1"),
        ),
        (
            "failover:(tcp://a:1)?useExponentialBackOff=true&reconnectDelayExponent=0.5",
            K::MultiplierTooSmall {
                value: "0.5".into(),
            },
            Text("0.5"),
        ),
        (
            "failover:(tcp://a:1)?initialReconnectDelay=5000&maxReconnectDelay=100",
            K::DelayOrder {
                initial_ms: 5000,
                max_ms: 100,
            },
            Text("100"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectDelay=100&initialReconnectDelay=5000",
            K::DelayOrder {
                initial_ms: 5000,
                max_ms: 100,
            },
            Text("5000"),
        ),
        (
            "failover:(tcp://a:1)?maxReconnectDelay=5",
            K::DelayOrder {
                initial_ms: 10,
                max_ms: 5,
            },
            Text("5"),
        ),
        (
            "failover:(tcp://a:1,tcp://b:2)?priorityBackup=true&priorityURIs=tcp://c:3",
            K::PriorityUriNotListed {
                endpoint: "tcp://c:3".into(),
            },
            Text("tcp://c"),
        ),
        (
            "failover:(tcp://a:1)?priorityBackup=true&priorityURIs=tcp://a:1,",
            K::EmptyEndpoint,
            End,
        ),
        (
            "failover:(tcp://a:1)?priorityURIs=tcp://a:1",
            K::PriorityUrisWithoutPriorityBackup,
            Text("priorityURIs"),
        ),
    ];
    assert!(table.len() >= 30);
    let mut failures = Vec::new();
    for (input, kind, at) in &table {
        let expected = position(input, at);
        match parse(input) {
            Ok(url) => failures.push(format!("{input:?}: parsed as {url}")),
            Err(e) if e.kind != *kind || e.position != expected => failures.push(format!(
                "{input:?}: expected {kind:?} at {expected}, got {:?} at {}\n{}",
                e.kind,
                e.position,
                e.render(input)
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn messages_name_the_problem_and_the_fix() {
    let cases = [
        (
            "failover:(tcp://localhost:61616)?initialReconectDelay=10",
            "at byte 33: unknown option \"initialReconectDelay\" (did you mean initialReconnectDelay?)",
        ),
        (
            "failover:(tcp://a:1)?InitialReconnectDelay=10",
            "at byte 21: unknown option \"InitialReconnectDelay\" (option names are case-sensitive: initialReconnectDelay)",
        ),
        (
            "failover:(ssl://a:1)",
            "at byte 10: unknown scheme \"ssl\" (use tls:// for TLS endpoints)",
        ),
        (
            "failover:(tcp://a:1)?maxReconnectAttempts=-2",
            "at byte 42: value \"-2\" of maxReconnectAttempts is negative (the only negative value allowed is -1)",
        ),
        (
            "failover:(tcp://a:1)?timeout=5&timeout=6",
            "at byte 31: option \"timeout\" is given twice (first at byte 21)",
        ),
        (
            "failover:(tcp://a:1)?initialReconnectDelay=5000&maxReconnectDelay=100",
            "at byte 66: initialReconnectDelay (5000 ms) is above maxReconnectDelay (100 ms)",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(fails(input).to_string(), message, "for {input:?}");
    }
}

#[test]
fn render_puts_carets_under_the_offending_part() {
    let input = "failover:(tcp://a:1)?initialReconectDelay=10";
    let rendered = fails(input).render(input);
    assert_eq!(
        rendered,
        "failover:(tcp://a:1)?initialReconectDelay=10\n                     ^^^^^^^^^^^^^^^^^^^^\nat byte 21: unknown option \"initialReconectDelay\" (did you mean initialReconnectDelay?)"
    );
    // A missing part gets one caret where it should be.
    let input = "failover:(tcp://a:)";
    let rendered = fails(input).render(input);
    assert_eq!(rendered.lines().nth(1), Some("                  ^"));
    // Columns count characters, not bytes.
    let input = "failover:(tcp://é:1)";
    let lines: Vec<String> = fails(input)
        .render(input)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines[1], "                ^");
}
