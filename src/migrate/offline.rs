//! The offline migration: walk the local tree and list the bucket prefix, decide per path
//! (`plan`), copy in parallel (`copy`), delete extras with `--delete`, show progress, and
//! sum up. Nothing here decides what "identical" means, and nothing moves bytes itself.
//!
//! Order matters for a run killed at any moment: copies first, deletions after (a kill
//! leaves extra items, never missing ones); stale multipart uploads of the keys this run
//! writes are aborted before anything starts; download temp files of an earlier run are
//! removed during the walk; directory metadata is applied last (writing files into a
//! directory changes its mtime).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use super::copy::{self, CopyOptions, MD5_META, TEMP_PREFIX};
use super::plan::{self, Decision, LocalEntry, LocalKind, RemoteEntry, RemoteMeta, Rules};
use crate::meta::PosixMeta;
use crate::store::{ObjectInfo, ObjectStore, StoreError};

/// Failures listed by name in the summary; the rest are counted.
pub const MAX_LISTED_FAILURES: usize = 25;

/// One migration, fully resolved.
pub struct Job {
    pub local: PathBuf,
    pub bucket: String,
    /// `""` or ending in `/`.
    pub prefix: String,
    /// Local → bucket (else bucket → local).
    pub upload: bool,
    pub dry_run: bool,
    pub delete: bool,
    pub checksum: bool,
    pub jobs: usize,
    pub copy: CopyOptions,
    /// Between progress lines when stderr is not a terminal.
    pub progress_interval: Duration,
}

impl Job {
    pub fn remote_desc(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// What stops a whole run (per-path failures are in the outcome instead).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot list {what}: {err}")]
    List { what: String, err: StoreError },
    #[error("{0}")]
    Local(String),
}

/// Counters and lists filled by the workers.
#[derive(Default)]
pub struct Tally {
    pub copied: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub aborted_uploads: AtomicU64,
    pub removed_temps: AtomicU64,
    /// Copies by how they were verified.
    pub verified: Mutex<BTreeMap<&'static str, u64>>,
    pub failed: Mutex<Vec<(String, String)>>,
    /// Keys an upload was started for (a SIGINT/SIGTERM aborts their multipart uploads).
    pub touched: Mutex<HashSet<String>>,
    /// Set when SIGINT or SIGTERM stopped the run.
    pub interrupted: Mutex<Option<&'static str>>,
    /// `--dry-run`: what would change, one line each.
    pub planned: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, path: &str, why: impl ToString) {
        self.failed.lock().push((path.to_string(), why.to_string()));
    }
    fn plan(&self, line: String) {
        self.planned.lock().push(line);
    }
    fn failed_count(&self) -> u64 {
        self.failed.lock().len() as u64
    }
    fn copied(&self, r: &copy::CopyReport) {
        self.copied.fetch_add(1, Ordering::Relaxed);
        self.copied_bytes.fetch_add(r.bytes, Ordering::Relaxed);
        let how = match r.verified {
            copy::Verified::Etag => "ETag",
            copy::Verified::PartEtags => "part ETags",
            copy::Verified::ReRead => "read back",
            copy::Verified::StoredMd5 => "stored MD5",
            copy::Verified::SizeOnly => "size only",
        };
        *self.verified.lock().entry(how).or_insert(0) += 1;
    }
}

/// Files and bytes done, redrawn on a terminal, logged every `interval` otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    started: Instant,
    stop: AtomicBool,
}

impl Progress {
    fn new() -> Arc<Progress> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{bar:12} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        Arc::new(Progress {
            bar,
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
        })
    }

    fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self, t: &Tally) -> String {
        let (fd, ft) = (
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
        );
        let (bd, bt) = (
            self.bytes_done.load(Ordering::Relaxed),
            self.bytes_total.load(Ordering::Relaxed),
        );
        let secs = self.started.elapsed().as_secs_f64();
        let eta = if bd > 0 && bt > bd && secs > 0.5 {
            let rate = bd as f64 / secs;
            format!(", ETA {}", short_duration((bt - bd) as f64 / rate))
        } else {
            String::new()
        };
        format!(
            "{fd}/{ft} files, {}/{}{eta} ({} copied, {} skipped, {} failed)",
            HumanBytes(bd),
            HumanBytes(bt),
            t.copied.load(Ordering::Relaxed),
            t.skipped.load(Ordering::Relaxed),
            t.failed_count(),
        )
    }

    /// Redraws (terminal) or logs (otherwise) until `finish`.
    fn spawn_ticker(self: &Arc<Self>, tally: Arc<Tally>, interval: Duration) {
        let p = self.clone();
        tokio::spawn(async move {
            let tick = if p.bar.is_some() {
                Duration::from_millis(200)
            } else {
                interval.max(Duration::from_millis(100))
            };
            loop {
                tokio::time::sleep(tick).await;
                if p.stop.load(Ordering::Relaxed) {
                    return;
                }
                match &p.bar {
                    Some(b) => {
                        b.set_length(p.bytes_total.load(Ordering::Relaxed).max(1));
                        b.set_position(p.bytes_done.load(Ordering::Relaxed));
                        b.set_message(p.line(&tally));
                    }
                    None => eprintln!("bucketfs migrate: {}", p.line(&tally)),
                }
            }
        });
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `42s`, `3m05s`, `2h10m`: short enough for the one progress line.
fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A local path found by the walk.
#[derive(Clone, Debug)]
pub struct LocalItem {
    /// Relative path, `/`-separated (valid UTF-8: it becomes a key).
    pub rel: String,
    pub path: PathBuf,
    pub entry: LocalEntry,
}

fn local_entry(md: &std::fs::Metadata, empty_dir: bool) -> LocalEntry {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        LocalKind::Symlink
    } else if ft.is_dir() {
        LocalKind::Dir { empty: empty_dir }
    } else if ft.is_file() {
        LocalKind::File
    } else if copy::is_special(md.mode() & libc::S_IFMT) {
        let type_bits = md.mode() & libc::S_IFMT;
        let dev = type_bits == libc::S_IFCHR || type_bits == libc::S_IFBLK;
        LocalKind::Special {
            type_bits,
            rdev: if dev { md.rdev() as u32 } else { 0 },
        }
    } else {
        LocalKind::Other
    };
    LocalEntry {
        kind,
        size: if ft.is_dir() { 0 } else { md.len() },
        mtime: md.mtime(),
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// Walks `root` (not following symlinks). Names that cannot be keys are failures; temp files
/// of an interrupted download are removed (`remove_temps`) or ignored. Returns the items in
/// walk order (a directory before what is in it).
pub fn walk_local(root: &Path, tally: &Tally, remove_temps: bool) -> Vec<LocalItem> {
    let mut out = Vec::new();
    walk_dir(root, "", &mut out, tally, remove_temps);
    out
}

/// Walks one directory; returns how many entries below it migrate.
fn walk_dir(
    dir: &Path,
    rel: &str,
    out: &mut Vec<LocalItem>,
    tally: &Tally,
    remove_temps: bool,
) -> usize {
    let shown = if rel.is_empty() { "." } else { rel };
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            tally.fail(shown, format!("cannot read the directory: {e}"));
            // Not empty as far as anyone knows: no marker, no deletions below it.
            return 1;
        }
    };
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for e in rd {
        match e {
            Ok(e) => names.push(e.file_name()),
            Err(e) => {
                tally.fail(shown, format!("cannot read the directory: {e}"));
                return 1;
            }
        }
    }
    names.sort();
    let mut count = 0;
    for name in names {
        let bytes = name.as_bytes();
        let path = dir.join(&name);
        if bytes.starts_with(TEMP_PREFIX.as_bytes()) {
            if remove_temps && std::fs::remove_file(&path).is_ok() {
                tally.removed_temps.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let lossy = String::from_utf8_lossy(bytes);
        let child_rel_lossy = if rel.is_empty() {
            lossy.to_string()
        } else {
            format!("{rel}/{lossy}")
        };
        let n = match plan::local_name(bytes) {
            Ok(n) => n,
            Err(why) => {
                tally.fail(&child_rel_lossy, why);
                count += 1;
                continue;
            }
        };
        let child_rel = if rel.is_empty() {
            n.to_string()
        } else {
            format!("{rel}/{n}")
        };
        let md = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                tally.fail(&child_rel, format!("lstat: {e}"));
                count += 1;
                continue;
            }
        };
        count += 1;
        if md.is_dir() {
            let at = out.len();
            out.push(LocalItem {
                rel: child_rel.clone(),
                path: path.clone(),
                entry: local_entry(&md, false),
            });
            let below = walk_dir(&path, &child_rel, out, tally, remove_temps);
            out[at].entry.kind = LocalKind::Dir { empty: below == 0 };
        } else {
            out.push(LocalItem {
                rel: child_rel,
                path,
                entry: local_entry(&md, false),
            });
        }
    }
    count
}

/// Every object under `prefix` (no delimiter: the whole subtree).
pub async fn list_all(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<ObjectInfo>, StoreError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = store.list(prefix, None, token, None).await?;
        out.extend(page.objects);
        token = page.next_token;
        if token.is_none() {
            return Ok(out);
        }
    }
}

fn from_listing(info: &ObjectInfo) -> RemoteEntry {
    RemoteEntry {
        size: info.size,
        etag: info.etag.clone(),
        last_modified: info.last_modified.map(copy::secs),
        meta: None,
    }
}

fn from_head(info: &ObjectInfo) -> RemoteEntry {
    RemoteEntry {
        meta: Some(RemoteMeta {
            posix: PosixMeta::from_metadata(&info.metadata),
            md5: info.metadata.get(MD5_META).cloned(),
        }),
        ..from_listing(info)
    }
}

/// The copy options of one item: progress reported to `p`, bytes counted in `sent`.
fn item_copy(base: &CopyOptions, p: &Arc<Progress>, sent: &Arc<AtomicU64>) -> CopyOptions {
    let (p, sent) = (p.clone(), sent.clone());
    CopyOptions {
        on_bytes: Some(Arc::new(move |n| {
            sent.fetch_add(n, Ordering::Relaxed);
            p.add_bytes(n);
        })),
        ..base.clone()
    }
}

/// Counts an item as done: the bytes not yet reported by its copy are added.
fn item_done(p: &Progress, size: u64, sent: &AtomicU64) {
    let s = sent.load(Ordering::Relaxed);
    p.add_bytes(size.saturating_sub(s));
    p.files_done.fetch_add(1, Ordering::Relaxed);
}

/// Runs `job`; per-path failures are in the returned tally.
pub async fn run(job: &Job, store: &dyn ObjectStore) -> Result<Arc<Tally>, JobError> {
    let tally = Arc::new(Tally::default());
    let progress = Progress::new();
    progress.spawn_ticker(tally.clone(), job.progress_interval);
    let work = async {
        if job.upload {
            run_upload(job, store, &tally, &progress).await
        } else {
            run_download(job, store, &tally, &progress).await
        }
    };
    let r = tokio::select! {
        r = work => r,
        sig = interrupted() => {
            // The copies in flight are dropped: a single PUT either happened or not, a
            // download's temp file is swept by the next run; multipart uploads are aborted
            // now so nothing stays stored and billed.
            progress.finish();
            eprintln!("bucketfs migrate: {sig}: stopping (aborting the uploads in flight)");
            *tally.interrupted.lock() = Some(sig);
            // Bounded: a second Ctrl-C does not kill the process while this runs.
            let abort = abort_touched(job, store, &tally);
            if tokio::time::timeout(Duration::from_secs(20), abort).await.is_err() {
                eprintln!("bucketfs migrate: aborting the uploads timed out; the next run aborts them");
            }
            Ok(())
        }
    };
    progress.finish();
    r.map(|_| tally)
}

/// Resolves with the name of the first SIGINT or SIGTERM (never, if they cannot be caught).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => tokio::select! {
            _ = i.recv() => "interrupted (SIGINT)",
            _ = t.recv() => "terminated (SIGTERM)",
        },
        _ => std::future::pending().await,
    }
}

/// Aborts the incomplete multipart uploads of the keys this run started uploading.
async fn abort_touched(job: &Job, store: &dyn ObjectStore, tally: &Tally) {
    let touched = tally.touched.lock().clone();
    if touched.is_empty() {
        return;
    }
    let ups = match store.list_multipart_uploads(&job.prefix).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("bucketfs migrate: cannot list incomplete multipart uploads ({e}); the next run aborts them");
            return;
        }
    };
    for u in ups.into_iter().filter(|u| touched.contains(&u.key)) {
        if let Err(e) = store.abort_multipart(&u.key, &u.upload_id).await {
            eprintln!(
                "bucketfs migrate: cannot abort the upload of {} ({e}); the next run aborts it",
                u.key
            );
        }
    }
}

// ---- local → bucket ------------------------------------------------------------------

async fn run_upload(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Arc<Tally>,
    progress: &Arc<Progress>,
) -> Result<(), JobError> {
    let root = job.local.clone();
    let t = tally.clone();
    let items = tokio::task::spawn_blocking(move || walk_local(&root, &t, false))
        .await
        .map_err(|e| JobError::Local(format!("walking the source: {e}")))?;
    // What could not be walked (an unreadable directory) must not look deleted to --delete.
    let unwalked: Vec<String> = tally.failed.lock().iter().map(|(p, _)| p.clone()).collect();
    let remote: HashMap<String, ObjectInfo> = list_all(store, &job.prefix)
        .await
        .map_err(|err| JobError::List {
            what: job.remote_desc(),
            err,
        })?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let key_of = |it: &LocalItem| -> Option<String> {
        match it.entry.kind {
            LocalKind::Dir { empty: true } => Some(plan::key_for(&job.prefix, &it.rel, true)),
            LocalKind::Dir { empty: false } | LocalKind::Other => None,
            LocalKind::File | LocalKind::Symlink | LocalKind::Special { .. } => {
                Some(plan::key_for(&job.prefix, &it.rel, false))
            }
        }
    };
    let wanted: HashSet<String> = items.iter().filter_map(key_of).collect();
    abort_stale_uploads(job, store, tally, &wanted).await;

    let (files, bytes) = items
        .iter()
        .filter(|i| key_of(i).is_some())
        .fold((0, 0), |(f, b), i| (f + 1, b + i.entry.size));
    progress.add_total(files, bytes);
    let rules = Rules {
        checksum: job.checksum,
        owner: true,
    };
    futures::stream::iter(items.iter())
        .for_each_concurrent(job.jobs.max(1), |it| {
            let remote = &remote;
            async move {
                let Some(key) = key_of(it) else {
                    if it.entry.kind == LocalKind::Other {
                        tally.fail(
                            &it.rel,
                            "not a regular file, directory or symlink (a fifo, socket or device)",
                        );
                    }
                    return;
                };
                let sent = Arc::new(AtomicU64::new(0));
                upload_one(
                    job,
                    store,
                    tally,
                    progress,
                    &sent,
                    it,
                    &key,
                    remote.get(&key),
                    rules,
                )
                .await;
                item_done(progress, it.entry.size, &sent);
            }
        })
        .await;

    if job.delete {
        // Markers of local directories stay (they only mark what exists); so does the
        // prefix's own marker.
        let dirs: HashSet<String> = items
            .iter()
            .filter(|i| matches!(i.entry.kind, LocalKind::Dir { .. }))
            .map(|i| plan::key_for(&job.prefix, &i.rel, true))
            .collect();
        let below_unwalked = |k: &str| {
            let rel = k.strip_prefix(&job.prefix).unwrap_or(k);
            unwalked
                .iter()
                .any(|u| u == "." || rel == u || rel.starts_with(&format!("{u}/")))
        };
        let mut extra: Vec<&String> = remote
            .keys()
            .filter(|k| {
                !wanted.contains(*k)
                    && !dirs.contains(*k)
                    && **k != job.prefix
                    && !below_unwalked(k)
            })
            .collect();
        extra.sort();
        delete_keys(job, store, tally, extra).await;
    }
    Ok(())
}

/// Aborts the incomplete multipart uploads of keys this run writes: a run killed during a
/// multipart upload leaves one behind (invisible, but stored and billed).
async fn abort_stale_uploads(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Tally,
    wanted: &HashSet<String>,
) {
    let ups = match store.list_multipart_uploads(&job.prefix).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!(
                "bucketfs migrate: warning: cannot list incomplete multipart uploads ({e}); uploads left by an earlier run are not aborted"
            );
            return;
        }
    };
    for u in ups.into_iter().filter(|u| wanted.contains(&u.key)) {
        let rel = u
            .key
            .strip_prefix(&job.prefix)
            .unwrap_or(&u.key)
            .to_string();
        if job.dry_run {
            tally.plan(format!("abort   {rel}  (incomplete multipart upload)"));
            continue;
        }
        match store.abort_multipart(&u.key, &u.upload_id).await {
            Ok(()) | Err(StoreError::NotFound) => {
                tally.aborted_uploads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.fail(
                &rel,
                format!("cannot abort an incomplete multipart upload: {e}"),
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_one(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Tally,
    progress: &Arc<Progress>,
    sent: &Arc<AtomicU64>,
    it: &LocalItem,
    key: &str,
    listed: Option<&ObjectInfo>,
    rules: Rules,
) {
    let mut remote = listed.map(from_listing);
    let mut md5: Option<String> = None;
    // Each question is asked once, so this ends in at most three rounds.
    for _ in 0..4 {
        match plan::decide_upload(&it.entry, remote.as_ref(), md5.as_deref(), rules) {
            Decision::NeedHead => match store.head(key).await {
                Ok(info) => remote = Some(from_head(&info)),
                Err(StoreError::NotFound) => remote = None,
                Err(e) => return tally.fail(&it.rel, format!("S3: {e}")),
            },
            Decision::NeedLocalMd5 => match copy::local_md5(&it.path).await {
                Ok(m) => md5 = Some(m),
                Err(e) => return tally.fail(&it.rel, e),
            },
            Decision::Skip => {
                tally.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Decision::Refuse(why) => return tally.fail(&it.rel, why),
            Decision::Copy(why) => {
                if job.dry_run {
                    tally.plan(format!("upload  {}  ({why})", it.rel));
                    tally.copied.fetch_add(1, Ordering::Relaxed);
                    tally
                        .copied_bytes
                        .fetch_add(it.entry.size, Ordering::Relaxed);
                    return;
                }
                let opts = item_copy(&job.copy, progress, sent);
                tally.touched.lock().insert(key.to_string());
                match copy::upload_file(store, &it.path, key, &opts).await {
                    Ok(r) => tally.copied(&r),
                    Err(e) => tally.fail(&it.rel, e),
                }
                return;
            }
        }
    }
    tally.fail(&it.rel, "internal: no decision");
}

async fn delete_keys(job: &Job, store: &dyn ObjectStore, tally: &Tally, keys: Vec<&String>) {
    futures::stream::iter(keys)
        .for_each_concurrent(job.jobs.max(1), |k| async move {
            let rel = k.strip_prefix(&job.prefix).unwrap_or(k);
            if job.dry_run {
                tally.plan(format!("delete  {rel}  (not in the source)"));
                tally.deleted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match store.delete(k).await {
                Ok(()) | Err(StoreError::NotFound) => {
                    tally.deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tally.fail(rel, format!("cannot delete: S3: {e}")),
            }
        })
        .await;
}

// ---- bucket → local ------------------------------------------------------------------

async fn run_download(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Arc<Tally>,
    progress: &Arc<Progress>,
) -> Result<(), JobError> {
    let root = job.local.clone();
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(JobError::Local(format!(
                "{} exists and is not a directory",
                root.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !job.dry_run {
                std::fs::create_dir_all(&root).map_err(|e| {
                    JobError::Local(format!("cannot create {}: {e}", root.display()))
                })?;
            }
        }
        Err(e) => return Err(JobError::Local(format!("{}: {e}", root.display()))),
    }
    let objects = list_all(store, &job.prefix)
        .await
        .map_err(|err| JobError::List {
            what: job.remote_desc(),
            err,
        })?;
    let mut tree = plan::remote_tree(&job.prefix, objects.into_iter().map(|o| (o.key.clone(), o)));
    // A key named like a download temp file would be removed by the next run's walk.
    let reserved: Vec<String> = tree
        .files
        .keys()
        .filter(|r| {
            r.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        })
        .cloned()
        .collect();
    for r in reserved {
        if let Some(o) = tree.files.remove(&r) {
            tree.refused.push((
                o.key,
                format!(
                    "the name starts with `{TEMP_PREFIX}`, which migrate keeps for its temp files"
                ),
            ));
        }
    }
    for (key, why) in &tree.refused {
        tally.fail(key, why);
    }
    let (r, t, rm) = (root.clone(), tally.clone(), !job.dry_run);
    let local: BTreeMap<String, LocalItem> = if root.is_dir() {
        tokio::task::spawn_blocking(move || walk_local(&r, &t, rm))
            .await
            .map_err(|e| JobError::Local(format!("walking the destination: {e}")))?
            .into_iter()
            .map(|i| (i.rel.clone(), i))
            .collect()
    } else {
        BTreeMap::new()
    };

    // Directories, parents first (a parent sorts before its children).
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let mut created: BTreeSet<String> = BTreeSet::new();
    for d in &tree.dirs {
        if broken.iter().any(|b| d.starts_with(&format!("{b}/"))) {
            broken.insert(d.clone());
            continue;
        }
        let path = root.join(d);
        let existing = local.get(d).map(|i| i.entry.kind);
        match existing {
            Some(LocalKind::Dir { .. }) => continue,
            Some(_) if !job.delete => {
                tally.fail(d, "a file is in the way of a directory (use --delete)");
                broken.insert(d.clone());
                continue;
            }
            _ => {}
        }
        if job.dry_run {
            tally.plan(format!("mkdir   {d}"));
            created.insert(d.clone());
            continue;
        }
        if existing.is_some() {
            let _ = std::fs::remove_file(&path);
            tally.deleted.fetch_add(1, Ordering::Relaxed);
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {
                created.insert(d.clone());
                // The mount's default directory mode (umask aside).
                let _ = copy::apply_dir_meta(&path, &PosixMeta::default(), 0o755, false);
            }
            Err(e) => {
                tally.fail(d, format!("mkdir: {e}"));
                broken.insert(d.clone());
            }
        }
    }

    let (files, bytes) = tree
        .files
        .values()
        .fold((0, 0), |(f, b), o| (f + 1, b + o.size));
    progress.add_total(files, bytes);
    let rules = Rules {
        checksum: job.checksum,
        owner: job.copy.restore_owner,
    };
    let broken = &broken;
    let local_ref = &local;
    futures::stream::iter(tree.files.iter())
        .for_each_concurrent(job.jobs.max(1), |(rel, info)| async move {
            let sent = Arc::new(AtomicU64::new(0));
            let parent_broken = rel
                .rsplit_once('/')
                .is_some_and(|(p, _)| broken.contains(p));
            if parent_broken {
                tally.fail(rel, "its directory could not be created");
            } else {
                download_one(
                    job, store, tally, progress, &sent, rel, info, local_ref, rules,
                )
                .await;
            }
            item_done(progress, info.size, &sent);
        })
        .await;

    if job.delete {
        delete_local(job, tally, &tree.files, &tree.dirs, &local);
    }
    if !job.dry_run {
        restore_dir_meta(job, store, tally, &tree.markers).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn download_one(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Tally,
    progress: &Arc<Progress>,
    sent: &Arc<AtomicU64>,
    rel: &str,
    listed: &ObjectInfo,
    local: &BTreeMap<String, LocalItem>,
    rules: Rules,
) {
    let path = job.local.join(rel);
    let mut remote = from_listing(listed);
    let mut head: Option<ObjectInfo> = None;
    let mut here = local.get(rel).map(|i| i.entry.clone());
    let mut md5: Option<String> = None;
    for _ in 0..5 {
        match plan::decide_download(&remote, here.as_ref(), md5.as_deref(), rules) {
            Decision::NeedHead => match store.head(&listed.key).await {
                Ok(info) => {
                    remote = from_head(&info);
                    head = Some(info);
                }
                Err(StoreError::NotFound) => {
                    return tally.fail(rel, "the object was deleted while migrating")
                }
                Err(e) => return tally.fail(rel, format!("S3: {e}")),
            },
            Decision::NeedLocalMd5 => match copy::local_md5(&path).await {
                Ok(m) => md5 = Some(m),
                Err(e) => return tally.fail(rel, e),
            },
            Decision::Skip => {
                tally.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Decision::Refuse(why) => {
                let is_dir = matches!(here.as_ref().map(|e| e.kind), Some(LocalKind::Dir { .. }));
                if !(job.delete && is_dir) {
                    return tally.fail(rel, why);
                }
                // --delete: the directory in the way goes (after a dry run says so).
                if job.dry_run {
                    tally.plan(format!(
                        "delete  {rel}/  (a directory where the bucket has a file)"
                    ));
                } else if let Err(e) = std::fs::remove_dir_all(&path) {
                    return tally.fail(rel, format!("cannot remove the directory in the way: {e}"));
                }
                tally.deleted.fetch_add(1, Ordering::Relaxed);
                here = None;
            }
            Decision::Copy(why) => {
                if job.dry_run {
                    tally.plan(format!("download {rel}  ({why})"));
                    tally.copied.fetch_add(1, Ordering::Relaxed);
                    tally.copied_bytes.fetch_add(listed.size, Ordering::Relaxed);
                    return;
                }
                let info = match head {
                    Some(h) => h,
                    None => match store.head(&listed.key).await {
                        Ok(h) => h,
                        Err(e) => return tally.fail(rel, format!("S3: {e}")),
                    },
                };
                let opts = item_copy(&job.copy, progress, sent);
                match copy::download_object_with(store, &info, &path, &opts).await {
                    Ok(r) => tally.copied(&r),
                    Err(e) => tally.fail(rel, e),
                }
                return;
            }
        }
    }
    tally.fail(rel, "internal: no decision");
}

/// `--delete` downwards: local paths the bucket does not have go, files and whole
/// directories (each removed once, not also everything below it).
fn delete_local(
    job: &Job,
    tally: &Tally,
    files: &BTreeMap<String, ObjectInfo>,
    dirs: &BTreeSet<String>,
    local: &BTreeMap<String, LocalItem>,
) {
    let mut removed_dir: Option<String> = None;
    for (rel, it) in local {
        if removed_dir
            .as_ref()
            .is_some_and(|d| rel.starts_with(&format!("{d}/")))
        {
            continue;
        }
        let is_dir = matches!(it.entry.kind, LocalKind::Dir { .. });
        let keep = if is_dir {
            dirs.contains(rel)
        } else {
            files.contains_key(rel) || dirs.contains(rel)
        };
        if keep {
            continue;
        }
        if job.dry_run {
            tally.plan(format!(
                "delete  {rel}{}  (not in the bucket)",
                if is_dir { "/" } else { "" }
            ));
            tally.deleted.fetch_add(1, Ordering::Relaxed);
        } else {
            let r = if is_dir {
                std::fs::remove_dir_all(&it.path)
            } else {
                std::fs::remove_file(&it.path)
            };
            match r {
                Ok(()) => {
                    tally.deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tally.fail(rel, format!("cannot delete: {e}")),
            }
        }
        if is_dir {
            removed_dir = Some(rel.clone());
        }
    }
}

/// Mode, owner and mtime stored on `dir/` markers, applied once everything inside is written.
async fn restore_dir_meta(
    job: &Job,
    store: &dyn ObjectStore,
    tally: &Tally,
    markers: &BTreeMap<String, ObjectInfo>,
) {
    let items: Vec<(&String, &ObjectInfo)> = markers.iter().collect();
    let heads: Vec<(String, Result<ObjectInfo, StoreError>)> = futures::stream::iter(items)
        .map(|(rel, o)| async move { (rel.clone(), store.head(&o.key).await) })
        .buffer_unordered(job.jobs.max(1))
        .collect()
        .await;
    for (rel, h) in heads {
        let info = match h {
            Ok(i) => i,
            // A server that turns markers into folders may not answer a HEAD for them.
            Err(_) => continue,
        };
        let posix = PosixMeta::from_metadata(&info.metadata);
        if posix.mode.is_none() && posix.mtime.is_none() {
            continue;
        }
        let path = job.local.join(&rel);
        if let Err(e) = copy::apply_dir_meta(&path, &posix, 0o755, job.copy.restore_owner) {
            tally.fail(&rel, format!("directory attributes: {e}"));
        }
    }
}

/// The one-screen summary.
pub fn summary(job: &Job, tally: &Tally, took: Duration) -> String {
    let (from, to) = if job.upload {
        (job.local.display().to_string(), job.remote_desc())
    } else {
        (job.remote_desc(), job.local.display().to_string())
    };
    let mut s = String::new();
    let would = if job.dry_run { "would be " } else { "" };
    s.push_str(&format!(
        "bucketfs migrate {from} -> {to}{}\n",
        if job.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "  {would}copied:  {} ({})\n",
        tally.copied.load(Ordering::Relaxed),
        HumanBytes(tally.copied_bytes.load(Ordering::Relaxed))
    ));
    s.push_str(&format!(
        "  skipped: {} (already identical)\n",
        tally.skipped.load(Ordering::Relaxed)
    ));
    s.push_str(&format!(
        "  {would}deleted: {}{}\n",
        tally.deleted.load(Ordering::Relaxed),
        if job.delete { "" } else { " (no --delete)" }
    ));
    let verified = tally.verified.lock().clone();
    if !verified.is_empty() {
        let parts: Vec<String> = verified
            .iter()
            .map(|(k, n)| format!("{n} by {k}"))
            .collect();
        s.push_str(&format!("  verified: {}\n", parts.join(", ")));
    }
    let aborted = tally.aborted_uploads.load(Ordering::Relaxed);
    if aborted > 0 {
        s.push_str(&format!(
            "  aborted: {aborted} incomplete multipart upload(s) left by an earlier run\n"
        ));
    }
    let temps = tally.removed_temps.load(Ordering::Relaxed);
    if temps > 0 {
        s.push_str(&format!(
            "  removed: {temps} temp file(s) left by an earlier run\n"
        ));
    }
    if let Some(sig) = *tally.interrupted.lock() {
        s.push_str(&format!(
            "  {sig}: not finished; what was copied is complete and verified, run again for the rest\n"
        ));
    }
    let mut failed = tally.failed.lock().clone();
    failed.sort();
    s.push_str(&format!("  failed:  {}\n", failed.len()));
    for (p, why) in failed.iter().take(MAX_LISTED_FAILURES) {
        s.push_str(&format!("    {p}: {why}\n"));
    }
    if failed.len() > MAX_LISTED_FAILURES {
        s.push_str(&format!(
            "    ... and {} more\n",
            failed.len() - MAX_LISTED_FAILURES
        ));
    }
    s.push_str(&format!("  took {:.1} s\n", took.as_secs_f64()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;
    use crate::upload::MIB;
    use std::os::unix::fs::PermissionsExt;

    fn job(local: &Path, upload: bool) -> Job {
        Job {
            local: local.to_path_buf(),
            bucket: "b".into(),
            prefix: "p/".into(),
            upload,
            dry_run: false,
            delete: false,
            checksum: false,
            jobs: 4,
            copy: CopyOptions {
                part_size: 5 * MIB,
                part_concurrency: 2,
                restore_owner: false,
                ..CopyOptions::default()
            },
            progress_interval: Duration::from_secs(3600),
        }
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("media/public/icons")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("media/public/icons/a b.svg"), b"<svg/>").unwrap();
        std::fs::write(root.join("media/ü.png"), vec![7u8; 6 * MIB as usize]).unwrap();
        std::fs::write(root.join("user_settings.py"), b"x = 1\n").unwrap();
        std::fs::set_permissions(
            root.join("user_settings.py"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("media/ü.png", root.join("link")).unwrap();
    }

    #[tokio::test]
    async fn up_rerun_down_delete_with_memstore() {
        let store = MemStore::new();
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let t = run(&job(src.path(), true), &store).await.unwrap();
        assert!(t.failed.lock().is_empty(), "{:?}", t.failed.lock());
        assert_eq!(t.copied.load(Ordering::Relaxed), 5);
        let keys: Vec<String> = store.snapshot().keys().cloned().collect();
        assert!(keys.contains(&"p/empty/".to_string()), "{keys:?}");
        // Rerun: everything identical.
        let t = run(&job(src.path(), true), &store).await.unwrap();
        assert_eq!(t.copied.load(Ordering::Relaxed), 0);
        assert_eq!(t.skipped.load(Ordering::Relaxed), 5);

        let dst = tempfile::tempdir().unwrap();
        let t = run(&job(dst.path(), false), &store).await.unwrap();
        assert!(t.failed.lock().is_empty(), "{:?}", t.failed.lock());
        assert_eq!(
            std::fs::read(dst.path().join("media/ü.png")).unwrap(),
            std::fs::read(src.path().join("media/ü.png")).unwrap()
        );
        assert!(dst.path().join("empty").is_dir());
        let m = std::fs::metadata(dst.path().join("user_settings.py")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        let t = run(&job(dst.path(), false), &store).await.unwrap();
        assert_eq!(
            t.copied.load(Ordering::Relaxed),
            0,
            "{:?}",
            t.planned.lock()
        );

        // --delete upwards: a removed local file disappears from the bucket.
        std::fs::remove_file(src.path().join("user_settings.py")).unwrap();
        let mut j = job(src.path(), true);
        j.delete = true;
        j.dry_run = true;
        let t = run(&j, &store).await.unwrap();
        assert_eq!(t.deleted.load(Ordering::Relaxed), 1);
        assert!(store.snapshot().contains_key("p/user_settings.py"));
        j.dry_run = false;
        run(&j, &store).await.unwrap();
        assert!(!store.snapshot().contains_key("p/user_settings.py"));
        // ... and downwards.
        let mut j = job(dst.path(), false);
        j.delete = true;
        std::fs::write(dst.path().join("extra"), b"x").unwrap();
        run(&j, &store).await.unwrap();
        assert!(!dst.path().join("extra").exists());
        assert!(!dst.path().join("user_settings.py").exists());
    }

    #[tokio::test]
    async fn delete_spares_what_could_not_be_walked() {
        use std::os::unix::ffi::OsStrExt;
        let store = MemStore::new();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("keep"), b"k").unwrap();
        // A directory whose name is not UTF-8: reported, and its lossy path is off limits.
        let bad = src.path().join(std::ffi::OsStr::from_bytes(b"d\xff"));
        std::fs::create_dir(&bad).unwrap();
        store.insert("p/d\u{FFFD}/f", b"x");
        store.insert("p/gone", b"x");
        let mut j = job(src.path(), true);
        j.delete = true;
        let t = run(&j, &store).await.unwrap();
        assert_eq!(t.failed.lock().len(), 1, "{:?}", t.failed.lock());
        let keys: Vec<String> = store.snapshot().keys().cloned().collect();
        assert_eq!(
            keys,
            vec!["p/d\u{FFFD}/f".to_string(), "p/keep".to_string()]
        );
    }

    #[tokio::test]
    async fn stale_uploads_are_aborted_and_bad_keys_reported() {
        let store = MemStore::new();
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        store
            .create_multipart("p/media/ü.png", &Default::default())
            .await
            .unwrap();
        store
            .create_multipart("p/unrelated", &Default::default())
            .await
            .unwrap();
        let t = run(&job(src.path(), true), &store).await.unwrap();
        assert_eq!(t.aborted_uploads.load(Ordering::Relaxed), 1);
        assert_eq!(store.open_uploads(), 1, "only the key this run writes");
        store.insert("p/a//b", b"x");
        store.insert(&format!("p/{}", "n".repeat(300)), b"x");
        store.insert(&format!("p/media/{TEMP_PREFIX}x"), b"x");
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join(format!("{TEMP_PREFIX}left")), b"x").unwrap();
        let t = run(&job(dst.path(), false), &store).await.unwrap();
        assert_eq!(t.failed.lock().len(), 3, "{:?}", t.failed.lock());
        assert_eq!(t.removed_temps.load(Ordering::Relaxed), 1);
        let s = summary(&job(dst.path(), false), &t, Duration::from_secs(1));
        assert!(s.contains("p/a//b"), "{s}");
    }
}
