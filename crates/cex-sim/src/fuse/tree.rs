//! The inode table behind the FUSE mount: directories, attribute files,
//! symbolic links and device nodes, each under a fixed inode number.
//!
//! Inode numbers are never reused. A removed directory or file keeps its
//! inode, marked removed, so that an already open file descriptor reaches
//! it and gets ENODEV as on sysfs, while path lookups give ENOENT.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use super::model::Attr;

/// An inode number as FUSE uses it.
pub(crate) type Ino = u64;

/// The inode number of the mount root.
pub(crate) const ROOT: Ino = 1;

/// The content of a regular file.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// Fixed text. Writes, where the file accepts them (`uevent`, `bind`),
    /// succeed and change nothing.
    Fixed(Vec<u8>),
    /// An attribute read from and stored into the node model.
    Attr(Attr),
}

/// The type and payload of an inode.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Dir(BTreeMap<String, Ino>),
    File(Content),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One inode.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub parent: Ino,
    pub kind: Kind,
    /// Permission bits shown by `stat`; `chmod` changes them.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Whether the file can be opened for reading, fixed at creation like
    /// the `show` method of a sysfs attribute.
    pub readable: bool,
    /// Whether the file can be opened for writing (a `store` method).
    pub writable: bool,
    pub mtime: SystemTime,
    pub removed: bool,
    /// A name that appears only from this instant on (a `/dev` node that
    /// udev makes late).
    pub visible_at: Option<Instant>,
}

impl Inode {
    fn new(parent: Ino, kind: Kind, perm: u16) -> Self {
        Self {
            parent,
            kind,
            perm,
            uid: 0,
            gid: 0,
            readable: perm & 0o444 != 0,
            writable: perm & 0o222 != 0,
            mtime: SystemTime::now(),
            removed: false,
            visible_at: None,
        }
    }

    pub fn is_visible(&self, now: Instant) -> bool {
        self.visible_at.is_none_or(|at| at <= now)
    }
}

/// All inodes of one mount.
#[derive(Debug)]
pub(crate) struct Tree {
    inodes: HashMap<Ino, Inode>,
    next: Ino,
}

impl Tree {
    /// Creates a tree containing only the root directory.
    pub fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(ROOT, Kind::Dir(BTreeMap::new()), 0o755));
        Self {
            inodes,
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// Adds `name` below the directory `parent`, replacing nothing: an
    /// existing entry of that name is removed first.
    pub fn add(&mut self, parent: Ino, name: &str, kind: Kind, perm: u16) -> Ino {
        if let Some(old) = self.child(parent, name) {
            self.remove(old);
        }
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(ino, Inode::new(parent, kind, perm));
        if let Some(Kind::Dir(entries)) = self.inodes.get_mut(&parent).map(|inode| &mut inode.kind)
        {
            entries.insert(name.to_string(), ino);
        }
        ino
    }

    pub fn add_dir(&mut self, parent: Ino, name: &str) -> Ino {
        self.add(parent, name, Kind::Dir(BTreeMap::new()), 0o755)
    }

    pub fn add_file(&mut self, parent: Ino, name: &str, content: Content, perm: u16) -> Ino {
        self.add(parent, name, Kind::File(content), perm)
    }

    pub fn add_symlink(&mut self, parent: Ino, name: &str, target: &str) -> Ino {
        self.add(parent, name, Kind::Symlink(target.to_string()), 0o777)
    }

    /// Finds the entry `name` of directory `parent`, visible yet or not.
    fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        match &self.inodes.get(&parent)?.kind {
            Kind::Dir(entries) => entries.get(name).copied(),
            _ => None,
        }
    }

    /// Finds the visible entry `name` of the directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str, now: Instant) -> Option<Ino> {
        let ino = self.child(parent, name)?;
        self.inodes
            .get(&ino)
            .filter(|inode| inode.is_visible(now))
            .map(|_| ino)
    }

    /// Resolves a relative path of directory entries (no symlinks).
    pub fn resolve(&self, path: &str) -> Option<Ino> {
        path.split('/')
            .filter(|part| !part.is_empty())
            .try_fold(ROOT, |dir, part| self.child(dir, part))
    }

    /// Lists the visible entries of a directory, sorted by name.
    pub fn entries(&self, dir: Ino, now: Instant) -> Vec<(String, Ino)> {
        let Some(Inode {
            kind: Kind::Dir(entries),
            ..
        }) = self.inodes.get(&dir)
        else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|(_, ino)| self.inodes.get(ino).is_some_and(|i| i.is_visible(now)))
            .map(|(name, ino)| (name.clone(), *ino))
            .collect()
    }

    /// Unlinks `ino` from its parent and marks it and everything below it
    /// removed.
    pub fn remove(&mut self, ino: Ino) {
        let Some(parent) = self.inodes.get(&ino).map(|inode| inode.parent) else {
            return;
        };
        if let Some(Kind::Dir(entries)) = self.inodes.get_mut(&parent).map(|inode| &mut inode.kind)
        {
            entries.retain(|_, child| *child != ino);
        }
        let mut pending = vec![ino];
        while let Some(next) = pending.pop() {
            if let Some(inode) = self.inodes.get_mut(&next) {
                inode.removed = true;
                if let Kind::Dir(entries) = &inode.kind {
                    pending.extend(entries.values().copied());
                }
            }
        }
    }

    /// Removes the entry at `path` if there is one.
    pub fn remove_path(&mut self, path: &str) {
        if let Some(ino) = self.resolve(path) {
            self.remove(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_subtree_is_unlinked_and_marked() {
        let mut tree = Tree::new();
        let sys = tree.add_dir(ROOT, "sys");
        let card = tree.add_dir(sys, "card00");
        let file = tree.add_file(card, "online", Content::Fixed(b"1\n".to_vec()), 0o644);
        assert_eq!(tree.resolve("sys/card00/online"), Some(file));

        tree.remove(card);

        assert_eq!(tree.resolve("sys/card00"), None);
        assert!(tree.get(file).expect("inode kept").removed);
        assert!(tree.entries(sys, Instant::now()).is_empty());
    }

    #[test]
    fn late_entry_is_hidden_until_due() {
        let mut tree = Tree::new();
        let now = Instant::now();
        let dev = tree.add(
            ROOT,
            "zc",
            Kind::CharDevice {
                major: 241,
                minor: 0,
            },
            0o600,
        );
        tree.get_mut(dev).expect("inode").visible_at =
            Some(now + std::time::Duration::from_secs(60));
        assert_eq!(tree.lookup(ROOT, "zc", now), None);
        assert!(tree.entries(ROOT, now).is_empty());
        assert_eq!(
            tree.lookup(ROOT, "zc", now + std::time::Duration::from_secs(61)),
            Some(dev)
        );
    }
}
