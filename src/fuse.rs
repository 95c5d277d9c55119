//! The FUSE adapter: translates kernel requests into calls on [`Fs`]. Every request that
//! may touch the network is answered from a tokio task, so the dispatch thread never waits
//! on S3.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    consts, FileAttr, FileType, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow,
};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::fs::inode::Special;
use crate::fs::{Attr, FileKind, Fs, SetAttr};

/// Largest read and write the kernel sends in one request.
pub const MAX_IO: u32 = 1024 * 1024;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
    ttl: Duration,
    blksize: u32,
    /// Set when the kernel ends the session (unmount), so the daemon can finish.
    on_destroy: Option<Box<dyn FnOnce() + Send>>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: Handle, on_destroy: Box<dyn FnOnce() + Send>) -> Self {
        let ttl = fs.config().ttl;
        FuseAdapter {
            fs,
            rt,
            ttl,
            blksize: MAX_IO,
            on_destroy: Some(on_destroy),
        }
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }
}

fn to_file_attr(a: &Attr, blksize: u32) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize,
        flags: 0,
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Special(Special::Fifo) => FileType::NamedPipe,
        FileKind::Special(Special::Socket) => FileType::Socket,
        FileKind::Special(Special::Char) => FileType::CharDevice,
        FileKind::Special(Special::Block) => FileType::BlockDevice,
    }
}

/// Thread group (process) of the thread `pid` that made a request.
fn tgid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

fn log_err(op: &str, e: &FsError) -> i32 {
    let errno = e.errno();
    match e {
        FsError::Store(_) => tracing::warn!(op, error = %e, errno, "request failed"),
        _ => tracing::debug!(op, error = %e, errno, "request refused"),
    }
    crate::metrics::fuse_error(errno)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // O_TRUNC comes with open (so a truncating open is one step), lookups in one
        // directory may run in parallel, and readdir returns attributes.
        for cap in [
            consts::FUSE_ATOMIC_O_TRUNC,
            consts::FUSE_PARALLEL_DIROPS,
            consts::FUSE_DO_READDIRPLUS,
            consts::FUSE_READDIRPLUS_AUTO,
            consts::FUSE_BIG_WRITES,
            consts::FUSE_ASYNC_READ,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        let fs = self.fs.clone();
        // The session is over: no more requests, so waiting here blocks nobody.
        let failed = self.rt.block_on(async move { fs.flush_all().await });
        for u in &failed {
            tracing::error!(path = %u.path, error = %u.error, "not saved to the bucket");
        }
        if !failed.is_empty() {
            crate::service::note_unsaved(failed.len());
        }
        if let Some(f) = self.on_destroy.take() {
            f();
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let (ttl, bs) = (self.ttl, self.blksize);
        self.spawn(async move {
            match fs.lookup(parent, &name).await {
                Ok(a) => reply.entry(&ttl, &to_file_attr(&a, bs), 0),
                Err(e) => reply.error(if matches!(e, FsError::NotFound) {
                    crate::metrics::fuse_error(libc::ENOENT)
                } else {
                    log_err("lookup", &e)
                }),
            }
        });
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let (ttl, bs) = (self.ttl, self.blksize);
        self.spawn(async move {
            match fs.getattr(ino).await {
                Ok(a) => reply.attr(&ttl, &to_file_attr(&a, bs)),
                Err(e) => reply.error(log_err("getattr", &e)),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        let (ttl, bs) = (self.ttl, self.blksize);
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time),
            atime: atime.map(time),
        };
        self.spawn(async move {
            match fs.setattr(ino, fh, s).await {
                Ok(a) => reply.attr(&ttl, &to_file_attr(&a, bs)),
                Err(e) => reply.error(log_err("setattr", &e)),
            }
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let (ttl, bs) = (self.ttl, self.blksize);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            match fs.mkdir(parent, &name, mode, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &to_file_attr(&a, bs), 0),
                Err(e) => reply.error(log_err("mkdir", &e)),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let (ttl, bs) = (self.ttl, self.blksize);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            match fs.mknod(parent, &name, mode, rdev, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &to_file_attr(&a, bs), 0),
                Err(e) => reply.error(log_err("mknod", &e)),
            }
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        self.spawn(async move {
            match fs.unlink(parent, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("unlink", &e)),
            }
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        self.spawn(async move {
            match fs.rmdir(parent, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("rmdir", &e)),
            }
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        self.spawn(async move {
            match fs.rename(parent, &name, newparent, &newname, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("rename", &e)),
            }
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        let (ttl, bs) = (self.ttl, self.blksize);
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            match fs.symlink(parent, &name, &target, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &to_file_attr(&a, bs), 0),
                Err(e) => reply.error(log_err("symlink", &e)),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.readlink(ino).await {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(log_err("readlink", &e)),
            }
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // S3 has no way to give one object two names.
        reply.error(crate::metrics::fuse_error(libc::EPERM));
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let pid = req.pid();
        self.spawn(async move {
            match fs.open(ino, flags).await {
                Ok(fh) => {
                    fs.set_opener(fh, tgid_of(pid)).await;
                    reply.opened(fh, 0)
                }
                Err(e) => reply.error(log_err("open", &e)),
            }
        });
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let (ttl, bs) = (self.ttl, self.blksize);
        let pid = req.pid();
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(async move {
            match fs.create(parent, &name, mode, flags, uid, gid).await {
                Ok((a, fh)) => {
                    fs.set_opener(fh, tgid_of(pid)).await;
                    reply.created(&ttl, &to_file_attr(&a, bs), 0, fh, 0)
                }
                Err(e) => reply.error(log_err("create", &e)),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.read(fh, offset.max(0) as u64, size).await {
                Ok(b) => reply.data(&b[..crate::metrics::fuse_read(b.len())]),
                Err(e) => reply.error(log_err("read", &e)),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.spawn(async move {
            match fs.write(fh, offset.max(0) as u64, &data).await {
                Ok(n) => reply.written(crate::metrics::fuse_written(n)),
                Err(e) => reply.error(log_err("write", &e)),
            }
        });
    }

    fn flush(&mut self, req: &Request<'_>, _ino: u64, fh: u64, _lock: u64, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let pid = req.pid();
        self.spawn(async move {
            match fs.flush_from(fh, Some(tgid_of(pid))).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("flush", &e)),
            }
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.release(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("release", &e)),
            }
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _ds: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.fsync(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(log_err("fsync", &e)),
            }
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.fs.opendir(ino) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(log_err("opendir", &e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.spawn(async move {
            match fs.readdir(ino, fh, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset.max(0) as usize) {
                        let kind = file_type(e.attr.kind);
                        if reply.add(e.attr.ino, (i + 1) as i64, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(log_err("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        let (ttl, bs) = (self.ttl, self.blksize);
        self.spawn(async move {
            match fs.readdir(ino, fh, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset.max(0) as usize) {
                        let a = to_file_attr(&e.attr, bs);
                        if reply.add(e.attr.ino, (i + 1) as i64, &e.name, &ttl, &a, 0) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(log_err("readdirplus", &e)),
            }
        });
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _f: i32, reply: ReplyEmpty) {
        self.fs.releasedir(fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }
}
