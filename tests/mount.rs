//! Integration tests: bucketfs mounted for real on a real S3 server (see tests/common).
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.
//! Acceptance cases: /work/shared/cases/acceptance.md (directory policy (b): no markers).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One acceptance case: a mount, the key prefix `P` the mount root maps to, and scratch name `T`.
struct Case {
    m: Mount,
    p: String,
    t: String,
}

impl Case {
    /// Whole-bucket mount, `mkdir "$MNT/$T"` done.
    fn new() -> Case {
        let c = Case::bare();
        fs::create_dir(c.path("")).unwrap_or_else(|e| panic!("mkdir $MNT/$T: {e}"));
        c
    }

    /// Whole-bucket mount, `$T` not created.
    fn bare() -> Case {
        Case {
            m: Mount::new(),
            p: String::new(),
            t: scratch(),
        }
    }

    /// `BUCKET:<scratch>/<sub>` mount (P = "<scratch>/<sub>/"), `$T` not created.
    fn prefixed(sub: &str) -> (Case, String) {
        let s = scratch();
        let m = Mount::with(MountOpts::prefix(&format!("{s}/{sub}")));
        (
            Case {
                m,
                p: format!("{s}/{sub}/"),
                t: "t".into(),
            },
            s,
        )
    }

    /// Key of `$P$T/rel` (`$P$T/` for "").
    fn key(&self, rel: &str) -> String {
        format!("{}{}/{}", self.p, self.t, rel)
    }

    /// Path `$MNT/$T/rel`.
    fn path(&self, rel: &str) -> PathBuf {
        let d = self.m.path.join(&self.t);
        if rel.is_empty() {
            d
        } else {
            d.join(rel)
        }
    }

    /// bash with MNT, T, P, D (= $MNT/$T) and BUCKET set.
    fn sh(&self, script: &str) -> Sh {
        let mnt = self.m.path.to_str().unwrap().to_string();
        let d = self.path("").to_str().unwrap().to_string();
        let tmp = self.m.tmp().to_str().unwrap().to_string();
        let bucket = server().bucket.clone();
        sh_env(
            script,
            &[
                ("MNT", &mnt),
                ("T", &self.t),
                ("P", &self.p),
                ("D", &d),
                ("BUCKET", &bucket),
                ("TMPD", &tmp),
            ],
        )
    }

    /// Like sh(), and assert it exits 0.
    fn sh_ok(&self, script: &str) -> Sh {
        let r = self.sh(script);
        assert!(
            r.ok(),
            "script failed: {script}\n{r:?}\ndaemon log:\n{}",
            self.m.log_text()
        );
        r
    }

    /// Keys under `$P$T/rel`, relative to `$P$T/`.
    fn rel_keys(&self, rel: &str) -> Vec<String> {
        let base = self.key("");
        s3().keys(&self.key(rel))
            .into_iter()
            .map(|k| k[base.len()..].to_string())
            .collect()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn base_type(ct: &str) -> &str {
    ct.split(';').next().unwrap().trim()
}

fn assert_no_markers(keys: &[String], ctx: &str) {
    let markers: Vec<_> = keys
        .iter()
        .filter(|k| k.ends_with('/') || k.contains("_$folder$"))
        .collect();
    assert!(
        markers.is_empty(),
        "{ctx}: marker objects written (policy (b) forbids them): {markers:?}"
    );
}

// ==========================================================================================
// case-01: a file under implicit directories is reachable right after mount

fn case01(mut c: Case) {
    let icon = c.key("media/public/application-icons/app.png");
    let bg = c.key("media/public/flow-backgrounds/bg.jpg");
    s3().put(&icon, "icon-bytes");
    s3().put(&bg, "bg-bytes");
    c.m.remount();
    let r = c.sh(r#"stat -c %F "$D/media/public/application-icons/app.png"; echo "rc=$?""#);
    assert_eq!(
        lines(&r.stdout),
        ["regular file", "rc=0"],
        "stat of a file under implicit dirs: {r:?}"
    );
    let r = c.sh(r#"cat "$D/media/public/application-icons/app.png""#);
    assert_eq!(r.stdout, "icon-bytes", "{r:?}");
    let r = c.sh(r#"stat -c %F "$D/media/public""#);
    assert_eq!(r.stdout.trim(), "directory", "{r:?}");
    let r = c.sh(r#"ls -1 "$D/media/public""#);
    assert_eq!(
        lines(&r.stdout),
        ["application-icons", "flow-backgrounds"],
        "{r:?}"
    );
    let mut want = vec![icon, bg];
    want.sort();
    assert_eq!(
        s3().keys(&c.key("")),
        want,
        "lookups and listings must not create objects"
    );
}

#[test]
fn case01_implicit_dirs_reachable_after_mount() {
    case01(Case::bare());
}

/// case-01 again on a `BUCKET:prefix` mount, plus prefix isolation.
#[test]
fn case01_prefix_mount() {
    let (c, s) = Case::prefixed("media");
    // neighbours that must not show in the mount
    s3().put(&format!("{s}/other.txt"), "outside");
    s3().put(&format!("{s}/media-sibling/x"), "outside");
    s3().put(&format!("{s}/mediax"), "outside");
    let outside = [
        format!("{s}/media-sibling/x"),
        format!("{s}/mediax"),
        format!("{s}/other.txt"),
    ];
    case01(c);
    // case01 consumed the Case; mount again to check the root listing
    let m = Mount::with(MountOpts::prefix(&format!("{s}/media")));
    assert_eq!(
        ls(&m.path),
        ["t"],
        "root of BUCKET:{s}/media lists only keys under {s}/media/"
    );
    let all = s3().keys(&format!("{s}/"));
    for k in &outside {
        assert!(all.contains(k), "{k} must be untouched");
    }
    assert_eq!(
        all,
        {
            let mut v: Vec<String> = outside.to_vec();
            v.push(format!(
                "{s}/media/t/media/public/application-icons/app.png"
            ));
            v.push(format!("{s}/media/t/media/public/flow-backgrounds/bg.jpg"));
            v.sort();
            v
        },
        "prefix mount: keys map to PREFIX/<path>"
    );
}

// ==========================================================================================
// case-02: a directory stays while it is empty (policy (b): no markers)

#[test]
fn case02_empty_dir_stays() {
    let mut c = Case::new();
    c.sh_ok(r#"mkdir -p "$D/home/user1" && echo a > "$D/home/user1/a.txt""#);
    s3().put(&c.key("implicit/only.txt"), "x");
    c.sh_ok(r#"stat "$D/implicit/only.txt" >/dev/null"#);
    c.sh_ok(r#"rm "$D/home/user1/a.txt" "$D/implicit/only.txt""#);
    let r = c.sh(r#"stat -c %F "$D/home/user1" "$D/implicit""#);
    assert_eq!(
        lines(&r.stdout),
        ["directory", "directory"],
        "dirs stay after their last file is removed: {r:?}"
    );
    let r = c.sh(r#"ls -A "$D/home/user1" | wc -l"#);
    assert_eq!(r.stdout.trim(), "0", "{r:?}");
    let r = c.sh(r#"mkdir "$D/empty"; stat -c %F "$D/empty""#);
    assert_eq!(r.stdout.trim(), "directory", "{r:?}");
    let r = c.sh(r#"echo b > "$D/implicit/again.txt"; echo "rc_reuse=$?""#);
    assert_eq!(r.stdout.trim(), "rc_reuse=0", "{r:?}");
    let r = c.sh(r#"mkdir "$D/full"; touch "$D/full/f"; rmdir "$D/full"; echo "rc_rmdir_full=$?""#);
    assert_ne!(
        r.stdout.trim(),
        "rc_rmdir_full=0",
        "rmdir of a non-empty dir must fail: {r:?}"
    );
    assert!(
        r.stderr.contains("Directory not empty"),
        "rmdir of a non-empty dir: ENOTEMPTY expected: {r:?}"
    );
    assert!(c.path("full/f").is_file(), "full/f must still be there");
    assert!(s3().exists(&c.key("full/f")));

    c.m.remount();
    // policy (b): the empty dirs are gone after remount
    if server_keeps_empty_prefixes() {
        // `home/user1` had a file that was deleted: this server still lists `home/user1/`.
        skip("case-02 `home/user1` gone after remount: the server keeps listing the prefix of a deleted object");
        let r = c.sh(r#"stat -c %F "$D/empty""#);
        assert!(
            r.stdout.is_empty() && r.stderr.contains("No such file or directory"),
            "after remount, the never-written empty dir is gone under policy (b): {r:?}"
        );
    } else {
        let r = c.sh(r#"stat -c %F "$D/empty" "$D/home/user1""#);
        assert_eq!(
            r.stdout, "",
            "after remount, empty dirs are gone under policy (b): {r:?}"
        );
        assert_eq!(
            r.stderr.matches("No such file or directory").count(),
            2,
            "after remount both stats must fail with ENOENT: {r:?}"
        );
    }
    let keys = s3().keys(&c.key(""));
    assert_no_markers(&keys, "case-02");
    assert_eq!(
        c.rel_keys(""),
        ["full/f", "implicit/again.txt"],
        "keys after remount"
    );
    let r = c.sh(r#"rmdir "$D/home/user1" "$D/empty"; echo "rc_rmdir=$?""#);
    if !r.stdout.contains("rc_rmdir=0") {
        // each rmdir that failed must have failed with ENOENT
        let failed = r.stderr.lines().filter(|l| l.contains("rmdir")).count();
        assert_eq!(
            r.stderr.matches("No such file or directory").count(),
            failed,
            "final rmdir: must succeed or fail with ENOENT: {r:?}"
        );
    }
    assert!(
        s3().keys(&c.key("home/")).is_empty(),
        "no stale marker under home/"
    );
    assert!(
        s3().keys(&c.key("empty")).is_empty(),
        "no stale marker for empty"
    );
}

// ==========================================================================================
// case-05: ftruncate extend, shrink, and O_TRUNC

#[test]
fn case05_truncate_extend_shrink_otrunc() {
    let mut c = Case::new();
    let r = c.sh(r#"dd if=/dev/zero of="$D/sparse" bs=1M count=0 seek=64; echo "rc=$?""#);
    assert!(r.stdout.contains("rc=0"), "dd extend: {r:?}");
    let r = c.sh(r#"printf 'head' > "$D/grow";  truncate -s 10000 "$D/grow";  echo "rc_grow=$?""#);
    assert_eq!(r.stdout.trim(), "rc_grow=0", "{r:?}");
    let r =
        c.sh(r#"printf 'abcdef' > "$D/shrink"; truncate -s 3 "$D/shrink"; echo "rc_shrink=$?""#);
    assert_eq!(r.stdout.trim(), "rc_shrink=0", "{r:?}");
    c.sh_ok(r#"printf 'full' > "$D/otrunc"; : > "$D/otrunc""#);
    c.m.remount();
    let r = c.sh_ok(r#"cd "$D" && stat -c '%n %s' sparse grow shrink otrunc"#);
    assert_eq!(
        lines(&r.stdout),
        ["sparse 67108864", "grow 10000", "shrink 3", "otrunc 0"],
        "{r:?}"
    );
    let r = c.sh(r#"cmp -n 67108864 "$D/sparse" /dev/zero; echo "zeros=$?""#);
    assert!(
        r.stdout.contains("zeros=0"),
        "sparse file must read as zeros: {r:?}"
    );
    for (k, len) in [
        ("sparse", 67108864),
        ("grow", 10000),
        ("shrink", 3),
        ("otrunc", 0),
    ] {
        let h = s3()
            .head(&c.key(k))
            .unwrap_or_else(|| panic!("no object {k}"));
        assert_eq!(h.len, len, "ContentLength of {k}");
    }
    let grow = s3().get(&c.key("grow")).unwrap();
    assert_eq!(&grow[..4], b"head");
    assert_eq!(grow.len(), 10000);
    assert_eq!(
        grow[4..].iter().filter(|&&b| b != 0).count(),
        0,
        "grow: 9996 zero bytes after 'head'"
    );
    assert_eq!(s3().get(&c.key("shrink")).unwrap(), b"abc");
    assert_eq!(
        s3().get(&c.key("otrunc")).unwrap(),
        b"",
        "O_TRUNC without a write still truncates"
    );
}

// ==========================================================================================
// case-08: special characters in keys

#[test]
fn case08_special_characters() {
    let c = Case::new();
    let names: Vec<Vec<u8>> = vec![
        b"a b.txt".to_vec(),
        b"a+b.txt".to_vec(),
        b"100%.txt".to_vec(),
        b"%41.txt".to_vec(),
        b"caf\xc3\xa9.txt".to_vec(),
        b"cafe\xcc\x81.txt".to_vec(),
        "日本語.txt".as_bytes().to_vec(),
        b"trail ".to_vec(),
        b" lead".to_vec(),
        b"q?x#y&z=1.txt".to_vec(),
        b"tilde~[1].txt".to_vec(),
        b"dir with space/inner+plus.txt".to_vec(),
    ];
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    for n in &names {
        s3().put(&c.key(&s(n)), format!("v:{}", s(n)));
    }
    let mut got: Vec<Vec<u8>> = fs::read_dir(c.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_vec())
        .collect();
    got.sort();
    let want: BTreeSet<Vec<u8>> = names
        .iter()
        .map(|n| n.split(|&b| b == b'/').next().unwrap().to_vec())
        .collect();
    let want: Vec<Vec<u8>> = want.into_iter().collect();
    let show = |v: &Vec<Vec<u8>>| {
        v.iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        show(&got),
        show(&want),
        "ls names must be byte-for-byte the keys"
    );
    assert_eq!(
        got, want,
        "ls names must be byte-for-byte the keys (NFC/NFD kept apart)"
    );
    let mut bad = vec![];
    for n in &names {
        let p = c.path("").join(std::ffi::OsStr::from_bytes(n));
        match fs::read(&p) {
            Ok(v) if v == format!("v:{}", s(n)).into_bytes() => {}
            other => bad.push(format!(
                "{:?}: {:?}",
                s(n),
                other.map(|v| String::from_utf8_lossy(&v).into_owned())
            )),
        }
    }
    assert!(
        bad.is_empty(),
        "files that do not hold their own content: {bad:?}"
    );

    fs::create_dir(c.path("m")).unwrap();
    let written = ["w x.txt", "w+x.txt", "p%20q.txt", "ünï.txt", "sp ace "];
    for n in written {
        fs::write(c.path("m").join(n), format!("m:{n}"))
            .unwrap_or_else(|e| panic!("write m/{n}: {e}"));
    }
    let mut want_m: Vec<String> = written.iter().map(|n| format!("m/{n}")).collect();
    want_m.sort();
    assert_eq!(
        c.rel_keys("m/"),
        want_m,
        "names written through the mount become exactly these keys"
    );
    assert_eq!(
        s3().get(&c.key("m/p%20q.txt")).as_deref(),
        Some(&b"m:p%20q.txt"[..])
    );
    assert!(
        !s3().exists(&c.key("m/p q.txt")),
        "no key `p q.txt` may exist"
    );

    let r = c.sh(r#"mv "$D/a+b.txt" "$D/c d%2B.txt""#);
    assert!(r.ok(), "mv: {r:?}");
    assert_eq!(
        s3().get(&c.key("c d%2B.txt")).as_deref(),
        Some(&b"v:a+b.txt"[..]),
        "rename to a literal key"
    );
    assert!(
        !s3().exists(&c.key("a+b.txt")),
        "rename source key must be gone"
    );
}

// ==========================================================================================
// case-10: listing directories with more than 1000 entries

#[test]
fn case10_listing_over_1000_entries() {
    let mut c = Case::new();
    let t0 = Instant::now();
    let mut items: Vec<(String, Vec<u8>)> = (1..=2500)
        .map(|i| (c.key(&format!("many/f{i}")), i.to_string().into_bytes()))
        .collect();
    items.extend((1..=1100).map(|i| (c.key(&format!("dirs/d{i}/x")), i.to_string().into_bytes())));
    s3().put_many(items, 32);
    eprintln!("case10: uploaded 3600 keys in {:?}", t0.elapsed());
    for round in 1..=3 {
        let r = c.sh_ok(
            r#"ls "$D/many" | wc -l; ls "$D/many" | sort | uniq -d | wc -l
               ls "$D/dirs" | wc -l; find "$D/dirs" -type f | wc -l"#,
        );
        let counts: Vec<&str> = r.stdout.split_whitespace().collect();
        assert_eq!(
            counts,
            ["2500", "0", "1100", "1100"],
            "round {round}: {r:?}"
        );
        c.m.remount();
    }
    let r = c.sh_ok(r#"cat "$D/many/f2500""#);
    assert_eq!(r.stdout, "2500");
}

// ==========================================================================================
// case-12: Content-Type of objects written through the mount

#[test]
fn case12_content_type() {
    let c = Case::new();
    c.sh_ok(
        r#"d="$D"
        printf '<html></html>' > "$d/index.html";  printf '<svg xmlns="http://www.w3.org/2000/svg"/>' > "$d/icon.svg"
        printf '\x89PNG\r\n\x1a\n' > "$d/icon.png"; printf '\xff\xd8\xff' > "$d/bg.jpg"
        echo '{}' > "$d/a.json"; echo 'b{}' > "$d/s.css"; echo x > "$d/r.txt"; echo x > "$d/blob.bin"; echo x > "$d/noext"
        mv "$d/icon.svg" "$d/logo.svg"; cp "$d/icon.png" "$d/copy.png""#,
    );
    s3().put_typed(&c.key("custom.dat"), "x", Some("image/x-custom"));
    c.sh_ok(r#"d="$D"; chmod 640 "$d/custom.dat"; touch "$d/custom.dat"; mv "$d/custom.dat" "$d/custom2.dat""#);
    let want = [
        ("index.html", "text/html"),
        ("logo.svg", "image/svg+xml"),
        ("icon.png", "image/png"),
        ("copy.png", "image/png"),
        ("bg.jpg", "image/jpeg"),
        ("a.json", "application/json"),
        ("s.css", "text/css"),
        ("r.txt", "text/plain"),
        ("blob.bin", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("custom2.dat", "image/x-custom"),
    ];
    let mut wrong = vec![];
    for (k, t) in want {
        let got = s3().content_type(&c.key(k));
        if base_type(&got) != t {
            wrong.push(format!("{k}: got {got:?}, want {t:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong Content-Type: {wrong:#?}");
    assert!(
        !s3().exists(&c.key("icon.svg")) && !s3().exists(&c.key("custom.dat")),
        "rename sources gone"
    );
}

// ==========================================================================================
// case-14: zero-byte files

#[test]
fn case14_zero_byte_files() {
    let c = Case::new();
    let r = c.sh(
        r#"touch "$D/e1"; echo "rc1=$?"
        : > "$D/e2"; echo "rc2=$?"
        cp /dev/null "$D/e3"; echo "rc3=$?"
        python3 -c 'import os,sys; os.close(os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY|os.O_EXCL, 0o644))' "$D/e4"; echo "rc4=$?"
        printf data > "$D/was-full"; : > "$D/was-full"; echo "rc5=$?""#,
    );
    assert_eq!(
        lines(&r.stdout),
        ["rc1=0", "rc2=0", "rc3=0", "rc4=0", "rc5=0"],
        "{r:?}"
    );
    s3().put(&c.key("ext-empty"), "");
    for k in ["e1", "e2", "e3", "e4", "was-full"] {
        let h = s3()
            .head(&c.key(k))
            .unwrap_or_else(|| panic!("no object for {k}: an empty file must be an object"));
        assert_eq!(h.len, 0, "ContentLength of {k}");
    }
    let r =
        c.sh_ok(r#"stat -c '%F %s' "$D/ext-empty"; wc -c < "$D/ext-empty"; ls -1 "$D" | wc -l"#);
    assert_eq!(
        lines(&r.stdout),
        ["regular empty file 0", "0", "6"],
        "{r:?}"
    );
}

// ==========================================================================================
// authentik-shaped use of /data

#[test]
fn authentik_shape() {
    let s = scratch();
    let m = Mount::with(MountOpts::prefix(&s));
    let root = m.path.clone();
    // the mount point is a mount point (Path.is_mount(): st_dev differs from the parent's)
    let st = lstat(&root).unwrap();
    let parent = lstat(root.parent().unwrap()).unwrap();
    assert_ne!(
        st.st_dev, parent.st_dev,
        "the mount point must be a mount point (st_dev differs from parent)"
    );
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);

    let icons = root.join("media/public/application-icons");
    let reports = root.join("reports/public");
    fs::create_dir_all(&icons).unwrap();
    fs::create_dir_all(&icons).unwrap(); // exist_ok=True
    fs::create_dir_all(&reports).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "media/public/application-icons/app.svg",
            br#"<svg xmlns="http://www.w3.org/2000/svg"/>"#.to_vec(),
        ),
        (
            "media/public/application-icons/app.png",
            b"\x89PNG\r\n\x1a\n....".to_vec(),
        ),
        (
            "media/public/application-icons/favicon.ico",
            b"\x00\x00\x01\x00....".to_vec(),
        ),
        (
            "media/public/application-icons/app.webp",
            b"RIFF....WEBPVP8 ".to_vec(),
        ),
    ];
    for (rel, data) in &files {
        let mut f = fs::File::create(root.join(rel)).unwrap(); // open("wb")
        f.write_all(data).unwrap();
        drop(f);
    }
    // a 30 MiB CSV export streamed in 64 KiB writes
    let csv_rel = "reports/public/export-users.csv";
    let mut csv = Vec::with_capacity(30 << 20);
    let mut i = 0u64;
    csv.extend_from_slice(b"id,username,email,last_login\n");
    while csv.len() < 30 << 20 {
        csv.extend_from_slice(
            format!(
                "{i},user{i},user{i}@example.org,2026-01-01T00:00:{:02}Z\n",
                i % 60
            )
            .as_bytes(),
        );
        i += 1;
    }
    csv.truncate(30 << 20);
    let t0 = Instant::now();
    let mut f = fs::File::create(root.join(csv_rel)).unwrap();
    for chunk in csv.chunks(64 << 10) {
        f.write_all(chunk).unwrap();
    }
    drop(f);
    eprintln!(
        "authentik: 30 MiB CSV written and closed in {:?}",
        t0.elapsed()
    );

    // recursive walk (os.walk) sees exactly these
    let mut seen_files = vec![];
    let mut seen_dirs = vec![];
    fn walk(base: &Path, dir: &Path, files: &mut Vec<String>, dirs: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                dirs.push(rel);
                walk(base, &p, files, dirs);
            } else {
                files.push(rel);
            }
        }
    }
    walk(&root, &root, &mut seen_files, &mut seen_dirs);
    seen_files.sort();
    seen_dirs.sort();
    let mut want_files: Vec<String> = files.iter().map(|(r, _)| r.to_string()).collect();
    want_files.push(csv_rel.to_string());
    want_files.sort();
    assert_eq!(seen_files, want_files, "walk: files");
    assert_eq!(
        seen_dirs,
        [
            "media",
            "media/public",
            "media/public/application-icons",
            "reports",
            "reports/public"
        ],
        "walk: dirs"
    );

    // the bucket holds exactly these keys, with the right Content-Type
    let keys = s3().keys(&format!("{s}/"));
    println!("authentik: keys under {s}/:");
    for k in &keys {
        let h = s3().head(k).unwrap();
        println!(
            "  {k}  {}  {}",
            h.len,
            h.content_type.clone().unwrap_or_default()
        );
        eprintln!("  {k}  {}  {}", h.len, h.content_type.unwrap_or_default());
    }
    let want_keys: Vec<String> = want_files.iter().map(|r| format!("{s}/{r}")).collect();
    assert_eq!(
        keys, want_keys,
        "the bucket holds exactly the files written, nothing else (no markers, no temp files)"
    );
    for (rel, data) in &files {
        assert_eq!(
            &s3().get(&format!("{s}/{rel}")).unwrap(),
            data,
            "{rel} content"
        );
    }
    let types: Vec<(&str, &[&str])> = vec![
        ("media/public/application-icons/app.svg", &["image/svg+xml"]),
        ("media/public/application-icons/app.png", &["image/png"]),
        (
            "media/public/application-icons/favicon.ico",
            &["image/x-icon", "image/vnd.microsoft.icon"],
        ),
        ("media/public/application-icons/app.webp", &["image/webp"]),
        (csv_rel, &["text/csv"]),
    ];
    for (rel, ok) in types {
        let ct = s3().content_type(&format!("{s}/{rel}"));
        assert!(
            ok.contains(&base_type(&ct)),
            "Content-Type of {rel}: got {ct:?}, want one of {ok:?}"
        );
    }
    let h = s3().head(&format!("{s}/{csv_rel}")).unwrap();
    assert_eq!(h.len, 30 << 20);
    assert!(
        s3().get(&format!("{s}/{csv_rel}")).unwrap() == csv,
        "CSV content in S3 differs"
    );
    assert!(
        s3().multipart_uploads(&format!("{s}/")).is_empty(),
        "no multipart upload left open"
    );
    drop(m);
}

// ==========================================================================================
// open(O_CREAT|O_EXCL|O_RDONLY) + close leaves an empty object

#[test]
fn create_excl_rdonly_makes_empty_object() {
    let c = Case::new();
    let p = c.path("created-rdonly");
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let fd = unsafe {
        libc::open(
            cp.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
            0o644,
        )
    };
    assert!(
        fd >= 0,
        "open(O_CREAT|O_EXCL|O_RDONLY): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close: {}",
        std::io::Error::last_os_error()
    );
    let h = s3()
        .head(&c.key("created-rdonly"))
        .expect("an object must exist once close() returned");
    assert_eq!(h.len, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    let fd2 = unsafe {
        libc::open(
            cp.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY,
            0o644,
        )
    };
    let err = std::io::Error::last_os_error();
    if fd2 >= 0 {
        unsafe { libc::close(fd2) };
    }
    assert!(
        fd2 < 0 && errno_of(&err) == libc::EEXIST,
        "second O_EXCL create must fail with EEXIST: {err}"
    );
}

// ==========================================================================================
// basic operations

#[test]
fn large_file_roundtrip_and_random_reads() {
    let mut c = Case::new();
    let data = random_bytes(20 << 20);
    let p = c.path("big.bin");
    {
        let mut f = fs::File::create(&p).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
    }
    let h = s3()
        .head(&c.key("big.bin"))
        .expect("object present after close");
    assert_eq!(h.len, 20 << 20);
    assert!(
        s3().get(&c.key("big.bin")).unwrap() == data,
        "object in S3 differs from what was written"
    );
    assert!(read(&p) == data, "read back through the mount differs");
    let check_random = |p: &Path, tag: &str| {
        use rand::Rng;
        let f = fs::File::open(p).unwrap();
        let mut rng = rand::thread_rng();
        for i in 0..64 {
            let off = rng.gen_range(0..data.len());
            let len = rng.gen_range(1..=(256 << 10)).min(data.len() - off);
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off as u64)
                .unwrap_or_else(|e| panic!("{tag} pread #{i} at {off}+{len}: {e}"));
            assert!(
                buf == data[off..off + len],
                "{tag}: pread #{i} at {off}+{len} differs"
            );
        }
        // read at EOF returns 0
        let mut b = [0u8; 16];
        assert_eq!(
            f.read_at(&mut b, data.len() as u64).unwrap(),
            0,
            "{tag}: read at EOF"
        );
    };
    check_random(&p, "warm");
    c.m.remount();
    check_random(&p, "after remount");
    assert!(read(&p) == data, "read back after remount differs");
}

#[test]
fn unlink_removes_object() {
    let c = Case::new();
    fs::write(c.path("f.txt"), "bye").unwrap();
    assert!(s3().exists(&c.key("f.txt")));
    fs::remove_file(c.path("f.txt")).unwrap();
    assert!(
        !s3().exists(&c.key("f.txt")),
        "unlink must delete the object"
    );
    let e = fs::metadata(c.path("f.txt")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    let e = fs::remove_file(c.path("f.txt")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT, "unlink of a missing file");
    // an object put by another tool can be unlinked too
    s3().put(&c.key("ext.txt"), "x");
    fs::remove_file(c.path("ext.txt")).unwrap();
    assert!(!s3().exists(&c.key("ext.txt")));
    assert!(ls(&c.path("")).is_empty());
}

#[test]
fn mkdir_rmdir() {
    let c = Case::new();
    let d = c.path("d");
    fs::create_dir(&d).unwrap();
    assert!(d.is_dir());
    let e = fs::create_dir(&d).unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST, "mkdir of an existing dir");
    fs::write(d.join("f"), "x").unwrap();
    let e = fs::remove_dir(&d).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTEMPTY, "rmdir of a non-empty dir");
    fs::remove_file(d.join("f")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(errno_of(&fs::metadata(&d).unwrap_err()), libc::ENOENT);
    assert!(s3().keys(&c.key("d")).is_empty(), "no keys left for d");
    // a dir known only from S3 keys
    s3().put(&c.key("imp/k"), "x");
    let e = fs::remove_dir(c.path("imp")).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENOTEMPTY,
        "rmdir of an implicit non-empty dir"
    );
    assert!(s3().exists(&c.key("imp/k")));
    // rmdir on a file, unlink on a dir
    let e = fs::remove_dir(c.path("imp/k")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR);
    let e = fs::remove_file(c.path("imp")).unwrap_err();
    assert!(
        matches!(errno_of(&e), libc::EISDIR | libc::EPERM),
        "unlink of a dir: {e}"
    );
    assert_no_markers(&s3().keys(&c.key("")), "mkdir/rmdir");
}

#[test]
fn rename_file_and_directory() {
    let c = Case::new();
    fs::write(c.path("a.txt"), "A").unwrap();
    fs::rename(c.path("a.txt"), c.path("b.txt")).unwrap();
    assert!(!s3().exists(&c.key("a.txt")), "old key gone");
    assert_eq!(s3().get(&c.key("b.txt")).unwrap(), b"A");
    assert_eq!(fs::read(c.path("b.txt")).unwrap(), b"A");
    assert_eq!(
        errno_of(&fs::metadata(c.path("a.txt")).unwrap_err()),
        libc::ENOENT
    );
    // over an existing file
    fs::write(c.path("c.txt"), "C").unwrap();
    fs::rename(c.path("b.txt"), c.path("c.txt")).unwrap();
    assert_eq!(s3().get(&c.key("c.txt")).unwrap(), b"A");
    assert!(!s3().exists(&c.key("b.txt")));
    assert_eq!(ls(&c.path("")), ["c.txt"]);

    // a directory with files written through the mount and one put directly
    fs::create_dir_all(c.path("src/sub")).unwrap();
    fs::write(c.path("src/1.txt"), "one").unwrap();
    fs::write(c.path("src/sub/2.txt"), "two").unwrap();
    s3().put(&c.key("src/s3only.bin"), "three");
    fs::rename(c.path("src"), c.path("dst")).unwrap();
    assert!(
        s3().keys(&c.key("src/")).is_empty(),
        "keys under src/ must be moved: {:?}",
        s3().keys(&c.key("src/"))
    );
    assert_eq!(
        c.rel_keys("dst/"),
        ["dst/1.txt", "dst/s3only.bin", "dst/sub/2.txt"]
    );
    assert_eq!(s3().get(&c.key("dst/1.txt")).unwrap(), b"one");
    assert_eq!(s3().get(&c.key("dst/sub/2.txt")).unwrap(), b"two");
    assert_eq!(s3().get(&c.key("dst/s3only.bin")).unwrap(), b"three");
    assert_eq!(ls(&c.path("dst")), ["1.txt", "s3only.bin", "sub"]);
    assert_eq!(fs::read(c.path("dst/sub/2.txt")).unwrap(), b"two");
    if server_keeps_empty_prefixes() {
        skip("rename dir: `src` gone afterwards: the server keeps listing the prefix of deleted objects");
    } else {
        assert_eq!(
            errno_of(&fs::metadata(c.path("src")).unwrap_err()),
            libc::ENOENT,
            "rename source dir must be gone"
        );
    }
    // an empty (in-memory) dir renames too
    fs::create_dir(c.path("e1")).unwrap();
    fs::rename(c.path("e1"), c.path("e2")).unwrap();
    assert!(c.path("e2").is_dir());
    assert_eq!(
        errno_of(&fs::metadata(c.path("e1")).unwrap_err()),
        libc::ENOENT
    );
    assert_no_markers(&s3().keys(&c.key("")), "rename");
}

#[test]
fn statfs_works() {
    let m = Mount::new();
    let st = statvfs(&m.path).unwrap_or_else(|e| panic!("statvfs: {e}"));
    assert!(st.f_bsize > 0, "f_bsize");
    // programs check free space before writing; an S3 bucket is not full
    assert!(
        st.f_blocks > 0 && st.f_bavail > 0,
        "f_blocks={} f_bavail={}",
        st.f_blocks,
        st.f_bavail
    );
    assert_eq!(st.f_namemax, 255, "f_namemax");
    let r = sh(&format!("df -P {}", q(&m.path)));
    assert!(r.ok(), "df: {r:?}");
}

#[test]
fn name_too_long() {
    let c = Case::new();
    let long = "n".repeat(256);
    let e = fs::write(c.path(&long), "x").unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENAMETOOLONG,
        "create with a 256-byte name: {e}"
    );
    let e = fs::create_dir(c.path(&long)).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENAMETOOLONG,
        "mkdir with a 256-byte name: {e}"
    );
    let e = fs::metadata(c.path(&long)).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENAMETOOLONG,
        "stat with a 256-byte name: {e}"
    );
    let ok = "n".repeat(255);
    fs::write(c.path(&ok), "x").unwrap_or_else(|e| panic!("255-byte name must work: {e}"));
    assert!(s3().exists(&c.key(&ok)));
    // multi-byte: 52 x (2+3) = 260 bytes > 255, though only 104 characters
    let e = fs::write(c.path(&"é€".repeat(52)), "x").unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ENAMETOOLONG,
        "length is counted in bytes"
    );
    assert_eq!(c.rel_keys(""), [ok]);
}

#[test]
fn file_key_beside_dir_prefix_is_a_directory() {
    let c = Case::new();
    s3().put(&c.key("x"), "file-bytes");
    s3().put(&c.key("x/y"), "child");
    let md = fs::metadata(c.path("x")).unwrap();
    assert!(md.is_dir(), "key `x` beside `x/y`: x must be a directory");
    assert_eq!(ls(&c.path("")), ["x"], "x listed once");
    assert!(fs::read_dir(c.path(""))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_type()
        .unwrap()
        .is_dir());
    assert_eq!(ls(&c.path("x")), ["y"]);
    assert_eq!(fs::read(c.path("x/y")).unwrap(), b"child");
    assert!(
        s3().exists(&c.key("x")),
        "the shadowed key `x` must not be deleted"
    );
}

#[test]
fn odd_keys_hidden_not_deleted() {
    let c = Case::new();
    // keys that have no path form: an empty, `.` or `..` component
    let mut odd = vec![];
    for k in ["w/a//b", "w/a/./b", "w/a/../c", "w/a/."] {
        if put_exact_key(&c.key(k), "odd") {
            odd.push(k);
        } else {
            skip(&format!(
                "odd key {k:?}: the server does not store it as given (AWS does)"
            ));
        }
    }
    if odd.is_empty() {
        skip("odd keys: the server stores none of them");
        return;
    }
    s3().put(&c.key("w/a/real.txt"), "real");
    assert_eq!(
        ls(&c.path("w")),
        ["a"],
        "w lists only a (no `c` from a/../c)"
    );
    assert_eq!(ls(&c.path("w/a")), ["real.txt"], "odd keys are hidden");
    assert_eq!(fs::read(c.path("w/a/real.txt")).unwrap(), b"real");
    fs::remove_file(c.path("w/a/real.txt")).unwrap();
    let _ = c.sh(r#"rm -rf "$D/w""#);
    let left = c.rel_keys("");
    for k in &odd {
        assert!(
            left.contains(&k.to_string()),
            "odd key {k:?} must not be deleted; left: {left:?}"
        );
    }
    assert!(!left.contains(&"w/a/real.txt".to_string()));
}

// ==========================================================================================
// errors before mounting

fn expect_premount_error(
    opts: MountOpts,
    mnt: &Path,
    must_mention: Option<&str>,
    secrets: &[&str],
    what: &str,
) {
    let (st, err, elapsed) =
        run_expect_exit(bucketfs_command(&opts, mnt), Duration::from_secs(60), mnt);
    eprintln!(
        "{what}: {} after {elapsed:?}, stderr: {err:?}",
        status_desc(&st)
    );
    assert!(
        !st.success(),
        "{what}: bucketfs must exit non-zero; stderr: {err}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "{what}: took {elapsed:?} to fail"
    );
    let text = err.trim();
    assert!(!text.is_empty(), "{what}: a message on stderr is expected");
    assert_eq!(
        text.lines().count(),
        1,
        "{what}: one line on stderr expected, got:\n{err}"
    );
    for s in secrets {
        assert!(
            !err.contains(s),
            "{what}: stderr must not contain the secret"
        );
    }
    if let Some(word) = must_mention {
        assert!(
            err.contains(word),
            "{what}: the message should name {word:?}: {err}"
        );
    }
    assert!(!is_mounted(mnt), "{what}: nothing may stay mounted");
}

/// A fresh, empty mount point for a pre-mount error test.
struct PremountDir {
    sc: Scratch,
    mnt: PathBuf,
}

impl PremountDir {
    fn new() -> PremountDir {
        let sc = Scratch::new("premount");
        let mnt = sc.base.join("mnt");
        fs::create_dir(&mnt).unwrap();
        PremountDir { sc, mnt }
    }
}

impl Drop for PremountDir {
    fn drop(&mut self) {
        if !is_mounted(&self.mnt) {
            let _ = fs::remove_dir(&self.mnt);
            let _ = fs::remove_dir(&self.sc.base);
        }
    }
}

#[test]
fn premount_error_wrong_secret() {
    let srv = server();
    if srv.kind == Kind::Moto {
        skip("wrong secret: moto accepts any signature (auth off), so it cannot be detected");
        return;
    }
    let d = PremountDir::new();
    let bad = format!("wrong{}", &scratch()[2..]);
    let opts = MountOpts::default().env("AWS_SECRET_ACCESS_KEY", &bad);
    expect_premount_error(opts, &d.mnt, None, &[&bad, &srv.secret_key], "wrong secret");
}

#[test]
fn premount_error_missing_bucket() {
    let srv = server();
    let d = PremountDir::new();
    let nb = format!("bucketfs-missing-{}", &scratch()[2..12]);
    let opts = MountOpts {
        spec: nb.clone(),
        ..Default::default()
    };
    expect_premount_error(
        opts,
        &d.mnt,
        Some(&nb),
        &[&srv.secret_key],
        "missing bucket",
    );
}

#[test]
fn premount_error_unreachable_endpoint() {
    let srv = server();
    let d = PremountDir::new();
    let opts = MountOpts {
        flags: false,
        ..Default::default()
    }
    .arg("--endpoint")
    .arg("http://127.0.0.1:1")
    .arg("--region")
    .arg(&srv.region)
    .arg("--force-path-style")
    .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1");
    expect_premount_error(
        opts,
        &d.mnt,
        None,
        &[&srv.secret_key],
        "unreachable endpoint",
    );
}

/// A named profile that does not exist is an error, even with working keys in the environment
/// (they would otherwise be used without a word).
#[test]
fn premount_error_missing_profile() {
    let srv = server();
    let d = PremountDir::new();
    let name = format!("nosuch-{}", &scratch()[2..10]);
    let none = d.sc.base.join("no-aws-files");
    let opts = MountOpts::default()
        .arg("--profile")
        .arg(&name)
        .env("AWS_CONFIG_FILE", none.join("config").to_str().unwrap())
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            none.join("credentials").to_str().unwrap(),
        );
    expect_premount_error(
        opts,
        &d.mnt,
        Some(&name),
        &[&srv.secret_key],
        "missing profile",
    );
}

#[test]
fn premount_error_missing_mount_point() {
    let srv = server();
    let d = PremountDir::new();
    let missing = d.sc.base.join("no-such-dir");
    expect_premount_error(
        MountOpts::default(),
        &missing,
        Some(missing.to_str().unwrap()),
        &[&srv.secret_key],
        "missing mount point",
    );
}

/// The read-only key: reads work through the mount; writes fail with an error, never silently.
#[test]
fn read_only_key() {
    let srv = server();
    let Some((ak, sk)) = srv.ro.clone() else {
        skip("no read-only key on this server");
        return;
    };
    let t = scratch();
    s3().put(&format!("{t}/r.txt"), "readable");
    let m = Mount::with(
        MountOpts::default()
            .env("AWS_ACCESS_KEY_ID", &ak)
            .env("AWS_SECRET_ACCESS_KEY", &sk),
    );
    assert_eq!(fs::read(m.p(&format!("{t}/r.txt"))).unwrap(), b"readable");
    let w = write_close(&m.p(&format!("{t}/w.txt")), b"x");
    assert!(
        w.is_err(),
        "a write with a read-only key must fail (at the latest in close()), not succeed silently"
    );
    eprintln!("read-only key: write failed with {:?}", w.unwrap_err());
    assert!(!s3().exists(&format!("{t}/w.txt")));
    let e = fs::remove_file(m.p(&format!("{t}/r.txt")));
    assert!(e.is_err(), "unlink with a read-only key must fail");
    assert!(s3().exists(&format!("{t}/r.txt")));
}

// ==========================================================================================
// other uids (standard FUSE behaviour; case-18 covers the full permission model)

#[test]
fn other_uid_needs_allow_other() {
    let t = scratch();
    s3().put(&format!("{t}/f.txt"), "shared");
    let nobody = 65534;
    let m = Mount::new();
    let r = sh_as(nobody, nobody, &format!("ls {}", q(m.p(&t))));
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "without --allow-other another uid gets EACCES: {r:?}"
    );
    drop(m);
    let m = Mount::with(MountOpts::default().arg("--allow-other"));
    let r = sh_as(
        nobody,
        nobody,
        &format!("cat {}", q(m.p(&format!("{t}/f.txt")))),
    );
    assert!(
        r.ok(),
        "with --allow-other another uid reads a 0644 file: {r:?}"
    );
    assert_eq!(r.stdout, "shared");
}

// ==========================================================================================
// case-17 (basic form): unmount with writes still pending

#[test]
fn unmount_with_pending_writes() {
    let mut c = Case::new();
    let data = random_bytes(30 << 20);
    let src = c.m.tmp().join("pending");
    fs::write(&src, &data).unwrap();
    let r = c.sh(&format!(
        r#"cp {} "$D/pending.bin"; echo "cp_rc=$?"; echo small > "$D/small.txt"; fusermount3 -u "$MNT"; echo "umount_rc=$?""#,
        q(&src)
    ));
    assert!(r.stdout.contains("cp_rc=0"), "{r:?}");
    assert!(
        r.stdout.contains("umount_rc=0"),
        "fusermount3 -u right after the writes: {r:?}"
    );
    let st = c.m.unmount(); // the mount is already gone: this waits for the daemon
    assert!(
        st.success(),
        "daemon exit status after unmount: {}\n{}",
        status_desc(&st),
        c.m.log_text()
    );
    assert!(
        s3().get(&c.key("pending.bin"))
            .map(|v| v == data)
            .unwrap_or(false),
        "pending.bin in S3 is whole"
    );
    assert_eq!(s3().get(&c.key("small.txt")).unwrap(), b"small\n");

    // SIGTERM variant
    c.m.mount_again();
    let data2 = random_bytes(12 << 20);
    fs::write(c.path("t1.bin"), &data2).unwrap();
    fs::write(c.path("t2.txt"), "two\n").unwrap();
    let st = c.m.kill_and_wait(libc::SIGTERM);
    assert!(
        st.success(),
        "daemon exit status after SIGTERM: {}\n{}",
        status_desc(&st),
        c.m.log_text()
    );
    assert!(
        s3().get(&c.key("t1.bin"))
            .map(|v| v == data2)
            .unwrap_or(false),
        "t1.bin in S3 is whole"
    );
    assert_eq!(s3().get(&c.key("t2.txt")).unwrap(), b"two\n");
    c.m.mount_again();
}
