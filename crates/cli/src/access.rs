//! API tokens on the command line: `--tokens FILE` for the processes that
//! serve the API (reloaded on SIGHUP), and `tandem token new`, which makes
//! a token and adds its hash to a token file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use tandem_api::{Access, Tls, TlsFiles, Tokens, hash_token};

/// Flags of the processes that serve the API.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// The API's token file (see `tandem token new`): every mutation then
    /// needs an `operate` token and reads a `read` one (unless the file
    /// opens them). Reloaded on SIGHUP. Without it the API is open to
    /// anyone who can reach it.
    #[arg(long, env = "TANDEM_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM; `tandem
    /// certs` makes one for a test cluster). Reloaded on SIGHUP.
    #[arg(long, env = "TANDEM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "TANDEM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// What guards the API: its tokens and its certificate.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The tokens (none needed when empty).
    pub access: Access,
    /// HTTPS, when asked for.
    pub tls: Option<Tls>,
}

impl Guard {
    /// The API's state with this guard.
    pub fn apply(&self, state: tandem_api::ApiState) -> tandem_api::ApiState {
        let state = state.with_access(self.access.clone());
        match &self.tls {
            Some(tls) => state.with_tls(tls.clone()),
            None => state,
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl AccessArgs {
    /// The token file's tokens and the certificate, checked now (a bad
    /// file stops the start with its problem) and reloaded on SIGHUP (a
    /// bad file then keeps what is in force and says why). A daemon
    /// (`daemon`: `tandem agent`) also takes SIGHUP with nothing to
    /// reload, as systemd's reload, and only says so; `tandem up` with
    /// nothing to reload keeps SIGHUP's default (a closed terminal ends
    /// it).
    pub fn load(&self, daemon: bool) -> anyhow::Result<Guard> {
        let tokens = match &self.tokens {
            Some(path) => Some(Tokens::load(path).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .map_err(anyhow::Error::msg)?,
            ),
            _ => None,
        };
        let guard = Guard {
            access: Access::new(tokens),
            tls,
        };
        if daemon || self.tokens.is_some() || guard.tls.is_some() {
            reload_on_sighup(guard.clone(), self.tokens.clone())?;
        }
        Ok(guard)
    }
}

fn reload_on_sighup(guard: Guard, tokens: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tokens.is_none() && guard.tls.is_none() {
                tracing::info!("SIGHUP: nothing to reload (no --tokens, no --tls-cert)");
            }
            if let Some(path) = &tokens {
                match Tokens::load(path) {
                    Ok(t) => {
                        tracing::info!(file = %path.display(), tokens = %t.summary(), "API tokens reloaded");
                        guard.access.replace(t);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "the token file was not reloaded: the tokens in force stay"
                    ),
                }
            }
            if let Some(tls) = &guard.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.files().cert.display(),
                        "API certificate reloaded: new connections get it"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "the API certificate was not reloaded: the one in force stays"
                    ),
                }
            }
        }
    });
    Ok(())
}

/// What a token may do, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Read status, events and metrics.
    Read,
    /// Read, and steer: switchover, maintenance, fence.
    Operate,
}

/// `tandem token new`: makes a random token, adds its name, role and hash
/// to `file` (created with mode 0600 if missing), and prints the token,
/// which is stored nowhere.
pub fn new_token(name: &str, role: RoleArg, file: &Path) -> anyhow::Result<ExitCode> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!(
        "tdm_{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let role = match role {
        RoleArg::Read => "read",
        RoleArg::Operate => "operate",
    };
    let before = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("cannot read {}: {e}", file.display()),
    };
    let mut after = before.clone();
    if !after.is_empty() && !after.ends_with('\n') {
        after.push('\n');
    }
    if after.is_empty() {
        after.push_str(
            "# tandem API tokens (hashes only). Reads need a token unless reads = \"open\".\nreads = \"token\"\n",
        );
    }
    after.push_str(&format!(
        "\n[[tokens]]\nname = {name:?}\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        hash_token(&token)
    ));
    // The file as it will be must be valid (a duplicate name, a broken
    // file): nothing is written otherwise.
    Tokens::parse(&after, &file.display().to_string()).map_err(anyhow::Error::msg)?;
    write_private(file, &after)?;
    println!("{token}");
    eprintln!(
        "token {name:?} ({role}) added to {}: give it to its user now, it is stored nowhere (send SIGHUP to a running API to load it)",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path` through a temporary file renamed over it, with
/// mode 0600.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".into())
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
