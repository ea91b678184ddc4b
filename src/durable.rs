//! The one place that writes files durably: temp file, fsync, rename, fsync of the directory.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A durable write that failed, with the path it was for.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Distinguishes temp files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of temp files; readers of the data directory skip names starting with it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `contents` to `path` so that `path` either keeps its old contents or has all of the
/// new ones, even across a crash or power loss. Parent directories are created.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    write_atomically_with(path, |file| file.write_all(contents))
}

/// [`write_atomically`] for contents that `write` produces piece by piece, so a caller
/// need not assemble them in one buffer first.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), WriteError> {
    let fail = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| fail(io::Error::other("path has no parent directory")))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::other("path has no file name")))?;
    fs::create_dir_all(dir).map_err(fail)?;

    let temp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        file_name.to_string_lossy()
    ));
    let result = write_and_sync(&temp, write).and_then(|()| fs::rename(&temp, path));
    if let Err(err) = result {
        let _ = fs::remove_file(&temp);
        return Err(fail(err));
    }
    // The rename is only durable once the directory entry is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

fn write_and_sync(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    write(&mut file)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = write_atomically(&blocker.join("child.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("child.json"), "{err}");
    }
}
