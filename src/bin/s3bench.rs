//! s3bench: the benchmark's raw S3 client (the physical limit of a server, with aws-sdk-s3
//! and nothing in between) and the file-side helpers `bench/run.sh` times on each mount.
//!
//! S3 commands take the server from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`) and the bucket from `--bucket` or
//! `BUCKETFS_TEST_BUCKET`; path-style requests. Every measuring command prints one JSON object
//! on stdout (times in seconds unless the name says otherwise).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::stream::{self, StreamExt, TryStreamExt};

const MIB: u64 = 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "s3bench",
    about = "raw S3 client and file helpers for bench/run.sh"
)]
struct Cli {
    /// Bucket (default: $BUCKETFS_TEST_BUCKET).
    #[arg(long, global = true)]
    bucket: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload one object of SIZE MiB of incompressible bytes (multipart, parallel).
    FillBig { key: String, mib: u64 },
    /// Upload COUNT objects PREFIX<i>.EXT of about SIZE bytes (sizes vary ±50% if --vary).
    FillSmall {
        prefix: String,
        count: usize,
        size: usize,
        #[arg(long, default_value = "bin")]
        ext: String,
        #[arg(long)]
        vary: bool,
        /// Spread the objects over this many sub-directories (d000/...).
        #[arg(long, default_value_t = 0)]
        dirs: usize,
    },
    /// Sequential read of whole objects (all at once): parallel ranged GETs of CHUNK MiB,
    /// CONC in flight per object, bytes consumed in order and dropped.
    SeqRead {
        keys: Vec<String>,
        #[arg(long, default_value_t = 8)]
        chunk_mib: u64,
        #[arg(long, default_value_t = 8)]
        conc: usize,
        /// Stop after this many seconds (throughput is bytes over time either way).
        #[arg(long, default_value_t = 60.0)]
        runtime: f64,
    },
    /// Random ranged GETs of BS bytes, one at a time, for RUNTIME seconds.
    RandRead {
        key: String,
        #[arg(long, default_value_t = 256 * 1024)]
        bs: u64,
        #[arg(long, default_value_t = 10.0)]
        runtime: f64,
    },
    /// Multipart upload of MIB MiB from memory: PART MiB parts, CONC in flight.
    SeqWrite {
        key: String,
        mib: u64,
        #[arg(long, default_value_t = 8)]
        part_mib: u64,
        #[arg(long, default_value_t = 8)]
        conc: usize,
    },
    /// Time to first byte of a GetObject of the whole object (seconds), after a HEAD.
    Ttfb { key: String },
    /// PutObject of COUNT objects of SIZE bytes, one after the other.
    PutMany {
        prefix: String,
        count: usize,
        size: usize,
    },
    /// ListObjectsV2 of PREFIX with delimiter `/`, every page.
    List { prefix: String },
    /// Recursive listing of PREFIX the way a directory walk does it: one delimited listing
    /// per directory, directories of one level in parallel (like a walker would need).
    Walk { prefix: String },
    /// authentik: walk PREFIX, then GET every (count/N)-th object, N objects, one at a time.
    Authentik { prefix: String, reads: usize },
    /// Size of an object, or -1.
    Head { key: String },
    /// Until KEY has SIZE bytes (or TIMEOUT s): prints the time waited.
    WaitSize {
        key: String,
        size: i64,
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Until PREFIX holds at least COUNT objects (or TIMEOUT s).
    WaitCount {
        prefix: String,
        count: usize,
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Delete every object under PREFIX.
    DeletePrefix { prefix: String },

    /// (file) open + read of the first byte, in seconds.
    FsTtfb { path: PathBuf },
    /// (file) create COUNT files of SIZE bytes in DIR, each written and closed in turn (no fsync).
    FsCreate {
        dir: PathBuf,
        count: usize,
        size: usize,
    },
    /// (file) recursive walk: readdir + lstat of every entry.
    FsWalk { dir: PathBuf },
    /// (file) authentik: walk DIR, then read every (count/N)-th file whole, N files.
    FsAuthentik { dir: PathBuf, reads: usize },
    /// (file) peak RSS (VmHWM, KiB) of PID, then reset it (clear_refs 5).
    Rss {
        pid: u32,
        #[arg(long)]
        reset: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("s3bench: {e:#}");
        std::process::exit(1);
    }
}

async fn client() -> Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if shared.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    Client::from_conf(b.build())
}

/// Incompressible bytes (xorshift64*), different for each seed.
fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn mibps(bytes: u64, s: f64) -> f64 {
    bytes as f64 / MIB as f64 / s.max(1e-9)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(cli: Cli) -> Result<()> {
    let bucket = cli
        .bucket
        .or_else(|| std::env::var("BUCKETFS_TEST_BUCKET").ok())
        .unwrap_or_else(|| "bucketfs-test".into());
    match cli.cmd {
        Cmd::FsTtfb { path } => {
            let t = Instant::now();
            let mut f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
            let mut b = [0u8; 1];
            let n = f.read(&mut b)?;
            let s = secs(t);
            if n != 1 {
                bail!("{}: empty", path.display());
            }
            println!("{{\"ttfb_s\":{s:.6}}}");
            Ok(())
        }
        Cmd::FsCreate { dir, count, size } => {
            std::fs::create_dir_all(&dir)?;
            let data = noise(size, 7);
            let t = Instant::now();
            for i in 0..count {
                let p = dir.join(format!("f{i:05}.bin"));
                let mut f = std::fs::File::create(&p).with_context(|| p.display().to_string())?;
                f.write_all(&data)?;
                // close() is where a mount saves the file (no fsync: how apps write files);
                // std's drop would ignore its error.
                close(f).with_context(|| format!("close {}", p.display()))?;
            }
            let s = secs(t);
            println!(
                "{{\"files\":{count},\"secs\":{s:.4},\"ops\":{:.2}}}",
                count as f64 / s
            );
            Ok(())
        }
        Cmd::FsWalk { dir } => {
            let t = Instant::now();
            let (files, dirs) = fs_walk(&dir, &mut |_| {})?;
            let s = secs(t);
            println!("{{\"files\":{files},\"dirs\":{dirs},\"secs\":{s:.4}}}");
            Ok(())
        }
        Cmd::FsAuthentik { dir, reads } => {
            let t = Instant::now();
            let mut all = Vec::new();
            let (files, _) = fs_walk(&dir, &mut |p| all.push(p.to_path_buf()))?;
            let walk = secs(t);
            let step = (all.len() / reads.max(1)).max(1);
            let t2 = Instant::now();
            let mut lat = Vec::new();
            let mut bytes = 0u64;
            for p in all.iter().step_by(step).take(reads) {
                let t3 = Instant::now();
                bytes += std::fs::read(p)
                    .with_context(|| p.display().to_string())?
                    .len() as u64;
                lat.push(secs(t3));
            }
            let read = secs(t2);
            lat.sort_by(f64::total_cmp);
            println!(
                "{{\"files\":{files},\"walk_s\":{walk:.4},\"reads\":{},\"read_s\":{read:.4},\"bytes\":{bytes},\"read_p50_ms\":{:.3},\"read_p99_ms\":{:.3},\"total_s\":{:.4}}}",
                lat.len(),
                pct(&lat, 0.5) * 1e3,
                pct(&lat, 0.99) * 1e3,
                walk + read
            );
            Ok(())
        }
        Cmd::Rss { pid, reset } => {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let hwm = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("no VmHWM for pid {pid}"))?;
            if reset {
                std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
            }
            println!("{{\"peak_rss_kib\":{hwm}}}");
            Ok(())
        }
        cmd => s3_cmd(client().await, bucket, cmd).await,
    }
}

fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken out of the File, so it is open and closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// readdir + lstat of everything under `dir`; `on_file` sees each regular file.
fn fs_walk(dir: &Path, on_file: &mut dyn FnMut(&Path)) -> Result<(u64, u64)> {
    let (mut files, mut dirs) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        dirs += 1;
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| d.display().to_string())?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        let mut sub = Vec::new();
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).with_context(|| p.display().to_string())?;
            if m.is_dir() {
                sub.push(p);
            } else {
                files += 1;
                on_file(&p);
            }
        }
        stack.extend(sub.into_iter().rev());
    }
    Ok((files, dirs))
}

async fn s3_cmd(c: Client, bucket: String, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::FillBig { key, mib } => {
            let t = Instant::now();
            let part = 16 * MIB;
            let total = mib * MIB;
            if total <= part {
                let body = noise(total as usize, 1);
                c.put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(ByteStream::from(body))
                    .send()
                    .await?;
            } else {
                multipart(&c, &bucket, &key, total, part, 8).await?;
            }
            println!("{{\"secs\":{:.3}}}", secs(t));
            Ok(())
        }
        Cmd::FillSmall {
            prefix,
            count,
            size,
            ext,
            vary,
            dirs,
        } => {
            let t = Instant::now();
            let ct = match ext.as_str() {
                "svg" => "image/svg+xml",
                "png" => "image/png",
                "jpg" => "image/jpeg",
                _ => "application/octet-stream",
            };
            stream::iter(0..count)
                .map(|i| {
                    let c = c.clone();
                    let bucket = bucket.clone();
                    let key = if dirs > 0 {
                        format!("{prefix}d{:03}/f{i:05}.{ext}", i % dirs)
                    } else {
                        format!("{prefix}f{i:05}.{ext}")
                    };
                    let len = if vary {
                        size / 2 + (i * 7919) % size.max(1)
                    } else {
                        size
                    };
                    async move {
                        c.put_object()
                            .bucket(bucket)
                            .key(key)
                            .content_type(ct)
                            .body(ByteStream::from(noise(len, i as u64 + 11)))
                            .send()
                            .await
                            .map(|_| ())
                    }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<_>>()
                .await?;
            println!("{{\"count\":{count},\"secs\":{:.3}}}", secs(t));
            Ok(())
        }
        Cmd::SeqRead {
            keys,
            chunk_mib,
            conc,
            runtime,
        } => {
            let deadline = Instant::now() + Duration::from_secs_f64(runtime);
            let total = Arc::new(AtomicU64::new(0));
            let t = Instant::now();
            let mut tasks = Vec::new();
            for key in keys {
                let (c, bucket, total) = (c.clone(), bucket.clone(), total.clone());
                tasks.push(tokio::spawn(async move {
                    seq_read_one(&c, &bucket, &key, chunk_mib * MIB, conc, deadline, &total).await
                }));
            }
            for task in tasks {
                task.await??;
            }
            let s = secs(t);
            let b = total.load(Ordering::Relaxed);
            println!(
                "{{\"bytes\":{b},\"secs\":{s:.4},\"mibps\":{:.2}}}",
                mibps(b, s)
            );
            Ok(())
        }
        Cmd::RandRead { key, bs, runtime } => {
            let size = head(&c, &bucket, &key)
                .await?
                .ok_or_else(|| anyhow!("{key}: not found"))? as u64;
            let blocks = (size / bs).max(1);
            let mut order: Vec<u64> = (0..blocks).collect();
            // Fisher-Yates with a fixed seed: every block once, like fio's random map.
            let mut x = 0x1234_5678_9abc_def1u64;
            for i in (1..order.len()).rev() {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let j = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            let t = Instant::now();
            let mut lat = Vec::new();
            let mut bytes = 0u64;
            for b in order {
                if secs(t) >= runtime {
                    break;
                }
                let t1 = Instant::now();
                let s = b * bs;
                let e = (s + bs).min(size) - 1;
                let o = c
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .range(format!("bytes={s}-{e}"))
                    .send()
                    .await?;
                bytes += drain(o.body).await?;
                lat.push(secs(t1));
            }
            let s = secs(t);
            lat.sort_by(f64::total_cmp);
            println!(
                "{{\"ops\":{},\"secs\":{s:.4},\"iops\":{:.2},\"mibps\":{:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
                lat.len(),
                lat.len() as f64 / s,
                mibps(bytes, s),
                pct(&lat, 0.5) * 1e3,
                pct(&lat, 0.99) * 1e3
            );
            Ok(())
        }
        Cmd::SeqWrite {
            key,
            mib,
            part_mib,
            conc,
        } => {
            let t = Instant::now();
            multipart(&c, &bucket, &key, mib * MIB, part_mib * MIB, conc).await?;
            let s = secs(t);
            println!(
                "{{\"bytes\":{},\"secs\":{s:.4},\"mibps\":{:.2}}}",
                mib * MIB,
                mibps(mib * MIB, s)
            );
            Ok(())
        }
        Cmd::Ttfb { key } => {
            // A HEAD first, as a mount's lookup does: the GET then runs on a pooled, warm
            // connection like theirs (a fresh one is in TCP quick-ACK mode, which hides
            // Garage's ~40 ms delayed-ACK stall on reused connections).
            head(&c, &bucket, &key).await?;
            let t = Instant::now();
            let o = c.get_object().bucket(&bucket).key(&key).send().await?;
            let mut body = o.body;
            let first = body.try_next().await?;
            let s = secs(t);
            if first.is_none_or(|b| b.is_empty()) {
                bail!("{key}: empty");
            }
            println!("{{\"ttfb_s\":{s:.6}}}");
            Ok(())
        }
        Cmd::PutMany {
            prefix,
            count,
            size,
        } => {
            let data = noise(size, 7);
            let t = Instant::now();
            for i in 0..count {
                c.put_object()
                    .bucket(&bucket)
                    .key(format!("{prefix}f{i:05}.bin"))
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await?;
            }
            let s = secs(t);
            println!(
                "{{\"files\":{count},\"secs\":{s:.4},\"ops\":{:.2}}}",
                count as f64 / s
            );
            Ok(())
        }
        Cmd::List { prefix } => {
            let t = Instant::now();
            let (files, dirs) = list_dir(&c, &bucket, &prefix).await?;
            println!(
                "{{\"files\":{},\"dirs\":{},\"secs\":{:.4}}}",
                files.len(),
                dirs.len(),
                secs(t)
            );
            Ok(())
        }
        Cmd::Walk { prefix } => {
            let t = Instant::now();
            let files = walk(&c, &bucket, &prefix).await?;
            println!("{{\"files\":{},\"secs\":{:.4}}}", files.len(), secs(t));
            Ok(())
        }
        Cmd::Authentik { prefix, reads } => {
            let t = Instant::now();
            let mut files = walk(&c, &bucket, &prefix).await?;
            files.sort();
            let walk_s = secs(t);
            let step = (files.len() / reads.max(1)).max(1);
            let t2 = Instant::now();
            let mut lat = Vec::new();
            let mut bytes = 0u64;
            for k in files.iter().step_by(step).take(reads) {
                let t3 = Instant::now();
                let o = c.get_object().bucket(&bucket).key(k).send().await?;
                bytes += drain(o.body).await?;
                lat.push(secs(t3));
            }
            let read = secs(t2);
            lat.sort_by(f64::total_cmp);
            println!(
                "{{\"files\":{},\"walk_s\":{walk_s:.4},\"reads\":{},\"read_s\":{read:.4},\"bytes\":{bytes},\"read_p50_ms\":{:.3},\"read_p99_ms\":{:.3},\"total_s\":{:.4}}}",
                files.len(),
                lat.len(),
                pct(&lat, 0.5) * 1e3,
                pct(&lat, 0.99) * 1e3,
                walk_s + read
            );
            Ok(())
        }
        Cmd::Head { key } => {
            println!("{}", head(&c, &bucket, &key).await?.unwrap_or(-1));
            Ok(())
        }
        Cmd::WaitSize { key, size, timeout } => {
            let t = Instant::now();
            loop {
                if head(&c, &bucket, &key).await? == Some(size) {
                    break;
                }
                if secs(t) > timeout {
                    bail!("{key} did not reach {size} bytes in {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("{{\"waited_s\":{:.4}}}", secs(t));
            Ok(())
        }
        Cmd::WaitCount {
            prefix,
            count,
            timeout,
        } => {
            let t = Instant::now();
            loop {
                let n = count_under(&c, &bucket, &prefix).await?;
                if n >= count {
                    break;
                }
                if secs(t) > timeout {
                    bail!("{prefix} holds {n} < {count} objects after {timeout} s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("{{\"waited_s\":{:.4}}}", secs(t));
            Ok(())
        }
        Cmd::DeletePrefix { prefix } => {
            let mut token = None;
            let mut n = 0usize;
            loop {
                let r = c
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await?;
                let keys: Vec<String> = r
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string))
                    .collect();
                n += keys.len();
                stream::iter(keys)
                    .map(|k| {
                        let (c, bucket) = (c.clone(), bucket.clone());
                        async move { c.delete_object().bucket(bucket).key(k).send().await }
                    })
                    .buffer_unordered(32)
                    .try_collect::<Vec<_>>()
                    .await?;
                match r.next_continuation_token() {
                    Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            println!("{{\"deleted\":{n}}}");
            Ok(())
        }
        _ => unreachable!("file commands are handled before a client is made"),
    }
}

async fn drain(mut body: ByteStream) -> Result<u64> {
    let mut n = 0u64;
    while let Some(b) = body.try_next().await? {
        n += b.len() as u64;
    }
    Ok(n)
}

async fn head(c: &Client, bucket: &str, key: &str) -> Result<Option<i64>> {
    match c.head_object().bucket(bucket).key(key).send().await {
        Ok(o) => Ok(Some(o.content_length().unwrap_or(0))),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn seq_read_one(
    c: &Client,
    bucket: &str,
    key: &str,
    chunk: u64,
    conc: usize,
    deadline: Instant,
    total: &AtomicU64,
) -> Result<()> {
    let size = head(c, bucket, key)
        .await?
        .ok_or_else(|| anyhow!("{key}: not found"))? as u64;
    let ranges: Vec<(u64, u64)> = (0..size.div_ceil(chunk))
        .map(|i| (i * chunk, ((i + 1) * chunk).min(size)))
        .collect();
    let mut s = stream::iter(ranges)
        .map(|(a, b)| async move {
            if Instant::now() >= deadline {
                return Ok::<u64, anyhow::Error>(0);
            }
            let o = c
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes={a}-{}", b - 1))
                .send()
                .await?;
            drain(o.body).await
        })
        .buffered(conc.max(1));
    while let Some(n) = s.next().await {
        total.fetch_add(n?, Ordering::Relaxed);
    }
    Ok(())
}

async fn multipart(
    c: &Client,
    bucket: &str,
    key: &str,
    total: u64,
    part: u64,
    conc: usize,
) -> Result<()> {
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    let id = up
        .upload_id()
        .ok_or_else(|| anyhow!("no upload id"))?
        .to_string();
    // One buffer per in-flight slot is generated up front, so the clock measures the upload.
    let bufs: Vec<Bytes> = (0..conc.max(1) as u64)
        .map(|i| noise(part as usize, i + 3))
        .collect();
    let n = total.div_ceil(part);
    let parts = stream::iter(0..n)
        .map(|i| {
            let len = (total - i * part).min(part) as usize;
            let body = bufs[(i as usize) % bufs.len()].slice(..len);
            let id = id.clone();
            async move {
                let r = c
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(i as i32 + 1)
                    .body(ByteStream::from(body))
                    .send()
                    .await?;
                Ok::<_, anyhow::Error>(
                    CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffered(conc.max(1))
        .try_collect::<Vec<_>>()
        .await;
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            let _ = c
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .send()
                .await;
            return Err(e);
        }
    };
    c.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

/// One delimited listing, every page: (object keys, common prefixes).
async fn list_dir(c: &Client, bucket: &str, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut token = None;
    loop {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .delimiter("/")
            .set_continuation_token(token.take())
            .send()
            .await?;
        files.extend(
            r.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        dirs.extend(
            r.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(String::from)),
        );
        match r.next_continuation_token() {
            Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok((files, dirs))
}

async fn walk(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut level = vec![prefix.to_string()];
    while !level.is_empty() {
        let results = stream::iter(level)
            .map(|p| async move { list_dir(c, bucket, &p).await })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        level = Vec::new();
        for (f, d) in results {
            files.extend(f);
            level.extend(d);
        }
    }
    Ok(files)
}

async fn count_under(c: &Client, bucket: &str, prefix: &str) -> Result<usize> {
    let mut token = None;
    let mut n = 0;
    loop {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await?;
        n += r.contents().len();
        match r.next_continuation_token() {
            Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(n)
}
