//! File identity, to tell a re-created socket from the one seen before.
//!
//! Events of the directory watcher arrive late and in bursts, and some
//! come from our own actions (removing our socket on restart). Instead
//! of reacting to each event, the runner compares what is on disk now
//! with what it bound or registered with. Inode numbers are reused
//! quickly after a delete, so the change time is part of the identity.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

/// How long a connection attempt to an existing socket may take before
/// the socket counts as served (a full listen backlog makes a connect
/// wait).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Device, inode and change time of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// Returns the identity of the socket at `path`, or `None` when no file
/// is there or it is not a socket.
pub(crate) fn socket_identity(path: &Path) -> Option<FileIdentity> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    if !metadata.file_type().is_socket() {
        return None;
    }
    Some(FileIdentity {
        dev: metadata.dev(),
        ino: metadata.ino(),
        ctime: metadata.ctime(),
        ctime_nsec: metadata.ctime_nsec(),
    })
}

/// Reports whether a process accepts connections on the socket at
/// `path`. A socket file nobody listens on refuses at once.
pub(crate) async fn socket_in_use(path: &Path) -> bool {
    if socket_identity(path).is_none() {
        return false;
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => true,
        Ok(Err(_)) => false,
    }
}

/// Removes the file at `path` if it is a socket; anything else there is
/// left alone and reported. Callers check [`socket_in_use`] first, so a
/// socket served by another process is never taken over.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path)?;
            Ok(true)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Removes the socket at `path` only if it is still the one with
/// identity `identity`.
pub(crate) fn remove_own_socket(path: &Path, identity: FileIdentity) -> io::Result<bool> {
    if socket_identity(path) != Some(identity) {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recreated_socket_differs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let before = socket_identity(&path).expect("socket");
        drop(first);
        std::fs::remove_file(&path).expect("remove");
        let _second = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let after = socket_identity(&path).expect("socket");
        assert_ne!(before, after);
    }

    #[test]
    fn own_socket_removal_checks_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let identity = socket_identity(&path).expect("socket");
        std::fs::remove_file(&path).expect("remove");
        let _other = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(!remove_own_socket(&path, identity).expect("checked"));
        assert!(path.exists());
    }

    #[tokio::test]
    async fn served_sockets_are_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.sock");
        assert!(!socket_in_use(&path).await, "no file");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(socket_in_use(&path).await, "listening");
        drop(listener);
        assert!(path.exists());
        assert!(!socket_in_use(&path).await, "stale socket file");
        std::fs::remove_file(&path).expect("remove");
        std::fs::write(&path, "data").expect("write");
        assert!(!socket_in_use(&path).await, "regular file");
    }

    #[test]
    fn stale_removal_spares_regular_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.sock");
        std::fs::write(&path, "data").expect("write");
        assert!(remove_stale_socket(&path).is_err());
        assert!(path.exists());
        assert!(!remove_stale_socket(&dir.path().join("none.sock")).expect("absent is fine"));
    }
}
