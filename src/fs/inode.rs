//! The inode table: stable inode numbers for the names the kernel has seen, and what lives
//! only in this mount (directories made by mkdir or emptied here, files not yet uploaded).

use std::collections::{BTreeMap, HashMap};

use crate::meta::{FileMeta, PosixMeta};

pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// s3fs-style: the object's body is the target, its mode has S_IFLNK.
    Symlink,
    /// s3fs-style FIFO, socket or device: an empty object whose mode carries the type.
    Special(Special),
}

/// The special file types; the kernel serves their opens (pipes) or refuses them (`nodev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Socket,
    Char,
    Block,
}

impl Special {
    pub fn from_type_bits(bits: u32) -> Option<Self> {
        match bits {
            libc::S_IFIFO => Some(Special::Fifo),
            libc::S_IFSOCK => Some(Special::Socket),
            libc::S_IFCHR => Some(Special::Char),
            libc::S_IFBLK => Some(Special::Block),
            _ => None,
        }
    }

    pub fn type_bits(self) -> u32 {
        match self {
            Special::Fifo => libc::S_IFIFO,
            Special::Socket => libc::S_IFSOCK,
            Special::Char => libc::S_IFCHR,
            Special::Block => libc::S_IFBLK,
        }
    }
}

impl Kind {
    /// A file, symlink or special file: each is one object.
    pub fn is_object(self) -> bool {
        self != Kind::Dir
    }

    /// The kind an object's stored mode says (regular when it says nothing else).
    pub fn of_object(m: &FileMeta) -> Self {
        match m.posix.type_bits() {
            libc::S_IFLNK => Kind::Symlink,
            bits => Special::from_type_bits(bits).map_or(Kind::File, Kind::Special),
        }
    }

    /// The type bits stored in `x-amz-meta-mode` for an object of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Special(s) => s.type_bits(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Object key of a file; key prefix (ending in `/`, or the mount prefix) of a directory.
    pub key: String,
    /// Files: what the bucket holds (or will hold once uploaded).
    pub meta: Option<FileMeta>,
    /// Directories: attributes set by chmod/chown/utimes, kept in memory.
    pub dir_posix: PosixMeta,
    /// A directory that stays visible with no key under it (mkdir, or emptied here).
    pub pinned: bool,
    /// Open handles that may write; the file exists for this mount while any is open.
    pub writers: u32,
    /// Size seen through open writers, ahead of the bucket.
    pub pending_size: Option<u64>,
    /// Unlinked while open: a later close must not bring it back.
    pub unlinked: bool,
}

impl Node {
    pub fn is_local(&self) -> bool {
        match self.kind {
            Kind::Dir => self.pinned,
            Kind::File | Kind::Symlink | Kind::Special(_) => self.writers > 0,
        }
    }
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    children: HashMap<u64, BTreeMap<String, u64>>,
    next: u64,
}

impl Inodes {
    pub fn new(root_key: String) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: String::new(),
                kind: Kind::Dir,
                key: root_key,
                meta: None,
                dir_posix: PosixMeta::default(),
                pinned: true,
                writers: 0,
                pending_size: None,
                unlinked: false,
            },
        );
        Inodes {
            nodes,
            children: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    pub fn children(&self, parent: u64) -> Vec<(String, u64)> {
        self.children
            .get(&parent)
            .map(|m| m.iter().map(|(n, i)| (n.clone(), *i)).collect())
            .unwrap_or_default()
    }

    /// Children that exist only in this mount.
    /// Directory `ino` stays visible with no key under it, and so do its ancestors: a
    /// directory is listed by its parent only if it is pinned itself or has keys below.
    pub fn pin(&mut self, mut ino: u64) {
        // Bounded by the depth; the guard only protects against a corrupt parent chain.
        for _ in 0..4096 {
            let Some(n) = self.nodes.get_mut(&ino) else {
                return;
            };
            if n.kind != Kind::Dir || n.parent == ino {
                return;
            }
            n.pinned = true;
            ino = n.parent;
        }
    }

    pub fn local_children(&self, parent: u64) -> Vec<(String, u64)> {
        self.children(parent)
            .into_iter()
            .filter(|(_, i)| self.nodes.get(i).is_some_and(Node::is_local))
            .collect()
    }

    /// Records that `parent/name` is a `kind` at `key`; keeps the inode number when the kind
    /// is unchanged. A file with open writers keeps its local state.
    pub fn upsert(
        &mut self,
        parent: u64,
        name: &str,
        kind: Kind,
        key: String,
        meta: Option<FileMeta>,
    ) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                // A listing cannot tell a symlink or special file from a file: keep what a
                // HEAD said about the same version.
                let same_version =
                    n.meta.as_ref().map(|m| &m.etag) == meta.as_ref().map(|m| &m.etag);
                let listed = meta.as_ref().is_some_and(|m| !m.posix_known);
                let compatible = n.kind == kind
                    || (n.kind.is_object()
                        && n.kind != Kind::File
                        && kind == Kind::File
                        && listed
                        && same_version);
                if compatible {
                    if kind.is_object() && n.writers == 0 {
                        n.meta = merge_meta(n.meta.take(), meta);
                    }
                    return ino;
                }
            }
            self.detach(parent, name);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_string(),
                kind,
                key,
                meta,
                dir_posix: PosixMeta::default(),
                pinned: false,
                writers: 0,
                pending_size: None,
                unlinked: false,
            },
        );
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_string(), ino);
        ino
    }

    /// Takes `parent/name` out of the namespace; its node stays for open handles.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.children.get_mut(&parent)?.remove(name)?;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.unlinked = true;
            n.pinned = false;
        }
        Some(ino)
    }

    /// Moves `ino` to `new_parent/new_name`, rewriting the keys of everything below it.
    pub fn move_node(&mut self, ino: u64, new_parent: u64, new_name: &str, new_key: String) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        let (old_parent, old_name, old_key) = (n.parent, n.name.clone(), n.key.clone());
        if let Some(m) = self.children.get_mut(&old_parent) {
            if m.get(&old_name) == Some(&ino) {
                m.remove(&old_name);
            }
        }
        self.detach(new_parent, new_name);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.parent = new_parent;
            n.name = new_name.to_string();
            n.key = new_key.clone();
            n.unlinked = false;
        }
        self.children
            .entry(new_parent)
            .or_default()
            .insert(new_name.to_string(), ino);
        if self.nodes.get(&ino).is_some_and(|n| n.kind == Kind::Dir) {
            let mut stack = vec![ino];
            while let Some(d) = stack.pop() {
                for (_, c) in self.children(d) {
                    if let Some(n) = self.nodes.get_mut(&c) {
                        if let Some(rest) = n.key.strip_prefix(&old_key) {
                            n.key = format!("{new_key}{rest}");
                        }
                        if n.kind == Kind::Dir {
                            stack.push(c);
                        }
                    }
                }
            }
        }
    }

    /// Whether a file under key prefix `prefix` is open for writing.
    pub fn any_writer_below(&self, prefix: &str) -> bool {
        self.nodes
            .values()
            .any(|n| n.writers > 0 && !n.unlinked && n.key.starts_with(prefix))
    }

    /// Path of `ino` below the mount root, for log lines.
    pub fn path(&self, ino: u64) -> String {
        let mut parts = vec![];
        let mut cur = ino;
        while cur != ROOT {
            let Some(n) = self.nodes.get(&cur) else { break };
            parts.push(n.name.clone());
            cur = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

/// A listing carries no user metadata: keep what a HEAD told us about the same version.
fn merge_meta(old: Option<FileMeta>, new: Option<FileMeta>) -> Option<FileMeta> {
    match (old, new) {
        (Some(o), Some(mut n)) => {
            if !n.posix_known && o.posix_known && o.etag == n.etag {
                n.posix = o.posix;
                n.posix_known = true;
            }
            Some(n)
        }
        (o, None) => o,
        (None, n) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_inode_and_move_rewrites_keys() {
        let mut t = Inodes::new(String::new());
        let d = t.upsert(ROOT, "d", Kind::Dir, "d/".into(), None);
        let f = t.upsert(d, "f", Kind::File, "d/f".into(), None);
        assert_eq!(t.upsert(ROOT, "d", Kind::Dir, "d/".into(), None), d);
        t.move_node(d, ROOT, "e", "e/".into());
        assert_eq!(t.get(f).map(|n| n.key.as_str()), Some("e/f"));
        assert_eq!(t.child(ROOT, "e"), Some(d));
        assert_eq!(t.child(ROOT, "d"), None);
        assert_eq!(t.path(f), "/e/f");
        // A file replaced by a directory gets a new inode.
        let x = t.upsert(ROOT, "x", Kind::File, "x".into(), None);
        let y = t.upsert(ROOT, "x", Kind::Dir, "x/".into(), None);
        assert_ne!(x, y);
        assert!(t.get(x).is_some_and(|n| n.unlinked));
    }
}
