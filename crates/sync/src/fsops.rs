//! File-system work: walking and hashing a tree, reading a file without
//! following links, and writing one atomically.
//!
//! Everything here blocks: callers run it in `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::event::SyncError;
use crate::wire::{ManifestEntry, RESERVED_PREFIX, hex};

/// The prefix of the temporary files a receiver writes before renaming.
pub(crate) const TEMP_PREFIX: &str = ".tandem-sync-tmp-";

/// The largest file mirrored, in bytes; a larger one is left out with an
/// event.
pub const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// Checks the admin directory, creating it if missing, and returns its
/// canonical path.
pub(crate) fn prepare_dir(path: &Path) -> Result<PathBuf, SyncError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SyncError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path).map_err(|error| SyncError::Dir {
                path: path.to_path_buf(),
                error,
            })?;
        }
        Err(error) => {
            return Err(SyncError::Dir {
                path: path.to_path_buf(),
                error,
            });
        }
    }
    fs::canonicalize(path).map_err(|error| SyncError::Dir {
        path: path.to_path_buf(),
        error,
    })
}

/// What a walk found at a path.
#[derive(Debug)]
pub(crate) enum Found {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// Walks `root/start` (or `root` when `start` is empty), depth first in
/// name order, without following links. Calls `skip(rel, reason)` for what
/// is left out (links, special files, names that are not UTF-8); tandem's
/// own files are left out silently. Paths that vanish during the walk are
/// ignored.
pub(crate) fn walk(
    root: &Path,
    start: &str,
    skip: &mut dyn FnMut(&str, &str),
) -> Vec<(String, Found)> {
    let mut out = Vec::new();
    let mut stack = vec![start.to_string()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let Ok(entries) = fs::read_dir(&abs) else {
            continue;
        };
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in names {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let lossy = name.to_string_lossy().into_owned();
                let rel = join(&dir, &lossy);
                skip(&rel, "its name is not valid UTF-8");
                continue;
            };
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let rel = join(&dir, name);
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_symlink() {
                skip(&rel, "symbolic links are not followed");
            } else if ft.is_dir() {
                out.push((rel.clone(), Found::Dir));
                subdirs.push(rel);
            } else if ft.is_file() {
                out.push((rel, Found::File));
            } else {
                skip(&rel, "it is not a regular file or a directory");
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Lists and hashes every file and directory under `root`.
pub(crate) fn manifest(
    root: &Path,
    skip: &mut dyn FnMut(&str, &str),
) -> BTreeMap<String, ManifestEntry> {
    let mut entries = BTreeMap::new();
    for (rel, found) in walk(root, "", skip) {
        match found {
            Found::Dir => {
                entries.insert(rel, ManifestEntry::Dir);
            }
            Found::File => match hash_file(&root.join(&rel)) {
                Ok(Some((size, sha256))) => {
                    entries.insert(rel, ManifestEntry::File { size, sha256 });
                }
                // Vanished or replaced meanwhile: as if absent.
                Ok(None) => {}
                Err(e) => skip(&rel, &format!("it cannot be read: {e}")),
            },
        }
    }
    entries
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Hashes a regular file: `None` when it is absent or not a regular file.
fn hash_file(path: &Path) -> io::Result<Option<(u64, String)>> {
    let mut f = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Some((size, hex(&hasher.finalize()))))
}

/// Whether an error means the path is not there (any more).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// What is at a path of the source's tree.
#[derive(Debug)]
pub(crate) enum Content {
    /// A regular file's content and permission bits.
    File(Vec<u8>, u32),
    /// A directory.
    Dir,
    /// Nothing (or it vanished while being read).
    Missing,
    /// Something left out of the mirror, with the reason; `true` when the
    /// mirror should hold nothing there (a link, a special file), `false`
    /// when it keeps what it has (unreadable, too large).
    Skip(String, bool),
}

/// Reads what is at `path` without following a link.
pub(crate) fn read_path(path: &Path) -> Content {
    let f = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Content::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Content::Skip("symbolic links are not followed".into(), true);
        }
        Err(e) => return Content::Skip(format!("it cannot be read: {e}"), false),
    };
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return Content::Skip(format!("it cannot be read: {e}"), false),
    };
    if meta.is_dir() {
        return Content::Dir;
    }
    if !meta.is_file() {
        return Content::Skip("it is not a regular file or a directory".into(), true);
    }
    if meta.len() > MAX_FILE_BYTES {
        return too_large(meta.len());
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    match f.take(MAX_FILE_BYTES + 1).read_to_end(&mut data) {
        Ok(_) if data.len() as u64 > MAX_FILE_BYTES => too_large(data.len() as u64),
        Ok(_) => Content::File(data, meta.permissions().mode() & 0o777),
        Err(e) => Content::Skip(format!("it cannot be read: {e}"), false),
    }
}

fn too_large(size: u64) -> Content {
    Content::Skip(
        format!(
            "it has {} MiB, over the {} MiB limit",
            size.div_ceil(1024 * 1024),
            MAX_FILE_BYTES / (1024 * 1024)
        ),
        false,
    )
}

/// Refuses a path one of whose parents is a symbolic link (or anything but
/// a directory or a file) in the receiver's tree.
pub(crate) fn check_parents(root: &Path, parts: &[&str], path: &str) -> Result<(), String> {
    let mut at = root.to_path_buf();
    for (i, part) in parts[..parts.len().saturating_sub(1)].iter().enumerate() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "the path {path} goes through the symbolic link {} in the admin directory",
                    parts[..=i].join("/")
                ));
            }
            Ok(m) if m.is_dir() => {}
            // A file is replaced by a directory; nothing further exists.
            Ok(_) => return Ok(()),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// An error on one path while applying a push.
#[derive(Debug)]
pub(crate) struct ApplyError {
    /// The relative path.
    pub path: String,
    /// The OS error.
    pub error: io::Error,
}

/// Makes `root/parts[..]` directories, replacing a file in the way. A
/// symbolic link in the way is refused, except as the last component when
/// `last_is_target` (the link itself is replaced, never followed).
fn make_dirs(root: &Path, parts: &[&str], last_is_target: bool) -> io::Result<()> {
    let mut at = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let parent = at.clone();
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() && !(last_is_target && i + 1 == parts.len()) => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link",
                    parts[..=i].join("/")
                )));
            }
            Ok(_) => fs::remove_file(&at)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(&at)?;
        sync_dir(&parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `root/rel` atomically: a temporary file in the same directory,
/// fsync, rename over the target, fsync the directory. On error the
/// temporary file is removed and the old file is untouched.
pub(crate) fn write_file(
    root: &Path,
    rel: &str,
    parts: &[&str],
    data: &[u8],
    mode: u32,
) -> Result<(), ApplyError> {
    let fail = |error| ApplyError {
        path: rel.to_string(),
        error,
    };
    let Some((_, parents)) = parts.split_last() else {
        return Err(fail(io::Error::other("empty path")));
    };
    make_dirs(root, parents, false).map_err(fail)?;
    let target = root.join(rel);
    let dir = target.parent().unwrap_or(root).to_path_buf();
    let (tmp, mut file) = loop {
        let name = format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(e)),
        }
    };
    let written = (|| {
        file.write_all(data)?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777))?;
        file.sync_all()?;
        drop(file);
        if let Ok(m) = fs::symlink_metadata(&target)
            && m.is_dir()
        {
            fs::remove_dir_all(&target)?;
        }
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    sync_dir(&dir).map_err(fail)
}

/// Makes sure `root/rel` is a directory.
pub(crate) fn make_dir(root: &Path, rel: &str, parts: &[&str]) -> Result<(), ApplyError> {
    make_dirs(root, parts, true).map_err(|error| ApplyError {
        path: rel.to_string(),
        error,
    })
}

/// Removes `root/rel`, a file, a link or a whole directory; absent is fine.
/// Returns whether something was removed.
pub(crate) fn remove(root: &Path, rel: &str, parts: &[&str]) -> Result<bool, ApplyError> {
    let fail = |error| ApplyError {
        path: rel.to_string(),
        error,
    };
    // Never remove through a link (checked when the push arrived; checked
    // again to narrow the race with a local change).
    check_parents(root, parts, rel).map_err(|e| fail(io::Error::other(e)))?;
    let target = root.join(rel);
    let removed = match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&target),
        Ok(_) => fs::remove_file(&target),
        Err(e) if gone(&e) => return Ok(false),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => {}
        Err(e) if gone(&e) => return Ok(false),
        Err(e) => return Err(fail(e)),
    }
    sync_dir(target.parent().unwrap_or(root)).map_err(fail)?;
    Ok(true)
}

/// Removes temporary files a crash left behind.
pub(crate) fn clean_temps(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_files_and_dirs_atomically() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write_file(root, "a/b/c", &["a", "b", "c"], b"one", 0o640).unwrap();
        assert_eq!(fs::read(root.join("a/b/c")).unwrap(), b"one");
        assert_eq!(
            fs::metadata(root.join("a/b/c"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        // A file where a directory is now expected, and the reverse.
        write_file(root, "a/b", &["a", "b"], b"two", 0o644).unwrap();
        assert_eq!(fs::read(root.join("a/b")).unwrap(), b"two");
        write_file(root, "a/b/d", &["a", "b", "d"], b"three", 0o644).unwrap();
        assert_eq!(fs::read(root.join("a/b/d")).unwrap(), b"three");
        assert!(remove(root, "a", &["a"]).unwrap());
        assert!(!remove(root, "a", &["a"]).unwrap());
        assert!(!remove(root, "x/y", &["x", "y"]).unwrap());
        let left: Vec<_> = fs::read_dir(root).unwrap().collect();
        assert!(left.is_empty());
    }

    #[test]
    fn links_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        std::os::unix::fs::symlink(outside.path(), root.join("l")).unwrap();
        assert!(check_parents(root, &["l", "x"], "l/x").is_err());
        assert!(check_parents(root, &["l"], "l").is_ok());
        assert!(matches!(read_path(&root.join("l")), Content::Skip(_, true)));
        let mut skipped = Vec::new();
        let found = walk(root, "", &mut |p, _| skipped.push(p.to_string()));
        assert!(found.is_empty());
        assert_eq!(skipped, vec!["l"]);
        // Writing over the link replaces the link, not its target.
        write_file(root, "l", &["l"], b"x", 0o644).unwrap();
        assert!(fs::symlink_metadata(root.join("l")).unwrap().is_file());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
