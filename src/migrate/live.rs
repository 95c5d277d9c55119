//! Live migration (`bucketfs mount --migrate-from OLD_DIR`): the mount serves the bucket, and
//! the old tree (the file backend's directory) fills its gaps until a background copier has
//! uploaded all of it. [`Live`] is the old tree as the filesystem sees it (the
//! [`Fallback`] hook: local stat, merged listings, local reads, per-path locks, tombstones);
//! `copier` walks the tree and uploads what the bucket lacks; `status` reports progress.
//!
//! The old tree is never modified. Its state (tombstones, status) lives in a state directory,
//! by default under the cache directory, keyed by bucket, prefix and old tree.

mod copier;
pub mod report;
mod status;
mod tombstones;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use sha1::{Digest, Sha1};

use crate::error::{FsError, FsResult, MigrateError};
use crate::fs::fallback::{Fallback, OldEntry, OldFile, PathGuard};
use crate::migrate::copy::{upload_file, CopyOptions};
use crate::store::{ObjectStore, StoreError};

pub use copier::run as run_copier;
pub use status::Progress;
use tombstones::Tombstones;

/// How a live migration runs.
#[derive(Clone)]
pub struct LiveConfig {
    /// The old tree (`--migrate-from`), its root being the mount root.
    pub old_dir: PathBuf,
    /// The mount's key prefix (`""` or ending in `/`).
    pub prefix: String,
    /// Where tombstones and the status file live.
    pub state_dir: PathBuf,
    /// Files the copier uploads at once.
    pub parallel: usize,
    /// Pause after each file the copier uploads (tests slow the copier with it).
    pub throttle: Duration,
    /// How long the copier waits before retrying after a pass that had failures.
    pub retry_after: Duration,
    pub copy: CopyOptions,
}

/// The default state directory of a migration of `old_dir` into `bucket`/`prefix`.
pub fn default_state_dir(cache_dir: &Path, bucket: &str, prefix: &str, old_dir: &Path) -> PathBuf {
    let mut h = Sha1::new();
    h.update(bucket.as_bytes());
    h.update([0]);
    h.update(prefix.as_bytes());
    h.update([0]);
    h.update(old_dir.as_os_str().as_encoded_bytes());
    let d = h.finalize();
    let id: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache_dir.join("migrate").join(id)
}

/// Why a live migration cannot start (one line for the user).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LiveError(pub String);

/// The old tree of a live migration, as the filesystem and the copier use it.
pub struct Live {
    root: PathBuf,
    cfg: LiveConfig,
    store: Arc<dyn ObjectStore>,
    tombstones: Mutex<Tombstones>,
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    progress: Progress,
    /// Every file is in the bucket (or deleted): the old tree is no longer consulted, exactly
    /// as if the mount ran without `--migrate-from`.
    complete: AtomicBool,
    /// Held for the life of the migration: one daemon per state directory.
    _state_lock: std::fs::File,
}

fn flock_exclusive(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; flock has no memory effects.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Live {
    pub fn open(store: Arc<dyn ObjectStore>, mut cfg: LiveConfig) -> Result<Arc<Live>, LiveError> {
        let root = std::fs::canonicalize(&cfg.old_dir)
            .map_err(|e| LiveError(format!("--migrate-from {}: {e}", cfg.old_dir.display())))?;
        if !root.is_dir() {
            return Err(LiveError(format!(
                "--migrate-from {} is not a directory",
                cfg.old_dir.display()
            )));
        }
        cfg.old_dir = root.clone();
        let sd = &cfg.state_dir;
        std::fs::create_dir_all(sd).map_err(|e| {
            LiveError(format!(
                "cannot create the migration state directory {}: {e} (set --migrate-state)",
                sd.display()
            ))
        })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sd.join("lock"))
            .map_err(|e| LiveError(format!("migration state {}: {e}", sd.display())))?;
        if !flock_exclusive(&lock) {
            return Err(LiveError(format!(
                "the migration state {} is in use by another bucketfs",
                sd.display()
            )));
        }
        let tombstones = Tombstones::open(&sd.join("tombstones")).map_err(|e| {
            LiveError(format!(
                "cannot read the migration's tombstones in {}: {e}",
                sd.display()
            ))
        })?;
        let progress = Progress::new(sd.join("status.json"), &root, &cfg.prefix);
        Ok(Arc::new(Live {
            root,
            cfg,
            store,
            tombstones: Mutex::new(tombstones),
            locks: Mutex::new(HashMap::new()),
            progress,
            complete: AtomicBool::new(false),
            _state_lock: lock,
        }))
    }

    pub fn status_path(&self) -> PathBuf {
        self.progress.path().to_path_buf()
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn old_dir(&self) -> &Path {
        &self.root
    }

    fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The copier found everything in the bucket: stop falling through to the old tree.
    fn set_complete(&self) {
        self.progress.set_complete();
        self.complete.store(true, Ordering::Release);
    }

    /// Paths deleted through the mount so far (over all runs).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.lock().len()
    }

    /// The path relative to the old tree that `key` stands for (None: outside the mount).
    fn rel<'k>(&self, key: &'k str) -> Option<&'k str> {
        let r = key.strip_prefix(self.cfg.prefix.as_str())?;
        Some(r.trim_end_matches('/'))
    }

    fn local(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn tombstoned(&self, rel: &str) -> bool {
        self.tombstones.lock().covers(rel)
    }

    fn entry_of(md: &std::fs::Metadata) -> Option<OldEntry> {
        let ft = md.file_type();
        if ft.is_dir() {
            Some(OldEntry::Dir)
        } else if ft.is_file() {
            Some(OldEntry::File(OldFile {
                size: md.len(),
                mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            }))
        } else if ft.is_symlink() {
            Some(OldEntry::Symlink)
        } else {
            None // fifos, sockets, devices: not served (listed as failures by the copier)
        }
    }

    /// Copies `rel` (the caller holds its lock): Ok(Some(bytes)) if uploaded, Ok(None) if
    /// there was nothing to do (tombstoned, gone, already in the bucket).
    async fn copy_rel(&self, key: &str, rel: &str) -> Result<Option<u64>, MigrateError> {
        if self.tombstoned(rel) {
            return Ok(None);
        }
        let path = self.local(rel);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        match self.store.head(key).await {
            Ok(_) => return Ok(None), // the bucket wins: maybe a newer write through the mount
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let r = upload_file(&*self.store, &path, key, &self.cfg.copy).await?;
        Ok(Some(r.bytes))
    }
}

impl Drop for Live {
    /// The status file shows the last counts after an unmount (the copier's task is gone).
    fn drop(&mut self) {
        self.progress.write();
    }
}

fn copy_error(rel: &str, e: MigrateError) -> FsError {
    tracing::warn!(path = %rel, error = %e, "copying from the old directory failed");
    match e {
        MigrateError::Store(s) => FsError::Store(s),
        MigrateError::Io { err, .. } => {
            FsError::Staging(err.raw_os_error().unwrap_or(libc::EIO), err.to_string())
        }
        other => FsError::Staging(libc::EIO, other.to_string()),
    }
}

#[async_trait]
impl Fallback for Live {
    fn stat(&self, key: &str) -> Option<OldEntry> {
        if self.is_complete() {
            return None;
        }
        let rel = self.rel(key)?;
        if rel.is_empty() || self.tombstoned(rel) {
            return None;
        }
        let md = std::fs::symlink_metadata(self.local(rel)).ok()?;
        Self::entry_of(&md)
    }

    fn list(&self, prefix: &str) -> Vec<(String, OldEntry)> {
        if self.is_complete() {
            return Vec::new();
        }
        let Some(rel) = self.rel(prefix) else {
            return Vec::new();
        };
        if !rel.is_empty() && self.tombstoned(rel) {
            return Vec::new();
        }
        let Ok(rd) = std::fs::read_dir(self.local(rel)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            // S3 keys are UTF-8: other names cannot be shown (the copier reports them).
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if self.tombstoned(&child) {
                continue;
            }
            if let Some(entry) = e.metadata().ok().as_ref().and_then(Self::entry_of) {
                out.push((name, entry));
            }
        }
        out
    }

    fn open(&self, key: &str) -> std::io::Result<std::fs::File> {
        let rel = self
            .rel(key)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        std::fs::File::open(self.local(rel))
    }

    async fn lock(&self, key: &str) -> PathGuard {
        let m = {
            let mut locks = self.locks.lock();
            let m = match locks.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    if locks.len() >= 4096 {
                        locks.retain(|_, w| w.strong_count() > 0);
                    }
                    locks.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            };
            m
        };
        m.lock_owned().await
    }

    async fn copy_locked(&self, key: &str) -> FsResult<()> {
        let Some(rel) = self.rel(key) else {
            return Ok(());
        };
        match self.copy_rel(key, rel).await {
            Ok(Some(bytes)) => {
                if !key.ends_with('/') {
                    self.progress.copied(bytes, true);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(copy_error(rel, e)),
        }
    }

    fn tombstone(&self, key: &str) -> std::io::Result<()> {
        let Some(rel) = self.rel(key) else {
            return Ok(());
        };
        if rel.is_empty() || std::fs::symlink_metadata(self.local(rel)).is_err() {
            return Ok(()); // the old tree has nothing there to hide
        }
        self.tombstones.lock().add(rel)
    }
}

/// Why OLD_DIR cannot serve a mount at `mountpoint` (both canonical), if it cannot: the old
/// tree may be neither the mount point, nor below it, nor above it (the copier would walk the
/// mount). The usual mistake is skipping `mv /data /data.old`.
pub fn overlap_error(old: &Path, mountpoint: &Path) -> Option<String> {
    let what = if old == mountpoint {
        "is the mount point itself"
    } else if old.starts_with(mountpoint) {
        "is inside the mount point"
    } else if mountpoint.starts_with(old) {
        "contains the mount point"
    } else {
        return None;
    };
    Some(format!(
        "--migrate-from {} {what}: move the old directory aside first (e.g. `mv /data /data.old`, then --migrate-from /data.old)",
        old.display()
    ))
}

/// The live migration `bucketfs mount --migrate-from` asks for, if any: opened (state loaded)
/// before mounting, so a bad OLD_DIR or a busy state directory stops the mount with one line.
pub fn from_mount_args(
    args: &crate::config::MountArgs,
    bucket: &str,
    fs_cfg: &crate::fs::FsConfig,
    store: Arc<dyn ObjectStore>,
    budget: crate::budget::MemoryBudget,
) -> Result<Option<Arc<Live>>, LiveError> {
    let Some(old) = &args.migrate_from else {
        return Ok(None);
    };
    if args.read_only {
        return Err(LiveError(
            "--migrate-from copies into the bucket: it cannot be used with --read-only".into(),
        ));
    }
    let canon = std::fs::canonicalize(old)
        .map_err(|e| LiveError(format!("--migrate-from {}: {e}", old.display())))?;
    let state_dir = args
        .migrate_state
        .clone()
        .unwrap_or_else(|| default_state_dir(&fs_cfg.cache_dir, bucket, &fs_cfg.prefix, &canon));
    let cfg = LiveConfig {
        old_dir: canon,
        prefix: fs_cfg.prefix.clone(),
        state_dir,
        parallel: args.migrate_parallel.clamp(1, 64),
        throttle: Duration::from_millis(args.migrate_throttle_ms),
        retry_after: Duration::from_secs(30),
        copy: CopyOptions {
            part_size: fs_cfg.part_size,
            part_concurrency: fs_cfg.max_inflight_parts,
            budget,
            ..CopyOptions::default()
        },
    };
    let live = Live::open(store, cfg)?;
    tracing::info!(
        old_dir = %live.old_dir().display(),
        status = %live.status_path().display(),
        tombstones = live.tombstone_count(),
        "live migration: paths missing in the bucket are served from the old directory while it is copied"
    );
    Ok(Some(live))
}
