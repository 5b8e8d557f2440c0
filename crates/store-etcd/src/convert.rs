//! Conversions between the store's types and etcd's.

use etcd_client::proto::{PbKeyValue, PbResponseHeader, PbResponseOp, PbTxnOpResponse};
use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};
use tandem_store::{KeyValue, LeaseId, Op, OpResult, Revision, StoreError, Txn};

use crate::error::{Failure, malformed};

/// A key read from etcd. tandem writes UTF-8 keys only; a foreign key that
/// is not UTF-8 is shown lossily (and logged) rather than failing a whole
/// listing or watch.
pub(crate) fn key_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(key) => key,
        Err(e) => {
            let key = String::from_utf8_lossy(e.as_bytes()).into_owned();
            tracing::warn!(key = %key, "etcd store: a key that is not UTF-8");
            key
        }
    }
}

/// An etcd revision (an `i64`) as a [`Revision`].
pub(crate) fn revision(r: i64) -> Result<Revision, String> {
    Revision::try_from(r).map_err(|_| format!("negative revision {r}"))
}

/// The revision of a response header.
pub(crate) fn header_revision(header: Option<&PbResponseHeader>) -> Result<Revision, Failure> {
    let header = header.ok_or_else(|| malformed("a response without a header"))?;
    revision(header.revision).map_err(malformed)
}

/// Converts a key-value pair read from etcd.
pub(crate) fn kv(kv: PbKeyValue) -> Result<KeyValue, Failure> {
    let key = key_string(kv.key);
    let field = |what: &str, v: i64| {
        u64::try_from(v).map_err(|_| malformed(format_args!("{key:?} has {what} {v}")))
    };
    Ok(KeyValue {
        create_revision: field("create_revision", kv.create_revision)?,
        mod_revision: field("mod_revision", kv.mod_revision)?,
        version: field("version", kv.version)?,
        lease: (kv.lease != 0).then_some(kv.lease),
        value: kv.value,
        key,
    })
}

/// Rejects what etcd would reject less clearly (or not at all): empty keys.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("empty key".to_owned()));
    }
    Ok(())
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key,
    }
}

/// Checks a transaction's keys.
pub(crate) fn validate_txn(txn: &Txn) -> Result<(), StoreError> {
    for c in &txn.compares {
        match c {
            tandem_store::Compare::ModRevision(key, _) | tandem_store::Compare::Value(key, _) => {
                validate_key(key)?
            }
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        validate_key(op_key(op))?;
    }
    Ok(())
}

/// True if the transaction writes nothing whichever branch runs.
pub(crate) fn is_read_only(txn: &Txn) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(op, Op::Get { .. }))
}

/// The leases a transaction binds keys to, each once.
pub(crate) fn txn_leases(txn: &Txn) -> Vec<LeaseId> {
    let mut leases: Vec<LeaseId> = txn
        .success
        .iter()
        .chain(&txn.failure)
        .filter_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            _ => None,
        })
        .collect();
    leases.sort_unstable();
    leases.dedup();
    leases
}

fn etcd_compare(c: &tandem_store::Compare) -> Result<Compare, StoreError> {
    Ok(match c {
        // An absent key has mod_revision 0 in etcd's compares, so
        // `ModRevision(k, 0)` is create-if-absent.
        tandem_store::Compare::ModRevision(key, rev) => {
            let rev = i64::try_from(*rev).map_err(|_| {
                StoreError::InvalidArgument(format!("revision {rev} is out of etcd's range"))
            })?;
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
        }
        // etcd fails a value compare on an absent key, even against "".
        tandem_store::Compare::Value(key, value) => {
            Compare::value(key.as_str(), CompareOp::Equal, value.clone())
        }
    })
}

fn etcd_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(
            key.as_str(),
            value.clone(),
            lease.map(|l| PutOptions::new().with_lease(l)),
        ),
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        Op::Get { key } => TxnOp::get(key.as_str(), None),
    }
}

/// The etcd transaction for `txn`.
pub(crate) fn etcd_txn(txn: &Txn) -> Result<etcd_client::Txn, StoreError> {
    let compares = txn
        .compares
        .iter()
        .map(etcd_compare)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(etcd_client::Txn::new()
        .when(compares)
        .and_then(txn.success.iter().map(etcd_op).collect::<Vec<_>>())
        .or_else(txn.failure.iter().map(etcd_op).collect::<Vec<_>>()))
}

/// Maps the responses of the branch that ran to one [`OpResult`] per op.
pub(crate) fn op_results(
    ops: &[Op],
    responses: Vec<PbResponseOp>,
) -> Result<Vec<OpResult>, Failure> {
    if ops.len() != responses.len() {
        return Err(malformed(format_args!(
            "{} responses to a transaction branch of {} ops",
            responses.len(),
            ops.len()
        )));
    }
    ops.iter()
        .zip(responses)
        .map(|(op, r)| match (op, r.response) {
            (Op::Put { .. }, Some(PbTxnOpResponse::ResponsePut(_))) => Ok(OpResult::Put),
            (Op::Delete { .. }, Some(PbTxnOpResponse::ResponseDeleteRange(d))) => {
                Ok(OpResult::Delete(d.deleted > 0))
            }
            (Op::Get { .. }, Some(PbTxnOpResponse::ResponseRange(r))) => {
                match r.kvs.into_iter().next() {
                    Some(found) => Ok(OpResult::Get(Some(kv(found)?))),
                    None => Ok(OpResult::Get(None)),
                }
            }
            (op, other) => Err(malformed(format_args!(
                "response {other:?} to {op:?} in a transaction"
            ))),
        })
        .collect()
}
