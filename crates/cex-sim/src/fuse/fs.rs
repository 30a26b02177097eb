//! The FUSE operations: path lookup, `stat`, directory listing, symlinks,
//! `chmod`, and attribute reads and writes passed to the model.
//!
//! Every reply carries a zero cache lifetime and every file is opened
//! with direct I/O, so the kernel sends every access to this file system: a removed
//! directory is gone at once, each `write()` reaches the model as one
//! call, and its errno reaches the writer. As on sysfs, an open for
//! writing of a file without a `store` method fails with EACCES for root
//! too, and a file of a removed device fails with ENODEV.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::Sim;
use super::tree::{Content, Ino, Inode, Kind};

/// No kernel caching of entries or attributes.
const TTL: Duration = Duration::ZERO;
/// The size `stat` shows for an attribute file, as sysfs shows it.
const ATTR_FILE_SIZE: u64 = 4096;

/// The entries of one open directory: name, inode and type, `.` and `..`
/// first.
type Listing = Vec<(String, Ino, FileType)>;

/// The mounted file system: the shared model and the open directory
/// listings.
pub(crate) struct NodeFs {
    sim: Arc<Mutex<Sim>>,
    listings: Mutex<HashMap<u64, Listing>>,
    next_handle: AtomicU64,
}

impl NodeFs {
    pub fn new(sim: Arc<Mutex<Sim>>) -> Self {
        Self {
            sim,
            listings: Mutex::default(),
            next_handle: AtomicU64::new(1),
        }
    }

    fn sim(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listings(&self) -> MutexGuard<'_, HashMap<u64, Listing>> {
        self.listings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Dir(_) => FileType::Directory,
        Kind::File(_) => FileType::RegularFile,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::CharDevice { .. } => FileType::CharDevice,
    }
}

/// Encodes a device number as FUSE passes it (the kernel's `new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn attr_of(ino: Ino, inode: &Inode) -> FileAttr {
    let (size, nlink, rdev) = match &inode.kind {
        Kind::Dir(_) => (0, 2, 0),
        Kind::File(_) => (ATTR_FILE_SIZE, 1, 0),
        Kind::Symlink(target) => (target.len() as u64, 1, 0),
        Kind::CharDevice { major, minor } => (0, 1, encode_dev(*major, *minor)),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 0,
        atime: inode.mtime,
        mtime: inode.mtime,
        ctime: inode.mtime,
        crtime: inode.mtime,
        kind: file_type(&inode.kind),
        perm: inode.perm,
        nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for NodeFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let sim = self.sim();
        let found = name
            .to_str()
            .and_then(|name| sim.tree.lookup(parent.0, name, Instant::now()))
            .and_then(|ino| Some((ino, sim.tree.get(ino)?)));
        match found {
            Some((ino, inode)) => reply.entry(&TTL, &attr_of(ino, inode), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.sim().tree.get(ino.0) {
            Some(inode) => reply.attr(&TTL, &attr_of(ino.0, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut sim = self.sim();
        let Some(inode) = sim.tree.get_mut(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        // Truncation (open with O_TRUNC) is harmless on an attribute with a
        // store method, as on sysfs.
        if size.is_some() {
            match inode.kind {
                Kind::Dir(_) => return reply.error(Errno::EISDIR),
                Kind::File(_) if !inode.writable => return reply.error(Errno::EACCES),
                _ => {}
            }
        }
        if let Some(mode) = mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            inode.uid = uid;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() {
            inode.mtime = SystemTime::now();
        }
        reply.attr(&TTL, &attr_of(ino.0, inode));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.sim().tree.get(ino.0).map(|inode| &inode.kind) {
            Some(Kind::Symlink(target)) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let sim = self.sim();
        let Some(inode) = sim.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if inode.removed {
            return reply.error(Errno::ENODEV);
        }
        if let Kind::CharDevice { .. } = inode.kind {
            // The mount is nodev, so the kernel never gets here.
            return reply.error(Errno::ENXIO);
        }
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        if (read && !inode.readable) || (write && !inode.writable) {
            return reply.error(Errno::EACCES);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let sim = self.sim();
        let text = match sim.tree.get(ino.0) {
            None => Err(Errno::ENOENT),
            Some(inode) if inode.removed => Err(Errno::ENODEV),
            Some(Inode {
                kind: Kind::File(Content::Fixed(data)),
                ..
            }) => Ok(data.clone()),
            Some(Inode {
                kind: Kind::File(Content::Attr(attr)),
                ..
            }) => sim.show(attr).map(String::into_bytes),
            Some(_) => Err(Errno::EINVAL),
        };
        match text {
            Ok(data) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut sim = self.sim();
        let attr = match sim.tree.get(ino.0) {
            None => return reply.error(Errno::ENOENT),
            Some(inode) if inode.removed => return reply.error(Errno::ENODEV),
            Some(inode) if !inode.writable => return reply.error(Errno::EACCES),
            Some(Inode {
                kind: Kind::File(Content::Attr(attr)),
                ..
            }) => attr.clone(),
            Some(Inode {
                kind: Kind::File(Content::Fixed(_)),
                ..
            }) => return reply.written(data.len() as u32),
            Some(_) => return reply.error(Errno::EINVAL),
        };
        match sim.store(&attr, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => {
                tracing::debug!(?attr, ?errno, "FUSE node rejected a write");
                reply.error(errno)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let sim = self.sim();
        let Some(inode) = sim.tree.get(ino.0).filter(|inode| !inode.removed) else {
            return reply.error(Errno::ENOENT);
        };
        if !matches!(inode.kind, Kind::Dir(_)) {
            return reply.error(Errno::ENOTDIR);
        }
        let mut listing = vec![
            (".".to_string(), ino.0, FileType::Directory),
            ("..".to_string(), inode.parent, FileType::Directory),
        ];
        for (name, child) in sim.tree.entries(ino.0, Instant::now()) {
            if let Some(child_inode) = sim.tree.get(child) {
                listing.push((name, child, file_type(&child_inode.kind)));
            }
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.listings().insert(handle, listing);
        reply.opened(FileHandle(handle), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings();
        let Some(listing) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (name, ino, kind)) in listing.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings().remove(&fh.0);
        reply.ok();
    }

    // sysfs has no create, mknod, mkdir, unlink, rename or link operation:
    // the VFS returns EACCES for new files and EPERM for the rest.

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EACCES);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EACCES);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }
}
