//! Single-sign-on tokens that both sites accept: the stand-in for a real
//! identity provider. A token is
//! `base64url("USER|SESSION|EXPIRY") "." base64url(HMAC-SHA256(secret, "USER|SESSION|EXPIRY"))`,
//! with `EXPIRY` in seconds since the Unix epoch. Every site reads the same
//! secret, so a token issued by one is accepted by the other until it
//! expires. Time arrives as an argument: nothing here reads a clock.

use std::io::Read;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How long a token issued at a password login is valid.
pub const TOKEN_TTL_S: u64 = 12 * 3600;
/// The shortest single-sign-on secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// The longest single-sign-on secret (file) accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 4096;
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// The longest user name accepted.
pub const MAX_USER_BYTES: usize = 64;
/// The length of a session id (hex digits).
pub const SESSION_HEX_CHARS: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret that signs and checks tokens. Its `Debug` hides it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret of these bytes: at least [`MIN_SECRET_BYTES`], at most
    /// [`MAX_SECRET_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the single-sign-on secret is {} bytes long: it must hold at least {MIN_SECRET_BYTES}",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the single-sign-on secret is longer than {MAX_SECRET_BYTES} bytes"
            ));
        }
        Ok(Secret(bytes.to_vec()))
    }

    /// Reads the secret from `path`; whitespace at its ends (a trailing
    /// newline) is not part of it.
    pub fn read(path: &Path) -> Result<Secret, String> {
        let file = std::fs::File::open(path).map_err(|e| {
            format!(
                "cannot open the single-sign-on secret file {}: {e}",
                path.display()
            )
        })?;
        let mut bytes = Vec::new();
        file.take(u64::try_from(MAX_SECRET_BYTES).unwrap_or(u64::MAX) + 2)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                format!(
                    "cannot read the single-sign-on secret file {}: {e}",
                    path.display()
                )
            })?;
        Secret::new(bytes.trim_ascii()).map_err(|e| format!("{e} (in {})", path.display()))
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }
}

/// What a token says: who, which session, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user name ([`check_user`]).
    pub user: String,
    /// The session id ([`check_session`]): the same at every site.
    pub session: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expiry_unix_s: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// It is not a token at all.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// It was not signed with this secret.
    #[error(
        "the token's signature does not match: it was not issued with this site's single-sign-on secret"
    )]
    BadSignature,
    /// It was, but it is too old.
    #[error("the token expired {ago_s} s ago")]
    Expired {
        /// Seconds since it expired.
        ago_s: u64,
    },
}

/// The token of `claims`, signed with `secret`. The claims must pass
/// [`check_user`] and [`check_session`] (a `|` in them would be ambiguous).
pub fn sign(secret: &Secret, claims: &Claims) -> String {
    let payload = format!(
        "{}|{}|{}",
        claims.user, claims.session, claims.expiry_unix_s
    );
    let tag = secret.mac(&payload).finalize().into_bytes();
    format!(
        "{}.{}",
        b64url_encode(payload.as_bytes()),
        b64url_encode(&tag)
    )
}

/// The claims of `token` if `secret` signed it and it has not expired at
/// `now_unix_s`. The signature is checked (in constant time) before
/// anything in the token is believed.
pub fn verify(secret: &Secret, token: &str, now_unix_s: u64) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Malformed("it is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("it is too long"));
    }
    let (payload, tag) = token
        .split_once('.')
        .ok_or(TokenError::Malformed("expected PAYLOAD.SIGNATURE"))?;
    let payload =
        b64url_decode(payload).ok_or(TokenError::Malformed("the payload is not base64url"))?;
    let tag = b64url_decode(tag).ok_or(TokenError::Malformed("the signature is not base64url"))?;
    let payload = String::from_utf8(payload)
        .map_err(|_| TokenError::Malformed("the payload is not UTF-8"))?;
    secret
        .mac(&payload)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let mut parts = payload.split('|');
    let (Some(user), Some(session), Some(expiry), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected USER|SESSION|EXPIRY"));
    };
    let expiry_unix_s: u64 = expiry
        .parse()
        .map_err(|_| TokenError::Malformed("the expiry is not a number"))?;
    check_user(user).map_err(|_| TokenError::Malformed("the user name is not valid"))?;
    check_session(session).map_err(|_| TokenError::Malformed("the session id is not valid"))?;
    if expiry_unix_s <= now_unix_s {
        return Err(TokenError::Expired {
            ago_s: now_unix_s - expiry_unix_s,
        });
    }
    Ok(Claims {
        user: user.to_owned(),
        session: session.to_owned(),
        expiry_unix_s,
    })
}

/// A user name: 1 to 64 of `A-Z a-z 0-9 . _ @ -` (safe in a journal line,
/// a token and a page).
pub fn check_user(user: &str) -> Result<(), String> {
    let valid = !user.is_empty()
        && user.len() <= MAX_USER_BYTES
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a user name: 1 to {MAX_USER_BYTES} of A-Z a-z 0-9 . _ @ -",
            user.chars().take(80).collect::<String>()
        ))
    }
}

/// A session id: 32 lower-case hex digits.
pub fn check_session(session: &str) -> Result<(), String> {
    let valid = session.len() == SESSION_HEX_CHARS
        && session
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "not a session id: {SESSION_HEX_CHARS} lower-case hex digits"
        ))
    }
}

/// A new random session id.
pub fn new_session() -> Result<String, String> {
    let mut bytes = [0u8; SESSION_HEX_CHARS / 2];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session id: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding.
pub fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64URL[index as usize]));
        }
    }
    out
}

/// Decodes base64url without padding; `None` for any other text
/// (padding, other characters, a dangling character, non-zero spare bits).
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    };
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let full = chunk.len() - 1;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Bits beyond the last whole byte must be zero (one encoding only).
        let spare = match full {
            1 => n & 0xffff,
            2 => n & 0xff,
            _ => 0,
        };
        if spare != 0 {
            return None;
        }
        out.extend_from_slice(&decoded[..full]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Secret {
        Secret::new(text.as_bytes()).expect("a valid secret")
    }

    fn claims(expiry_unix_s: u64) -> Claims {
        Claims {
            user: "alice".into(),
            session: "0123456789abcdef0123456789abcdef".into(),
            expiry_unix_s,
        }
    }

    #[test]
    fn base64url_round_trips_and_refuses_other_text() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = b64url_encode(&bytes);
            assert!(!text.contains('='), "{text}");
            assert_eq!(b64url_decode(&text), Some(bytes), "{text}");
        }
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
        for bad in ["a", "ab==", "a+b/", "abcde", "ab c", "AB"] {
            assert_eq!(b64url_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_token_is_accepted_with_its_secret_until_it_expires() {
        let s = secret("0123456789abcdef-shared");
        let token = sign(&s, &claims(1000));
        assert_eq!(verify(&s, &token, 999), Ok(claims(1000)));
        assert_eq!(
            verify(&s, &token, 1005),
            Err(TokenError::Expired { ago_s: 5 })
        );
        let other = secret("another secret, not shared");
        assert_eq!(verify(&other, &token, 999), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_tampered_or_malformed_token_is_refused() {
        let s = secret("0123456789abcdef-shared");
        let token = sign(&s, &claims(1000));
        let (payload, tag) = token.split_once('.').expect("a dot");
        let forged = format!(
            "{}.{tag}",
            b64url_encode(b"mallory|0123456789abcdef0123456789abcdef|1000")
        );
        assert_eq!(verify(&s, &forged, 999), Err(TokenError::BadSignature));
        let longer = format!(
            "{}.{tag}",
            b64url_encode(b"alice|0123456789abcdef0123456789abcdef|99999")
        );
        assert_eq!(verify(&s, &longer, 999), Err(TokenError::BadSignature));
        for bad in [
            String::new(),
            "x".repeat(MAX_TOKEN_BYTES + 1),
            payload.to_owned(),
            format!("{payload}.!!"),
            format!("*{payload}.{tag}"),
        ] {
            assert!(
                matches!(verify(&s, &bad, 999), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_and_secrets_are_checked() {
        assert!(check_user("agent.007@dc-1_x").is_ok());
        for bad in ["", "a|b", "a b", "é", &"x".repeat(65)] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
        let session = new_session().expect("randomness");
        assert!(check_session(&session).is_ok(), "{session}");
        assert_ne!(session, new_session().expect("randomness"));
        assert!(check_session("0123456789ABCDEF0123456789abcdef").is_err());
        assert!(Secret::new(b"short").is_err());
        assert!(Secret::new(&[b'x'; MAX_SECRET_BYTES + 1]).is_err());
    }
}
