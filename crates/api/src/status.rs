//! Pure assembly of the status documents from what the store holds: no I/O,
//! so it is unit-tested with hand-made listings.

use std::collections::{BTreeMap, HashMap};

use tandem_core::model::{
    AppRoles, Health, HostRecord, InstanceStatus, PrimaryGrant, ProcessState, Role, SitesRecord,
    keys,
};
use tandem_core::topology::{App, Instance, Topology};
use tandem_store::{KeyValue, Listing};

use crate::types::{
    AppDoc, HostDoc, InstanceDoc, LinkDoc, LinkInstanceDoc, LinkTargetDoc, LinksDoc, PrimaryDoc,
    SiteDoc, StatusDoc,
};

/// What the store holds about the apps, parsed: instance statuses and role
/// assignments. A value that does not parse is logged and treated as absent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    /// app → instance → status.
    statuses: HashMap<String, HashMap<String, InstanceStatus>>,
    /// app → role assignment.
    roles: HashMap<String, AppRoles>,
}

impl Observed {
    /// Parses status keys (`/tandem/status/{app}/{instance}`) and role keys
    /// (`/tandem/roles/{app}`); other keys are ignored.
    pub(crate) fn from_kvs<'a>(
        statuses: impl IntoIterator<Item = &'a KeyValue>,
        roles: impl IntoIterator<Item = &'a KeyValue>,
    ) -> Observed {
        let mut observed = Observed::default();
        for kv in statuses {
            let Some((app, instance)) = keys::parse_status(&kv.key) else {
                continue;
            };
            match serde_json::from_slice::<InstanceStatus>(&kv.value) {
                Ok(status) => {
                    observed
                        .statuses
                        .entry(app.to_owned())
                        .or_default()
                        .insert(instance.to_owned(), status);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable instance status")
                }
            }
        }
        for kv in roles {
            let Some(app) = kv.key.strip_prefix(keys::ROLES) else {
                continue;
            };
            match serde_json::from_slice::<AppRoles>(&kv.value) {
                Ok(r) => {
                    observed.roles.insert(app.to_owned(), r);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable role assignment")
                }
            }
        }
        observed
    }

    /// The status of `app/instance`, if its agent reports one.
    pub(crate) fn status(&self, app: &str, instance: &str) -> Option<&InstanceStatus> {
        self.statuses.get(app)?.get(instance)
    }

    /// The role assignment of `app`, if the controller wrote one.
    pub(crate) fn roles(&self, app: &str) -> Option<&AppRoles> {
        self.roles.get(app)
    }
}

/// Assembles `GET /v1/status` from the topology, the store's backend name,
/// and listings of `/tandem/status/` and `/tandem/roles/`. Apps and
/// instances come in topology order; statuses or roles of apps and
/// instances the topology does not name are ignored.
pub fn status_document(
    topology: &Topology,
    store_backend: &str,
    statuses: &Listing,
    roles: &Listing,
) -> StatusDoc {
    let observed = Observed::from_kvs(&statuses.kvs, &roles.kvs);
    StatusDoc {
        topology: topology.name.clone(),
        store: store_backend.to_owned(),
        stale: false,
        stale_reason: None,
        apps: topology
            .apps
            .iter()
            .map(|app| app_document(topology, app, &observed))
            .collect(),
        hosts: Vec::new(),
        sites: Vec::new(),
    }
}

/// Assembles `GET /v1/links` from the topology and listings of
/// `/tandem/status/` and `/tandem/roles/`: each link judged for each
/// instance of its `from` app ([`tandem_core::links::judge`]).
pub fn links_document(topology: &Topology, statuses: &Listing, roles: &Listing) -> LinksDoc {
    let observed = Observed::from_kvs(&statuses.kvs, &roles.kvs);
    let links = topology
        .links
        .iter()
        .map(|link| {
            let instances = topology
                .app(&link.from)
                .map(|app| app.instances.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|inst| {
                    let status = observed.status(&link.from, &inst.id);
                    let judged =
                        tandem_core::links::judge(topology, link, status, observed.roles(&link.to));
                    let targets = status
                        .filter(|s| s.process == ProcessState::Running)
                        .and_then(|s| s.links.get(&link.name))
                        .map(|t| {
                            t.iter()
                                .map(|(name, r)| LinkTargetDoc {
                                    target: name.clone(),
                                    state: r.state.as_str().to_owned(),
                                    detail: r.detail.clone(),
                                    cert_not_after: r.cert.as_ref().map(|c| c.not_after.clone()),
                                    cert_expiring: r.cert.as_ref().is_some_and(|c| c.expiring),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let active = link.exclusive.as_ref().map(|group| {
                        status
                            .filter(|s| s.process == ProcessState::Running)
                            .and_then(|s| s.active_links.get(group))
                            == Some(&link.name)
                    });
                    LinkInstanceDoc {
                        instance: inst.id.clone(),
                        host: inst.host.clone(),
                        state: judged.state.as_str().to_owned(),
                        detail: judged.detail,
                        active,
                        targets,
                    }
                })
                .collect();
            LinkDoc {
                name: link.name.clone(),
                from: link.from.clone(),
                to: link.to.clone(),
                to_kind: if topology.endpoint(&link.to).is_some() {
                    "endpoint"
                } else {
                    "app"
                }
                .to_owned(),
                cardinality: link.cardinality.as_str().to_owned(),
                required: link.cardinality.is_required(),
                tls: link.tls,
                exclusive: link.exclusive.clone(),
                instances,
            }
        })
        .collect();
    LinksDoc { links }
}

/// Every host of the topology, from a listing of `/tandem/hosts/` (the
/// records agents keep bound to their leases).
pub fn hosts_document(topology: &Topology, hosts: &Listing) -> Vec<HostDoc> {
    let records: BTreeMap<&str, HostRecord> = hosts
        .kvs
        .iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(keys::HOSTS)?;
            Some((name, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    topology
        .hosts
        .iter()
        .map(|h| {
            let record = records.get(h.name.as_str());
            HostDoc {
                name: h.name.clone(),
                site: h.site.clone(),
                address: h.address.to_string(),
                up: record.is_some(),
                lease_ttl_ms: record.and_then(|r| r.lease_ttl_ms),
                asked_lease_ttl_ms: topology.cluster.lease_ttl.as_millis() as u64,
            }
        })
        .collect()
}

/// The operators' decisions about sites, from the `sites` key (none when
/// absent or unreadable, with a warning).
pub fn sites_record(kv: Option<&KeyValue>) -> SitesRecord {
    let Some(kv) = kv else {
        return SitesRecord::default();
    };
    serde_json::from_slice(&kv.value).unwrap_or_else(|e| {
        tracing::warn!(key = %kv.key, error = %e, "ignoring an unreadable sites record");
        SitesRecord::default()
    })
}

/// Every site of the topology, judged from the hosts' documents
/// ([`tandem_core::sites::site_states`]).
pub fn sites_document(
    topology: &Topology,
    record: &SitesRecord,
    hosts: &[HostDoc],
) -> Vec<SiteDoc> {
    let up = |h: &str| hosts.iter().any(|d| d.name == h && d.up);
    tandem_core::sites::site_states(topology, record, up)
        .into_iter()
        .map(|s| SiteDoc {
            state: s.condition().to_owned(),
            name: s.name,
            role: s.role.as_str().to_owned(),
            declared_role: s.declared.as_str().to_owned(),
            failed: s.failed.map(|f| f.why),
            hosts: s.hosts,
            hosts_up: s.hosts_up,
        })
        .collect()
}

/// One app's document (without its intent, which only the app endpoint
/// reads).
pub(crate) fn app_document(topology: &Topology, app: &App, observed: &Observed) -> AppDoc {
    let roles = observed.roles(&app.name);
    let primary = acknowledged_primary(app, roles, |i| observed.status(&app.name, i));
    AppDoc {
        name: app.name.clone(),
        ha: app.ha,
        epoch: roles.map_or(0, |r| r.epoch),
        primary: primary.map(|g| g.instance.clone()),
        reason: roles.map(|r| r.reason.clone()).unwrap_or_default(),
        instances: app
            .instances
            .iter()
            .map(|i| instance_document(topology, i, observed.status(&app.name, &i.id)))
            .collect(),
        switchover: roles.and_then(|r| r.switchover.clone()),
        intent: None,
        read_only: roles.and_then(|r| r.read_only.clone()),
    }
}

fn instance_document(
    topology: &Topology,
    instance: &Instance,
    status: Option<&InstanceStatus>,
) -> InstanceDoc {
    InstanceDoc {
        id: instance.id.clone(),
        host: instance.host.clone(),
        address: host_address(topology, &instance.host),
        ports: instance.ports.clone(),
        priority: instance.priority,
        role: status.map_or(Role::Stopped, |s| s.acting),
        epoch: status.map(|s| s.acting_epoch),
        promoting: status.is_some_and(|s| s.promoting),
        pid: status.and_then(|s| s.pid),
        health: status.map_or(Health::Unknown, |s| s.health),
        health_detail: status.and_then(|s| s.health_detail.clone()),
        process: status.map(|s| s.process),
        restarts: status.map(|s| s.restarts),
        crash_looping: status.is_some_and(|s| s.crash_looping),
        last_exit: status.and_then(|s| s.last_exit.clone()),
        incarnation: status.map(|s| s.incarnation),
        admin: status.map(|s| s.admin.clone()).filter(|a| !a.is_empty()),
    }
}

fn host_address(topology: &Topology, host: &str) -> String {
    topology
        .host(host)
        .map(|h| h.address.to_string())
        .unwrap_or_default()
}

/// The app's primary grant, but only once its holder has acknowledged it:
/// the holder is an instance of the app, its status exists, its process
/// runs, it acts as primary with the grant's epoch, and it is the
/// incarnation and agent session the grant was made for.
pub(crate) fn acknowledged_primary<'a, 's>(
    app: &App,
    roles: Option<&'a AppRoles>,
    status_of: impl FnOnce(&str) -> Option<&'s InstanceStatus>,
) -> Option<&'a PrimaryGrant> {
    let grant = roles?.primary.as_ref()?;
    app.instance(&grant.instance)?;
    let status = status_of(&grant.instance)?;
    status.has_acknowledged(grant).then_some(grant)
}

/// The port clients should use: the one named `main`, else the one whose
/// name sorts first, else none.
pub(crate) fn main_port(instance: &Instance) -> Option<u16> {
    instance
        .port("main")
        .or_else(|| instance.ports.values().next().copied())
}

/// `GET /v1/apps/{app}/primary` for an acknowledged grant.
pub(crate) fn primary_document(
    topology: &Topology,
    app: &App,
    grant: &PrimaryGrant,
) -> Option<PrimaryDoc> {
    let instance = app.instance(&grant.instance)?;
    Some(PrimaryDoc {
        app: app.name.clone(),
        instance: instance.id.clone(),
        host: instance.host.clone(),
        address: host_address(topology, &instance.host),
        port: main_port(instance),
        ports: instance.ports.clone(),
        epoch: grant.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::model::{PendingSwitchover, ProcessState};
    use tandem_core::topology::HaMode;

    const TOPOLOGY: &str = r#"
[cluster]
name = "unit"

[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[[hosts]]
name = "other"
site = "dc1"
address = "10.0.0.2"

[apps.web]
ha = "warm-standby"
command = ["web", "{ports.http}"]

[apps.web.hook]
kind = "http"
port = "http"
path = "/tandem/role"

[[apps.web.instances]]
id = "a"
host = "local"
priority = 100
ports = { http = 18081, admin = 18091 }

[[apps.web.instances]]
id = "b"
host = "other"
ports = { http = 18082, admin = 18092 }

[apps.db]
ha = "none"
command = ["db"]

[[apps.db.instances]]
id = "a"
host = "local"
ports = { main = 15432, aux = 15433 }
"#;

    fn topology() -> Topology {
        match tandem_core::topology::parse("unit.toml", TOPOLOGY) {
            Ok(t) => t,
            Err(d) => panic!("test topology is invalid:\n{d}"),
        }
    }

    fn kv(key: &str, value: &impl serde::Serialize) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: serde_json::to_vec(value).expect("serializable"),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    fn listing(kvs: Vec<KeyValue>) -> Listing {
        Listing { kvs, revision: 7 }
    }

    fn status(acting: Role, epoch: u64) -> InstanceStatus {
        InstanceStatus {
            host: "local".into(),
            process: ProcessState::Running,
            pid: Some(4242),
            session: 9,
            incarnation: 2,
            seen_generation: 3,
            health: Health::Healthy,
            health_detail: None,
            acting,
            acting_epoch: epoch,
            promoting: false,
            drained: 0,
            links: Default::default(),
            active_links: Default::default(),
            admin: Default::default(),
            crash_looping: false,
            restarts: 1,
            last_exit: Some("exited with code 1".into()),
        }
    }

    fn roles_with_primary(instance: &str, epoch: u64) -> AppRoles {
        AppRoles {
            generation: 3,
            epoch,
            primary: Some(PrimaryGrant {
                instance: instance.into(),
                epoch,
                incarnation: 2,
                session: 9,
            }),
            reason: format!("promoted web/{instance} (epoch {epoch}): highest priority"),
            ..AppRoles::default()
        }
    }

    #[test]
    fn empty_store_shows_every_instance_stopped_in_topology_order() {
        let t = topology();
        let doc = status_document(&t, "embedded", &listing(vec![]), &listing(vec![]));
        assert_eq!(doc.topology, "unit");
        assert_eq!(doc.store, "embedded");
        let names: Vec<_> = doc.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "db"]);
        let web = &doc.apps[0];
        assert_eq!(web.ha, HaMode::WarmStandby);
        assert_eq!((web.epoch, web.primary.as_deref()), (0, None));
        assert_eq!(web.reason, "");
        let ids: Vec<_> = web.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        for i in &web.instances {
            assert_eq!(i.role, Role::Stopped);
            assert_eq!(i.health, Health::Unknown);
            assert_eq!(
                (i.pid, i.epoch, i.process, i.restarts),
                (None, None, None, None)
            );
            assert!(!i.crash_looping);
        }
        assert_eq!(web.instances[1].address, "10.0.0.2");
        assert_eq!(web.instances[0].priority, 100);
        assert_eq!(web.instances[0].ports.get("http"), Some(&18081));
    }

    #[test]
    fn a_promotion_in_flight_shows_its_epoch_and_is_not_yet_the_primary() {
        let t = topology();
        let promoting = InstanceStatus {
            promoting: true,
            drained: 0,
            ..status(Role::Primary, 5)
        };
        let statuses = listing(vec![
            kv(&keys::status("web", "a"), &status(Role::Backup, 4)),
            kv(&keys::status("web", "b"), &promoting),
        ]);
        let roles = listing(vec![kv(&keys::roles("web"), &roles_with_primary("b", 5))]);
        let doc = status_document(&t, "embedded", &statuses, &roles);
        let b = &doc.apps[0].instances[1];
        assert_eq!(
            (b.role, b.epoch, b.promoting),
            (Role::Primary, Some(5), true)
        );
        assert_eq!(doc.apps[0].primary, None, "not acknowledged yet");
        // Once acknowledged, it is.
        let statuses = listing(vec![kv(
            &keys::status("web", "b"),
            &status(Role::Primary, 5),
        )]);
        let doc = status_document(&t, "embedded", &statuses, &roles);
        assert_eq!(doc.apps[0].primary.as_deref(), Some("b"));
        assert!(!doc.apps[0].instances[1].promoting);
    }

    #[test]
    fn hosts_say_which_agent_holds_a_lease_and_how_long_it_was_granted() {
        let t = topology();
        let record = HostRecord {
            host: "local".into(),
            pid: 1,
            version: "0.1.0".into(),
            lease_ttl_ms: Some(4000),
        };
        let hosts = hosts_document(&t, &listing(vec![kv(&keys::host("local"), &record)]));
        let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["local", "other"]);
        assert!(hosts[0].up);
        assert_eq!(hosts[0].lease_ttl_ms, Some(4000));
        assert_eq!(hosts[0].asked_lease_ttl_ms, 3000);
        assert!(!hosts[1].up);
        assert_eq!(
            (hosts[1].lease_ttl_ms, hosts[1].address.as_str()),
            (None, "10.0.0.2")
        );
    }

    #[test]
    fn instance_role_is_what_its_process_acknowledged() {
        let t = topology();
        let statuses = listing(vec![
            kv(&keys::status("web", "a"), &status(Role::Primary, 4)),
            kv(&keys::status("web", "b"), &status(Role::Backup, 0)),
        ]);
        // The controller already granted b, which has not acknowledged yet.
        let roles = listing(vec![kv(&keys::roles("web"), &roles_with_primary("b", 5))]);
        let doc = status_document(&t, "embedded", &statuses, &roles);
        let web = &doc.apps[0];
        assert_eq!(web.instances[0].role, Role::Primary);
        assert_eq!(web.instances[0].epoch, Some(4));
        assert_eq!(web.instances[1].role, Role::Backup);
        assert_eq!(web.epoch, 5);
        assert_eq!(
            web.primary, None,
            "b holds the grant but has not acknowledged it"
        );
        assert_eq!(web.reason, "promoted web/b (epoch 5): highest priority");
        let a = &web.instances[0];
        assert_eq!(
            (a.pid, a.restarts, a.incarnation),
            (Some(4242), Some(1), Some(2))
        );
        assert_eq!(a.process, Some(ProcessState::Running));
        assert_eq!(a.last_exit.as_deref(), Some("exited with code 1"));
    }

    #[test]
    fn primary_is_shown_once_the_grant_holder_acknowledged_it() {
        let t = topology();
        let statuses = listing(vec![
            kv(&keys::status("web", "a"), &status(Role::Primary, 5)),
            kv(&keys::status("web", "b"), &status(Role::Backup, 0)),
        ]);
        let mut r = roles_with_primary("a", 5);
        r.switchover = Some(PendingSwitchover {
            drain: None,
            intent: "i1".into(),
            to: "b".into(),
            link: None,
        });
        let roles = listing(vec![kv(&keys::roles("web"), &r)]);
        let doc = status_document(&t, "etcd", &statuses, &roles);
        assert_eq!(doc.apps[0].primary.as_deref(), Some("a"));
        assert_eq!(
            doc.apps[0].switchover.as_ref().map(|s| s.to.as_str()),
            Some("b")
        );
        assert_eq!(doc.apps[1].primary, None);
    }

    #[test]
    fn a_restarted_or_stale_holder_is_not_the_primary() {
        let t = topology();
        let app = t.app("web").expect("web");
        let roles = roles_with_primary("a", 5);
        let ok = status(Role::Primary, 5);
        assert!(acknowledged_primary(app, Some(&roles), |_| Some(&ok)).is_some());
        let cases = [
            (
                "older epoch",
                InstanceStatus {
                    acting_epoch: 4,
                    promoting: false,
                    drained: 0,
                    ..ok.clone()
                },
            ),
            (
                "not acting",
                InstanceStatus {
                    acting: Role::Backup,
                    ..ok.clone()
                },
            ),
            (
                "new incarnation",
                InstanceStatus {
                    incarnation: 3,
                    ..ok.clone()
                },
            ),
            (
                "new session",
                InstanceStatus {
                    session: 10,
                    ..ok.clone()
                },
            ),
            (
                "exited",
                InstanceStatus {
                    process: ProcessState::Backoff,
                    ..ok.clone()
                },
            ),
        ];
        for (what, s) in &cases {
            assert!(
                acknowledged_primary(app, Some(&roles), |_| Some(s)).is_none(),
                "{what}"
            );
        }
        assert!(
            acknowledged_primary(app, Some(&roles), |_| None).is_none(),
            "no status"
        );
        assert!(
            acknowledged_primary(app, None, |_| Some(&ok)).is_none(),
            "no roles"
        );
        let unknown = roles_with_primary("zz", 5);
        assert!(acknowledged_primary(app, Some(&unknown), |_| Some(&ok)).is_none());
    }

    #[test]
    fn unreadable_and_foreign_values_are_treated_as_absent() {
        let t = topology();
        let mut garbage = kv(&keys::status("web", "a"), &"x");
        garbage.value = b"{not json".to_vec();
        let statuses = listing(vec![
            garbage,
            kv(&keys::status("web", "zz"), &status(Role::Primary, 1)),
            kv(&keys::status("gone", "a"), &status(Role::Primary, 1)),
        ]);
        let mut bad_roles = kv(&keys::roles("web"), &"x");
        bad_roles.value = b"[]".to_vec();
        let doc = status_document(&t, "embedded", &statuses, &listing(vec![bad_roles]));
        assert_eq!(doc.apps.len(), 2);
        assert_eq!(doc.apps[0].instances.len(), 2);
        assert_eq!(doc.apps[0].instances[0].role, Role::Stopped);
        assert_eq!(doc.apps[0].epoch, 0);
    }

    #[test]
    fn main_port_prefers_main_then_the_first_name() {
        let t = topology();
        let web = t.app("web").expect("web");
        let db = t.app("db").expect("db");
        assert_eq!(
            main_port(&web.instances[0]),
            Some(18091),
            "admin sorts before http"
        );
        assert_eq!(main_port(&db.instances[0]), Some(15432));
        let doc = primary_document(&t, web, &roles_with_primary("b", 5).primary.expect("grant"))
            .expect("b exists");
        assert_eq!(doc.address, "10.0.0.2");
        assert_eq!(doc.epoch, 5);
        assert_eq!(doc.port, Some(18092));
    }

    #[test]
    fn status_document_serializes_with_the_documented_spelling() {
        let t = topology();
        let statuses = listing(vec![kv(
            &keys::status("web", "a"),
            &status(Role::Primary, 5),
        )]);
        let roles = listing(vec![kv(&keys::roles("web"), &roles_with_primary("a", 5))]);
        let doc = status_document(&t, "embedded", &statuses, &roles);
        let v = serde_json::to_value(&doc).expect("serializable");
        assert_eq!(v["apps"][0]["ha"], "warm-standby");
        assert_eq!(v["apps"][0]["primary"], "a");
        assert_eq!(v["apps"][0]["instances"][0]["role"], "primary");
        assert_eq!(v["apps"][0]["instances"][0]["health"], "healthy");
        assert_eq!(v["apps"][0]["instances"][1]["role"], "stopped");
        assert_eq!(v["apps"][0]["instances"][1]["health"], "unknown");
        assert!(v["apps"][0]["instances"][1]["pid"].is_null());
        assert!(v["apps"][0].get("intent").is_none());
        let back: StatusDoc = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, doc);
    }
}
