//! Running the mount: checks before mounting (each failure one clear line), the FUSE
//! session, signals, and an exit status that says whether every write reached the bucket.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;

use crate::config::MountArgs;
use crate::fs::Fs;
use crate::fuse::FuseAdapter;
use crate::notify;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};

static UNSAVED: AtomicUsize = AtomicUsize::new(0);

/// Counts files that could not be uploaded before exit (the exit status reports them).
pub fn note_unsaved(n: usize) {
    UNSAVED.fetch_add(n, Ordering::SeqCst);
}

/// Files that could not be uploaded so far.
pub fn unsaved() -> usize {
    UNSAVED.load(Ordering::SeqCst)
}

/// `f_type` of a FUSE file system (statfs(2)).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether the mount at `p` answers: statfs reports a FUSE file system there (so the mount
/// is in place over the directory) and a stat of its root comes back, which takes a round
/// trip through this daemon's session (INIT, then GETATTR).
fn mount_answers(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string and `st` a properly sized, writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let fuse = st.f_type as i64 == FUSE_SUPER_MAGIC;
    fuse && std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

/// Waits until the mount answers; false if it does not within `limit` or the session ends.
fn wait_until_answers(p: &Path, limit: Duration, session_ended: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if mount_answers(p) {
            return true;
        }
        if session_ended() || std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The kernel reads ahead at most the mount's bdi `read_ahead_kb` (128 KiB by default), so
/// without this the 1 MiB FUSE reads negotiated at init are never used: applications that read
/// in small blocks send 128 KiB requests. Raised to [`crate::fuse::MAX_IO`]; needs root (sysfs),
/// and failing is harmless.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = m.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let want = crate::fuse::MAX_IO / 1024;
    let now = std::fs::read_to_string(&path)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    if now.is_some_and(|n| n < want) {
        if let Err(e) = std::fs::write(&path, want.to_string()) {
            tracing::debug!(path, error = %e, "cannot raise the kernel's read-ahead");
        }
    }
}

/// Exit statuses.
pub const EXIT_OK: i32 = 0;
pub const EXIT_UNSAVED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn is_mount_point(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| m.replace("\\040", " ") == want)
            .unwrap_or(false)
    })
}

/// The mount point must exist, be a directory, and not be mounted already.
pub fn check_mountpoint(p: &Path) -> Result<PathBuf, StartError> {
    let canon = std::fs::canonicalize(p).map_err(|e| {
        StartError(if e.raw_os_error() == Some(libc::ENOTCONN) {
            // A FUSE daemon died and left its mount behind.
            format!(
                "mount point {} holds a dead FUSE mount: clear it with `fusermount3 -u {}`",
                p.display(),
                p.display()
            )
        } else {
            format!(
                "mount point {} does not exist: create it with `mkdir -p {}`",
                p.display(),
                p.display()
            )
        })
    })?;
    if !canon.is_dir() {
        return Err(StartError(format!(
            "mount point {} is not a directory",
            p.display()
        )));
    }
    if is_mount_point(&canon) {
        return Err(StartError(format!(
            "mount point {} is busy: something is already mounted there (unmount it with `fusermount3 -u {}`)",
            p.display(),
            p.display()
        )));
    }
    Ok(canon)
}

/// One cheap listing proves endpoint, credentials and bucket before anything is mounted.
pub async fn preflight(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    endpoint: &str,
) -> Result<(), StartError> {
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        store.list(prefix, Some("/"), None, Some(1)),
    )
    .await;
    let e = match r {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => StoreError::Timeout("no answer in 30 s".into()),
    };
    Err(StartError(match e {
        StoreError::NoSuchBucket => format!(
            "bucket `{bucket}` does not exist at {endpoint}: create it, or check the name, --region and --endpoint"
        ),
        StoreError::AccessDenied(code) if code == crate::store::s3::NO_CREDENTIALS => format!(
            "no AWS credentials found for {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AUTHENTIK_STORAGE__S3__ACCESS_KEY/SECRET_KEY), a profile (--profile, AWS_PROFILE), or run where a role is available"
        ),
        StoreError::AccessDenied(code) => format!(
            "the endpoint {endpoint} refused the credentials for bucket `{bucket}` ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, and that the key may list the bucket"
        ),
        StoreError::Unreachable(_) | StoreError::Timeout(_) => format!(
            "cannot reach the S3 endpoint {endpoint}: check --endpoint / AWS_ENDPOINT_URL and that the server is running"
        ),
        StoreError::NotFound => format!(
            "the endpoint {endpoint} answered a listing of bucket `{bucket}` with 404 and no S3 error: is it an S3 endpoint (path-style needs --force-path-style)?"
        ),
        other => format!("the S3 endpoint {endpoint} rejected a listing of bucket `{bucket}`: {other}"),
    }))
}

fn mount_options(args: &MountArgs, bucket: &str) -> Vec<MountOption> {
    let mut o = vec![
        MountOption::FSName(format!("bucketfs:{bucket}")),
        MountOption::Subtype("bucketfs".into()),
        // fuser's direct mount(2) (as root) passes the type "fuse" only; the kernel takes the
        // subtype as an option, so /proc/mounts shows `fuse.bucketfs` either way.
        MountOption::CUSTOM("subtype=bucketfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={}", crate::fuse::MAX_IO)),
    ];
    if args.allow_other {
        o.push(MountOption::AllowOther);
    }
    if args.noexec {
        o.push(MountOption::NoExec);
    }
    o.push(if args.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    o
}

/// Runs `bucketfs mount` to the end; returns the exit status.
pub fn run_mount(args: MountArgs) -> Result<i32, StartError> {
    crate::budget::tune_allocator();
    let uid = unsafe { libc::getuid() };
    let gid = unsafe { libc::getgid() };
    let cfg = args.fs_config(uid, gid).map_err(StartError)?;
    let s3 = args.s3_settings().map_err(StartError)?;
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    if let Some(old) = &args.migrate_from {
        // Before anything is mounted: an old tree under the mount would be read through the
        // mount itself (the daemon waiting on its own requests: a hang).
        let canon = std::fs::canonicalize(old)
            .map_err(|e| StartError(format!("--migrate-from {}: {e}", old.display())))?;
        if let Some(e) = crate::migrate::live::overlap_error(&canon, &mountpoint) {
            return Err(StartError(e));
        }
    }
    let metrics_listener = match args.metrics_addr {
        Some(a) => Some(crate::metrics::bind(a).map_err(|e| StartError(e.to_string()))?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bucketfs-io")
        .build()
        .map_err(|e| StartError(format!("cannot start the I/O runtime: {e}")))?;
    let endpoint = s3
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .unwrap_or_else(|| "AWS S3".into());
    notify::notify_quietly(&notify::status_line(&format!(
        "Checking bucket {} at {endpoint}",
        s3.bucket
    )));
    let s3store = Arc::new(rt.block_on(S3Store::connect(&s3)));
    s3store.set_log_failures(false);
    if let Some(problem) = rt.block_on(s3store.profile_problem()) {
        return Err(StartError(problem));
    }
    rt.block_on(preflight(&*s3store, &s3.bucket, &cfg.prefix, &endpoint))?;
    s3store.set_log_failures(true);
    let store: Arc<dyn ObjectStore> = s3store;

    let cache_dir = cfg.cache_dir.clone();
    let live_store = store.clone();
    let fs = Fs::new(store, cfg).map_err(|e| {
        StartError(format!(
            "cannot use the cache directory {}: {e} (set --cache-dir)",
            cache_dir.display()
        ))
    })?;
    let live = crate::migrate::live::from_mount_args(
        &args,
        &s3.bucket,
        fs.config(),
        live_store,
        fs.budget().clone(),
    )
    .map_err(|e| StartError(e.to_string()))?;
    let fs = Arc::new(match &live {
        Some(l) => fs.with_fallback(l.clone()),
        None => fs,
    });
    crate::metrics::set_budget(fs.budget().clone());
    if let Some(l) = metrics_listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!("metrics on http://{a}/metrics");
        }
        rt.spawn(crate::metrics::serve(l));
    }
    // Registered before mounting, so a SIGTERM from now on is never the default (fatal) one.
    let signals = {
        let _rt = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => Some((t, i)),
            _ => None,
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let adapter = FuseAdapter::new(
        fs.clone(),
        rt.handle().clone(),
        Box::new(move || {
            let _ = done_tx.send(());
        }),
    );
    let mut session = fuser::Session::new(adapter, &mountpoint, &mount_options(&args, &s3.bucket))
        .map_err(|e| {
            StartError(format!(
                "cannot mount on {}: {e} (is fuse3 installed and /dev/fuse available?)",
                mountpoint.display()
            ))
        })?;
    let mut unmounter = session.unmount_callable();
    let session_thread = std::thread::Builder::new()
        .name("bucketfs-fuse".into())
        .spawn(move || session.run())
        .map_err(|e| StartError(format!("cannot start the FUSE thread: {e}")))?;

    // READY=1 only once the kernel gets answers from this session.
    if !wait_until_answers(&mountpoint, Duration::from_secs(30), || {
        session_thread.is_finished()
    }) {
        let _ = unmounter.unmount();
        let _ = session_thread.join();
        return Err(StartError(format!(
            "the mount on {} did not answer within 30 s",
            mountpoint.display()
        )));
    }
    raise_read_ahead(&mountpoint);
    if let Some(l) = live {
        rt.spawn(crate::migrate::live::run_copier(l, fs.clone()));
    }
    tracing::info!(
        bucket = %s3.bucket, prefix = %fs.config().prefix, mountpoint = %mountpoint.display(),
        "mounted; stop with `fusermount3 -u {}` or SIGTERM", mountpoint.display()
    );
    notify::notify_quietly(&format!(
        "READY=1\n{}",
        notify::status_line(&format!(
            "Mounted bucket {}{} on {}",
            s3.bucket,
            if fs.config().prefix.is_empty() {
                String::new()
            } else {
                format!(":{}", fs.config().prefix)
            },
            mountpoint.display()
        ))
    ));

    // SIGINT / SIGTERM: save what is pending, then unmount; the session then ends.
    let fs_sig = fs.clone();
    let mp = mountpoint.clone();
    rt.spawn(async move {
        let Some((mut term, mut int)) = signals else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: saving pending writes, then unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: saving pending writes, then unmounting"),
        }
        notify::notify_quietly(&format!(
            "STOPPING=1\n{}",
            notify::status_line("Saving pending writes, then unmounting")
        ));
        let failed = fs_sig.flush_all().await;
        for u in &failed {
            tracing::error!(path = %u.path, error = %u.error, "not saved to the bucket");
        }
        note_unsaved(failed.len());
        if unmounter.unmount().is_err() || is_mount_point(&mp) {
            // Busy (a process still has a file open): detach now, finish when it closes.
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mp)
                .status();
        }
    });

    let r = session_thread.join();
    // Unmounted from outside (umount, fusermount3 -u): stopping now, too.
    notify::notify_quietly("STOPPING=1");
    let _ = done_rx.recv_timeout(Duration::from_secs(1));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "FUSE session ended with an error"),
        Err(_) => tracing::error!("FUSE session thread panicked"),
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    let unsaved = UNSAVED.load(Ordering::SeqCst);
    if unsaved > 0 {
        tracing::error!(
            files = unsaved,
            "exiting with files not saved to the bucket"
        );
        return Ok(EXIT_UNSAVED);
    }
    tracing::info!("unmounted cleanly");
    Ok(EXIT_OK)
}
