//! Filesystem logic over the in-memory store: no kernel, no network.

use super::*;
use crate::store::fault::{FaultStore, Op};
use crate::store::mem::MemStore;

const MIB: usize = 1024 * 1024;

fn setup() -> (Arc<MemStore>, Fs) {
    let mut m = MemStore::new();
    m.page_size = 3; // every listing crosses pages
    let store = Arc::new(m);
    (store.clone(), Fs::new(store, cfg()).unwrap())
}

fn cfg() -> FsConfig {
    FsConfig {
        part_size: 5 * MIB as u64,
        ttl: Duration::from_secs(60),
        ..FsConfig::default()
    }
}

async fn write_file(fs: &Fs, parent: u64, name: &str, data: &[u8]) -> FsResult<u64> {
    let (a, fh) = fs
        .create(parent, name.as_bytes(), 0o644, libc::O_WRONLY, 0, 0)
        .await?;
    for (i, c) in data.chunks(128 * 1024).enumerate() {
        fs.write(fh, (i * 128 * 1024) as u64, c).await?;
    }
    fs.flush(fh).await?;
    fs.release(fh).await?;
    Ok(a.ino)
}

async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = fs.read(fh, out.len() as u64, 1 << 20).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    fs.release(fh).await.unwrap();
    out
}

async fn names(fs: &Fs, ino: u64) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap();
    let e = fs.readdir(ino, fh, 0).await.unwrap();
    fs.releasedir(fh);
    let mut n: Vec<String> = e.iter().skip(2).map(|e| e.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn implicit_directories_resolve_without_listing_first() {
    let (store, fs) = setup();
    store.insert("media/public/icons/app.png", b"icon");
    let m = fs.lookup(ROOT, b"media").await.unwrap();
    assert_eq!(m.kind, Kind::Dir);
    let p = fs.lookup(m.ino, b"public").await.unwrap();
    let i = fs.lookup(p.ino, b"icons").await.unwrap();
    let f = fs.lookup(i.ino, b"app.png").await.unwrap();
    assert_eq!((f.kind, f.size), (Kind::File, 4));
    assert_eq!(read_all(&fs, f.ino).await, b"icon");
    assert!(matches!(
        fs.lookup(i.ino, b"nope").await,
        Err(FsError::NotFound)
    ));
    assert!(store.snapshot().len() == 1, "lookups create nothing");
}

#[tokio::test]
async fn listing_pages_hides_bad_keys_and_directory_wins() {
    let (store, fs) = setup();
    for i in 0..10 {
        store.insert(&format!("d/f{i}"), b"x");
    }
    store.insert("d/x", b"file");
    store.insert("d/x/inner", b"y");
    store.insert("d//empty-component", b"z");
    store.insert("d/./dot", b"z");
    store.insert("d/marker/", b"");
    let d = fs.lookup(ROOT, b"d").await.unwrap();
    let mut n = names(&fs, d.ino).await;
    n.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    want.push("marker".into());
    want.push("x".into());
    want.sort();
    assert_eq!(n, want);
    assert_eq!(fs.lookup(d.ino, b"x").await.unwrap().kind, Kind::Dir);
    assert_eq!(fs.lookup(d.ino, b"marker").await.unwrap().kind, Kind::Dir);
    assert_eq!(store.snapshot().len(), 15, "hidden keys are never deleted");
}

#[tokio::test]
async fn create_write_close_uploads_with_content_type() {
    let (store, fs) = setup();
    let data: Vec<u8> = (0..(12 * MIB)).map(|i| (i % 241) as u8).collect();
    let ino = write_file(&fs, ROOT, "big.svg", &data).await.unwrap();
    assert_eq!(&store.snapshot()["big.svg"][..], &data[..]);
    assert_eq!(
        store.content_type("big.svg").as_deref(),
        Some("image/svg+xml")
    );
    assert_eq!(read_all(&fs, ino).await, data);
    assert_eq!(fs.getattr(ino).await.unwrap().size, data.len() as u64);
    assert_eq!(store.open_uploads(), 0);
    assert_eq!(fs.budget().used_bytes(), 0);
}

#[tokio::test]
async fn empty_create_leaves_an_empty_object() {
    let (store, fs) = setup();
    let (_, fh) = fs
        .create(ROOT, b"e", 0o644, libc::O_RDONLY | libc::O_EXCL, 0, 0)
        .await
        .unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.snapshot()["e"].len(), 0);
    assert!(matches!(
        fs.create(ROOT, b"e", 0o644, libc::O_WRONLY | libc::O_EXCL, 0, 0)
            .await,
        Err(FsError::Exists)
    ));
}

#[tokio::test]
async fn long_names_are_refused() {
    let (_, fs) = setup();
    let long = vec![b'a'; 256];
    assert!(matches!(
        fs.create(ROOT, &long, 0o644, 0, 0, 0).await,
        Err(FsError::NameTooLong)
    ));
    assert!(matches!(
        fs.mkdir(ROOT, &long, 0o755, 0, 0).await,
        Err(FsError::NameTooLong)
    ));
    assert!(matches!(
        fs.lookup(ROOT, &long).await,
        Err(FsError::NameTooLong)
    ));
}

#[tokio::test]
async fn mkdir_rmdir_and_emptied_directories() {
    let (store, fs) = setup();
    store.insert("implicit/only.txt", b"x");
    let d = fs.mkdir(ROOT, b"home", 0o755, 0, 0).await.unwrap();
    assert_eq!(store.snapshot().len(), 1, "no marker objects");
    assert_eq!(names(&fs, ROOT).await, vec!["home", "implicit"]);
    write_file(&fs, d.ino, "a.txt", b"a").await.unwrap();
    assert!(matches!(
        fs.rmdir(ROOT, b"home").await,
        Err(FsError::NotEmpty)
    ));
    fs.unlink(d.ino, b"a.txt").await.unwrap();
    assert_eq!(store.snapshot().len(), 1);
    // Emptied here, it stays for the life of the mount.
    assert_eq!(fs.lookup(ROOT, b"home").await.unwrap().kind, Kind::Dir);
    let i = fs.lookup(ROOT, b"implicit").await.unwrap();
    fs.unlink(i.ino, b"only.txt").await.unwrap();
    assert_eq!(fs.lookup(ROOT, b"implicit").await.unwrap().kind, Kind::Dir);
    fs.rmdir(ROOT, b"home").await.unwrap();
    assert!(matches!(
        fs.lookup(ROOT, b"home").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn rename_file_and_directory_moves_keys() {
    let (store, fs) = setup();
    store.insert("d/a/1.txt", b"1");
    store.insert("d/a/2.txt", b"2");
    store.insert("d/b.svg", b"<svg/>");
    let d = fs.lookup(ROOT, b"d").await.unwrap();
    fs.lookup(d.ino, b"b.svg").await.unwrap();
    fs.rename(d.ino, b"b.svg", ROOT, b"logo.png", 0)
        .await
        .unwrap();
    assert_eq!(store.content_type("logo.png").as_deref(), Some("image/png"));
    fs.lookup(d.ino, b"a").await.unwrap();
    fs.rename(d.ino, b"a", ROOT, b"z", 0).await.unwrap();
    let keys: Vec<String> = store.snapshot().keys().cloned().collect();
    assert_eq!(keys, vec!["logo.png", "z/1.txt", "z/2.txt"]);
    let z = fs.lookup(ROOT, b"z").await.unwrap();
    let one = fs.lookup(z.ino, b"1.txt").await.unwrap();
    assert_eq!(read_all(&fs, one.ino).await, b"1");
    assert!(matches!(
        fs.lookup(d.ino, b"a").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn truncate_extend_shrink_and_o_trunc() {
    let (store, fs) = setup();
    let g = write_file(&fs, ROOT, "grow", b"head").await.unwrap();
    fs.setattr(
        g,
        None,
        SetAttr {
            size: Some(10_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let v = &store.snapshot()["grow"];
    assert_eq!(v.len(), 10_000);
    assert_eq!(&v[..4], b"head");
    assert!(v[4..].iter().all(|&b| b == 0));
    let s = write_file(&fs, ROOT, "shrink", b"abcdef").await.unwrap();
    fs.setattr(
        s,
        None,
        SetAttr {
            size: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&store.snapshot()["shrink"][..], b"abc");
    let o = write_file(&fs, ROOT, "otrunc", b"full").await.unwrap();
    let fh = fs.open(o, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.snapshot()["otrunc"].len(), 0);
    // ftruncate on a new file, as `dd seek=N count=0` does.
    let (a, fh) = fs
        .create(ROOT, b"sparse", 0o644, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    fs.setattr(
        a.ino,
        Some(fh),
        SetAttr {
            size: Some(11 * MIB as u64),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    let sp = &store.snapshot()["sparse"];
    assert_eq!(sp.len(), 11 * MIB);
    assert!(sp.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn append_and_overwrite_keep_the_rest() {
    let (store, fs) = setup();
    let ino = write_file(&fs, ROOT, "f", b"0123456789").await.unwrap();
    let fh = fs.open(ino, libc::O_WRONLY | libc::O_APPEND).await.unwrap();
    fs.write(fh, 10, b"AB").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(&store.snapshot()["f"][..], b"0123456789AB");
    let fh = fs.open(ino, libc::O_WRONLY).await.unwrap();
    fs.write(fh, 2, b"xy").await.unwrap();
    fs.flush(fh).await.unwrap();
    // fsync'ed data stays; writing may go on after it.
    fs.write(fh, 4, b"zz").await.unwrap();
    fs.fsync(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(&store.snapshot()["f"][..], b"01xyzz6789AB");
}

#[tokio::test]
async fn unlinked_while_open_is_not_resurrected() {
    let (store, fs) = setup();
    let (_, fh) = fs
        .create(ROOT, b"tmp", 0o644, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    fs.write(fh, 0, b"data").await.unwrap();
    fs.unlink(ROOT, b"tmp").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.snapshot().is_empty());
}

#[tokio::test]
async fn a_failed_upload_is_an_error_and_the_old_version_stays() {
    let mem = Arc::new(MemStore::new());
    mem.insert("victim", b"previous");
    let faults = Arc::new(FaultStore::new(mem.clone()));
    let fs = Fs::new(faults.clone(), cfg()).unwrap();
    let v = fs.lookup(ROOT, b"victim").await.unwrap();
    let fh = fs
        .open(v.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, &vec![7u8; 6 * MIB]).await.unwrap();
    faults.fail(Some(Op::UploadPart), FaultStore::slow_down());
    faults.fail(Some(Op::Put), FaultStore::slow_down());
    let mut failed = fs
        .write(fh, 6 * MIB as u64, &vec![7u8; 6 * MIB])
        .await
        .is_err();
    failed |= fs.flush(fh).await.is_err();
    assert!(failed, "the writer must see the failure");
    fs.release(fh).await.ok(); // close already reported it; release does not retry
    assert_eq!(&mem.snapshot()["victim"][..], b"previous");
    assert_eq!(mem.open_uploads(), 0, "the multipart upload is aborted");
    assert_eq!(
        fs.getattr(v.ino).await.unwrap().size,
        8,
        "stat agrees with the bucket"
    );
}

#[tokio::test]
async fn a_transient_failure_at_close_can_be_retried_by_fsync() {
    let mem = Arc::new(MemStore::new());
    let faults = Arc::new(FaultStore::new(mem.clone()));
    let fs = Fs::new(faults.clone(), cfg()).unwrap();
    let (_, fh) = fs
        .create(ROOT, b"f.txt", 0o644, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    fs.write(fh, 0, b"data").await.unwrap();
    faults.fail_times(Some(Op::Put), FaultStore::slow_down(), 1);
    assert_eq!(fs.fsync(fh).await.unwrap_err().errno(), libc::EIO);
    assert!(mem.snapshot().is_empty());
    fs.fsync(fh).await.unwrap(); // the staged bytes were kept
    assert_eq!(&mem.snapshot()["f.txt"][..], b"data");
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn random_writes_into_a_large_new_file_and_reads_through_the_handle() {
    let (store, fs) = setup();
    let (a, fh) = fs
        .create(ROOT, b"r.bin", 0o644, libc::O_RDWR, 0, 0)
        .await
        .unwrap();
    let mut want = vec![0u8; 14 * MIB];
    for (i, c) in want.chunks_mut(MIB).enumerate() {
        c.fill(i as u8);
    }
    for (i, c) in want.chunks(MIB).enumerate() {
        fs.write(fh, (i * MIB) as u64, c).await.unwrap();
    }
    // Back into the first part (already uploaded while the stream went on), and a header.
    fs.write(fh, 10, b"HEADER").await.unwrap();
    want[10..16].copy_from_slice(b"HEADER");
    assert_eq!(&fs.read(fh, 8, 10).await.unwrap()[..], &want[8..18]);
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(&store.snapshot()["r.bin"][..], &want[..]);
    assert_eq!(read_all(&fs, a.ino).await, want);
    assert_eq!(store.open_uploads(), 0);
}

#[tokio::test]
async fn overwrite_in_place_copies_untouched_parts_server_side() {
    let mem = Arc::new(MemStore::new());
    let old: Vec<u8> = (0..(16 * MIB)).map(|i| (i % 7) as u8).collect();
    mem.insert("big", &old);
    let faults = Arc::new(FaultStore::new(mem.clone()));
    let fs = Fs::new(faults.clone(), cfg()).unwrap();
    let a = fs.lookup(ROOT, b"big").await.unwrap();
    let fh = fs.open(a.ino, libc::O_WRONLY).await.unwrap();
    fs.write(fh, 12 * MIB as u64, b"patch").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = old.clone();
    want[12 * MIB..12 * MIB + 5].copy_from_slice(b"patch");
    assert_eq!(&mem.snapshot()["big"][..], &want[..]);
    let calls = faults.calls();
    assert!(
        calls.contains(&Op::UploadPartCopy),
        "untouched parts copied: {calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|o| **o == Op::UploadPart).count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test]
async fn symlinks_in_s3fs_format_and_metadata_from_head() {
    let (store, fs) = setup();
    let a = fs
        .symlink(ROOT, b"link", b"target/file.txt", 0, 0)
        .await
        .unwrap();
    assert_eq!(a.kind, Kind::Symlink);
    assert_eq!(&store.snapshot()["link"][..], b"target/file.txt");
    assert_eq!(&fs.readlink(a.ino).await.unwrap()[..], b"target/file.txt");
    // Written by another tool with s3fs metadata: a fresh mount sees mode, owner and type.
    let mut md = std::collections::HashMap::new();
    md.insert("mode".to_string(), "33184".to_string()); // 0100640
    md.insert("uid".to_string(), "1234".to_string());
    store
        .put(
            "meta.txt",
            Bytes::from_static(b"x"),
            &PutOptions {
                content_type: "text/plain".into(),
                metadata: md,
            },
        )
        .await
        .unwrap();
    let fs2 = Fs::new(store.clone(), cfg()).unwrap();
    assert_eq!(names(&fs2, ROOT).await, vec!["link", "meta.txt"]);
    let m = fs2.lookup(ROOT, b"meta.txt").await.unwrap();
    assert_eq!((m.perm, m.uid), (0o640, 1234));
    let l = fs2.lookup(ROOT, b"link").await.unwrap();
    assert_eq!(l.kind, Kind::Symlink);
}

#[tokio::test]
async fn a_reader_keeps_its_version_or_fails_and_a_fresh_open_sees_the_new_one() {
    let (store, fs) = setup();
    let one = vec![1u8; MIB];
    store.insert("f", &one);
    let a = fs.lookup(ROOT, b"f").await.unwrap();
    let fh = fs.open(a.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 4096).await.unwrap()[..], &one[..4096]);
    store.insert("f", b"VERSION-TWO");
    // Same handle: bytes already fetched are the old version; a new request fails rather
    // than return bytes of the other version.
    let e = fs.read(fh, 900 * 1024, 4096).await.unwrap_err();
    assert_eq!(e.errno(), libc::ESTALE);
    fs.release(fh).await.unwrap();
    // A new open whose cached attributes are stale reads the current version.
    let fh = fs.open(a.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"VERSION-TWO");
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn mknod_stores_s3fs_special_files_and_a_fresh_mount_reads_them_back() {
    use inode::Special;
    let (store, fs) = setup();
    let fifo = fs
        .mknod(ROOT, b"fifo", libc::S_IFIFO | 0o640, 0, 7, 8)
        .await
        .unwrap();
    assert_eq!(
        (fifo.kind, fifo.perm, fifo.uid),
        (Kind::Special(Special::Fifo), 0o640, 7)
    );
    let dev = libc::makedev(1, 3) as u32;
    let chr = fs
        .mknod(ROOT, b"null", libc::S_IFCHR | 0o600, dev, 0, 0)
        .await
        .unwrap();
    assert_eq!((chr.kind, chr.rdev), (Kind::Special(Special::Char), dev));
    let sock = fs
        .mknod(ROOT, b"sock", libc::S_IFSOCK | 0o755, 0, 0, 0)
        .await;
    assert_eq!(sock.unwrap().kind, Kind::Special(Special::Socket));
    let reg = fs
        .mknod(ROOT, b"reg.txt", libc::S_IFREG | 0o644, 0, 0, 0)
        .await;
    assert_eq!(reg.unwrap().kind, Kind::File);
    assert_eq!(
        fs.mknod(ROOT, b"fifo", libc::S_IFIFO | 0o644, 0, 0, 0)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    // Empty objects; the type and device live in s3fs's headers.
    let snap = store.snapshot();
    assert!(["fifo", "null", "sock", "reg.txt"]
        .iter()
        .all(|k| snap[*k].is_empty()));
    let info = store.head("null").await.unwrap();
    assert_eq!(info.metadata["mode"], (libc::S_IFCHR | 0o600).to_string());
    assert_eq!(info.metadata["rdev"], dev.to_string());
    // chmod keeps the type bits.
    fs.setattr(
        fifo.ino,
        None,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let info = store.head("fifo").await.unwrap();
    assert_eq!(info.metadata["mode"], (libc::S_IFIFO | 0o600).to_string());
    // A fresh mount: the listing alone says "file", a lookup (HEAD) says what it is, and
    // the listing afterwards keeps what the HEAD said.
    let fs2 = Fs::new(store.clone(), cfg()).unwrap();
    assert_eq!(
        names(&fs2, ROOT).await,
        vec!["fifo", "null", "reg.txt", "sock"]
    );
    let l = fs2.lookup(ROOT, b"null").await.unwrap();
    assert_eq!(
        (l.kind, l.rdev, l.perm),
        (Kind::Special(Special::Char), dev, 0o600)
    );
    let fh = fs2.opendir(ROOT).unwrap();
    let e = fs2.readdir(ROOT, fh, 0).await.unwrap();
    fs2.releasedir(fh);
    let null = e.iter().find(|e| e.name == "null").unwrap();
    assert_eq!(null.attr.kind, Kind::Special(Special::Char));
    // rename and unlink work on them like on files.
    fs2.rename(ROOT, b"null", ROOT, b"zero", 0).await.unwrap();
    let z = fs2.lookup(ROOT, b"zero").await.unwrap();
    assert_eq!((z.kind, z.rdev), (Kind::Special(Special::Char), dev));
    fs2.unlink(ROOT, b"zero").await.unwrap();
    assert!(!store.snapshot().contains_key("zero"));
    assert_eq!(
        fs2.mknod(ROOT, b"d", libc::S_IFDIR | 0o755, 0, 0, 0)
            .await
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
}

#[tokio::test]
async fn names_past_the_s3_key_limit_fail_when_made() {
    let (store, fs) = setup();
    // Nested 200-byte components: the fifth directory's keys would pass 1024 bytes.
    let comp = "d".repeat(200);
    let mut dir = ROOT;
    for _ in 0..5 {
        dir = fs
            .mkdir(dir, comp.as_bytes(), 0o755, 0, 0)
            .await
            .unwrap()
            .ino;
    }
    // 5 * 201 = 1005 bytes of prefix: a 19-byte name fits, a 20-byte one does not.
    let ok = "f".repeat(19);
    let long = "f".repeat(20);
    write_file(&fs, dir, &ok, b"x").await.unwrap();
    let too = |r: FsResult<Attr>| r.map(|_| ()).unwrap_err().errno();
    let create = fs
        .create(dir, long.as_bytes(), 0o644, libc::O_WRONLY, 0, 0)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(create.errno(), libc::ENAMETOOLONG);
    assert_eq!(
        too(fs.mknod(dir, long.as_bytes(), libc::S_IFIFO, 0, 0, 0).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        too(fs.symlink(dir, long.as_bytes(), b"t", 0, 0).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        too(fs.mkdir(dir, &[b'e'; 18], 0o755, 0, 0).await),
        libc::ENAMETOOLONG
    );
    let r = fs.rename(dir, ok.as_bytes(), dir, long.as_bytes(), 0).await;
    assert_eq!(r.unwrap_err().errno(), libc::ENAMETOOLONG);
    // A directory rename that would push a key below it past the limit copies nothing.
    let before = store.snapshot();
    let r = fs
        .rename(ROOT, comp.as_bytes(), ROOT, "e".repeat(230).as_bytes(), 0)
        .await;
    assert_eq!(r.unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(store.snapshot(), before);
    // A single component over 255 bytes, as before.
    assert_eq!(
        too(fs.mkdir(ROOT, &[b'n'; 256], 0o755, 0, 0).await),
        libc::ENAMETOOLONG
    );
}

#[tokio::test]
async fn times_follow_changes_and_match_what_a_head_reads() {
    let (store, fs) = setup();
    let d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).await.unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    // Directory times live in memory; every entry change moves mtime and ctime.
    fs.setattr(
        d.ino,
        None,
        SetAttr {
            mtime: Some(old),
            atime: Some(old),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let a = fs.getattr(d.ino).await.unwrap();
    assert_eq!((a.mtime, a.atime), (old, old));
    assert!(a.ctime > old, "utimes changes ctime");
    let f = write_file(&fs, d.ino, "f", b"abc").await.unwrap();
    let a = fs.getattr(d.ino).await.unwrap();
    assert!(
        a.mtime > old && a.ctime > old,
        "create moves the parent's times"
    );
    assert_eq!(a.atime, old);
    // utimes on a file stores mtime and atime (s3fs headers), and sets ctime to now.
    let sub = SystemTime::UNIX_EPOCH + Duration::new(2_000_000, 500_000_000);
    fs.setattr(
        f,
        None,
        SetAttr {
            mtime: Some(sub),
            atime: Some(old),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let info = store.head("d/f").await.unwrap();
    assert_eq!(info.metadata["mtime"], "2000000"); // whole seconds, as s3fs and geesefs read
    assert_eq!(info.metadata["atime"], "1000000");
    let a = fs.getattr(f).await.unwrap();
    assert_eq!(
        a.mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000)
    );
    assert_eq!(a.atime, old);
    let ctime = a.ctime;
    assert!(ctime > sub);
    // A fresh mount shows the same times.
    let fs2 = Fs::new(store.clone(), cfg()).unwrap();
    let d2 = fs2.lookup(ROOT, b"d").await.unwrap();
    let a2 = fs2.lookup(d2.ino, b"f").await.unwrap();
    assert_eq!((a2.mtime, a2.atime, a2.ctime), (a.mtime, a.atime, ctime));
    // A write moves mtime and ctime to now.
    let fh = fs.open(f, libc::O_WRONLY).await.unwrap();
    fs.write(fh, 0, b"z").await.unwrap();
    fs.release(fh).await.unwrap();
    let a = fs.getattr(f).await.unwrap();
    assert!(a.mtime > sub && a.ctime >= ctime);
    let info = store.head("d/f").await.unwrap();
    assert_ne!(info.metadata["mtime"], "2000000");
    // Unlinked while open: link count 0, and the handle still reads and writes.
    let fh = fs.open(f, libc::O_RDWR).await.unwrap();
    fs.unlink(d.ino, b"f").await.unwrap();
    assert_eq!(fs.getattr(f).await.unwrap().nlink, 0);
    fs.write(fh, 0, b"hello").await.unwrap();
    assert_eq!(&fs.read(fh, 0, 5).await.unwrap()[..], b"hello");
    fs.release(fh).await.unwrap();
    assert!(!store.snapshot().contains_key("d/f"));
}
