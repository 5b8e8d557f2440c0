//! `EtcdStore` against clusters that require TLS client certificates or a
//! user and password (each test starts a one-member cluster).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, ServerTls};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tandem_store::{Store, StoreError};
use tandem_store_etcd::{EtcdOptions, EtcdStore, EtcdTls};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn write(dir: &Path, name: &str, pem: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write a PEM file");
    path
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = ca("tandem test CA");
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("sign");
        (
            write(dir.path(), &format!("{name}.pem"), cert.pem()),
            write(dir.path(), &format!("{name}-key.pem"), key.serialize_pem()),
        )
    };
    let server = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "etcd",
    );
    let client = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "tandem");
    Pki {
        ca: write(dir.path(), "ca.pem", ca.pem()),
        server,
        client,
        _dir: dir,
    }
}

/// Puts, reads back and watches one key.
async fn round_trip(store: &Arc<EtcdStore>) {
    let mut watch = store.watch("/secure/", 0).await.expect("watch");
    let r = store
        .put("/secure/k", b"v".to_vec(), None)
        .await
        .expect("put");
    let got = store.get("/secure/k").await.expect("get").expect("the key");
    assert_eq!((got.value, got.mod_revision), (b"v".to_vec(), r));
    let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("no error");
    assert_eq!(e.revision(), r);
    let lease = store
        .grant_lease(Duration::from_secs(5))
        .await
        .expect("grant");
    store.keep_alive(lease.id).await.expect("keep-alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_works_and_is_required() {
    let pki = pki();
    let tls = ServerTls {
        cert: pki.server.0.clone(),
        key: pki.server.1.clone(),
        client_ca: pki.ca.clone(),
    };
    let cluster = tokio::task::block_in_place(|| Cluster::start_tls(1, Some(tls)));
    let endpoints = cluster.endpoints();
    assert!(endpoints[0].starts_with("https://"));
    let options = |cert: bool, ca: &Path| EtcdOptions {
        connect_timeout: Duration::from_secs(2),
        tls: Some(EtcdTls {
            ca: ca.to_owned(),
            cert: cert.then(|| pki.client.0.clone()),
            key: cert.then(|| pki.client.1.clone()),
        }),
        ..EtcdOptions::default()
    };

    let store = EtcdStore::connect(&endpoints, options(true, &pki.ca))
        .await
        .expect("connect with TLS and a client certificate");
    round_trip(&store).await;

    // Without a client certificate the member refuses the connection.
    match EtcdStore::connect(&endpoints, options(false, &pki.ca)).await {
        Err(StoreError::Unavailable(m)) => {
            println!("without a client certificate: {m}");
            assert!(m.contains("no member answered"), "{m}")
        }
        other => panic!("connect without a client certificate: {other:?}"),
    }
    // A server certificate from another CA is not trusted.
    let stranger = tempfile::tempdir().expect("temporary directory");
    let other_ca = write(stranger.path(), "other-ca.pem", ca("another CA").pem());
    match EtcdStore::connect(&endpoints, options(true, &other_ca)).await {
        Err(StoreError::Unavailable(m)) => {
            println!("trusting another CA: {m}");
            assert!(m.contains("no member answered"), "{m}")
        }
        other => panic!("connect trusting another CA: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_authenticate_and_a_wrong_password_is_refused() {
    let cluster = tokio::task::block_in_place(|| Cluster::start_with(1));
    let endpoints = cluster.endpoints();
    let mut admin = etcd_client::Client::connect(&endpoints, None)
        .await
        .expect("connect an admin client");
    admin
        .user_add("root", "s3cret", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable authentication");

    let user = |password: &str| EtcdOptions {
        user: Some(("root".into(), password.into())),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&endpoints, user("s3cret"))
        .await
        .expect("connect as root");
    round_trip(&store).await;

    match EtcdStore::connect(&endpoints, user("wrong")).await {
        Err(e) => {
            println!("with a wrong password: {e:?}");
            assert!(
                !e.is_unavailable(),
                "a wrong password is not an outage: {e:?}"
            );
            assert!(e.to_string().contains("authentication failed"), "{e}");
            assert!(!e.to_string().contains("wrong"), "{e} repeats the password");
        }
        Ok(_) => panic!("connected with a wrong password"),
    }
}
