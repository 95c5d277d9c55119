//! Live migration through a real mount (issue 7): `bucketfs mount --migrate-from OLD_DIR`.
//! An authentik `/data` tree is served while it is copied; readers, writers and a delete run
//! during the copy; at the end the bucket holds the tree (types and POSIX metadata included)
//! and OLD_DIR is untouched. A second test SIGKILLs the daemon mid-copy and remounts.
//!
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

const MIB: usize = 1 << 20;

/// A temp directory the harness sweeps if the test binary dies (`bucketfs-test-<tag>-<pid>-*`).
struct TempTree {
    base: PathBuf,
}

impl TempTree {
    fn new() -> TempTree {
        let base = std::env::temp_dir().join(format!(
            "bucketfs-test-live-{}-{}",
            std::process::id(),
            nanos()
        ));
        fs::create_dir_all(base.join("old")).unwrap();
        TempTree { base }
    }
    fn old(&self) -> PathBuf {
        self.base.join("old")
    }
    fn state(&self) -> PathBuf {
        self.base.join("state")
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Writes `rel` under `root` with `mode` and an mtime of `mtime` (epoch seconds).
fn put_old(root: &Path, rel: &str, data: &[u8], mode: u32, mtime: u64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// authentik's `/data`: icons of every type, backgrounds, reports, settings, names with spaces
/// and non-ASCII letters, one large file, varied modes and old mtimes. Returns rel → bytes.
fn authentik_tree(root: &Path, big: usize, small_count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut add = |rel: String, data: Vec<u8>, mode: u32, mtime: u64| {
        put_old(root, &rel, &data, mode, mtime);
        files.insert(rel, data);
    };
    let icons = "media/public/application-icons";
    add(
        format!("{icons}/grafana.svg"),
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
        0o644,
        1_600_000_000,
    );
    add(
        format!("{icons}/gitlab.png"),
        random_bytes(20_000),
        0o640,
        1_600_000_100,
    );
    add(
        format!("{icons}/favicon.ico"),
        random_bytes(4_286),
        0o600,
        1_600_000_200,
    );
    add(
        format!("{icons}/nextcloud.webp"),
        random_bytes(9_000),
        0o644,
        1_600_000_300,
    );
    add(
        format!("{icons}/my app icon.svg"),
        b"<svg/>".to_vec(),
        0o664,
        1_550_000_000,
    );
    add(
        format!("{icons}/ünïcödé 图标.png"),
        random_bytes(3_000),
        0o644,
        1_500_000_000,
    );
    add(
        "media/public/flow-backgrounds/background.jpg".into(),
        random_bytes(300_000),
        0o644,
        1_450_000_000,
    );
    add(
        "media/public/flow-backgrounds/night sky.jpg".into(),
        random_bytes(200_000),
        0o644,
        1_450_000_001,
    );
    add(
        "reports/public/users.csv".into(),
        b"id,name\n1,akadmin\n".to_vec(),
        0o600,
        1_700_000_000,
    );
    add(
        "reports/public/report 2026 Q1.csv".into(),
        b"a,b\n".to_vec(),
        0o640,
        1_700_000_001,
    );
    add(
        "user_settings.py".into(),
        b"AUTHENTIK_X = 1\n".to_vec(),
        0o755,
        1_400_000_000,
    );
    add(
        "media/public/big.bin".into(),
        random_bytes(big),
        0o644,
        1_650_000_000,
    );
    for i in 0..small_count {
        add(
            format!("media/public/application-icons/app-{i:03}.png"),
            random_bytes(1_000 + i * 37),
            0o644,
            1_600_000_000 + i as u64,
        );
    }
    fs::create_dir_all(root.join("media/public/empty-dir")).unwrap();
    files
}

/// Every path of a tree with a hash of its content, its mode and mtime (nanoseconds).
fn tree_state(root: &Path) -> BTreeMap<String, (String, u32, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let hash = if md.is_dir() {
                stack.push(p.clone());
                String::new()
            } else {
                sha256_hex(&fs::read(&p).unwrap())
            };
            out.insert(rel, (hash, md.mode(), md.mtime(), md.mtime_nsec()));
        }
    }
    out
}

/// What authentik's s3 backend serves for each type it stores (Python's `mimetypes`); other
/// extensions: whatever the mount's own table says.
fn content_type_of(name: &str) -> String {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/vnd.microsoft.icon",
        Some("webp") => "image/webp",
        Some("jpg") => "image/jpeg",
        Some("csv") => "text/csv",
        _ => return bucketfs::meta::content_type_for(name),
    }
    .to_string()
}

fn status(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Waits until the status file says complete; returns it.
fn wait_complete(m: &Mount, path: &Path, limit: Duration) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = status(path) {
            if s["complete"] == true {
                return s;
            }
        }
        if t0.elapsed() > limit {
            panic!(
                "migration not complete after {limit:?}; status: {:?}\nlog:\n{}",
                status(path),
                m.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live_opts(prefix: &str, t: &TempTree, extra: &[&str]) -> MountOpts {
    let mut o = MountOpts::prefix(prefix)
        .arg("--migrate-from")
        .arg(t.old().to_str().unwrap())
        .arg("--migrate-state")
        .arg(t.state().to_str().unwrap());
    for a in extra {
        o = o.arg(a);
    }
    o
}

/// The bucket holds `rel` exactly as the old tree had it: bytes, Content-Type, mode, mtime.
fn assert_copied(prefix: &str, root: &Path, rel: &str, want: &[u8]) {
    let key = format!("{prefix}/{rel}");
    let got = s3()
        .get(&key)
        .unwrap_or_else(|| panic!("{key:?} missing in the bucket"));
    assert!(
        got == want,
        "{key:?}: bucket bytes differ from the old file"
    );
    assert_eq!(
        s3().content_type(&key),
        content_type_of(rel),
        "Content-Type of {key:?}"
    );
    let meta = s3().meta(&key).unwrap();
    let md = fs::metadata(root.join(rel)).unwrap();
    assert_eq!(
        meta.get("mode").map(String::as_str),
        Some(md.mode().to_string().as_str()),
        "x-amz-meta-mode of {key:?}"
    );
    assert_eq!(
        meta.get("mtime").map(String::as_str),
        Some(md.mtime().to_string().as_str()),
        "x-amz-meta-mtime of {key:?}"
    );
}

#[test]
fn live_migration_serves_old_files_while_copying_and_ends_complete() {
    let t = TempTree::new();
    let prefix = scratch();
    let files = authentik_tree(&t.old(), 40 * MIB, 60);
    let before = tree_state(&t.old());
    let t0 = Instant::now();
    // Slowed so the reader, writer and delete below all run while the copy is going on.
    let mut m = Mount::with(live_opts(
        &prefix,
        &t,
        &["--migrate-parallel", "2", "--migrate-throttle-ms", "100"],
    ));
    let status_path = t.state().join("status.json");

    let deleted = "media/public/application-icons/favicon.ico";
    let overwritten = "reports/public/users.csv";
    let appended = "user_settings.py";
    let new_files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("media/public/application-icons/new-{i}.png"),
                random_bytes(2_000 + i),
            )
        })
        .collect();
    std::thread::scope(|s| {
        // Reader: every old file through the mount, byte for byte.
        let reader = s.spawn(|| {
            for (rel, want) in &files {
                if rel == deleted || rel == overwritten || rel == appended {
                    continue;
                }
                let got = fs::read(m.p(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
                assert!(&got == want, "{rel}: bytes through the mount differ");
                let md = fs::metadata(m.p(rel)).unwrap();
                let old = fs::metadata(t.old().join(rel)).unwrap();
                assert_eq!(md.mode(), old.mode(), "mode of {rel} through the mount");
                assert_eq!(md.mtime(), old.mtime(), "mtime of {rel} through the mount");
            }
        });
        // Writer: new files, one old file replaced, one appended to.
        let writer = s.spawn(|| {
            for (rel, data) in &new_files {
                write_close(&m.p(rel), data).unwrap();
            }
            fs::write(m.p(overwritten), b"id,name\n2,replaced\n").unwrap();
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(m.p(appended))
                .unwrap();
            f.write_all(b"EXTRA = 2\n").unwrap();
            f.sync_all().unwrap();
        });
        // A delete: gone from the view at once.
        fs::remove_file(m.p(deleted)).unwrap();
        assert!(!m.p(deleted).exists(), "deleted file still visible");
        assert!(!ls(&m.p("media/public/application-icons")).contains(&"favicon.ico".to_string()));
        reader.join().unwrap();
        writer.join().unwrap();
    });
    let during = status(&status_path);
    let out = Command::new(BIN)
        .arg("migrate-status")
        .arg(t.state())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("migrate-status during the copy:\n{text}");
    if during.as_ref().is_some_and(|s| s["complete"] != true) {
        assert_eq!(
            out.status.code(),
            Some(1),
            "migrate-status while copying: {text}"
        );
        assert!(text.contains("in progress"), "{text}");
    }
    assert!(
        during.as_ref().is_some_and(|s| s["complete"] != true),
        "the readers and writers should have raced the copy (slow it further): {during:?}"
    );
    assert!(
        m.p("media/public/empty-dir").is_dir(),
        "an empty old directory shows"
    );
    let st = wait_complete(&m, &status_path, Duration::from_secs(90));
    let elapsed = t0.elapsed();
    eprintln!("migration complete after {elapsed:?}: {st}");
    assert_eq!(st["failed"], 0, "{st}");
    assert!(m.log_text().contains("--migrate-from can be removed"));
    let out = Command::new(BIN)
        .args(["migrate-status", status_path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate-status once complete: {text}"
    );
    assert!(
        text.contains("complete: --migrate-from can be removed"),
        "{text}"
    );

    // The bucket, read directly: every old file but the deleted one, identical, typed.
    for (rel, want) in &files {
        if rel == deleted || rel == overwritten || rel == appended {
            continue;
        }
        assert_copied(&prefix, &t.old(), rel, want);
    }
    assert_eq!(
        s3().get(&format!("{prefix}/{deleted}")),
        None,
        "deleted file in the bucket"
    );
    assert_eq!(
        s3().get(&format!("{prefix}/{overwritten}")).as_deref(),
        Some(&b"id,name\n2,replaced\n"[..])
    );
    let mut want = files[appended].clone();
    want.extend_from_slice(b"EXTRA = 2\n");
    assert_eq!(s3().get(&format!("{prefix}/{appended}")), Some(want));
    for (rel, data) in &new_files {
        assert_eq!(
            s3().get(&format!("{prefix}/{rel}")).as_ref(),
            Some(data),
            "{rel}"
        );
    }
    assert!(
        s3().keys(&format!("{prefix}/media/public/empty-dir/"))
            .len()
            == 1,
        "the empty directory is kept as a marker"
    );
    assert_eq!(tree_state(&t.old()), before, "OLD_DIR must be untouched");

    // After a remount (same flags) the deleted file stays gone; nothing more to copy.
    m.remount();
    assert!(
        !m.p(deleted).exists(),
        "deleted file came back after remount"
    );
    assert!(!ls(&m.p("media/public/application-icons")).contains(&"favicon.ico".to_string()));
    let st2 = wait_complete(&m, &status_path, Duration::from_secs(30));
    assert_eq!(st2["copied"], 0, "second run copies nothing: {st2}");
    assert_eq!(st2["deleted"], 1, "{st2}");
    assert_eq!(tree_state(&t.old()), before, "OLD_DIR must be untouched");
    assert!(m.unmount().success());
}

#[test]
fn sigkill_mid_copy_then_remount_completes_with_no_open_uploads() {
    let t = TempTree::new();
    let prefix = scratch();
    let mut files = authentik_tree(&t.old(), 30 * MIB, 10);
    for i in 0..3 {
        let rel = format!("reports/public/export-{i}.csv");
        let data = random_bytes(24 * MIB + i);
        put_old(&t.old(), &rel, &data, 0o640, 1_690_000_000);
        files.insert(rel, data);
    }
    let before = tree_state(&t.old());
    let opts = live_opts(
        &prefix,
        &t,
        &["--migrate-parallel", "1", "--part-size", "5"],
    );
    let mut m = Mount::with(opts);
    // Killed while a multipart upload of a large file is open.
    let t0 = Instant::now();
    let mut seen_open = false;
    while t0.elapsed() < Duration::from_secs(60) {
        if !s3().multipart_uploads(&format!("{prefix}/")).is_empty() {
            seen_open = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen_open, "no multipart upload seen:\n{}", m.log_text());
    unsafe {
        libc::kill(m.pid() as i32, libc::SIGKILL);
    }
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(&m.path)
        .status();
    m.kill_and_wait(0);
    let left = s3().multipart_uploads(&format!("{prefix}/"));
    eprintln!(
        "after SIGKILL: open uploads {left:?}, status {:?}",
        status(&t.state().join("status.json"))
    );

    m.mount_again();
    let st = wait_complete(&m, &t.state().join("status.json"), Duration::from_secs(90));
    eprintln!("complete after remount: {st}");
    assert_eq!(st["failed"], 0, "{st}");
    assert!(
        s3().multipart_uploads(&format!("{prefix}/")).is_empty(),
        "multipart uploads left open"
    );
    if !left.is_empty() {
        assert!(
            m.log_text()
                .contains("aborted incomplete multipart uploads"),
            "the upload the kill left open was not aborted by the new daemon:\n{}",
            m.log_text()
        );
    }
    for (rel, want) in &files {
        assert_copied(&prefix, &t.old(), rel, want);
    }
    assert_eq!(tree_state(&t.old()), before, "OLD_DIR must be untouched");
    assert!(m.unmount().success());
}

#[test]
fn a_bad_old_dir_read_only_or_busy_state_stop_the_mount_with_one_line() {
    let t = TempTree::new();
    put_old(
        &t.old(),
        "user_settings.py",
        b"X = 1\n",
        0o644,
        1_400_000_000,
    );
    let prefix = scratch();
    let missing = MountOpts::prefix(&prefix)
        .arg("--migrate-from")
        .arg("/nonexistent/data.old");
    let e = Mount::try_with(missing)
        .err()
        .expect("mounted with a missing OLD_DIR");
    assert!(
        e.contains("exit status: 2") && e.contains("--migrate-from /nonexistent/data.old"),
        "{e}"
    );
    let e = Mount::try_with(live_opts(&prefix, &t, &["--read-only"]))
        .err()
        .expect("mounted read-only with --migrate-from");
    assert!(
        e.contains("exit status: 2") && e.contains("--read-only"),
        "{e}"
    );
    // An old tree above (or at, or below) the mount point would be read through the mount
    // itself: refused before mounting (it hung once).
    let tmp = std::env::temp_dir();
    let over = MountOpts::prefix(&prefix)
        .arg("--migrate-from")
        .arg(tmp.to_str().unwrap());
    let e = Mount::try_with(over)
        .err()
        .expect("mounted with OLD_DIR containing the mount point");
    assert!(
        e.contains("exit status: 2") && e.contains("contains the mount point"),
        "{e}"
    );
    // One daemon per migration state.
    let mut m = Mount::with(live_opts(&prefix, &t, &[]));
    let e = Mount::try_with(live_opts(&prefix, &t, &[]))
        .err()
        .expect("two daemons on one migration state");
    assert!(e.contains("in use by another bucketfs"), "{e}");
    wait_complete(&m, &t.state().join("status.json"), Duration::from_secs(30));
    assert_eq!(
        s3().get(&format!("{prefix}/user_settings.py")).as_deref(),
        Some(&b"X = 1\n"[..])
    );
    assert!(m.unmount().success());
}
