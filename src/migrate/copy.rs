//! Copying ONE item between a local path and an object, verified, in the mount's format.
//!
//! Uploads (`upload_file`) carry the Content-Type of the name, the s3fs-compatible POSIX
//! headers the mount writes (`x-amz-meta-mode/uid/gid/mtime`) and the MD5 of the whole
//! content (`x-amz-meta-bucketfs-md5`, which `--checksum` and downloads compare against).
//! A file up to one part is a single PutObject; a larger one is a multipart upload with the
//! mount's part schedule (`upload::part_span`), read part by part (memory stays bounded by
//! the budget, never the file size).
//!
//! Verification of an upload: the MD5 computed while reading is compared with the ETag the
//! server returns: a single PUT's ETag is the MD5 of the body; a multipart upload's is the
//! MD5 of the parts' MD5s followed by `-N`, which is computed from the MD5 of each part as
//! it was sent. When an ETag is not that (servers with encryption at rest, other schemes),
//! the object is read back and hashed. An object that proves different from what was sent is
//! deleted (a later run copies it again) and the copy fails. The file is hashed a first time
//! before a multipart upload starts (its MD5 goes into the headers, which S3 takes at
//! CreateMultipartUpload) and again as the parts are read: a file that changed in between,
//! or whose size or mtime changed while it was read, is not published.
//!
//! Downloads (`download_object`) write a temp file `.bucketfs-migrate-*` in the destination
//! directory, hash it while the ranges arrive (each pinned to the ETag with If-Match, so a
//! concurrent overwrite cannot mix two versions), compare the MD5 with the stored header or
//! a single-part ETag, restore mode, owner (as root) and mtime, fsync, and rename it into
//! place: a killed download leaves at most a temp file that the next run removes.
//!
//! Symlinks are s3fs's format both ways: the body is the target, the mode has S_IFLNK.
//! Directories become `dir/` marker objects (only needed for empty ones: the mount shows
//! a prefix with keys below it as a directory anyway).

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use crate::budget::MemoryBudget;
use crate::error::MigrateError;
use crate::meta::{self, PosixMeta};
use crate::store::{CompletedPart, ObjectInfo, ObjectStore, PutOptions};
use crate::upload::{part_at, part_span, MIB};

/// User-metadata name of the whole content's MD5 (hex), written on every upload.
pub const MD5_META: &str = "bucketfs-md5";
/// Name prefix of download temp files; a run removes the ones an earlier run left.
pub const TEMP_PREFIX: &str = ".bucketfs-migrate-";
/// Content-Type of `dir/` marker objects (what s3fs writes).
pub const DIR_CONTENT_TYPE: &str = "application/x-directory";
/// Longest symlink target (PATH_MAX).
const MAX_LINK: u64 = 4096;

/// Called with the bytes of each part or range once it is sent or written (progress).
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

/// How one item is copied.
#[derive(Clone)]
pub struct CopyOptions {
    /// First part size of multipart uploads, and the range size of downloads.
    pub part_size: u64,
    /// Parts (or ranges) of one item in flight at once.
    pub part_concurrency: usize,
    /// Bounds the bytes buffered by all copies that share it.
    pub budget: MemoryBudget,
    /// Downloads: set the stored uid/gid (only root can).
    pub restore_owner: bool,
    /// Progress callback; None: nothing reported.
    pub on_bytes: Option<OnBytes>,
}

impl CopyOptions {
    fn report(&self, n: u64) {
        if let Some(f) = &self.on_bytes {
            f(n);
        }
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            part_size: 8 * MIB,
            part_concurrency: 4,
            budget: MemoryBudget::new(256 * MIB),
            restore_owner: unsafe { libc::geteuid() } == 0,
            on_bytes: None,
        }
    }
}

/// How a copy was proven identical to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The single PUT's ETag (or a single-part object's ETag) is the MD5 of the bytes.
    Etag,
    /// Every part's MD5 and the multipart ETag built from them match the server's.
    PartEtags,
    /// The object was read back and hashed.
    ReRead,
    /// The download's MD5 equals the stored `bucketfs-md5` header.
    StoredMd5,
    /// No checksum exists for the object (a multipart upload by another tool): size checked,
    /// every range pinned to the ETag.
    SizeOnly,
}

#[derive(Clone, Debug)]
pub struct CopyReport {
    /// Content bytes copied.
    pub bytes: u64,
    /// MD5 (hex) of the content, where computed.
    pub md5: Option<String>,
    /// ETag of the object written (uploads) or read (downloads).
    pub etag: Option<String>,
    pub multipart: bool,
    pub verified: Verified,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One ranged GET that must return the whole range (a short body is a failed verification).
async fn get_exact(
    store: &dyn ObjectStore,
    key: &str,
    r: Range<u64>,
    etag: Option<&str>,
) -> Result<Bytes, MigrateError> {
    let want = r.end - r.start;
    let start = r.start;
    let b = store.get_range(key, r, etag).await?;
    if b.len() as u64 != want {
        return Err(MigrateError::Verify(format!(
            "short read at offset {start}: {} of {want} bytes",
            b.len()
        )));
    }
    Ok(b)
}

fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// The ETag without quotes, lower-case.
pub fn clean_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// The MD5 an ETag stands for, if it looks like a single-part one (32 hex digits).
pub fn plain_md5(etag: &str) -> Option<String> {
    let e = clean_etag(etag);
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// The ETag S3 gives a multipart upload of parts with these MD5s.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for d in part_md5s {
        h.update(d);
    }
    format!("{}-{}", hex(&h.finalize()), part_md5s.len())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// POSIX headers of a local item with type bits `kind`.
// Attributes beyond these four (if PosixMeta grows more) stay unset.
#[allow(clippy::needless_update)]
fn posix_of(md: &std::fs::Metadata, kind: u32) -> PosixMeta {
    PosixMeta {
        mode: Some(kind | (md.mode() & 0o7777)),
        uid: Some(md.uid()),
        gid: Some(md.gid()),
        mtime: md.modified().ok(),
        ..PosixMeta::default()
    }
}

fn put_options(content_type: String, posix: &PosixMeta, md5: &str) -> PutOptions {
    let mut metadata = std::collections::HashMap::new();
    posix.write_to(&mut metadata);
    metadata.insert(MD5_META.into(), md5.to_string());
    PutOptions {
        content_type,
        metadata,
    }
}

/// Reads `span` of `file` off the async threads; the bytes and their MD5.
async fn read_span(file: Arc<File>, span: Range<u64>) -> Result<(Bytes, [u8; 16]), MigrateError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; (span.end - span.start) as usize];
        file.read_exact_at(&mut buf, span.start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                MigrateError::Changed
            } else {
                MigrateError::Io { op: "read", err: e }
            }
        })?;
        let d: [u8; 16] = Md5::digest(&buf).into();
        Ok((Bytes::from(buf), d))
    })
    .await
    .map_err(|e| MigrateError::Unsupported(format!("read task: {e}")))?
}

/// MD5 of the first `size` bytes of `file`, read in 1 MiB blocks.
async fn hash_file(file: Arc<File>, size: u64) -> Result<String, MigrateError> {
    tokio::task::spawn_blocking(move || {
        let mut h = Md5::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(MIB) as usize;
            file.read_exact_at(&mut buf[..n], off).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    MigrateError::Changed
                } else {
                    MigrateError::Io { op: "read", err: e }
                }
            })?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(hex(&h.finalize()))
    })
    .await
    .map_err(|e| MigrateError::Unsupported(format!("read task: {e}")))?
}

/// Whether the open file still has the size and mtime it had when the copy began.
fn unchanged(file: &File, before: &std::fs::Metadata) -> Result<(), MigrateError> {
    let now = file.metadata().map_err(MigrateError::io("fstat"))?;
    if now.len() != before.len()
        || now.mtime() != before.mtime()
        || now.mtime_nsec() != before.mtime_nsec()
    {
        return Err(MigrateError::Changed);
    }
    Ok(())
}

/// MD5 of the object as the server serves it now, pinned to `etag`.
async fn reread_md5(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    etag: Option<&str>,
    opts: &CopyOptions,
) -> Result<String, MigrateError> {
    let chunk = opts.part_size.max(MIB);
    let mut h = Md5::new();
    let mut off = 0u64;
    while off < size {
        let end = (off + chunk).min(size);
        let _mem = opts.budget.reserve(end - off).await;
        let b = get_exact(store, key, off..end, etag).await?;
        h.update(&b);
        off = end;
    }
    Ok(hex(&h.finalize()))
}

/// Proves that `key` holds the bytes with MD5 `md5`: by its ETag when it is the expected
/// one, else by reading it back. An object that differs is deleted.
async fn verify_upload(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    md5: &str,
    etag: Option<&str>,
    expected_etag: &str,
    opts: &CopyOptions,
) -> Result<Verified, MigrateError> {
    if etag.is_some_and(|e| clean_etag(e) == expected_etag) {
        // A multipart ETag (`…-N`) is built from every part's MD5.
        return Ok(if expected_etag.contains('-') {
            Verified::PartEtags
        } else {
            Verified::Etag
        });
    }
    let got = reread_md5(store, key, size, etag, opts).await;
    match got {
        Ok(m) if m == md5 => Ok(Verified::ReRead),
        Ok(m) => {
            let _ = store.delete(key).await;
            Err(MigrateError::Verify(format!(
                "the bucket holds different bytes than were sent (MD5 {m}, sent {md5}); the object was deleted"
            )))
        }
        Err(e) => Err(e),
    }
}

/// Uploads the local file, symlink or directory (as a `key`/ marker) at `local` to `key`,
/// verified, with Content-Type and POSIX metadata. `key` is the full object key.
pub async fn upload_file(
    store: &dyn ObjectStore,
    local: &Path,
    key: &str,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let md = std::fs::symlink_metadata(local).map_err(MigrateError::io("lstat"))?;
    let ft = md.file_type();
    if ft.is_symlink() {
        return upload_symlink(store, local, key, &md, opts).await;
    }
    if ft.is_dir() {
        return upload_dir_marker(store, key, &md, opts).await;
    }
    if !ft.is_file() {
        return upload_special(store, key, &md, opts).await;
    }
    let file = Arc::new(File::open(local).map_err(MigrateError::io("open"))?);
    let md = file.metadata().map_err(MigrateError::io("fstat"))?;
    if !md.is_file() {
        return Err(MigrateError::Changed);
    }
    let size = md.len();
    let name = key.rsplit('/').next().unwrap_or(key);
    let posix = posix_of(&md, libc::S_IFREG);
    let base = opts.part_size;
    if size <= part_span(base, 1).end {
        let _mem = opts.budget.reserve(size).await;
        let (body, d) = read_span(file.clone(), 0..size).await?;
        unchanged(&file, &md)?;
        let md5 = hex(&d);
        let put = put_options(meta::content_type_for(name), &posix, &md5);
        let etag = store.put(key, body, &put).await?;
        opts.report(size);
        let verified = verify_upload(store, key, size, &md5, etag.as_deref(), &md5, opts).await?;
        return Ok(CopyReport {
            bytes: size,
            md5: Some(md5),
            etag,
            multipart: false,
            verified,
        });
    }
    let md5 = hash_file(file.clone(), size).await?;
    let put = put_options(meta::content_type_for(name), &posix, &md5);
    let id = store.create_multipart(key, &put).await?;
    let sent = upload_parts(store, key, &id, file.clone(), size, opts).await;
    let sent = match sent.and_then(|s| {
        unchanged(&file, &md)?;
        if s.2 != md5 {
            return Err(MigrateError::Changed);
        }
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = store.abort_multipart(key, &id).await;
            return Err(e);
        }
    };
    let (parts, part_md5s, _) = sent;
    let etag = match store.complete_multipart(key, &id, parts).await {
        Ok(e) => e,
        Err(e) => {
            // Completed or not, no upload may stay open (a rerun would find it anyway).
            let _ = store.abort_multipart(key, &id).await;
            return Err(e.into());
        }
    };
    let verified = verify_upload(
        store,
        key,
        size,
        &md5,
        etag.as_deref(),
        &multipart_etag(&part_md5s),
        opts,
    )
    .await?;
    Ok(CopyReport {
        bytes: size,
        md5: Some(md5),
        etag,
        multipart: true,
        verified,
    })
}

/// The parts of `file` sent to upload `id`: completed parts, each part's MD5, and the MD5
/// of everything sent (in order).
async fn upload_parts(
    store: &dyn ObjectStore,
    key: &str,
    id: &str,
    file: Arc<File>,
    size: u64,
    opts: &CopyOptions,
) -> Result<(Vec<CompletedPart>, Vec<[u8; 16]>, String), MigrateError> {
    let base = opts.part_size;
    let last = part_at(base, size - 1);
    let mut whole = Md5::new();
    let mut parts = Vec::new();
    let mut md5s = Vec::new();
    let mut stream = futures::stream::iter(1..=last)
        .map(|n| {
            let file = file.clone();
            async move {
                let span = part_span(base, n);
                let span = span.start..span.end.min(size);
                let mem = opts.budget.reserve(span.end - span.start).await;
                let (body, d) = read_span(file, span).await?;
                let etag = store.upload_part(key, id, n, body.clone()).await?;
                opts.report(body.len() as u64);
                Ok::<_, MigrateError>((n, etag, d, body, mem))
            }
        })
        .buffered(opts.part_concurrency.max(1));
    while let Some((n, etag, d, body, _mem)) = stream.try_next().await? {
        whole.update(&body);
        parts.push(CompletedPart { number: n, etag });
        md5s.push(d);
    }
    Ok((parts, md5s, hex(&whole.finalize())))
}

async fn upload_symlink(
    store: &dyn ObjectStore,
    local: &Path,
    key: &str,
    md: &std::fs::Metadata,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let target = std::fs::read_link(local).map_err(MigrateError::io("readlink"))?;
    let body = target.as_os_str().as_bytes().to_vec();
    if body.is_empty() || body.len() as u64 > MAX_LINK {
        return Err(MigrateError::Unsupported(
            "symlink target empty or too long".into(),
        ));
    }
    let size = body.len() as u64;
    let md5 = md5_hex(&body);
    let mut posix = posix_of(md, libc::S_IFLNK);
    posix.mode = Some(libc::S_IFLNK | 0o777);
    let put = put_options(meta::DEFAULT_TYPE.into(), &posix, &md5);
    let etag = store.put(key, Bytes::from(body), &put).await?;
    let verified = verify_upload(store, key, size, &md5, etag.as_deref(), &md5, opts).await?;
    Ok(CopyReport {
        bytes: size,
        md5: Some(md5),
        etag,
        multipart: false,
        verified,
    })
}

async fn upload_dir_marker(
    store: &dyn ObjectStore,
    key: &str,
    md: &std::fs::Metadata,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let key = if key.ends_with('/') || key.is_empty() {
        key.to_string()
    } else {
        format!("{key}/")
    };
    let md5 = md5_hex(b"");
    let put = put_options(DIR_CONTENT_TYPE.into(), &posix_of(md, libc::S_IFDIR), &md5);
    let etag = store.put(&key, Bytes::new(), &put).await?;
    let verified = verify_upload(store, &key, 0, &md5, etag.as_deref(), &md5, opts).await?;
    Ok(CopyReport {
        bytes: 0,
        md5: Some(md5),
        etag,
        multipart: false,
        verified,
    })
}

/// Whether `t` (`S_IFMT` bits) is a FIFO, socket or device: what the mount stores as an empty
/// object with the type in `x-amz-meta-mode` (and the device in `x-amz-meta-rdev`).
pub fn is_special(t: u32) -> bool {
    matches!(
        t,
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
    )
}

/// A FIFO, socket or device in the mount's (s3fs's) format.
async fn upload_special(
    store: &dyn ObjectStore,
    key: &str,
    md: &std::fs::Metadata,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let t = md.mode() & libc::S_IFMT;
    if !is_special(t) {
        return Err(MigrateError::Unsupported(format!(
            "unknown file type {t:o}"
        )));
    }
    let mut posix = posix_of(md, t);
    if t == libc::S_IFCHR || t == libc::S_IFBLK {
        // The kernel's 32-bit dev_t encoding, as the mount stores it (glibc's st_rdev has the
        // same low 32 bits for majors below 4096).
        posix.rdev = Some(md.rdev() as u32);
    }
    let md5 = md5_hex(b"");
    let put = put_options(meta::DEFAULT_TYPE.into(), &posix, &md5);
    let etag = store.put(key, Bytes::new(), &put).await?;
    let verified = verify_upload(store, key, 0, &md5, etag.as_deref(), &md5, opts).await?;
    Ok(CopyReport {
        bytes: 0,
        md5: Some(md5),
        etag,
        multipart: false,
        verified,
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp name in `dir`.
pub fn temp_path(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{TEMP_PREFIX}{}-{n}-{t:08x}", std::process::id()))
}

fn cpath(p: &Path) -> Result<CString, MigrateError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| MigrateError::Name("path contains NUL".into()))
}

/// Sets the mtime of `p` (not following a symlink); atime too.
fn set_mtime(p: &Path, t: SystemTime) -> Result<(), MigrateError> {
    let c = cpath(p)?;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let times = [ts, ts];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(MigrateError::Io {
            op: "set mtime",
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// chown of `p` itself (not a symlink's target).
fn set_owner(p: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), MigrateError> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let c = cpath(p)?;
    let r = unsafe {
        libc::lchown(
            c.as_ptr(),
            uid.unwrap_or(u32::MAX) as libc::uid_t,
            gid.unwrap_or(u32::MAX) as libc::gid_t,
        )
    };
    if r != 0 {
        return Err(MigrateError::Io {
            op: "chown",
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Mode (default `default_perm`), owner (if `restore_owner`) and mtime of a directory.
pub fn apply_dir_meta(
    dir: &Path,
    posix: &PosixMeta,
    default_perm: u32,
    restore_owner: bool,
) -> Result<(), MigrateError> {
    if restore_owner {
        set_owner(dir, posix.uid, posix.gid)?;
    }
    let perm = posix.mode.map(|m| m & 0o7777).unwrap_or(default_perm);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perm))
        .map_err(MigrateError::io("chmod"))?;
    if let Some(t) = posix.mtime {
        set_mtime(dir, t)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), MigrateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(MigrateError::io("fsync directory"))
}

/// Downloads `key` (HEAD first, for its metadata) to `local`.
pub async fn download_object(
    store: &dyn ObjectStore,
    key: &str,
    local: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let info = store.head(key).await?;
    download_object_with(store, &info, local, opts).await
}

/// Downloads the object `info` (from a HEAD: its metadata is used) to `local`, replacing
/// what is there atomically (rename). The parent directory must exist.
pub async fn download_object_with(
    store: &dyn ObjectStore,
    info: &ObjectInfo,
    local: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(&parent);
    let posix = PosixMeta::from_metadata(&info.metadata);
    let is_link = posix
        .mode
        .is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK);
    let t = posix.mode.map(|m| m & libc::S_IFMT).unwrap_or(0);
    let r = if is_link {
        download_symlink(store, info, &posix, &tmp, opts).await
    } else if is_special(t) {
        make_special(info, &posix, t, &tmp, opts)
    } else {
        download_file(store, info, &posix, &tmp, opts).await
    };
    let r = r.and_then(|rep| {
        std::fs::rename(&tmp, local).map_err(MigrateError::io("rename into place"))?;
        sync_dir(&parent)?;
        Ok(rep)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn mtime_of(info: &ObjectInfo, posix: &PosixMeta) -> SystemTime {
    posix
        .mtime
        .or(info.last_modified)
        .unwrap_or_else(SystemTime::now)
}

async fn download_symlink(
    store: &dyn ObjectStore,
    info: &ObjectInfo,
    posix: &PosixMeta,
    tmp: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    if info.size == 0 || info.size > MAX_LINK {
        return Err(MigrateError::Unsupported(format!(
            "symlink object of {} bytes (a target is 1 to {MAX_LINK} bytes)",
            info.size
        )));
    }
    let body = store
        .get_range(&info.key, 0..info.size, info.etag.as_deref())
        .await?;
    let md5 = md5_hex(&body);
    let verified = check_download(info, body.len() as u64, &md5)?;
    std::os::unix::fs::symlink(OsStr::from_bytes(&body), tmp)
        .map_err(MigrateError::io("symlink"))?;
    if opts.restore_owner {
        set_owner(tmp, posix.uid, posix.gid)?;
    }
    set_mtime(tmp, mtime_of(info, posix))?;
    Ok(CopyReport {
        bytes: info.size,
        md5: Some(md5),
        etag: info.etag.clone(),
        multipart: false,
        verified,
    })
}

/// A FIFO, socket or device object becomes that kind of file (devices need root).
fn make_special(
    info: &ObjectInfo,
    posix: &PosixMeta,
    t: u32,
    tmp: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let dev = if t == libc::S_IFCHR || t == libc::S_IFBLK {
        posix.rdev.unwrap_or(0) as libc::dev_t
    } else {
        0
    };
    let perm = posix.mode.map(|m| m & 0o7777).unwrap_or(0o644);
    // No content: the checksum of the empty body proves the object is what it claims.
    let md5 = md5_hex(b"");
    let verified = check_download(info, 0, &md5)?;
    let c = cpath(tmp)?;
    if unsafe { libc::mknod(c.as_ptr(), t | 0o600, dev) } != 0 {
        return Err(MigrateError::Io {
            op: "mknod",
            err: std::io::Error::last_os_error(),
        });
    }
    if opts.restore_owner {
        set_owner(tmp, posix.uid, posix.gid)?;
    }
    // chmod after chown (which clears set-id bits); a socket's or FIFO's mode is its own.
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(perm))
        .map_err(MigrateError::io("chmod"))?;
    set_mtime(tmp, mtime_of(info, posix))?;
    Ok(CopyReport {
        bytes: 0,
        md5: Some(md5),
        etag: info.etag.clone(),
        multipart: false,
        verified,
    })
}

/// Compares a download with the stored checksum (header, else a single-part ETag).
fn check_download(info: &ObjectInfo, got_size: u64, md5: &str) -> Result<Verified, MigrateError> {
    if got_size != info.size {
        return Err(MigrateError::Verify(format!(
            "received {got_size} bytes, the object has {}",
            info.size
        )));
    }
    if let Some(want) = info.metadata.get(MD5_META) {
        if want.trim().eq_ignore_ascii_case(md5) {
            return Ok(Verified::StoredMd5);
        }
        return Err(MigrateError::Verify(format!(
            "MD5 of the bytes received is {md5}, the object's {MD5_META} header says {want}"
        )));
    }
    if let Some(want) = info.etag.as_deref().and_then(plain_md5) {
        if want == md5 {
            return Ok(Verified::Etag);
        }
        return Err(MigrateError::Verify(format!(
            "MD5 of the bytes received is {md5}, the ETag is {want}"
        )));
    }
    Ok(Verified::SizeOnly)
}

async fn download_file(
    store: &dyn ObjectStore,
    info: &ObjectInfo,
    posix: &PosixMeta,
    tmp: &Path,
    opts: &CopyOptions,
) -> Result<CopyReport, MigrateError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(MigrateError::io("create temp file"))?;
    let file = Arc::new(file);
    let size = info.size;
    let chunk = opts.part_size.max(MIB);
    let etag = info.etag.as_deref();
    let key = info.key.as_str();
    let starts: Vec<u64> = (0..size.div_ceil(chunk)).map(|i| i * chunk).collect();
    let mut h = Md5::new();
    let mut got = 0u64;
    let mut stream = futures::stream::iter(starts)
        .map(|start| async move {
            let end = (start + chunk).min(size);
            let mem = opts.budget.reserve(end - start).await;
            let b = get_exact(store, key, start..end, etag).await?;
            Ok::<_, MigrateError>((start, b, mem))
        })
        .buffered(opts.part_concurrency.max(1));
    while let Some((start, b, _mem)) = stream.try_next().await? {
        h.update(&b);
        let len = b.len() as u64;
        got += len;
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.write_all_at(&b, start))
            .await
            .map_err(|e| MigrateError::Unsupported(format!("write task: {e}")))?
            .map_err(MigrateError::io("write"))?;
        opts.report(len);
    }
    drop(stream);
    let md5 = hex(&h.finalize());
    let verified = check_download(info, got, &md5)?;
    if opts.restore_owner {
        set_owner(tmp, posix.uid, posix.gid)?;
    }
    // After chown, which clears set-id bits.
    let perm = posix.mode.map(|m| m & 0o7777).unwrap_or(0o644);
    file.set_permissions(std::fs::Permissions::from_mode(perm))
        .map_err(MigrateError::io("chmod"))?;
    let mtime = mtime_of(info, posix);
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(mtime),
    )
    .map_err(MigrateError::io("set mtime"))?;
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| MigrateError::Unsupported(format!("fsync task: {e}")))?
        .map_err(MigrateError::io("fsync"))?;
    Ok(CopyReport {
        bytes: size,
        md5: Some(md5),
        etag: info.etag.clone(),
        multipart: plain_md5(etag.unwrap_or("")).is_none() && etag.is_some_and(|e| e.contains('-')),
        verified,
    })
}

/// Whole seconds since the epoch (the resolution of `x-amz-meta-mtime`).
pub fn secs(t: SystemTime) -> i64 {
    unix_secs(t)
}

/// MD5 (hex) of a local file's content, or of a symlink's target (what its object holds).
pub async fn local_md5(path: &Path) -> Result<String, MigrateError> {
    let md = std::fs::symlink_metadata(path).map_err(MigrateError::io("lstat"))?;
    if md.file_type().is_symlink() {
        let t = std::fs::read_link(path).map_err(MigrateError::io("readlink"))?;
        return Ok(md5_hex(t.as_os_str().as_bytes()));
    }
    let file = Arc::new(File::open(path).map_err(MigrateError::io("open"))?);
    let size = file.metadata().map_err(MigrateError::io("fstat"))?.len();
    hash_file(file, size).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    fn opts() -> CopyOptions {
        CopyOptions {
            part_size: 5 * MIB,
            part_concurrency: 2,
            budget: MemoryBudget::new(64 * MIB),
            restore_owner: false,
            on_bytes: None,
        }
    }

    #[test]
    fn etag_shapes() {
        assert_eq!(
            plain_md5("\"D41D8CD98F00B204E9800998ECF8427E\""),
            Some("d41d8cd98f00b204e9800998ecf8427e".into())
        );
        assert_eq!(plain_md5("\"abc-2\""), None);
        let d: [u8; 16] = Md5::digest(b"x").into();
        assert!(multipart_etag(&[d, d]).ends_with("-2"));
    }

    #[tokio::test]
    async fn upload_then_download_round_trips_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemStore::new();
        let small = dir.path().join("a b.svg");
        std::fs::write(&small, b"<svg/>").unwrap();
        std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o600)).unwrap();
        let big = dir.path().join("big.bin");
        let data: Vec<u8> = (0..(11 * MIB + 3)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("a b.svg", &link).unwrap();
        let fifo = dir.path().join("pipe");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
        let o = opts();
        upload_file(&store, &fifo, "p/pipe", &o).await.unwrap();
        let h = store.head("p/pipe").await.unwrap();
        assert_eq!(
            PosixMeta::from_metadata(&h.metadata).mode,
            Some(libc::S_IFIFO | 0o640)
        );
        let r = upload_file(&store, &small, "p/a b.svg", &o).await.unwrap();
        assert!(!r.multipart);
        // MemStore's ETags are counters, not MD5s: verification falls back to reading back.
        assert_eq!(r.verified, Verified::ReRead);
        let r = upload_file(&store, &big, "p/big.bin", &o).await.unwrap();
        assert!(r.multipart);
        assert_eq!(store.open_uploads(), 0);
        upload_file(&store, &link, "p/l", &o).await.unwrap();
        assert_eq!(
            store.content_type("p/a b.svg").as_deref(),
            Some("image/svg+xml")
        );
        let h = store.head("p/a b.svg").await.unwrap();
        let pm = PosixMeta::from_metadata(&h.metadata);
        assert_eq!(pm.mode, Some(libc::S_IFREG | 0o600));

        let out = tempfile::tempdir().unwrap();
        for (k, n) in [
            ("p/a b.svg", "a b.svg"),
            ("p/big.bin", "big.bin"),
            ("p/l", "l"),
        ] {
            let r = download_object(&store, k, &out.path().join(n), &o)
                .await
                .unwrap();
            assert_eq!(r.verified, Verified::StoredMd5);
        }
        assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), data);
        download_object(&store, "p/pipe", &out.path().join("pipe"), &o)
            .await
            .unwrap();
        let m = std::fs::symlink_metadata(out.path().join("pipe")).unwrap();
        assert_eq!(m.mode(), libc::S_IFIFO | 0o640);
        let m = std::fs::metadata(out.path().join("a b.svg")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(m.mtime(), std::fs::metadata(&small).unwrap().mtime());
        assert_eq!(
            std::fs::read_link(out.path().join("l")).unwrap(),
            PathBuf::from("a b.svg")
        );
        let left: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty());
    }

    #[tokio::test]
    async fn a_failed_multipart_upload_is_aborted_and_publishes_nothing() {
        use crate::store::fault::{FaultStore, Op};
        let mem = Arc::new(MemStore::new());
        let store = FaultStore::new(mem.clone());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; 12 * MIB as usize]).unwrap();
        for op in [Op::UploadPart, Op::CompleteMultipart] {
            store.clear();
            store.fail_times(Some(op), FaultStore::slow_down(), 1);
            let e = upload_file(&store, &big, "big", &opts()).await.unwrap_err();
            assert!(matches!(e, MigrateError::Store(_)), "{e}");
            assert_eq!(mem.open_uploads(), 0, "{op:?}");
            assert!(mem.snapshot().is_empty(), "{op:?}");
        }
        store.clear();
        upload_file(&store, &big, "big", &opts()).await.unwrap();
        assert_eq!(mem.snapshot()["big"].len(), 12 * MIB as usize);
    }

    #[tokio::test]
    async fn a_corrupt_download_is_not_renamed_into_place() {
        let store = MemStore::new();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, b"hello").unwrap();
        upload_file(&store, &src, "f", &opts()).await.unwrap();
        // Another tool rewrites the bytes but keeps the stale checksum header.
        let h = store.head("f").await.unwrap();
        store
            .put(
                "f",
                Bytes::from_static(b"HELLO"),
                &PutOptions {
                    content_type: "text/plain".into(),
                    metadata: h.metadata.clone(),
                },
            )
            .await
            .unwrap();
        let dst = dir.path().join("out");
        let e = download_object(&store, "f", &dst, &opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MigrateError::Verify(_)), "{e}");
        assert!(!dst.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
