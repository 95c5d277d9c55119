//! Integration-test harness for bucketfs: a real S3 server, real FUSE mounts.
//!
//! * The server is chosen by `BUCKETFS_TEST_SERVER` (`seaweedfs` default, `moto`, `garage`) and
//!   started once per test binary, lazily, by `scripts/s3-server.sh run` in a temp dir. The
//!   script runs with `PR_SET_PDEATHSIG` from a thread that never exits, and the script gives the
//!   server `PDEATHSIG=KILL`, so the server dies with the test process however it ends; an
//!   `atexit` hook also stops it cleanly on a normal exit.
//! * [`Mount`] spawns `bucketfs mount` on a fresh temp mount point and waits until the mount
//!   shows in `/proc/self/mountinfo`; Drop always unmounts (and kills the daemon if it must).
//! * [`S3`] is a direct aws-sdk-s3 client (path-style), never through the mount.
//!
//! Set `BUCKETFS_TEST_LOG=debug` for a more verbose daemon log; the log of a failed mount or of a
//! non-zero exit is printed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;

pub mod proxy;

pub const BIN: &str = env!("CARGO_BIN_EXE_bucketfs");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

// ------------------------------------------------------------------------------------------
// server

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Seaweedfs,
    Moto,
    Garage,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Seaweedfs => "seaweedfs",
            Kind::Moto => "moto",
            Kind::Garage => "garage",
        }
    }
}

pub fn kind() -> Kind {
    match std::env::var("BUCKETFS_TEST_SERVER").as_deref() {
        Err(_) | Ok("") | Ok("seaweedfs") => Kind::Seaweedfs,
        Ok("moto") => Kind::Moto,
        Ok("garage") => Kind::Garage,
        Ok(other) => panic!("BUCKETFS_TEST_SERVER={other:?}: expected seaweedfs, moto or garage"),
    }
}

pub struct Server {
    pub kind: Kind,
    pub dir: PathBuf,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub bucket: String,
    /// read-only credentials (seaweedfs, garage)
    pub ro: Option<(String, String)>,
    pub server_pid: i32,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static SCRIPT_PID: AtomicI32 = AtomicI32::new(0);
static SERVER_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The S3 server of this test binary, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start_server)
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Remove temp dirs of earlier test binaries that were killed before their atexit cleanup:
/// `bucketfs-s3-<kind>-<pid>-*` and `bucketfs-test-<tag>-<pid>-*` whose pid is gone, and only if
/// nothing below them is mounted.
fn clean_stale_temp_dirs() {
    let tmp = std::env::temp_dir();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Ok(rd) = fs::read_dir(&tmp) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let rest = if let Some(r) = name.strip_prefix("bucketfs-s3-") {
            r
        } else if let Some(r) = name.strip_prefix("bucketfs-test-") {
            r
        } else {
            continue;
        };
        // <tag>-<pid>-...
        let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let p = path.to_string_lossy().into_owned();
        if mounts.lines().any(|l| l.contains(&p)) {
            continue;
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn start_server() -> Server {
    clean_stale_temp_dirs();
    let kind = kind();
    let dir = std::env::temp_dir().join(format!(
        "bucketfs-s3-{}-{}-{}",
        kind.name(),
        std::process::id(),
        nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    *SERVER_DIR.lock().unwrap() = Some(dir.clone());
    let script = Path::new(REPO).join("scripts/s3-server.sh");
    let log = fs::File::create(dir.join("script.log")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Result<i32, String>>();
    let (dir2, kind2) = (dir.clone(), kind);
    // The thread that spawns the script never exits while the script lives: PDEATHSIG is tied to
    // the spawning thread, not to the process.
    std::thread::Builder::new()
        .name("s3-server".into())
        .spawn(move || {
            let mut cmd = Command::new("bash");
            cmd.arg(&script).arg("run").arg(kind2.name()).arg(&dir2);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("spawn s3-server.sh: {e}")));
                    return;
                }
            };
            SCRIPT_PID.store(child.id() as i32, Ordering::SeqCst);
            let _ = tx.send(Ok(child.id() as i32));
            let status = child.wait();
            SCRIPT_PID.store(0, Ordering::SeqCst);
            eprintln!("[harness] s3-server.sh exited: {status:?}");
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    match rx.recv().unwrap() {
        Ok(_) => {}
        Err(e) => panic!("{e}"),
    }
    unsafe {
        libc::atexit(stop_server_at_exit);
    }
    let env_path = dir.join("env");
    let deadline = Instant::now() + Duration::from_secs(180);
    let env = loop {
        if let Ok(text) = fs::read_to_string(&env_path) {
            break parse_env_file(&text);
        }
        if SCRIPT_PID.load(Ordering::SeqCst) == 0 {
            panic!(
                "s3-server.sh {} failed:\n{}",
                kind.name(),
                fs::read_to_string(dir.join("script.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "s3-server.sh {} not ready after 180 s:\n{}",
                kind.name(),
                fs::read_to_string(dir.join("script.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let get = |k: &str| {
        env.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} missing in {env_path:?}"))
    };
    let ro = match (env.get("RO_ACCESS_KEY_ID"), env.get("RO_SECRET_ACCESS_KEY")) {
        (Some(a), Some(s)) => Some((a.clone(), s.clone())),
        _ => None,
    };
    let s = Server {
        kind,
        dir,
        endpoint: get("AWS_ENDPOINT_URL"),
        access_key: get("AWS_ACCESS_KEY_ID"),
        secret_key: get("AWS_SECRET_ACCESS_KEY"),
        region: get("AWS_REGION"),
        bucket: get("BUCKETFS_TEST_BUCKET"),
        ro,
        server_pid: get("SERVER_PID").parse().unwrap(),
    };
    eprintln!(
        "[harness] {} at {} (pid {})",
        kind.name(),
        s.endpoint,
        s.server_pid
    );
    s
}

extern "C" fn stop_server_at_exit() {
    // Safety net first: no FUSE mount of ours may survive the test binary.
    for m in LIVE_MOUNTS.lock().map(|v| v.clone()).unwrap_or_default() {
        if is_mounted(&m) {
            eprintln!(
                "[harness] at exit: {} still mounted, lazy unmount",
                m.display()
            );
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&m)
                .status();
        }
    }
    let pid = SCRIPT_PID.load(Ordering::SeqCst);
    if pid > 0 {
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while SCRIPT_PID.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = SERVER_DIR.lock().ok().and_then(|d| d.clone()) {
        if SCRIPT_PID.load(Ordering::SeqCst) == 0
            && std::env::var_os("BUCKETFS_TEST_KEEP").is_none()
        {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

pub fn is(k: Kind) -> bool {
    server().kind == k
}

/// Print why a test is skipped on this server; the caller returns.
/// With BUCKETFS_TEST_SKIP_LOG set (scripts/test.sh does), the reason is also appended to that
/// file, so skips show in the summary although libtest hides a passing test's output.
pub fn skip(reason: &str) {
    if let Some(path) = std::env::var_os("BUCKETFS_TEST_SKIP_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let _ = writeln!(f, "{}: {test}: {reason}", kind().name());
        }
    }
    eprintln!("SKIPPED on {}: {reason}", kind().name());
    println!("SKIPPED on {}: {reason}", kind().name());
}

// ------------------------------------------------------------------------------------------
// misc helpers

pub fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A fresh scratch name per test: `t-<nanos>-<rand>`.
pub fn scratch() -> String {
    use rand::Rng;
    format!("t-{}-{:08x}", nanos(), rand::thread_rng().gen::<u32>())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

// ------------------------------------------------------------------------------------------
// mountinfo

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// fstype of the mount at exactly `path`, from /proc/self/mountinfo (last one wins).
pub fn mount_fstype(path: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        if unescape_mountinfo(fields[4]) != want {
            continue;
        }
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("");
        found = Some(fstype.to_string());
    }
    found
}

pub fn is_mounted(path: &Path) -> bool {
    matches!(
        mount_fstype(path).as_deref(),
        Some("fuse.bucketfs") | Some("fuse")
    )
}

// ------------------------------------------------------------------------------------------
// Mount

static LIVE_MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

#[derive(Clone, Debug)]
pub struct MountOpts {
    /// `BUCKET` or `BUCKET:PREFIX`
    pub spec: String,
    /// extra command-line flags
    pub args: Vec<String>,
    /// environment overrides for the daemon (None = remove)
    pub env: Vec<(String, Option<String>)>,
    /// pass --endpoint/--region/--force-path-style (else only the AWS_* environment)
    pub flags: bool,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            spec: server().bucket.clone(),
            args: vec![],
            env: vec![],
            flags: true,
        }
    }
}

impl MountOpts {
    pub fn prefix(prefix: &str) -> Self {
        MountOpts {
            spec: format!("{}:{}", server().bucket, prefix),
            ..Default::default()
        }
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), Some(v.to_string())));
        self
    }
}

/// A scratch directory for a mount point, its log, and temp files.
pub struct Scratch {
    pub base: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::temp_dir().join(format!(
            "bucketfs-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            nanos() % 1_000_000
        ));
        fs::create_dir_all(&base).unwrap();
        Scratch { base }
    }
}

pub struct Mount {
    pub path: PathBuf,
    pub opts: MountOpts,
    scratch: Scratch,
    child: Option<Child>,
    log: PathBuf,
    mounts: u32,
}

/// The bucketfs command line for `opts` on mount point `mnt`.
pub fn bucketfs_command(opts: &MountOpts, mnt: &Path) -> Command {
    let s = server();
    let mut cmd = Command::new(BIN);
    cmd.arg("mount").arg(&opts.spec).arg(mnt);
    if opts.flags {
        cmd.args([
            "--endpoint",
            &s.endpoint,
            "--region",
            &s.region,
            "--force-path-style",
        ]);
    }
    let level = std::env::var("BUCKETFS_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.args(["--log-level", &level]);
    cmd.args(&opts.args);
    for k in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_S3",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_ACCESS_KEY_ID", &s.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret_key)
        .env("AWS_REGION", &s.region)
        .env("AWS_ENDPOINT_URL", &s.endpoint)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in &opts.env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The daemon gets SIGTERM if the thread that spawned it (the test's thread) dies.
fn set_pdeathsig(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

impl Mount {
    /// Whole-bucket mount with default options.
    pub fn new() -> Mount {
        Mount::with(MountOpts::default())
    }

    pub fn with(opts: MountOpts) -> Mount {
        match Mount::try_with(opts) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// Mount, or Err(message with the daemon's stderr) if it exits before the mount appears.
    pub fn try_with(opts: MountOpts) -> Result<Mount, String> {
        let scratch = Scratch::new("mnt");
        let path = scratch.base.join("mnt");
        fs::create_dir(&path).unwrap();
        let log = scratch.base.join("bucketfs.log");
        let mut m = Mount {
            path,
            opts,
            scratch,
            child: None,
            log,
            mounts: 0,
        };
        m.start()?;
        Ok(m)
    }

    fn start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none());
        assert!(
            !is_mounted(&self.path),
            "{} already mounted",
            self.path.display()
        );
        self.mounts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "=== mount #{} ===", self.mounts).unwrap();
        let mut cmd = bucketfs_command(&self.opts, &self.path);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        set_pdeathsig(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        LIVE_MOUNTS.lock().unwrap().push(self.path.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&self.path) {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!(
                    "bucketfs exited with {st} before mounting {}:\n{}",
                    self.path.display(),
                    self.log_text()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.path)
                    .status();
                return Err(format!(
                    "bucketfs did not mount {} within 30 s:\n{}",
                    self.path.display(),
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not mounted").id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Scratch dir outside the mount (for temp files).
    pub fn tmp(&self) -> &Path {
        &self.scratch.base
    }

    /// `fusermount3 -u`, then wait for the daemon; returns its exit status.
    pub fn unmount(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("not mounted");
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..50 {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .output()
                .unwrap();
            if out.status.success() {
                ok = true;
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if !is_mounted(&self.path) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.path)
                .status();
            panic!("fusermount3 -u {} failed: {last}", self.path.display());
        }
        let status = wait_timeout(&mut child, Duration::from_secs(180)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bucketfs did not exit within 180 s of unmount:\n{}",
                self.log_text()
            )
        });
        if !status.success() {
            eprintln!(
                "[harness] bucketfs exited with {status}; log:\n{}",
                self.log_text()
            );
        }
        status
    }

    /// Send `sig` to the daemon and wait for it; returns its exit status.
    pub fn kill_and_wait(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("not mounted");
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let status = wait_timeout(&mut child, Duration::from_secs(180)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bucketfs did not exit within 180 s of signal {sig}:\n{}",
                self.log_text()
            )
        });
        // make sure the kernel side is gone too
        for _ in 0..100 {
            if !is_mounted(&self.path) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.path)
                .status();
            panic!(
                "mount {} still present after the daemon exited on signal {sig}",
                self.path.display()
            );
        }
        status
    }

    /// Unmount cleanly (asserting exit 0), then mount again with the same options: caches cold.
    pub fn remount(&mut self) {
        let st = self.unmount();
        assert!(
            st.success(),
            "bucketfs exited with {st} on unmount during remount:\n{}",
            self.log_text()
        );
        self.start().unwrap_or_else(|e| panic!("remount: {e}"));
    }

    /// Mount again after unmount()/kill_and_wait().
    pub fn mount_again(&mut self) {
        self.start().unwrap_or_else(|e| panic!("mount again: {e}"));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "[harness] test failed; bucketfs log {} (last {} lines):\n{}",
                self.log.display(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let mut done = false;
            for _ in 0..20 {
                if Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.path)
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
                    || !is_mounted(&self.path)
                {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let exited = done && wait_timeout(&mut child, Duration::from_secs(60)).is_some();
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.path)
                .status();
        }
        LIVE_MOUNTS
            .lock()
            .map(|mut v| v.retain(|p| p != &self.path))
            .ok();
        // Never recurse into a path that might still be a mount: rmdir only.
        if !is_mounted(&self.path) {
            let _ = fs::remove_dir(&self.path);
            let _ = fs::remove_file(&self.log);
            let keep: Vec<_> = fs::read_dir(&self.scratch.base)
                .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            for p in keep {
                if p.is_file() {
                    let _ = fs::remove_file(p);
                }
            }
            let _ = fs::remove_dir(&self.scratch.base);
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a bucketfs command that is expected to fail before mounting; returns
/// (exit status, stderr, elapsed). Kills it (and fails) if it is still running after `limit`.
pub fn run_expect_exit(
    mut cmd: Command,
    limit: Duration,
    mnt: &Path,
) -> (ExitStatus, String, Duration) {
    let start = Instant::now();
    let err_path = std::env::temp_dir().join(format!(
        "bucketfs-test-err-{}-{}",
        std::process::id(),
        nanos()
    ));
    let err = fs::File::create(&err_path).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    set_pdeathsig(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let st = wait_timeout(&mut child, limit);
    let elapsed = start.elapsed();
    let st = match st {
        Some(st) => st,
        None => {
            let _ = Command::new("fusermount3").arg("-u").arg(mnt).status();
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mnt)
                .status();
            let text = fs::read_to_string(&err_path).unwrap_or_default();
            let _ = fs::remove_file(&err_path);
            panic!(
                "bucketfs still running after {limit:?} (mounted: {}); stderr:\n{text}",
                is_mounted(mnt)
            );
        }
    };
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mnt)
            .status();
    }
    let text = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&err_path);
    (st, text, elapsed)
}

pub fn status_desc(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// shell

pub struct Sh {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Sh {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

impl std::fmt::Debug for Sh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] stdout={:?} stderr={:?}",
            status_desc(&self.status),
            self.stdout,
            self.stderr
        )
    }
}

fn to_sh(out: Output) -> Sh {
    Sh {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bash -c script` with a 300 s limit and extra environment.
pub fn sh_env(script: &str, env: &[(&str, &str)]) -> Sh {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", "300", "bash", "-c", script]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    to_sh(cmd.output().expect("run bash"))
}

pub fn sh(script: &str) -> Sh {
    sh_env(script, &[])
}

/// Run `script` with `sh -c` as uid:gid with no supplementary groups.
pub fn sh_as(uid: u32, gid: u32, script: &str) -> Sh {
    let (u, g) = (uid.to_string(), gid.to_string());
    let out = if Path::new("/usr/bin/setpriv").exists() || which("setpriv") {
        Command::new("timeout")
            .args([
                "-k",
                "10",
                "300",
                "setpriv",
                "--reuid",
                &u,
                "--regid",
                &g,
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
    } else {
        Command::new("timeout")
            .args([
                "-k",
                "10",
                "300",
                "sudo",
                "-u",
                &format!("#{u}"),
                "-g",
                &format!("#{g}"),
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
    };
    to_sh(out.expect("run as other uid"))
}

pub fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Quote for the shell.
pub fn q<S: AsRef<OsStr>>(s: S) -> String {
    let b = s.as_ref().as_bytes();
    let mut out = String::from("'");
    for &c in b {
        if c == b'\'' {
            out.push_str("'\\''");
        } else {
            out.push(c as char);
        }
    }
    out.push('\'');
    // non-UTF-8 bytes are not expected in test paths
    String::from_utf8(out.into_bytes()).unwrap()
}

pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// stat through libc (lstat), for st_dev etc.
pub fn lstat(p: &Path) -> std::io::Result<libc::stat> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    if r == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn statvfs(p: &Path) -> std::io::Result<libc::statvfs> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sorted names in a directory (through the mount).
pub fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn read(p: &Path) -> Vec<u8> {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut v = vec![];
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Write `data` to a new/truncated file and close it explicitly, returning close()'s error
/// (std's File drop ignores it). close() is where bucketfs reports a failed upload.
pub fn write_close(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(p)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Does this server keep a prefix visible after its last object is deleted? (SeaweedFS does:
/// its filer keeps the empty directory, listed as a CommonPrefix and as a zero-byte `dir/`
/// entry. AWS does not.) Probed once per test binary.
pub fn server_keeps_empty_prefixes() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| {
        let base = format!("probe-{}/", scratch());
        let s = s3();
        s.put(&format!("{base}d/x"), "x");
        s.delete(&format!("{base}d/x"));
        let r = block_on(
            s.client
                .list_objects_v2()
                .bucket(&s.bucket)
                .prefix(&base)
                .delimiter("/")
                .send(),
        )
        .expect("probe listing");
        let kept = r
            .common_prefixes()
            .iter()
            .any(|p| p.prefix() == Some(&format!("{base}d/")[..]));
        if kept {
            // SeaweedFS removes the leftover directory on DeleteObject of `dir/`
            let _ = block_on(s.client.delete_object().bucket(&s.bucket).key(format!("{base}d/")).send());
            eprintln!(
                "[harness] {}: a prefix stays listed after its last object is deleted (AWS: it vanishes)",
                kind().name()
            );
        }
        kept
    })
}

/// Put `key` and check the server stores it under exactly that key (some servers normalize or
/// refuse keys with `//`, `.` or `..` segments). Returns false, printing why, if not.
pub fn put_exact_key(key: &str, body: &str) -> bool {
    let s = s3();
    // list from the last "clean" point: everything up to the first odd segment
    let cut = ["//", "/./", "/../"]
        .iter()
        .filter_map(|pat| key.find(pat))
        .chain(key.rfind('/'))
        .min()
        .unwrap_or(0);
    let list_prefix = &key[..cut];
    let before = s.keys(list_prefix);
    let r = block_on(
        s.client
            .put_object()
            .bucket(&s.bucket)
            .key(key)
            .body(ByteStream::from(body.as_bytes().to_vec()))
            .send(),
    );
    if let Err(e) = r {
        eprintln!(
            "[harness] {} refuses key {key:?}: {}",
            kind().name(),
            aws_sdk_s3::error::DisplayErrorContext(e)
        );
        return false;
    }
    let after = s.keys(list_prefix);
    let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    if new.len() != 1 || new[0] != key {
        eprintln!(
            "[harness] {} stored {key:?} as {new:?}; removing that",
            kind().name()
        );
        for k in new {
            s.delete(k);
        }
        return false;
    }
    true
}

// ------------------------------------------------------------------------------------------
// direct S3 client

pub struct Head {
    pub len: i64,
    pub content_type: Option<String>,
}

pub struct S3 {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

pub fn s3_client_with(ak: &str, sk: &str) -> aws_sdk_s3::Client {
    let s = server();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&s.endpoint)
        .region(Region::new(s.region.clone()))
        .credentials_provider(Credentials::new(ak, sk, None, None, "bucketfs-tests"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The direct S3 client (one per test binary).
pub fn s3() -> &'static S3 {
    static S: OnceLock<S3> = OnceLock::new();
    S.get_or_init(|| {
        let s = server();
        S3 {
            client: s3_client_with(&s.access_key, &s.secret_key),
            bucket: s.bucket.clone(),
        }
    })
}

impl S3 {
    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.put_typed(key, body, None)
    }

    pub fn put_typed(&self, key: &str, body: impl Into<Vec<u8>>, content_type: Option<&str>) {
        let body: Vec<u8> = body.into();
        block_on(async {
            let mut r = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body));
            if let Some(ct) = content_type {
                r = r.content_type(ct);
            }
            r.send().await
        })
        .unwrap_or_else(|e| {
            panic!(
                "PutObject {key:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    }

    /// Put many small objects concurrently.
    pub fn put_many(&self, items: Vec<(String, Vec<u8>)>, concurrency: usize) {
        use futures::stream::{self, StreamExt, TryStreamExt};
        block_on(async {
            stream::iter(items.into_iter().map(|(k, v)| {
                let c = self.client.clone();
                let b = self.bucket.clone();
                async move {
                    let mut last = None;
                    for _ in 0..3 {
                        match c
                            .put_object()
                            .bucket(&b)
                            .key(&k)
                            .body(ByteStream::from(v.clone()))
                            .send()
                            .await
                        {
                            Ok(_) => return Ok(()),
                            Err(e) => {
                                last = Some(aws_sdk_s3::error::DisplayErrorContext(e).to_string())
                            }
                        }
                    }
                    Err(format!("PutObject {k:?}: {}", last.unwrap()))
                }
            }))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Some(
                    o.body
                        .collect()
                        .await
                        .expect("read body")
                        .into_bytes()
                        .to_vec(),
                ),
                Err(e) => {
                    if let Some(se) = e.as_service_error() {
                        if se.is_no_such_key() {
                            return None;
                        }
                    }
                    if e.raw_response().map(|r| r.status().as_u16()) == Some(404) {
                        return None;
                    }
                    panic!(
                        "GetObject {key:?}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                }
            }
        })
    }

    pub fn head(&self, key: &str) -> Option<Head> {
        block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Some(Head {
                    len: o.content_length.unwrap_or(-1),
                    content_type: o.content_type.clone(),
                }),
                Err(e) => {
                    if e.raw_response().map(|r| r.status().as_u16()) == Some(404) {
                        return None;
                    }
                    if let Some(se) = e.as_service_error() {
                        if se.is_not_found() {
                            return None;
                        }
                    }
                    panic!(
                        "HeadObject {key:?}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                }
            }
        })
    }

    pub fn exists(&self, key: &str) -> bool {
        self.head(key).is_some()
    }

    pub fn content_type(&self, key: &str) -> String {
        self.head(key)
            .unwrap_or_else(|| panic!("no object {key:?}"))
            .content_type
            .unwrap_or_default()
    }

    pub fn delete(&self, key: &str) {
        block_on(
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "DeleteObject {key:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    }

    /// All keys under `prefix` (ListObjectsV2, all pages), sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let r = block_on(
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.clone())
                    .send(),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "ListObjectsV2 {prefix:?}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
            for o in r.contents() {
                out.push(o.key().unwrap_or_default().to_string());
            }
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// Keys of open multipart uploads under `prefix`.
    pub fn multipart_uploads(&self, prefix: &str) -> Vec<String> {
        let r = block_on(
            self.client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "ListMultipartUploads: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
        let mut v: Vec<String> = r
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(|k| k.to_string()))
            .collect();
        v.sort();
        v
    }
}

// ------------------------------------------------------------------------------------------
// more direct-S3 helpers (metadata, ranges), for tests/semantics.rs, durability.rs, interop.rs

impl S3 {
    /// User metadata (`x-amz-meta-*`, names without the prefix, lower case), or None if absent.
    pub fn meta(&self, key: &str) -> Option<HashMap<String, String>> {
        block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Some(
                    o.metadata()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                Err(e) => {
                    if e.raw_response().map(|r| r.status().as_u16()) == Some(404) {
                        return None;
                    }
                    panic!(
                        "HeadObject {key:?}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                }
            }
        })
    }

    /// PutObject with user metadata (names without `x-amz-meta-`).
    pub fn put_meta(&self, key: &str, body: impl Into<Vec<u8>>, meta: &[(&str, &str)]) {
        let body: Vec<u8> = body.into();
        block_on(async {
            let mut r = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body));
            for (k, v) in meta {
                r = r.metadata(*k, *v);
            }
            r.send().await
        })
        .unwrap_or_else(|e| {
            panic!(
                "PutObject {key:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    }

    /// Bytes `start..start+len` of `key` (ranged GET).
    pub fn get_range(&self, key: &str, start: u64, len: u64) -> Vec<u8> {
        block_on(async {
            let o = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={}-{}", start, start + len - 1))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "GetObject {key:?} range: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                });
            o.body
                .collect()
                .await
                .expect("read body")
                .into_bytes()
                .to_vec()
        })
    }

    /// Abort every open multipart upload under `prefix` (test cleanup).
    pub fn abort_uploads(&self, prefix: &str) {
        let r = block_on(
            self.client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send(),
        );
        if let Ok(r) = r {
            for u in r.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    let _ = block_on(
                        self.client
                            .abort_multipart_upload()
                            .bucket(&self.bucket)
                            .key(k)
                            .upload_id(id)
                            .send(),
                    );
                }
            }
        }
    }
}

/// sha256 of `data` as hex (via `sha256sum`, no extra crate).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Poll `f` every 50 ms until it returns Some or `within` has passed; returns the value and the
/// time it took, or None.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Some(kB)` of a field (`VmRSS`, `VmHWM`, ...) of /proc/PID/status.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ------------------------------------------------------------------------------------------
// bucketfs commands (not mounts)

/// Output of one bucketfs command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The process environment of a bucketfs command: no AWS_* configuration of the test machine,
/// and authentik's variables pointing at the test server (each overridable, None removes).
pub fn authentik_env(extra: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    let s = server();
    let mut env: Vec<(String, Option<String>)> = vec![];
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        env.push((k.into(), None));
    }
    for (k, v) in [
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AUTHENTIK_STORAGE__S3__ENDPOINT", s.endpoint.as_str()),
        ("AUTHENTIK_STORAGE__S3__REGION", s.region.as_str()),
        ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", s.access_key.as_str()),
        ("AUTHENTIK_STORAGE__S3__SECRET_KEY", s.secret_key.as_str()),
        ("AUTHENTIK_STORAGE__S3__BUCKET_NAME", s.bucket.as_str()),
    ] {
        env.push((k.into(), Some(v.into())));
    }
    for (k, v) in extra {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v.map(str::to_string)));
    }
    env
}
