//! `tandem secret new FILE`: makes the cluster secret every agent signs
//! its failsafe messages with (see `tandem_agent::sign`), and loads it for
//! `tandem agent --cluster-secret-file`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tandem_agent::sign::{ClusterSecret, new_secret_text};

/// `tandem secret` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SecretCmd {
    /// Write a new random cluster secret (32 bytes, hex) to FILE, mode 0600;
    /// copy it to every host and start each agent with
    /// --cluster-secret-file FILE. Refuses to overwrite FILE.
    New {
        /// The file to create.
        file: PathBuf,
    },
}

/// Runs a `tandem secret` subcommand.
pub fn run(cmd: SecretCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCmd::New { file } => {
            new(&file)?;
            println!(
                "wrote a new cluster secret to {} (mode 0600); give every agent the same one: tandem agent --cluster-secret-file {}",
                file.display(),
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates `file` (never overwriting it) with mode 0600 and a new secret.
pub fn new(file: &Path) -> anyhow::Result<()> {
    let text = new_secret_text().context("cannot make a secret")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists: not overwriting a secret (remove it first if you mean to replace it on every host)",
                file.display()
            ),
            _ => anyhow::anyhow!("cannot create {}: {e}", file.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

/// The secret of `--cluster-secret-file`, if given.
pub fn load(file: Option<&Path>) -> anyhow::Result<Option<ClusterSecret>> {
    file.map(|f| ClusterSecret::load(f).map_err(anyhow::Error::from))
        .transpose()
}
