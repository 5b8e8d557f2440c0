//! Role hooks: how an instance learns its role changed. Three kinds: run a
//! command with ROLE and EPOCH as its last arguments, POST JSON to the
//! instance, or write `$TANDEM_ROLE_FILE` and send a signal. Link hooks
//! (exclusive link groups) are command or HTTP hooks too, asked to enable
//! or disable a link ([`run_link_hook`]), or told that the app a link
//! goes to is read-only or writable again ([`run_follower_hook`]).
//!
//! A hook that fails reports whether the process was frozen at that moment
//! (stopped by a signal), which decides between killing it and fencing it
//! (see `tandem_core::instance`).

use std::net::SocketAddr;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tandem_core::instance::HookFailure;
use tandem_core::model::Role;
use tandem_core::topology::{App, Hook, Host, Instance, LinkAction, expand_all};

use crate::probe::{reach, without_url};
use crate::process::{describe_exit, is_stopped, spawn_helper};

/// What a hook needs to know about its instance.
pub struct HookTarget<'a> {
    /// The app.
    pub app: &'a App,
    /// The instance.
    pub instance: &'a Instance,
    /// Its host.
    pub host: &'a Host,
    /// The pid of its process.
    pub pid: u32,
    /// Its role file.
    pub role_file: &'a Path,
}

/// What a hook tells the instance.
#[derive(Debug, Clone, Copy)]
enum Ask<'a> {
    /// Its role (a role hook).
    Role { role: Role, epoch: u64 },
    /// To enable or disable a link, or that the app at its other end is
    /// read-only or writable again (a link hook).
    Link { link: &'a str, action: &'a str },
}

/// Delivers `role` and `epoch` through the app's hook.
pub async fn run_hook(
    hook: &Hook,
    target: &HookTarget<'_>,
    role: Role,
    epoch: u64,
    http: &reqwest::Client,
) -> Result<(), HookFailure> {
    run(hook, target, Ask::Role { role, epoch }, http)
        .await
        .map_err(|error| HookFailure {
            error,
            process_stopped: is_stopped(target.pid),
        })
}

/// Asks the instance to enable or disable `link` through the link's hook:
/// a command gets ACTION and LINK as its last two arguments, an HTTP hook
/// POSTs `{app, instance, link, action}`. Success confirms it is done.
pub async fn run_link_hook(
    hook: &Hook,
    target: &HookTarget<'_>,
    link: &str,
    action: LinkAction,
    http: &reqwest::Client,
) -> Result<(), String> {
    run(
        hook,
        target,
        Ask::Link {
            link,
            action: action.as_str(),
        },
        http,
    )
    .await
}

/// Tells the instance through the hook of `link` (to an app pinned to the
/// active site) that the app is read-only (`read-only`) or writable again
/// (`read-write`), as [`run_link_hook`] delivers an action.
pub async fn run_follower_hook(
    hook: &Hook,
    target: &HookTarget<'_>,
    link: &str,
    read_only: bool,
    http: &reqwest::Client,
) -> Result<(), String> {
    let action = if read_only { "read-only" } else { "read-write" };
    run(hook, target, Ask::Link { link, action }, http).await
}

async fn run(
    hook: &Hook,
    target: &HookTarget<'_>,
    ask: Ask<'_>,
    http: &reqwest::Client,
) -> Result<(), String> {
    let timeout = hook.timeout();
    match tokio::time::timeout(timeout, deliver(hook, target, ask, http)).await {
        Ok(r) => r,
        Err(_) => Err(format!("hook timed out after {} ms", timeout.as_millis())),
    }
}

async fn deliver(
    hook: &Hook,
    t: &HookTarget<'_>,
    ask: Ask<'_>,
    http: &reqwest::Client,
) -> Result<(), String> {
    let (body, tail, env_of_ask) = match ask {
        Ask::Role { role, epoch } => (
            json!({
                "app": t.app.name,
                "instance": t.instance.id,
                "role": role.as_str(),
                "epoch": epoch,
            }),
            [role.as_str().to_string(), epoch.to_string()],
            vec![
                ("TANDEM_ROLE".to_string(), role.as_str().to_string()),
                ("TANDEM_EPOCH".to_string(), epoch.to_string()),
            ],
        ),
        Ask::Link { link, action } => (
            json!({
                "app": t.app.name,
                "instance": t.instance.id,
                "link": link,
                "action": action,
            }),
            [action.to_string(), link.to_string()],
            vec![
                ("TANDEM_LINK".to_string(), link.to_string()),
                ("TANDEM_LINK_ACTION".to_string(), action.to_string()),
            ],
        ),
    };
    match hook {
        Hook::Http { port, path, .. } => {
            let Some(p) = t.instance.ports.get(port) else {
                return Err(format!("instance {} has no port {port}", t.instance.id));
            };
            let url = format!(
                "http://{}{path}",
                SocketAddr::new(reach(t.host.address), *p)
            );
            let resp = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("POST {url} failed: {}", without_url(&e)))?;
            let code = resp.status();
            if code.is_success() {
                Ok(())
            } else {
                let text = resp.text().await.unwrap_or_default();
                Err(format!(
                    "POST {url} answered {code}: {}",
                    text.chars().take(200).collect::<String>()
                ))
            }
        }
        Hook::Command { command, .. } => {
            let mut argv = expand_all(command, t.app, t.instance, t.host);
            argv.extend(tail);
            let first = argv.first().cloned().ok_or("empty hook command")?;
            let mut env = vec![
                ("TANDEM_APP".to_string(), t.app.name.clone()),
                ("TANDEM_INSTANCE".to_string(), t.instance.id.clone()),
                ("TANDEM_PID".to_string(), t.pid.to_string()),
            ];
            env.extend(env_of_ask);
            let mut child = spawn_helper(argv, env)
                .await
                .map_err(|e| format!("cannot run hook {e}"))?;
            let status = child
                .wait()
                .await
                .map_err(|e| format!("hook {first}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("hook {first} {}", describe_exit(status)))
            }
        }
        Hook::Signal { .. } if matches!(ask, Ask::Link { .. }) => {
            Err("a signal hook cannot enable or disable a link".into())
        }
        Hook::Signal { signal, number, .. } => {
            write_role_file(t.role_file, &body)
                .map_err(|e| format!("cannot write role file {}: {e}", t.role_file.display()))?;
            // A frozen process would take the signal only when thawed, too
            // late to count as having stepped down.
            if is_stopped(t.pid) {
                return Err("process is stopped".into());
            }
            let sig = Signal::try_from(*number).map_err(|e| format!("{signal}: {e}"))?;
            let pid = i32::try_from(t.pid).map_err(|_| "pid out of range".to_string())?;
            kill(Pid::from_raw(pid), sig).map_err(|e| format!("kill -{signal} {pid}: {e}"))
        }
    }
}

/// Writes the role file atomically (write then rename).
pub fn write_role_file(path: &Path, body: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(body)?)?;
    std::fs::rename(&tmp, path)
}
