//! Whether a fence device's program can run here: the one check of the
//! topology that looks at the machine it runs on (its files and `$PATH`),
//! so that a fence device is known to work before the day it is needed.

use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};

/// The checks `tandem validate` and `tandem up` make on this machine.
pub const LOCAL_CHECKS: tandem_core::topology::LocalChecks<'static> =
    tandem_core::topology::LocalChecks {
        programs: &check_executable,
        directories: &check_directory,
    };

/// Why a path cannot be an admin directory: it exists and is not a
/// directory. A missing one is created when it is needed.
pub fn check_directory(path: &str) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(t) if t.is_dir() => Ok(()),
            _ => Err("is a symbolic link that does not lead to a directory".into()),
        },
        Ok(_) => Err("is a file, not a directory".into()),
        Err(_) => Ok(()),
    }
}

/// Why a program cannot be run, for messages: "not found", "not a file",
/// "not executable (mode 0644)", "not found on $PATH".
pub fn check_executable(program: &str) -> Result<(), String> {
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_program_must_exist_be_a_file_and_be_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path.display().to_string()
        };
        for ok in [file("fence-ok", 0o755), file("fence-owner", 0o700)] {
            assert_eq!(check_executable(&ok), Ok(()), "{ok}");
        }
        let plain = file("fence-plain", 0o644);
        let missing = dir.path().join("fence-missing").display().to_string();
        let directory = dir.path().display().to_string();
        for (program, why) in [
            (plain, "not executable (mode 0644)"),
            (missing, "not found"),
            (directory, "not a file"),
        ] {
            assert_eq!(
                check_executable(&program),
                Err(why.to_string()),
                "{program}"
            );
        }
        assert_eq!(
            check_executable("tandem-no-such-fence-program"),
            Err("not found on $PATH".to_string())
        );
        assert_eq!(check_executable("sh"), Ok(()));
    }
}
