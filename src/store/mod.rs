//! The object-store layer: the S3 calls the filesystem needs, behind one trait, so the
//! filesystem logic runs unchanged over real S3 (`s3`) or an in-memory map (`mem`).

pub mod bufpool;
pub mod fault;
pub mod mem;
pub mod s3;

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// What a HEAD (or a listing, with `content_type`/`metadata` left empty) says about an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), names without the prefix, lower-case.
    pub metadata: HashMap<String, String>,
}

/// One page of ListObjectsV2.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes, each ending in the delimiter.
    pub prefixes: Vec<String>,
    pub next_token: Option<String>,
}

/// Headers sent with every object that bucketfs writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: String,
    pub metadata: HashMap<String, String>,
}

/// An incomplete multipart upload (ListMultipartUploads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// A part of a multipart upload that the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("object changed since it was opened (precondition failed)")]
    PreconditionFailed,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("request rejected: {0}")]
    Rejected(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// The errno a POSIX caller sees for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound => libc::ENOENT,
            StoreError::NoSuchBucket => libc::EIO,
            StoreError::PreconditionFailed => libc::ESTALE,
            StoreError::AccessDenied(_) => libc::EACCES,
            StoreError::Timeout(_) => libc::ETIMEDOUT,
            StoreError::Unreachable(_) | StoreError::Rejected(_) | StoreError::Other(_) => {
                libc::EIO
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The S3 operations bucketfs uses. Keys are full object keys (prefix included).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo>;
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage>;
    /// Bytes `range` of `key`; `if_match` pins the version that was opened.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes>;
    /// Single PUT; returns the new ETag.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>>;
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String>;
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String>;
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src_key: &str,
        range: Range<u64>,
        src_if_match: Option<&str>,
    ) -> StoreResult<String>;
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<Option<String>>;
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
    /// Server-side copy of a whole object (≤ 5 GiB). `opts` = None keeps the source's
    /// headers (COPY directive); Some replaces them.
    async fn copy(&self, src: &str, dst: &str, opts: Option<&PutOptions>) -> StoreResult<()>;
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Every incomplete multipart upload whose key starts with `prefix` (all pages), so a
    /// job killed mid-upload can abort what it left behind.
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<MultipartInfo>>;
}
