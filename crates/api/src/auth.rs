//! API tokens: who may read the cluster's state and who may steer it.
//!
//! Tokens are read from a file given at start (`--tokens FILE`). The file
//! holds each token's name, role and SHA-256 hash, never the token itself
//! (`tandem token new` makes one and prints it once):
//!
//! ```toml
//! # Reads (status, events, metrics) need a token unless "open".
//! reads = "token"
//!
//! [[tokens]]
//! name = "ops"
//! role = "operate"   # or "read"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! A request presents its token as `Authorization: Bearer TOKEN`. Every
//! mutation (any method but GET and HEAD) needs an `operate` token; reads
//! need a `read` or `operate` token unless the file opens them. Open to
//! all whatever the file says: `GET /healthz`, the dashboard's own
//! assets (`/`, `/ui/...`) and the browser client (`/v1/client.js`),
//! which hold no cluster data. A missing or
//! unknown token gets 401, a `read` token on a mutation 403, each with one
//! clear sentence; the request changes nothing. The presented token is
//! hashed and compared with every known hash in constant time.
//!
//! The guard passes the [`Caller`] on to the handlers, which record the
//! token's name in the intents they write: the controller's events name
//! it.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiState;
use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read status, events and metrics.
    Read,
    /// Read, and steer: switchover, maintenance, fence, site actions.
    Operate,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Operate => "operate",
        })
    }
}

/// Whether reads need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reads {
    /// Reads need a `read` (or `operate`) token.
    #[default]
    Token,
    /// Anyone may read; mutations still need an `operate` token.
    Open,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    reads: Reads,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
}

/// One known token.
#[derive(Clone)]
struct Known {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The tokens an API accepts.
#[derive(Clone)]
pub struct Tokens {
    known: Vec<Known>,
    reads: Reads,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .known
            .iter()
            .map(|k| format!("{} ({})", k.name, k.role))
            .collect();
        f.debug_struct("Tokens")
            .field("known", &names)
            .field("reads", &self.reads)
            .finish()
    }
}

/// Who made a request, as the guard found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; `None` when the API needs no token or the route
    /// is open and none was presented.
    pub token: Option<String>,
}

/// The SHA-256 of `token`, as the token file holds it (lowercase hex).
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Parses a token file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            format!("{source}{at}: {}", e.message().trim_end())
        })?;
        if file.tokens.is_empty() {
            return Err(format!(
                "{source}: no [[tokens]]: nobody could use the API (make one with `tandem token new NAME --role operate --file {source}`)"
            ));
        }
        let mut known: Vec<Known> = Vec::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.iter().enumerate() {
            let n = i + 1;
            let name = t.name.trim();
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == '"') {
                return Err(format!(
                    "{source}: token {n} has an empty name or one with quotes or control characters"
                ));
            }
            if known.iter().any(|k| k.name == name) {
                return Err(format!("{source}: two tokens are named {name:?}"));
            }
            let Some(hash) = unhex(&t.sha256.to_ascii_lowercase()) else {
                return Err(format!(
                    "{source}: token {name:?}: sha256 must be 64 hexadecimal digits (the SHA-256 of the token, as `tandem token new` prints it)"
                ));
            };
            if let Some(other) = known.iter().find(|k| k.hash == hash) {
                return Err(format!(
                    "{source}: tokens {:?} and {name:?} have the same hash: they are the same token",
                    other.name
                ));
            }
            known.push(Known {
                name: name.to_owned(),
                role: t.role,
                hash,
            });
        }
        Ok(Tokens {
            known,
            reads: file.reads,
        })
    }

    /// Reads and parses the token file at `path`.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// How many tokens there are, and whether reads are open: for logs.
    pub fn summary(&self) -> String {
        let operate = self
            .known
            .iter()
            .filter(|k| k.role == Role::Operate)
            .count();
        format!(
            "{} token(s), {operate} with the operate role; reads {}",
            self.known.len(),
            match self.reads {
                Reads::Token => "need a token",
                Reads::Open => "are open",
            }
        )
    }

    /// The token whose hash is `presented`'s, comparing with every known
    /// hash in constant time.
    fn find(&self, presented: &str) -> Option<&Known> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.known {
            if bool::from(k.hash.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found
    }
}

/// The token file the API enforces, replaceable while it runs (reloaded
/// on SIGHUP). `None`: no token is needed.
#[derive(Clone, Default)]
pub struct Access(Arc<RwLock<Option<Arc<Tokens>>>>);

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Access").field(&self.current()).finish()
    }
}

impl Access {
    /// Access enforced by `tokens` (`None`: open to all).
    pub fn new(tokens: Option<Tokens>) -> Access {
        Access(Arc::new(RwLock::new(tokens.map(Arc::new))))
    }

    /// Replaces the tokens (a reloaded file).
    pub fn replace(&self, tokens: Tokens) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        *guard = Some(Arc::new(tokens));
    }

    /// The tokens in force.
    pub fn current(&self) -> Option<Arc<Tokens>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a request needs.
fn needs(method: &Method, path: &str, reads: Reads) -> Option<Role> {
    let open_path =
        path == "/healthz" || path == "/" || path == "/v1/client.js" || path.starts_with("/ui/");
    if open_path && (method == Method::GET || method == Method::HEAD) {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return match reads {
            Reads::Token => Some(Role::Read),
            Reads::Open => None,
        };
    }
    Some(Role::Operate)
}

/// What a request's `Authorization` header presents.
enum Presented<'a> {
    None,
    Bearer(&'a str),
    Malformed,
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let mut parts = value.trim().splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Presented::Malformed
            } else {
                Presented::Bearer(token)
            }
        }
        _ => Presented::Malformed,
    }
}

/// What is being asked, for the 403 sentence.
fn action(method: &Method, path: &str) -> String {
    let last = path.rsplit('/').next().unwrap_or_default();
    match (method.as_str(), last) {
        ("POST", "switchover" | "maintenance" | "fence") => last.to_owned(),
        ("POST", "fail" | "promote" | "restore") => format!("site {last}"),
        _ => format!("{method} {path}"),
    }
}

fn unauthorized(message: String) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tandem\""),
    );
    response
}

/// The guard every request passes: checks its token against what the
/// route needs, and hands the [`Caller`] to the handler.
pub(crate) async fn guard(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = state.access.current() else {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let needed = needs(&method, &path, tokens.reads);
    let known = match presented(request.headers()) {
        Presented::None => None,
        Presented::Malformed => {
            state.metrics.auth_refused("malformed");
            return unauthorized(
                "the Authorization header must be \"Bearer TOKEN\" (tandem --token or TANDEM_TOKEN)"
                    .to_owned(),
            );
        }
        Presented::Bearer(t) => match tokens.find(t) {
            Some(k) => Some(k),
            None => {
                state.metrics.auth_refused("unknown");
                return unauthorized(
                    "this token is not known to the API: check it, or ask for a new one (tandem token new)"
                        .to_owned(),
                );
            }
        },
    };
    if let Some(needed) = needed {
        let Some(k) = known else {
            state.metrics.auth_refused("missing");
            return unauthorized(format!(
                "{} needs a token with the {needed} role: send Authorization: Bearer TOKEN (tandem --token or TANDEM_TOKEN)",
                action(&method, &path)
            ));
        };
        if k.role < needed {
            state.metrics.auth_refused("forbidden");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} has the {} role: {} needs the {needed} role",
                    k.name,
                    k.role,
                    action(&method, &path)
                ),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(Caller {
        token: known.map(|k| k.name.clone()),
    });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str)], reads: &str) -> String {
        let mut s = format!("reads = {reads:?}\n");
        for (name, role, token) in entries {
            s.push_str(&format!(
                "[[tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n",
                hash_token(token)
            ));
        }
        s
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_only_by_it() {
        let t = Tokens::parse(
            &file(
                &[("ops", "operate", "s3cret"), ("view", "read", "v1ew")],
                "token",
            ),
            "t.toml",
        )
        .expect("parses");
        assert_eq!(t.find("s3cret").map(|k| k.name.as_str()), Some("ops"));
        assert_eq!(t.find("v1ew").map(|k| k.role), Some(Role::Read));
        assert!(t.find("s3cret ").is_none());
        assert!(t.find("").is_none());
        assert!(t.find(&hash_token("s3cret")).is_none());
    }

    #[test]
    fn bad_token_files_are_refused_with_a_reason() {
        let h = hash_token("x");
        let cases: &[(&str, &str)] = &[
            ("", "no [[tokens]]"),
            (
                "reads = \"sometimes\"\n[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"00\"",
                "sometimes",
            ),
            (
                &format!("[[tokens]]\nname=\"a\"\nrole=\"admin\"\nsha256=\"{h}\""),
                "admin",
            ),
            (
                "[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"abc\"",
                "64 hexadecimal",
            ),
            (
                &format!("[[tokens]]\nname=\"\"\nrole=\"read\"\nsha256=\"{h}\""),
                "empty name",
            ),
            (
                &format!("[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"{h}\"\nsecret=\"x\""),
                "secret",
            ),
            (
                &format!(
                    "[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"{h}\"\n[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"{}\"",
                    hash_token("y")
                ),
                "two tokens are named",
            ),
            (
                &format!(
                    "[[tokens]]\nname=\"a\"\nrole=\"read\"\nsha256=\"{h}\"\n[[tokens]]\nname=\"b\"\nrole=\"read\"\nsha256=\"{h}\""
                ),
                "same hash",
            ),
        ];
        for (text, wanted) in cases {
            let err = Tokens::parse(text, "t.toml").expect_err(text);
            assert!(err.contains(wanted), "{text:?}: {err}");
            assert!(err.starts_with("t.toml"), "{err}");
        }
    }

    #[test]
    fn routes_need_what_they_change() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needs(&get, "/healthz", Reads::Token), None);
        assert_eq!(needs(&get, "/", Reads::Token), None);
        assert_eq!(needs(&get, "/ui/app.js", Reads::Token), None);
        assert_eq!(needs(&get, "/v1/client.js", Reads::Token), None);
        assert_eq!(needs(&get, "/v1/status", Reads::Token), Some(Role::Read));
        assert_eq!(needs(&get, "/metrics", Reads::Token), Some(Role::Read));
        assert_eq!(needs(&get, "/v1/status", Reads::Open), None);
        assert_eq!(
            needs(&post, "/v1/apps/web/switchover", Reads::Open),
            Some(Role::Operate)
        );
        assert_eq!(needs(&post, "/healthz", Reads::Open), Some(Role::Operate));
        assert_eq!(
            needs(&Method::DELETE, "/", Reads::Open),
            Some(Role::Operate)
        );
    }
}
