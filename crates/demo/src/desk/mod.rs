//! The "Workspace" demo deployment: an agent desktop (`tandem demo-desk`)
//! served by each of two sites, whose browser client (`tandem-site.js`,
//! [`tandem_client::browser::SITE_JS`]) fails over to the other site by
//! itself.
//!
//! Agents load the desktop from their local site with the backup site in
//! the query string, `http://agents.dc1.example/?site-1=agents.dc2.example`.
//! When the local site is in trouble (its real-time channel lost, the voice
//! service unavailable, a registration refused, the initialisation failing
//! at login, the endpoint reported unregistered) the page moves to the
//! backup by itself and logs in there with the token it carried along:
//! both sites read the same single-sign-on secret (`--sso-secret-file`), so
//! a token one issued the other accepts (the [`token`] module). Fault
//! switches let tests provoke each trouble; the optional journal says how
//! every login happened, so a test can check it from the component's side.
//!
//! # HTTP API
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | the desktop page (login form; "Logged in as X at site S"; the channel's state; the banner) |
//! | `GET /tandem-site.js` | the browser library (`application/javascript`) |
//! | `POST /login` `{"user","password"}` or `{"token"}` | 200 `{"user","session","token","site"}` and the session cookie; 400 bad body (the reason); 401 wrong password or refused token (the reason) |
//! | `GET /rt` | server-sent events (needs the session): `hello` `{"site","user","session"}`, `ping` every 250 ms, `service` `{"service","available","detail"}` (the current state at once, then every change), `unregistered` `{"detail"}`; 401 without a valid session |
//! | `POST /register` | 200 `{"registered":true,..}`; 401 without a session; 503 while the register fault is on |
//! | `GET /init` | 200 `{"user","session","site","services"}`; 401 without a session; 503 while the init fault is on |
//! | `GET /healthz` | 200 `{"status":"ok","site"}` |
//! | `POST /fault/register`, `POST /fault/init` | from now on, registrations (inits) fail, until `POST /fault/clear` |
//! | `POST /fault/unregister` | sends `unregistered` on every open channel; 200 `{"channels": n}` |
//! | `POST /fault/clear` | ends the register and init faults |
//!
//! Errors are `{"error": "..."}`. The session cookie (`tandem_desk_session`,
//! HttpOnly, SameSite=Strict) holds the token itself, so either site
//! accepts it.
//!
//! # Voice
//!
//! With `--voice URL`, the URL is polled every 200 ms (each poll bounded by
//! 500 ms); a non-2xx answer or a failure makes the service `voice`
//! unavailable, reported on every open channel, and available again
//! likewise.
//!
//! # Journal
//!
//! With `--journal FILE`, one line per login:
//! `login user=alice session=0123..cdef site=dc1 via=password` (or
//! `via=token`), each written with one `write` on an append-only file.

mod server;
pub mod token;

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The longest site name.
const MAX_SITE_BYTES: usize = 32;

/// Command-line flags of `tandem demo-desk`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeskArgs {
    /// TCP port of the desktop (HTTP).
    #[arg(long)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// This site's name, shown to the agents (e.g. dc1): 1 to 32 of
    /// A-Z a-z 0-9 . _ -.
    #[arg(long, value_parser = parse_site)]
    pub site: String,

    /// File holding the single-sign-on secret that every site reads (at
    /// least 16 bytes; whitespace at its ends is ignored).
    #[arg(
        long,
        required_unless_present = "sso_secret",
        conflicts_with = "sso_secret"
    )]
    pub sso_secret_file: Option<PathBuf>,

    /// The single-sign-on secret itself, instead of a file (at least 16
    /// bytes).
    #[arg(long, env = "TANDEM_DESK_SSO_SECRET", hide_env_values = true)]
    pub sso_secret: Option<String>,

    /// The password every demo user logs in with.
    #[arg(long, env = "TANDEM_DESK_PASSWORD", default_value = "demo")]
    pub password: String,

    /// Health URL of the voice service, polled every 200 ms: a non-2xx
    /// answer or a failure makes `voice` unavailable.
    #[arg(long)]
    pub voice: Option<String>,

    /// How long a lost channel or an unavailable service must last before
    /// the page moves to the backup site (the page's `hysteresisMs`).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub hysteresis_ms: u64,

    /// After a move, the page does not move again by itself for this long
    /// (the page's `minDwellMs`).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub min_dwell_ms: u64,

    /// Append one line per login (`login user=.. session=.. site=..
    /// via=password|token`) to this file.
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

/// A site name: 1 to 32 of `A-Z a-z 0-9 . _ -` (it is shown in a page).
fn parse_site(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= MAX_SITE_BYTES
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a site name: 1 to {MAX_SITE_BYTES} of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// Serves the desktop until SIGTERM or SIGINT.
///
/// Prints one line to stdout once it listens:
/// `demo-desk {site} listening on {addr}`.
pub async fn run_desk(args: DeskArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    let site = args.site.clone();
    let announce = move || {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "demo-desk {site} listening on {addr}")
            .and_then(|()| stdout.flush())
            .context("cannot write the startup line to stdout")
    };
    serve_desk(args, listener, announce, shutdown).await
}

/// Serves the desktop on `listener` (the caller binds; tests use port 0)
/// until `shutdown` yields a reason; open channels are ended then. `ready`
/// runs once it serves. `args.port` and `args.bind` are ignored.
pub async fn serve_desk(
    args: DeskArgs,
    listener: TcpListener,
    ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    server::serve(args, listener, ready, shutdown).await
}
