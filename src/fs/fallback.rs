//! The hook a live migration plugs into the filesystem (`bucketfs mount --migrate-from`): a
//! read-only old tree (the file backend's directory) that answers for the paths the bucket
//! does not have. The bucket always wins; the old tree only fills its gaps.
//!
//! The filesystem calls it at its miss points: a name the bucket lacks (lookup, getattr),
//! a directory listing (merged), an open of a file only the old tree has (read from the local
//! file; a write copies it first), and every delete (a tombstone, so the path never falls
//! through again). Every change of an object that the background copier might also write
//! (commit, unlink, rename) holds the path's lock, so the copier never lands an old version
//! over a newer write, and never brings back a deleted path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::inode::Kind;
use super::{Fs, Handle};
use crate::cache::{Listing, Lookup};
use crate::error::{FsError, FsResult};
use crate::keys::{self, Child};
use crate::meta::{FileMeta, PosixMeta};
use crate::store::StoreError;

/// A regular file of the old tree, as `lstat` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldFile {
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits only.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What the old tree holds at a path (regular files, directories and symlinks are served).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldEntry {
    File(OldFile),
    Dir,
    /// Copied at first sight (one small PUT in s3fs's format), then served from the bucket:
    /// the bucket's format is the only one `readlink` and the listing code know.
    Symlink,
}

/// Held while the object at one key may change (see the module comment).
pub type PathGuard = tokio::sync::OwnedMutexGuard<()>;

/// The old tree. Keys are full object keys (the mount prefix included); a directory is named
/// by its key without the trailing `/`.
#[async_trait]
pub trait Fallback: Send + Sync {
    /// What the old tree has at `key`: None if nothing, tombstoned, or not a regular file,
    /// directory or symlink.
    fn stat(&self, key: &str) -> Option<OldEntry>;
    /// The entries of directory `prefix` (a directory key ending in `/`, or the mount prefix),
    /// tombstoned ones left out.
    fn list(&self, prefix: &str) -> Vec<(String, OldEntry)>;
    /// The old file at `key`, opened for reading.
    fn open(&self, key: &str) -> std::io::Result<std::fs::File>;
    /// Serialises changes of `key`'s object between the mount and the copier.
    async fn lock(&self, key: &str) -> PathGuard;
    /// Copies the old file at `key` into the bucket unless the bucket already has the key or the
    /// path is tombstoned. The caller holds `lock(key)`.
    async fn copy_locked(&self, key: &str) -> FsResult<()>;
    /// Records durably (fsync'ed) that `key` was deleted from the mount's view, so the old tree
    /// never answers for it (or, for a directory, anything below it) again. A no-op when the old
    /// tree has nothing there.
    fn tombstone(&self, key: &str) -> std::io::Result<()>;
}

/// A local I/O error of the old tree, with its errno.
fn local_error(what: &str, e: std::io::Error) -> FsError {
    FsError::Staging(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("old directory: {what}: {e}"),
    )
}

/// What the mount shows for an old file: the local attributes, mtime in whole seconds (what
/// the copy stores in `x-amz-meta-mtime`), so nothing changes once it is copied. No ETag: the
/// bucket does not hold it (yet).
pub(super) fn old_meta(f: &OldFile) -> FileMeta {
    let secs = f
        .mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mtime = UNIX_EPOCH + Duration::from_secs(secs);
    FileMeta {
        size: f.size,
        etag: None,
        modified: mtime,
        posix: PosixMeta {
            mode: Some(libc::S_IFREG | (f.perm & 0o7777)),
            uid: Some(f.uid),
            gid: Some(f.gid),
            mtime: Some(mtime),
            ..PosixMeta::default()
        },
        posix_known: true,
    }
}

impl Fs {
    /// Serves a live migration from `fallback` (before the filesystem is shared).
    pub fn with_fallback(mut self, fallback: Arc<dyn Fallback>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The copier put `key` into the bucket: the caches must not keep saying it is missing.
    pub fn migrated(&self, key: &str) {
        self.cache.forget(key);
        let dir = key.rfind('/').map(|i| &key[..=i]).unwrap_or("");
        self.cache.dir_changed(dir);
    }

    /// The bucket has nothing at `dir_prefix` + `name`: what the old tree has there.
    pub(super) async fn old_lookup(&self, dir_prefix: &str, name: &str) -> FsResult<Lookup> {
        let Some(fb) = &self.fallback else {
            return Ok(Lookup::Missing);
        };
        let key = keys::file_key(dir_prefix, name);
        Ok(match fb.stat(&key) {
            Some(OldEntry::Dir) => Lookup::Dir,
            Some(OldEntry::File(f)) => Lookup::File(old_meta(&f)),
            Some(OldEntry::Symlink) => match self.old_copy_now(&key).await? {
                Some(m) => Lookup::File(m),
                None => Lookup::Missing,
            },
            None => Lookup::Missing,
        })
    }

    /// Copies `key` from the old tree now (a symlink) and returns what the bucket then holds.
    async fn old_copy_now(&self, key: &str) -> FsResult<Option<FileMeta>> {
        let Some(fb) = self.fallback.clone() else {
            return Ok(None);
        };
        {
            let _g = fb.lock(key).await;
            fb.copy_locked(key).await?;
        }
        self.migrated(key);
        match self.store.head(key).await {
            Ok(info) => {
                let m = FileMeta::from_info(&info, true);
                self.cache.put(key, Lookup::File(m.clone()));
                Ok(Some(m))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The bucket's listing of `prefix` with the old tree's entries it lacks added (not
    /// cached: the listing cache holds only what the bucket says).
    pub(super) async fn with_old_entries(
        &self,
        prefix: &str,
        listing: Arc<Listing>,
    ) -> FsResult<Arc<Listing>> {
        let Some(fb) = &self.fallback else {
            return Ok(listing);
        };
        let old = fb.list(prefix);
        if old.iter().all(|(n, _)| listing.contains_key(n)) {
            return Ok(listing);
        }
        let mut merged = (*listing).clone();
        for (name, e) in old {
            if merged.contains_key(&name) {
                continue;
            }
            let child = match e {
                OldEntry::Dir => Child::Dir,
                OldEntry::File(f) => Child::File(old_meta(&f)),
                OldEntry::Symlink => match self.old_copy_now(&keys::file_key(prefix, &name)).await?
                {
                    Some(m) => Child::File(m),
                    None => continue,
                },
            };
            merged.insert(name, child);
        }
        Ok(Arc::new(merged))
    }

    /// Whether the old tree has anything (not tombstoned) below directory `prefix`.
    pub(super) fn old_has_children(&self, prefix: &str) -> bool {
        self.fallback
            .as_ref()
            .is_some_and(|fb| !fb.list(prefix).is_empty())
    }

    /// Locks `key` against the copier (None without a migration).
    pub(super) async fn old_lock(&self, key: &str) -> Option<PathGuard> {
        match &self.fallback {
            Some(fb) => Some(fb.lock(key).await),
            None => None,
        }
    }

    /// Locks two keys in a fixed order (rename), so two renames never deadlock.
    pub(super) async fn old_lock2(&self, a: &str, b: &str) -> Vec<PathGuard> {
        let Some(fb) = &self.fallback else {
            return Vec::new();
        };
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        let mut g = vec![fb.lock(first).await];
        if second != first {
            g.push(fb.lock(second).await);
        }
        g
    }

    /// `key` (a file key or a directory key, with or without its `/`) leaves the view.
    pub(super) fn old_tombstone(&self, key: &str) -> FsResult<()> {
        match &self.fallback {
            Some(fb) => fb
                .tombstone(key.trim_end_matches('/'))
                .map_err(|e| local_error("recording a deletion", e)),
            None => Ok(()),
        }
    }

    /// The key of `ino` if it is a file only the old tree holds (shown from the local stat,
    /// never uploaded, no writer).
    fn old_only_key(&self, ino: u64) -> Option<String> {
        self.fallback.as_ref()?;
        let t = self.inodes.lock();
        let n = t.get(ino)?;
        let old = n.kind == Kind::File
            && n.writers == 0
            && n.meta.as_ref().is_some_and(|m| m.etag.is_none());
        old.then(|| n.key.clone())
    }

    /// Takes the bucket's version of `key` into the node; false if the bucket has none.
    async fn adopt_bucket_version(&self, ino: u64, key: &str) -> FsResult<bool> {
        match self.store.head(key).await {
            Ok(info) => {
                let m = FileMeta::from_info(&info, true);
                if let Some(n) = self.inodes.lock().get_mut(ino) {
                    if n.writers == 0 {
                        n.meta = Some(m.clone());
                    }
                }
                self.object_changed(key, Lookup::File(m));
                Ok(true)
            }
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies `ino` into the bucket if only the old tree has it (before a change: write,
    /// truncate, chmod, rename). The caller may already hold the key's lock (`locked`).
    pub(super) async fn old_materialize(&self, ino: u64, locked: bool) -> FsResult<()> {
        let Some(key) = self.old_only_key(ino) else {
            return Ok(());
        };
        let Some(fb) = self.fallback.clone() else {
            return Ok(());
        };
        let _g = if locked {
            None
        } else {
            Some(fb.lock(&key).await)
        };
        fb.copy_locked(&key).await?;
        if !self.adopt_bucket_version(ino, &key).await? {
            return Err(FsError::NotFound);
        }
        Ok(())
    }

    /// Copies every file the old tree has below directory `prefix` into the bucket (before
    /// the directory is renamed), and its empty directories as `dir/` markers, so they move
    /// with it. Each copy holds its key's lock: none of the copier's is still in flight after.
    pub(super) async fn old_materialize_tree(&self, prefix: &str) -> FsResult<()> {
        let Some(fb) = self.fallback.clone() else {
            return Ok(());
        };
        let mut dirs = vec![prefix.to_string()];
        while let Some(d) = dirs.pop() {
            let entries = fb.list(&d);
            if entries.is_empty() && fb.stat(d.trim_end_matches('/')) == Some(OldEntry::Dir) {
                let _g = fb.lock(&d).await;
                fb.copy_locked(&d).await?;
                self.migrated(d.trim_end_matches('/'));
            }
            for (name, e) in entries {
                match e {
                    OldEntry::Dir => dirs.push(keys::dir_prefix(&d, &name)),
                    OldEntry::File(_) | OldEntry::Symlink => {
                        let key = keys::file_key(&d, &name);
                        let _g = fb.lock(&key).await;
                        fb.copy_locked(&key).await?;
                        self.migrated(&key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Opening a file only the old tree holds: a reader reads the local file (nothing is
    /// copied on the read path; the copier uploads it in the background); a writer that keeps
    /// the content gets it copied first, then takes the normal write path. Returns the handle
    /// when it opened one.
    pub(super) async fn old_open(
        &self,
        ino: u64,
        write: bool,
        truncate: bool,
    ) -> FsResult<Option<u64>> {
        let Some(key) = self.old_only_key(ino) else {
            return Ok(None);
        };
        let Some(fb) = self.fallback.clone() else {
            return Ok(None);
        };
        // The copier may have uploaded it since the node was made.
        if self.adopt_bucket_version(ino, &key).await? {
            return Ok(None);
        }
        if write {
            if !truncate {
                self.old_materialize(ino, false).await?;
            }
            // O_TRUNC: the old content is not needed; the commit (under the key's lock)
            // replaces whatever the copier may upload meanwhile.
            return Ok(None);
        }
        let file = fb.open(&key).map_err(|e| local_error("open", e))?;
        Ok(Some(self.add_handle(Handle::Old(Arc::new(file)))))
    }

    /// A read through a handle on an old file: the local bytes.
    pub(super) async fn old_read(
        file: Arc<std::fs::File>,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(local_error("read", e)),
                }
            }
            buf.truncate(got);
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| FsError::Staging(libc::EIO, format!("old directory: read: {e}")))?
    }
}
