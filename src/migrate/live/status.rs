//! Progress of a live migration: counters shared by the copier and the on-demand copies,
//! written as a JSON status file (atomically: a temp file renamed over it) and logged.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;

/// At most this many failures are listed in the status file (the count is exact).
const MAX_LISTED_FAILURES: usize = 200;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Files (and symlinks) found in the old tree so far.
    pub files_total: u64,
    pub bytes_total: u64,
    /// Uploaded by the copier in this pass.
    pub files_copied: u64,
    pub bytes_copied: u64,
    /// Uploaded because the mount needed them in the bucket (a write-open that keeps the
    /// content, chmod, rename); the copier then finds them present.
    pub files_on_demand: u64,
    pub bytes_on_demand: u64,
    /// Already in the bucket (an earlier run, an on-demand copy, or a newer write through
    /// the mount).
    pub files_present: u64,
    /// Deleted through the mount: never copied.
    pub files_deleted: u64,
    /// Empty directories written as `dir/` markers.
    pub dirs_marked: u64,
    pub failed: Vec<(String, String)>,
    pub failed_count: u64,
    /// The walk of the old tree has finished in this pass.
    pub walk_done: bool,
    pub complete: bool,
    pub pass: u32,
}

impl Counts {
    pub fn remaining(&self) -> u64 {
        self.files_total
            .saturating_sub(self.files_copied)
            .saturating_sub(self.files_present)
            .saturating_sub(self.files_deleted)
            .saturating_sub(self.failed_count)
    }
}

pub struct Progress {
    path: PathBuf,
    old_dir: String,
    prefix: String,
    started: SystemTime,
    counts: Mutex<Counts>,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Progress {
    pub fn new(path: PathBuf, old_dir: &Path, prefix: &str) -> Self {
        Progress {
            path,
            old_dir: old_dir.display().to_string(),
            prefix: prefix.to_string(),
            started: SystemTime::now(),
            counts: Mutex::new(Counts::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> Counts {
        self.counts.lock().clone()
    }

    /// A new pass of the copier starts: counters from zero.
    pub fn start_pass(&self) {
        let mut c = self.counts.lock();
        let pass = c.pass + 1;
        *c = Counts {
            pass,
            ..Counts::default()
        };
    }

    pub fn found(&self, bytes: u64) {
        let mut c = self.counts.lock();
        c.files_total += 1;
        c.bytes_total += bytes;
    }

    /// An upload finished; `on_demand` when the mount asked for it (not the copier).
    pub fn copied(&self, bytes: u64, on_demand: bool) {
        let mut c = self.counts.lock();
        if on_demand {
            c.files_on_demand += 1;
            c.bytes_on_demand += bytes;
        } else {
            c.files_copied += 1;
            c.bytes_copied += bytes;
        }
    }

    /// The copier found the file in the bucket already.
    pub fn present(&self) {
        self.counts.lock().files_present += 1;
    }

    pub fn deleted(&self) {
        self.counts.lock().files_deleted += 1;
    }

    pub fn marked_dir(&self) {
        self.counts.lock().dirs_marked += 1;
    }

    pub fn failed(&self, path: &str, reason: String) {
        let mut c = self.counts.lock();
        c.failed_count += 1;
        if c.failed.len() < MAX_LISTED_FAILURES {
            c.failed.push((path.to_string(), reason));
        }
    }

    pub fn walk_done(&self) {
        self.counts.lock().walk_done = true;
    }

    pub fn set_complete(&self) {
        self.counts.lock().complete = true;
    }

    pub fn to_json(&self) -> serde_json::Value {
        let c = self.snapshot();
        serde_json::json!({
            "old_dir": self.old_dir,
            "prefix": self.prefix,
            "started": epoch(self.started),
            "updated": epoch(SystemTime::now()),
            "pass": c.pass,
            "walk_done": c.walk_done,
            "complete": c.complete,
            "total": c.files_total,
            "bytes_total": c.bytes_total,
            "copied": c.files_copied,
            "bytes_copied": c.bytes_copied,
            "copied_on_demand": c.files_on_demand,
            "skipped": c.files_present + c.files_deleted,
            "already_in_bucket": c.files_present,
            "deleted": c.files_deleted,
            "dirs_marked": c.dirs_marked,
            "remaining": c.remaining(),
            "failed": c.failed_count,
            "failures": c.failed.iter().map(|(p, r)| serde_json::json!({"path": p, "reason": r})).collect::<Vec<_>>(),
        })
    }

    /// Writes the status file (temp + rename: a reader never sees half of it).
    pub fn write(&self) {
        let text = match serde_json::to_vec_pretty(&self.to_json()) {
            Ok(t) => t,
            Err(_) => return,
        };
        let tmp = self.path.with_extension("json.tmp");
        let r = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = r {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the migration status file");
        }
    }

    /// One log line with where things stand.
    pub fn log(&self) {
        let c = self.snapshot();
        tracing::info!(
            pass = c.pass,
            copied = c.files_copied,
            copied_mib = c.bytes_copied / (1024 * 1024),
            already_in_bucket = c.files_present,
            deleted = c.files_deleted,
            failed = c.failed_count,
            found = c.files_total,
            found_mib = c.bytes_total / (1024 * 1024),
            remaining = c.remaining(),
            walk_done = c.walk_done,
            "migration progress"
        );
    }
}
