//! Integration tests of `bucketfs migrate SRC DST` (offline migration) on a real S3 server,
//! with a realistic authentik `/data` tree, checked through the raw S3 client and through a
//! bucketfs mount. Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: usize = 1024 * 1024;

/// The environment of a migrate command: authentik's variables for the test server (the
/// bucket named on the command line only), no AWS_* settings of the machine.
fn env(extra: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    let mut all: Vec<(&str, Option<&str>)> = vec![("AUTHENTIK_STORAGE__S3__BUCKET_NAME", None)];
    all.extend_from_slice(extra);
    authentik_env(&all)
}

fn command(args: &[&str], extra: &[(&str, Option<&str>)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("migrate").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AUTHENTIK_") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env(extra) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn migrate_env(args: &[&str], extra: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = command(args, extra);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bucketfs migrate");
    // Bounded: a hung run fails the test instead of the CI job.
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).ok();
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).ok();
        s
    });
    let st = match wait_timeout(&mut child, Duration::from_secs(300)) {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bucketfs migrate {args:?} did not finish within 300 s");
        }
    };
    Run {
        code: st.code().unwrap_or(-1),
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    }
}

fn migrate(args: &[&str]) -> Run {
    migrate_env(args, &[])
}

fn url(prefix: &str) -> String {
    format!("s3://{}/{}", server().bucket, prefix)
}

/// A fresh local directory. `tag` has no `-`: the harness removes `bucketfs-test-<tag>-<pid>-*`
/// left by a test binary that died (it reads the pid after the first `-`).
fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bucketfs-test-{tag}-{}-{}",
        std::process::id(),
        nanos()
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

/// Pseudo-random bytes, fast even in a debug build (xorshift, 8 bytes a step).
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn set_mtime(p: &Path, secs: u64) {
    let st = Command::new("touch")
        .args(["-h", "-d", &format!("@{secs}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "touch {}", p.display());
}

const OLD: u64 = 1_600_000_000; // 2020-09-13

/// A realistic authentik `/data`: nested media with every image type it serves, reports,
/// user_settings.py, unicode and space names, an empty directory, a symlink, modes 0600 and
/// 0755, a file owned by uid 1000, old mtimes, and `big` MiB of pseudo-random bytes.
fn authentik_tree(root: &Path, big: usize) -> Vec<&'static str> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "media/public/application-icons/authentik.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
        ),
        (
            "media/public/application-icons/grafana.png",
            pseudo_random(20_000, 1),
        ),
        (
            "media/public/application-icons/nextcloud.jpg",
            pseudo_random(35_000, 2),
        ),
        (
            "media/public/application-icons/favicon.ico",
            pseudo_random(1_150, 3),
        ),
        (
            "media/public/application-icons/mail logo.webp",
            pseudo_random(7_000, 4),
        ),
        (
            "media/public/application-icons/ünïcödé 名前.png",
            pseudo_random(3_000, 5),
        ),
        (
            "media/public/flow-backgrounds/space.jpg",
            pseudo_random(300_000, 6),
        ),
        (
            "media/public/flow-backgrounds/my background.png",
            pseudo_random(60_000, 7),
        ),
        ("media/public/source-icons/github.svg", b"<svg/>".to_vec()),
        (
            "media/public/large/export-archive.bin",
            pseudo_random(big, 8),
        ),
        (
            "reports/public/report-2024-01.csv",
            b"user,logins\nakadmin,3\n".to_vec(),
        ),
        ("reports/public/users export.csv", b"a,b\n1,2\n".to_vec()),
        ("user_settings.py", b"SECRET = 'x'\n".to_vec()),
        ("media/scripts/run.sh", b"#!/bin/sh\necho hi\n".to_vec()),
        ("media/public/empty.txt", vec![]),
    ];
    for (rel, data) in &files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        set_mtime(&p, OLD + data.len() as u64 % 1000);
    }
    let mode = |rel: &str, m: u32| {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(m)).unwrap()
    };
    mode("user_settings.py", 0o600);
    mode("media/scripts/run.sh", 0o755);
    let own = root.join("reports/public/report-2024-01.csv");
    std::os::unix::fs::lchown(&own, Some(1000), Some(1000)).unwrap();
    fs::create_dir_all(root.join("media/public/empty-dir")).unwrap();
    std::os::unix::fs::symlink(
        "application-icons/authentik.svg",
        root.join("media/public/current-logo.svg"),
    )
    .unwrap();
    set_mtime(&root.join("media/public/current-logo.svg"), OLD + 7);
    files.iter().map(|(r, _)| *r).collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    File {
        /// `S_IFMT` bits: regular files, FIFOs, devices
        kind: u32,
        rdev: u64,
        len: u64,
        perm: u32,
        mtime: i64,
        uid: u32,
        gid: u32,
    },
    Link(PathBuf),
    Dir,
}

/// Every path below `root` with what a migration must keep (file bytes compared apart).
fn snapshot(root: &Path) -> BTreeMap<String, Item> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Item>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.insert(rel, Item::Link(fs::read_link(&p).unwrap()));
            } else if md.is_dir() {
                out.insert(rel, Item::Dir);
                walk(root, &p, out);
            } else {
                out.insert(
                    rel,
                    Item::File {
                        kind: md.mode() & libc::S_IFMT,
                        rdev: md.rdev(),
                        len: md.len(),
                        perm: md.mode() & 0o7777,
                        mtime: md.mtime(),
                        uid: md.uid(),
                        gid: md.gid(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    assert_eq!(sa, sb, "trees differ: {} vs {}", a.display(), b.display());
    for (rel, it) in &sa {
        if matches!(
            it,
            Item::File {
                kind: libc::S_IFREG,
                ..
            }
        ) {
            assert!(
                read(&a.join(rel)) == read(&b.join(rel)),
                "{rel}: bytes differ"
            );
        }
    }
}

fn temp_files(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .filter(|k| {
            k.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".bucketfs-migrate-"))
        })
        .collect()
}

fn count(out: &str, what: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix(&format!("{what}:"))
                .or_else(|| l.strip_prefix(&format!("would be {what}:")))?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no `{what}:` line in\n{out}"))
}

/// PutObject through the raw client; false (printed) if the server refuses the key.
fn try_put(key: &str, body: &str) -> bool {
    let s = s3();
    let r = block_on(
        s.client
            .put_object()
            .bucket(&s.bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(
                body.as_bytes().to_vec(),
            ))
            .send(),
    );
    match r {
        Ok(_) => true,
        Err(e) => {
            eprintln!(
                "{} refuses key {key:?}: {}",
                kind().name(),
                aws_sdk_s3::error::DisplayErrorContext(e)
                    .to_string()
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            false
        }
    }
}

// ------------------------------------------------------------------------------------------

/// file → s3 → file: byte-identical with modes, owners and mtimes; Content-Type and POSIX
/// headers on the keys; the mount shows the same tree; a rerun copies nothing; --dry-run
/// changes nothing; --delete mirrors both ways.
#[test]
fn round_trip_rerun_dry_run_delete_and_mount() {
    let t0 = Instant::now();
    let prefix = format!("{}/", scratch());
    let src = tmpdir("migsrc");
    let files = authentik_tree(&src, 12 * MIB);
    // Special files in the mount's format: a FIFO, and (as root) a character device.
    let fifo = src.join("media/public/upload.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    set_mtime(&fifo, OLD + 9);
    let dev = src.join("media/null-device");
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    let has_dev =
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) } == 0;
    let up = migrate(&[src.to_str().unwrap(), &url(&prefix)]);
    assert_eq!(up.code, 0, "{up:?}");
    assert_eq!(
        count(&up.stdout, "copied"),
        files.len() as u64 + 3 + has_dev as u64,
        "{up:?}"
    );

    let s = s3();
    let types = [
        (
            "media/public/application-icons/authentik.svg",
            "image/svg+xml",
        ),
        ("media/public/application-icons/grafana.png", "image/png"),
        ("media/public/application-icons/nextcloud.jpg", "image/jpeg"),
        (
            "media/public/application-icons/favicon.ico",
            "image/vnd.microsoft.icon",
        ),
        (
            "media/public/application-icons/mail logo.webp",
            "image/webp",
        ),
        ("reports/public/report-2024-01.csv", "text/csv"),
    ];
    for (rel, ct) in types {
        assert_eq!(s.content_type(&format!("{prefix}{rel}")), ct, "{rel}");
    }
    for rel in &files {
        let name = rel.rsplit('/').next().unwrap();
        assert_eq!(
            s.content_type(&format!("{prefix}{rel}")),
            bucketfs::meta::content_type_for(name),
            "{rel}: the type the mount gives the name"
        );
    }
    let m = s.meta(&format!("{prefix}user_settings.py")).unwrap();
    assert_eq!(m["mode"], (libc::S_IFREG | 0o600).to_string());
    assert_eq!(m["mtime"], (OLD + 13).to_string());
    let m = s
        .meta(&format!("{prefix}reports/public/report-2024-01.csv"))
        .unwrap();
    assert_eq!((m["uid"].as_str(), m["gid"].as_str()), ("1000", "1000"));
    let m = s
        .meta(&format!("{prefix}media/public/current-logo.svg"))
        .unwrap();
    assert_eq!(m["mode"], (libc::S_IFLNK | 0o777).to_string());
    assert!(s.multipart_uploads(&prefix).is_empty());
    assert!(up.stdout.contains("verified: "), "{up:?}");

    // Back to a fresh directory.
    let dst = tmpdir("migdst");
    let down = migrate(&[&url(&prefix), dst.to_str().unwrap()]);
    assert_eq!(down.code, 0, "{down:?}");
    assert_same_tree(&src, &dst);
    assert!(temp_files(&dst).is_empty());
    // Every object migrate wrote carries its MD5: each download is checked against it.
    assert!(down.stdout.contains("by stored MD5"), "{down:?}");
    assert!(!down.stdout.contains("size only"), "{down:?}");

    // Reruns: nothing to do, both ways.
    let again = migrate(&[src.to_str().unwrap(), &url(&prefix)]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(count(&again.stdout, "copied"), 0, "{again:?}");
    assert_eq!(count(&again.stdout, "failed"), 0, "{again:?}");
    let again = migrate(&[&url(&prefix), dst.to_str().unwrap()]);
    assert_eq!(count(&again.stdout, "copied"), 0, "{again:?}");
    let again = migrate(&[src.to_str().unwrap(), &url(&prefix), "--checksum"]);
    assert_eq!(count(&again.stdout, "copied"), 0, "{again:?}");

    // The mount shows the same files with the same attributes.
    {
        let mnt = Mount::with(MountOpts::prefix(&prefix));
        for rel in &files {
            let (a, b) = (lstat(&src.join(rel)).unwrap(), lstat(&mnt.p(rel)).unwrap());
            assert_eq!(a.st_size, b.st_size, "{rel}");
            assert_eq!(a.st_mode & 0o7777, b.st_mode & 0o7777, "{rel} mode");
            assert_eq!(a.st_mtime, b.st_mtime, "{rel} mtime");
            assert_eq!((a.st_uid, a.st_gid), (b.st_uid, b.st_gid), "{rel} owner");
        }
        assert_eq!(
            read(&mnt.p("user_settings.py")),
            read(&src.join("user_settings.py"))
        );
        assert_eq!(
            fs::read_link(mnt.p("media/public/current-logo.svg")).unwrap(),
            PathBuf::from("application-icons/authentik.svg")
        );
        assert!(mnt.p("media/public/empty-dir").is_dir());
        let st = lstat(&mnt.p("media/public/upload.fifo")).unwrap();
        assert_eq!(st.st_mode, libc::S_IFIFO | 0o640);
        assert_eq!(st.st_mtime as u64, OLD + 9);
        if has_dev {
            let st = lstat(&mnt.p("media/null-device")).unwrap();
            assert_eq!(st.st_mode, libc::S_IFCHR | 0o600);
            assert_eq!(st.st_rdev, libc::makedev(1, 3));
        }
    }

    // Same size, same mtime, other bytes: only --checksum sees it (both ways).
    let ico = "media/public/application-icons/favicon.ico";
    let mut bytes = read(&src.join(ico));
    bytes[0] ^= 0xff;
    fs::write(src.join(ico), &bytes).unwrap();
    set_mtime(&src.join(ico), OLD + bytes.len() as u64 % 1000);
    let up = migrate(&[src.to_str().unwrap(), &url(&prefix)]);
    assert_eq!(count(&up.stdout, "copied"), 0, "{up:?}");
    let up = migrate(&[src.to_str().unwrap(), &url(&prefix), "--checksum"]);
    assert_eq!(count(&up.stdout, "copied"), 1, "{up:?}");
    assert_eq!(s.get(&format!("{prefix}{ico}")).unwrap(), bytes);

    // A change: --dry-run lists it and touches nothing.
    fs::write(src.join("media/public/new icon.png"), b"png").unwrap();
    fs::remove_file(src.join("reports/public/users export.csv")).unwrap();
    let before = s.keys(&prefix);
    let dry = migrate(&[
        src.to_str().unwrap(),
        &url(&prefix),
        "--dry-run",
        "--delete",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("upload  media/public/new icon.png"),
        "{dry:?}"
    );
    assert!(
        dry.stdout
            .contains("delete  reports/public/users export.csv"),
        "{dry:?}"
    );
    assert_eq!(s.keys(&prefix), before);
    // Without --delete nothing is deleted; with it the bucket mirrors.
    let up = migrate(&[src.to_str().unwrap(), &url(&prefix)]);
    assert_eq!(
        (count(&up.stdout, "copied"), count(&up.stdout, "deleted")),
        (1, 0),
        "{up:?}"
    );
    assert!(s.exists(&format!("{prefix}reports/public/users export.csv")));
    let up = migrate(&[src.to_str().unwrap(), &url(&prefix), "--delete"]);
    assert_eq!(count(&up.stdout, "deleted"), 1, "{up:?}");
    assert!(!s.exists(&format!("{prefix}reports/public/users export.csv")));
    // ... and downwards, a local extra goes only with --delete.
    fs::write(dst.join("stray.txt"), b"x").unwrap();
    let down = migrate(&[
        &url(&prefix),
        dst.to_str().unwrap(),
        "--delete",
        "--checksum",
    ]);
    assert_eq!(down.code, 0, "{down:?}");
    assert_same_tree(&src, &dst);
    eprintln!("round trip test took {:?}", t0.elapsed());
    let _ = fs::remove_dir_all(&src);
    let _ = fs::remove_dir_all(&dst);
}

/// SIGKILL during the 100 MiB multipart upload, then a rerun: the bucket ends complete, no
/// multipart upload stays open. SIGKILL during a download, then a rerun: no temp file left,
/// the tree identical.
#[test]
fn killed_migrations_finish_on_rerun() {
    let prefix = format!("{}/", scratch());
    let src = tmpdir("migkillsrc");
    authentik_tree(&src, 100 * MIB);
    let s = s3();
    let src_s = src.to_str().unwrap().to_string();
    let target = url(&prefix);
    // SIGINT during the multipart upload: it is aborted before the process exits (130).
    let child = command(&[&src_s, &target, "--jobs", "1", "--part-size", "5"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let open = poll(Duration::from_secs(120), || {
        (!s.multipart_uploads(&prefix).is_empty()).then_some(())
    });
    assert!(open.is_some(), "no multipart upload was seen");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{so}\n{se}");
    assert!(so.contains("not finished"), "{so}");
    assert!(
        s.multipart_uploads(&prefix).is_empty(),
        "left open after SIGINT"
    );
    // SIGKILL during the multipart upload: the next run aborts what was left.
    let mut child = command(&[&src_s, &target, "--jobs", "1", "--part-size", "5"], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let open = poll(Duration::from_secs(120), || {
        (!s.multipart_uploads(&prefix).is_empty()).then_some(())
    });
    // A few parts in, so the upload has stored parts.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert!(open.is_some(), "no multipart upload was seen (exit {st:?})");
    let big = format!("{prefix}media/public/large/export-archive.bin");
    let left = s.multipart_uploads(&prefix);
    if left.is_empty() {
        eprintln!("the upload finished before the kill; the rerun still must be clean");
    }
    let re = migrate(&[&src_s, &target, "--progress-interval", "0.2"]);
    assert_eq!(re.code, 0, "{re:?}");
    // Not a terminal: plain progress lines on stderr.
    assert!(
        re.stderr.contains("bucketfs migrate: ") && re.stderr.contains(" files, "),
        "{re:?}"
    );
    if !left.is_empty() {
        assert!(re.stdout.contains("aborted: 1"), "{re:?}");
    }
    assert!(s.multipart_uploads(&prefix).is_empty(), "uploads left open");
    assert!(s.exists(&big));
    let re = migrate(&[&src_s, &target]);
    assert_eq!(count(&re.stdout, "copied"), 0, "{re:?}");

    // Download, killed while the big file is being written.
    let dst = tmpdir("migkilldst");
    let dst_s = dst.to_str().unwrap().to_string();
    let mut child = command(&[&target, &dst_s, "--jobs", "1"], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let saw_temp = poll(Duration::from_secs(120), || {
        temp_files(&dst).iter().any(|_| true).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saw_temp.is_some(), "no temp file was seen");
    let re = migrate(&[&target, &dst_s]);
    assert_eq!(re.code, 0, "{re:?}");
    assert!(temp_files(&dst).is_empty(), "temp files left");
    assert_same_tree(&src, &dst);
    let _ = fs::remove_dir_all(&src);
    let _ = fs::remove_dir_all(&dst);
}

/// A bucket filled the way authentik's guide does it (`aws s3 sync /data s3://bucket/`:
/// objects without any POSIX header) mounts with defaults, and migrate over it copies
/// nothing that is already identical, by size and mtime and by checksum.
#[test]
fn aws_s3_sync_shaped_bucket() {
    let prefix = format!("{}/", scratch());
    let src = tmpdir("migsync");
    let files = authentik_tree(&src, 6 * MIB);
    let s = s3();
    for rel in &files {
        s.put(&format!("{prefix}{rel}"), read(&src.join(rel)));
    }
    {
        let mnt = Mount::with(MountOpts::prefix(&prefix));
        for rel in &files {
            let st = lstat(&mnt.p(rel)).unwrap();
            assert_eq!(st.st_mode & 0o7777, 0o644, "{rel}: default mode");
            assert_eq!(st.st_size as usize, read(&src.join(rel)).len());
        }
        assert_eq!(
            read(&mnt.p("user_settings.py")),
            read(&src.join("user_settings.py"))
        );
    }
    // Only what sync never copies (the symlink, the empty directory) is new.
    let run = migrate(&[src.to_str().unwrap(), &url(&prefix), "--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(count(&run.stdout, "copied"), 2, "{run:?}");
    assert_eq!(count(&run.stdout, "skipped"), files.len() as u64, "{run:?}");
    let run = migrate(&[
        src.to_str().unwrap(),
        &url(&prefix),
        "--dry-run",
        "--checksum",
    ]);
    assert_eq!(count(&run.stdout, "skipped"), files.len() as u64, "{run:?}");
    assert!(!run.stdout.contains("upload  user_settings.py"), "{run:?}");
    // Downloaded, the objects get 0644 and their LastModified; a second download skips.
    let dst = tmpdir("migsyncdst");
    let down = migrate(&[&url(&prefix), dst.to_str().unwrap()]);
    assert_eq!(down.code, 0, "{down:?}");
    let st = lstat(&dst.join("user_settings.py")).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o644);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - st.st_mtime).abs() < 600, "mtime is the LastModified");
    let down = migrate(&[&url(&prefix), dst.to_str().unwrap()]);
    assert_eq!(count(&down.stdout, "copied"), 0, "{down:?}");
    let _ = fs::remove_dir_all(&src);
    let _ = fs::remove_dir_all(&dst);
}

/// Bad input: one clear line and a non-zero exit, never a secret; a key that cannot be a
/// file name is named in the summary while the rest is copied.
#[test]
fn bad_input_is_reported() {
    let prefix = format!("{}/", scratch());
    let r = migrate(&["/nonexistent/bucketfs-src", &url(&prefix)]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("/nonexistent/bucketfs-src"), "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");

    let r = migrate(&["/tmp", "/tmp"]);
    assert_eq!(r.code, 2, "{r:?}");

    let dir = tmpdir("migbad");
    fs::write(dir.join("f"), b"x").unwrap();
    let d = dir.to_str().unwrap();
    let r = migrate_env(
        &[d, &url(&prefix)],
        &[(
            "AUTHENTIK_STORAGE__S3__ENDPOINT",
            Some("http://127.0.0.1:1"),
        )],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("cannot reach"), "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");

    if !is(Kind::Moto) {
        let secret = "wrong-secret-do-not-print-0123456789";
        let r = migrate_env(
            &[d, &url(&prefix)],
            &[("AUTHENTIK_STORAGE__S3__SECRET_KEY", Some(secret))],
        );
        assert_ne!(r.code, 0, "{r:?}");
        assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
        assert!(
            r.stderr.to_ascii_lowercase().contains("denied") || r.stderr.contains("Signature"),
            "{r:?}"
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    }

    // Keys the mount hides are reported by a download, the good ones copied.
    let s = s3();
    s.put(&format!("{prefix}good.txt"), "ok");
    // Some servers (SeaweedFS) refuse a component longer than 255 bytes themselves.
    let long = format!("{prefix}{}", "n".repeat(300));
    let has_long = try_put(&long, "long");
    s.put(&format!("{prefix}clash"), "file");
    s.put(&format!("{prefix}clash/inner"), "dir");
    let dbl = format!("{prefix}a//b");
    // Reported only if the server stores it as is and lists it (SeaweedFS's listing of the
    // prefix does not show it: nothing can see it then, the mount included).
    let has_dbl = put_exact_key(&dbl, "x") && s.keys(&prefix).contains(&dbl);
    let dst = tmpdir("migbaddst");
    let r = migrate(&[&url(&prefix), dst.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(read(&dst.join("good.txt")), b"ok");
    assert_eq!(read(&dst.join("clash/inner")), b"dir");
    if has_long {
        assert!(
            r.stdout.contains(&long) && r.stdout.contains("255"),
            "{r:?}"
        );
    }
    assert!(
        r.stdout.contains(&format!("{prefix}clash: a directory")),
        "{r:?}"
    );
    if has_dbl {
        assert!(r.stdout.contains(&dbl), "{r:?}");
    }
    let want = 1 + has_long as u64 + has_dbl as u64;
    assert_eq!(count(&r.stdout, "failed"), want, "{r:?}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&dst);
}
