//! The JSON documents of tandem's HTTP API: what the API (`tandem-api`)
//! answers with and the requests it accepts, and what its clients
//! (`tandem-client`, the `tandem` CLI, tools) deserialize.
//!
//! This crate is plain data so that both ends always agree on the JSON
//! without a client pulling in the server's HTTP stack: it depends on
//! `serde` and on `tandem-core` for the model types it re-exports, nothing
//! async. The server re-exports it as `tandem_api::types`.
//!
//! Enumerations keep their store spelling: roles are `"primary"`,
//! `"backup"`, `"stopped"`, ... ([`Role`]), health is `"healthy"`,
//! `"unhealthy"` or `"unknown"` ([`Health`]).
//!
//! ```
//! let doc: tandem_wire::SwitchoverRequest = serde_json::from_str(r#"{"to": "b"}"#).unwrap();
//! assert_eq!(doc.to.as_deref(), Some("b"));
//! ```
#![deny(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use tandem_core::model::{
    Event, EventKind, Health, Intent, IntentKind, IntentState, PendingSwitchover, ProcessState,
    ReadOnly, Role,
};
pub use tandem_core::topology::HaMode;

/// `GET /v1/status`: every app of the topology, in topology order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The topology's name.
    pub topology: String,
    /// The coordination store's backend ("embedded", "etcd").
    pub store: String,
    /// True when the store cannot be read right now (no quorum) and this
    /// is the last state this API read: roles may have changed since.
    #[serde(default)]
    pub stale: bool,
    /// When `stale`: why, and since when (the time of the state shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
    /// One entry per app, in topology order.
    pub apps: Vec<AppDoc>,
    /// One entry per host, in topology order.
    #[serde(default)]
    pub hosts: Vec<HostDoc>,
    /// One entry per site, in topology order.
    #[serde(default)]
    pub sites: Vec<SiteDoc>,
}

/// One site: its role, and whether it is lost (every host's lease ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDoc {
    /// The site's name.
    pub name: String,
    /// `active` or `spare`, now (a promotion may have changed it).
    pub role: String,
    /// Its role in the topology.
    #[serde(default)]
    pub declared_role: String,
    /// `up`; `lost` when every one of its hosts' leases has ended;
    /// `failed` when an operator declared it failed (or promoted another
    /// site over it), until `tandem site restore`.
    pub state: String,
    /// Why it is failed, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Its hosts, in topology order.
    pub hosts: Vec<String>,
    /// Those whose agent holds a lease.
    pub hosts_up: Vec<String>,
}

/// One host: whether its agent holds a lease, and the lease's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDoc {
    /// The host's name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its address.
    pub address: String,
    /// Its agent holds a lease (it is up).
    pub up: bool,
    /// The TTL the store granted its lease (ms), while up.
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
    /// The TTL the topology asks (`lease_ttl`, ms): a granted one longer
    /// than this means a lost host fails over later than configured.
    pub asked_lease_ttl_ms: u64,
}

/// One app: its role assignment and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDoc {
    /// The app's name.
    pub name: String,
    /// Its HA mode.
    pub ha: HaMode,
    /// The last epoch handed out for the app (0: never).
    pub epoch: u64,
    /// The instance that holds the primary grant *and has acknowledged it*
    /// (the same rule as `GET /v1/apps/{app}/primary`); `null` otherwise.
    pub primary: Option<String>,
    /// Why the controller made its last change to the app's roles (empty if
    /// it never did).
    pub reason: String,
    /// The app's instances, in topology order.
    pub instances: Vec<InstanceDoc>,
    /// The switchover the controller is carrying out, if any. Absent when
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<PendingSwitchover>,
    /// The app's recorded intent (the last one asked for, with its
    /// outcome). Only `GET /v1/apps/{app}` fills it (`null` there when
    /// none); absent from `GET /v1/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// A pinned app while no active site that is up has an instance of
    /// it: why it takes no writes. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnly>,
}

/// One instance: where it is placed (from the topology) and what its agent
/// reports (from its status; the status-derived fields are `null`, `role`
/// is `"stopped"` and `health` `"unknown"` when no status exists, i.e. its
/// host is lost or its agent is not running).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDoc {
    /// The instance id.
    pub id: String,
    /// The host it is placed on.
    pub host: String,
    /// That host's address (empty if the host is not in the topology).
    pub address: String,
    /// Its named ports.
    pub ports: BTreeMap<String, u16>,
    /// Its preference for the primary role (higher wins).
    pub priority: i64,
    /// The role the process has acknowledged (`acting` of its status).
    pub role: Role,
    /// The epoch that came with `role`.
    pub epoch: Option<u64>,
    /// The primary role at `epoch` is being delivered and not yet
    /// acknowledged (the instance does not serve yet).
    #[serde(default)]
    pub promoting: bool,
    /// Its pid while running.
    pub pid: Option<u32>,
    /// Its health.
    pub health: Health,
    /// Why the last health check failed, if it did.
    #[serde(default)]
    pub health_detail: Option<String>,
    /// The process's state as its agent sees it.
    pub process: Option<ProcessState>,
    /// Restarts since its agent started.
    pub restarts: Option<u32>,
    /// Restarted too often in a row: not promoted until stable again.
    pub crash_looping: bool,
    /// How its last run ended.
    pub last_exit: Option<String>,
    /// Counts the starts of the instance by its agent.
    pub incarnation: Option<u64>,
    /// Its admin data's mirroring (apps with an `admin_dir`): on the
    /// primary each backup's state and lag, on a backup what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<tandem_core::model::AdminSync>,
}

/// `GET /v1/apps/{app}/primary` (200): the acknowledged primary and how to
/// reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryDoc {
    /// The app.
    pub app: String,
    /// The primary instance.
    pub instance: String,
    /// Its host.
    pub host: String,
    /// Its host's address.
    pub address: String,
    /// Its port named `main` if it has one, else its port with the
    /// alphabetically first name; `null` if it has no ports.
    pub port: Option<u16>,
    /// All its named ports.
    pub ports: BTreeMap<String, u16>,
    /// The epoch it acknowledged with the primary role.
    pub epoch: u64,
}

/// `GET /v1/apps/{app}/members`: the instances serving now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersDoc {
    /// The app.
    pub app: String,
    /// How many members are healthy (the length of `members`).
    pub healthy: u32,
    /// The app is healthy while `healthy >= min_healthy` (n-plus-1).
    pub min_healthy: u32,
    /// Running, healthy instances in a serving role.
    pub members: Vec<MemberDoc>,
}

/// One serving instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDoc {
    /// The instance id.
    pub instance: String,
    /// Its host.
    pub host: String,
    /// Its host's address.
    pub address: String,
    /// Its main port (as in [`PrimaryDoc::port`]).
    pub port: Option<u16>,
    /// All its named ports.
    pub ports: BTreeMap<String, u16>,
    /// Its role.
    pub role: Role,
    /// Its epoch, if it has one.
    pub epoch: Option<u64>,
}

/// `GET /v1/links`: every link of the topology, judged for each instance
/// of the app it goes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksDoc {
    /// In topology order.
    pub links: Vec<LinkDoc>,
}

/// One link and its state per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDoc {
    /// Its name (default `FROM->TO`).
    pub name: String,
    /// The app that connects.
    pub from: String,
    /// The app or endpoint connected to.
    pub to: String,
    /// `app` or `endpoint`.
    pub to_kind: String,
    /// `one`, `one-or-more` or `optional`.
    pub cardinality: String,
    /// Whether a down link degrades the instance (not for `optional`).
    pub required: bool,
    /// Whether the connection uses TLS.
    pub tls: bool,
    /// The exclusive group it is in, if any (at most one link of a group
    /// is active on an instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<String>,
    /// Each instance of `from`, in topology order.
    pub instances: Vec<LinkInstanceDoc>,
}

/// A link's state for one instance of its `from` app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInstanceDoc {
    /// The instance's id.
    pub instance: String,
    /// Its host.
    pub host: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    /// Why, in a few words.
    pub detail: String,
    /// For a link of an exclusive group: whether it is the group's active
    /// link on the instance (enabled by tandem and confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// What its host sees of each target, in name order.
    pub targets: Vec<LinkTargetDoc>,
}

/// What an instance's host sees of one target of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTargetDoc {
    /// The target instance's id, or the endpoint's name.
    pub target: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    /// Why the last probe failed, while it counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a TLS link: when the certificate its last handshake saw
    /// expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<String>,
    /// That certificate expires within the link's `tls_expiry_warning`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cert_expiring: bool,
}

/// The body of every error answer: `{"error": "one clear sentence"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// What went wrong, in one sentence.
    pub error: String,
    /// On a "no primary" answer (`GET /v1/apps/{app}/primary`, 503): why,
    /// as the controller last explained the app's roles. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On a refused switchover (409): the id of the refused intent. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// On a "no primary" answer for a pinned app while no active site that
    /// is up has an instance of it: the site lost and why. Clients may
    /// read what they have; writes are refused until an operator promotes
    /// a spare site or the site returns. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<Box<ReadOnly>>,
    /// On a "no primary" answer while the primary drains before a planned
    /// switchover: that primary. It takes no new work, but work already
    /// under way there may finish (a proxy keeps its open connections).
    /// Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<Box<PrimaryDoc>>,
}

impl ErrorDoc {
    /// An error with just a message.
    pub fn new(error: impl Into<String>) -> ErrorDoc {
        ErrorDoc {
            error: error.into(),
            reason: None,
            intent: None,
            read_only: None,
            draining: None,
        }
    }
}

/// `POST /v1/apps/{app}/switchover` body. An empty body or `{}` lets the
/// controller pick the best backup. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The instance to promote, if the caller names one.
    #[serde(default)]
    pub to: Option<String>,
}

/// Where an accepted switchover stands when the API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchoverProgress {
    /// Recorded; the controller has not acted on it yet (202).
    Pending,
    /// The controller is carrying it out (202).
    Running,
    /// Carried out (200).
    Done,
}

/// `POST /v1/apps/{app}/switchover` answer when the switchover was done
/// (200) or is still under way at the timeout (202). A refusal is a 409
/// [`ErrorDoc`] carrying the intent id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverResponse {
    /// The app.
    pub app: String,
    /// The id of the recorded intent.
    pub intent: String,
    /// Where it stands.
    pub outcome: SwitchoverProgress,
    /// What the controller did (when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/hosts/{host}/fence` answer when the fence device confirmed
/// (200) or the request is still under way at the timeout (202). A
/// refusal is a 409 [`ErrorDoc`] carrying the request's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceResponse {
    /// The host.
    pub host: String,
    /// The id of the recorded request.
    pub intent: String,
    /// Where it stands.
    pub outcome: SwitchoverProgress,
    /// What the controller did (when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/sites/{site}/{fail|promote|restore}` body. An empty body or
/// `{}` asks without force. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRequest {
    /// Act although a site concerned still has hosts holding leases.
    #[serde(default)]
    pub force: bool,
    /// With `force`: the name of the site that may be treated as gone
    /// (`fail`: the site itself; `promote`: the active site it replaces),
    /// typed again as a confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
}

/// `POST /v1/sites/{site}/{action}` answer when the controller carried it
/// out (200) or at the timeout (202). A refusal is a 409 [`ErrorDoc`]
/// carrying the request's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteResponse {
    /// The site.
    pub site: String,
    /// What was asked: `fail`, `promote` or `restore`.
    pub action: String,
    /// The id of the recorded request.
    pub intent: String,
    /// Where it stands.
    pub outcome: SwitchoverProgress,
    /// What the controller did (when done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/events`: the event log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsDoc {
    /// The events, by increasing `seq`.
    pub events: Vec<Event>,
}

/// `GET /healthz`: the API's own liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthzDoc {
    /// Always `"ok"`.
    pub status: String,
}

/// `POST /v1/apps/{app}/maintenance` body: turn the app's maintenance on or
/// off. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// Turn maintenance on or off.
    pub on: bool,
}
