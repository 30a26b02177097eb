//! No-follow file system operations relative to an open directory.
//!
//! Every call here works on a directory file descriptor and a single name
//! (`openat`, `mkdirat`, `symlinkat`, `unlinkat`), opening with
//! `O_NOFOLLOW` so that a symlink planted in a shared parent is never
//! followed. The path kept beside each descriptor is only used in error
//! messages.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    fchmod, fstat, mkdirat, openat, statat, symlinkat, unlinkat, AtFlags, Dir, FileType, Mode,
    OFlags, CWD,
};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// An open directory and the path it was opened under.
#[derive(Debug)]
pub(crate) struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
}

/// A failed no-follow operation on `path`.
#[derive(Debug)]
pub(crate) struct AtError {
    pub(crate) path: PathBuf,
    pub(crate) op: &'static str,
    pub(crate) source: io::Error,
}

pub(crate) type AtResult<T> = Result<T, AtError>;

impl DirHandle {
    /// Opens `path` component by component from `/` (or the working
    /// directory for a relative path) without following any symlink,
    /// creating missing components with mode 0755 when `create` is set.
    /// A `..` component is rejected.
    pub(crate) fn open_path(path: &Path, create: bool) -> AtResult<Self> {
        let start = if path.is_absolute() { "/" } else { "." };
        let fd = openat(CWD, start, DIR_FLAGS, Mode::empty())
            .map_err(|errno| at_error(Path::new(start), "open", errno))?;
        let mut dir = DirHandle {
            fd,
            path: PathBuf::from(start),
        };
        for component in path.components() {
            match component {
                Component::Normal(name) => dir = dir.open_child(name, create)?,
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(AtError {
                        path: path.to_path_buf(),
                        op: "open",
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "path contains a '..' component",
                        ),
                    })
                }
            }
        }
        dir.path = path.to_path_buf();
        Ok(dir)
    }

    fn open_child(&self, name: &OsStr, create: bool) -> AtResult<Self> {
        match self.open_dir(name) {
            Err(error) if create && error.source.kind() == io::ErrorKind::NotFound => {
                match mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => self.open_dir(name),
                    Err(errno) => Err(at_error(&self.path.join(name), "create directory", errno)),
                }
            }
            other => other,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the child directory `name`; a symlink there fails with ELOOP.
    pub(crate) fn open_dir(&self, name: impl AsRef<OsStr>) -> AtResult<Self> {
        let path = self.path.join(name.as_ref());
        let fd = openat(&self.fd, name.as_ref(), DIR_FLAGS, Mode::empty())
            .map_err(|errno| at_error(&path, "open directory", errno))?;
        Ok(DirHandle { fd, path })
    }

    /// Creates the child directory `name` with exactly `mode` and opens it.
    pub(crate) fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> AtResult<Self> {
        let path = self.path.join(name.as_ref());
        mkdirat(&self.fd, name.as_ref(), Mode::from_raw_mode(mode))
            .map_err(|errno| at_error(&path, "create directory", errno))?;
        let dir = self.open_dir(name)?;
        fchmod(&dir.fd, Mode::from_raw_mode(mode))
            .map_err(|errno| at_error(&path, "set mode of", errno))?;
        Ok(dir)
    }

    /// Creates the child directory path `names` (like `mkdir -p`, each
    /// component with `mode`) and opens its last component.
    pub(crate) fn create_dirs(&self, names: &[&str], mode: u32) -> AtResult<Self> {
        let mut dir = self.create_or_open_dir(names[0], mode)?;
        for name in &names[1..] {
            dir = dir.create_or_open_dir(name, mode)?;
        }
        Ok(dir)
    }

    fn create_or_open_dir(&self, name: &str, mode: u32) -> AtResult<Self> {
        match self.create_dir(name, mode) {
            Err(error) if error.source.kind() == io::ErrorKind::AlreadyExists => {
                self.open_dir(name)
            }
            other => other,
        }
    }

    /// Creates the file `name` (which must not exist) holding `contents`,
    /// with exactly `mode`.
    pub(crate) fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> AtResult<()> {
        let path = self.path.join(name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::from_raw_mode(mode))
            .map_err(|errno| at_error(&path, "create file", errno))?;
        fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|errno| at_error(&path, "set mode of", errno))?;
        std::fs::File::from(fd)
            .write_all(contents)
            .map_err(|source| AtError {
                path,
                op: "write",
                source,
            })
    }

    /// Creates the symlink `name` pointing at `target`.
    pub(crate) fn symlink(&self, name: &str, target: &str) -> AtResult<()> {
        symlinkat(target, &self.fd, name)
            .map_err(|errno| at_error(&self.path.join(name), "create symlink", errno))
    }

    /// Sets the permission bits of this directory to exactly `mode`.
    pub(crate) fn set_mode(&self, mode: u32) -> AtResult<()> {
        fchmod(&self.fd, Mode::from_raw_mode(mode))
            .map_err(|errno| at_error(&self.path, "set mode of", errno))
    }

    /// Reads the owner uid and permission bits of this directory.
    pub(crate) fn owner_and_mode(&self) -> AtResult<(u32, u32)> {
        let stat =
            fstat(&self.fd).map_err(|errno| at_error(&self.path, "read attributes of", errno))?;
        Ok((stat.st_uid, stat.st_mode & 0o7777))
    }

    /// Removes the entry `name` and, for a directory, everything below it,
    /// never following a symlink. Returns false when `name` did not exist.
    pub(crate) fn remove_tree(&self, name: impl AsRef<OsStr>) -> AtResult<bool> {
        let name = name.as_ref();
        let path = self.path.join(name);
        let stat = match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(errno) => return Err(at_error(&path, "read attributes of", errno)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let child = self.open_dir(name)?;
            child.remove_entries()?;
            unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                .map_err(|errno| at_error(&path, "remove directory", errno))?;
        } else {
            unlinkat(&self.fd, name, AtFlags::empty())
                .map_err(|errno| at_error(&path, "remove", errno))?;
        }
        Ok(true)
    }

    fn remove_entries(&self) -> AtResult<()> {
        for name in self.entry_names()? {
            self.remove_tree(&name)?;
        }
        Ok(())
    }

    /// Lists the names in this directory, without `.` and `..`.
    pub(crate) fn entry_names(&self) -> AtResult<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;

        let list_error = |errno| at_error(&self.path, "list", errno);
        let dir = Dir::read_from(&self.fd).map_err(list_error)?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(list_error)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }
}

fn at_error(path: &Path, op: &'static str, errno: rustix::io::Errno) -> AtError {
    AtError {
        path: path.to_path_buf(),
        op,
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn open_path_creates_missing_components() {
        let temp = tempfile::tempdir().expect("temp dir");
        let target = temp.path().join("a/b");
        let dir = DirHandle::open_path(&target, true).expect("created");
        assert_eq!(dir.path(), target);
        assert!(target.is_dir());
    }

    #[test]
    fn open_path_rejects_symlink_component() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(temp.path().join("real")).expect("mkdir");
        symlink(temp.path().join("real"), temp.path().join("link")).expect("symlink");
        let error = DirHandle::open_path(&temp.path().join("link/sub"), true).expect_err("symlink");
        assert_eq!(error.path, temp.path().join("link"));
        assert!(!temp.path().join("real/sub").exists());
    }

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let temp = tempfile::tempdir().expect("temp dir");
        let outside = temp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "x").expect("write");
        let tree = temp.path().join("tree/sub");
        std::fs::create_dir_all(&tree).expect("mkdir");
        symlink(&outside, tree.join("link")).expect("symlink");
        std::fs::write(tree.join("file"), "y").expect("write");
        std::fs::set_permissions(tree.join("file"), PermissionsExt::from_mode(0o444))
            .expect("chmod");

        let parent = DirHandle::open_path(temp.path(), false).expect("open");
        assert!(parent.remove_tree("tree").expect("removed"));
        assert!(!temp.path().join("tree").exists());
        assert!(outside.join("keep").exists());
        assert!(!parent.remove_tree("tree").expect("absent is fine"));
    }

    #[test]
    fn write_file_sets_exact_mode() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = DirHandle::open_path(temp.path(), false).expect("open");
        dir.write_file("f", b"0\n", 0o444).expect("write");
        let meta = std::fs::metadata(temp.path().join("f")).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
        assert_eq!(std::fs::read(temp.path().join("f")).expect("read"), b"0\n");
        assert!(dir.write_file("f", b"1\n", 0o444).is_err());
    }
}
