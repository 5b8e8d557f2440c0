//! Authentication of heartbeat datagrams: a truncated HMAC-SHA256 tag
//! keyed with a key derived from the cluster secret, and a replay guard.
//!
//! A heartbeat decides who is suspected, and a suspicion corroborated by
//! a second observer promotes at once where fence devices or token fencing
//! allow it: a forged "alive" would hide a dead host, a forged suspicion
//! would corroborate a false one. So with a [`ClusterSecret`], every
//! datagram carries a tag over all its other bytes (format version 3, see
//! [`super`]), and a receiver drops every datagram whose tag is missing
//! ([`Refused::Untagged`]) or wrong ([`Refused::Unauthenticated`]), and
//! every one that is not newer than the last it accepted from that sender
//! ([`Refused::Replayed`]).
//!
//! - **Key.** `HMAC-SHA256(secret, "tandem-heartbeat-v1")`
//!   ([`KEY_LABEL`]): the failsafe protocol's key is not reused.
//! - **Tag.** The first [`TAG_LEN`] bytes of `HMAC-SHA256(key, datagram
//!   without its tag)`, compared in constant time
//!   (`Mac::verify_truncated_left`). The keyed state is computed once and
//!   copied for each datagram: nothing is allocated.
//! - **Replays.** Datagrams are ordered by (session, sequence number): a
//!   session is the wall-clock time (ns) at which the sender's heartbeat
//!   service started, the sequence number counts its rounds. A receiver
//!   accepts from each sender only a datagram above the last it accepted,
//!   so an old "I'm alive" recorded earlier (of this run or of a previous
//!   one) cannot hide a dead host. A datagram reordered by the network
//!   counts as replayed too (it is not newer). The known cost: an agent
//!   restarted with its clock set back before its previous run's start is
//!   not heard by peers that heard that run until they restart (it looks
//!   silent: the lease path applies); start agents after the clock is
//!   synchronised (systemd's `time-sync.target`).

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sign::ClusterSecret;

/// The label the heartbeat key is derived with.
pub const KEY_LABEL: &str = "tandem-heartbeat-v1";
/// The length of a heartbeat's tag, in bytes (128 bits).
pub const TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The key that tags heartbeats, derived from the cluster secret. Never
/// shown in `Debug` output.
#[derive(Clone)]
pub struct HeartbeatKey(HmacSha256);

impl fmt::Debug for HeartbeatKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeartbeatKey(redacted)")
    }
}

impl HeartbeatKey {
    /// The heartbeat key of `secret`.
    pub fn derive(secret: &ClusterSecret) -> HeartbeatKey {
        let key = secret.derive_key(KEY_LABEL);
        // HMAC takes a key of any length: this cannot fail.
        match HmacSha256::new_from_slice(&key) {
            Ok(m) => HeartbeatKey(m),
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// The tag of `content` (a datagram without its tag).
    pub fn tag(&self, content: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(content);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag of `content`, compared in constant time.
    pub fn verify(&self, content: &[u8], tag: &[u8]) -> bool {
        if tag.len() != TAG_LEN {
            return false;
        }
        let mut mac = self.0.clone();
        mac.update(content);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Why an authenticating receiver drops a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It carries no tag: its sender has no cluster secret.
    Untagged,
    /// Its tag does not match: another secret, altered or forged.
    Unauthenticated,
    /// Not newer than the last datagram accepted from its sender.
    Replayed {
        /// Of an older session than the last accepted (not a mere
        /// reordering within a session).
        older_session: bool,
    },
}

impl Refused {
    /// A stable name, the `why` of `tandem_heartbeats_dropped_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Refused::Untagged => "untagged",
            Refused::Unauthenticated => "unauthenticated",
            Refused::Replayed { .. } => "replayed",
        }
    }
}

/// An authenticating receiver's state: the key, and the newest (session,
/// sequence number) accepted from each sender.
#[derive(Debug)]
pub struct Guard {
    key: HeartbeatKey,
    newest: BTreeMap<String, (u64, u64)>,
}

impl Guard {
    /// A guard that has accepted nothing yet.
    pub fn new(key: HeartbeatKey) -> Guard {
        Guard {
            key,
            newest: BTreeMap::new(),
        }
    }

    /// Checks one datagram of `host` (its session and sequence number as
    /// parsed; `tag` the datagram's tag, if any, over `content`, all the
    /// bytes before it). Remembers it as the newest of `host` if accepted.
    pub fn check(
        &mut self,
        host: &str,
        session: u64,
        seq: u64,
        content: &[u8],
        tag: Option<&[u8]>,
    ) -> Result<(), Refused> {
        let tag = tag.ok_or(Refused::Untagged)?;
        if !self.key.verify(content, tag) {
            return Err(Refused::Unauthenticated);
        }
        let now = (session, seq);
        match self.newest.get_mut(host) {
            Some(newest) if now <= *newest => Err(Refused::Replayed {
                older_session: session < newest.0,
            }),
            Some(newest) => {
                *newest = now;
                Ok(())
            }
            // The first of this sender (allocates once per sender).
            None => {
                self.newest.insert(host.to_string(), now);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[b; 32]).expect("secret")
    }

    #[test]
    fn the_heartbeat_key_is_not_the_failsafe_key() {
        let s = secret(7);
        let derived = s.derive_key(KEY_LABEL);
        assert_ne!(&derived[..], &[7u8; 32][..]);
        assert_ne!(derived, s.derive_key("tandem-other-v1"));
        // Deterministic: every agent derives the same key.
        let a = HeartbeatKey::derive(&s).tag(b"x");
        let b = HeartbeatKey::derive(&secret(7)).tag(b"x");
        assert_eq!(a, b);
        assert_ne!(a, HeartbeatKey::derive(&secret(8)).tag(b"x"));
        assert_eq!(
            format!("{:?}", HeartbeatKey::derive(&s)),
            "HeartbeatKey(redacted)"
        );
    }

    #[test]
    fn a_tag_verifies_only_its_content_under_its_key() {
        let key = HeartbeatKey::derive(&secret(1));
        let tag = key.tag(b"content");
        assert!(key.verify(b"content", &tag));
        assert!(!key.verify(b"contenu", &tag));
        assert!(!key.verify(b"content", &tag[..TAG_LEN - 1]));
        assert!(!key.verify(b"content", &[]));
        assert!(!HeartbeatKey::derive(&secret(2)).verify(b"content", &tag));
    }

    #[test]
    fn the_guard_accepts_only_newer_datagrams_of_each_sender() {
        let key = HeartbeatKey::derive(&secret(1));
        let mut g = Guard::new(key.clone());
        let mut check = |host: &str, session: u64, seq: u64| {
            let content = [host.as_bytes(), &session.to_be_bytes(), &seq.to_be_bytes()].concat();
            let tag = key.tag(&content);
            g.check(host, session, seq, &content, Some(&tag))
        };
        assert_eq!(check("h1", 10, 1), Ok(()));
        assert_eq!(check("h1", 10, 2), Ok(()));
        assert_eq!(
            check("h1", 10, 2),
            Err(Refused::Replayed {
                older_session: false
            })
        );
        assert_eq!(
            check("h1", 10, 1),
            Err(Refused::Replayed {
                older_session: false
            })
        );
        // Another sender has its own order.
        assert_eq!(check("h2", 3, 1), Ok(()));
        // A new (later) session starts again from any sequence number; an
        // older one is refused whatever its sequence number.
        assert_eq!(check("h1", 11, 1), Ok(()));
        assert_eq!(
            check("h1", 10, 1_000_000),
            Err(Refused::Replayed {
                older_session: true
            })
        );
        assert_eq!(
            Refused::Replayed {
                older_session: true
            }
            .name(),
            "replayed"
        );
    }
}
