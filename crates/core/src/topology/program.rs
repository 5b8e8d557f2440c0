//! Whether a fence device's program can run here: the one check of the
//! topology that looks at the machine it runs on (its files and `$PATH`),
//! so that a fence device is known to work before the day it is needed.

use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};

/// Why a program cannot be run, for messages: "not found", "not a file",
/// "not executable (mode 0644)", "not found on $PATH".
pub(crate) fn check_executable(program: &str) -> Result<(), String> {
    if program.contains('/') {
        let path = Path::new(program);
        let resolved = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| format!("cannot resolve it: the current directory is unknown ({e})"))?
                .join(path)
                .components()
                .collect()
        };
        let whence = if path.is_absolute() {
            String::new()
        } else {
            format!(": {}", resolved.display())
        };
        return match std::fs::metadata(&resolved) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!("not found{whence}")),
            Err(e) => Err(format!("cannot be read{whence}: {e}")),
            Ok(m) if !m.is_file() => Err(format!("not a file{whence}")),
            Ok(m) => match mode(&m) {
                Some(mode) if mode & 0o111 == 0 => {
                    Err(format!("not executable (mode {mode:04o}){whence}"))
                }
                _ => Ok(()),
            },
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut not_executable: Option<(PathBuf, u32)> = None;
    for dir in std::env::split_paths(&path).filter(|d| !d.as_os_str().is_empty()) {
        let candidate = dir.join(program);
        let Ok(m) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        match mode(&m) {
            Some(mode) if mode & 0o111 == 0 => {
                not_executable.get_or_insert((candidate, mode));
            }
            _ => return Ok(()),
        }
    }
    match not_executable {
        Some((candidate, mode)) => Err(format!(
            "not executable (mode {mode:04o}): found on $PATH as {}, with no executable match",
            candidate.display()
        )),
        None => Err("not found on $PATH".to_string()),
    }
}

/// The permission bits, where the platform has them.
#[cfg(unix)]
fn mode(m: &Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(m.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn mode(_: &Metadata) -> Option<u32> {
    None
}
