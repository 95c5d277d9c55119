//! The live-migration hook over the in-memory store and a temp old tree: no kernel.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::error::FsError;
use crate::fs::{Fs, FsConfig, SetAttr};
use crate::store::mem::MemStore;

const ROOT: u64 = 1;

struct World {
    store: Arc<MemStore>,
    old: tempfile::TempDir,
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            store: Arc::new(MemStore::new()),
            old: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        w.put_old(
            "media/public/application-icons/app one.svg",
            b"<svg/>",
            0o640,
            1_600_000_000,
        );
        w.put_old(
            "media/public/flow-backgrounds/bg.jpg",
            &[7u8; 70_000],
            0o644,
            1_500_000_000,
        );
        w.put_old("reports/public/r.csv", b"a,b\n1,2\n", 0o600, 1_400_000_000);
        w.put_old("user_settings.py", b"X = 1\n", 0o644, 1_300_000_000);
        std::fs::create_dir_all(w.old.path().join("media/empty")).unwrap();
        w
    }

    fn put_old(&self, rel: &str, data: &[u8], mode: u32, mtime: u64) {
        let p = self.old.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(mtime);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn live(&self) -> Arc<Live> {
        Live::open(
            self.store.clone(),
            LiveConfig {
                old_dir: self.old.path().to_path_buf(),
                prefix: String::new(),
                state_dir: self.state.path().to_path_buf(),
                parallel: 2,
                throttle: Duration::ZERO,
                retry_after: Duration::from_millis(10),
                copy: CopyOptions::default(),
            },
        )
        .unwrap()
    }

    fn fs(&self, live: &Arc<Live>) -> Arc<Fs> {
        let cfg = FsConfig {
            ttl: Duration::from_secs(60),
            cache_dir: self.cache.path().to_path_buf(),
            ..FsConfig::default()
        };
        Arc::new(
            Fs::new(self.store.clone(), cfg)
                .unwrap()
                .with_fallback(live.clone()),
        )
    }

    fn in_bucket(&self, key: &str) -> Option<Vec<u8>> {
        self.store.snapshot().get(key).map(|b| b.to_vec())
    }
}

async fn walk(fs: &Fs, path: &str) -> crate::fs::Attr {
    let mut ino = ROOT;
    let mut a = fs.getattr(ROOT).await.unwrap();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        a = fs.lookup(ino, c.as_bytes()).await.unwrap();
        ino = a.ino;
    }
    a
}

async fn parent_of(fs: &Fs, path: &str) -> (u64, String) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    (walk(fs, dir).await.ino, name.to_string())
}

async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = fs.read(fh, out.len() as u64, 16 * 1024).await.unwrap();
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

/// Every path with a hash of its content, its mode and mtime.
fn old_tree_state(root: &Path) -> Vec<(String, u64, u32, SystemTime)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            if md.is_dir() {
                stack.push(p.clone());
            } else {
                std::fs::read(&p).unwrap().hash(&mut h);
            }
            out.push((rel, h.finish(), md.mode(), md.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn old_paths_show_through_and_read_locally() {
    let w = World::new();
    w.store
        .insert("media/public/application-icons/new.png", b"png");
    let live = w.live();
    let fs = w.fs(&live);
    let icons = walk(&fs, "media/public/application-icons").await;
    assert_eq!(
        names(&fs, icons.ino).await,
        vec!["app one.svg", "new.png"],
        "bucket listing merged with the old tree"
    );
    let media = walk(&fs, "media").await;
    assert_eq!(names(&fs, media.ino).await, vec!["empty", "public"]);
    assert_eq!(
        names(&fs, ROOT).await,
        vec!["media", "reports", "user_settings.py"]
    );
    let a = walk(&fs, "media/public/application-icons/app one.svg").await;
    assert_eq!((a.size, a.perm), (6, 0o640));
    assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    assert_eq!(fs.getattr(a.ino).await.unwrap().ino, a.ino, "stable inode");
    assert_eq!(read_all(&fs, a.ino).await, b"<svg/>");
    let bg = walk(&fs, "media/public/flow-backgrounds/bg.jpg").await;
    assert_eq!(read_all(&fs, bg.ino).await, vec![7u8; 70_000]);
    assert!(
        w.in_bucket("media/public/application-icons/app one.svg")
            .is_none(),
        "reading copies nothing"
    );
    // A name neither side has is still missing, and a cached miss never hides an old path.
    let (p, _) = parent_of(&fs, "reports/public/r.csv").await;
    assert!(matches!(
        fs.lookup(p, b"nope.csv").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(walk(&fs, "reports/public/r.csv").await.size, 8);
}

#[tokio::test]
async fn a_write_copies_first_and_then_wins() {
    let w = World::new();
    let live = w.live();
    let fs = w.fs(&live);
    let a = walk(&fs, "reports/public/r.csv").await;
    let fh = fs.open(a.ino, libc::O_WRONLY).await.unwrap();
    assert_eq!(
        w.in_bucket("reports/public/r.csv").as_deref(),
        Some(&b"a,b\n1,2\n"[..]),
        "the old content is copied before a write that keeps it"
    );
    fs.write(fh, 0, b"X").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        w.in_bucket("reports/public/r.csv").as_deref(),
        Some(&b"X,b\n1,2\n"[..])
    );
    // chmod of an old-only file: copied, then the metadata changes in the bucket.
    let u = walk(&fs, "user_settings.py").await;
    let s = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(u.ino, None, s).await.unwrap().perm, 0o600);
    assert_eq!(
        w.in_bucket("user_settings.py").as_deref(),
        Some(&b"X = 1\n"[..])
    );
    // The copier keeps the newer versions.
    run_copier(live.clone(), fs.clone()).await;
    assert_eq!(
        w.in_bucket("reports/public/r.csv").as_deref(),
        Some(&b"X,b\n1,2\n"[..])
    );
    let c = live.progress().snapshot();
    assert!(c.complete);
    assert_eq!((c.files_total, c.files_present, c.files_copied), (4, 2, 2));
}

#[tokio::test]
async fn deletes_hide_old_paths_for_good_and_the_old_tree_is_untouched() {
    let w = World::new();
    std::fs::create_dir(w.old.path().join("media/public/flow-backgrounds/unused")).unwrap();
    let before = old_tree_state(w.old.path());
    {
        let live = w.live();
        let fs = w.fs(&live);
        let (p, n) = parent_of(&fs, "media/public/application-icons/app one.svg").await;
        fs.unlink(p, n.as_bytes()).await.unwrap();
        assert!(matches!(
            fs.lookup(p, n.as_bytes()).await,
            Err(FsError::NotFound)
        ));
        assert!(names(&fs, p).await.is_empty());
        // A directory with old entries is not empty; emptied, it goes for good.
        let (rp, _) = parent_of(&fs, "reports/public").await;
        assert!(matches!(
            fs.rmdir(rp, b"public").await,
            Err(FsError::NotEmpty)
        ));
        let (cp, cn) = parent_of(&fs, "reports/public/r.csv").await;
        fs.unlink(cp, cn.as_bytes()).await.unwrap();
        fs.rmdir(rp, b"public").await.unwrap();
        // rename of an old-only file: it is at the new name only.
        fs.rename(ROOT, b"user_settings.py", ROOT, b"settings.py", 0)
            .await
            .unwrap();
        assert!(matches!(
            fs.lookup(ROOT, b"user_settings.py").await,
            Err(FsError::NotFound)
        ));
        // rename of a directory holding old files moves them all, empty directories too.
        let m = walk(&fs, "media/public").await;
        fs.rename(m.ino, b"flow-backgrounds", m.ino, b"backgrounds", 0)
            .await
            .unwrap();
        assert_eq!(
            names(&fs, m.ino).await,
            vec!["application-icons", "backgrounds"]
        );
        let b = walk(&fs, "media/public/backgrounds").await;
        assert_eq!(names(&fs, b.ino).await, vec!["bg.jpg", "unused"]);
    }
    // A new mount over the same state: still gone, and the copier skips them.
    let live = w.live();
    let fs = w.fs(&live);
    assert!(matches!(
        fs.lookup(walk(&fs, "reports").await.ino, b"public").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        fs.lookup(ROOT, b"user_settings.py").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(
        read_all(&fs, walk(&fs, "settings.py").await.ino).await,
        b"X = 1\n"
    );
    run_copier(live.clone(), fs.clone()).await;
    let keys: Vec<String> = w.store.snapshot().keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "media/empty/",
            "media/public/backgrounds/bg.jpg",
            "media/public/backgrounds/unused/",
            "settings.py"
        ],
        "deleted paths are never copied; an empty directory gets a marker"
    );
    assert_eq!(
        old_tree_state(w.old.path()),
        before,
        "the old tree is untouched"
    );
}

#[tokio::test]
async fn the_copier_uploads_with_type_and_metadata_and_keeps_newer_keys() {
    let w = World::new();
    w.store.insert("user_settings.py", b"NEWER");
    let live = w.live();
    let fs = w.fs(&live);
    run_copier(live.clone(), fs.clone()).await;
    assert_eq!(
        w.in_bucket("user_settings.py").as_deref(),
        Some(&b"NEWER"[..])
    );
    let key = "media/public/application-icons/app one.svg";
    assert_eq!(w.in_bucket(key).as_deref(), Some(&b"<svg/>"[..]));
    assert_eq!(w.store.content_type(key).as_deref(), Some("image/svg+xml"));
    let info = crate::store::ObjectStore::head(&*w.store, key)
        .await
        .unwrap();
    assert_eq!(info.metadata.get("mode").map(String::as_str), Some("33184"));
    assert_eq!(
        info.metadata.get("mtime").map(String::as_str),
        Some("1600000000")
    );
    let c = live.progress().snapshot();
    assert!(c.complete && c.failed.is_empty());
    assert_eq!((c.files_copied, c.files_present, c.dirs_marked), (3, 1, 1));
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(live.status_path()).unwrap()).unwrap();
    assert_eq!(status["complete"], true);
    assert_eq!(status["remaining"], 0);
    // Complete: the old tree is no longer consulted (as without --migrate-from).
    w.put_old("late.txt", b"after the end", 0o644, 1_700_000_000);
    assert!(matches!(
        fs.lookup(ROOT, b"late.txt").await,
        Err(FsError::NotFound)
    ));
    // After the copy the mount shows the same attributes, now from the bucket.
    let a = walk(&fs, key).await;
    assert_eq!((a.size, a.perm), (6, 0o640));
    assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    assert_eq!(read_all(&fs, a.ino).await, b"<svg/>");
}

#[tokio::test]
async fn a_commit_or_unlink_waits_for_a_copy_in_flight_and_wins() {
    let w = World::new();
    let live = w.live();
    let fs = w.fs(&live);
    let key = "reports/public/r.csv";
    let a = walk(&fs, key).await;
    let fh = fs
        .open(a.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"NEW").await.unwrap();
    // The copier holds the path (its upload in flight).
    let g = live.lock(key).await;
    let fs2 = fs.clone();
    let commit = tokio::spawn(async move {
        fs2.flush(fh).await.unwrap();
        fs2.release(fh).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!commit.is_finished(), "the commit waits for the copy");
    live.copy_locked(key).await.unwrap();
    assert_eq!(w.in_bucket(key).as_deref(), Some(&b"a,b\n1,2\n"[..]));
    drop(g);
    commit.await.unwrap();
    assert_eq!(
        w.in_bucket(key).as_deref(),
        Some(&b"NEW"[..]),
        "the write wins"
    );
    {
        let _g = live.lock(key).await;
        live.copy_locked(key).await.unwrap();
    }
    assert_eq!(
        w.in_bucket(key).as_deref(),
        Some(&b"NEW"[..]),
        "a later copy keeps it"
    );

    // An unlink during a copy: it waits, then the path is gone from both views for good.
    let key = "user_settings.py";
    walk(&fs, key).await;
    let g = live.lock(key).await;
    let fs2 = fs.clone();
    let unlink = tokio::spawn(async move { fs2.unlink(ROOT, b"user_settings.py").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!unlink.is_finished(), "the unlink waits for the copy");
    live.copy_locked(key).await.unwrap();
    drop(g);
    unlink.await.unwrap().unwrap();
    assert_eq!(w.in_bucket(key), None);
    {
        let _g = live.lock(key).await;
        live.copy_locked(key).await.unwrap();
    }
    assert_eq!(
        w.in_bucket(key),
        None,
        "a deleted path is never copied back"
    );
    assert!(matches!(
        fs.lookup(ROOT, b"user_settings.py").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn an_old_symlink_is_copied_at_first_sight_and_shown_as_a_symlink() {
    let w = World::new();
    std::os::unix::fs::symlink(
        "flow-backgrounds/bg.jpg",
        w.old.path().join("media/public/current.jpg"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../user_settings.py", w.old.path().join("media/settings")).unwrap();
    let live = w.live();
    let fs = w.fs(&live);
    // Seen by readdir first.
    let public = walk(&fs, "media/public").await;
    let fh = fs.opendir(public.ino).unwrap();
    let entries = fs.readdir(public.ino, fh, 0).await.unwrap();
    fs.releasedir(fh);
    let e = entries.iter().find(|e| e.name == "current.jpg").unwrap();
    assert_eq!(e.attr.kind, crate::fs::FileKind::Symlink);
    assert_eq!(
        fs.readlink(e.attr.ino).await.unwrap().as_ref(),
        b"flow-backgrounds/bg.jpg"
    );
    // Seen by lookup first.
    let a = walk(&fs, "media/settings").await;
    assert_eq!(a.kind, crate::fs::FileKind::Symlink);
    assert_eq!(
        fs.readlink(a.ino).await.unwrap().as_ref(),
        b"../user_settings.py"
    );
    let info = crate::store::ObjectStore::head(&*w.store, "media/settings")
        .await
        .unwrap();
    let mode: u32 = info.metadata["mode"].parse().unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    run_copier(live.clone(), fs.clone()).await;
    let c = live.progress().snapshot();
    assert!(c.complete);
    assert_eq!(
        (c.files_total, c.files_present),
        (6, 2),
        "the symlinks were already copied"
    );
}

#[tokio::test]
async fn a_name_clash_with_the_bucket_is_a_failure_and_never_complete() {
    let w = World::new();
    // The bucket has a file `reports` where the old tree has a directory: copying below it
    // would hide the bucket's file, so the copier refuses and says so (the mount shows the file).
    w.store.insert("reports", b"a file");
    let live = w.live();
    let fs = w.fs(&live);
    assert_eq!(walk(&fs, "reports").await.kind, crate::fs::FileKind::File);
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        run_copier(live.clone(), fs.clone()),
    )
    .await;
    assert!(r.is_err(), "a migration with a failure must not end");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(live.status_path()).unwrap()).unwrap();
    assert_eq!(status["complete"], false);
    assert_eq!(status["failed"], 1, "{status}");
    assert_eq!(status["failures"][0]["path"], "reports");
    assert!(w.in_bucket("reports/public/r.csv").is_none());
    assert_eq!(w.in_bucket("reports").as_deref(), Some(&b"a file"[..]));
}

#[test]
fn an_old_dir_overlapping_the_mount_point_is_refused() {
    use super::overlap_error;
    use std::path::Path;
    let m = Path::new("/data");
    assert!(overlap_error(Path::new("/data"), m)
        .is_some_and(|e| e.contains("mount point itself") && e.contains("mv /data /data.old")));
    assert!(overlap_error(Path::new("/data/old"), m).is_some_and(|e| e.contains("inside")));
    assert!(overlap_error(Path::new("/"), m).is_some_and(|e| e.contains("contains")));
    assert_eq!(overlap_error(Path::new("/data.old"), m), None);
    assert_eq!(overlap_error(Path::new("/srv/data"), m), None);
}
