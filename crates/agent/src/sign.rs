//! Authentication of the agent port: every failsafe request and answer is
//! signed with a secret all agents of a cluster share.
//!
//! The failsafe protocol (see [`crate::peer`]) is part of the safety
//! argument: a forged request makes an agent hold back an app's
//! promotions, and a forged answer could keep a cut-off primary acting
//! while another is promoted. So an agent given a [`ClusterSecret`]
//! refuses (401) every request that is not signed with it, and counts no
//! answer that is not signed with it.
//!
//! # The signature
//!
//! HMAC-SHA256 with the shared secret over a canonical text that binds
//! what it is (request or answer), the method, the path, a timestamp
//! (milliseconds since the Unix epoch), a random nonce, the request's
//! nonce (answers only) and the body:
//!
//! ```text
//! tandem-agent-v1\n{kind}\n{method}\n{path}\n{t}\n{nonce}\n{request nonce}\n{body}
//! ```
//!
//! sent as the header `X-Tandem-Signature: t=<ms>,n=<nonce hex>,s=<mac hex>`.
//! Verification compares MACs in constant time (`Mac::verify_slice`).
//!
//! Replays: a request is accepted only within [`MAX_SKEW_MS`] of the
//! receiver's clock (clocks of hosts differ a little), and only once: the
//! receiver remembers the nonces it accepted while they are within that
//! window ([`Verifier`], bounded). An answer is signed over its request's
//! nonce, fresh for every request, so it cannot be replayed for another.
//!
//! This module is pure: time arrives as an argument; only
//! [`ClusterSecret::generate`] and [`new_nonce`] read the system's random
//! source.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries a signature.
pub const SIGNATURE_HEADER: &str = "x-tandem-signature";
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest secret file read, in bytes.
pub const MAX_SECRET_BYTES: usize = 4096;
/// How far a signature's timestamp may be from the receiver's clock, in
/// either direction.
pub const MAX_SKEW_MS: u64 = 30_000;
/// How many accepted request nonces a [`Verifier`] remembers at most.
pub const NONCE_CACHE: usize = 65_536;
/// The length of a nonce, in bytes.
pub const NONCE_BYTES: usize = 16;

const DOMAIN: &str = "tandem-agent-v1";

type HmacSha256 = Hmac<Sha256>;

/// A request's random nonce.
pub type Nonce = [u8; NONCE_BYTES];

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read the cluster secret file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "permissions {mode:04o} for the cluster secret file {path} are too open: it must not be readable or writable by group or others (chmod 600 {path})"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a regular file.
    #[error("the cluster secret file {path} is not a regular file")]
    NotAFile {
        /// The file.
        path: String,
    },
    /// Too short.
    #[error(
        "the cluster secret{from} is {len} bytes long: it must hold at least {MIN_SECRET_BYTES} bytes (make one with `tandem secret new FILE`)"
    )]
    TooShort {
        /// " in FILE", or empty.
        from: String,
        /// Its length.
        len: usize,
    },
    /// Too long.
    #[error("the cluster secret{from} is longer than {MAX_SECRET_BYTES} bytes")]
    TooLong {
        /// " in FILE", or empty.
        from: String,
    },
    /// The system's random source failed.
    #[error("cannot read the system's random source: {0}")]
    Random(String),
}

/// The secret every agent of a cluster shares. Its bytes never appear in
/// `Debug` output or logs.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({} bytes, redacted)", self.0.len())
    }
}

impl ClusterSecret {
    /// A secret of these bytes (at least [`MIN_SECRET_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterSecret, SecretError> {
        check_len(bytes.len(), String::new())?;
        Ok(ClusterSecret(Arc::from(bytes)))
    }

    /// A random secret of [`MIN_SECRET_BYTES`] bytes (`tandem up`).
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        let mut bytes = [0u8; MIN_SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(ClusterSecret(Arc::from(&bytes[..])))
    }

    /// Reads a secret file: it must be a regular file that neither group
    /// nor others may access, and hold at least [`MIN_SECRET_BYTES`]
    /// bytes once leading and trailing whitespace is removed (those bytes
    /// are the secret: a file of `tandem secret new` holds 64 hex digits).
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let read_err = |error| SecretError::Read {
            path: shown.clone(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(SecretError::NotAFile { path: shown });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::TooOpen { path: shown, mode });
        }
        let mut text = Vec::new();
        file.take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        let from = format!(" in {shown}");
        if text.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong { from });
        }
        let secret = text.trim_ascii();
        check_len(secret.len(), from)?;
        Ok(ClusterSecret(Arc::from(secret)))
    }

    /// A key for another protocol, derived from the secret:
    /// HMAC-SHA256(secret, `label`), so that no key serves two protocols
    /// (e.g. `tandem-heartbeat-v1`, see [`crate::heartbeat::auth`]).
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }
}

fn check_len(len: usize, from: String) -> Result<(), SecretError> {
    if len < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort { from, len });
    }
    if len > MAX_SECRET_BYTES {
        return Err(SecretError::TooLong { from });
    }
    Ok(())
}

/// The text of a new secret file: [`MIN_SECRET_BYTES`] random bytes, hex
/// encoded, and a newline.
pub fn new_secret_text() -> Result<String, SecretError> {
    let mut bytes = [0u8; MIN_SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(format!("{}\n", hex(&bytes)))
}

/// A fresh random nonce.
pub fn new_nonce() -> Result<Nonce, SecretError> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::fill(&mut n).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(n)
}

/// Why a signature is refused. Each says what was wrong, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No signature header.
    #[error(
        "the request is not signed: this agent requires the cluster secret (X-Tandem-Signature)"
    )]
    Missing,
    /// The header cannot be read.
    #[error("the signature header is malformed: {0}")]
    Malformed(String),
    /// The MAC does not match.
    #[error(
        "the signature does not match: signed with another cluster secret, or the message was altered"
    )]
    BadSignature,
    /// The timestamp is outside the window.
    #[error(
        "the signature's timestamp is {skew_ms} ms from this host's clock (at most {MAX_SKEW_MS} ms allowed): stale, replayed or a clock is wrong"
    )]
    Stale {
        /// How far, in ms.
        skew_ms: u64,
    },
    /// This nonce was accepted before.
    #[error("the request was already received once (replayed nonce)")]
    Replayed,
    /// Too many requests within the window to remember them all.
    #[error(
        "too many signed requests within {MAX_SKEW_MS} ms to remember them all; refused to stay safe from replays"
    )]
    Busy,
}

/// A parsed `X-Tandem-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Milliseconds since the Unix epoch, at signing.
    pub t_ms: u64,
    /// The signer's random nonce.
    pub nonce: Nonce,
    /// The MAC.
    pub mac: Vec<u8>,
}

impl Signature {
    /// Parses `t=<ms>,n=<hex>,s=<hex>`.
    pub fn parse(header: &str) -> Result<Signature, AuthError> {
        let (mut t, mut n, mut s) = (None, None, None);
        for part in header.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| AuthError::Malformed(format!("{part:?} is not key=value")))?;
            let slot = match k {
                "t" => &mut t,
                "n" => &mut n,
                "s" => &mut s,
                other => return Err(AuthError::Malformed(format!("unknown field {other:?}"))),
            };
            if slot.replace(v).is_some() {
                return Err(AuthError::Malformed(format!("field {k} given twice")));
            }
        }
        fn field<'a>(v: Option<&'a str>, k: &str) -> Result<&'a str, AuthError> {
            v.ok_or_else(|| AuthError::Malformed(format!("field {k} is missing")))
        }
        let t_ms = field(t, "t")?
            .parse::<u64>()
            .map_err(|_| AuthError::Malformed("t is not a number of milliseconds".into()))?;
        let nonce: Nonce = unhex(field(n, "n")?)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AuthError::Malformed(format!("n is not {NONCE_BYTES} bytes of hex")))?;
        let mac = unhex(field(s, "s")?)
            .filter(|m| m.len() == 32)
            .ok_or_else(|| AuthError::Malformed("s is not 32 bytes of hex".into()))?;
        Ok(Signature { t_ms, nonce, mac })
    }

    /// The header's value.
    pub fn header(&self) -> String {
        format!(
            "t={},n={},s={}",
            self.t_ms,
            hex(&self.nonce),
            hex(&self.mac)
        )
    }
}

/// What a signature is over.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `POST`.
    pub method: &'a str,
    /// `/v1/failsafe`.
    pub path: &'a str,
    /// The body, as sent.
    pub body: &'a [u8],
}

fn mac_of(
    secret: &ClusterSecret,
    kind: &str,
    msg: Message<'_>,
    t_ms: u64,
    nonce: &Nonce,
    request: Option<&Nonce>,
) -> HmacSha256 {
    let mut mac = secret.mac();
    let request = request.map(|r| hex(r)).unwrap_or_default();
    let head = format!(
        "{DOMAIN}\n{kind}\n{}\n{}\n{t_ms}\n{}\n{request}\n",
        msg.method,
        msg.path,
        hex(nonce)
    );
    mac.update(head.as_bytes());
    mac.update(msg.body);
    mac
}

fn check_time(t_ms: u64, now_ms: u64) -> Result<(), AuthError> {
    let skew_ms = t_ms.abs_diff(now_ms);
    if skew_ms > MAX_SKEW_MS {
        return Err(AuthError::Stale { skew_ms });
    }
    Ok(())
}

/// Signs a request made at `now_ms` with `nonce` (see [`new_nonce`]).
pub fn sign_request(
    secret: &ClusterSecret,
    msg: Message<'_>,
    now_ms: u64,
    nonce: Nonce,
) -> Signature {
    let mac = mac_of(secret, "request", msg, now_ms, &nonce, None);
    Signature {
        t_ms: now_ms,
        nonce,
        mac: mac.finalize().into_bytes().to_vec(),
    }
}

/// Signs the answer to the request whose nonce is `request`.
pub fn sign_answer(
    secret: &ClusterSecret,
    msg: Message<'_>,
    request: &Nonce,
    now_ms: u64,
    nonce: Nonce,
) -> Signature {
    let mac = mac_of(secret, "answer", msg, now_ms, &nonce, Some(request));
    Signature {
        t_ms: now_ms,
        nonce,
        mac: mac.finalize().into_bytes().to_vec(),
    }
}

/// Checks the answer to the request whose nonce is `request`: signed with
/// `secret`, over this body, for this request, within the time window.
pub fn verify_answer(
    secret: &ClusterSecret,
    msg: Message<'_>,
    request: &Nonce,
    header: Option<&str>,
    now_ms: u64,
) -> Result<(), AuthError> {
    let sig = Signature::parse(header.ok_or(AuthError::Missing)?)?;
    mac_of(secret, "answer", msg, sig.t_ms, &sig.nonce, Some(request))
        .verify_slice(&sig.mac)
        .map_err(|_| AuthError::BadSignature)?;
    check_time(sig.t_ms, now_ms)
}

/// Checks requests: the secret, and the nonces accepted within the time
/// window (each is accepted once).
#[derive(Debug)]
pub struct Verifier {
    secret: ClusterSecret,
    /// Accepted (timestamp, nonce), oldest timestamp first.
    seen: Mutex<BTreeSet<(u64, Nonce)>>,
    capacity: usize,
}

impl Verifier {
    /// A verifier remembering up to [`NONCE_CACHE`] nonces.
    pub fn new(secret: ClusterSecret) -> Verifier {
        Verifier::with_capacity(secret, NONCE_CACHE)
    }

    /// A verifier remembering up to `capacity` nonces.
    pub fn with_capacity(secret: ClusterSecret, capacity: usize) -> Verifier {
        Verifier {
            secret,
            seen: Mutex::new(BTreeSet::new()),
            capacity,
        }
    }

    /// The secret, to sign answers with.
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Checks a request's signature header at `now_ms`; returns the
    /// request's nonce (its answer is signed over it). A request is
    /// accepted once: its nonce is remembered while it is in the window.
    pub fn verify_request(
        &self,
        msg: Message<'_>,
        header: Option<&str>,
        now_ms: u64,
    ) -> Result<Nonce, AuthError> {
        let sig = Signature::parse(header.ok_or(AuthError::Missing)?)?;
        mac_of(&self.secret, "request", msg, sig.t_ms, &sig.nonce, None)
            .verify_slice(&sig.mac)
            .map_err(|_| AuthError::BadSignature)?;
        check_time(sig.t_ms, now_ms)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what the window refuses anyway.
        let oldest = now_ms.saturating_sub(MAX_SKEW_MS);
        *seen = seen.split_off(&(oldest, [0; NONCE_BYTES]));
        if seen.contains(&(sig.t_ms, sig.nonce)) {
            return Err(AuthError::Replayed);
        }
        if seen.len() >= self.capacity {
            return Err(AuthError::Busy);
        }
        seen.insert((sig.t_ms, sig.nonce));
        Ok(sig.nonce)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string (either case); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn secret(fill: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[fill; 32]).expect("32 bytes")
    }

    fn msg(body: &[u8]) -> Message<'_> {
        Message {
            method: "POST",
            path: "/v1/failsafe",
            body,
        }
    }

    fn signed(s: &ClusterSecret, body: &[u8], t: u64, n: u8) -> String {
        sign_request(s, msg(body), t, [n; NONCE_BYTES]).header()
    }

    #[test]
    fn a_good_request_signature_passes_once() {
        let v = Verifier::new(secret(1));
        let h = signed(&secret(1), b"{}", NOW, 7);
        assert_eq!(v.verify_request(msg(b"{}"), Some(&h), NOW), Ok([7; 16]));
        // The same request again: a replay.
        assert_eq!(
            v.verify_request(msg(b"{}"), Some(&h), NOW + 10),
            Err(AuthError::Replayed)
        );
        // Another nonce passes.
        let h2 = signed(&secret(1), b"{}", NOW, 8);
        assert!(v.verify_request(msg(b"{}"), Some(&h2), NOW + 10).is_ok());
    }

    #[test]
    fn bad_requests_are_refused() {
        let v = Verifier::new(secret(1));
        let body = br#"{"from":"h1"}"#;
        let good = signed(&secret(1), body, NOW, 1);
        assert_eq!(
            v.verify_request(msg(body), None, NOW),
            Err(AuthError::Missing)
        );
        let wrong = signed(&secret(2), body, NOW, 1);
        assert_eq!(
            v.verify_request(msg(body), Some(&wrong), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify_request(msg(br#"{"from":"h2"}"#), Some(&good), NOW),
            Err(AuthError::BadSignature),
            "altered body"
        );
        let other_path = Message {
            path: "/v1/other",
            ..msg(body)
        };
        assert_eq!(
            v.verify_request(other_path, Some(&good), NOW),
            Err(AuthError::BadSignature),
            "altered path"
        );
        let other_method = Message {
            method: "GET",
            ..msg(body)
        };
        assert_eq!(
            v.verify_request(other_method, Some(&good), NOW),
            Err(AuthError::BadSignature),
            "altered method"
        );
        // A changed timestamp or nonce breaks the MAC.
        let mut sig = Signature::parse(&good).expect("parses");
        sig.t_ms += 1;
        assert_eq!(
            v.verify_request(msg(body), Some(&sig.header()), NOW),
            Err(AuthError::BadSignature)
        );
        let stale = signed(&secret(1), body, NOW - MAX_SKEW_MS - 1, 2);
        assert_eq!(
            v.verify_request(msg(body), Some(&stale), NOW),
            Err(AuthError::Stale {
                skew_ms: MAX_SKEW_MS + 1
            })
        );
        let future = signed(&secret(1), body, NOW + MAX_SKEW_MS + 5, 3);
        assert!(matches!(
            v.verify_request(msg(body), Some(&future), NOW),
            Err(AuthError::Stale { .. })
        ));
        // Within the window, either way.
        let early = signed(&secret(1), body, NOW + MAX_SKEW_MS, 4);
        assert!(v.verify_request(msg(body), Some(&early), NOW).is_ok());
        let late = signed(&secret(1), body, NOW - MAX_SKEW_MS, 5);
        assert!(v.verify_request(msg(body), Some(&late), NOW).is_ok());
    }

    #[test]
    fn malformed_headers_are_refused_with_what_is_wrong() {
        let v = Verifier::new(secret(1));
        for (h, what) in [
            ("", "not key=value"),
            ("t=1,n=00000000000000000000000000000000", "s is missing"),
            ("t=x,n=00,s=00", "not a number"),
            ("t=1,n=zz,s=00", "n is not 16 bytes"),
            (
                "t=1,n=00000000000000000000000000000000,s=00",
                "s is not 32 bytes",
            ),
            ("t=1,t=2", "given twice"),
            ("q=1", "unknown field"),
        ] {
            match v.verify_request(msg(b""), Some(h), NOW) {
                Err(AuthError::Malformed(m)) => assert!(m.contains(what), "{h:?}: {m}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_forgets_what_the_window_refuses() {
        let v = Verifier::with_capacity(secret(1), 2);
        for n in 0..2 {
            let h = signed(&secret(1), b"", NOW, n);
            assert!(v.verify_request(msg(b""), Some(&h), NOW).is_ok());
        }
        let third = signed(&secret(1), b"", NOW, 9);
        assert_eq!(
            v.verify_request(msg(b""), Some(&third), NOW),
            Err(AuthError::Busy)
        );
        // Once the first two are out of the window, there is room again.
        let later = NOW + MAX_SKEW_MS + 1;
        let fresh = signed(&secret(1), b"", later, 10);
        assert!(v.verify_request(msg(b""), Some(&fresh), later).is_ok());
        // And a replay of an old one is refused by the window.
        let old = signed(&secret(1), b"", NOW, 0);
        assert!(matches!(
            v.verify_request(msg(b""), Some(&old), later + 1),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn an_answer_passes_only_for_its_request_body_and_secret() {
        let s = secret(1);
        let body = br#"{"host":"h2","store_reachable":false}"#;
        let req = [1; NONCE_BYTES];
        let h = sign_answer(&s, msg(body), &req, NOW, [9; NONCE_BYTES]).header();
        assert_eq!(verify_answer(&s, msg(body), &req, Some(&h), NOW), Ok(()));
        assert_eq!(
            verify_answer(&s, msg(body), &[2; NONCE_BYTES], Some(&h), NOW),
            Err(AuthError::BadSignature),
            "an answer for another request"
        );
        assert_eq!(
            verify_answer(&secret(3), msg(body), &req, Some(&h), NOW),
            Err(AuthError::BadSignature),
            "another secret"
        );
        assert_eq!(
            verify_answer(&s, msg(b"{}"), &req, Some(&h), NOW),
            Err(AuthError::BadSignature),
            "altered body"
        );
        assert_eq!(
            verify_answer(&s, msg(body), &req, None, NOW),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            verify_answer(&s, msg(body), &req, Some(&h), NOW + MAX_SKEW_MS + 1),
            Err(AuthError::Stale { .. })
        ));
        // A request's signature is not an answer's.
        let as_request = sign_request(&s, msg(body), NOW, req).header();
        assert_eq!(
            verify_answer(&s, msg(body), &req, Some(&as_request), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        let e = ClusterSecret::from_bytes(&[1; 31]).expect_err("too short");
        assert!(e.to_string().contains("31 bytes long"), "{e}");
        assert!(ClusterSecret::from_bytes(&[1; 32]).is_ok());
        let g = ClusterSecret::generate().expect("random");
        assert_eq!(format!("{g:?}"), "ClusterSecret(32 bytes, redacted)");
    }

    #[test]
    fn secret_files_are_checked_for_mode_and_length() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, new_secret_text().expect("random")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let s = ClusterSecret::load(&path).expect("a good file");
        assert_eq!(s.0.len(), 64, "64 hex digits, the newline trimmed");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = ClusterSecret::load(&path).expect_err("world readable");
        assert!(e.to_string().contains("permissions 0644"), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            ClusterSecret::load(&path),
            Err(SecretError::TooOpen { mode: 0o640, .. })
        ));

        std::fs::write(&path, "short secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        let e = ClusterSecret::load(&path).expect_err("too short");
        assert!(e.to_string().contains("is 12 bytes long"), "{e}");
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");

        let e = ClusterSecret::load(&dir.path().join("missing")).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fFF"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }
}
