//! Building new versions of objects. The bytes a handle writes go to its staging file; a
//! part that the writer has moved past is uploaded right away (so a sequential stream is
//! uploaded while it is written), and the version is completed at flush/fsync/close:
//! parts nobody touched are copied server-side from the previous version (UploadPartCopy),
//! the rest are read back from staging (and the previous version where needed). Nothing is
//! visible in the bucket until PutObject or CompleteMultipartUpload succeeds; a failure
//! aborts the multipart upload and keeps the staged bytes, so a later flush can retry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::budget::MemoryBudget;
use crate::staging::{StageError, StageFile};
use crate::store::{CompletedPart, ObjectStore, PutOptions, StoreError};

pub const MIB: u64 = 1024 * 1024;
/// S3's smallest non-last part.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
pub const MAX_PARTS: i32 = 10_000;
const TIER: i32 = 1000;

/// Size of part `number` (1-based): the base size doubles every 1000 parts, and the last
/// thousand parts are as large as S3 allows, so 10 000 parts hold more than 5 TiB.
pub fn part_size(base: u64, number: i32) -> u64 {
    let base = base.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    let tier = ((number.max(1) - 1) / TIER) as u32;
    if tier >= 9 {
        MAX_PART_SIZE
    } else {
        (base << tier).min(MAX_PART_SIZE)
    }
}

/// Byte range of part `number`.
pub fn part_span(base: u64, number: i32) -> Range<u64> {
    let n = number.max(1);
    let tier = (n - 1) / TIER;
    let mut start = 0u64;
    for t in 0..tier {
        start += TIER as u64 * part_size(base, t * TIER + 1);
    }
    start += (n - 1 - tier * TIER) as u64 * part_size(base, n);
    start..start + part_size(base, n)
}

/// The part that holds byte `offset`.
pub fn part_at(base: u64, offset: u64) -> i32 {
    let mut start = 0u64;
    for t in 0..(MAX_PARTS / TIER) {
        let size = part_size(base, t * TIER + 1);
        let span = TIER as u64 * size;
        if offset < start + span || t == MAX_PARTS / TIER - 1 {
            return t * TIER + 1 + ((offset - start) / size) as i32;
        }
        start += span;
    }
    MAX_PARTS
}

/// Largest object the part schedule can hold.
pub fn max_object_size(base: u64) -> u64 {
    part_span(base, MAX_PARTS).end
}

#[derive(Clone, Debug)]
pub struct UploadConfig {
    pub part_size: u64,
    /// Parts of one file in flight at once.
    pub max_inflight: usize,
}

/// The version in the bucket a new one builds on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub size: u64,
    pub etag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{0}")]
    Unsupported(&'static str),
}

impl VersionError {
    pub fn errno(&self) -> i32 {
        match self {
            VersionError::Store(e) => e.errno(),
            VersionError::Stage(e) => e.errno(),
            VersionError::Unsupported(_) => libc::ENOTSUP,
        }
    }
}

type PartResult = (i32, u64, Result<String, StoreError>);

/// Background retries of an AbortMultipartUpload that failed: every 5 s for 30 minutes.
const ABORT_RETRIES: u32 = 360;
const ABORT_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where each byte of a version comes from: staged bytes, else the previous version below
/// `base_valid`, else zeros.
pub struct Version {
    store: Arc<dyn ObjectStore>,
    key: String,
    opts: PutOptions,
    /// Headers the open multipart upload was created with.
    mpu_opts: PutOptions,
    budget: MemoryBudget,
    cfg: UploadConfig,
    stage: StageFile,
    base: Option<Base>,
    base_valid: u64,
    size: u64,
    mpu: Option<String>,
    /// Uploaded parts of the open multipart upload, with the generation they hold.
    done: BTreeMap<i32, (String, u64)>,
    /// Generation of each part: bumped by every change to it.
    gens: BTreeMap<i32, u64>,
    /// Parts that differ from the previous version.
    touched: BTreeSet<i32>,
    /// Parts uploaded and then dropped from staging (only the upload holds their bytes).
    sealed: BTreeSet<i32>,
    inflight: JoinSet<PartResult>,
    inflight_parts: BTreeSet<i32>,
    /// A write or truncate failed and the application was told: this version is not what
    /// it meant to write, so it must never reach the bucket.
    poisoned: Option<&'static str>,
    /// Eager part uploads stopped after a failure; commit sends the parts again.
    eager_paused: bool,
    dirty: bool,
}

impl Version {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        opts: PutOptions,
        base: Option<Base>,
        stage: StageFile,
        budget: MemoryBudget,
        cfg: UploadConfig,
    ) -> Self {
        let size = base.as_ref().map(|b| b.size).unwrap_or(0);
        Version {
            store,
            key,
            mpu_opts: opts.clone(),
            opts,
            budget,
            cfg,
            stage,
            base_valid: size,
            base,
            size,
            mpu: None,
            done: BTreeMap::new(),
            gens: BTreeMap::new(),
            touched: BTreeSet::new(),
            sealed: BTreeSet::new(),
            inflight: JoinSet::new(),
            inflight_parts: BTreeSet::new(),
            poisoned: None,
            eager_paused: false,
            dirty: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The bucket must get a new version at the next commit.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Headers of the next commit (Content-Type, POSIX metadata).
    /// The headers of this version; after a commit, exactly those the bucket holds.
    pub fn options(&self) -> &PutOptions {
        &self.opts
    }

    pub fn set_options(&mut self, opts: PutOptions) {
        self.opts = opts;
    }

    fn bump(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let p = self.cfg.part_size;
        for n in part_at(p, r.start)..=part_at(p, r.end - 1) {
            *self.gens.entry(n).or_insert(0) += 1;
            self.touched.insert(n);
        }
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VersionError> {
        let r = self.write_inner(offset, data).await;
        if r.is_err() {
            self.poisoned = Some("an earlier write to this file failed");
        }
        r
    }

    async fn write_inner(&mut self, offset: u64, data: &[u8]) -> Result<(), VersionError> {
        if let Some(why) = self.poisoned {
            return Err(StoreError::Other(why.into()).into());
        }
        let end = offset + data.len() as u64;
        if !data.is_empty() {
            let p = self.cfg.part_size;
            for n in part_at(p, offset)..=part_at(p, end - 1) {
                if self.sealed.contains(&n) {
                    return Err(VersionError::Unsupported(
                        "rewriting part of a region already uploaded and dropped from staging",
                    ));
                }
            }
        }
        if !self.stage.fits(offset, data.len() as u64) {
            self.seal_behind(offset).await;
        }
        match self.stage.write_at(offset, data) {
            Err(StageError::Io(e)) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // The staging disk is full: drop what is already uploaded and try once more.
                self.seal_behind(offset).await;
                self.stage.write_at(offset, data)?;
            }
            r => r?,
        }
        if end > self.size {
            self.size = end;
        }
        self.bump(offset..end);
        self.dirty = true;
        if !self.eager_paused {
            if let Err(e) = self.upload_passed(offset).await {
                // The bytes are staged: commit sends them again (and reports if it cannot).
                tracing::debug!(key = %self.key, error = %e, "early part upload failed; retrying at commit");
                self.eager_paused = true;
            }
        }
        Ok(())
    }

    /// Sets the size; bytes past the old end read as zeros.
    pub fn truncate(&mut self, new: u64) -> Result<(), VersionError> {
        let r = self.truncate_inner(new);
        if r.is_err() {
            self.poisoned = Some("an earlier truncate of this file failed");
        }
        r
    }

    fn truncate_inner(&mut self, new: u64) -> Result<(), VersionError> {
        let p = self.cfg.part_size;
        if new < self.size {
            let last = if new == 0 { 0 } else { part_at(p, new - 1) };
            if last > 0 && self.sealed.contains(&last) {
                return Err(VersionError::Unsupported(
                    "cutting inside a region already uploaded and dropped from staging",
                ));
            }
            self.stage.discard(new..self.size);
            self.base_valid = self.base_valid.min(new);
            self.bump(new..self.size);
            // Parts wholly past the end are gone.
            self.gens.retain(|&n, _| n <= last);
            self.touched.retain(|&n| n <= last);
            self.sealed.retain(|&n| n <= last);
            self.done.retain(|&n, _| n < last);
        } else if new > self.size {
            self.bump(self.size..new);
        }
        if new != self.size {
            self.dirty = true;
        }
        self.size = new;
        Ok(())
    }

    /// Bytes `r` of this version: staged, previous version, zeros.
    pub async fn read(&self, r: Range<u64>) -> Result<Bytes, VersionError> {
        let r = r.start.min(self.size)..r.end.min(self.size);
        // Zero-filled (the gaps are zeros); a recycled buffer, as a fresh multi-MiB mapping
        // costs a page fault per 4 KiB (measured: +0.9 s of CPU per GiB written).
        let mut buf = crate::store::bufpool::take((r.end - r.start) as usize);
        buf.resize((r.end - r.start) as usize, 0);
        for (piece, held) in self.stage.held().split(r.clone()) {
            let at = (piece.start - r.start) as usize..(piece.end - r.start) as usize;
            if held {
                self.stage.read_at(piece, &mut buf[at])?;
                continue;
            }
            let from_base = piece.start..piece.end.min(self.base_valid);
            if !from_base.is_empty() {
                let etag = self.base.as_ref().and_then(|b| b.etag.as_deref());
                let b = self
                    .store
                    .get_range(&self.key, from_base.clone(), etag)
                    .await?;
                if b.len() as u64 != from_base.end - from_base.start {
                    return Err(
                        StoreError::Other("short read of the previous version".into()).into(),
                    );
                }
                let s = at.start;
                buf[s..s + b.len()].copy_from_slice(&b);
            }
        }
        Ok(crate::store::bufpool::freeze(buf))
    }

    async fn ensure_mpu(&mut self) -> Result<String, VersionError> {
        if let Some(id) = &self.mpu {
            return Ok(id.clone());
        }
        let id = self.store.create_multipart(&self.key, &self.opts).await?;
        self.mpu = Some(id.clone());
        self.mpu_opts = self.opts.clone();
        Ok(id)
    }

    /// Waits for one part upload; a failed part stays unsent (commit sends it again).
    async fn collect_one(&mut self) -> Result<(), StoreError> {
        match self.inflight.join_next().await {
            Some(Ok((n, gen, Ok(etag)))) => {
                self.inflight_parts.remove(&n);
                self.done.insert(n, (etag, gen));
                Ok(())
            }
            Some(Ok((n, _, Err(e)))) => {
                self.inflight_parts.remove(&n);
                Err(e)
            }
            Some(Err(e)) => {
                self.inflight_parts.clear();
                Err(StoreError::Other(format!("upload task: {e}")))
            }
            None => Ok(()),
        }
    }

    /// Waits for every part upload; returns the first failure.
    async fn drain(&mut self) -> Result<(), StoreError> {
        let mut first = Ok(());
        while !self.inflight.is_empty() {
            if let Err(e) = self.collect_one().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    async fn spawn_part(&mut self, id: &str, n: i32) -> Result<(), VersionError> {
        while self.inflight.len() >= self.cfg.max_inflight.max(1) {
            self.collect_one().await?;
        }
        let span = part_span(self.cfg.part_size, n);
        let span = span.start..span.end.min(self.size);
        let mem = self.budget.reserve(span.end - span.start).await;
        let body = self.read(span).await?;
        let gen = self.gens.get(&n).copied().unwrap_or(0);
        let (store, key, id) = (self.store.clone(), self.key.clone(), id.to_string());
        self.inflight_parts.insert(n);
        self.inflight.spawn(async move {
            let r = store.upload_part(&key, &id, n, body).await;
            drop(mem); // the body's memory returns to the budget once sent
            (n, gen, r)
        });
        Ok(())
    }

    fn part_current(&self, n: i32) -> bool {
        let gen = self.gens.get(&n).copied().unwrap_or(0);
        self.done.get(&n).is_some_and(|(_, g)| *g == gen)
    }

    /// A sequential writer has moved past whole parts: upload them now.
    async fn upload_passed(&mut self, offset: u64) -> Result<(), VersionError> {
        let p = self.cfg.part_size;
        if self.size <= part_span(p, 1).end {
            return Ok(());
        }
        let current = part_at(p, offset);
        let ready: Vec<i32> = self
            .touched
            .iter()
            .copied()
            .filter(|&n| {
                n < current
                    && part_span(p, n).end <= self.size
                    && !self.inflight_parts.contains(&n)
                    && !self.part_current(n)
            })
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let id = self.ensure_mpu().await?;
        for n in ready {
            self.spawn_part(&id, n).await?;
        }
        Ok(())
    }

    /// Staging is full: drop the staged bytes of parts already uploaded behind `offset`.
    async fn seal_behind(&mut self, offset: u64) {
        if self.drain().await.is_err() {
            self.eager_paused = true;
        }
        let p = self.cfg.part_size;
        let current = part_at(p, offset);
        let sealable: Vec<i32> = self
            .done
            .keys()
            .copied()
            .filter(|&n| n < current && self.part_current(n) && !self.sealed.contains(&n))
            .collect();
        for n in sealable {
            self.stage.discard(part_span(p, n));
            self.sealed.insert(n);
        }
    }

    async fn abort_mpu(&mut self) {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        self.inflight_parts.clear();
        self.done.clear();
        if let Some(id) = self.mpu.take() {
            if let Err(e) = self.store.abort_multipart(&self.key, &id).await {
                // Often the same outage that failed the upload: keep trying in the background
                // so no incomplete upload is left behind (and billed) once S3 is back.
                tracing::warn!(key = %self.key, error = %e, "could not abort multipart upload; retrying in the background");
                let (store, key) = (self.store.clone(), self.key.clone());
                tokio::spawn(async move {
                    for attempt in 0..ABORT_RETRIES {
                        tokio::time::sleep(ABORT_RETRY_EVERY).await;
                        match store.abort_multipart(&key, &id).await {
                            Ok(()) => return,
                            Err(e) if attempt + 1 == ABORT_RETRIES => {
                                tracing::error!(key = %key, upload_id = %id, error = %e, "gave up aborting a multipart upload (a bucket lifecycle rule can clean it)");
                            }
                            Err(_) => {}
                        }
                    }
                });
            }
        }
    }

    /// Makes the bucket hold exactly this version; returns its ETag.
    pub async fn commit(&mut self) -> Result<Base, VersionError> {
        if let Some(why) = self.poisoned {
            self.abort_mpu().await;
            return Err(StoreError::Other(why.into()).into());
        }
        let r = self.commit_inner().await;
        if r.is_err() {
            self.abort_mpu().await;
            if !self.sealed.is_empty() {
                // Bytes only the aborted upload held are gone: this version cannot be retried.
                self.poisoned = Some("the upload failed after staging had dropped uploaded parts");
            }
        } else {
            self.eager_paused = false;
        }
        r
    }

    async fn commit_inner(&mut self) -> Result<Base, VersionError> {
        // Early parts that failed are simply sent again below.
        let _ = self.drain().await;
        let p = self.cfg.part_size;
        let etag = if self.size <= part_span(p, 1).end && self.sealed.is_empty() {
            if self.mpu.is_some() {
                self.abort_mpu().await;
            }
            let _mem = self.budget.reserve(self.size).await;
            let body = self.read(0..self.size).await?;
            self.store.put(&self.key, body, &self.opts).await?
        } else {
            if self.mpu.is_some() && !same_but_times(&self.mpu_opts, &self.opts) {
                // Headers changed since the upload began (chmod while open): start over.
                if !self.sealed.is_empty() {
                    return Err(VersionError::Unsupported(
                        "changing headers of a file larger than the staging space while it is written",
                    ));
                }
                self.abort_mpu().await;
            }
            let id = self.ensure_mpu().await?;
            let last = part_at(p, self.size - 1);
            for n in 1..=last {
                if self.part_current(n) || self.inflight_parts.contains(&n) {
                    continue;
                }
                let span = part_span(p, n);
                let span = span.start..span.end.min(self.size);
                let copyable = !self.touched.contains(&n)
                    && span.end <= self.base_valid
                    && self.base.is_some();
                if copyable {
                    let etag = self.base.as_ref().and_then(|b| b.etag.clone());
                    let e = self
                        .store
                        .upload_part_copy(&self.key, &id, n, &self.key, span, etag.as_deref())
                        .await?;
                    let gen = self.gens.get(&n).copied().unwrap_or(0);
                    self.done.insert(n, (e, gen));
                } else {
                    if self.sealed.contains(&n) {
                        return Err(
                            StoreError::Other("a dropped part must be re-sent".into()).into()
                        );
                    }
                    self.spawn_part(&id, n).await?;
                }
            }
            self.drain().await?;
            let parts: Vec<CompletedPart> = (1..=last)
                .map(|n| {
                    self.done
                        .get(&n)
                        .map(|(etag, _)| CompletedPart {
                            number: n,
                            etag: etag.clone(),
                        })
                        .ok_or_else(|| StoreError::Other(format!("part {n} missing")))
                })
                .collect::<Result<_, _>>()?;
            let etag = self.store.complete_multipart(&self.key, &id, parts).await?;
            self.mpu = None;
            // The object holds the headers the upload began with (times may have moved).
            self.opts = self.mpu_opts.clone();
            etag
        };
        let base = Base {
            size: self.size,
            etag,
        };
        // The staged bytes are now a copy of the new version.
        self.base = Some(base.clone());
        self.base_valid = self.size;
        self.done.clear();
        self.gens.clear();
        self.touched.clear();
        self.sealed.clear();
        self.dirty = false;
        Ok(base)
    }

    /// Drops the version being built; the bucket keeps the previous one.
    pub async fn abort(&mut self) {
        self.abort_mpu().await;
        self.dirty = false;
    }
}

/// Headers that every write moves forward (s3fs's time headers, in whole seconds).
const TIME_HEADERS: [&str; 3] = ["mtime", "ctime", "atime"];

/// Whether two header sets differ at most in their times. A multipart upload's headers are
/// fixed when it begins, and each write moves mtime/ctime: restarting for that sent every
/// part of a large file twice (measured: 255 UploadParts for a 1 GiB file of 128 parts, half
/// the write speed). Such an object keeps the times of when its upload began, at most the
/// duration of the write earlier; a change of mode, owner or type still starts over.
fn same_but_times(a: &PutOptions, b: &PutOptions) -> bool {
    if a.content_type != b.content_type {
        return false;
    }
    rest(&a.metadata) == rest(&b.metadata)
}

fn rest(m: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    m.iter()
        .filter(|(k, _)| !TIME_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::StagingArea;
    use crate::store::mem::MemStore;

    #[test]
    fn part_schedule_fits_five_tib() {
        assert_eq!(part_size(8 * MIB, 1), 8 * MIB);
        assert_eq!(part_size(8 * MIB, 1001), 16 * MIB);
        assert_eq!(part_size(MIB, 1), MIN_PART_SIZE);
        for base in [5 * MIB, 8 * MIB, 64 * MIB] {
            assert!(
                max_object_size(base) >= 5 * 1024 * 1024 * MIB,
                "base {base}"
            );
            for n in [1, 2, 999, 1000, 1001, 5000, 9001, 10_000] {
                let s = part_span(base, n);
                assert_eq!(part_at(base, s.start), n);
                assert_eq!(part_at(base, s.end - 1), n);
                assert_eq!(s.end - s.start, part_size(base, n));
            }
        }
        assert_eq!(part_span(8 * MIB, 2).start, 8 * MIB);
    }

    fn setup() -> (Arc<MemStore>, StagingArea, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let area = StagingArea::new(dir.path(), 1 << 30).expect("area");
        (Arc::new(MemStore::new()), area, dir)
    }

    fn cfg() -> UploadConfig {
        UploadConfig {
            part_size: 5 * MIB,
            max_inflight: 2,
        }
    }

    #[tokio::test]
    async fn small_is_one_put_large_is_multipart_and_random_writes_work() {
        let (store, area, _d) = setup();
        let budget = MemoryBudget::new(64 * MIB);
        let mut v = Version::new(
            store.clone(),
            "s".into(),
            PutOptions::default(),
            None,
            area.open().unwrap(),
            budget.clone(),
            cfg(),
        );
        v.write(0, b"hello").await.unwrap();
        v.commit().await.unwrap();
        assert_eq!(&store.snapshot()["s"][..], b"hello");

        let mut data: Vec<u8> = (0..(12 * MIB + 7)).map(|i| (i % 251) as u8).collect();
        let mut v = Version::new(
            store.clone(),
            "l".into(),
            PutOptions::default(),
            None,
            area.open().unwrap(),
            budget.clone(),
            cfg(),
        );
        for (i, c) in data.chunks(128 * 1024).enumerate() {
            v.write((i * 128 * 1024) as u64, c).await.unwrap();
        }
        // A write behind the stream, into a part already sent.
        v.write(100, b"XYZ").await.unwrap();
        data[100..103].copy_from_slice(b"XYZ");
        v.commit().await.unwrap();
        assert_eq!(&store.snapshot()["l"][..], &data[..]);
        assert_eq!(store.open_uploads(), 0);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[tokio::test]
    async fn times_moving_during_a_multipart_write_send_each_part_once() {
        use crate::store::fault::{FaultStore, Op};
        let (mem, area, _d) = setup();
        let store = Arc::new(FaultStore::new(mem.clone()));
        let opts = |mtime: &str, mode: &str| PutOptions {
            content_type: "application/octet-stream".into(),
            metadata: HashMap::from([
                ("mtime".to_string(), mtime.to_string()),
                ("ctime".to_string(), mtime.to_string()),
                ("mode".to_string(), mode.to_string()),
            ]),
        };
        let mut v = Version::new(
            store.clone(),
            "t".into(),
            opts("1", "33188"),
            None,
            area.open().unwrap(),
            MemoryBudget::new(64 * MIB),
            cfg(),
        );
        let data = vec![5u8; (16 * MIB) as usize];
        for (i, c) in data.chunks(MIB as usize).enumerate() {
            // Each write moves the times, as the filesystem does.
            v.set_options(opts(&(i + 2).to_string(), "33188"));
            v.write(i as u64 * MIB, c).await.unwrap();
        }
        v.commit().await.unwrap();
        assert_eq!(&mem.snapshot()["t"][..], &data[..]);
        let count = |op: Op| store.calls().iter().filter(|o| **o == op).count();
        assert_eq!(
            count(Op::UploadPart),
            4,
            "16 MiB in 5 MiB parts, each sent once"
        );
        assert_eq!(count(Op::CreateMultipart), 1);
        // What the version reports is what the bucket holds: the times the upload began with.
        let held = store.head("t").await.unwrap();
        assert_eq!(held.metadata, v.options().metadata);
        assert_ne!(
            v.options().metadata["mtime"],
            "17",
            "not the last write's time"
        );
        // A mode change while written still starts over with the new headers.
        let mut v = Version::new(
            store.clone(),
            "m".into(),
            opts("1", "33188"),
            None,
            area.open().unwrap(),
            MemoryBudget::new(64 * MIB),
            cfg(),
        );
        for (i, c) in data.chunks(MIB as usize).enumerate() {
            v.write(i as u64 * MIB, c).await.unwrap();
        }
        v.set_options(opts("9", "33216"));
        v.commit().await.unwrap();
        assert_eq!(count(Op::CreateMultipart), 3);
        assert_eq!(mem.open_uploads(), 0);
    }

    #[tokio::test]
    async fn untouched_parts_are_copied_and_truncate_zero_fills() {
        let (store, area, _d) = setup();
        let old: Vec<u8> = (0..(11 * MIB)).map(|i| (i % 13) as u8).collect();
        store.insert("f", &old);
        let etag = store.head_sync("f");
        let base = Base {
            size: old.len() as u64,
            etag,
        };
        let mut v = Version::new(
            store.clone(),
            "f".into(),
            PutOptions::default(),
            Some(base),
            area.open().unwrap(),
            MemoryBudget::new(64 * MIB),
            cfg(),
        );
        v.write(6 * MIB, b"mid").await.unwrap();
        v.truncate(12 * MIB).unwrap();
        v.commit().await.unwrap();
        let mut want = old.clone();
        want[6 * MIB as usize..6 * MIB as usize + 3].copy_from_slice(b"mid");
        want.resize(12 * MIB as usize, 0);
        assert_eq!(&store.snapshot()["f"][..], &want[..]);
        // Shrink then grow: the cut bytes come back as zeros.
        v.truncate(3).unwrap();
        v.truncate(10).unwrap();
        v.commit().await.unwrap();
        assert_eq!(&store.snapshot()["f"][..], &[0, 1, 2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_changed_base_fails_instead_of_mixing() {
        let (store, area, _d) = setup();
        store.insert("f", &[1u8; 100]);
        let base = Base {
            size: 100,
            etag: store.head_sync("f"),
        };
        let mut v = Version::new(
            store.clone(),
            "f".into(),
            PutOptions::default(),
            Some(base),
            area.open().unwrap(),
            MemoryBudget::new(64 * MIB),
            cfg(),
        );
        v.write(10, b"x").await.unwrap();
        store.insert("f", &[2u8; 100]);
        assert!(v.commit().await.is_err());
        assert_eq!(&store.snapshot()["f"][..], &[2u8; 100][..]);
    }

    #[tokio::test]
    async fn a_stream_larger_than_staging_still_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::new(dir.path(), 12 * MIB).unwrap();
        let store = Arc::new(MemStore::new());
        let mut v = Version::new(
            store.clone(),
            "big".into(),
            PutOptions::default(),
            None,
            area.open().unwrap(),
            MemoryBudget::new(64 * MIB),
            cfg(),
        );
        let chunk = vec![7u8; 1 << 20];
        for i in 0..30u64 {
            v.write(i << 20, &chunk).await.unwrap();
        }
        assert!(area.used() <= 12 * MIB);
        v.commit().await.unwrap();
        assert_eq!(store.snapshot()["big"].len(), 30 << 20);
        assert!(store.snapshot()["big"].iter().all(|&b| b == 7));
    }
}
