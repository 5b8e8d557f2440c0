//! `tls://` endpoints: a rustls server with an rcgen certificate on
//! loopback, and the connector with a caller-supplied `ClientConfig`.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tandem_failover::{ConnectError, Connector, FailoverUrl, Scheme, Stream, parse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

const HANG: Duration = Duration::from_secs(20);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
    (certified.cert.der().clone(), certified.signing_key.into())
}

fn client_config(trusted: Option<&CertificateDer<'static>>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(cert) = trusted {
        roots.add(cert.clone()).expect("root");
    }
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS echo-once server: reads up to 64 bytes, answers "pong:" + them.
async fn tls_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                if let Ok(n) = tls.read(&mut buf).await {
                    let mut answer = b"pong:".to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = tls.write_all(&answer).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

fn url(s: &str) -> FailoverUrl {
    parse(s).unwrap_or_else(|e| panic!("{}", e.render(s)))
}

#[tokio::test]
async fn tls_endpoint_connects_with_the_callers_config() {
    let (cert, key) = certificate();
    let port = tls_server(cert.clone(), key).await;
    for host in ["localhost", "127.0.0.1"] {
        let mut connector = Connector::new(url(&format!("failover:(tls://{host}:{port})")))
            .with_tls(client_config(Some(&cert)));
        let mut conn = timeout(HANG, connector.connect())
            .await
            .expect("no hang")
            .expect("connects");
        assert_eq!(conn.endpoint.scheme, Scheme::Tls);
        assert!(matches!(conn.stream, Stream::Tls(_)));
        conn.stream.write_all(b"ping").await.expect("write");
        let mut answer = Vec::new();
        timeout(HANG, conn.stream.read_to_end(&mut answer))
            .await
            .expect("no hang")
            .expect("read");
        assert_eq!(answer, b"pong:ping");
    }
}

#[tokio::test]
async fn tls_without_a_config_is_a_clear_error() {
    let mut connector = Connector::new(url("failover:(tcp://127.0.0.1:1,tls://127.0.0.1:2)"));
    let err = connector.connect().await.expect_err("no tls config");
    assert!(
        matches!(err, ConnectError::TlsNotConfigured { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "endpoint tls://127.0.0.1:2 uses TLS: give the connector a rustls ClientConfig with Connector::with_tls"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails_over_to_the_next_endpoint() {
    let (cert, key) = certificate();
    let untrusted = tls_server(cert, key).await;
    let (good_cert, good_key) = certificate();
    let trusted = tls_server(good_cert.clone(), good_key).await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tls://localhost:{untrusted},tls://localhost:{trusted})?randomize=false&startupMaxReconnectAttempts=0"
    )))
    .with_tls(client_config(Some(&good_cert)));
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!(conn.endpoint.port, trusted);

    let mut connector = Connector::new(url(&format!(
        "failover:(tls://localhost:{untrusted})?startupMaxReconnectAttempts=0"
    )))
    .with_tls(client_config(Some(&good_cert)));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect_err("untrusted");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_handshake_that_never_answers_is_cut_by_the_connect_timeout() {
    // Accepts TCP, never speaks TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut connector = Connector::new(url(&format!(
        "failover:(tls://127.0.0.1:{port})?startupMaxReconnectAttempts=0"
    )))
    .with_tls(client_config(None))
    .with_connect_timeout(Duration::from_millis(200));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect_err("silent");
    let failures = err.failures();
    assert_eq!(failures.len(), 1, "{err}");
    assert_eq!(failures[0].last_error_kind, ErrorKind::TimedOut);

    // The URL's timeout bounds the whole call even with a long connect
    // timeout.
    let mut connector = Connector::new(url(&format!(
        "failover:(tls://127.0.0.1:{port})?timeout=200"
    )))
    .with_tls(client_config(None));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect_err("silent");
    assert!(
        matches!(&err, ConnectError::Timeout { failures, .. } if failures.is_empty()),
        "{err:?}"
    );
    assert!(
        err.to_string().ends_with("no connection attempt finished"),
        "{err}"
    );
}
