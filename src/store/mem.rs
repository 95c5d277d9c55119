//! An in-memory [`ObjectStore`] with S3's listing, multipart and precondition rules, for
//! fast unit and property tests of the filesystem logic.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::{
    CompletedPart, ListPage, MultipartInfo, ObjectInfo, ObjectStore, PutOptions, StoreError,
    StoreResult,
};

#[derive(Clone)]
struct Obj {
    data: Bytes,
    etag: String,
    modified: SystemTime,
    opts: PutOptions,
}

struct Upload {
    key: String,
    initiated: SystemTime,
    opts: PutOptions,
    parts: HashMap<i32, (Bytes, String)>,
}

#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Obj>>,
    uploads: Mutex<HashMap<String, Upload>>,
    counter: AtomicU64,
    /// Page size of `list` (S3: 1000); small values exercise pagination.
    pub page_size: usize,
    /// Smallest allowed non-last part (AWS: 5 MiB).
    pub min_part_size: usize,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore {
            page_size: 1000,
            min_part_size: 5 * 1024 * 1024,
            ..Default::default()
        }
    }

    fn next_tag(&self) -> String {
        format!(
            "\"{:032x}\"",
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Everything in the bucket: key → bytes (test oracle).
    pub fn snapshot(&self) -> BTreeMap<String, Bytes> {
        self.objects
            .lock()
            .iter()
            .map(|(k, o)| (k.clone(), o.data.clone()))
            .collect()
    }

    pub fn content_type(&self, key: &str) -> Option<String> {
        self.objects
            .lock()
            .get(key)
            .map(|o| o.opts.content_type.clone())
    }

    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().len()
    }

    /// Write an object directly, as another S3 client would.
    pub fn insert(&self, key: &str, data: &[u8]) {
        let etag = self.next_tag();
        self.objects.lock().insert(
            key.to_string(),
            Obj {
                data: Bytes::copy_from_slice(data),
                etag,
                modified: SystemTime::now(),
                opts: PutOptions::default(),
            },
        );
    }

    fn info(key: &str, o: &Obj) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: o.data.len() as u64,
            etag: Some(o.etag.clone()),
            last_modified: Some(o.modified),
            content_type: Some(o.opts.content_type.clone()),
            metadata: o.opts.metadata.clone(),
        }
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        let objs = self.objects.lock();
        objs.get(key)
            .map(|o| Self::info(key, o))
            .ok_or(StoreError::NotFound)
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let limit = max_keys
            .map(|m| m.max(1) as usize)
            .unwrap_or(self.page_size)
            .min(self.page_size.max(1));
        let objs = self.objects.lock();
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last: Option<String> = None;
        let start = token.unwrap_or_default();
        for (k, o) in objs.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if !start.is_empty() && k.as_str() <= start.as_str() {
                continue;
            }
            let rest = &k[prefix.len()..];
            let entry = match delimiter.and_then(|d| rest.find(d).map(|i| (i, d))) {
                Some((i, d)) => {
                    let cp = format!("{}{}", &k[..prefix.len() + i], d);
                    if page.prefixes.last() == Some(&cp) {
                        continue;
                    }
                    Err(cp)
                }
                None => Ok(Self::info(k, o)),
            };
            if count == limit {
                page.next_token = last;
                return Ok(page);
            }
            match entry {
                Ok(mut info) => {
                    info.content_type = None;
                    info.metadata.clear();
                    last = Some(k.clone());
                    page.objects.push(info);
                }
                Err(cp) => {
                    // Resume after every key under this common prefix.
                    last = Some(format!("{cp}\u{10FFFF}"));
                    page.prefixes.push(cp);
                }
            }
            count += 1;
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let objs = self.objects.lock();
        let o = objs.get(key).ok_or(StoreError::NotFound)?;
        if let Some(tag) = if_match {
            if tag != o.etag {
                return Err(StoreError::PreconditionFailed);
            }
        }
        let len = o.data.len() as u64;
        if range.start >= len && !range.is_empty() {
            return Err(StoreError::Rejected("416 InvalidRange".into()));
        }
        let end = range.end.min(len);
        Ok(o.data.slice(range.start as usize..end as usize))
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        let etag = self.next_tag();
        self.objects.lock().insert(
            key.to_string(),
            Obj {
                data: body,
                etag: etag.clone(),
                modified: SystemTime::now(),
                opts: opts.clone(),
            },
        );
        Ok(Some(etag))
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let id = format!("upload-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        self.uploads.lock().insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                initiated: SystemTime::now(),
                opts: opts.clone(),
                parts: HashMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let etag = self.next_tag();
        let mut ups = self.uploads.lock();
        let up = ups
            .get_mut(upload_id)
            .ok_or_else(|| StoreError::Rejected("NoSuchUpload".into()))?;
        up.parts.insert(number, (body, etag.clone()));
        Ok(etag)
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        src_key: &str,
        range: Range<u64>,
        src_if_match: Option<&str>,
    ) -> StoreResult<String> {
        let data = self.get_range(src_key, range, src_if_match).await?;
        self.upload_part(key, upload_id, number, data).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<Option<String>> {
        let up = self
            .uploads
            .lock()
            .remove(upload_id)
            .ok_or_else(|| StoreError::Rejected("NoSuchUpload".into()))?;
        if up.key != key {
            return Err(StoreError::Rejected("upload is for another key".into()));
        }
        let mut data = BytesMut::new();
        let n = parts.len();
        let mut prev = 0;
        for (i, p) in parts.iter().enumerate() {
            let (body, etag) = up
                .parts
                .get(&p.number)
                .ok_or_else(|| StoreError::Rejected("InvalidPart".into()))?;
            if *etag != p.etag || p.number <= prev {
                return Err(StoreError::Rejected("InvalidPart".into()));
            }
            if i + 1 < n && body.len() < self.min_part_size {
                return Err(StoreError::Rejected("EntityTooSmall".into()));
            }
            prev = p.number;
            data.extend_from_slice(body);
        }
        self.put(key, data.freeze(), &up.opts).await
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        self.uploads.lock().remove(upload_id);
        Ok(())
    }

    async fn copy(&self, src: &str, dst: &str, opts: Option<&PutOptions>) -> StoreResult<()> {
        let o = self
            .objects
            .lock()
            .get(src)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let opts = opts.cloned().unwrap_or(o.opts);
        self.put(dst, o.data, &opts).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.objects.lock().remove(key);
        Ok(())
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<MultipartInfo>> {
        let mut v: Vec<MultipartInfo> = self
            .uploads
            .lock()
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| MultipartInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect();
        v.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(v)
    }
}

impl MemStore {
    /// The current ETag of `key` (tests).
    pub fn head_sync(&self, key: &str) -> Option<String> {
        self.objects.lock().get(key).map(|o| o.etag.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn list_pages_with_delimiter_like_s3() {
        let mut s = MemStore::new();
        s.page_size = 2;
        for k in ["a/1", "a/2", "b", "c/x/y", "c/z", "d"] {
            s.insert(k, b"x");
        }
        let mut names = vec![];
        let mut token = None;
        loop {
            let p = s.list("", Some("/"), token, None).await.unwrap();
            names.extend(p.prefixes.clone());
            names.extend(p.objects.iter().map(|o| o.key.clone()));
            token = p.next_token;
            if token.is_none() {
                break;
            }
        }
        names.sort();
        assert_eq!(names, vec!["a/", "b", "c/", "d"]);
    }
}
