//! `tandem certs DIR`: a CA and an API certificate signed by it, for a
//! test cluster or a first try of HTTPS (production certificates come from
//! the site's own CA).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Writes `ca.pem`, `ca-key.pem`, `api.pem` and `api-key.pem` into `dir`
/// (created if missing; keys with mode 0600), the API certificate valid
/// for `names` (host names or IP addresses). Refuses to overwrite.
pub fn run(dir: &Path, names: &[String]) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = if names.is_empty() {
        vec!["127.0.0.1".into(), "localhost".into()]
    } else {
        names.to_vec()
    };
    for n in &names {
        if n.trim().is_empty() || n.contains(char::is_whitespace) {
            bail!("{n:?} is not a host name or an IP address");
        }
    }
    let files = ["ca.pem", "ca-key.pem", "api.pem", "api-key.pem"];
    for f in files {
        let path = dir.join(f);
        if path.exists() {
            bail!(
                "{} exists: tandem certs does not overwrite (choose another directory)",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tandem cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().context("cannot make a key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("cannot make the CA")?;

    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("cannot make a certificate for {}", names.join(", ")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tandem API");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().context("cannot make a key")?;
    let cert = params
        .signed_by(&key, &ca)
        .context("cannot sign the API certificate")?;

    write(&dir.join("ca.pem"), &ca.pem(), 0o644)?;
    write(&dir.join("ca-key.pem"), &ca_key_pem, 0o600)?;
    write(&dir.join("api.pem"), &cert.pem(), 0o644)?;
    write(&dir.join("api-key.pem"), &key.serialize_pem(), 0o600)?;
    let d = dir.display();
    println!(
        "wrote {d}/ca.pem, ca-key.pem, api.pem and api-key.pem (for {})",
        names.join(", ")
    );
    println!("  serve:   tandem up FILE --tls-cert {d}/api.pem --tls-key {d}/api-key.pem");
    println!("  clients: tandem status --ca {d}/ca.pem   (or TANDEM_CA={d}/ca.pem)");
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
