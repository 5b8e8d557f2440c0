//! The wire format between a source and a receiver, public so that tools
//! and tests can craft requests by hand.
//!
//! # Requests
//!
//! | request | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/sync/{app}/{instance}/push` | a push (below) | 200 [`PushAck`]; 400 bad path or body; 401 signature; 404 no such receiver; 409 refused epoch; 413 too large; 500/507 write error |
//! | `GET /v1/sync/{app}/{instance}/manifest?source=S&epoch=E` | empty | 200 [`Manifest`]; 401; 404; 409 |
//! | `GET /v1/sync/{app}/{instance}/state` | empty | 200 [`crate::ReceiverState`]; 401; 404 |
//!
//! Every error answer is JSON `{"error": "<operator sentence>"}`. Path
//! segments (app, instance) and query values are percent-encoded.
//!
//! # A push's body
//!
//! A 4-byte big-endian length `N`, then `N` bytes of JSON [`PushHeader`],
//! then the contents of the [`WireChange::Write`] changes, in order,
//! concatenated: each is exactly `size` bytes and hashes to `sha256`.
//!
//! # Authentication
//!
//! With a shared secret, every request carries [`TIMESTAMP_HEADER`] (wall
//! clock, ms since the Unix epoch) and [`SIGNATURE_HEADER`]: the lowercase
//! hex HMAC-SHA256, keyed with the secret, of
//! `tandem-sync-v1\n{METHOD}\n{path?query}\n{timestamp}\n{body}` (see
//! [`signature`]). The receiver refuses a timestamp more than
//! [`MAX_SKEW_MS`] away from its clock; a replayed push inside that window
//! is harmless because pushes are idempotent.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The header that carries a request's signature.
pub const SIGNATURE_HEADER: &str = "x-tandem-sync-signature";
/// The header that carries the signing time, ms since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-tandem-sync-timestamp";
/// How far a signature's timestamp may be from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 30_000;
/// The content type of a push.
pub const PUSH_CONTENT_TYPE: &str = "application/x-tandem-sync-push";
/// The longest JSON header of a push, in bytes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;
/// The most changes in one push.
pub const MAX_CHANGES_PER_PUSH: usize = 20_000;
/// The longest relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Names starting with this are tandem's own (temporary files) and are
/// never mirrored; a push naming one is refused.
pub const RESERVED_PREFIX: &str = ".tandem-sync";

const DOMAIN: &[u8] = b"tandem-sync-v1\n";

/// The JSON header of a push.
///
/// Pushes from one source at one epoch are ordered by `(seq, part)`: the
/// receiver applies one only if its key is above the last it applied, and
/// acknowledges a repeat without applying it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushHeader {
    /// The instance that sends (the app's primary).
    pub source: String,
    /// The source's primary epoch.
    pub epoch: u64,
    /// The source's change sequence number this push brings the receiver
    /// to: once every part of it is applied, all changes the source detected
    /// up to `seq` are on the receiver.
    pub seq: u64,
    /// The part of `seq`: a large batch or a resynchronisation is sent in
    /// several parts, numbered up from where the receiver is.
    pub part: u32,
    /// Whether this is the last part of `seq`.
    pub complete: bool,
    /// Whether this push belongs to a full resynchronisation.
    pub resync: bool,
    /// The changes, applied in order.
    pub changes: Vec<WireChange>,
}

/// One change in a push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum WireChange {
    /// Replace (or create) a regular file; its content follows the header.
    Write {
        /// Relative path, `/`-separated.
        path: String,
        /// Content length in bytes.
        size: u64,
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
        /// Permission bits (`0o777` at most).
        mode: u32,
        /// When the source detected the change (wall ms).
        detected_ms: u64,
    },
    /// Make sure a directory exists.
    Mkdir {
        /// Relative path, `/`-separated.
        path: String,
        /// When the source detected the change (wall ms).
        detected_ms: u64,
    },
    /// Remove a file or a whole directory (absent is fine).
    Remove {
        /// Relative path, `/`-separated.
        path: String,
        /// When the source detected the change (wall ms).
        detected_ms: u64,
    },
}

impl WireChange {
    /// The change's relative path.
    pub fn path(&self) -> &str {
        match self {
            WireChange::Write { path, .. }
            | WireChange::Mkdir { path, .. }
            | WireChange::Remove { path, .. } => path,
        }
    }
}

/// The receiver's answer to a push it accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAck {
    /// False when the push was a repeat, acknowledged without applying it.
    pub applied: bool,
    /// Files written.
    pub written: u64,
    /// Paths removed.
    pub removed: u64,
}

/// Where a receiver is in the stream of one source at one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AppliedKey {
    /// The last sequence number applied (possibly partly).
    pub seq: u64,
    /// The last part applied.
    pub part: u32,
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ManifestEntry {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Lowercase hex SHA-256 of the content.
        sha256: String,
    },
    /// A directory.
    Dir,
}

/// What a receiver holds: every regular file and directory under its admin
/// directory (symbolic links and tandem's own files left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Relative path (`/`-separated) to entry.
    pub entries: BTreeMap<String, ManifestEntry>,
    /// The last push applied from the asking source at the asked epoch.
    pub applied: Option<AppliedKey>,
}

/// The body of an error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// An operator sentence.
    pub error: String,
}

/// Encodes a push's body from its header and the contents of its writes,
/// in order.
///
/// # Errors
///
/// When the header cannot be serialised or is longer than
/// [`MAX_HEADER_BYTES`].
pub fn encode_push(header: &PushHeader, contents: &[&[u8]]) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(header).map_err(|e| format!("cannot encode a push: {e}"))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(format!(
            "a push header of {} bytes is over the {MAX_HEADER_BYTES}-byte limit",
            json.len()
        ));
    }
    let total: usize = contents.iter().map(|c| c.len()).sum();
    let mut body = Vec::with_capacity(4 + json.len() + total);
    body.extend_from_slice(&(json.len() as u32).to_be_bytes());
    body.extend_from_slice(&json);
    for c in contents {
        body.extend_from_slice(c);
    }
    Ok(body)
}

/// Decodes a push's body into its header and the byte ranges of the
/// writes' contents in `body`, checking sizes and hashes.
///
/// # Errors
///
/// An operator sentence naming what is wrong.
pub fn decode_push(body: &[u8]) -> Result<(PushHeader, Vec<std::ops::Range<usize>>), String> {
    let Some(len) = body.get(..4) else {
        return Err("the push body is shorter than its 4-byte header length".into());
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "a push header of {len} bytes is over the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    let Some(json) = body.get(4..4 + len) else {
        return Err(format!("the push body ends inside its {len}-byte header"));
    };
    let header: PushHeader =
        serde_json::from_slice(json).map_err(|e| format!("the push header is not valid: {e}"))?;
    if header.changes.len() > MAX_CHANGES_PER_PUSH {
        return Err(format!(
            "a push of {} changes is over the {MAX_CHANGES_PER_PUSH}-change limit",
            header.changes.len()
        ));
    }
    let mut at = 4 + len;
    let mut ranges = Vec::new();
    for change in &header.changes {
        if let WireChange::Write {
            path, size, sha256, ..
        } = change
        {
            let end = usize::try_from(*size)
                .ok()
                .and_then(|s| at.checked_add(s))
                .filter(|end| *end <= body.len())
                .ok_or_else(|| {
                    format!("the push body ends inside the content of {path} ({size} bytes)")
                })?;
            let got = sha256_hex(&body[at..end]);
            if !got.eq_ignore_ascii_case(sha256) {
                return Err(format!(
                    "the content of {path} does not match its SHA-256 (sent {sha256}, got {got})"
                ));
            }
            ranges.push(at..end);
            at = end;
        }
    }
    if at != body.len() {
        return Err(format!(
            "the push body has {} bytes after the last content",
            body.len() - at
        ));
    }
    Ok((header, ranges))
}

/// Checks a relative path from a push and returns its components.
///
/// # Errors
///
/// When the path is empty, absolute, has an empty, `.` or `..` component,
/// a NUL byte, or names one of tandem's own files ([`RESERVED_PREFIX`]):
/// a sentence naming the path.
pub fn check_path(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("an empty path is not in the admin directory".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "the path {}... is longer than {MAX_PATH_BYTES} bytes",
            path.chars().take(64).collect::<String>()
        ));
    }
    if path.starts_with('/') {
        return Err(format!(
            "the path {path} is absolute: it must be relative to the admin directory"
        ));
    }
    if path.contains('\0') {
        return Err(format!("the path {path:?} contains a NUL byte"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            ".." => {
                return Err(format!(
                    "the path {path} leaves the admin directory (it contains ..)"
                ));
            }
            "" | "." => {
                return Err(format!(
                    "the path {path} is not in canonical form (empty or . component)"
                ));
            }
            p if p.starts_with(RESERVED_PREFIX) => {
                return Err(format!(
                    "the path {path} names a file reserved for tandem ({RESERVED_PREFIX}*)"
                ));
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// The lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The signature of a request (lowercase hex HMAC-SHA256), as sent in
/// [`SIGNATURE_HEADER`].
pub fn signature(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp_ms: u64,
    body: &[u8],
) -> String {
    hex(&mac(secret, method, path_and_query, timestamp_ms, body)
        .finalize()
        .into_bytes())
}

/// Checks a request's signature and timestamp against `now_ms`.
///
/// # Errors
///
/// Why the request is refused, as a sentence.
pub fn verify(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp: Option<&str>,
    sig: Option<&str>,
    body: &[u8],
    now_ms: u64,
) -> Result<(), String> {
    let (Some(timestamp), Some(sig)) = (timestamp, sig) else {
        return Err(format!(
            "the request is not signed ({SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required)"
        ));
    };
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| format!("the timestamp {timestamp:?} is not a number of milliseconds"))?;
    if ts.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(format!(
            "the request was signed {} ms away from this host's clock (at most {MAX_SKEW_MS} ms)",
            ts.abs_diff(now_ms)
        ));
    }
    let bytes = unhex(sig.trim()).ok_or_else(|| "the signature is not hex".to_string())?;
    mac(secret, method, path_and_query, ts, body)
        .verify_slice(&bytes)
        .map_err(|_| "the signature does not match (wrong secret?)".to_string())
}

fn mac(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    timestamp_ms: u64,
    body: &[u8],
) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(DOMAIN);
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path_and_query.as_bytes());
    mac.update(b"\n");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Percent-encodes one path segment or query value (everything but
/// unreserved characters), so that the signed path is the one sent.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_round_trips_and_checks_hashes() {
        let header = PushHeader {
            source: "a".into(),
            epoch: 7,
            seq: 3,
            part: 0,
            complete: true,
            resync: false,
            changes: vec![
                WireChange::Write {
                    path: "x/y".into(),
                    size: 5,
                    sha256: sha256_hex(b"hello"),
                    mode: 0o644,
                    detected_ms: 1,
                },
                WireChange::Remove {
                    path: "z".into(),
                    detected_ms: 2,
                },
            ],
        };
        let body = encode_push(&header, &[b"hello"]).unwrap();
        let (h, ranges) = decode_push(&body).unwrap();
        assert_eq!(h, header);
        assert_eq!(&body[ranges[0].clone()], b"hello");
        let mut bad = body.clone();
        let n = bad.len();
        bad[n - 1] = b'X';
        assert!(decode_push(&bad).unwrap_err().contains("does not match"));
        assert!(
            decode_push(&body[..n - 1])
                .unwrap_err()
                .contains("ends inside")
        );
    }

    #[test]
    fn paths_outside_the_directory_are_refused() {
        for bad in [
            "",
            "/etc/x",
            "../evil",
            "a/../../b",
            "a//b",
            "./a",
            ".tandem-sync-tmp-1",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert_eq!(check_path("a/b.c").unwrap(), vec!["a", "b.c"]);
    }

    #[test]
    fn signatures_verify_and_refuse_skew_and_wrong_secret() {
        let sig = signature(b"k", "POST", "/v1/x", 1_000_000, b"body");
        assert!(
            verify(
                b"k",
                "POST",
                "/v1/x",
                Some("1000000"),
                Some(&sig),
                b"body",
                1_010_000
            )
            .is_ok()
        );
        assert!(
            verify(
                b"j",
                "POST",
                "/v1/x",
                Some("1000000"),
                Some(&sig),
                b"body",
                1_000_000
            )
            .is_err()
        );
        assert!(
            verify(
                b"k",
                "POST",
                "/v1/y",
                Some("1000000"),
                Some(&sig),
                b"body",
                1_000_000
            )
            .is_err()
        );
        assert!(
            verify(
                b"k",
                "POST",
                "/v1/x",
                Some("1000000"),
                Some(&sig),
                b"body",
                1_031_000
            )
            .unwrap_err()
            .contains("ms away")
        );
        assert!(verify(b"k", "POST", "/v1/x", None, None, b"body", 0).is_err());
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("cms-1.a_b~"), "cms-1.a_b~");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
