//! Open files that write: each holds a [`Version`] being built (staged locally, parts
//! uploaded as the writer moves on) that becomes the object at flush, fsync or close.

use std::time::SystemTime;

use super::inode::Kind;
use super::{FileHandle, Fs, Handle, OpenFlags};
use crate::cache::Lookup;
use crate::error::{FsError, FsResult};
use crate::keys;
use crate::meta::{FileMeta, PosixMeta};
use crate::upload::{Base, Version, VersionError};

impl From<VersionError> for FsError {
    fn from(e: VersionError) -> Self {
        match e {
            VersionError::Store(s) => FsError::Store(s),
            VersionError::Stage(s) => FsError::Staging(s.errno(), s.to_string()),
            VersionError::Unsupported(m) => FsError::Unsupported(m),
        }
    }
}

impl Fs {
    fn new_version(&self, ino: u64, base: Option<Base>) -> FsResult<Version> {
        let (key, opts) = {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.key.clone(), self.put_options(n, None))
        };
        let stage = self
            .staging
            .open()
            .map_err(|e| FsError::Staging(e.errno(), e.to_string()))?;
        Ok(Version::new(
            self.store.clone(),
            key,
            opts,
            base,
            stage,
            self.budget.clone(),
            self.upload_config(),
        ))
    }

    fn base_of(&self, ino: u64) -> Option<Base> {
        let t = self.inodes.lock();
        let m = t.get(ino)?.meta.as_ref()?;
        m.etag.as_ref()?;
        Some(Base {
            size: m.size,
            etag: m.etag.clone(),
        })
    }

    fn set_pending(&self, ino: u64, size: Option<u64>) {
        if let Some(n) = self.inodes.lock().get_mut(ino) {
            n.pending_size = size;
        }
    }

    /// The content changed (write, truncate): mtime and ctime are now, and the next upload
    /// stores them.
    fn data_changed(&self, ino: u64, size: Option<u64>) {
        if let Some(n) = self.inodes.lock().get_mut(ino) {
            if size.is_some() {
                n.pending_size = size;
            }
            if let Some(m) = n.meta.as_mut() {
                let now = crate::meta::now_secs();
                m.posix.mtime = Some(now);
                m.posix.ctime = Some(now);
            }
        }
    }

    fn file_handle(&self, ino: u64, writer: Option<Version>) -> u64 {
        // A reader is pinned to the version current at open (no request is made here).
        let reader = if writer.is_none() {
            self.new_reader(ino).ok()
        } else {
            None
        };
        self.add_handle(Handle::File(Box::new(tokio::sync::Mutex::new(
            FileHandle {
                ino,
                served: false,
                close_failed: false,
                opener: None,
                reader,
                writer,
            },
        ))))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(super::Attr, u64)> {
        let name = keys::check_name(name).map_err(super::name_error)?;
        let dir = self.dir_node(parent)?;
        let exclusive = OpenFlags::from_libc(flags).exclusive;
        // The kernel calls create when its dentry is negative; the bucket may know better.
        match self.lookup(parent, name.as_bytes()).await {
            Ok(_) if exclusive => return Err(FsError::Exists),
            Ok(a) if a.kind == Kind::Dir => return Err(FsError::IsDir),
            Ok(a) => {
                let fh = self.open(a.ino, flags).await?;
                return Ok((self.node_attr(a.ino)?, fh));
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = super::new_key(&dir, name)?;
        let now = crate::meta::now_secs();
        let meta = FileMeta {
            size: 0,
            etag: None,
            modified: now,
            // Only what differs from the mount's defaults is stored, so a listing (which
            // carries no metadata) shows the same owner and mode as a HEAD.
            posix: PosixMeta {
                mode: (mode & 0o7777 != self.cfg.file_mode)
                    .then_some(libc::S_IFREG | (mode & 0o7777)),
                uid: (uid != self.cfg.uid).then_some(uid),
                gid: (gid != self.cfg.gid).then_some(gid),
                mtime: Some(now),
                ctime: Some(now),
                ..PosixMeta::default()
            },
            posix_known: true,
        };
        let ino = {
            let mut t = self.inodes.lock();
            let ino = t.upsert(parent, name, Kind::File, key.clone(), None);
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            n.meta = Some(meta);
            n.writers += 1;
            n.unlinked = false;
            n.pending_size = Some(0);
            super::dir_changed_now(&mut t, parent);
            ino
        };
        self.cache.forget(&key);
        self.cache.dir_changed(&dir);
        let mut v = match self.new_version(ino, None) {
            Ok(v) => v,
            Err(e) => {
                self.drop_writer(ino);
                return Err(e);
            }
        };
        v.mark_dirty(); // even with no write, close leaves an empty object
        let fh = self.file_handle(ino, Some(v));
        Ok((self.node_attr(ino)?, fh))
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let f = OpenFlags::from_libc(flags);
        {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            if n.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
        }
        if let Some(fh) = self.old_open(ino, f.write, f.truncate).await? {
            return Ok(fh);
        }
        if !f.write {
            return Ok(self.file_handle(ino, None));
        }
        let base = self.base_of(ino);
        let created_here = base.is_none();
        let mut v = self.new_version(ino, if f.truncate { None } else { base })?;
        if f.truncate || created_here {
            v.mark_dirty();
        }
        {
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            n.writers += 1;
        }
        if f.truncate {
            self.data_changed(ino, Some(0));
        }
        Ok(self.file_handle(ino, Some(v)))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Err(FsError::BadHandle);
        };
        let mut f = f.lock().await;
        let ino = f.ino;
        let v = f.writer.as_mut().ok_or(FsError::BadHandle)?;
        v.write(offset, data).await?;
        let size = v.size();
        f.close_failed = false;
        self.data_changed(ino, Some(size));
        Ok(data.len() as u32)
    }

    /// Reads through a writable handle see its own writes.
    pub(super) async fn read_version(
        f: &FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<bytes::Bytes> {
        let v = f.writer.as_ref().ok_or(FsError::BadHandle)?;
        Ok(v.read(offset..offset + size as u64).await?)
    }

    pub(super) async fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> FsResult<()> {
        if size > crate::upload::max_object_size(self.cfg.part_size) {
            return Err(FsError::TooBig);
        }
        if let Some(fh) = fh {
            let h = self.handle(fh)?;
            if let Handle::File(f) = &*h {
                let mut f = f.lock().await;
                if let Some(v) = f.writer.as_mut() {
                    v.truncate(size)?;
                    self.data_changed(ino, Some(size));
                    return Ok(());
                }
            }
        }
        // truncate(2) with no writable handle: build the new version here.
        {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let m = n.meta.as_ref();
            if m.is_some_and(|m| m.size == size && m.etag.is_some()) && n.pending_size.is_none() {
                return Ok(());
            }
        }
        let mut v = self.new_version(ino, self.base_of(ino))?;
        v.truncate(size)?;
        v.mark_dirty();
        self.data_changed(ino, None);
        self.finish(ino, &mut v).await
    }

    /// Uploads the version a handle has built. On success the bucket holds exactly the
    /// bytes written so far, and later writes build on that version.
    async fn finish(&self, ino: u64, v: &mut Version) -> FsResult<()> {
        let (gone, now_key, opts) = {
            let t = self.inodes.lock();
            match t.get(ino) {
                Some(n) => (n.unlinked, n.key.clone(), Some(self.put_options(n, None))),
                None => (true, v.key().to_string(), None),
            }
        };
        if gone || now_key != v.key() {
            // Unlinked while open: closing must not bring the file back.
            v.abort().await;
            return Ok(());
        }
        if let Some(o) = opts {
            v.set_options(o);
        }
        // The copier must not land the old file between its check and this commit.
        let lock = self.old_lock(v.key()).await;
        let committed = v.commit().await;
        drop(lock);
        let base = match committed {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(key = %v.key(), error = %e, "upload failed; the bucket keeps the previous version");
                // stat shows what the bucket holds, not the version that did not make it.
                self.set_pending(ino, None);
                return Err(e.into());
            }
        };
        let m = {
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let mut posix = n.meta.as_ref().map(|m| m.posix).unwrap_or_default();
            // A multipart upload keeps the times it began with: show what a HEAD reads back.
            let stored = PosixMeta::from_metadata(&v.options().metadata);
            posix.mtime = stored.mtime.or(posix.mtime);
            posix.atime = stored.atime.or(posix.atime);
            posix.ctime = stored.ctime.or(posix.ctime);
            let m = FileMeta {
                size: base.size,
                etag: base.etag.clone(),
                modified: SystemTime::now(),
                posix,
                posix_known: true,
            };
            n.meta = Some(m.clone());
            if n.writers <= 1 {
                n.pending_size = None;
            }
            m
        };
        self.object_changed(v.key(), Lookup::File(m));
        Ok(())
    }

    pub(super) async fn flush_handle(&self, f: &mut FileHandle) -> FsResult<()> {
        let ino = f.ino;
        match f.writer.as_mut() {
            Some(v) if v.is_dirty() => self.finish(ino, v).await,
            _ => Ok(()),
        }
    }

    /// Records which process opened `fh` (its close commits; others' do not).
    pub async fn set_opener(&self, fh: u64, tgid: u32) {
        if let Ok(h) = self.handle(fh) {
            if let Handle::File(f) = &*h {
                f.lock().await.opener = Some(tgid);
            }
        }
    }

    /// close(): the upload completes here, and its error is the caller's.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        self.flush_from(fh, None).await
    }

    /// close() by process `caller`. A flush from another process (a child that inherited
    /// the descriptor and closed it) must not publish a half-written file: the opener's own
    /// close, or the last release, does that.
    pub async fn flush_from(&self, fh: u64, caller: Option<u32>) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Ok(());
        };
        let mut f = f.lock().await;
        if let (Some(c), Some(o)) = (caller, f.opener) {
            if c != o {
                return Ok(());
            }
        }
        let r = self.flush_handle(&mut f).await;
        // close() reported the failure: the version must not land later, behind its back.
        f.close_failed = r.is_err();
        r
    }

    /// fsync/fdatasync: a failure can be retried by a later fsync or close.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Ok(());
        };
        let mut f = f.lock().await;
        self.flush_handle(&mut f).await
    }

    fn drop_writer(&self, ino: u64) {
        let mut t = self.inodes.lock();
        if let Some(n) = t.get_mut(ino) {
            n.writers = n.writers.saturating_sub(1);
            if n.writers == 0 {
                n.pending_size = None;
                if n.meta.as_ref().is_some_and(|m| m.etag.is_none()) {
                    // Never uploaded (the upload failed): the file does not exist.
                    let (p, name) = (n.parent, n.name.clone());
                    t.detach(p, &name);
                }
            }
        }
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.lock().remove(&fh) else {
            return Ok(());
        };
        let Handle::File(f) = &*h else {
            return Ok(());
        };
        let mut f = f.lock().await;
        let r = if f.close_failed {
            Ok(())
        } else {
            self.flush_handle(&mut f).await
        };
        let give_up = f.close_failed && f.writer.as_ref().is_some_and(Version::is_dirty);
        if let Some(v) = f.writer.as_mut() {
            if give_up {
                v.abort().await;
            }
            if r.is_err() {
                // Last chance passed: what was staged is dropped, the bucket keeps its version.
                v.abort().await;
            }
            self.drop_writer(f.ino);
        }
        r
    }
}
