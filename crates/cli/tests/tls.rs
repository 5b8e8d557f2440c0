//! HTTPS end to end: `tandem certs` makes a CA and a certificate, `tandem
//! up --tls-cert --tls-key` serves the API with it, the CLI and the client
//! library verify it against `--ca` (another CA, the system's CAs or
//! plain HTTP are refused), `tandem proxy` follows the primary over HTTPS,
//! and SIGHUP swaps the certificate without dropping the cluster.
#![allow(clippy::disallowed_methods)] // a test waits with deadlines

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Up, free_port, signal, tandem};
use tandem_client::{ApiClient, ClientOptions};

fn run(args: &[&str]) -> Output {
    Command::new(tandem())
        .args(args)
        .env_remove("TANDEM_CA")
        .env_remove("TANDEM_TOKEN")
        .output()
        .expect("run tandem")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn certs(dir: &Path) {
    let o = run(&["certs", dir.to_str().expect("path")]);
    assert!(o.status.success(), "{}", text(&o));
}

fn client(api: &str, ca: &Path) -> ApiClient {
    ApiClient::with_options(
        api,
        &ClientOptions {
            ca: Some(std::fs::read(ca).expect("CA file")),
            ..Default::default()
        },
    )
    .expect("client")
}

#[tokio::test]
async fn the_api_serves_https_verified_against_its_ca_and_swaps_certificates_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let other = dir.path().join("other");
    let next = dir.path().join("next");
    certs(&pki);
    certs(&other);
    certs(&next);
    // It never overwrites.
    let again = run(&["certs", pki.to_str().expect("path")]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("does not overwrite"),
        "{}",
        text(&again)
    );
    for key in ["ca-key.pem", "api-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} mode {mode:o}");
    }
    // The paths `tandem up` is given: the certificate is replaced there
    // later.
    let cert = dir.path().join("api.pem");
    let key = dir.path().join("api-key.pem");
    std::fs::copy(pki.join("api.pem"), &cert).expect("copy");
    std::fs::copy(pki.join("api-key.pem"), &key).expect("copy");
    let ca = pki.join("ca.pem");
    let (cert_arg, key_arg) = (
        cert.to_str().expect("path").to_owned(),
        key.to_str().expect("path").to_owned(),
    );
    let up = Up::pair_args(dir, &["--tls-cert", &cert_arg, "--tls-key", &key_arg], None);
    let api = up.api.clone();

    // The client library, trusting the right CA.
    let trusted = client(&api, &ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let app = trusted.app("web").await.expect("app over https");
        if app.primary.is_some() {
            break app;
        }
        assert!(Instant::now() < deadline, "no primary\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(trusted.base_url().starts_with("https://"));

    // Another CA, the system's CAs, plain HTTP: refused, each saying why.
    let err = client(&api, &other.join("ca.pem"))
        .status()
        .await
        .expect_err("a certificate of another CA was trusted");
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = ApiClient::new(&format!("https://{api}"))
        .expect("client")
        .status()
        .await
        .expect_err("the system's CAs trusted the cluster's certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = ApiClient::new(&api)
        .expect("client")
        .status()
        .await
        .expect_err("plain HTTP was answered");
    assert!(err.to_string().contains("HTTPS"), "{err}");

    // The CLI: --ca and TANDEM_CA.
    let ca_arg = ca.to_str().expect("path");
    let o = run(&["status", "--api", &api, "--ca", ca_arg]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(tandem())
        .args(["status", "--api", &api])
        .env("TANDEM_CA", ca_arg)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[
        "status",
        "--api",
        &api,
        "--ca",
        other.join("ca.pem").to_str().expect("path"),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--ca"), "{}", text(&o));
    let o = run(&["status", "--api", &api, "--ca", "/nonexistent/ca.pem"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot read the CA file"), "{}", text(&o));

    // `tandem proxy` follows the primary through the HTTPS API.
    let proxy_port = free_port();
    let listen = format!("127.0.0.1:{proxy_port}");
    let mut proxy = Command::new(tandem())
        .args([
            "proxy", "--listen", &listen, "--app", "web", "--api", &api, "--ca", ca_arg,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tandem proxy");
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(v) = common::demo_get(proxy_port).await {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never reached the primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(
        answer["instance"].as_str(),
        first.primary.as_deref(),
        "{answer}"
    );

    // SIGHUP: a certificate of the next CA replaces the first; new
    // connections get it, and the cluster goes on.
    std::fs::copy(next.join("api.pem"), &cert).expect("copy");
    std::fs::copy(next.join("api-key.pem"), &key).expect("copy");
    signal(up.child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client(&api, &next.join("ca.pem")).status().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = client(&api, &ca)
        .status()
        .await
        .expect_err("the replaced certificate is still served");
    assert!(err.to_string().contains("certificate"), "{err}");
    let now = client(&api, &next.join("ca.pem"))
        .app("web")
        .await
        .expect("app");
    assert_eq!(
        (now.primary.as_deref(), now.epoch),
        (first.primary.as_deref(), first.epoch),
        "the reload moved the primary"
    );
    // A broken file is refused at reload: the certificate in force stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    signal(up.child.id(), "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    client(&api, &next.join("ca.pem"))
        .status()
        .await
        .expect("the certificate in force stays after a broken reload");
    assert!(up.log().contains("was not reloaded"), "{}", up.log());
}
