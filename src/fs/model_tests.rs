//! Reference-model property test: random sequences of filesystem operations run against
//! [`Fs`] over the in-memory store, and after every step the bucket and the tree the mount
//! shows are compared with a plain model of what they must hold.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::store::mem::MemStore;

const NAMES: &[&str] = &["a", "b", "c d", "é.txt"];

#[derive(Clone, Debug)]
enum Op {
    Write {
        dir: usize,
        name: usize,
        len: usize,
        seed: u8,
    },
    Append {
        file: usize,
        len: usize,
    },
    Truncate {
        file: usize,
        size: usize,
    },
    Unlink {
        file: usize,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Rmdir {
        dir: usize,
    },
    Rename {
        file: usize,
        dir: usize,
        name: usize,
    },
    RenameDir {
        dir: usize,
        to: usize,
        name: usize,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let n = NAMES.len();
    prop_oneof![
        4 => (0..8usize, 0..n, 0..20_000usize, any::<u8>())
            .prop_map(|(dir, name, len, seed)| Op::Write { dir, name, len, seed }),
        1 => (0..8usize, 0..5000usize).prop_map(|(file, len)| Op::Append { file, len }),
        1 => (0..8usize, 0..30_000usize).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0..8usize).prop_map(|file| Op::Unlink { file }),
        2 => (0..8usize, 0..n).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => (0..8usize).prop_map(|dir| Op::Rmdir { dir }),
        1 => (0..8usize, 0..8usize, 0..n).prop_map(|(file, dir, name)| Op::Rename { file, dir, name }),
        1 => (0..8usize, 0..8usize, 0..n).prop_map(|(dir, to, name)| Op::RenameDir { dir, to, name }),
        1 => (0..8usize, prop_oneof![Just(0o600u32), Just(0o640), Just(0o644)])
            .prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => Just(Op::Remount),
    ]
}

/// What the mount must show: directories (paths, "" = root) and files (path → bytes).
#[derive(Default, Debug)]
struct Model {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Model {
    fn new() -> Self {
        let mut m = Model::default();
        m.dirs.insert(String::new());
        m
    }
    fn pick_dir(&self, i: usize) -> String {
        self.dirs
            .iter()
            .nth(i % self.dirs.len())
            .cloned()
            .unwrap_or_default()
    }
    fn pick_file(&self, i: usize) -> Option<String> {
        if self.files.is_empty() {
            None
        } else {
            self.files.keys().nth(i % self.files.len()).cloned()
        }
    }
    fn exists(&self, p: &str) -> bool {
        self.dirs.contains(p) || self.files.contains_key(p)
    }
    fn dir_empty(&self, d: &str) -> bool {
        let pre = format!("{d}/");
        !self.dirs.iter().any(|x| x.starts_with(&pre))
            && !self.files.keys().any(|x| x.starts_with(&pre))
    }
    /// After a remount only directories with a file below them exist (no markers).
    fn remount(&mut self) {
        let mut keep = BTreeSet::new();
        keep.insert(String::new());
        for f in self.files.keys() {
            let mut p = parent(f);
            while !p.is_empty() {
                keep.insert(p.to_string());
                p = parent(p);
            }
        }
        self.dirs = keep;
    }
}

struct Harness {
    store: Arc<dyn ObjectStore>,
    /// The in-memory store, when that is the backend (its open uploads are checked too).
    mem: Option<Arc<MemStore>>,
    /// Key prefix of this case's mount root (real servers: one per case).
    prefix: String,
    fs: Fs,
}

fn new_fs(store: &Arc<dyn ObjectStore>, prefix: &str) -> Fs {
    Fs::new(
        store.clone(),
        FsConfig {
            prefix: prefix.to_string(),
            part_size: 5 * 1024 * 1024,
            ttl: Duration::from_secs(30),
            ..FsConfig::default()
        },
    )
    .expect("fs")
}

impl Harness {
    /// What the bucket holds under the mount root, read straight from the store.
    async fn bucket(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list(&self.prefix, None, token, None)
                .await
                .expect("list");
            for o in page.objects {
                let data = self
                    .store
                    .get_range(&o.key, 0..o.size, None)
                    .await
                    .expect("get");
                out.insert(o.key[self.prefix.len()..].to_string(), data.to_vec());
            }
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        out
    }

    async fn resolve(&self, path: &str) -> FsResult<u64> {
        let mut ino = ROOT;
        if path.is_empty() {
            return Ok(ino);
        }
        for c in path.split('/') {
            ino = self.fs.lookup(ino, c.as_bytes()).await?.ino;
        }
        Ok(ino)
    }

    async fn write_new(&self, path: &str, data: &[u8]) -> FsResult<()> {
        let dir = self.resolve(parent(path)).await?;
        let name = path.rsplit('/').next().unwrap_or(path);
        let (_, fh) = self
            .fs
            .create(
                dir,
                name.as_bytes(),
                0o644,
                libc::O_WRONLY | libc::O_TRUNC,
                0,
                0,
            )
            .await?;
        for (i, c) in data.chunks(7000).enumerate() {
            self.fs.write(fh, (i * 7000) as u64, c).await?;
        }
        self.fs.flush(fh).await?;
        self.fs.release(fh).await
    }

    async fn tree(&self) -> (BTreeSet<String>, BTreeMap<String, Vec<u8>>) {
        let mut dirs = BTreeSet::new();
        let mut files = BTreeMap::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((ino, path)) = stack.pop() {
            dirs.insert(path.clone());
            let fh = self.fs.opendir(ino).expect("opendir");
            let entries = self.fs.readdir(ino, fh, 0).await.expect("readdir");
            self.fs.releasedir(fh);
            for e in entries.iter().skip(2) {
                let p = join(&path, &e.name);
                match e.attr.kind {
                    Kind::Dir => stack.push((e.attr.ino, p)),
                    Kind::File | Kind::Symlink | Kind::Special(_) => {
                        let fh = self
                            .fs
                            .open(e.attr.ino, libc::O_RDONLY)
                            .await
                            .expect("open");
                        let mut data = Vec::new();
                        loop {
                            let b = self
                                .fs
                                .read(fh, data.len() as u64, 65536)
                                .await
                                .expect("read");
                            if b.is_empty() {
                                break;
                            }
                            data.extend_from_slice(&b);
                        }
                        self.fs.release(fh).await.expect("release");
                        assert_eq!(e.attr.size, data.len() as u64, "size of {p}");
                        files.insert(p, data);
                    }
                }
            }
        }
        (dirs, files)
    }
}

async fn step(h: &mut Harness, m: &mut Model, op: &Op) {
    match op.clone() {
        Op::Write {
            dir,
            name,
            len,
            seed,
        } => {
            let d = m.pick_dir(dir);
            let p = join(&d, NAMES[name]);
            let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
            let r = h.write_new(&p, &data).await;
            if m.dirs.contains(&p) {
                assert!(r.is_err(), "write over a directory {p}");
            } else {
                r.expect("write");
                m.files.insert(p, data);
            }
        }
        Op::Append { file, len } => {
            let Some(p) = m.pick_file(file) else { return };
            let ino = h.resolve(&p).await.expect("resolve");
            let fh =
                h.fs.open(ino, libc::O_WRONLY | libc::O_APPEND)
                    .await
                    .expect("open");
            let size = m.files[&p].len();
            let data = vec![b'+'; len];
            h.fs.write(fh, size as u64, &data).await.expect("append");
            h.fs.flush(fh).await.expect("flush");
            h.fs.release(fh).await.expect("release");
            if let Some(v) = m.files.get_mut(&p) {
                v.extend_from_slice(&data);
            }
        }
        Op::Truncate { file, size } => {
            let Some(p) = m.pick_file(file) else { return };
            let ino = h.resolve(&p).await.expect("resolve");
            h.fs.setattr(
                ino,
                None,
                SetAttr {
                    size: Some(size as u64),
                    ..Default::default()
                },
            )
            .await
            .expect("truncate");
            if let Some(v) = m.files.get_mut(&p) {
                v.resize(size, 0);
            }
        }
        Op::Unlink { file } => {
            let Some(p) = m.pick_file(file) else { return };
            let dir = h.resolve(parent(&p)).await.expect("resolve");
            let name = p.rsplit('/').next().unwrap_or(&p).to_string();
            h.fs.unlink(dir, name.as_bytes()).await.expect("unlink");
            m.files.remove(&p);
        }
        Op::Mkdir { dir, name } => {
            let d = m.pick_dir(dir);
            let p = join(&d, NAMES[name]);
            let di = h.resolve(&d).await.expect("resolve");
            let r = h.fs.mkdir(di, NAMES[name].as_bytes(), 0o755, 0, 0).await;
            if m.exists(&p) {
                assert!(matches!(r, Err(FsError::Exists)), "mkdir over {p}: {r:?}");
            } else {
                r.expect("mkdir");
                m.dirs.insert(p);
            }
        }
        Op::Rmdir { dir } => {
            let d = m.pick_dir(dir);
            if d.is_empty() {
                return;
            }
            let pi = h.resolve(parent(&d)).await.expect("resolve");
            let name = d.rsplit('/').next().unwrap_or(&d).to_string();
            let r = h.fs.rmdir(pi, name.as_bytes()).await;
            if m.dir_empty(&d) {
                r.expect("rmdir");
                m.dirs.remove(&d);
            } else {
                assert!(matches!(r, Err(FsError::NotEmpty)), "rmdir {d}: {r:?}");
            }
        }
        Op::Rename { file, dir, name } => {
            let Some(src) = m.pick_file(file) else { return };
            let d = m.pick_dir(dir);
            let dst = join(&d, NAMES[name]);
            let sp = h.resolve(parent(&src)).await.expect("resolve");
            let dp = h.resolve(&d).await.expect("resolve");
            let sname = src.rsplit('/').next().unwrap_or(&src).to_string();
            let r =
                h.fs.rename(sp, sname.as_bytes(), dp, NAMES[name].as_bytes(), 0)
                    .await;
            if m.dirs.contains(&dst) {
                assert!(r.is_err(), "rename file onto dir {dst}");
            } else {
                r.expect("rename");
                if src != dst {
                    let v = m.files.remove(&src).unwrap_or_default();
                    m.files.insert(dst, v);
                }
            }
        }
        Op::RenameDir { dir, to, name } => {
            let src = m.pick_dir(dir);
            let d = m.pick_dir(to);
            if src.is_empty() {
                return;
            }
            let dst = join(&d, NAMES[name]);
            let sp = h.resolve(parent(&src)).await.expect("resolve");
            let dp = h.resolve(&d).await.expect("resolve");
            let sname = src.rsplit('/').next().unwrap_or(&src).to_string();
            let r =
                h.fs.rename(sp, sname.as_bytes(), dp, NAMES[name].as_bytes(), 0)
                    .await;
            let into_self = dst == src || dst.starts_with(&format!("{src}/"));
            if dst == src {
                r.expect("rename onto itself");
            } else if into_self
                || m.files.contains_key(&dst)
                || (m.dirs.contains(&dst) && !m.dir_empty(&dst))
            {
                assert!(r.is_err(), "rename dir {src} -> {dst} must fail");
            } else {
                r.expect("rename dir");
                let pre = format!("{src}/");
                m.dirs.remove(&dst);
                let dirs: Vec<String> = m
                    .dirs
                    .iter()
                    .filter(|x| **x == src || x.starts_with(&pre))
                    .cloned()
                    .collect();
                for x in dirs {
                    m.dirs.remove(&x);
                    m.dirs.insert(format!("{dst}{}", &x[src.len()..]));
                }
                let files: Vec<String> = m
                    .files
                    .keys()
                    .filter(|x| x.starts_with(&pre))
                    .cloned()
                    .collect();
                for x in files {
                    let v = m.files.remove(&x).unwrap_or_default();
                    m.files.insert(format!("{dst}{}", &x[src.len()..]), v);
                }
            }
        }
        Op::Chmod { file, mode } => {
            let Some(p) = m.pick_file(file) else { return };
            let ino = h.resolve(&p).await.expect("resolve");
            let a =
                h.fs.setattr(
                    ino,
                    None,
                    SetAttr {
                        mode: Some(mode),
                        ..Default::default()
                    },
                )
                .await
                .expect("chmod");
            assert_eq!(a.perm as u32, mode);
        }
        Op::Remount => {
            h.fs = new_fs(&h.store, &h.prefix);
            m.remount();
        }
    }
}

async fn check(h: &Harness, m: &Model, ops: &[Op]) {
    let bucket = h.bucket().await;
    assert_eq!(bucket, m.files, "bucket after {ops:?}");
    let (dirs, files) = h.tree().await;
    assert_eq!(files, m.files, "files shown after {ops:?}");
    assert_eq!(dirs, m.dirs, "directories shown after {ops:?}");
    if let Some(mem) = &h.mem {
        assert_eq!(mem.open_uploads(), 0);
    }
}

async fn run_case(
    store: Arc<dyn ObjectStore>,
    mem: Option<Arc<MemStore>>,
    prefix: String,
    ops: &[Op],
) {
    let fs = new_fs(&store, &prefix);
    let mut h = Harness {
        store,
        mem,
        prefix,
        fs,
    };
    let mut m = Model::new();
    for (i, o) in ops.iter().enumerate() {
        step(&mut h, &mut m, o).await;
        check(&h, &m, &ops[..=i]).await;
    }
}

/// The real server named by the environment `scripts/test.sh` sets up
/// (`BUCKETFS_MODEL_S3=1` plus AWS_ENDPOINT_URL, keys, BUCKETFS_TEST_BUCKET).
fn s3_backend() -> Option<(tokio::runtime::Runtime, Arc<dyn ObjectStore>)> {
    std::env::var_os("BUCKETFS_MODEL_S3")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let settings = crate::store::s3::S3Settings {
        bucket: std::env::var("BUCKETFS_TEST_BUCKET").expect("BUCKETFS_TEST_BUCKET"),
        endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
        region: std::env::var("AWS_REGION").ok(),
        force_path_style: true,
        max_attempts: 3,
        connect_timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let store = rt.block_on(crate::store::s3::S3Store::connect(&settings));
    Some((rt, Arc::new(store)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96), ..ProptestConfig::default() })]
    #[test]
    fn filesystem_matches_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let mem = Arc::new(MemStore::new());
        rt.block_on(run_case(mem.clone(), Some(mem), String::new(), &ops));
    }
}

proptest! {
    // Over a real S3 server: fewer, shorter cases (each one a fresh key prefix).
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 64, ..ProptestConfig::default() })]
    #[test]
    fn filesystem_matches_the_model_on_a_real_server(ops in proptest::collection::vec(op(), 1..14)) {
        let Some((rt, store)) = s3_backend() else {
            return Ok(());
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        rt.block_on(run_case(store, None, format!("model-{nanos}/"), &ops));
    }
}
