//! The background copier of a live migration: walks the old tree directory by directory,
//! lists the bucket once per directory, and uploads (verified, with Content-Type and POSIX
//! metadata, `migrate::copy::upload_file`) every file the bucket lacks and nobody deleted.
//! Each upload holds the path's lock and checks the bucket again under it, so a write through
//! the mount always wins. A pass with failures is retried; a restart re-walks and compares,
//! which continues where the last run stopped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Live;
use crate::fs::fallback::Fallback;
use crate::fs::Fs;

/// How often the status file is rewritten (a small JSON file, renamed into place) ...
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// ... and every how many of those a progress line is logged (10 s).
const LOG_EVERY_TICKS: u32 = 5;
/// Longest pause between two passes that had failures.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(15 * 60);

/// What the old tree holds in one directory entry, for the copier.
enum Local {
    Dir,
    /// A regular file or a symlink (both become one object), with its size.
    Object(u64),
    Other(&'static str),
}

struct Job {
    rel: String,
    key: String,
    /// A `dir/` marker for an empty directory, not a file.
    marker: bool,
}

/// Jobs the walker may queue ahead of the workers.
const QUEUE: usize = 1024;

/// Runs the migration to the end (until a pass copies everything), then returns.
pub async fn run(live: Arc<Live>, fs: Arc<Fs>) {
    let started = SystemTime::now();
    abort_left_uploads(&live, started).await;
    let ticker = {
        let live = live.clone();
        tokio::spawn(async move {
            let mut ticks = 0u32;
            loop {
                live.progress.write();
                tokio::time::sleep(STATUS_EVERY).await;
                ticks += 1;
                if ticks % LOG_EVERY_TICKS == 0 {
                    live.progress.log();
                }
            }
        })
    };
    // Permanent failures (a fifo, a name that is not UTF-8) would re-walk the whole tree every
    // `retry_after`: the pause doubles after each failed pass, up to MAX_RETRY_PAUSE.
    let mut pause = live.cfg.retry_after;
    loop {
        live.progress.start_pass();
        walk(&live, &fs).await;
        live.progress.walk_done();
        let c = live.progress.snapshot();
        if c.failed_count == 0 {
            live.set_complete();
            live.progress.write();
            tracing::info!(
                copied = c.files_copied,
                copied_mib = c.bytes_copied / (1024 * 1024),
                already_in_bucket = c.files_present,
                deleted = c.files_deleted,
                old_dir = %live.old_dir().display(),
                status = %live.status_path().display(),
                "migration complete: every file of the old directory is in the bucket; --migrate-from can be removed"
            );
            break;
        }
        live.progress.write();
        tracing::warn!(
            failed = c.failed_count,
            status = %live.status_path().display(),
            "migration pass finished with failures (listed in the status file); retrying in {} s",
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE.max(live.cfg.retry_after));
    }
    ticker.abort();
}

/// A multipart upload that a killed run left open for a key of the old tree is aborted: the
/// file is copied again whole (S3 bills incomplete uploads until they are aborted).
async fn abort_left_uploads(live: &Live, started: SystemTime) {
    let uploads = match live.store.list_multipart_uploads(&live.cfg.prefix).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list incomplete multipart uploads (left ones are not aborted)");
            return;
        }
    };
    let mut aborted = 0;
    for u in uploads {
        let ours = live
            .rel(&u.key)
            .is_some_and(|rel| !rel.is_empty() && live.local(rel).symlink_metadata().is_ok());
        let older = u.initiated.is_none_or(|t| t < started);
        if !(ours && older) {
            continue;
        }
        match live.store.abort_multipart(&u.key, &u.upload_id).await {
            Ok(()) => aborted += 1,
            Err(e) => {
                tracing::warn!(key = %u.key, error = %e, "cannot abort an incomplete multipart upload")
            }
        }
    }
    if aborted > 0 {
        tracing::info!(
            aborted,
            "aborted incomplete multipart uploads an earlier run left for files of the old directory"
        );
    }
}

/// Entries of one directory of the old tree (blocking I/O, off the async threads).
async fn read_local(
    path: std::path::PathBuf,
) -> std::io::Result<Vec<(Result<String, String>, Local)>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&path)? {
            let e = e?;
            let name = e
                .file_name()
                .into_string()
                .map_err(|n| n.to_string_lossy().into_owned());
            let local = match e.metadata() {
                Ok(md) if md.is_dir() => Local::Dir,
                Ok(md) if md.is_file() || md.file_type().is_symlink() => Local::Object(md.len()),
                Ok(_) => Local::Other("not a regular file, directory or symlink"),
                Err(_) => Local::Other("cannot stat"),
            };
            out.push((name, local));
        }
        Ok(out)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The bucket's names in directory `prefix`: objects and sub-prefixes (all pages).
async fn list_bucket(
    live: &Live,
    prefix: &str,
) -> Result<(HashSet<String>, HashSet<String>), crate::store::StoreError> {
    let mut objects = HashSet::new();
    let mut dirs = HashSet::new();
    let mut token = None;
    loop {
        let page = live.store.list(prefix, Some("/"), token, None).await?;
        for o in page.objects {
            if let Some(n) = o.key.strip_prefix(prefix) {
                objects.insert(n.to_string());
            }
        }
        for p in page.prefixes {
            if let Some(n) = p.strip_prefix(prefix) {
                dirs.insert(n.trim_end_matches('/').to_string());
            }
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    Ok((objects, dirs))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// One pass over the old tree: a walker lists both sides directory by directory and queues
/// what is missing; `--migrate-parallel` workers copy from the queue (so parallelism does not
/// depend on how the files are spread over directories).
async fn walk(live: &Arc<Live>, fs: &Arc<Fs>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
    let rx = tokio::sync::Mutex::new(rx);
    let worker = || async {
        loop {
            let job = rx.lock().await.recv().await;
            let Some(job) = job else { break };
            copy_one(live, fs, job).await;
            if !live.cfg.throttle.is_zero() {
                tokio::time::sleep(live.cfg.throttle).await;
            }
        }
    };
    let workers = futures::future::join_all((0..live.cfg.parallel.max(1)).map(|_| worker()));
    let walker = async move {
        walk_dirs(live, &tx).await;
        drop(tx); // the workers end once the queue is drained
    };
    futures::join!(walker, workers);
}

async fn walk_dirs(live: &Arc<Live>, tx: &tokio::sync::mpsc::Sender<Job>) {
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        if !rel.is_empty() && live.tombstoned(&rel) {
            continue;
        }
        let entries = match read_local(live.local(&rel)).await {
            Ok(e) => e,
            Err(e) => {
                live.progress
                    .failed(&format!("{rel}/"), format!("reading the directory: {e}"));
                continue;
            }
        };
        let prefix = if rel.is_empty() {
            live.cfg.prefix.clone()
        } else {
            format!("{}{rel}/", live.cfg.prefix)
        };
        let (objects, subdirs) = match list_bucket(live, &prefix).await {
            Ok(l) => l,
            Err(e) => {
                live.progress
                    .failed(&format!("{rel}/"), format!("listing the bucket: {e}"));
                continue;
            }
        };
        if entries.is_empty() && !rel.is_empty() && objects.is_empty() && subdirs.is_empty() {
            // An empty directory: a `dir/` marker keeps it once the old tree is gone.
            let job = Job {
                key: prefix.clone(),
                rel: rel.clone(),
                marker: true,
            };
            if tx.send(job).await.is_err() {
                return;
            }
            continue;
        }
        for (name, local) in entries {
            let name = match name {
                Ok(n) => n,
                Err(lossy) => {
                    live.progress.failed(
                        &join(&rel, &lossy),
                        "the name is not UTF-8 (S3 keys are): rename it in the old directory"
                            .into(),
                    );
                    continue;
                }
            };
            let child = join(&rel, &name);
            match local {
                Local::Dir if objects.contains(&name) => {
                    // Copying below it would hide the bucket's file behind a directory.
                    live.progress.failed(
                        &child,
                        "the bucket has a file of that name (the mount shows the file)".into(),
                    );
                }
                Local::Dir => dirs.push(child),
                Local::Other(why) => {
                    if !live.tombstoned(&child) {
                        live.progress.failed(&child, why.into());
                    }
                }
                Local::Object(size) => {
                    live.progress.found(size);
                    if live.tombstoned(&child) {
                        live.progress.deleted();
                    } else if objects.contains(&name) {
                        live.progress.present();
                    } else if subdirs.contains(&name) {
                        live.progress.failed(
                            &child,
                            "the bucket has a directory of that name (the mount shows the directory)"
                                .into(),
                        );
                    } else {
                        let job = Job {
                            key: format!("{prefix}{name}"),
                            rel: child,
                            marker: false,
                        };
                        if tx.send(job).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn copy_one(live: &Live, fs: &Fs, job: Job) {
    let _g = live.lock(&job.key).await;
    match live.copy_rel(&job.key, &job.rel).await {
        Ok(Some(bytes)) => {
            if job.marker {
                live.progress.marked_dir();
            } else {
                live.progress.copied(bytes, false);
            }
            fs.migrated(job.key.trim_end_matches('/'));
        }
        Ok(None) if job.marker => {}
        Ok(None) if live.tombstoned(&job.rel) => live.progress.deleted(),
        Ok(None) => live.progress.present(),
        Err(e) => {
            tracing::warn!(path = %job.rel, error = %e, "copy failed (retried in the next pass)");
            live.progress.failed(&job.rel, e.to_string());
        }
    }
}
