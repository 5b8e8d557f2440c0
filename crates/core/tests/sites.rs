//! Sites judged from their hosts' leases, and the events of a site lost or
//! up again.

use tandem_core::model::EventKind;
use tandem_core::sites::{site_events, site_states};
use tandem_core::topology::{SiteRole, parse};

const TOPOLOGY: &str = r#"
[[sites]]
name = "dc1"
[[sites]]
name = "dc2"
role = "spare"
[[sites]]
name = "dc3"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[[hosts]]
name = "h2"
site = "dc1"
address = "10.0.0.2"
[[hosts]]
name = "h3"
site = "dc2"
address = "10.0.1.1"
"#;

#[test]
fn a_site_is_lost_when_every_host_lease_ended_and_says_so_once() {
    let t = parse("sites.toml", TOPOLOGY).expect("parses");
    assert_eq!(t.site("dc2").map(|s| s.role), Some(SiteRole::Spare));
    assert_eq!(t.site("dc1").map(|s| s.role), Some(SiteRole::Active));
    let judge = |up: &[&str]| site_states(&t, |h| up.contains(&h));
    let all = judge(&["h1", "h2", "h3"]);
    assert!(all.iter().all(|s| !s.lost), "{all:?}");
    // One host of dc1 gone: dc1 still stands.
    let one = judge(&["h2", "h3"]);
    assert!(site_events(&all, &one).is_empty());
    // Both gone: dc1 is lost, once; dc3 has no hosts and is never lost.
    let lost = judge(&["h3"]);
    let dc1 = lost.iter().find(|s| s.name == "dc1").expect("dc1");
    assert!(dc1.lost && dc1.hosts_up.is_empty());
    assert!(!lost.iter().find(|s| s.name == "dc3").expect("dc3").lost);
    let evs = site_events(&one, &lost);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].kind, EventKind::Site);
    assert_eq!(evs[0].reason, Some("site_lost"));
    assert_eq!(
        evs[0].message,
        "site dc1 (active) lost: the lease of every one of its hosts ended (h1, h2)"
    );
    assert!(site_events(&lost, &lost).is_empty(), "said once");
    // A host comes back: the site is up.
    let back = judge(&["h1", "h3"]);
    let evs = site_events(&lost, &back);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].reason, Some("site_up"));
    assert_eq!(evs[0].message, "site dc1 (active) is up: h1 holds a lease");
    // A site first judged has no event (nothing to compare with).
    assert!(site_events(&[], &lost).is_empty());
}
