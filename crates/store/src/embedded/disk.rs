//! Persistence of the embedded store in a `redb` file.
//!
//! Only keys that are not bound to a lease are persisted. The file holds two
//! tables:
//! - `kv`: key bytes → [`encode_kv`] of (create_revision, mod_revision,
//!   version, value);
//! - `meta`: `revision_ceiling` → the highest revision the store may have
//!   handed out (persisted or not) before it next writes this table. On open
//!   the store continues above it, so revisions never go backwards across a
//!   restart, not even those of memory-only (leased) writes.
//!
//! Everything read from the file is validated: a corrupt file gives
//! [`StoreError::Internal`], never a panic.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{KeyValue, Revision, StoreError};

/// Key table: key (UTF-8 bytes) → encoded entry.
const KV_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Meta table: name → little-endian u64.
const META_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
/// Meta key of the revision ceiling.
const CEILING_KEY: &[u8] = b"revision_ceiling";
/// Meta key of the on-disk format version.
const FORMAT_KEY: &[u8] = b"format";
/// The on-disk format this code writes and reads.
const FORMAT_VERSION: u64 = 1;
/// Tag byte in front of every encoded entry.
const ENTRY_TAG: u8 = 1;
/// Bytes of an encoded entry before the value: tag + three u64.
const ENTRY_HEADER_BYTES: usize = 1 + 3 * 8;

/// Name of the database file inside the store directory.
pub(crate) const FILE_NAME: &str = "store.redb";

/// One change to the key table.
#[derive(Debug)]
pub(crate) enum DiskOp<'a> {
    /// Insert or replace a key.
    Put(&'a KeyValue),
    /// Remove a key (no error if absent).
    Delete(&'a str),
}

/// What [`Disk::open`] found in the file.
pub(crate) struct Loaded {
    /// The persisted keys.
    pub kvs: Vec<KeyValue>,
    /// The revision the store continues from: every revision up to it may
    /// have been handed out before the restart.
    pub revision: Revision,
}

/// The open database file.
pub(crate) struct Disk {
    db: Database,
    path: PathBuf,
    /// The persisted revision ceiling: no revision above it has been handed
    /// out yet; handing one out first needs a new ceiling on disk.
    ceiling: Revision,
}

fn internal(path: &Path, what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("embedded store {}: {what}: {err}", path.display()))
}

impl Disk {
    /// Opens (creating if needed) the database in `dir`, loads the persisted
    /// keys and raises the revision ceiling by `ceiling_step` at once.
    pub(crate) fn open(dir: &Path, ceiling_step: u64) -> Result<(Disk, Loaded), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(dir, "cannot create the store directory", e))?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => internal(
                &path,
                "cannot open",
                "the file is already open (by another store in this process, or by another process)",
            ),
            e => internal(&path, "cannot open (corrupt or unreadable file?)", e),
        })?;
        if !existed {
            // Make the new file's directory entry durable too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let mut disk = Disk {
            db,
            path,
            ceiling: 0,
        };
        let loaded = disk.load()?;
        let revision = loaded.revision;
        disk.commit(&[], Some(revision.saturating_add(ceiling_step)))?;
        Ok((disk, loaded))
    }

    /// The path of the database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted revision ceiling.
    pub(crate) fn ceiling(&self) -> Revision {
        self.ceiling
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let path = self.path.clone();
        let err = |what: &str, e: &dyn std::fmt::Display| internal(&path, what, e);
        let rtx = self
            .db
            .begin_read()
            .map_err(|e| err("cannot begin a read transaction", &e))?;
        let mut ceiling: Revision = 0;
        match rtx.open_table(META_TABLE) {
            Ok(meta) => {
                if let Some(format) = meta
                    .get(FORMAT_KEY)
                    .map_err(|e| err("cannot read the format version", &e))?
                {
                    let format = decode_u64(format.value())
                        .ok_or_else(|| err("corrupt format version", &"not 8 bytes"))?;
                    if format != FORMAT_VERSION {
                        return Err(err(
                            "unsupported format",
                            &format!("file has format {format}, this build reads {FORMAT_VERSION}"),
                        ));
                    }
                }
                if let Some(c) = meta
                    .get(CEILING_KEY)
                    .map_err(|e| err("cannot read the revision ceiling", &e))?
                {
                    ceiling = decode_u64(c.value())
                        .ok_or_else(|| err("corrupt revision ceiling", &"not 8 bytes"))?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err("cannot open the meta table", &e)),
        }
        let mut kvs = Vec::new();
        let mut max_mod: Revision = 0;
        match rtx.open_table(KV_TABLE) {
            Ok(table) => {
                let iter = table
                    .iter()
                    .map_err(|e| err("cannot read the key table", &e))?;
                for item in iter {
                    let (k, v) = item.map_err(|e| err("cannot read the key table", &e))?;
                    let key = std::str::from_utf8(k.value())
                        .map_err(|e| err("corrupt key (not UTF-8)", &e))?
                        .to_owned();
                    let kv = decode_kv(key, v.value()).map_err(|e| err("corrupt entry", &e))?;
                    max_mod = max_mod.max(kv.mod_revision);
                    kvs.push(kv);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err("cannot open the key table", &e)),
        }
        if max_mod > ceiling {
            tracing::warn!(
                path = %self.path.display(),
                ceiling,
                max_mod,
                "embedded store: a persisted key is newer than the revision ceiling; continuing above it"
            );
            ceiling = max_mod;
        }
        self.ceiling = ceiling;
        Ok(Loaded {
            kvs,
            revision: ceiling,
        })
    }

    /// Commits `ops` (and a new ceiling, if given) in one durable (fsync'ed)
    /// redb transaction.
    pub(crate) fn commit(
        &mut self,
        ops: &[DiskOp<'_>],
        new_ceiling: Option<Revision>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |what: &str, e: &dyn std::fmt::Display| internal(&path, what, e);
        let mut wtx = self
            .db
            .begin_write()
            .map_err(|e| err("cannot begin a write transaction", &e))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(|e| err("cannot set durability", &e))?;
        if !ops.is_empty() {
            let mut table = wtx
                .open_table(KV_TABLE)
                .map_err(|e| err("cannot open the key table", &e))?;
            let mut buf = Vec::new();
            for op in ops {
                match op {
                    DiskOp::Put(kv) => {
                        encode_kv(kv, &mut buf);
                        table
                            .insert(kv.key.as_bytes(), buf.as_slice())
                            .map_err(|e| err("cannot write a key", &e))?;
                    }
                    DiskOp::Delete(key) => {
                        table
                            .remove(key.as_bytes())
                            .map_err(|e| err("cannot delete a key", &e))?;
                    }
                }
            }
        }
        if let Some(ceiling) = new_ceiling {
            let mut meta = wtx
                .open_table(META_TABLE)
                .map_err(|e| err("cannot open the meta table", &e))?;
            meta.insert(FORMAT_KEY, FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(|e| err("cannot write the format version", &e))?;
            meta.insert(CEILING_KEY, ceiling.to_le_bytes().as_slice())
                .map_err(|e| err("cannot write the revision ceiling", &e))?;
        }
        wtx.commit().map_err(|e| err("commit failed", &e))?;
        if let Some(ceiling) = new_ceiling {
            self.ceiling = ceiling;
        }
        Ok(())
    }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Encodes a persisted entry: tag, create_revision, mod_revision, version
/// (little-endian u64 each), then the value.
pub(crate) fn encode_kv(kv: &KeyValue, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(ENTRY_HEADER_BYTES + kv.value.len());
    buf.push(ENTRY_TAG);
    buf.extend_from_slice(&kv.create_revision.to_le_bytes());
    buf.extend_from_slice(&kv.mod_revision.to_le_bytes());
    buf.extend_from_slice(&kv.version.to_le_bytes());
    buf.extend_from_slice(&kv.value);
}

/// Decodes what [`encode_kv`] wrote, validating it.
pub(crate) fn decode_kv(key: String, bytes: &[u8]) -> Result<KeyValue, String> {
    if bytes.len() < ENTRY_HEADER_BYTES {
        return Err(format!(
            "key {key:?}: entry of {} bytes is shorter than its {ENTRY_HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    if bytes[0] != ENTRY_TAG {
        return Err(format!("key {key:?}: unknown entry tag {}", bytes[0]));
    }
    let field = |i: usize| {
        let start = 1 + 8 * i;
        decode_u64(&bytes[start..start + 8]).unwrap_or_default()
    };
    let (create_revision, mod_revision, version) = (field(0), field(1), field(2));
    if create_revision == 0 || create_revision > mod_revision || version == 0 {
        return Err(format!(
            "key {key:?}: inconsistent revisions (create {create_revision}, mod {mod_revision}, version {version})"
        ));
    }
    Ok(KeyValue {
        key,
        value: bytes[ENTRY_HEADER_BYTES..].to_vec(),
        create_revision,
        mod_revision,
        version,
        lease: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> KeyValue {
        KeyValue {
            key: "/a".into(),
            value: b"hello".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease: None,
        }
    }

    #[test]
    fn entry_encoding_round_trips() {
        let mut buf = Vec::new();
        encode_kv(&kv(), &mut buf);
        assert_eq!(decode_kv("/a".into(), &buf), Ok(kv()));
    }

    #[test]
    fn corrupt_entries_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_kv(&kv(), &mut buf);
        for len in 0..ENTRY_HEADER_BYTES {
            assert!(decode_kv("/a".into(), &buf[..len]).is_err());
        }
        let mut bad_tag = buf.clone();
        bad_tag[0] = 9;
        assert!(decode_kv("/a".into(), &bad_tag).is_err());
        let mut bad_revs = buf.clone();
        bad_revs[1..9].copy_from_slice(&100u64.to_le_bytes());
        assert!(decode_kv("/a".into(), &bad_revs).is_err());
    }

    #[test]
    fn corrupt_entry_in_file_gives_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let wtx = db.begin_write().unwrap();
            {
                let mut t = wtx.open_table(KV_TABLE).unwrap();
                t.insert(b"/k".as_slice(), b"\x01short".as_slice()).unwrap();
            }
            wtx.commit().unwrap();
        }
        match Disk::open(dir.path(), 10) {
            Err(StoreError::Internal(msg)) => assert!(msg.contains("corrupt entry"), "{msg}"),
            Err(e) => panic!("expected Internal, got {e:?}"),
            Ok(_) => panic!("expected Internal, got Ok"),
        }
    }

    #[test]
    fn non_utf8_key_in_file_gives_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let wtx = db.begin_write().unwrap();
            {
                let mut t = wtx.open_table(KV_TABLE).unwrap();
                let mut buf = Vec::new();
                encode_kv(&kv(), &mut buf);
                t.insert(b"\xff\xfe".as_slice(), buf.as_slice()).unwrap();
            }
            wtx.commit().unwrap();
        }
        assert!(matches!(
            Disk::open(dir.path(), 10),
            Err(StoreError::Internal(msg)) if msg.contains("UTF-8")
        ));
    }

    #[test]
    fn garbage_file_gives_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
        assert!(matches!(
            Disk::open(dir.path(), 10),
            Err(StoreError::Internal(_))
        ));
    }

    #[test]
    fn ceiling_is_raised_on_open_and_survives() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, loaded) = Disk::open(dir.path(), 10).unwrap();
        assert_eq!(loaded.revision, 0);
        assert_eq!(disk.ceiling(), 10);
        drop(disk);
        let (disk, loaded) = Disk::open(dir.path(), 10).unwrap();
        assert_eq!(loaded.revision, 10);
        assert_eq!(disk.ceiling(), 20);
    }
}
