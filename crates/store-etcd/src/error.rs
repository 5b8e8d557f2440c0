//! What an etcd or transport error means for the caller: final, safe to
//! retry on another member, or ambiguous (the request may have been
//! applied).

use std::error::Error as _;

use tandem_store::StoreError;
use tonic::Code;

/// One failed attempt of a request, classified.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request surely was not applied (it never left, or etcd refused
    /// it before proposing it, e.g. "no leader"): any request may be
    /// retried on another member.
    NotApplied(String),
    /// Unreachable, or no answer in time, after the request may have
    /// reached etcd: only idempotent requests may be retried.
    Ambiguous(String),
    /// A definite answer: no retry.
    Final(StoreError),
}

/// True if `status` (or its source chain) says the connection could not be
/// made, so the request never left this process.
fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    let m = status.message();
    m.contains("error trying to connect") || m.contains("tcp connect error")
}

/// Classifies a gRPC status from etcd (messages as in etcd 3.4's
/// `rpctypes`).
fn classify_status(status: &tonic::Status) -> Failure {
    let msg = status.message();
    let text = format!("{:?}: {msg}", status.code());
    match status.code() {
        Code::Unavailable if is_connect_error(status) => Failure::NotApplied(text),
        // Refused up front by the member (we ask for `require_leader`).
        Code::Unavailable if msg.contains("no leader") => Failure::NotApplied(text),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::Unknown
        | Code::Internal => Failure::Ambiguous(text),
        // "etcdserver: not leader": refused, never proposed.
        Code::FailedPrecondition if msg.contains("not leader") => Failure::NotApplied(text),
        Code::ResourceExhausted if msg.contains("too many requests") => Failure::NotApplied(text),
        Code::ResourceExhausted => Failure::Final(StoreError::Unavailable(format!(
            "etcd refuses writes ({msg}): an operator must free space (compact, defragment, \
             disarm the NOSPACE alarm)"
        ))),
        Code::InvalidArgument | Code::OutOfRange => {
            Failure::Final(StoreError::InvalidArgument(msg.to_owned()))
        }
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition => {
            Failure::Final(StoreError::Internal(format!("etcd: {msg}")))
        }
        Code::PermissionDenied | Code::Unauthenticated => Failure::Final(StoreError::Internal(
            format!("etcd refused the request ({msg}): check the etcd user and its permissions"),
        )),
        Code::Ok | Code::Unimplemented | Code::DataLoss => {
            Failure::Final(StoreError::Internal(format!("etcd: {text}")))
        }
    }
}

/// Classifies an error of the etcd client.
pub(crate) fn classify(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => classify_status(status),
        // Raised while setting up a connection, before any request.
        E::TransportError(t) => Failure::NotApplied(format!("transport error: {t}")),
        E::IoError(io) => Failure::Ambiguous(format!("i/o error: {io}")),
        E::WatchError(m) => Failure::Ambiguous(format!("stream error: {m}")),
        E::LeaseKeepAliveError(m) => Failure::Ambiguous(format!("lease keep-alive error: {m}")),
        E::InvalidArgs(m) => Failure::Final(StoreError::InvalidArgument(m.clone())),
        E::InvalidUri(u) => Failure::Final(StoreError::InvalidArgument(format!(
            "invalid endpoint URI: {u}"
        ))),
        other => Failure::Final(StoreError::Internal(format!("etcd client: {other}"))),
    }
}

/// True if etcd answered "requested lease not found".
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::NotFound && s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// True if etcd answered that a revision is compacted.
pub(crate) fn is_compacted(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::OutOfRange && s.message().contains("compacted")
        }
        _ => false,
    }
}

/// True if an answer exceeded the size this client accepts.
pub(crate) fn is_too_large(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::OutOfRange && s.message().contains("message length too large")
        }
        _ => false,
    }
}

/// An answer of etcd that does not have the documented shape.
pub(crate) fn malformed(what: impl std::fmt::Display) -> Failure {
    Failure::Final(StoreError::Internal(format!(
        "malformed answer from etcd: {what}"
    )))
}
