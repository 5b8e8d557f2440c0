//! TLS link probes against real TLS servers (tokio-rustls, certificates
//! made with rcgen): a handshake verified against the link's CA reports
//! the certificate's expiry; one about to expire is flagged; an untrusted
//! certificate, a wrong name, and a certificate that expires while the
//! test runs are down links.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tandem_agent::probe::{TlsProbe, probe_link};
use tandem_core::topology::{LinkProbe, LinkTarget, TlsCheck};
use tokio::net::TcpListener;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn write(&self, dir: &Path, file: &str) -> String {
        let path = dir.join(file);
        std::fs::write(&path, self.issuer.pem()).expect("write CA");
        path.display().to_string()
    }

    /// A server certificate for 127.0.0.1 and "switch.test", valid until
    /// `lasts` from now.
    fn serve(&self, lasts: time::Duration) -> Der {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "switch.test".into()]).expect("params");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + lasts;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Der {
            cert: cert.der().to_vec(),
            key: key.serialize_der(),
        }
    }
}

/// A certificate and its key, DER-encoded.
struct Der {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Serves TLS with `cert` on a free port until the test ends.
async fn tls_server(der: Der) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(der.cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.key)),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

fn probe() -> LinkProbe {
    LinkProbe {
        timeout: Duration::from_secs(2),
        interval: Duration::from_secs(3),
        ..LinkProbe::default()
    }
}

fn target(addr: SocketAddr) -> LinkTarget {
    LinkTarget {
        name: "switch".into(),
        address: addr.ip(),
        port: addr.port(),
    }
}

fn check(ca: &str, server_name: Option<&str>) -> TlsCheck {
    TlsCheck {
        ca: ca.into(),
        server_name: server_name.map(str::to_owned),
        expiry_warning: Duration::from_secs(14 * 24 * 3600),
    }
}

async fn run(
    ca: &str,
    server_name: Option<&str>,
    addr: SocketAddr,
) -> Result<tandem_core::model::CertSeen, String> {
    let http = reqwest::Client::new();
    let tls = TlsProbe::new(&check(ca, server_name));
    probe_link(
        &probe(),
        Some(&tls),
        Path::new("/nonexistent"),
        &target(addr),
        &http,
    )
    .await
    .map(|c| c.expect("a TLS probe reports the certificate"))
}

#[tokio::test]
async fn a_trusted_certificate_is_up_and_its_expiry_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("switch CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let addr = tls_server(ca.serve(time::Duration::days(90))).await;
    let seen = run(&ca_file, None, addr)
        .await
        .expect("a trusted certificate");
    assert!(!seen.expiring, "{seen:?}");
    let year = (time::OffsetDateTime::now_utc() + time::Duration::days(90)).year();
    assert!(
        seen.not_after.starts_with(&year.to_string()) && seen.not_after.ends_with(" UTC"),
        "{seen:?}"
    );
    // By the name the certificate carries, too.
    run(&ca_file, Some("switch.test"), addr)
        .await
        .expect("by name");

    // One that expires within the warning is flagged.
    let soon = tls_server(ca.serve(time::Duration::days(5))).await;
    let seen = run(&ca_file, None, soon).await.expect("still valid");
    assert!(seen.expiring, "{seen:?}");
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_or_an_unreadable_ca_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("switch CA");
    let other = Ca::new("someone else");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let addr = tls_server(other.serve(time::Duration::days(90))).await;
    let e = run(&ca_file, None, addr).await.expect_err("untrusted");
    assert!(
        e.contains("TLS handshake with") && e.contains("invalid peer certificate"),
        "{e}"
    );

    let addr = tls_server(ca.serve(time::Duration::days(90))).await;
    let e = run(&ca_file, Some("cm1.example"), addr)
        .await
        .expect_err("another name");
    assert!(e.contains("not valid for name \"cm1.example\""), "{e}");

    let e = run("/nonexistent/ca.pem", None, addr)
        .await
        .expect_err("no CA");
    assert!(
        e.contains("cannot read the link's CA /nonexistent/ca.pem"),
        "{e}"
    );
    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let e = run(
        &dir.path().join("empty.pem").display().to_string(),
        None,
        addr,
    )
    .await
    .expect_err("an empty CA");
    assert!(e.contains("holds no certificate"), "{e}");
}

#[tokio::test]
async fn a_certificate_that_expires_during_the_test_turns_the_link_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("switch CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let addr = tls_server(ca.serve(time::Duration::seconds(2))).await;
    let seen = run(&ca_file, None, addr).await.expect("valid for now");
    assert!(seen.expiring, "{seen:?}");
    // X.509 validity has whole seconds: wait past the next one.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let e = run(&ca_file, None, addr).await.expect_err("expired");
    assert!(e.contains("certificate expired"), "{e}");
}
