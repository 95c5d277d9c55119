//! Prometheus metrics: a small fixed registry of atomics (every label value is known in
//! advance, so recording is one relaxed atomic add and never allocates), rendered in the
//! text exposition format, served by a tiny HTTP listener (`--metrics-addr`).
//!
//! Recording functions are free functions on one process-wide registry so that each layer
//! adds a one-line hook: `store::s3` (requests by operation and outcome, bytes, uploads in
//! flight),
//! `cache` (hits and misses), `fuse` (bytes read and written by applications, errno answers).
//! The memory budget is sampled when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::budget::MemoryBudget;
use crate::store::StoreError;

/// S3 operations, as the API names them (the label values of `operation`).
pub const OPERATIONS: [&str; 11] = [
    "HeadObject",
    "ListObjectsV2",
    "GetObject",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "CopyObject",
    "DeleteObject",
];
const N_OPS: usize = OPERATIONS.len() + 1; // + "other"

/// Outcomes of one S3 request, after the SDK's retries (label values of `outcome`).
pub const OUTCOMES: [&str; 9] = [
    "ok",
    "not_found",
    "no_such_bucket",
    "precondition_failed",
    "access_denied",
    "timeout",
    "unreachable",
    "rejected",
    "error",
];
const N_OUT: usize = OUTCOMES.len();

/// Errnos counted one by one; anything larger lands in the last slot.
const N_ERRNO: usize = 134;

/// Caches whose hits and misses are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// what a key is (file, directory, missing)
    Entry = 0,
    /// directory listings
    Listing = 1,
}
const CACHES: [&str; 2] = ["entry", "listing"];

struct Registry {
    s3_requests: [[AtomicU64; N_OUT]; N_OPS],
    uploads_in_flight: AtomicI64,
    s3_bytes_received: AtomicU64,
    s3_bytes_sent: AtomicU64,
    fuse_read_bytes: AtomicU64,
    fuse_written_bytes: AtomicU64,
    cache_hits: [AtomicU64; 2],
    cache_misses: [AtomicU64; 2],
    fuse_errors: [AtomicU64; N_ERRNO + 1],
}

static REG: Registry = Registry {
    s3_requests: [const { [const { AtomicU64::new(0) }; N_OUT] }; N_OPS],
    uploads_in_flight: AtomicI64::new(0),
    s3_bytes_received: AtomicU64::new(0),
    s3_bytes_sent: AtomicU64::new(0),
    fuse_read_bytes: AtomicU64::new(0),
    fuse_written_bytes: AtomicU64::new(0),
    cache_hits: [const { AtomicU64::new(0) }; 2],
    cache_misses: [const { AtomicU64::new(0) }; 2],
    fuse_errors: [const { AtomicU64::new(0) }; N_ERRNO + 1],
};

/// The memory budget sampled at each scrape (set once the filesystem exists).
static BUDGET: Mutex<Option<MemoryBudget>> = Mutex::new(None);

/// Process start, for `process_start_time_seconds`.
static START: Mutex<Option<SystemTime>> = Mutex::new(None);

fn op_index(op: &str) -> usize {
    OPERATIONS
        .iter()
        .position(|o| *o == op)
        .unwrap_or(N_OPS - 1)
}

fn outcome_index(r: Result<(), &StoreError>) -> usize {
    match r {
        Ok(()) => 0,
        Err(StoreError::NotFound) => 1,
        Err(StoreError::NoSuchBucket) => 2,
        Err(StoreError::PreconditionFailed) => 3,
        Err(StoreError::AccessDenied(_)) => 4,
        Err(StoreError::Timeout(_)) => 5,
        Err(StoreError::Unreachable(_)) => 6,
        Err(StoreError::Rejected(_)) => 7,
        Err(StoreError::Other(_)) => 8,
    }
}

// ---------------------------------------------------------------------------------------
// recording

/// One S3 request `op` finished (successfully).
pub fn s3_ok(op: &str) {
    REG.s3_requests[op_index(op)][0].fetch_add(1, Ordering::Relaxed);
}

/// One S3 request `op` failed with `e` (after retries).
pub fn s3_failed(op: &str, e: &StoreError) {
    REG.s3_requests[op_index(op)][outcome_index(Err(e))].fetch_add(1, Ordering::Relaxed);
}

/// Body bytes received from S3 (GetObject).
pub fn s3_received(bytes: usize) {
    REG.s3_bytes_received
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Body bytes sent to S3 (PutObject, UploadPart).
pub fn s3_sent(bytes: usize) {
    REG.s3_bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Counts one single-PUT upload as in flight until the guard is dropped.
#[must_use = "the upload counts as in flight while the guard lives"]
pub fn put_started() -> InFlight {
    InFlight::new(&REG.uploads_in_flight)
}

/// A multipart upload was created: in flight until [`multipart_ended`].
pub fn multipart_started() {
    REG.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
}

/// A multipart upload was completed or aborted (either way it is no longer in flight).
pub fn multipart_ended() {
    // never below zero, even if an abort follows a failed completion
    let _ = REG
        .uploads_in_flight
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some((v - 1).max(0))
        });
}

pub struct InFlight {
    gauge: &'static AtomicI64,
}

impl InFlight {
    fn new(gauge: &'static AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cache answered (`hit`) or had to send the caller to S3.
pub fn cache(kind: CacheKind, hit: bool) {
    let c = if hit {
        &REG.cache_hits
    } else {
        &REG.cache_misses
    };
    c[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// Bytes an application read through the mount; returns `bytes` (so a reply wraps it).
pub fn fuse_read(bytes: usize) -> usize {
    REG.fuse_read_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    bytes
}

/// Bytes an application wrote through the mount; returns `bytes` (so a reply wraps it).
pub fn fuse_written(bytes: u32) -> u32 {
    REG.fuse_written_bytes
        .fetch_add(u64::from(bytes), Ordering::Relaxed);
    bytes
}

/// The kernel was answered with `errno`; returns it, so a reply can wrap it in place.
pub fn fuse_error(errno: i32) -> i32 {
    let i = usize::try_from(errno).unwrap_or(N_ERRNO).min(N_ERRNO);
    REG.fuse_errors[i].fetch_add(1, Ordering::Relaxed);
    errno
}

/// The budget whose use is reported as `bucketfs_memory_budget_*_bytes`.
pub fn set_budget(b: MemoryBudget) {
    *BUDGET.lock() = Some(b);
}

// ---------------------------------------------------------------------------------------
// rendering

fn errno_name(e: usize) -> String {
    let name = match e as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "ENOTSUP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        _ if e >= N_ERRNO => return "other".into(),
        _ => return format!("E{e}"),
    };
    name.into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The registry in Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let mut o = String::with_capacity(4096);
    header(
        &mut o,
        "bucketfs_s3_requests_total",
        "counter",
        "S3 requests by operation and outcome (each after the SDK's retries).",
    );
    for (i, row) in REG.s3_requests.iter().enumerate() {
        let op = OPERATIONS.get(i).copied().unwrap_or("other");
        for (j, c) in row.iter().enumerate() {
            let v = get(c);
            // every operation shows its `ok` series from the start; failures once they occur
            if v > 0 || (j == 0 && i < OPERATIONS.len()) {
                let _ = writeln!(
                    o,
                    "bucketfs_s3_requests_total{{operation=\"{op}\",outcome=\"{}\"}} {v}",
                    OUTCOMES[j]
                );
            }
        }
    }
    header(
        &mut o,
        "bucketfs_uploads_in_flight",
        "gauge",
        "Objects being uploaded: PutObject requests in progress plus multipart uploads not yet completed or aborted.",
    );
    let _ = writeln!(
        o,
        "bucketfs_uploads_in_flight {}",
        REG.uploads_in_flight.load(Ordering::Relaxed).max(0)
    );
    header(
        &mut o,
        "bucketfs_s3_received_bytes_total",
        "counter",
        "Object bytes read from S3 (GetObject bodies).",
    );
    let _ = writeln!(
        o,
        "bucketfs_s3_received_bytes_total {}",
        get(&REG.s3_bytes_received)
    );
    header(
        &mut o,
        "bucketfs_s3_sent_bytes_total",
        "counter",
        "Object bytes written to S3 (PutObject and UploadPart bodies).",
    );
    let _ = writeln!(
        o,
        "bucketfs_s3_sent_bytes_total {}",
        get(&REG.s3_bytes_sent)
    );
    header(
        &mut o,
        "bucketfs_read_bytes_total",
        "counter",
        "Bytes applications read through the mount.",
    );
    let _ = writeln!(o, "bucketfs_read_bytes_total {}", get(&REG.fuse_read_bytes));
    header(
        &mut o,
        "bucketfs_written_bytes_total",
        "counter",
        "Bytes applications wrote through the mount.",
    );
    let _ = writeln!(
        o,
        "bucketfs_written_bytes_total {}",
        get(&REG.fuse_written_bytes)
    );
    header(
        &mut o,
        "bucketfs_cache_hits_total",
        "counter",
        "Metadata cache lookups answered from the cache, by cache.",
    );
    for (i, name) in CACHES.iter().enumerate() {
        let _ = writeln!(
            o,
            "bucketfs_cache_hits_total{{cache=\"{name}\"}} {}",
            get(&REG.cache_hits[i])
        );
    }
    header(
        &mut o,
        "bucketfs_cache_misses_total",
        "counter",
        "Metadata cache lookups that had to ask S3, by cache.",
    );
    for (i, name) in CACHES.iter().enumerate() {
        let _ = writeln!(
            o,
            "bucketfs_cache_misses_total{{cache=\"{name}\"}} {}",
            get(&REG.cache_misses[i])
        );
    }
    header(
        &mut o,
        "bucketfs_fuse_errors_total",
        "counter",
        "Errors returned to the kernel (to applications), by errno.",
    );
    for (e, c) in REG.fuse_errors.iter().enumerate() {
        let v = get(c);
        if v > 0 {
            let _ = writeln!(
                o,
                "bucketfs_fuse_errors_total{{errno=\"{}\"}} {v}",
                errno_name(e)
            );
        }
    }
    let budget = BUDGET.lock().clone();
    if let Some(b) = budget {
        header(
            &mut o,
            "bucketfs_memory_budget_bytes",
            "gauge",
            "Size of the memory budget for read-ahead and upload buffers (--max-memory).",
        );
        let _ = writeln!(o, "bucketfs_memory_budget_bytes {}", b.total_bytes());
        header(
            &mut o,
            "bucketfs_memory_budget_used_bytes",
            "gauge",
            "Memory budget held by read-ahead and upload buffers right now.",
        );
        let _ = writeln!(o, "bucketfs_memory_budget_used_bytes {}", b.used_bytes());
    }
    header(
        &mut o,
        "bucketfs_unsaved_files_total",
        "counter",
        "Files that could not be saved to the bucket at unmount.",
    );
    let _ = writeln!(
        o,
        "bucketfs_unsaved_files_total {}",
        crate::service::unsaved()
    );
    header(
        &mut o,
        "bucketfs_build_info",
        "gauge",
        "Version of the running bucketfs.",
    );
    let _ = writeln!(
        o,
        "bucketfs_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let start = *START.lock();
    if let Some(t) = start.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        header(
            &mut o,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(o, "process_start_time_seconds {}", t.as_secs());
    }
    o
}

// ---------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for metrics: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the metrics listener now (so a busy port is a start-up error, before mounting).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError { addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    START.lock().get_or_insert_with(SystemTime::now);
    Ok(l)
}

/// Serves `GET /metrics` on `listener` until the runtime ends. Call inside the runtime.
pub async fn serve(listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = answer(conn).await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The status line and body for a request line `METHOD TARGET VERSION`.
fn route(request_line: &str) -> (&'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", render()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "bucketfs metrics: GET /metrics (Prometheus text format)\n".into(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "only GET and HEAD\n".into()),
    }
}

async fn answer(mut conn: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 || head.len() > 16 * 1024 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), read_head).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("");
    let (status, body) = route(line);
    let is_head = line.starts_with("HEAD ");
    let ctype = if status.starts_with("200") && line.contains("/metrics") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        resp.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&resp).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_render_and_move() {
        let before = render();
        s3_ok("GetObject");
        s3_failed(
            "PutObject",
            &StoreError::AccessDenied("AccessDenied".into()),
        );
        s3_failed("Bogus", &StoreError::Other("x".into()));
        s3_received(10);
        cache(CacheKind::Listing, true);
        cache(CacheKind::Entry, false);
        assert_eq!(fuse_error(libc::ENOENT), libc::ENOENT);
        fuse_error(9999);
        let after = render();
        let d = |s: &str| value(&after, s).unwrap_or(0.0) - value(&before, s).unwrap_or(0.0);
        assert!(d("bucketfs_s3_requests_total{operation=\"GetObject\",outcome=\"ok\"}") >= 1.0);
        assert!(
            d("bucketfs_s3_requests_total{operation=\"PutObject\",outcome=\"access_denied\"}")
                >= 1.0
        );
        assert!(d("bucketfs_s3_requests_total{operation=\"other\",outcome=\"error\"}") >= 1.0);
        assert!(d("bucketfs_s3_received_bytes_total") >= 10.0);
        assert!(d("bucketfs_cache_hits_total{cache=\"listing\"}") >= 1.0);
        assert!(d("bucketfs_cache_misses_total{cache=\"entry\"}") >= 1.0);
        assert!(d("bucketfs_fuse_errors_total{errno=\"ENOENT\"}") >= 1.0);
        assert!(d("bucketfs_fuse_errors_total{errno=\"other\"}") >= 1.0);
        // every ok series is there from the start, with HELP and TYPE before it
        for op in OPERATIONS {
            let s = format!("bucketfs_s3_requests_total{{operation=\"{op}\",outcome=\"ok\"}}");
            assert!(value(&before, &s).is_some(), "{s}");
        }
        let help = after
            .find("# HELP bucketfs_s3_requests_total")
            .expect("HELP");
        let ty = after
            .find("# TYPE bucketfs_s3_requests_total counter")
            .expect("TYPE");
        let first = after.find("bucketfs_s3_requests_total{").expect("series");
        assert!(help < ty && ty < first);
        // each line: comment, or `name{labels} value`
        for l in after.lines() {
            assert!(
                l.starts_with("# ") || l.split(' ').count() == 2,
                "bad line {l:?}"
            );
        }
    }

    #[test]
    fn in_flight_gauges_return_to_zero() {
        // the only unit test that touches uploads_in_flight, so exact values are safe here
        assert_eq!(REG.uploads_in_flight.load(Ordering::Relaxed), 0);
        let g = put_started();
        multipart_started();
        assert_eq!(REG.uploads_in_flight.load(Ordering::Relaxed), 2);
        drop(g);
        multipart_ended();
        multipart_ended(); // an abort after a failed completion
        assert_eq!(REG.uploads_in_flight.load(Ordering::Relaxed), 0);
        assert!(render().contains("\nbucketfs_uploads_in_flight 0\n"));
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET /metrics HTTP/1.1").0, "200 OK");
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0").0, "200 OK");
        assert_eq!(route("GET /nope HTTP/1.1").0, "404 Not Found");
        assert_eq!(route("POST /metrics HTTP/1.1").0, "405 Method Not Allowed");
        assert_eq!(route("").0, "405 Method Not Allowed");
    }

    #[tokio::test]
    async fn serves_http() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(serve(l));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("version=0.0.4"));
        assert!(resp.contains("\r\n\r\n# HELP bucketfs_s3_requests_total"));
        server.abort();
    }
}
