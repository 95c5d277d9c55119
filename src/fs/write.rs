//! Open files that write. Bytes stream into an [`Uploader`] in order; what the bucket
//! already holds (the "base") is streamed around the new bytes, so appends, writes that
//! start inside the file, and truncates all end as one whole new version at close/fsync.

use std::time::SystemTime;

use super::inode::Kind;
use super::{FileHandle, Fs, Handle, OpenFlags};
use crate::cache::Lookup;
use crate::error::{FsError, FsResult};
use crate::keys;
use crate::meta::{FileMeta, PosixMeta};
use crate::store::StoreError;
use crate::upload::Uploader;

/// The version in the bucket that a write handle builds on.
#[derive(Clone, Debug)]
struct Base {
    size: u64,
    etag: Option<String>,
}

pub(crate) struct WriteState {
    key: String,
    base: Option<Base>,
    up: Option<Uploader>,
    /// Next offset the stream expects.
    pos: u64,
    /// Base bytes `[pos, tail_end)` still to be streamed after the written ones.
    tail_end: u64,
    /// The bucket must get a new version at the next flush.
    dirty: bool,
}

/// Base bytes are streamed in pieces of this size.
const COPY_CHUNK: u64 = 8 * 1024 * 1024;

impl WriteState {
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty || self.up.is_some()
    }

    /// Logical size of the file as this handle sees it.
    fn size(&self) -> u64 {
        match &self.up {
            Some(_) => self.pos.max(self.tail_end),
            None => self.base.as_ref().map(|b| b.size).unwrap_or(0),
        }
    }
}

impl Fs {
    fn new_uploader(&self, ino: u64, key: &str) -> FsResult<Uploader> {
        let opts = {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            self.put_options(n, None)
        };
        Ok(Uploader::new(
            self.store.clone(),
            key.to_string(),
            opts,
            self.budget.clone(),
            &self.upload_config(),
        ))
    }

    /// Streams base bytes `range` into the upload, pinned to the base's ETag.
    async fn copy_base(&self, w: &mut WriteState, start: u64, end: u64) -> FsResult<()> {
        let etag = w.base.as_ref().and_then(|b| b.etag.clone());
        let up = w.up.as_mut().ok_or(FsError::BadHandle)?;
        let mut off = start;
        while off < end {
            let stop = (off + COPY_CHUNK).min(end);
            let data = self
                .store
                .get_range(&w.key, off..stop, etag.as_deref())
                .await?;
            if data.len() as u64 != stop - off {
                return Err(
                    StoreError::Other("short read of the file's current version".into()).into(),
                );
            }
            up.write(&data).await?;
            off = stop;
        }
        Ok(())
    }

    /// Starts the stream of a new version, with the base bytes before `offset`.
    async fn start_stream(&self, ino: u64, w: &mut WriteState, offset: u64) -> FsResult<()> {
        w.up = Some(self.new_uploader(ino, &w.key)?);
        let base = w.base.as_ref().map(|b| b.size).unwrap_or(0);
        self.copy_base(w, 0, offset.min(base)).await?;
        if offset > base {
            if let Some(up) = w.up.as_mut() {
                up.write_zeros(offset - base).await?;
            }
        }
        w.pos = offset;
        w.tail_end = base.max(offset);
        if w.tail_end == offset {
            w.tail_end = 0;
        }
        Ok(())
    }

    /// Moves the stream forward to `offset`: base bytes where the file had them, zeros past.
    async fn advance(&self, w: &mut WriteState, offset: u64) -> FsResult<()> {
        if w.pos < w.tail_end {
            let stop = offset.min(w.tail_end);
            self.copy_base(w, w.pos, stop).await?;
            w.pos = stop;
        }
        if offset > w.pos {
            if let Some(up) = w.up.as_mut() {
                up.write_zeros(offset - w.pos).await?;
            }
            w.pos = offset;
        }
        Ok(())
    }

    fn set_pending(&self, ino: u64, size: Option<u64>) {
        if let Some(n) = self.inodes.lock().get_mut(ino) {
            n.pending_size = size;
        }
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
        let flags_p = OpenFlags::from_libc(flags);
        // The kernel calls create when its dentry is negative; the bucket may know better.
        match self.lookup(parent, name.as_bytes()).await {
            Ok(a) if flags_p.exclusive => {
                let _ = a;
                return Err(FsError::Exists);
            }
            Ok(a) if a.kind == Kind::Dir => return Err(FsError::IsDir),
            Ok(a) => {
                let fh = self.open(a.ino, flags).await?;
                return Ok((self.node_attr(a.ino)?, fh));
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = keys::file_key(&dir, name);
        let now = SystemTime::now();
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
            ino
        };
        self.cache.forget(&key);
        self.cache.dir_changed(&dir);
        let w = WriteState {
            key,
            base: None,
            up: None,
            pos: 0,
            tail_end: 0,
            dirty: true, // even with no write, close leaves an empty object
        };
        let fh = self.add_handle(Handle::File(Box::new(tokio::sync::Mutex::new(
            FileHandle {
                ino,
                reader: None,
                writer: Some(w),
            },
        ))));
        Ok((self.node_attr(ino)?, fh))
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let f = OpenFlags::from_libc(flags);
        let writer = {
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            if n.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if f.write {
                n.writers += 1;
                let m = n.meta.as_ref();
                let base = m.filter(|m| m.etag.is_some()).map(|m| Base {
                    size: m.size,
                    etag: m.etag.clone(),
                });
                if f.truncate {
                    n.pending_size = Some(0);
                }
                Some(WriteState {
                    key: n.key.clone(),
                    base: if f.truncate { None } else { base },
                    up: None,
                    pos: 0,
                    tail_end: 0,
                    dirty: f.truncate || m.is_some_and(|m| m.etag.is_none()),
                })
            } else {
                None
            }
        };
        Ok(
            self.add_handle(Handle::File(Box::new(tokio::sync::Mutex::new(
                FileHandle {
                    ino,
                    reader: None,
                    writer,
                },
            )))),
        )
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Err(FsError::BadHandle);
        };
        let mut f = f.lock().await;
        let ino = f.ino;
        let w = f.writer.as_mut().ok_or(FsError::BadHandle)?;
        let r = self.write_locked(ino, w, offset, data).await;
        if r.is_err() {
            // The version being built is lost; the bucket keeps the old one.
            if let Some(up) = w.up.take() {
                up.abort().await;
            }
            w.dirty = false;
            self.set_pending(ino, None);
        }
        r.map(|_| data.len() as u32)
    }

    async fn write_locked(
        &self,
        ino: u64,
        w: &mut WriteState,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        if w.up.is_none() {
            self.start_stream(ino, w, offset).await?;
        } else if offset > w.pos {
            self.advance(w, offset).await?;
        } else if offset < w.pos {
            tracing::debug!(key = %w.key, offset, pos = w.pos, "write behind the stream");
            return Err(FsError::Unsupported("writing behind data already written"));
        }
        let up = w.up.as_mut().ok_or(FsError::BadHandle)?;
        up.write(data).await?;
        w.pos += data.len() as u64;
        w.dirty = true;
        self.set_pending(ino, Some(w.size()));
        Ok(())
    }

    /// ftruncate / truncate on a file open for writing.
    async fn truncate_locked(&self, ino: u64, w: &mut WriteState, size: u64) -> FsResult<()> {
        let cur = w.size();
        if w.up.is_none() {
            let base = w.base.as_ref().map(|b| b.size).unwrap_or(0);
            if size <= base {
                if size == 0 {
                    w.base = None;
                } else if let Some(b) = w.base.as_mut() {
                    b.size = size;
                }
                w.dirty = w.dirty || size != base;
            } else {
                self.start_stream(ino, w, size).await?;
                w.dirty = true;
            }
        } else if size > cur {
            self.advance(w, size).await?;
        } else if size < cur {
            if size >= w.pos {
                w.tail_end = size;
            } else if w.up.as_mut().is_some_and(|u| u.truncate(size)) {
                w.pos = size;
                w.tail_end = 0;
            } else {
                return Err(FsError::Unsupported(
                    "shrinking below data already uploaded",
                ));
            }
            w.dirty = true;
        }
        self.set_pending(ino, Some(size));
        Ok(())
    }

    pub(super) async fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> FsResult<()> {
        if let Some(fh) = fh {
            let h = self.handle(fh)?;
            if let Handle::File(f) = &*h {
                let mut f = f.lock().await;
                if let Some(w) = f.writer.as_mut() {
                    return self.truncate_locked(ino, w, size).await;
                }
            }
        }
        // truncate(2) with no writable handle: build the new version here.
        let (key, base) = {
            let t = self.inodes.lock();
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            let m = n.meta.as_ref();
            if m.is_some_and(|m| m.size == size && m.etag.is_some()) && n.pending_size.is_none() {
                return Ok(());
            }
            (
                n.key.clone(),
                m.filter(|m| m.etag.is_some()).map(|m| Base {
                    size: m.size,
                    etag: m.etag.clone(),
                }),
            )
        };
        let mut w = WriteState {
            key,
            base,
            up: None,
            pos: 0,
            tail_end: 0,
            dirty: true,
        };
        self.truncate_locked(ino, &mut w, size).await?;
        self.finish(ino, &mut w).await
    }

    /// Uploads the version a handle has built. On success the bucket holds exactly the
    /// bytes written so far, and later writes build on that version.
    async fn finish(&self, ino: u64, w: &mut WriteState) -> FsResult<()> {
        let (gone, now_key) = {
            let t = self.inodes.lock();
            match t.get(ino) {
                Some(n) => (n.unlinked, n.key.clone()),
                None => (true, w.key.clone()),
            }
        };
        if gone || now_key != w.key {
            // Unlinked while open: closing must not bring the file back.
            if let Some(up) = w.up.take() {
                up.abort().await;
            }
            w.dirty = false;
            return Ok(());
        }
        let r = self.finish_inner(ino, w).await;
        if let Err(e) = &r {
            tracing::warn!(key = %w.key, error = %e, "upload failed; the bucket keeps the previous version");
            if let Some(up) = w.up.take() {
                up.abort().await;
            }
            w.dirty = false;
            self.set_pending(ino, None);
        }
        r
    }

    async fn finish_inner(&self, ino: u64, w: &mut WriteState) -> FsResult<()> {
        if w.up.is_none() {
            let base = w.base.as_ref().map(|b| b.size).unwrap_or(0);
            self.start_stream(ino, w, base).await?;
        }
        if w.pos < w.tail_end {
            let end = w.tail_end;
            self.advance(w, end).await?;
        }
        // Headers follow chmod/chown done while the file was open.
        let opts = {
            let t = self.inodes.lock();
            t.get(ino).map(|n| self.put_options(n, None))
        };
        let mut up = w.up.take().ok_or(FsError::BadHandle)?;
        if let Some(o) = opts {
            up.set_options(o);
        }
        let size = up.len();
        let etag = up.finish().await?;
        let m = {
            let mut t = self.inodes.lock();
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            let posix = n.meta.as_ref().map(|m| m.posix).unwrap_or_default();
            let m = FileMeta {
                size,
                etag: etag.clone(),
                modified: SystemTime::now(),
                posix,
                posix_known: true,
            };
            n.meta = Some(m.clone());
            n.pending_size = None;
            m
        };
        self.object_changed(&w.key, Lookup::File(m));
        w.base = Some(Base { size, etag });
        w.pos = 0;
        w.tail_end = 0;
        w.dirty = false;
        Ok(())
    }

    pub(super) async fn flush_handle(&self, f: &mut FileHandle) -> FsResult<()> {
        let ino = f.ino;
        match f.writer.as_mut() {
            Some(w) if w.is_dirty() => self.finish(ino, w).await,
            _ => Ok(()),
        }
    }

    /// close(): the upload completes here, and its error is the caller's.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Ok(());
        };
        let mut f = f.lock().await;
        self.flush_handle(&mut f).await
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.lock().remove(&fh) else {
            return Ok(());
        };
        let Handle::File(f) = &*h else {
            return Ok(());
        };
        let mut f = f.lock().await;
        let r = self.flush_handle(&mut f).await;
        if f.writer.is_some() {
            let mut t = self.inodes.lock();
            if let Some(n) = t.get_mut(f.ino) {
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
        r
    }
}
