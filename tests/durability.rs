//! Durability and failure model on real mounts (issue 3): acceptance cases 15, 16, 17 and 18 of
//! /work/shared/cases/acceptance.md, throttling through the fault-injecting proxy, and (with
//! BUCKETFS_HEAVY=1) peak memory while writing four 1 GiB files at once.
//!
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage. The mounts that need faults
//! talk to S3 through `common::proxy::Proxy`; the test's own S3 client always goes direct.

mod common;

use common::proxy::{Proxy, Throttle};
use common::*;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// The documented retry budget (docs/SEMANTICS.md, "Failures"): `--max-attempts` 4 tries, backoff
/// up to 4 s, each attempt bounded (connect 5 s, whole attempt 60 s). The acceptance cases allow
/// a writer 300 s to get its error; with a reset connection each attempt fails at once, so the
/// error must come far sooner. These tests assert the case's bound and print the real time.
const CASE_BOUND: Duration = Duration::from_secs(300);

/// Errors a writer may get for an upload that cannot be done. ENOTCONN (the daemon died),
/// ENOTSUP and friends are not among them.
const UPLOAD_ERRNOS: &[i32] = &[
    libc::EIO,
    libc::ENOSPC,
    libc::ETIMEDOUT,
    libc::ECONNRESET,
    libc::ECONNREFUSED,
    libc::ENETDOWN,
    libc::ENETUNREACH,
    libc::EHOSTUNREACH,
    libc::EDQUOT,
];

/// A mount, its key prefix `P` and scratch name `T` (`mkdir $MNT/$T` done).
struct Case {
    m: Mount,
    t: String,
}

impl Case {
    fn with(opts: MountOpts) -> Case {
        let m = Mount::with(opts);
        let t = scratch();
        fs::create_dir(m.p(&t)).unwrap_or_else(|e| panic!("mkdir $MNT/$T: {e}"));
        Case { m, t }
    }
    /// Whole-bucket mount through `proxy` (guarded: see `Proxy::guard`).
    fn via(proxy: &Proxy) -> Case {
        Case::via_with(proxy, MountOpts::default())
    }
    fn via_with(proxy: &Proxy, opts: MountOpts) -> Case {
        let m = proxy.mount(opts);
        let t = scratch();
        fs::create_dir(m.p(&t)).unwrap_or_else(|e| panic!("mkdir $MNT/$T: {e}"));
        Case { m, t }
    }
    fn key(&self, rel: &str) -> String {
        format!("{}/{}", self.t, rel)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.m.p(&format!("{}/{}", self.t, rel))
    }
}

fn errno_name(e: i32) -> String {
    let s = unsafe { std::ffi::CStr::from_ptr(libc::strerror(e)) };
    format!("{e} ({})", s.to_string_lossy())
}

/// close(2) a file and return its result (std's drop ignores it).
fn close(f: fs::File) -> std::io::Result<()> {
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fmt_res(r: &Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("errno {}", errno_name(*e)),
    }
}

fn same(got: &Option<Vec<u8>>, want: &[u8]) -> bool {
    got.as_deref() == Some(want)
}

fn desc(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "no object".into(),
        Some(b) => format!("{} bytes, sha256 {}", b.len(), &sha256_hex(b)[..16]),
    }
}

// ==========================================================================================
// case-15: fsync means the bytes are in the bucket

const CASE15_WRITER: &str = r#"
import os, sys
path = sys.argv[1]
a = open(sys.argv[2], "rb").read(); b = open(sys.argv[3], "rb").read()
def write_all(fd, data):
    v = memoryview(data)
    while len(v): v = v[os.write(fd, v):]
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
write_all(fd, a); os.fsync(fd)
print("fsync1", flush=True); sys.stdin.readline()
write_all(fd, b); os.fdatasync(fd)
print("fsync2", flush=True); sys.stdin.readline()
os.kill(os.getpid(), 9)                                   # die without close()
"#;

#[test]
fn case15_fsync_means_bytes_in_bucket() {
    let c = Case::with(MountOpts::default());
    let key = c.key("durable.bin");
    let a = random_bytes(12 * MIB);
    let b = random_bytes(MIB);
    let (fa, fb) = (c.m.tmp().join("a"), c.m.tmp().join("b"));
    fs::write(&fa, &a).unwrap();
    fs::write(&fb, &b).unwrap();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(CASE15_WRITER)
        .arg(c.path("durable.bin"))
        .arg(&fa)
        .arg(&fb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut next_line = |what: &str| -> String {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "writer ended before {what}");
        l.trim().to_string()
    };

    let l = next_line("fsync 1");
    assert_eq!(l, "fsync1");
    let got = s3().get(&key);
    assert!(
        same(&got, &a),
        "after fsync 1 the object must hold exactly the 12 MiB written: {}",
        desc(&got)
    );
    writeln!(stdin, "go").unwrap();

    let l = next_line("fsync 2");
    assert_eq!(l, "fsync2");
    let want = [a.as_slice(), b.as_slice()].concat();
    let got = s3().get(&key);
    assert!(
        same(&got, &want),
        "after fdatasync 2 the object must hold exactly the 13 MiB written: {}",
        desc(&got)
    );
    writeln!(stdin, "go").unwrap();
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        st.signal(),
        Some(9),
        "writer must die by SIGKILL: {st:?} {err}"
    );

    std::thread::sleep(Duration::from_secs(2));
    let h = s3().head(&key).expect("object after SIGKILL");
    assert_eq!(h.len, 13631488, "head_len after the writer was killed");
    let got = s3().get(&key);
    assert!(same(&got, &want), "object after SIGKILL: {}", desc(&got));
    let st = fs::metadata(c.path("durable.bin")).unwrap();
    assert_eq!(st.len(), 13631488, "size through the mount after SIGKILL");
}

/// case-15, last sentence: if an upload fails, fsync returns an error and does not return 0.
/// (1) bytes written while the endpoint is up, endpoint down, fsync: an error. (2) still down,
/// more writes then fsync: an error from the write or from fsync, and 0 from fsync only if the
/// bucket really holds every byte accepted. (3) endpoint up, close: the bucket holds one whole
/// version, and all of it if close returns 0 after an fsync that reported nothing lost.
#[test]
fn case15_fsync_reports_failed_upload() {
    let proxy = Proxy::for_server();
    let c = Case::via(&proxy);
    let key = c.key("f.bin");
    let a = random_bytes(3 * MIB);
    let b = random_bytes(3 * MIB);
    let mut f = fs::File::create(c.path("f.bin")).unwrap();
    f.write_all(&a).unwrap();
    f.sync_all().expect("fsync with the network up");
    assert!(same(&s3().get(&key), &a), "after the first fsync");
    f.write_all(&b).expect("write with the network up");

    // (1)
    proxy.net_down();
    let t0 = Instant::now();
    let s1 = f.sync_all();
    let elapsed = t0.elapsed();
    eprintln!("fsync with the endpoint down: {s1:?} after {elapsed:?}");
    let e = match &s1 {
        Err(e) => errno_of(e),
        Ok(()) => {
            proxy.net_up();
            panic!(
                "fsync returned 0 although the endpoint was down; the bucket holds {}",
                desc(&s3().get(&key))
            )
        }
    };
    assert!(
        UPLOAD_ERRNOS.contains(&e),
        "fsync with the endpoint down: errno {}",
        errno_name(e)
    );
    assert!(elapsed < CASE_BOUND, "error took {elapsed:?}");
    let got = s3().get(&key);
    assert!(
        same(&got, &a),
        "after a failed fsync the bucket keeps the last saved version: {}",
        desc(&got)
    );

    // (2) write() calls of 256 KiB, counting what is accepted
    let more = random_bytes(2 * MIB);
    let mut accepted = 0;
    let mut werr = None;
    while accepted < more.len() {
        match f.write(&more[accepted..(accepted + 256 * 1024).min(more.len())]) {
            Ok(n) => accepted += n,
            Err(e) => {
                werr = Some(e);
                break;
            }
        }
    }
    let s2 = f.sync_all();
    eprintln!("still down: {accepted} bytes accepted, write error {werr:?}, fsync {s2:?}");
    // "fsync returns 0 only when the bucket holds exactly the bytes written so far": the 3 MiB
    // whose first fsync failed were accepted by write() too, so a 0 now would be a lie
    let ab = [a.as_slice(), b.as_slice()].concat();
    let abm = [ab.as_slice(), &more[..accepted]].concat();
    if s2.is_ok() {
        let got = s3().get(&key);
        proxy.net_up();
        assert!(
            same(&got, &abm),
            "a second fsync returned 0 with the endpoint down ({accepted} more bytes accepted, write error {werr:?}), but the bucket holds {} instead of all {} bytes written",
            desc(&got),
            abm.len()
        );
    }

    // (3)
    proxy.net_up();
    let cl = close(f);
    let got = s3().get(&key);
    eprintln!("close after net_up: {cl:?}; bucket: {}", desc(&got));
    if cl.is_ok() {
        assert!(
            same(&got, &abm),
            "close returned 0, but the bucket holds {} instead of all {} bytes written",
            desc(&got),
            abm.len()
        );
    }
    assert!(
        same(&got, &a) || same(&got, &ab) || same(&got, &abm),
        "the object must be a whole version (3 MiB, 6 MiB or 6 MiB + {accepted}): {}",
        desc(&got)
    );
    assert!(
        fs::read_dir(c.path("")).is_ok(),
        "mount usable after net_up"
    );
    let st = fs::metadata(c.path("f.bin")).unwrap();
    assert_eq!(
        Some(st.len()),
        got.as_ref().map(|v| v.len() as u64),
        "size through the mount agrees with the bucket"
    );
}

// ==========================================================================================
// case-16: a failed upload is reported to the writer and loses nothing

/// What the writer thread of case 16 reports.
struct WriterResult {
    res: Result<(), i32>,
    /// from the "go" signal to the end
    elapsed: Duration,
}

/// Writer of case 16: `first` bytes, signal, wait for go, the rest, fsync, close.
fn case16_writer(
    path: PathBuf,
    data: Arc<Vec<u8>>,
    first: usize,
    half_tx: mpsc::Sender<Result<(), i32>>,
    go_rx: mpsc::Receiver<()>,
    done_tx: mpsc::Sender<WriterResult>,
) {
    let e = |e: std::io::Error| errno_of(&e);
    let mut f = match fs::File::create(&path) {
        Ok(f) => f,
        Err(err) => {
            let _ = half_tx.send(Err(e(err)));
            return;
        }
    };
    if let Err(err) = f.write_all(&data[..first]) {
        let _ = half_tx.send(Err(e(err)));
        return;
    }
    let _ = half_tx.send(Ok(()));
    let _ = go_rx.recv();
    let t0 = Instant::now();
    let res = (|| {
        f.write_all(&data[first..]).map_err(e)?;
        f.sync_all().map_err(e)?;
        close(f).map_err(e)
    })();
    let _ = done_tx.send(WriterResult {
        res,
        elapsed: t0.elapsed(),
    });
}

/// The expected outcome of case 16 after the writer has finished, for both variants.
/// `err_required`: `writer: ok` is a failure (network variant).
fn case16_check(c: &Case, r: &WriterResult, previous: &[u8], new: &[u8], err_required: bool) {
    let key = c.key("victim.bin");
    eprintln!("writer: {} after {:?}", fmt_res(&r.res), r.elapsed);
    let got = s3().get(&key);
    match r.res {
        Err(e) => assert!(
            UPLOAD_ERRNOS.contains(&e),
            "writer: errno {} is not an upload error",
            errno_name(e)
        ),
        Ok(()) => {
            assert!(
                !err_required,
                "writer: ok although the endpoint was down while it wrote"
            );
            assert!(
                same(&got, new),
                "writer: ok, so the object must be the complete new data: {}",
                desc(&got)
            );
        }
    }
    assert!(
        same(&got, previous) || same(&got, new),
        "the object must be whole, the previous version ({} bytes) or the new one ({} bytes): {}",
        previous.len(),
        new.len(),
        desc(&got)
    );
    let s3_len = got.as_ref().map(|v| v.len() as u64).unwrap();
    let st = fs::metadata(c.path("victim.bin")).expect("stat victim.bin through the mount");
    assert_eq!(
        st.len(),
        s3_len,
        "stat through the mount must agree with S3 (no phantom new file)"
    );
    // read through the mount agrees too
    let via_mount = read(&c.path("victim.bin"));
    assert!(
        via_mount.len() as u64 == s3_len
            && sha256_hex(&via_mount) == sha256_hex(got.as_ref().unwrap()),
        "content through the mount must be what S3 holds ({} bytes read)",
        via_mount.len()
    );
    // no multipart upload left open after the filesystem's cleanup (the case waits 60 s)
    let left = poll(Duration::from_secs(60), || {
        let u = s3().multipart_uploads(&c.key(""));
        u.is_empty().then_some(())
    });
    let uploads = s3().multipart_uploads(&c.key(""));
    s3().abort_uploads(&c.key(""));
    assert!(
        left.is_some(),
        "multipart uploads left open 60 s after the failure: {uploads:?}"
    );
    let r = fs::read_dir(c.path("")).map(|d| d.count());
    assert!(r.is_ok(), "ls $MNT/$T after net_up: {r:?}");
}

/// Network variant. 200 MiB as in the case: 64 MiB handed over, then the endpoint goes down and
/// the remaining 136 MiB follow (multipart: 25 parts of 8 MiB).
#[test]
fn case16_endpoint_down_mid_upload() {
    let proxy = Proxy::for_server();
    let c = Case::via(&proxy);
    let previous = b"previous-version".to_vec();
    s3().put(&c.key("victim.bin"), previous.clone());
    let data = Arc::new(random_bytes(200 * MIB));
    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (p, d) = (c.path("victim.bin"), data.clone());
    std::thread::spawn(move || case16_writer(p, d, 64 * MIB, half_tx, go_rx, done_tx));
    let half = half_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the writer did not hand over 64 MiB within 120 s");
    half.unwrap_or_else(|e| panic!("writing the first 64 MiB (network up): {}", errno_name(e)));
    proxy.net_down();
    go_tx.send(()).unwrap();
    let r = done_rx.recv_timeout(CASE_BOUND);
    proxy.net_up();
    let r = r.unwrap_or_else(|_| {
        panic!("still_running=yes: the writer is blocked after {CASE_BOUND:?}")
    });
    eprintln!("proxy: {:?}", proxy.stats());
    case16_check(&c, &r, &previous, &data, true);
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _sc: Scratch,
}

impl Tmpfs {
    fn new(size_mib: u32) -> Tmpfs {
        let sc = Scratch::new("tmpfs");
        let dir = sc.base.join("cache");
        fs::create_dir(&dir).unwrap();
        let r = sh(&format!(
            "mount -t tmpfs -o size={size_mib}m bucketfs-test-tmpfs {}",
            q(&dir)
        ));
        assert!(r.ok(), "mount tmpfs: {r:?}");
        Tmpfs { dir, _sc: sc }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if !Path::new("/proc/self/mountinfo").exists()
            || !fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .contains(self.dir.to_str().unwrap())
        {
            let _ = fs::remove_dir(&self.dir);
            let _ = fs::remove_dir(&self._sc.base);
        } else {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Out-of-space variant: the staging directory (`--cache-dir`) is a 50 MiB tmpfs, the file
/// 200 MiB, the network up. s3fs-fuse#269 truncated such files silently. Either the writer gets
/// an error (ENOSPC, EIO) and the bucket keeps the previous version, or the write succeeds and
/// the bucket holds all 200 MiB (a filesystem may stream instead of staging); nothing else.
#[test]
fn case16_staging_disk_full() {
    let cache = Tmpfs::new(50); // dropped after the mount (declared first)
    let c = Case::with(
        MountOpts::default()
            .arg("--cache-dir")
            .arg(cache.dir.to_str().unwrap()),
    );
    let previous = b"previous-version".to_vec();
    s3().put(&c.key("victim.bin"), previous.clone());
    let data = Arc::new(random_bytes(200 * MIB));
    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (p, d) = (c.path("victim.bin"), data.clone());
    std::thread::spawn(move || case16_writer(p, d, 32 * MIB, half_tx, go_rx, done_tx));
    let r = match half_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the writer did not hand over 32 MiB within 120 s")
    {
        // already refused within the first 32 MiB (a 50 MiB disk can fill early): that is the
        // writer's error
        Err(e) => WriterResult {
            res: Err(e),
            elapsed: Duration::ZERO,
        },
        Ok(()) => {
            go_tx.send(()).unwrap();
            done_rx.recv_timeout(CASE_BOUND).unwrap_or_else(|_| {
                panic!("still_running=yes: the writer is blocked after {CASE_BOUND:?}")
            })
        }
    };
    case16_check(&c, &r, &previous, &data, false);
}

// ==========================================================================================
// case-17: unmount with writes still pending

#[test]
fn case17_unmount_right_after_writes() {
    let mut c = Case::with(MountOpts::default());
    let data = random_bytes(30 * MIB);
    let src = c.m.tmp().join("pending");
    fs::write(&src, &data).unwrap();
    let d = c.path("");
    let r = sh(&format!(
        r#"cp {src} {d}/pending.bin; echo "cp_rc=$?"; echo small > {d}/small.txt; fusermount3 -u {mnt}; echo "umount_rc=$?""#,
        src = q(&src),
        d = q(&d),
        mnt = q(&c.m.path)
    ));
    assert!(r.stdout.contains("cp_rc=0"), "{r:?}");
    assert!(
        r.stdout.contains("umount_rc=0"),
        "fusermount3 -u right after the writes: {r:?}"
    );
    let st = c.m.unmount(); // already unmounted: waits for the daemon
    assert!(
        st.success(),
        "daemon exit status after unmount: {}",
        status_desc(&st)
    );
    assert!(same(&s3().get(&c.key("pending.bin")), &data), "pending_ok");
    assert_eq!(
        s3().get(&c.key("small.txt")).as_deref(),
        Some(&b"small\n"[..])
    );
    c.m.mount_again();
}

/// SIGTERM variant, with the files written and closed ("write two more files") and with a file
/// still open, its writes not yet flushed: the daemon saves it before it exits with 0.
#[test]
fn case17_sigterm_with_pending_writes() {
    let mut c = Case::with(MountOpts::default());
    let d1 = random_bytes(12 * MIB);
    fs::write(c.path("t1.bin"), &d1).unwrap();
    fs::write(c.path("t2.txt"), "two\n").unwrap();
    // still open, dirty
    let d3 = random_bytes(5 * MIB + 123);
    let mut open = fs::File::create(c.path("open.bin")).unwrap();
    open.write_all(&d3).unwrap();
    unsafe {
        libc::kill(c.m.pid() as i32, libc::SIGTERM);
    }
    // the daemon saves pending writes first, then detaches; it exits once the file is closed
    let saved = poll(Duration::from_secs(60), || {
        same(&s3().get(&c.key("open.bin")), &d3).then_some(())
    });
    let cl = close(open);
    let st = c.m.kill_and_wait(0); // signal 0: just wait for the exit
    assert!(
        saved.is_some(),
        "open.bin (open, unflushed at SIGTERM) must reach the bucket before the daemon exits: {}\nlog:\n{}",
        desc(&s3().get(&c.key("open.bin"))),
        c.m.log_text()
    );
    eprintln!("close after SIGTERM: {cl:?}");
    assert!(
        st.success(),
        "daemon exit status after SIGTERM: {}",
        status_desc(&st)
    );
    assert!(same(&s3().get(&c.key("t1.bin")), &d1), "t1.bin whole");
    assert_eq!(s3().get(&c.key("t2.txt")).as_deref(), Some(&b"two\n"[..]));
    c.m.mount_again();
}

/// "A filesystem that cannot finish the uploads must say so": (1) `fusermount3 -u` with a dirty
/// file open fails with EBUSY, the mount stays, and the file is saved at close; (2) with the
/// endpoint down, SIGTERM with two dirty files open ends in a non-zero exit that logs both
/// paths, and the bucket keeps the previous version whole.
#[test]
fn case17_cannot_finish_says_so() {
    let proxy = Proxy::for_server();
    let mut c = Case::via(&proxy);

    // (1) busy unmount
    let data = random_bytes(2 * MIB);
    let mut f = fs::File::create(c.path("busy.bin")).unwrap();
    f.write_all(&data).unwrap();
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&c.m.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "fusermount3 -u with a dirty file open must fail (EBUSY), it succeeded"
    );
    assert!(err.contains("busy"), "fusermount3 -u: {err}");
    assert!(
        is_mounted(&c.m.path),
        "still mounted after the refused unmount"
    );
    close(f).expect("close of busy.bin");
    assert!(
        same(&s3().get(&c.key("busy.bin")), &data),
        "busy.bin saved at close"
    );

    // (2) SIGTERM while the endpoint is down
    let previous = b"previous-version".to_vec();
    s3().put(&c.key("old.bin"), previous.clone());
    let mut files = vec![];
    for name in ["old.bin", "new.bin"] {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(c.path(name))
            .unwrap();
        f.write_all(&random_bytes(3 * MIB)).unwrap();
        files.push(f);
    }
    proxy.net_down();
    let t0 = Instant::now();
    unsafe {
        libc::kill(c.m.pid() as i32, libc::SIGTERM);
    }
    // wait until the daemon has given up on both (it logs each path), then close our ends
    let logged = poll(CASE_BOUND, || {
        let log = c.m.log_text();
        let unsaved = |k: &str| {
            log.lines()
                .any(|l| (l.contains("not saved") || l.contains("ERROR")) && l.contains(&c.key(k)))
        };
        (unsaved("old.bin") && unsaved("new.bin")).then_some(())
    });
    let waited = t0.elapsed();
    for f in files {
        let _ = close(f);
    }
    let st = c.m.kill_and_wait(0);
    proxy.net_up();
    let log = c.m.log_text();
    eprintln!(
        "daemon: {} after {waited:?} (endpoint down)",
        status_desc(&st)
    );
    assert!(
        logged.is_some(),
        "each unsaved path must be logged as not saved ({} and {}) within {CASE_BOUND:?}; log:\n{log}",
        c.key("old.bin"),
        c.key("new.bin")
    );
    assert_eq!(
        st.code(),
        Some(1),
        "exit status with unsaved files: {} (documented: 1)",
        status_desc(&st)
    );
    let got = s3().get(&c.key("old.bin"));
    assert!(
        same(&got, &previous),
        "old.bin keeps its previous version: {}",
        desc(&got)
    );
    assert!(
        !s3().exists(&c.key("new.bin")),
        "new.bin was never saved: no object"
    );
    assert!(
        s3().multipart_uploads(&c.key("")).is_empty() || {
            s3().abort_uploads(&c.key(""));
            false
        },
        "no multipart upload left open"
    );
    c.m.mount_again();
    proxy.guard(&c.m);
}

// ==========================================================================================
// case-18: a service user with its own uid writes through the mount

const SVC: u32 = 1000;
const OTHER: u32 = 65534; // nobody:nogroup, not in group 1000

#[test]
fn case18_service_user_writes() {
    let c = Case::with(
        MountOpts::default()
            .arg("--allow-other")
            .arg("--uid")
            .arg(&SVC.to_string())
            .arg("--gid")
            .arg(&SVC.to_string()),
    );
    let d = c.path("");
    let mnt = c.m.path.clone();
    let r = sh(&format!(
        "chown {SVC}:{SVC} {d} && chmod 0770 {d}; echo rc_root_fix=$?; \
         python3 -c 'import os,sys; print(os.path.ismount(sys.argv[1]))' {mnt}",
        d = q(&d),
        mnt = q(&mnt)
    ));
    assert_eq!(r.stdout, "rc_root_fix=0\nTrue\n", "{r:?}");
    let as_svc = |script: &str| sh_as(SVC, SVC, script);
    let r = as_svc(&format!(
        "mkdir -p {}/media/public/application-icons",
        q(&d)
    ));
    assert!(r.ok(), "rc_mkdir: {r:?}");
    let f = c.path("media/public/application-icons/app.png");
    let r = as_svc(&format!(
        "python3 -c \"import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT|os.O_EXCL, 0o666); os.write(fd,b'icon'); os.close(fd); os.chmod(sys.argv[1],0o644)\" {}",
        q(&f)
    ));
    assert!(r.ok(), "rc_create: {r:?}");
    let r = as_svc(&format!(
        "python3 -c \"import os,sys; os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT|os.O_EXCL)\" {}",
        q(&f)
    ));
    assert!(
        !r.ok() && r.stderr.contains("FileExistsError"),
        "a second O_EXCL create must fail with EEXIST: {r:?}"
    );
    let r = sh(&format!("stat -c '%u:%g %a' {}", q(&f)));
    assert_eq!(
        r.stdout.trim(),
        "1000:1000 644",
        "owner and mode of the icon: {r:?}"
    );
    assert_eq!(
        s3().get(&c.key("media/public/application-icons/app.png"))
            .as_deref(),
        Some(&b"icon"[..])
    );

    let r = sh_as(OTHER, OTHER, &format!("cat {}", q(&f)));
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "rc_other_read: another user must get EACCES: {r:?}"
    );
    let r = sh_as(
        OTHER,
        OTHER,
        &format!("echo x > {}/media/public/application-icons/evil.png", q(&d)),
    );
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "rc_other_write: another user must get EACCES: {r:?}"
    );
    assert!(
        !s3().exists(&c.key("media/public/application-icons/evil.png")),
        "no evil.png key"
    );

    s3().put(
        &c.key("media/public/application-icons/from-s3.png"),
        "s3side",
    );
    let r = as_svc(&format!(
        "printf new > {}/media/public/application-icons/from-s3.png",
        q(&d)
    ));
    assert!(
        r.ok(),
        "rc_over: the service user overwrites an object from the s3 backend: {r:?}"
    );
    let r = as_svc(&format!("rm {}", q(&f)));
    assert!(r.ok(), "rc_rm: {r:?}");
    assert!(!s3().exists(&c.key("media/public/application-icons/app.png")));
    assert_eq!(
        s3().get(&c.key("media/public/application-icons/from-s3.png"))
            .as_deref(),
        Some(&b"new"[..])
    );
    drop(c);

    // without allow_other any uid other than the mounting one gets EACCES on $MNT
    let m = Mount::new();
    let r = sh_as(SVC, SVC, &format!("ls {}", q(&m.path)));
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "without --allow-other: {r:?}"
    );
}

// ==========================================================================================
// S3 throttling (503 SlowDown) through the proxy

/// Transient throttling (3 refusals per request, then success) fits in the default budget of 4
/// attempts: writes and reads succeed, single-PUT and multipart.
#[test]
fn throttle_transient_is_retried() {
    let proxy = Proxy::for_server();
    let c = Case::via(&proxy);
    s3().put(&c.key("direct.txt"), "put directly");
    proxy.throttle(Throttle::Transient);
    let t0 = Instant::now();
    // three independent chains at once (each op costs ~3.5 s of backoff here)
    let big = Arc::new(random_bytes(10 * MIB)); // multipart: 8 MiB + 2 MiB parts
    let (ps, pb, pd) = (c.path("small.txt"), c.path("big.bin"), c.path("direct.txt"));
    let small_w = std::thread::spawn(move || write_close(&ps, b"small\n"));
    let big2 = big.clone();
    let big_w = std::thread::spawn(move || write_close(&pb, &big2));
    // a read that must go to S3 (lookup + GET)
    let direct = fs::read(pd);
    small_w
        .join()
        .unwrap()
        .expect("small write under transient 503s");
    big_w
        .join()
        .unwrap()
        .expect("multipart write under transient 503s");
    let elapsed = t0.elapsed();
    let st = proxy.stats();
    proxy.throttle(Throttle::Off);
    eprintln!("under transient throttling: {elapsed:?}, proxy {st:?}");
    assert!(st.throttled >= 3, "the proxy throttled nothing: {st:?}");
    assert_eq!(
        direct.as_deref().ok(),
        Some(&b"put directly"[..]),
        "read through the mount under transient 503s: {direct:?}"
    );
    assert_eq!(
        s3().get(&c.key("small.txt")).as_deref(),
        Some(&b"small\n"[..])
    );
    assert!(same(&s3().get(&c.key("big.bin")), &big), "big.bin in S3");
}

/// Permanent throttling: close returns an error within the retry budget and the bucket keeps
/// the previous version; once the throttle is off the mount works again.
#[test]
fn throttle_always_fails_within_budget() {
    let proxy = Proxy::for_server();
    let c = Case::via(&proxy);
    s3().put(&c.key("v.txt"), "previous-version");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(c.path("v.txt"))
        .unwrap();
    f.write_all(b"new contents").unwrap();
    proxy.throttle(Throttle::Always);
    let t0 = Instant::now();
    let r = close(f);
    let elapsed = t0.elapsed();
    proxy.throttle(Throttle::Off);
    eprintln!("close under permanent 503s: {r:?} after {elapsed:?}");
    let e = r.err().map(|e| errno_of(&e)).unwrap_or(0);
    assert!(
        UPLOAD_ERRNOS.contains(&e),
        "close under permanent 503 SlowDown must fail with an upload error, got {}",
        if e == 0 {
            "success".to_string()
        } else {
            errno_name(e)
        }
    );
    // 4 attempts, backoff up to 4 s between them
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert_eq!(
        s3().get(&c.key("v.txt")).as_deref(),
        Some(&b"previous-version"[..]),
        "the previous version is kept whole"
    );
    write_close(&c.path("after.txt"), b"ok").expect("write after the throttle is off");
    assert_eq!(s3().get(&c.key("after.txt")).as_deref(), Some(&b"ok"[..]));
}

// ==========================================================================================
// peak memory: four 1 GiB files at once (BUCKETFS_HEAVY=1)

const HEAVY_MAX_MEMORY_MIB: u64 = 256;
const HEAVY_SLACK_MIB: u64 = 100;
const GIB: u64 = 1 << 30;

/// Deterministic 1 MiB chunk `i` of file `f` (xorshift; cheap to regenerate for checks).
fn chunk(f: u64, i: u64, buf: &mut [u8]) {
    let mut x =
        (f + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    for w in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

#[test]
fn heavy_peak_memory_four_1gib_writers() {
    if std::env::var("BUCKETFS_HEAVY").as_deref() != Ok("1") {
        eprintln!(
            "not run: set BUCKETFS_HEAVY=1 (writes 4 GiB; scripts/test.sh runs it on one server)"
        );
        return;
    }
    let c = Case::with(
        MountOpts::default()
            .arg("--max-memory")
            .arg(&HEAVY_MAX_MEMORY_MIB.to_string()),
    );
    let pid = c.m.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(kb) = proc_status_kb(pid, "VmRSS") {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t0 = Instant::now();
    let writers: Vec<_> = (0..4u64)
        .map(|fno| {
            let p = c.path(&format!("big{fno}.bin"));
            std::thread::spawn(move || -> Result<(), String> {
                let mut f = fs::File::create(&p).map_err(|e| format!("create: {e}"))?;
                let mut buf = vec![0u8; MIB];
                for i in 0..(GIB / MIB as u64) {
                    chunk(fno, i, &mut buf);
                    f.write_all(&buf)
                        .map_err(|e| format!("write chunk {i}: {e}"))?;
                }
                close(f).map_err(|e| format!("close: {e}"))
            })
        })
        .collect();
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let elapsed = t0.elapsed();
    let hwm = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak_rss.load(Ordering::SeqCst).max(hwm);
    let peak_mib = peak as f64 / 1024.0;
    println!(
        "PEAK-RSS: bucketfs --max-memory {HEAVY_MAX_MEMORY_MIB}: VmHWM {:.1} MiB (sampled VmRSS max {:.1} MiB) while writing 4 x 1 GiB in {elapsed:?} ({:.0} MiB/s) on {}",
        hwm as f64 / 1024.0,
        peak_rss.load(Ordering::SeqCst) as f64 / 1024.0,
        4096.0 / elapsed.as_secs_f64(),
        kind().name()
    );
    eprintln!("PEAK-RSS: {peak_mib:.1} MiB");
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "writer {i}: {r:?}");
    }
    // content: sizes, and chunks at the start, the middle and the end
    let mut buf = vec![0u8; MIB];
    for fno in 0..4u64 {
        let key = c.key(&format!("big{fno}.bin"));
        assert_eq!(
            s3().head(&key).map(|h| h.len),
            Some(GIB as i64),
            "{key} size"
        );
        for i in [0, 511, 1023] {
            chunk(fno, i, &mut buf);
            assert!(
                s3().get_range(&key, i * MIB as u64, MIB as u64) == buf,
                "{key}: chunk {i} differs"
            );
        }
    }
    for fno in 0..4u64 {
        let _ = fs::remove_file(c.path(&format!("big{fno}.bin")));
    }
    assert!(
        peak <= (HEAVY_MAX_MEMORY_MIB + HEAVY_SLACK_MIB) * 1024,
        "peak RSS {peak_mib:.1} MiB > --max-memory {HEAVY_MAX_MEMORY_MIB} MiB + {HEAVY_SLACK_MIB} MiB"
    );
}
