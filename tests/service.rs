//! bucketfs as a service, on a real S3 server (see tests/common): sd_notify readiness and
//! stopping, `mount -t bucketfs` through the mount.bucketfs helper with fstab options, the
//! Prometheus endpoint, the failed-request log line, and `systemd-analyze verify` of the units.
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bucketfs::notify::{self, Listener};

const HELPER: &str = env!("CARGO_BIN_EXE_mount_bucketfs");

// ------------------------------------------------------------------------------------------
// a daemon started by hand (not through Mount), always cleaned up

/// `bucketfs mount` spawned with extra environment; Drop unmounts and kills it if need be.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
    scratch: Scratch,
}

fn pdeathsig(cmd: &mut Command, sig: i32) {
    // SAFETY: prctl is async-signal-safe; the child dies with the thread that spawned it.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

impl Daemon {
    fn spawn(opts: &MountOpts, env: &[(&str, &str)]) -> Daemon {
        let scratch = Scratch::new("svc");
        let mnt = scratch.base.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let log = scratch.base.join("bucketfs.log");
        let out = fs::File::create(&log).unwrap();
        let mut cmd = bucketfs_command(opts, &mnt);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        pdeathsig(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().expect("spawn bucketfs");
        Daemon {
            child: Some(child),
            mnt,
            log,
            scratch,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the daemon to exit; panics (with its log) after `t`.
    fn wait(&mut self, t: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        match wait_timeout(&mut child, t) {
            Some(st) => st,
            None => {
                self.child = Some(child);
                panic!(
                    "bucketfs still running after {t:?}; log:\n{}",
                    self.log_text()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[service] bucketfs log:\n{}", self.log_text());
        }
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mnt)
                    .stderr(Stdio::null())
                    .status();
                if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
        if !is_mounted(&self.mnt) {
            let _ = fs::remove_dir_all(&self.scratch.base);
        }
    }
}

/// statfs(2) reports a FUSE file system at `p` and a stat of it comes back: the mount
/// answers (each needs the daemon's reply).
fn answers(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let fuse = st.f_type as i64 == 0x6573_5546;
    fuse && fs::metadata(p).is_ok()
}

/// A notify message, with what the mount looked like the moment it arrived.
#[derive(Debug)]
struct Note {
    msg: String,
    mounted: bool,
    answered: bool,
}

/// Receives on `l` in a thread until the returned flag is set; each message is checked
/// against the mount point at once.
fn listen(l: Listener, mnt: PathBuf) -> (mpsc::Receiver<Note>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match l.recv(Duration::from_millis(50)) {
                Ok(Some(msg)) => {
                    let mounted = is_mounted(&mnt);
                    let answered = mounted && answers(&mnt);
                    if tx
                        .send(Note {
                            msg,
                            mounted,
                            answered,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    });
    (rx, stop)
}

/// Collects notes until one has `key=value`; None if the daemon exits or `t` passes first.
fn wait_note(
    rx: &mpsc::Receiver<Note>,
    d: &mut Daemon,
    key: &str,
    value: &str,
    seen: &mut Vec<Note>,
    t: Duration,
) -> Option<Note> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) if notify::has(&n.msg, key, value) => return Some(n),
            Ok(n) => seen.push(n),
            Err(_) => {
                if d.exited().is_some() {
                    // drain what arrived before the exit
                    while let Ok(n) = rx.try_recv() {
                        if notify::has(&n.msg, key, value) {
                            return Some(n);
                        }
                        seen.push(n);
                    }
                    return None;
                }
            }
        }
    }
    None
}

// ------------------------------------------------------------------------------------------
// sd_notify

/// READY=1 arrives only once the mount answers; SIGTERM brings STOPPING=1, and the write
/// pending in a file that is still open is in the bucket before that file is closed.
#[test]
fn notify_ready_after_mount_answers_then_stopping_saves_pending_upload() {
    let sock_dir = Scratch::new("notify");
    let sock = sock_dir.base.join("notify.sock");
    let l = Listener::bind(&sock).unwrap();
    let mut d = Daemon::spawn(
        &MountOpts::default(),
        &[("NOTIFY_SOCKET", sock.to_str().unwrap())],
    );
    let (rx, stop) = listen(l, d.mnt.clone());
    let mut before = Vec::new();
    let ready = wait_note(
        &rx,
        &mut d,
        "READY",
        "1",
        &mut before,
        Duration::from_secs(90),
    )
    .unwrap_or_else(|| panic!("no READY=1 (daemon exited: {:?})", d.exited()));
    assert!(
        ready.mounted && ready.answered,
        "READY=1 came before the mount answered: {ready:?}"
    );
    assert!(
        before
            .iter()
            .any(|n| n.msg.contains("STATUS=") && !n.mounted),
        "a STATUS= before mounting, while nothing was mounted yet: {before:?}"
    );
    assert!(
        !before.iter().any(|n| notify::has(&n.msg, "STOPPING", "1")),
        "{before:?}"
    );

    // A write pending in an open file.
    let t = scratch();
    fs::create_dir(d.mnt.join(&t)).unwrap();
    let key = format!("{t}/pending.bin");
    let data = random_bytes(3 << 20);
    let mut f = fs::File::create(d.mnt.join(&key)).unwrap();
    f.write_all(&data).unwrap();
    assert!(
        !s3().exists(&key),
        "nothing should be uploaded before close/fsync/stop for a file below one part"
    );

    unsafe {
        libc::kill(d.pid(), libc::SIGTERM);
    }
    let mut rest = Vec::new();
    let stopping = wait_note(
        &rx,
        &mut d,
        "STOPPING",
        "1",
        &mut rest,
        Duration::from_secs(30),
    );
    assert!(
        stopping.is_some(),
        "no STOPPING=1 after SIGTERM; got {rest:?}"
    );
    assert!(
        !rest.iter().any(|n| notify::has(&n.msg, "READY", "1")),
        "{rest:?}"
    );
    // The file is still open: the upload was done by the stop, not by a close.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3().get(&key).as_deref() != Some(&data[..]) {
        assert!(
            Instant::now() < deadline,
            "the pending upload is not in the bucket 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
    let st = d.wait(Duration::from_secs(90));
    stop.store(true, Ordering::SeqCst);
    assert!(
        st.success(),
        "exit after SIGTERM: {}; log:\n{}",
        status_desc(&st),
        d.log_text()
    );
    assert!(!is_mounted(&d.mnt));
    assert_eq!(s3().get(&key).as_deref(), Some(&data[..]));
    let _ = fs::remove_dir_all(&sock_dir.base);
}

/// A mount that never happens never says READY=1.
#[test]
fn notify_never_ready_when_the_bucket_is_missing() {
    let sock_dir = Scratch::new("notify");
    let sock = sock_dir.base.join("notify.sock");
    let l = Listener::bind(&sock).unwrap();
    let opts = MountOpts {
        spec: format!("bucketfs-missing-{:08x}", rand::random::<u32>()),
        ..MountOpts::default()
    };
    let mut d = Daemon::spawn(&opts, &[("NOTIFY_SOCKET", sock.to_str().unwrap())]);
    let (rx, stop) = listen(l, d.mnt.clone());
    let st = d.wait(Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let notes: Vec<Note> = rx.try_iter().collect();
    assert_eq!(st.code(), Some(2), "{}", d.log_text());
    assert!(
        !notes.iter().any(|n| notify::has(&n.msg, "READY", "1")),
        "{notes:?}"
    );
    assert!(!is_mounted(&d.mnt));
    let _ = fs::remove_dir_all(&sock_dir.base);
}

// ------------------------------------------------------------------------------------------
// mount(8) and fstab

/// `mount /data` from an fstab line of type `bucketfs` with fstab-style options, through
/// /sbin/mount.bucketfs; then umount(8). Runs in private mount and PID namespaces, with the
/// helper bind-mounted at /sbin (/usr/sbin), so nothing of the host's is touched and every
/// process of the test dies with it.
#[test]
fn fstab_mount_through_mount_helper() {
    if !which("unshare") || !which("findmnt") {
        skip("unshare/findmnt (util-linux) missing: cannot run mount(8) in a private namespace");
        return;
    }
    let srv = server();
    let sc = Scratch::new("fstab");
    let mnt = sc.base.join("data");
    let mnt_bad = sc.base.join("bad");
    let helpers = sc.base.join("sbin");
    for d in [&mnt, &mnt_bad, &helpers] {
        fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink(HELPER, helpers.join("mount.bucketfs")).unwrap();
    let envf = sc.base.join("data.env");
    fs::write(
        &envf,
        format!(
            "# credentials for the fstab mount\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=\"{}\"\nAWS_CONFIG_FILE=/dev/null\nAWS_SHARED_CREDENTIALS_FILE=/dev/null\nAWS_EC2_METADATA_DISABLED=true\n# the same file serves bucketfs@.service: fstab's uid/allow_other win over these\nBUCKETFS_BUCKET=ignored-by-fstab\nBUCKETFS_OPTIONS=--uid 33 --allow-other --metadata-ttl 2\n",
            srv.access_key, srv.secret_key
        ),
    )
    .unwrap();
    fs::set_permissions(&envf, fs::Permissions::from_mode(0o600)).unwrap();
    let log = sc.base.join("bucketfs.log");
    let prefix = scratch();
    let common_opts = format!(
        "endpoint={},region={},path_style,environment_file={},log_file={}",
        srv.endpoint,
        srv.region,
        envf.display(),
        log.display()
    );
    let fstab = sc.base.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{bucket}:{prefix} {mnt} bucketfs _netdev,allow_other,uid=1000,gid=1000,nofail,noatime,nodev,nosuid,x-systemd.requires=network-online.target,{common_opts} 0 0\nbucketfs-missing-{r:08x} {bad} bucketfs _netdev,{common_opts} 0 0\n",
            bucket = srv.bucket,
            mnt = mnt.display(),
            bad = mnt_bad.display(),
            r = rand::random::<u32>(),
        ),
    )
    .unwrap();
    let script = r#"
set -u
mount --bind "$HELPERS" /usr/sbin || exit 90
out=$(mount -v --fstab "$FSTAB" "$MNT" 2>&1); rc=$?
echo "mount rc=$rc"
echo "$out"
[ "$rc" = 0 ] || exit 91
pid=$(printf '%s\n' "$out" | sed -n 's/.*bucketfs pid \([0-9]*\).*/\1/p')
echo "pid=$pid"
echo "fstype=$(findmnt -n -o FSTYPE "$MNT")"
echo "options=$(findmnt -n -o OPTIONS "$MNT")"
echo "root=$(stat -c '%u:%g' "$MNT")"
setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "echo from-uid-1000 > '$MNT/by-1000.txt'" && echo "write=ok"
echo "read=$(cat "$MNT/by-1000.txt")"
echo "owner=$(stat -c '%u:%g' "$MNT/by-1000.txt")"
umount "$MNT"; echo "umount rc=$?"
alive() { [ -n "$pid" ] && [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat 2>/dev/null; }
for _ in $(seq 600); do alive || break; sleep 0.1; done
alive && echo "daemon still running" || echo "daemon gone"
findmnt -n "$MNT" >/dev/null && echo "still mounted" || echo "unmounted"
bad=$(mount --fstab "$FSTAB" "$BAD" 2>&1); echo "bad rc=$?"
echo "$bad"
findmnt -n "$BAD" >/dev/null && echo "bad mounted" || echo "bad not mounted"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child=SIGKILL",
        "--mount-proc",
        "bash",
        "-c",
        script,
    ])
    .env("HELPERS", &helpers)
    .env("FSTAB", &fstab)
    .env("MNT", &mnt)
    .env("BAD", &mnt_bad)
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    pdeathsig(&mut cmd, libc::SIGKILL);
    let mut child = cmd.spawn().expect("spawn unshare");
    let (mut out, mut err) = (String::new(), String::new());
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = se.read_to_string(&mut e);
        e
    });
    let st = {
        let limit = Instant::now() + Duration::from_secs(240);
        let _ = so.read_to_string(&mut out);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > limit {
                // SIGKILL to unshare: --kill-child takes its namespace's processes along
                let _ = child.kill();
                let _ = child.wait();
                panic!("mount script timed out; output:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    err.push_str(&reader.join().unwrap_or_default());
    let logtext = fs::read_to_string(&log).unwrap_or_default();
    let ctx = format!(
        "status {}\nstdout:\n{out}\nstderr:\n{err}\ndaemon log:\n{logtext}",
        status_desc(&st)
    );
    if out.contains("mount rc=")
        && !out.contains("mount rc=0")
        && err.contains("Operation not permitted")
    {
        skip("mount(8) refused in a private namespace here");
        return;
    }
    assert!(st.success(), "{ctx}");
    let has = |l: &str| out.lines().any(|x| x == l);
    assert!(has("mount rc=0"), "{ctx}");
    assert!(has("fstype=fuse.bucketfs"), "{ctx}");
    let opts_line = out
        .lines()
        .find(|l| l.starts_with("options="))
        .unwrap_or_default();
    for o in ["nosuid", "nodev", "allow_other", "default_permissions"] {
        assert!(
            opts_line.split([',', '=']).any(|x| x == o),
            "mount option {o} missing: {opts_line}\n{ctx}"
        );
    }
    assert!(has("root=1000:1000"), "uid=/gid= options: {ctx}");
    assert!(has("write=ok"), "uid 1000 writes (allow_other): {ctx}");
    assert!(has("read=from-uid-1000"), "{ctx}");
    assert!(has("owner=1000:1000"), "{ctx}");
    assert!(has("umount rc=0"), "{ctx}");
    assert!(has("daemon gone"), "the daemon exits after umount: {ctx}");
    assert!(has("unmounted"), "{ctx}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("bad rc=") && l != "bad rc=0"),
        "a mount of a missing bucket must fail: {ctx}"
    );
    assert!(
        out.contains("does not exist") || out.contains("bucket"),
        "mount(8) shows why it failed: {ctx}"
    );
    assert!(has("bad not mounted"), "{ctx}");
    assert!(logtext.contains("unmounted cleanly"), "{ctx}");
    assert!(
        !logtext.contains(&srv.secret_key) && !out.contains(&srv.secret_key),
        "the secret key must never be logged"
    );
    assert_eq!(
        s3().get(&format!("{prefix}/by-1000.txt")).as_deref(),
        Some(&b"from-uid-1000\n"[..]),
        "{ctx}"
    );
    // nothing of the namespace is left on the host
    assert!(!is_mounted(&mnt));
    let _ = fs::remove_dir_all(&sc.base);
}

// ------------------------------------------------------------------------------------------
// metrics

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut c =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.to_string(), body.to_string())
}

/// Sum of every sample whose series starts with `series` (`name` or `name{label="v"`).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(series)
                && matches!(
                    l.as_bytes().get(series.len()),
                    Some(b' ' | b'{' | b'}' | b',')
                )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics_addr(m: &Mount) -> String {
    let log = m.log_text();
    let at = log
        .find("metrics on http://")
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    let rest = &log[at + "metrics on http://".len()..];
    rest.split("/metrics").next().unwrap().to_string()
}

/// The endpoint's counters move with reads and writes: S3 requests by operation, bytes both
/// ways, cache hits and misses, errnos, uploads in flight and the memory budget in use.
#[test]
fn metrics_endpoint_counts_reads_and_writes() {
    let m = Mount::with(
        MountOpts::default()
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--part-size")
            .arg("5"),
    );
    let addr = metrics_addr(&m);
    let (head, m0) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        m0.contains("# TYPE bucketfs_s3_requests_total counter"),
        "{m0}"
    );
    let (h404, _) = http_get(&addr, "/nope");
    assert!(h404.starts_with("HTTP/1.1 404"), "{h404}");

    let t = scratch();
    let big = random_bytes(12 << 20);
    s3().put(&format!("{t}/read.bin"), big.clone());
    assert_eq!(read(&m.p(&format!("{t}/read.bin"))), big);
    write_close(&m.p(&format!("{t}/w.txt")), b"hello metrics").unwrap();
    assert!(fs::metadata(m.p(&format!("{t}/missing.txt"))).is_err());
    for _ in 0..3 {
        let _ = ls(&m.p(&t));
        let _ = fs::metadata(m.p(&format!("{t}/w.txt")));
    }
    let (_, m1) = http_get(&addr, "/metrics");
    let d = |s: &str| sample(&m1, s) - sample(&m0, s);
    let ctx = format!("before:\n{m0}\nafter:\n{m1}");
    assert!(
        d("bucketfs_s3_requests_total{operation=\"GetObject\",outcome=\"ok\"") >= 1.0,
        "{ctx}"
    );
    assert!(
        d("bucketfs_s3_requests_total{operation=\"PutObject\",outcome=\"ok\"") >= 1.0,
        "{ctx}"
    );
    assert!(
        d("bucketfs_s3_requests_total{operation=\"ListObjectsV2\",outcome=\"ok\"") >= 1.0,
        "{ctx}"
    );
    assert!(
        d("bucketfs_s3_received_bytes_total") >= big.len() as f64,
        "{ctx}"
    );
    assert!(d("bucketfs_s3_sent_bytes_total") >= 13.0, "{ctx}");
    assert!(d("bucketfs_read_bytes_total") >= big.len() as f64, "{ctx}");
    assert!(d("bucketfs_written_bytes_total") >= 13.0, "{ctx}");
    assert!(
        d("bucketfs_fuse_errors_total{errno=\"ENOENT\"") >= 1.0,
        "{ctx}"
    );
    assert!(d("bucketfs_cache_hits_total") >= 1.0, "{ctx}");
    assert!(d("bucketfs_cache_misses_total") >= 1.0, "{ctx}");
    assert!(
        sample(&m1, "bucketfs_memory_budget_bytes") >= (16 << 20) as f64,
        "{ctx}"
    );

    // While a large file is open for writing its multipart upload is in flight; while a reader
    // reads ahead, the budget is in use.
    let poll = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = http_get(&addr, "/metrics");
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what} never seen:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut r = fs::File::open(m.p(&format!("{t}/read.bin"))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    r.read_exact(&mut buf).unwrap();
    r.read_exact(&mut buf).unwrap();
    let mut w = fs::File::create(m.p(&format!("{t}/big-w.bin"))).unwrap();
    let wdata = random_bytes(12 << 20);
    w.write_all(&wdata).unwrap();
    poll("bucketfs_uploads_in_flight >= 1", &|x| {
        sample(x, "bucketfs_uploads_in_flight") >= 1.0
    });
    let m2 = poll("bucketfs_memory_budget_used_bytes > 0", &|x| {
        sample(x, "bucketfs_memory_budget_used_bytes") > 0.0
    });
    assert!(
        sample(
            &m2,
            "bucketfs_s3_requests_total{operation=\"CreateMultipartUpload\",outcome=\"ok\""
        ) >= 1.0,
        "{m2}"
    );
    drop(r);
    drop(w);
    let m3 = poll("bucketfs_uploads_in_flight back to 0", &|x| {
        sample(x, "bucketfs_uploads_in_flight") == 0.0
    });
    assert!(
        sample(
            &m3,
            "bucketfs_s3_requests_total{operation=\"CompleteMultipartUpload\",outcome=\"ok\""
        ) >= 1.0,
        "{m3}"
    );
    assert_eq!(
        s3().get(&format!("{t}/big-w.bin")).map(|v| v.len()),
        Some(wdata.len())
    );
}

/// A busy metrics port is a start-up error (exit 2, one line), before anything is mounted.
#[test]
fn metrics_port_in_use_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sc = Scratch::new("mport");
    let mnt = sc.base.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let cmd = bucketfs_command(&MountOpts::default().arg("--metrics-addr").arg(&addr), &mnt);
    let (st, err, _) = run_expect_exit(cmd, Duration::from_secs(60), &mnt);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains(&addr) && err.contains("metrics"), "{err}");
    assert!(!is_mounted(&mnt));
    let _ = fs::remove_dir_all(&sc.base);
}

// ------------------------------------------------------------------------------------------
// logs

/// Each failed S3 request is one log line naming the operation and the key; no credential
/// ever appears in the log.
#[test]
fn failed_request_is_one_log_line_without_credentials() {
    let srv = server();
    let Some((ak, sk)) = srv.ro.clone() else {
        skip("no read-only key on this server: no request can be made to fail cleanly");
        return;
    };
    let t = scratch();
    s3().put(&format!("{t}/r.txt"), "readable");
    let m = Mount::with(
        MountOpts::default()
            .env("AWS_ACCESS_KEY_ID", &ak)
            .env("AWS_SECRET_ACCESS_KEY", &sk),
    );
    assert!(fs::remove_file(m.p(&format!("{t}/r.txt"))).is_err());
    assert!(write_close(&m.p(&format!("{t}/w.txt")), b"x").is_err());
    let log = m.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("S3 request failed"))
        .collect();
    let del: Vec<&&str> = failed
        .iter()
        .filter(|l| l.contains("DeleteObject") && l.contains(&format!("{t}/r.txt")))
        .collect();
    assert_eq!(del.len(), 1, "one line for the failed DeleteObject:\n{log}");
    assert!(
        del[0].contains("error=") && del[0].to_ascii_lowercase().contains("access"),
        "the line says what failed: {}",
        del[0]
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains(&format!("{t}/w.txt")) && l.contains("Object")),
        "a line for the failed upload:\n{log}"
    );
    for l in &failed {
        assert!(l.contains("op=") && l.contains("key="), "{l}");
    }
    for secret in [&sk, &ak, &srv.secret_key, &srv.access_key] {
        assert!(
            !log.contains(secret.as_str()),
            "a credential is in the log:\n{log}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// systemd units

/// The units pass `systemd-analyze verify` as installed by scripts/install.sh (into a scratch
/// root, with the distribution's units copied in), drop-ins included, with no warning at all.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !which("systemd-analyze") {
        skip("systemd-analyze missing (Debian package `systemd`; scripts/install-deps.sh installs it): units NOT verified");
        return;
    }
    let dist_units = Path::new("/usr/lib/systemd/system");
    if !dist_units.join("sysinit.target").exists() {
        skip("no /usr/lib/systemd/system/sysinit.target to verify against: units NOT verified");
        return;
    }
    let sc = Scratch::new("units");
    let root = sc.base.join("root");
    let build_dir = Path::new(BIN).parent().unwrap();
    let r = Command::new("bash")
        .arg(Path::new(REPO).join("scripts/install.sh"))
        .arg("--no-build")
        .env("DESTDIR", &root)
        .env("PREFIX", "/usr/local")
        .env("BUCKETFS_BUILD_DIR", build_dir)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    // what install.sh put where
    for (p, exec) in [
        ("usr/local/bin/bucketfs", true),
        ("usr/local/sbin/mount.bucketfs", true),
        ("etc/systemd/system/bucketfs@.service", false),
        ("etc/bucketfs/data.env.example", false),
        (
            "usr/local/share/doc/bucketfs/docker.service.d/bucketfs.conf",
            false,
        ),
    ] {
        let md = fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(md.permissions().mode() & 0o111 != 0, exec, "{p}");
    }
    assert_eq!(
        fs::read_link(root.join("sbin/mount.bucketfs")).unwrap(),
        PathBuf::from("/usr/local/sbin/mount.bucketfs")
    );
    assert_eq!(
        fs::metadata(root.join("etc/bucketfs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let unit = fs::read_to_string(root.join("etc/systemd/system/bucketfs@.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "KillMode=mixed",
        "EnvironmentFile=/etc/bucketfs/%i.env",
        "DeviceAllow=/dev/fuse rw",
        "ExecStart=/usr/local/bin/bucketfs mount $BUCKETFS_BUCKET %f $BUCKETFS_OPTIONS",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    for namespacing in [
        "ProtectSystem=",
        "PrivateTmp=",
        "ProtectHome=",
        "PrivateDevices=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(namespacing)),
            "{namespacing} would hide the mount in a namespace of the service"
        );
    }

    // the distribution's units (sysinit.target, ...) and the drop-ins, as an admin installs them
    fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(dist_units)
        .arg(root.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    let etc = root.join("etc/systemd/system");
    let doc = root.join("usr/local/share/doc/bucketfs");
    fs::create_dir_all(etc.join("docker.service.d")).unwrap();
    fs::create_dir_all(etc.join("bucketfs@data.service.d")).unwrap();
    fs::copy(
        doc.join("docker.service.d/bucketfs.conf"),
        etc.join("docker.service.d/bucketfs.conf"),
    )
    .unwrap();
    fs::copy(
        doc.join("bucketfs@.service.d/credentials.conf"),
        etc.join("bucketfs@data.service.d/credentials.conf"),
    )
    .unwrap();
    // a stand-in for docker.service, so its drop-in is checked too
    fs::write(
        etc.join("docker.service"),
        "[Unit]\nDescription=stand-in for docker\n[Service]\nExecStart=/usr/local/bin/bucketfs --version\n",
    )
    .unwrap();

    let verify = |what: &str| -> (bool, String) {
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(["bucketfs@data.service", "docker.service"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!(
            "systemd-analyze verify ({what}): rc={:?} output={text:?}",
            o.status.code()
        );
        (o.status.success() && text.trim().is_empty(), text)
    };
    let (ok, text) = verify("units as shipped");
    assert!(ok, "systemd-analyze verify is not clean:\n{text}");

    // The check can fail: a misspelt key in the drop-in is reported.
    let cred = etc.join("bucketfs@data.service.d/credentials.conf");
    let mut f = fs::OpenOptions::new().append(true).open(&cred).unwrap();
    writeln!(f, "LoadCredentials=oops:/nowhere").unwrap();
    drop(f);
    let (ok, text) = verify("with a misspelt key");
    assert!(!ok && text.contains("LoadCredentials"), "{text}");
    let _ = fs::remove_dir_all(&sc.base);
}

/// The same on every server: a read pinned to the version that was opened fails once the
/// object is replaced (412 → ESTALE); each failed GetObject is one log line.
#[test]
fn failed_read_of_a_replaced_object_is_one_line_per_request() {
    let t = scratch();
    let key = format!("{t}/replaced.bin");
    s3().put(&key, random_bytes(12 << 20));
    let m = Mount::new();
    let mut f = fs::File::open(m.p(&key)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    s3().put(&key, random_bytes(12 << 20));
    let r = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 10 << 20);
    let e = r.expect_err("a read of a replaced object must fail, not mix versions");
    assert_eq!(errno_of(&e), libc::ESTALE, "{e}");
    drop(f);
    let log = m.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("S3 request failed") && l.contains(&key))
        .collect();
    assert!(
        !lines.is_empty(),
        "no line for the failed GetObject:\n{log}"
    );
    eprintln!("failed-request lines:\n{}", lines.join("\n"));
    for l in &lines {
        assert!(
            l.contains("op=\"GetObject\"") && l.contains("error="),
            "{l}"
        );
    }
    let srv = server();
    assert!(!log.contains(&srv.secret_key), "{log}");
}
