//! Write semantics and POSIX metadata on real mounts (issue 3): append, random writes, ftruncate
//! on an open file, metadata that persists across a remount (s3fs-compatible headers), symlinks
//! in s3fs's format, hard links refused, and two mounts of one bucket (two authentik hosts).
//!
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

struct Case {
    m: Mount,
    t: String,
}

impl Case {
    fn new() -> Case {
        Case::with(MountOpts::default())
    }
    fn with(opts: MountOpts) -> Case {
        let m = Mount::with(opts);
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

/// Compare without printing megabytes: lengths and the first differing offset.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes, expected {}; first difference at {:?}",
        got.len(),
        want.len(),
        first.or(Some(got.len().min(want.len())))
    );
}

#[track_caller]
fn assert_object(key: &str, want: &[u8], what: &str) {
    match s3().get(key) {
        Some(v) => assert_bytes(&v, want, &format!("{what}: object {key}")),
        None => panic!("{what}: no object {key}"),
    }
}

fn close(f: fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    if unsafe { libc::close(fd) } != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Apply `data` at `off` to `model`, growing it with zeros.
fn model_write(model: &mut Vec<u8>, off: usize, data: &[u8]) {
    if model.len() < off + data.len() {
        model.resize(off + data.len(), 0);
    }
    model[off..off + data.len()].copy_from_slice(data);
}

#[track_caller]
fn pwrite(f: &fs::File, off: usize, data: &[u8], what: &str) {
    f.write_all_at(data, off as u64)
        .unwrap_or_else(|e| panic!("{what}: pwrite {} bytes at {off}: {e}", data.len()));
}

// ==========================================================================================
// append

#[test]
fn append_to_existing_files() {
    let mut c = Case::new();
    // written through the mount, appended with O_APPEND
    write_close(&c.path("log.txt"), b"hello\n").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(c.path("log.txt"))
        .unwrap();
    f.write_all(b"world\n").expect("append write");
    close(f).expect("close after append");
    assert_eq!(read(&c.path("log.txt")), b"hello\nworld\n");
    assert_object(&c.key("log.txt"), b"hello\nworld\n", "O_APPEND");

    // written by another S3 client, appended with `>>`
    s3().put(&c.key("from-s3.txt"), "from-s3\n");
    let r = sh(&format!("echo more >> {}", q(c.path("from-s3.txt"))));
    assert!(r.ok(), ">> on an object from S3: {r:?}");
    assert_object(&c.key("from-s3.txt"), b"from-s3\nmore\n", ">>");

    // a multipart-sized object, appended twice in one open with fsync between
    let base = random_bytes(12 * MIB + 5);
    s3().put(&c.key("big.bin"), base.clone());
    let (x, y) = (random_bytes(MIB + 7), random_bytes(333));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(c.path("big.bin"))
        .unwrap();
    f.write_all(&x).unwrap();
    f.sync_all().expect("fsync after the first append");
    let mut want = [base.as_slice(), x.as_slice()].concat();
    assert_object(&c.key("big.bin"), &want, "after append + fsync");
    f.write_all(&y).expect("append after fsync");
    close(f).expect("close");
    want.extend_from_slice(&y);
    assert_object(&c.key("big.bin"), &want, "after the second append");
    c.m.remount();
    assert_bytes(&read(&c.path("big.bin")), &want, "big.bin after remount");
    assert_eq!(read(&c.path("log.txt")), b"hello\nworld\n");
}

// ==========================================================================================
// random writes

#[test]
fn random_writes_into_existing_file() {
    let mut c = Case::new();
    let mut model = random_bytes(3 * MIB);
    s3().put(&c.key("r.bin"), model.clone());
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("r.bin"))
        .unwrap();
    let len = model.len();
    let writes: Vec<(usize, Vec<u8>)> = vec![
        (MIB + 17, random_bytes(4096)),
        (0, random_bytes(100)),
        (2 * MIB - 10, random_bytes(300)), // across a MiB boundary
        (len - 10, random_bytes(20)),      // over the end: grows by 10
        (500, random_bytes(1000)),         // behind bytes already written in this open
        (MIB + 17 + 1000, random_bytes(10)), // inside an earlier write
    ];
    for (off, d) in &writes {
        pwrite(&f, *off, d, "existing file");
        model_write(&mut model, *off, d);
    }
    // read your writes in the same handle
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, (MIB + 16) as u64)
        .expect("read back in the same open");
    assert_bytes(
        &buf,
        &model[MIB + 16..MIB + 16 + 8192],
        "read in the same handle",
    );
    assert_eq!(
        f.metadata().unwrap().len(),
        model.len() as u64,
        "fstat size"
    );
    close(f).expect("close after random writes");
    assert_object(&c.key("r.bin"), &model, "after close");
    assert_bytes(&read(&c.path("r.bin")), &model, "through the mount");
    c.m.remount();
    assert_bytes(&read(&c.path("r.bin")), &model, "after remount");
}

#[test]
fn random_writes_into_new_large_file() {
    let mut c = Case::new();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(c.path("new.bin"))
        .unwrap();
    let mut model = vec![];
    let writes: Vec<(usize, Vec<u8>)> = vec![
        (20 * MIB, random_bytes(MIB)), // far ahead: a hole of zeros before it
        (0, random_bytes(MIB)),
        (10 * MIB + 5, random_bytes(100 * 1024)),
        (512 * 1024, random_bytes(MIB)), // overlaps the write at 0
        (21 * MIB - 3, random_bytes(6)), // across the end
    ];
    for (off, d) in &writes {
        pwrite(&f, *off, d, "new file");
        model_write(&mut model, *off, d);
    }
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, (20 * MIB - 2048) as u64)
        .expect("read back across the hole's end");
    assert_bytes(&buf, &model[20 * MIB - 2048..20 * MIB + 2048], "hole end");
    f.sync_all().expect("fsync");
    assert_object(&c.key("new.bin"), &model, "after fsync");
    // keep writing after fsync, behind the end
    let d = random_bytes(777);
    pwrite(&f, 3 * MIB, &d, "after fsync");
    model_write(&mut model, 3 * MIB, &d);
    close(f).expect("close");
    assert_object(&c.key("new.bin"), &model, "after close");
    c.m.remount();
    assert_bytes(&read(&c.path("new.bin")), &model, "after remount");
}

/// Overwrite in place with a seek-and-write pattern (what a database or `dd conv=notrunc`
/// does), through a shell tool.
#[test]
fn dd_conv_notrunc_overwrites_in_place() {
    let c = Case::new();
    let mut model = random_bytes(2 * MIB);
    s3().put(&c.key("db.bin"), model.clone());
    let patch = random_bytes(4096);
    let src = c.m.tmp().join("patch");
    fs::write(&src, &patch).unwrap();
    let r = sh(&format!(
        "dd if={} of={} bs=4096 seek=100 conv=notrunc status=none",
        q(&src),
        q(c.path("db.bin"))
    ));
    assert!(r.ok(), "dd conv=notrunc: {r:?}");
    model_write(&mut model, 100 * 4096, &patch);
    assert_object(&c.key("db.bin"), &model, "dd conv=notrunc");
}

// ==========================================================================================
// truncate / extend on an open file

#[test]
fn ftruncate_on_open_file() {
    let mut c = Case::new();
    // a new file: write, shrink, write at the new end, extend, write at the far end
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(c.path("t.bin"))
        .unwrap();
    let mut model = random_bytes(100 * 1024);
    pwrite(&f, 0, &model, "t.bin");
    f.set_len(50_000).expect("ftruncate shrink");
    model.truncate(50_000);
    assert_eq!(f.metadata().unwrap().len(), 50_000, "fstat after shrink");
    pwrite(&f, 50_000, b"tail", "t.bin");
    model_write(&mut model, 50_000, b"tail");
    f.set_len(10 * MIB as u64).expect("ftruncate extend");
    model.resize(10 * MIB, 0);
    assert_eq!(
        f.metadata().unwrap().len(),
        10 * MIB as u64,
        "fstat after extend"
    );
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, 5 * MIB as u64)
        .expect("read in the extension");
    assert!(buf.iter().all(|&b| b == 0), "an extension reads as zeros");
    pwrite(&f, 10 * MIB - 3, b"end", "t.bin");
    model_write(&mut model, 10 * MIB - 3, b"end");
    close(f).expect("close");
    assert_object(&c.key("t.bin"), &model, "new file after ftruncate");

    // an existing multipart-sized object: shrink then extend in one open
    let mut old = random_bytes(12 * MIB);
    s3().put(&c.key("old.bin"), old.clone());
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("old.bin"))
        .unwrap();
    f.set_len((5 * MIB + 1) as u64)
        .expect("ftruncate shrink existing");
    old.truncate(5 * MIB + 1);
    f.set_len((7 * MIB) as u64)
        .expect("ftruncate extend existing");
    old.resize(7 * MIB, 0);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = vec![];
    f.read_to_end(&mut all)
        .expect("read the whole file in the same open");
    assert_bytes(&all, &old, "read after shrink+extend in the same open");
    close(f).expect("close");
    assert_object(&c.key("old.bin"), &old, "existing file after shrink+extend");

    // ftruncate to 0 of an existing object, then close with no write
    s3().put(&c.key("zero.bin"), "something");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(c.path("zero.bin"))
        .unwrap();
    f.set_len(0).expect("ftruncate 0");
    close(f).expect("close");
    assert_object(&c.key("zero.bin"), b"", "ftruncate 0");
    c.m.remount();
    assert_eq!(
        fs::metadata(c.path("t.bin")).unwrap().len(),
        10 * MIB as u64
    );
    assert_eq!(
        fs::metadata(c.path("old.bin")).unwrap().len(),
        7 * MIB as u64
    );
    assert_eq!(fs::metadata(c.path("zero.bin")).unwrap().len(), 0);
}

// ==========================================================================================
// POSIX metadata

fn set_mtime(p: &Path, secs: i64) {
    let r = sh(&format!("touch -m -d @{secs} {}", q(p)));
    assert!(r.ok(), "touch -m -d @{secs}: {r:?}");
}

#[test]
fn metadata_persists_across_remount() {
    let mut c = Case::new();
    let f = c.path("f.txt");
    write_close(&f, b"data").unwrap();
    write_close(&c.path("run.sh"), b"#!/bin/sh\n").unwrap();
    let ct_before = s3().content_type(&c.key("f.txt"));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).expect("chown 1234:5678");
    set_mtime(&f, 1_500_000_000);
    fs::set_permissions(c.path("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    let run_sh = c.path("run.sh");
    let check = |when: &str| {
        let st = fs::metadata(&f).unwrap();
        assert_eq!(st.mode(), 0o100600, "{when}: mode");
        assert_eq!((st.uid(), st.gid()), (1234, 5678), "{when}: owner");
        assert_eq!(st.mtime(), 1_500_000_000, "{when}: mtime");
        assert_eq!(st.len(), 4, "{when}: size");
        let st = fs::metadata(&run_sh).unwrap();
        assert_eq!(st.mode(), 0o100755, "{when}: run.sh mode");
    };
    check("before remount");
    c.m.remount();
    check("after remount");
    assert_eq!(read(&f), b"data", "content kept by the metadata change");
    assert_eq!(
        s3().content_type(&c.key("f.txt")),
        ct_before,
        "Content-Type kept by the metadata change"
    );
    // s3fs-compatible headers: decimal st_mode with type bits, integer epoch seconds
    let m = s3().meta(&c.key("f.txt")).unwrap();
    assert_eq!(
        m.get("mode").map(String::as_str),
        Some("33152"),
        "x-amz-meta-mode: {m:?}"
    );
    assert_eq!(
        m.get("uid").map(String::as_str),
        Some("1234"),
        "x-amz-meta-uid: {m:?}"
    );
    assert_eq!(
        m.get("gid").map(String::as_str),
        Some("5678"),
        "x-amz-meta-gid: {m:?}"
    );
    assert_eq!(
        m.get("mtime").map(String::as_str),
        Some("1500000000"),
        "x-amz-meta-mtime: {m:?}"
    );
    let m = s3().meta(&c.key("run.sh")).unwrap();
    assert_eq!(
        m.get("mode").map(String::as_str),
        Some("33261"),
        "run.sh x-amz-meta-mode: {m:?}"
    );

    // a write keeps the stored mode and owner
    let mut w = fs::OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(b"+more").unwrap();
    close(w).expect("close");
    c.m.remount();
    let st = fs::metadata(&f).unwrap();
    assert_eq!(
        (st.mode(), st.uid(), st.gid(), st.len()),
        (0o100600, 1234, 5678, 9),
        "mode/owner after a later write and remount"
    );
}

/// Other tools' formats: octal mode strings (rclone), fractional mtimes (s3fs, rclone); and the
/// mount's defaults for objects with no metadata.
#[test]
fn metadata_from_other_tools_and_defaults() {
    let t = scratch();
    s3().put_meta(
        &format!("{t}/octal.txt"),
        "o",
        &[
            ("mode", "0100600"),
            ("uid", "42"),
            ("gid", "43"),
            ("mtime", "1500000000.750000000"),
        ],
    );
    s3().put_meta(
        &format!("{t}/decimal.txt"),
        "d",
        &[("mode", "33261"), ("mtime", "1400000000")],
    );
    s3().put(&format!("{t}/plain.txt"), "p");
    s3().put(&format!("{t}/sub/inner.txt"), "i");
    let m = Mount::with(
        MountOpts::default()
            .arg("--uid")
            .arg("4242")
            .arg("--gid")
            .arg("4343")
            .arg("--file-mode")
            .arg("0640")
            .arg("--dir-mode")
            .arg("0750"),
    );
    let st = fs::metadata(m.p(&format!("{t}/octal.txt"))).unwrap();
    assert_eq!(st.mode(), 0o100600, "octal x-amz-meta-mode 0100600");
    assert_eq!((st.uid(), st.gid()), (42, 43), "stored owner");
    assert_eq!(
        st.mtime(),
        1_500_000_000,
        "fractional x-amz-meta-mtime (seconds)"
    );
    let st = fs::metadata(m.p(&format!("{t}/decimal.txt"))).unwrap();
    assert_eq!(st.mode(), 0o100755, "decimal x-amz-meta-mode 33261");
    assert_eq!(
        (st.uid(), st.gid()),
        (4242, 4343),
        "no stored owner: --uid/--gid"
    );
    assert_eq!(st.mtime(), 1_400_000_000);
    let st = fs::metadata(m.p(&format!("{t}/plain.txt"))).unwrap();
    assert_eq!(st.mode(), 0o100640, "no metadata: --file-mode");
    assert_eq!(
        (st.uid(), st.gid()),
        (4242, 4343),
        "no metadata: --uid/--gid"
    );
    let st = fs::metadata(m.p(&format!("{t}/sub"))).unwrap();
    assert_eq!(st.mode(), 0o040750, "implicit dir: --dir-mode");
    // the listing path (readdirplus) agrees with lookup
    let r = sh(&format!("ls -ln {}", q(m.p(&t))));
    assert!(r.ok(), "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.ends_with(" octal.txt"))
        .unwrap_or_else(|| panic!("octal.txt in ls -ln: {r:?}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..4],
        ["-rw-------", "1", "42", "43"],
        "ls -ln line: {line}"
    );
}

// ==========================================================================================
// symlinks (s3fs format: body = target, x-amz-meta-mode with S_IFLNK)

fn parse_mode(s: &str) -> Option<u32> {
    if let Some(o) = s.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

#[test]
fn symlinks() {
    let mut c = Case::new();
    write_close(&c.path("real.txt"), b"real contents").unwrap();
    let link = c.path("link");
    std::os::unix::fs::symlink("real.txt", &link).expect("ln -s real.txt link");
    std::os::unix::fs::symlink("sub/missing", c.path("dangling")).expect("ln -s dangling");
    let r = sh(&format!("readlink {}", q(&link)));
    assert_eq!(r.stdout, "real.txt\n", "readlink: {r:?}");
    let (dangling, dir) = (c.path("dangling"), c.path(""));
    let check = |when: &str| {
        assert_eq!(
            fs::read_link(&link).unwrap_or_else(|e| panic!("{when}: readlink: {e}")),
            Path::new("real.txt"),
            "{when}: readlink"
        );
        let st = lstat(&link).unwrap();
        assert_eq!(
            st.st_mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{when}: lstat type"
        );
        assert_eq!(st.st_size, 8, "{when}: lstat size = length of the target");
        assert_eq!(
            read(&link),
            b"real contents",
            "{when}: read through the link"
        );
        assert!(
            fs::metadata(&link).unwrap().is_file(),
            "{when}: stat follows"
        );
        let st = lstat(&dangling).unwrap();
        assert_eq!(
            st.st_mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{when}: dangling lstat"
        );
        let e = fs::metadata(&dangling).unwrap_err();
        assert_eq!(
            errno_of(&e),
            libc::ENOENT,
            "{when}: stat of a dangling link"
        );
        let kinds: Vec<(String, bool)> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.file_type().unwrap().is_symlink(),
                )
            })
            .filter(|(n, _)| n == "link" || n == "real.txt")
            .collect();
        assert!(
            kinds.contains(&("link".into(), true)) && kinds.contains(&("real.txt".into(), false)),
            "{when}: readdir types: {kinds:?}"
        );
    };
    check("mounted");
    // the object: body = target, mode has S_IFLNK
    assert_object(&c.key("link"), b"real.txt", "symlink object body");
    let m = s3().meta(&c.key("link")).unwrap();
    let mode = m.get("mode").and_then(|s| parse_mode(s));
    assert_eq!(
        mode.map(|m| m & libc::S_IFMT),
        Some(libc::S_IFLNK),
        "x-amz-meta-mode of the symlink object: {m:?}"
    );
    c.m.remount();
    check("after remount");

    // written by another tool in s3fs's format
    s3().put_meta(&c.key("s3fs-link"), "real.txt", &[("mode", "41471")]); // 0o120777
    let p = c.path("s3fs-link");
    // another client's object: visible within --metadata-ttl (1 s) + slack
    let r = poll(Duration::from_millis(2500), || fs::read_link(&p).ok());
    assert_eq!(
        r.map(|(t, _)| t),
        Some(PathBuf::from("real.txt")),
        "readlink of an s3fs-style symlink object written by another client: {:?}",
        fs::read_link(&p)
    );
    assert_eq!(read(&p), b"real contents");

    // unlink removes the link object only
    fs::remove_file(&link).expect("rm link");
    assert!(!s3().exists(&c.key("link")), "link object deleted");
    assert_object(&c.key("real.txt"), b"real contents", "target untouched");
}

#[test]
fn hard_link_is_refused() {
    let c = Case::new();
    write_close(&c.path("a.txt"), b"a").unwrap();
    let e = fs::hard_link(c.path("a.txt"), c.path("b.txt")).expect_err("link(2) must fail");
    let n = errno_of(&e);
    assert!(
        n == libc::EPERM || n == libc::ENOTSUP || n == libc::EOPNOTSUPP,
        "hard link: errno {n} ({e}), expected EPERM or ENOTSUP"
    );
    assert!(
        fs::symlink_metadata(c.path("b.txt")).is_err(),
        "no b.txt in the mount"
    );
    assert!(!s3().exists(&c.key("b.txt")), "no b.txt object");
    assert_object(&c.key("a.txt"), b"a", "a.txt untouched");
}

// ==========================================================================================
// special files (s3fs format: empty object, type in x-amz-meta-mode, device in -rdev)

fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn fifos_sockets_and_devices() {
    let mut c = Case::new();
    let fifo = c.path("fifo");
    let rc = unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o640) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // The kernel carries the bytes: bucketfs only stores the name.
    let w = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::write(&fifo, b"through the pipe"))
    };
    assert_eq!(
        fs::read(&fifo).unwrap(),
        b"through the pipe",
        "read the FIFO"
    );
    w.join().unwrap().unwrap();
    let sock = c.path("sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind a unix socket");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    s.write_all(b"x").unwrap();
    drop((l, s));
    // Devices need CAP_MKNOD (tests run as root; elsewhere that part is skipped).
    let dev = libc::makedev(1, 3);
    let chr = c.path("null");
    let made = unsafe { libc::mknod(cpath(&chr).as_ptr(), libc::S_IFCHR | 0o600, dev) } == 0;
    let check = |when: &str| {
        let st = lstat(&fifo).unwrap();
        assert_eq!(st.st_mode, libc::S_IFIFO | 0o640, "{when}: FIFO mode");
        let st = lstat(&sock).unwrap();
        assert_eq!(
            st.st_mode & libc::S_IFMT,
            libc::S_IFSOCK,
            "{when}: socket type"
        );
        if made {
            let st = lstat(&chr).unwrap();
            assert_eq!(st.st_mode, libc::S_IFCHR | 0o600, "{when}: device mode");
            assert_eq!(st.st_rdev, dev, "{when}: device number");
        }
    };
    check("mounted");
    assert_object(&c.key("fifo"), b"", "FIFO object");
    let m = s3().meta(&c.key("fifo")).unwrap();
    assert_eq!(
        m.get("mode").and_then(|s| parse_mode(s)),
        Some(libc::S_IFIFO | 0o640),
        "x-amz-meta-mode of the FIFO: {m:?}"
    );
    if made {
        let m = s3().meta(&c.key("null")).unwrap();
        assert_eq!(
            m.get("rdev"),
            Some(&dev.to_string()),
            "x-amz-meta-rdev: {m:?}"
        );
    }
    c.m.remount();
    check("after remount");
    fs::rename(&fifo, c.path("fifo2")).expect("rename a FIFO");
    let st = lstat(&c.path("fifo2")).unwrap();
    assert_eq!(st.st_mode, libc::S_IFIFO | 0o640, "renamed FIFO");
    fs::remove_file(c.path("fifo2")).expect("unlink a FIFO");
    assert!(!s3().exists(&c.key("fifo2")), "unlinked FIFO object gone");
}

/// S3 keys stop at 1024 bytes: a longer name is refused when it is made, not at close.
#[test]
fn names_past_the_key_limit_fail_at_create() {
    let c = Case::new();
    let comp = "d".repeat(200);
    let mut rel = String::new();
    for _ in 0..4 {
        rel.push_str(&comp);
        fs::create_dir(c.path(&rel)).expect("mkdir of a 200-byte component");
        rel.push('/');
    }
    let room = 1024 - c.key(&rel).len();
    let fits = format!("{rel}{}", "f".repeat(room));
    write_close(&c.path(&fits), b"fits").expect("a 1024-byte key");
    assert_object(&c.key(&fits), b"fits", "1024-byte key");
    let long = format!("{rel}{}", "g".repeat(room + 1));
    let e = fs::File::create(c.path(&long)).expect_err("create of a 1025-byte key");
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG, "create: {e}");
    let e = fs::create_dir(c.path(&long)).expect_err("mkdir past the limit");
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG, "mkdir: {e}");
    let e = std::os::unix::fs::symlink("t", c.path(&long)).expect_err("symlink");
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG, "symlink: {e}");
    let e = fs::rename(c.path(&fits), c.path(&long)).expect_err("rename");
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG, "rename: {e}");
    assert_object(&c.key(&fits), b"fits", "rename refused: the file stays");
    assert!(
        fs::symlink_metadata(c.path(&long)).is_err(),
        "nothing at the long name"
    );
}

// ==========================================================================================
// two mounts of one bucket (two authentik hosts)

const TTL_SECS: u64 = 2;
/// slack on top of --metadata-ttl for request latency on a loaded 2-core machine
const SLACK: Duration = Duration::from_millis(1500);

/// What mount B shows at `p`: None (ENOENT), or the bytes it reads.
fn view(p: &Path) -> Option<Vec<u8>> {
    match fs::read(p) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("mount B: read {}: {e}", p.display()),
    }
}

/// Poll mount B until `done(view)`; every intermediate view must satisfy `allowed` (never a
/// partial or mixed file). Returns the time it took, panicking past ttl + slack.
#[track_caller]
fn until_b(
    p: &Path,
    what: &str,
    allowed: impl Fn(&Option<Vec<u8>>) -> bool,
    done: impl Fn(&Option<Vec<u8>>) -> bool,
) -> Duration {
    let bound = Duration::from_secs(TTL_SECS) + SLACK;
    let t0 = Instant::now();
    loop {
        let v = view(p);
        if done(&v) {
            let took = t0.elapsed();
            eprintln!("two mounts: {what}: seen on B after {took:?} (bound {bound:?})");
            return took;
        }
        assert!(
            allowed(&v),
            "{what}: mount B shows a state that is neither the old nor the new one ({:?} bytes)",
            v.as_ref().map(|b| b.len())
        );
        assert!(
            t0.elapsed() <= bound,
            "{what}: not seen on mount B within --metadata-ttl {TTL_SECS} s + {SLACK:?} (still {:?} bytes)",
            v.as_ref().map(|b| b.len())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_mounts_of_one_bucket() {
    let ttl = TTL_SECS.to_string();
    let opts = MountOpts::default().arg("--metadata-ttl").arg(&ttl);
    let a = Mount::with(opts.clone());
    let b = Mount::with(opts);
    let t = scratch();
    fs::create_dir(a.p(&t)).unwrap();
    let pa = |r: &str| a.p(&format!("{t}/{r}"));
    let pb = |r: &str| b.p(&format!("{t}/{r}"));

    // B has looked (and missed) before A writes: negative entries cached on B
    assert!(view(&pb("f.bin")).is_none());
    assert!(view(&pb("small.txt")).is_none());
    let v1 = random_bytes(20 * MIB);
    write_close(&pa("f.bin"), &v1).expect("write on A");
    write_close(&pa("small.txt"), b"aaaa").expect("write on A");
    // a file closed on A is readable, complete, on B within the bound
    until_b(
        &pb("f.bin"),
        "create (20 MiB)",
        |v| v.is_none(),
        |v| v.as_deref() == Some(&v1[..]),
    );
    until_b(
        &pb("small.txt"),
        "create (small)",
        |v| v.is_none(),
        |v| v.as_deref() == Some(&b"aaaa"[..]),
    );
    assert!(
        poll(Duration::from_secs(TTL_SECS) + SLACK, || ls(&b.p(&t))
            .contains(&"f.bin".to_string())
            .then_some(()))
        .is_some(),
        "B lists f.bin within the bound"
    );

    // overwrite on A, same size (B has the old bytes cached): old or new, then new
    let v2 = random_bytes(20 * MIB);
    write_close(&pa("f.bin"), &v2).expect("overwrite on A");
    write_close(&pa("small.txt"), b"bbbb").expect("overwrite on A");
    until_b(
        &pb("f.bin"),
        "overwrite (20 MiB, same size)",
        |v| v.as_deref() == Some(&v1[..]),
        |v| v.as_deref() == Some(&v2[..]),
    );
    until_b(
        &pb("small.txt"),
        "overwrite (small, same size)",
        |v| v.as_deref() == Some(&b"aaaa"[..]),
        |v| v.as_deref() == Some(&b"bbbb"[..]),
    );

    // a reader on B that opened before an overwrite on A gets that version or an error
    let mut rb = fs::File::open(pb("f.bin")).unwrap();
    let mut head = vec![0u8; MIB];
    rb.read_exact(&mut head).unwrap();
    assert_bytes(&head, &v2[..MIB], "B: first MiB of the open version");
    let v3 = random_bytes(20 * MIB);
    write_close(&pa("f.bin"), &v3).expect("third version on A");
    std::thread::sleep(Duration::from_secs(TTL_SECS) + SLACK);
    let mut rest = vec![];
    match rb.read_to_end(&mut rest) {
        Ok(_) => {
            if rest != v2[MIB..] {
                let at = rest.iter().zip(&v2[MIB..]).position(|(x, y)| x != y);
                let off = MIB + at.unwrap_or(rest.len().min(v2.len() - MIB));
                let from_v3 = at.is_some_and(|i| rest[i..].starts_with(&v3[off..off + 64]));
                panic!(
                    "B: a handle opened before the overwrite read a mix: its version up to offset {off}, then {} ({} bytes read in all)",
                    if from_v3 { "bytes of the version A wrote later" } else { "other bytes" },
                    MIB + rest.len()
                );
            }
        }
        Err(e) => eprintln!("two mounts: reader opened before the overwrite gets an error: {e}"),
    }
    drop(rb);
    until_b(
        &pb("f.bin"),
        "third version",
        |v| v.as_deref() == Some(&v2[..]),
        |v| v.as_deref() == Some(&v3[..]),
    );

    // delete on A: gone on B within the bound (B has it cached)
    fs::remove_file(pa("f.bin")).unwrap();
    fs::remove_file(pa("small.txt")).unwrap();
    until_b(
        &pb("f.bin"),
        "delete",
        |v| v.as_deref() == Some(&v3[..]),
        |v| v.is_none(),
    );
    until_b(
        &pb("small.txt"),
        "delete (small)",
        |v| v.as_deref() == Some(&b"bbbb"[..]),
        |v| v.is_none(),
    );
    // (the directory itself may vanish on B: no key is left under it)
    let names_b = || -> Vec<String> {
        fs::read_dir(b.p(&t))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        poll(Duration::from_secs(TTL_SECS) + SLACK, || (!names_b()
            .contains(&"f.bin".to_string()))
        .then_some(()))
        .is_some(),
        "B still lists f.bin after the bound: {:?}",
        names_b()
    );
}
