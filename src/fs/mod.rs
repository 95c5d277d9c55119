//! The filesystem logic: POSIX operations over an [`ObjectStore`], with no kernel in sight.
//! The FUSE adapter (`crate::fuse`) only translates requests into calls on [`Fs`].

pub mod fallback;
pub mod inode;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, TryStreamExt};
use parking_lot::Mutex;

use crate::budget::MemoryBudget;
use crate::cache::{Listing, Lookup, MetaCache};
use crate::error::{FsError, FsResult};
use crate::keys::{self, Child, NameError};
use crate::meta::{self, FileMeta, PosixMeta};
use crate::prefetch::{ReadConfig, Reader};
use crate::staging::StagingArea;
use crate::store::{ObjectStore, PutOptions, StoreError};
use crate::upload::{part_size, UploadConfig, Version};
use inode::{Inodes, Kind, Node, ROOT};

pub use inode::Kind as FileKind;

/// Largest object a single CopyObject may copy.
const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Parallel requests when a directory rename copies and deletes many keys.
const RENAME_PARALLELISM: usize = 16;

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Key prefix of the mount root: `""` or ending in `/`.
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub ttl: Duration,
    pub miss_ttl: Duration,
    pub part_size: u64,
    pub max_inflight_parts: usize,
    pub max_memory: u64,
    pub read: ReadConfig,
    /// Where files open for writing are staged (anonymous files, gone when closed).
    pub cache_dir: std::path::PathBuf,
    /// Bound on staged bytes of all open files together.
    pub max_cache_size: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            prefix: String::new(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            ttl: Duration::from_secs(1),
            miss_ttl: Duration::from_millis(500),
            part_size: 8 * 1024 * 1024,
            max_inflight_parts: 4,
            max_memory: 512 * 1024 * 1024,
            read: ReadConfig::default(),
            cache_dir: std::env::temp_dir().join("bucketfs-cache"),
            max_cache_size: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Attributes as the kernel sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a character or block special file.
    pub rdev: u32,
    /// 0 for a file unlinked while open.
    pub nlink: u32,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Changes asked by setattr.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug)]
pub struct OpenFlags {
    pub write: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenFlags {
    pub fn from_libc(flags: i32) -> Self {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            exclusive: flags & libc::O_EXCL != 0,
        }
    }
}

pub(crate) struct FileHandle {
    ino: u64,
    /// Bytes were returned: the pinned version may no longer change.
    served: bool,
    /// The last close() of this handle failed to upload: release must not retry it.
    close_failed: bool,
    /// Process (thread group) that opened the handle: only its close() commits.
    opener: Option<u32>,
    reader: Option<Reader>,
    writer: Option<Version>,
}

enum Handle {
    File(Box<tokio::sync::Mutex<FileHandle>>),
    Dir(Mutex<Option<Arc<Vec<DirEntry>>>>),
    /// A file only the old tree of a live migration holds, read from the local file.
    Old(Arc<std::fs::File>),
}

/// A path that could not be saved, and why.
#[derive(Debug)]
pub struct Unsaved {
    pub path: String,
    pub error: FsError,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cfg: FsConfig,
    inodes: Mutex<Inodes>,
    cache: MetaCache,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    budget: MemoryBudget,
    staging: StagingArea,
    warned: Mutex<HashSet<String>>,
    started: SystemTime,
    /// The old tree of a live migration (`--migrate-from`), if any.
    fallback: Option<Arc<dyn fallback::Fallback>>,
}

fn name_error(e: NameError) -> FsError {
    match e {
        NameError::TooLong => FsError::NameTooLong,
        _ => FsError::Invalid,
    }
}

/// Key of a new object `dir/name`: `ENAMETOOLONG` past S3's key limit.
fn new_key(dir: &str, name: &str) -> FsResult<String> {
    let key = keys::file_key(dir, name);
    if keys::key_fits(&key) {
        Ok(key)
    } else {
        Err(FsError::NameTooLong)
    }
}

/// An entry of directory `ino` was added, removed or renamed here: its mtime and ctime
/// change (in memory, as all directory attributes: a directory has no object).
fn dir_changed_now(t: &mut Inodes, ino: u64) {
    if let Some(n) = t.get_mut(ino) {
        let now = SystemTime::now();
        n.dir_posix.mtime = Some(now);
        n.dir_posix.ctime = Some(now);
    }
}

fn not_found_or(e: StoreError) -> FsError {
    FsError::Store(e)
}

impl Fs {
    /// Fails only if the staging directory cannot be made.
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> std::io::Result<Self> {
        let staging = StagingArea::new(&cfg.cache_dir, cfg.max_cache_size)?;
        Ok(Fs {
            staging,
            inodes: Mutex::new(Inodes::new(cfg.prefix.clone())),
            cache: MetaCache::new(cfg.ttl, cfg.miss_ttl),
            budget: MemoryBudget::new(cfg.max_memory),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            warned: Mutex::new(HashSet::new()),
            started: SystemTime::now(),
            fallback: None,
            store,
            cfg,
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    fn upload_config(&self) -> UploadConfig {
        UploadConfig {
            part_size: self.cfg.part_size,
            max_inflight: self.cfg.max_inflight_parts,
        }
    }

    // ---- attributes -------------------------------------------------------------------

    fn attr_of(&self, ino: u64, n: &Node) -> Attr {
        match n.kind {
            Kind::Dir => {
                let p = &n.dir_posix;
                let mtime = p.mtime.unwrap_or(self.started);
                Attr {
                    ino,
                    kind: Kind::Dir,
                    size: 0,
                    mtime,
                    atime: p.atime.unwrap_or(mtime),
                    ctime: p.ctime.unwrap_or(mtime),
                    perm: (p.mode.unwrap_or(self.cfg.dir_mode) & 0o7777) as u16,
                    uid: p.uid.unwrap_or(self.cfg.uid),
                    gid: p.gid.unwrap_or(self.cfg.gid),
                    rdev: 0,
                    nlink: 2,
                }
            }
            Kind::File | Kind::Symlink | Kind::Special(_) => {
                let m = n.meta.as_ref();
                let p = m.map(|m| m.posix).unwrap_or_default();
                let perm = if n.kind == Kind::Symlink {
                    0o777
                } else {
                    p.mode.unwrap_or(self.cfg.file_mode) & 0o7777
                };
                let mtime = p.mtime.or(m.map(|m| m.modified)).unwrap_or(self.started);
                Attr {
                    ino,
                    kind: n.kind,
                    size: n.pending_size.or(m.map(|m| m.size)).unwrap_or(0),
                    mtime,
                    atime: p.atime.unwrap_or(mtime),
                    // Objects other tools wrote carry no ctime: their last change is mtime.
                    ctime: p.ctime.unwrap_or(mtime),
                    perm: perm as u16,
                    uid: p.uid.unwrap_or(self.cfg.uid),
                    gid: p.gid.unwrap_or(self.cfg.gid),
                    rdev: if matches!(n.kind, Kind::Special(_)) {
                        p.rdev.unwrap_or(0)
                    } else {
                        0
                    },
                    nlink: if n.unlinked { 0 } else { 1 },
                }
            }
        }
    }

    fn node_attr(&self, ino: u64) -> FsResult<Attr> {
        let t = self.inodes.lock();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, n))
    }

    /// The headers an upload of `n` carries: type from the name, POSIX metadata.
    fn put_options(&self, n: &Node, content_type: Option<String>) -> PutOptions {
        let mut metadata = HashMap::new();
        if let Some(m) = &n.meta {
            m.posix.write_to(&mut metadata);
        }
        PutOptions {
            content_type: content_type.unwrap_or_else(|| meta::content_type_for(&n.name)),
            metadata,
        }
    }

    fn warn_hidden(&self, hidden: Vec<keys::Hidden>) {
        let mut w = self.warned.lock();
        for h in hidden {
            if w.insert(h.key.clone()) {
                tracing::warn!(key = %h.key, reason = %h.reason, "key hidden: it cannot be shown as a file name (left untouched in the bucket)");
            }
        }
    }

    // ---- lookup -----------------------------------------------------------------------

    /// What `key` (a file key, or a directory prefix without `/`) is in the bucket: HEAD and
    /// a one-key listing race, so a lookup costs one round trip; a directory wins.
    async fn remote_lookup(&self, key: &str) -> FsResult<Lookup> {
        let prefix = format!("{key}/");
        let (head, list) = tokio::join!(
            self.store.head(key),
            self.store.list(&prefix, Some("/"), None, Some(1))
        );
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            return Ok(Lookup::Dir);
        }
        match head {
            Ok(info) => Ok(Lookup::File(FileMeta::from_info(&info, true))),
            Err(StoreError::NotFound) => Ok(Lookup::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// What the mount shows at `dir_prefix` + `name`: the bucket's answer, else the old tree's
    /// (live migration; never cached, so a negative entry cannot hide an old path).
    async fn resolve(&self, dir_prefix: &str, name: &str) -> FsResult<Lookup> {
        match self.resolve_bucket(dir_prefix, name).await? {
            Lookup::Missing => self.old_lookup(dir_prefix, name).await,
            l => Ok(l),
        }
    }

    /// Like `remote_lookup`, answered from the caches when they are fresh.
    async fn resolve_bucket(&self, dir_prefix: &str, name: &str) -> FsResult<Lookup> {
        let key = keys::file_key(dir_prefix, name);
        if let Some(l) = self.cache.get(&key) {
            return Ok(l);
        }
        if let Some(listing) = self.cache.listing(dir_prefix) {
            return Ok(match listing.get(name) {
                Some(Child::Dir) => Lookup::Dir,
                Some(Child::File(m)) => Lookup::File(m.clone()),
                None => Lookup::Missing,
            });
        }
        let l = self.remote_lookup(&key).await?;
        self.cache.put(&key, l.clone());
        Ok(l)
    }

    fn dir_node(&self, ino: u64) -> FsResult<String> {
        let t = self.inodes.lock();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        if n.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(n.key.clone())
    }

    /// A local child (pinned dir, file being written) answers without S3.
    fn local_child(&self, parent: u64, name: &str) -> Option<Attr> {
        let t = self.inodes.lock();
        let ino = t.child(parent, name)?;
        let n = t.get(ino)?;
        n.is_local().then(|| self.attr_of(ino, n))
    }

    /// Records a lookup result in the inode table.
    fn record(&self, parent: u64, dir_prefix: &str, name: &str, l: Lookup) -> FsResult<Attr> {
        let mut t = self.inodes.lock();
        let ino = match l {
            Lookup::Missing => {
                if let Some(ino) = t.child(parent, name) {
                    if !t.get(ino).is_some_and(Node::is_local) {
                        t.detach(parent, name);
                    }
                }
                return Err(FsError::NotFound);
            }
            Lookup::Dir => t.upsert(
                parent,
                name,
                Kind::Dir,
                keys::dir_prefix(dir_prefix, name),
                None,
            ),
            Lookup::File(m) => t.upsert(
                parent,
                name,
                Kind::of_object(&m),
                keys::file_key(dir_prefix, name),
                Some(m),
            ),
        };
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, n))
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let name = keys::check_name(name).map_err(|e| match e {
            NameError::TooLong => FsError::NameTooLong,
            _ => FsError::NotFound,
        })?;
        let dir = self.dir_node(parent)?;
        if let Some(a) = self.local_child(parent, name) {
            return Ok(a);
        }
        let l = self
            .with_metadata(&dir, name, self.resolve(&dir, name).await?)
            .await?;
        self.record(parent, &dir, name, l)
    }

    /// A listing carries no user metadata: a file looked up on its own gets a HEAD, so
    /// owner, mode, mtime and symlink-ness written by any tool are shown.
    async fn with_metadata(&self, dir: &str, name: &str, l: Lookup) -> FsResult<Lookup> {
        match l {
            Lookup::File(m) if !m.posix_known => {
                let key = keys::file_key(dir, name);
                let l = match self.store.head(&key).await {
                    Ok(info) => Lookup::File(FileMeta::from_info(&info, true)),
                    Err(StoreError::NotFound) => Lookup::Missing,
                    Err(e) => return Err(e.into()),
                };
                self.cache.put(&key, l.clone());
                Ok(l)
            }
            other => Ok(other),
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let (parent, name, local, dir_prefix) = {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if ino == ROOT || n.is_local() || n.unlinked {
                return Ok(self.attr_of(ino, n));
            }
            let parent_key = t.get(n.parent).map(|p| p.key.clone()).unwrap_or_default();
            (n.parent, n.name.clone(), n.is_local(), parent_key)
        };
        debug_assert!(!local);
        let l = self.resolve(&dir_prefix, &name).await?;
        let l = self.with_metadata(&dir_prefix, &name, l).await?;
        let a = self.record(parent, &dir_prefix, &name, l)?;
        if a.ino != ino {
            // The name now stands for something else (a file became a directory).
            return Err(FsError::NotFound);
        }
        Ok(a)
    }

    // ---- directories ------------------------------------------------------------------

    async fn fetch_listing(&self, prefix: &str) -> FsResult<Arc<Listing>> {
        if let Some(l) = self.cache.listing(prefix) {
            return Ok(l);
        }
        let mut token = None;
        let mut prefixes = Vec::new();
        let mut objects = Vec::new();
        loop {
            let page = self.store.list(prefix, Some("/"), token, None).await?;
            prefixes.extend(page.prefixes);
            objects.extend(
                page.objects
                    .into_iter()
                    .map(|o| (o.key.clone(), FileMeta::from_info(&o, false))),
            );
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        let (listing, hidden) = keys::classify(prefix, prefixes, objects);
        self.warn_hidden(hidden);
        for (name, c) in &listing {
            let key = keys::file_key(prefix, name);
            match c {
                Child::Dir => self.cache.put(&key, Lookup::Dir),
                Child::File(m) => self.cache.put(&key, Lookup::File(m.clone())),
            }
        }
        let l = Arc::new(listing);
        self.cache.put_listing(prefix, l.clone());
        Ok(l)
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        self.dir_node(ino)?;
        Ok(self.add_handle(Handle::Dir(Mutex::new(None))))
    }

    /// All entries of the directory (`.` and `..` first); the listing is taken when the
    /// handle reads from offset 0 and reused for later offsets.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: i64) -> FsResult<Arc<Vec<DirEntry>>> {
        let h = self.handle(fh)?;
        let Handle::Dir(slot) = &*h else {
            return Err(FsError::BadHandle);
        };
        if offset > 0 {
            if let Some(e) = slot.lock().clone() {
                return Ok(e);
            }
        }
        let entries = Arc::new(self.list_dir(ino).await?);
        *slot.lock() = Some(entries.clone());
        Ok(entries)
    }

    async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let prefix = self.dir_node(ino)?;
        let listing = self
            .with_old_entries(&prefix, self.fetch_listing(&prefix).await?)
            .await?;
        let mut t = self.inodes.lock();
        let mut out = Vec::with_capacity(listing.len() + 2);
        let me = t.get(ino).ok_or(FsError::NotFound)?;
        let parent = me.parent;
        out.push(DirEntry {
            name: ".".into(),
            attr: self.attr_of(ino, me),
        });
        if let Some(p) = t.get(parent) {
            out.push(DirEntry {
                name: "..".into(),
                attr: self.attr_of(parent, p),
            });
        }
        let local: HashMap<String, u64> = t.local_children(ino).into_iter().collect();
        // Names the table knows but the bucket no longer has are gone (unless local).
        for (name, _) in t.children(ino) {
            if !listing.contains_key(&name) && !local.contains_key(&name) {
                t.detach(ino, &name);
            }
        }
        for (name, child) in listing.iter() {
            if let Some(&li) = local.get(name) {
                if let Some(n) = t.get(li) {
                    out.push(DirEntry {
                        name: name.clone(),
                        attr: self.attr_of(li, n),
                    });
                }
                continue;
            }
            let ci = match child {
                Child::Dir => t.upsert(ino, name, Kind::Dir, keys::dir_prefix(&prefix, name), None),
                Child::File(m) => t.upsert(
                    ino,
                    name,
                    Kind::of_object(m),
                    keys::file_key(&prefix, name),
                    Some(m.clone()),
                ),
            };
            if let Some(n) = t.get(ci) {
                out.push(DirEntry {
                    name: name.clone(),
                    attr: self.attr_of(ci, n),
                });
            }
        }
        for (name, li) in local {
            if !listing.contains_key(&name) {
                if let Some(n) = t.get(li) {
                    out.push(DirEntry {
                        name,
                        attr: self.attr_of(li, n),
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let name = keys::check_name(name).map_err(name_error)?;
        let dir = self.dir_node(parent)?;
        if !keys::dir_fits(&keys::dir_prefix(&dir, name)) {
            return Err(FsError::NameTooLong);
        }
        if self.local_child(parent, name).is_some()
            || self.resolve(&dir, name).await? != Lookup::Missing
        {
            return Err(FsError::Exists);
        }
        let mut t = self.inodes.lock();
        let ino = t.upsert(parent, name, Kind::Dir, keys::dir_prefix(&dir, name), None);
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        n.unlinked = false;
        n.dir_posix = PosixMeta {
            mode: Some(mode & 0o7777),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(SystemTime::now()),
            ..PosixMeta::default()
        };
        t.pin(ino);
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        let a = self.attr_of(ino, n);
        dir_changed_now(&mut t, parent);
        self.cache.put(&keys::file_key(&dir, name), Lookup::Dir);
        self.cache.dir_changed(&dir);
        Ok(a)
    }

    /// Child `name` of `parent`: its inode and node, looked up if needed.
    async fn child_node(&self, parent: u64, name: &str) -> FsResult<(u64, Node)> {
        let a = self.lookup(parent, name.as_bytes()).await?;
        let t = self.inodes.lock();
        let n = t.get(a.ino).ok_or(FsError::NotFound)?;
        Ok((a.ino, n.clone()))
    }

    /// Whether anything (in the bucket or only in this mount) is below directory `ino`.
    async fn dir_is_empty(&self, ino: u64, prefix: &str) -> FsResult<(bool, bool)> {
        if !self.inodes.lock().local_children(ino).is_empty() || self.old_has_children(prefix) {
            return Ok((false, false));
        }
        let page = self.store.list(prefix, None, None, Some(2)).await?;
        let marker = page.objects.iter().any(|o| o.key == prefix);
        let others = page.objects.iter().any(|o| o.key != prefix) || !page.prefixes.is_empty();
        Ok((!others, marker))
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = keys::check_name(name).map_err(name_error)?;
        let dir = self.dir_node(parent)?;
        let (ino, node) = self.child_node(parent, name).await?;
        if node.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let (empty, _marker) = self.dir_is_empty(ino, &node.key).await?;
        if !empty {
            return Err(FsError::NotEmpty);
        }
        // A marker written by another tool would bring the directory back; some servers
        // (SeaweedFS) also keep an empty folder listed until its `dir/` key is deleted.
        // Deleting a missing key is a no-op on S3.
        let _g = self.old_lock(&node.key).await; // the copier may be writing its marker
        self.old_tombstone(&node.key)?;
        self.store.delete(&node.key).await?;
        {
            let mut t = self.inodes.lock();
            t.detach(parent, name);
            dir_changed_now(&mut t, parent);
        }
        self.cache.put(&keys::file_key(&dir, name), Lookup::Missing);
        self.cache.dir_changed(&dir);
        self.cache.dir_changed(&node.key);
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let name = keys::check_name(name).map_err(name_error)?;
        let dir = self.dir_node(parent)?;
        let (_, node) = self.child_node(parent, name).await?;
        if node.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        // Tombstoned first: a crash after it leaves the bucket's copy, never a resurrection.
        let _g = self.old_lock(&node.key).await;
        self.old_tombstone(&node.key)?;
        if node.meta.as_ref().is_some_and(|m| m.etag.is_some()) || node.writers == 0 {
            self.store.delete(&node.key).await?;
        }
        self.forget_file(parent, &dir, name);
        Ok(())
    }

    /// `dir/name` no longer exists; its directory stays visible even if now empty.
    fn forget_file(&self, parent: u64, dir: &str, name: &str) {
        let mut t = self.inodes.lock();
        t.detach(parent, name);
        t.pin(parent);
        dir_changed_now(&mut t, parent);
        self.cache.put(&keys::file_key(dir, name), Lookup::Missing);
        self.cache.dir_changed(dir);
    }

    // ---- rename -----------------------------------------------------------------------

    /// Server-side copy of one object, multipart above 5 GiB.
    async fn copy_object(&self, src: &str, dst: &str, size: u64, opts: PutOptions) -> FsResult<()> {
        if size <= MAX_COPY {
            return Ok(self.store.copy(src, dst, Some(&opts)).await?);
        }
        let id = self.store.create_multipart(dst, &opts).await?;
        let mut parts = Vec::new();
        let mut off = 0;
        let mut number = 1;
        let r: Result<(), StoreError> = async {
            while off < size {
                let len =
                    part_size(self.cfg.part_size.max(512 * 1024 * 1024), number).min(size - off);
                let etag = self
                    .store
                    .upload_part_copy(dst, &id, number, src, off..off + len, None)
                    .await?;
                parts.push(crate::store::CompletedPart { number, etag });
                off += len;
                number += 1;
            }
            self.store
                .complete_multipart(dst, &id, parts)
                .await
                .map(|_| ())
        }
        .await;
        if let Err(e) = r {
            let _ = self.store.abort_multipart(dst, &id).await;
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Unsupported("RENAME_EXCHANGE"));
        }
        let name = keys::check_name(name).map_err(name_error)?;
        let new_name = keys::check_name(new_name).map_err(name_error)?;
        let src_dir = self.dir_node(parent)?;
        let dst_dir = self.dir_node(new_parent)?;
        let (ino, node) = self.child_node(parent, name).await?;
        let target = match self.child_node(new_parent, new_name).await {
            Ok(t) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some((tino, _)) = &target {
            if *tino == ino {
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
        }
        match node.kind {
            Kind::File | Kind::Symlink | Kind::Special(_) => {
                if let Some((_, t)) = &target {
                    if t.kind == Kind::Dir {
                        return Err(FsError::IsDir);
                    }
                }
                if node.writers > 0 {
                    return Err(FsError::Busy("rename of a file open for writing"));
                }
                let new_key = new_key(&dst_dir, new_name)?;
                let _g = self.old_lock2(&node.key, &new_key).await;
                self.old_materialize(ino, true).await?;
                self.old_tombstone(&node.key)?;
                let info = self.store.head(&node.key).await.map_err(not_found_or)?;
                let content_type =
                    meta::content_type_after_rename(name, new_name, info.content_type.as_deref());
                // A rename changes the file's ctime (as s3fs records it); the other tools'
                // headers are kept as they were written.
                let mut metadata = info.metadata.clone();
                metadata.insert("ctime".into(), meta::secs_header(SystemTime::now()));
                let opts = PutOptions {
                    content_type,
                    metadata,
                };
                self.copy_object(&node.key, &new_key, info.size, opts)
                    .await?;
                self.store.delete(&node.key).await?;
                let new_info = self.store.head(&new_key).await.ok();
                {
                    let mut t = self.inodes.lock();
                    t.move_node(ino, new_parent, new_name, new_key.clone());
                    if let Some(n) = t.get_mut(ino) {
                        if let Some(i) = &new_info {
                            n.meta = Some(FileMeta::from_info(i, true));
                        }
                    }
                    t.pin(parent);
                    dir_changed_now(&mut t, parent);
                    dir_changed_now(&mut t, new_parent);
                }
                self.cache
                    .put(&keys::file_key(&src_dir, name), Lookup::Missing);
                match new_info {
                    Some(i) => self
                        .cache
                        .put(&new_key, Lookup::File(FileMeta::from_info(&i, true))),
                    None => self.cache.forget(&new_key),
                }
                self.cache.dir_changed(&src_dir);
                self.cache.dir_changed(&dst_dir);
                Ok(())
            }
            Kind::Dir => {
                let new_prefix = keys::dir_prefix(&dst_dir, new_name);
                if !keys::dir_fits(&new_prefix) {
                    return Err(FsError::NameTooLong);
                }
                if new_prefix.starts_with(&node.key) {
                    return Err(FsError::Invalid); // into itself
                }
                if let Some((tino, t)) = &target {
                    if t.kind != Kind::Dir {
                        return Err(FsError::NotDir);
                    }
                    if !self.dir_is_empty(*tino, &t.key).await?.0 {
                        return Err(FsError::NotEmpty);
                    }
                }
                if self.has_writers_below(&node.key) {
                    return Err(FsError::Busy(
                        "rename of a directory with files open for writing",
                    ));
                }
                self.old_materialize_tree(&node.key).await?;
                self.old_tombstone(&node.key)?;
                self.move_prefix(&node.key, &new_prefix).await?;
                {
                    let mut t = self.inodes.lock();
                    t.move_node(ino, new_parent, new_name, new_prefix.clone());
                    t.pin(ino); // it stays, even if empty
                    if let Some(n) = t.get_mut(ino) {
                        n.dir_posix.ctime = Some(SystemTime::now());
                    }
                    t.pin(parent);
                    dir_changed_now(&mut t, parent);
                    dir_changed_now(&mut t, new_parent);
                }
                self.cache.clear();
                Ok(())
            }
        }
    }

    fn has_writers_below(&self, prefix: &str) -> bool {
        self.inodes.lock().any_writer_below(prefix)
    }

    /// Copies every key under `from` to the same place under `to`, then deletes the
    /// originals. Not atomic: a failure half-way leaves both copies, never neither.
    async fn move_prefix(&self, from: &str, to: &str) -> FsResult<()> {
        let mut keys_sizes = Vec::new();
        let mut token = None;
        loop {
            let page = self.store.list(from, None, token, None).await?;
            keys_sizes.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        // Refused before anything is copied: some key would pass S3's limit at its new place.
        if keys_sizes
            .iter()
            .any(|(k, _)| !keys::key_fits(&format!("{to}{}", &k[from.len()..])))
        {
            return Err(FsError::NameTooLong);
        }
        stream::iter(keys_sizes.iter().cloned().map(Ok::<_, FsError>))
            .try_for_each_concurrent(RENAME_PARALLELISM, |(k, size)| async move {
                let dst = format!("{to}{}", &k[from.len()..]);
                if size <= MAX_COPY {
                    self.store.copy(&k, &dst, None).await?;
                } else {
                    let info = self.store.head(&k).await?;
                    let opts = PutOptions {
                        content_type: info
                            .content_type
                            .unwrap_or_else(|| meta::DEFAULT_TYPE.to_string()),
                        metadata: info.metadata,
                    };
                    self.copy_object(&k, &dst, size, opts).await?;
                }
                Ok(())
            })
            .await?;
        stream::iter(keys_sizes.into_iter().map(Ok::<_, FsError>))
            .try_for_each_concurrent(RENAME_PARALLELISM, |(k, _)| async move {
                self.store.delete(&k).await?;
                Ok(())
            })
            .await?;
        // The old directory's own key, as rmdir does (markers, SeaweedFS's empty folders).
        self.store.delete(from).await?;
        Ok(())
    }

    // ---- setattr ----------------------------------------------------------------------

    pub async fn setattr(&self, ino: u64, fh: Option<u64>, s: SetAttr) -> FsResult<Attr> {
        let kind = {
            let t = self.inodes.lock();
            t.get(ino).ok_or(FsError::NotFound)?.kind
        };
        if kind == Kind::Dir {
            if s.size.is_some() {
                return Err(FsError::IsDir);
            }
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let p = &mut n.dir_posix;
            p.mode = s.mode.map(|m| m & 0o7777).or(p.mode);
            p.uid = s.uid.or(p.uid);
            p.gid = s.gid.or(p.gid);
            p.mtime = s.mtime.or(p.mtime);
            p.atime = s.atime.or(p.atime);
            p.ctime = Some(SystemTime::now());
            return Ok(self.attr_of(ino, n));
        }
        if fh.is_none() {
            // A change of a file only the old tree holds starts from its copy.
            self.old_materialize(ino, false).await?;
        }
        if let Some(size) = s.size {
            self.truncate(ino, fh, size).await?;
        }
        if s.mode.is_some()
            || s.uid.is_some()
            || s.gid.is_some()
            || s.mtime.is_some()
            || s.atime.is_some()
        {
            self.set_posix(ino, &s).await?;
        }
        self.node_attr(ino)
    }

    /// chmod/chown/utimes of a file: stored as s3fs-style metadata by a self-copy that
    /// keeps the content and Content-Type; a file not yet uploaded just carries it.
    async fn set_posix(&self, ino: u64, s: &SetAttr) -> FsResult<()> {
        let (key, uploaded) = {
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let kind_bits = n.kind.type_bits();
            let m = n.meta.get_or_insert_with(|| FileMeta {
                size: 0,
                etag: None,
                modified: SystemTime::now(),
                posix: PosixMeta::default(),
                posix_known: true,
            });
            let p = &mut m.posix;
            let cur_mode = p.mode.unwrap_or(self.cfg.file_mode);
            p.mode = Some(kind_bits | (s.mode.unwrap_or(cur_mode) & 0o7777));
            p.uid = s.uid.or(p.uid);
            p.gid = s.gid.or(p.gid);
            p.mtime = s.mtime.map(meta::whole_secs).or(p.mtime);
            p.atime = s.atime.map(meta::whole_secs).or(p.atime);
            p.ctime = Some(meta::now_secs());
            (n.key.clone(), m.etag.is_some())
        };
        if !uploaded {
            return Ok(());
        }
        let info = self.store.head(&key).await?;
        let mut metadata = info.metadata.clone();
        let posix = self
            .inodes
            .lock()
            .get(ino)
            .and_then(|n| n.meta.as_ref().map(|m| m.posix))
            .unwrap_or_default();
        posix.write_to(&mut metadata);
        let opts = PutOptions {
            content_type: info
                .content_type
                .clone()
                .unwrap_or_else(|| meta::DEFAULT_TYPE.to_string()),
            metadata,
        };
        self.copy_object(&key, &key, info.size, opts).await?;
        let fresh = self.store.head(&key).await?;
        let m = FileMeta::from_info(&fresh, true);
        if let Some(n) = self.inodes.lock().get_mut(ino) {
            if n.writers == 0 {
                n.meta = Some(m.clone());
            } else if let Some(nm) = &mut n.meta {
                nm.etag = m.etag.clone();
            }
        }
        self.object_changed(&key, Lookup::File(m));
        Ok(())
    }

    /// The object at `key` changed through this mount: its entry and its directory's
    /// listing must not serve the old state.
    fn object_changed(&self, key: &str, l: Lookup) {
        self.cache.put(key, l);
        let dir = key.rfind('/').map(|i| &key[..=i]).unwrap_or("");
        self.cache.dir_changed(dir);
    }

    // ---- symlinks --------------------------------------------------------------------

    /// s3fs's format: an object whose body is the target and whose mode has S_IFLNK.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        if target.is_empty() || target.len() > 4096 {
            return Err(FsError::Invalid);
        }
        let mode = libc::S_IFLNK | 0o777;
        let body = Bytes::copy_from_slice(target);
        self.create_object(parent, name, Kind::Symlink, body, mode, 0, uid, gid)
            .await
    }

    /// mknod: s3fs's format for FIFOs, sockets and devices, an empty object whose
    /// `x-amz-meta-mode` carries the type and `x-amz-meta-rdev` the device number. Opening
    /// one never reaches bucketfs: the kernel serves FIFOs and sockets itself and refuses
    /// devices (`nodev`). A regular file is an empty object, as `touch` makes.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let bits = mode & libc::S_IFMT;
        let kind = match bits {
            0 | libc::S_IFREG => Kind::File,
            b => Kind::Special(inode::Special::from_type_bits(b).ok_or(FsError::Invalid)?),
        };
        let rdev = match kind {
            Kind::Special(inode::Special::Char | inode::Special::Block) => rdev,
            _ => 0,
        };
        let mode = kind.type_bits() | (mode & 0o7777);
        self.create_object(parent, name, kind, Bytes::new(), mode, rdev, uid, gid)
            .await
    }

    /// Writes a new object `parent/name` of `kind` in one PutObject, with its mode, owner,
    /// times (and device number) as s3fs-compatible metadata.
    #[allow(clippy::too_many_arguments)]
    async fn create_object(
        &self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        body: Bytes,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let name = keys::check_name(name).map_err(name_error)?;
        let dir = self.dir_node(parent)?;
        let key = new_key(&dir, name)?;
        if self.local_child(parent, name).is_some()
            || self.resolve(&dir, name).await? != Lookup::Missing
        {
            return Err(FsError::Exists);
        }
        let now = meta::now_secs();
        let posix = PosixMeta {
            mode: Some(mode),
            uid: Some(uid),
            gid: Some(gid),
            mtime: Some(now),
            ctime: Some(now),
            rdev: (rdev != 0).then_some(rdev),
            ..PosixMeta::default()
        };
        let mut metadata = HashMap::new();
        posix.write_to(&mut metadata);
        let opts = PutOptions {
            content_type: if kind == Kind::File {
                meta::content_type_for(name)
            } else {
                meta::DEFAULT_TYPE.to_string()
            },
            metadata,
        };
        let size = body.len() as u64;
        let etag = self.store.put(&key, body, &opts).await?;
        let m = FileMeta {
            size,
            etag,
            modified: now,
            posix,
            posix_known: true,
        };
        let mut t = self.inodes.lock();
        let ino = t.upsert(parent, name, kind, key.clone(), Some(m.clone()));
        if let Some(n) = t.get_mut(ino) {
            n.meta = Some(m.clone());
            n.unlinked = false;
        }
        dir_changed_now(&mut t, parent);
        self.object_changed(&key, Lookup::File(m));
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(ino, n))
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let (key, etag, size) = {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if n.kind != Kind::Symlink {
                return Err(FsError::Invalid);
            }
            let m = n.meta.as_ref().ok_or(FsError::NotFound)?;
            (n.key.clone(), m.etag.clone(), m.size)
        };
        Ok(self.store.get_range(&key, 0..size, etag.as_deref()).await?)
    }

    // ---- statfs -----------------------------------------------------------------------

    /// A bucket has no size limit; report a large, constant capacity.
    pub fn statfs(&self) -> Statfs {
        let bsize = 4096u32;
        let blocks = (1u64 << 50) / bsize as u64;
        Statfs {
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize,
            namelen: keys::NAME_MAX as u32,
        }
    }

    // ---- handles ----------------------------------------------------------------------

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    pub(super) fn new_reader(&self, ino: u64) -> FsResult<Reader> {
        let t = self.inodes.lock();
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        let m = n.meta.as_ref();
        Ok(Reader::new(
            self.store.clone(),
            n.key.clone(),
            m.and_then(|m| m.etag.clone()),
            m.map(|m| m.size).unwrap_or(0),
            self.budget.clone(),
            self.cfg.read.clone(),
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        if let Handle::Old(file) = &*h {
            return Self::old_read(file.clone(), offset, size).await;
        }
        let Handle::File(f) = &*h else {
            return Err(FsError::BadHandle);
        };
        let mut f = f.lock().await;
        let ino = f.ino;
        if f.writer.is_some() {
            return Self::read_version(&f, offset, size).await;
        }
        // Pinned at open: a handle reads the version it opened, or fails (ESTALE).
        if f.reader.is_none() {
            f.reader = Some(self.new_reader(ino)?);
        }
        let r = f.reader.as_mut().ok_or(FsError::BadHandle)?;
        match r.read(offset, size).await {
            Ok(b) => {
                f.served = true;
                Ok(b)
            }
            Err(StoreError::PreconditionFailed) if !f.served => {
                // Opened from a cached version that another client has since replaced, and
                // nothing read yet: pin the current version instead.
                self.refresh_file(ino).await?;
                let mut r = self.new_reader(ino)?;
                let b = r.read(offset, size).await?;
                f.reader = Some(r);
                f.served = true;
                Ok(b)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-reads a file's attributes from the bucket (HEAD).
    async fn refresh_file(&self, ino: u64) -> FsResult<()> {
        let key = {
            let t = self.inodes.lock();
            t.get(ino).ok_or(FsError::NotFound)?.key.clone()
        };
        let info = self.store.head(&key).await?;
        let m = FileMeta::from_info(&info, true);
        if let Some(n) = self.inodes.lock().get_mut(ino) {
            n.meta = Some(m.clone());
        }
        self.object_changed(&key, Lookup::File(m));
        Ok(())
    }

    /// Flushes every handle with unsaved data (unmount, SIGTERM). Returns what failed.
    pub async fn flush_all(&self) -> Vec<Unsaved> {
        let hs: Vec<Arc<Handle>> = self.handles.lock().values().cloned().collect();
        let mut failed = Vec::new();
        for h in hs {
            if let Handle::File(f) = &*h {
                let mut f = f.lock().await;
                if f.writer.as_ref().is_some_and(Version::is_dirty) {
                    if let Err(e) = self.flush_handle(&mut f).await {
                        let path = self.inodes.lock().path(f.ino);
                        failed.push(Unsaved { path, error: e });
                    }
                }
            }
        }
        failed
    }
}

/// Answer to statfs.
#[derive(Clone, Copy, Debug)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;
