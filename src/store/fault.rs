//! A fault-injecting [`ObjectStore`] wrapper: errors, delays and 503-style failures on
//! chosen operations, so every error path of the filesystem runs without a network trick.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    CompletedPart, ListPage, MultipartInfo, ObjectInfo, ObjectStore, PutOptions, StoreError,
    StoreResult,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Head,
    List,
    Get,
    Put,
    CreateMultipart,
    UploadPart,
    UploadPartCopy,
    CompleteMultipart,
    AbortMultipart,
    Copy,
    Delete,
    ListMultipart,
}

#[derive(Clone, Debug)]
struct Rule {
    op: Option<Op>,
    error: Option<StoreError>,
    delay: Duration,
    /// How many more calls it hits; None = all.
    remaining: Option<usize>,
}

pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<Vec<Op>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultStore {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every call of `op` (None: of every operation) fails with `error`.
    pub fn fail(&self, op: Option<Op>, error: StoreError) {
        self.rules.lock().push(Rule {
            op,
            error: Some(error),
            delay: Duration::ZERO,
            remaining: None,
        });
    }

    /// The next `n` calls of `op` fail with `error` (a transient fault).
    pub fn fail_times(&self, op: Option<Op>, error: StoreError, n: usize) {
        self.rules.lock().push(Rule {
            op,
            error: Some(error),
            delay: Duration::ZERO,
            remaining: Some(n),
        });
    }

    /// Calls of `op` wait `d` first (a slow or hanging server).
    pub fn delay(&self, op: Option<Op>, d: Duration) {
        self.rules.lock().push(Rule {
            op,
            error: None,
            delay: d,
            remaining: None,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Operations called so far, in order.
    pub fn calls(&self) -> Vec<Op> {
        self.calls.lock().clone()
    }

    /// An S3 "503 SlowDown" as the store reports it after its retries.
    pub fn slow_down() -> StoreError {
        StoreError::Other("503 SlowDown Please reduce your request rate.".into())
    }

    async fn enter(&self, op: Op) -> StoreResult<()> {
        self.calls.lock().push(op);
        let mut delay = Duration::ZERO;
        let mut err = None;
        {
            let mut rules = self.rules.lock();
            for r in rules.iter_mut() {
                if r.op.is_some_and(|o| o != op) || r.remaining == Some(0) {
                    continue;
                }
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                delay = delay.max(r.delay);
                if err.is_none() {
                    err = r.error.clone();
                }
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.enter(Op::Head).await?;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.enter(Op::List).await?;
        self.inner.list(prefix, delimiter, token, max_keys).await
    }
    async fn get_range(&self, key: &str, r: Range<u64>, m: Option<&str>) -> StoreResult<Bytes> {
        self.enter(Op::Get).await?;
        self.inner.get_range(key, r, m).await
    }
    async fn put(&self, key: &str, body: Bytes, o: &PutOptions) -> StoreResult<Option<String>> {
        self.enter(Op::Put).await?;
        self.inner.put(key, body, o).await
    }
    async fn create_multipart(&self, key: &str, o: &PutOptions) -> StoreResult<String> {
        self.enter(Op::CreateMultipart).await?;
        self.inner.create_multipart(key, o).await
    }
    async fn upload_part(&self, key: &str, id: &str, n: i32, body: Bytes) -> StoreResult<String> {
        self.enter(Op::UploadPart).await?;
        self.inner.upload_part(key, id, n, body).await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        n: i32,
        src: &str,
        r: Range<u64>,
        m: Option<&str>,
    ) -> StoreResult<String> {
        self.enter(Op::UploadPartCopy).await?;
        self.inner.upload_part_copy(key, id, n, src, r, m).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<Option<String>> {
        self.enter(Op::CompleteMultipart).await?;
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> StoreResult<()> {
        self.enter(Op::AbortMultipart).await?;
        self.inner.abort_multipart(key, id).await
    }
    async fn copy(&self, s: &str, d: &str, o: Option<&PutOptions>) -> StoreResult<()> {
        self.enter(Op::Copy).await?;
        self.inner.copy(s, d, o).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.enter(Op::Delete).await?;
        self.inner.delete(key).await
    }
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<MultipartInfo>> {
        self.enter(Op::ListMultipart).await?;
        self.inner.list_multipart_uploads(prefix).await
    }
}
