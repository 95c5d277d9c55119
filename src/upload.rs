//! Streaming uploads: bytes written in order become one PUT (small files) or a multipart
//! upload whose parts go out in parallel while the writer goes on. Nothing is visible in the
//! bucket until `finish` completes; any failure aborts the multipart upload.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::task::JoinSet;

use crate::budget::{MemoryBudget, Reservation};
use crate::store::{CompletedPart, ObjectStore, PutOptions, StoreError, StoreResult};

pub const MIB: u64 = 1024 * 1024;
/// S3's smallest non-last part.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
pub const MAX_PARTS: i32 = 10_000;

/// Size of part `number` (1-based): the base size doubles every 1000 parts, and the last
/// thousand parts are as large as S3 allows, so 10 000 parts hold more than 5 TiB.
pub fn part_size(base: u64, number: i32) -> u64 {
    let base = base.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    let tier = ((number.max(1) - 1) / 1000) as u32;
    if tier >= 9 {
        MAX_PART_SIZE
    } else {
        (base << tier).min(MAX_PART_SIZE)
    }
}

/// Largest object the part schedule can hold.
pub fn max_object_size(base: u64) -> u64 {
    (1..=MAX_PARTS).map(|n| part_size(base, n)).sum()
}

pub struct UploadConfig {
    pub part_size: u64,
    /// Parts of one upload in flight at once.
    pub max_inflight: usize,
}

pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    key: String,
    opts: PutOptions,
    budget: MemoryBudget,
    base_part: u64,
    max_inflight: usize,
    buf: BytesMut,
    reserved: u64,
    reservations: Vec<Reservation>,
    upload_id: Option<String>,
    next_part: i32,
    inflight: JoinSet<StoreResult<CompletedPart>>,
    parts: Vec<CompletedPart>,
    len: u64,
    failed: Option<StoreError>,
}

impl Uploader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        opts: PutOptions,
        budget: MemoryBudget,
        cfg: &UploadConfig,
    ) -> Self {
        Uploader {
            store,
            key,
            opts,
            budget,
            base_part: cfg.part_size,
            max_inflight: cfg.max_inflight.max(1),
            buf: BytesMut::new(),
            reserved: 0,
            reservations: Vec::new(),
            upload_id: None,
            next_part: 1,
            inflight: JoinSet::new(),
            parts: Vec::new(),
            len: 0,
            failed: None,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still in memory (not yet handed to a part upload); only these can be cut back.
    pub fn buffered(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Headers can change until the multipart upload is created.
    pub fn set_options(&mut self, opts: PutOptions) -> bool {
        if self.upload_id.is_some() {
            return false;
        }
        self.opts = opts;
        true
    }

    fn check(&self) -> StoreResult<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Cuts the file back to `new_len`, if those bytes are still buffered.
    pub fn truncate(&mut self, new_len: u64) -> bool {
        let flushed = self.len - self.buf.len() as u64;
        if new_len < flushed || new_len > self.len {
            return false;
        }
        self.buf.truncate((new_len - flushed) as usize);
        self.len = new_len;
        true
    }

    /// Makes room in the budget for the buffer to hold `want` bytes, growing in steps so a
    /// small file does not hold a whole part's worth of budget.
    async fn grow_reservation(&mut self, want: u64) {
        while self.reserved < want {
            let step = self.reserved.max(MIB); // doubling
            self.reservations.push(self.budget.reserve(step).await);
            self.reserved += step;
        }
    }

    pub async fn write(&mut self, data: &[u8]) -> StoreResult<()> {
        self.append(data.len() as u64, Some(data)).await
    }

    pub async fn write_zeros(&mut self, n: u64) -> StoreResult<()> {
        self.append(n, None).await
    }

    async fn append(&mut self, mut n: u64, mut data: Option<&[u8]>) -> StoreResult<()> {
        self.check()?;
        while n > 0 {
            let cap = part_size(self.base_part, self.next_part);
            let room = cap - self.buf.len() as u64;
            let take = room.min(n);
            self.grow_reservation(self.buf.len() as u64 + take).await;
            match data {
                Some(d) => {
                    self.buf.extend_from_slice(&d[..take as usize]);
                    data = Some(&d[take as usize..]);
                }
                None => self.buf.resize(self.buf.len() + take as usize, 0),
            }
            n -= take;
            self.len += take;
            if self.buf.len() as u64 >= cap {
                if let Err(e) = self.send_part().await {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn collect_one(&mut self) -> StoreResult<()> {
        if let Some(r) = self.inflight.join_next().await {
            let part = r.map_err(|e| StoreError::Other(format!("upload task failed: {e}")))??;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn send_part(&mut self) -> StoreResult<()> {
        if self.next_part > MAX_PARTS {
            return Err(StoreError::Rejected(
                "file exceeds S3's 10 000 parts".into(),
            ));
        }
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.store.create_multipart(&self.key, &self.opts).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.inflight.len() >= self.max_inflight {
            self.collect_one().await?;
        }
        let body = std::mem::take(&mut self.buf).freeze();
        let reservations = std::mem::take(&mut self.reservations);
        self.reserved = 0;
        let number = self.next_part;
        self.next_part += 1;
        let store = self.store.clone();
        let key = self.key.clone();
        self.inflight.spawn(async move {
            let etag = store.upload_part(&key, &id, number, body).await?;
            drop(reservations); // the part's memory returns to the budget once it is sent
            Ok(CompletedPart { number, etag })
        });
        Ok(())
    }

    /// Makes the object visible: one PUT, or the last part and CompleteMultipartUpload.
    /// Returns the new ETag.
    pub async fn finish(mut self) -> StoreResult<Option<String>> {
        let r = self.finish_inner().await;
        if r.is_err() {
            self.abort_upload().await;
        }
        r
    }

    async fn finish_inner(&mut self) -> StoreResult<Option<String>> {
        self.check()?;
        let Some(id) = self.upload_id.clone() else {
            let body = std::mem::take(&mut self.buf).freeze();
            return self.store.put(&self.key, body, &self.opts).await;
        };
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        while !self.inflight.is_empty() {
            self.collect_one().await?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.number);
        let etag = self.store.complete_multipart(&self.key, &id, parts).await?;
        self.upload_id = None;
        Ok(etag)
    }

    async fn abort_upload(&mut self) {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            if let Err(e) = self.store.abort_multipart(&self.key, &id).await {
                tracing::warn!(key = %self.key, error = %e, "could not abort multipart upload");
            }
        }
    }

    /// Drops everything written; the bucket is left as it was.
    pub async fn abort(mut self) {
        self.abort_upload().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        }
        assert!((1..=MAX_PARTS).all(|n| part_size(5 * MIB, n) <= MAX_PART_SIZE));
    }

    #[tokio::test]
    async fn small_is_one_put_large_is_multipart() {
        let store = Arc::new(MemStore::new());
        let cfg = UploadConfig {
            part_size: 5 * MIB,
            max_inflight: 2,
        };
        let budget = MemoryBudget::new(64 * MIB);
        let mut u = Uploader::new(
            store.clone(),
            "s".into(),
            PutOptions::default(),
            budget.clone(),
            &cfg,
        );
        u.write(b"hello").await.unwrap();
        u.finish().await.unwrap();
        assert_eq!(&store.snapshot()["s"][..], b"hello");

        let data: Vec<u8> = (0..(12 * MIB + 7)).map(|i| (i % 251) as u8).collect();
        let mut u = Uploader::new(
            store.clone(),
            "l".into(),
            PutOptions::default(),
            budget.clone(),
            &cfg,
        );
        for c in data.chunks(128 * 1024) {
            u.write(c).await.unwrap();
        }
        u.finish().await.unwrap();
        assert_eq!(&store.snapshot()["l"][..], &data[..]);
        assert_eq!(store.open_uploads(), 0);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[tokio::test]
    async fn abort_leaves_nothing() {
        let store = Arc::new(MemStore::new());
        let cfg = UploadConfig {
            part_size: 5 * MIB,
            max_inflight: 2,
        };
        let mut u = Uploader::new(
            store.clone(),
            "x".into(),
            PutOptions::default(),
            MemoryBudget::new(64 * MIB),
            &cfg,
        );
        u.write_zeros(11 * MIB).await.unwrap();
        u.abort().await;
        assert!(store.snapshot().is_empty());
        assert_eq!(store.open_uploads(), 0);
    }
}
