//! The aws-sdk-s3 implementation of [`ObjectStore`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, MetadataDirective, ObjectCannedAcl};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{
    CompletedPart, ListPage, MultipartInfo, ObjectInfo, ObjectStore, PutOptions, StoreError,
    StoreResult,
};

/// Static keys from authentik's configuration (`Debug` never shows the secret or the token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field(
                "access_key",
                &crate::authentik::redact_key_id(&self.access_key),
            )
            .field("secret_key", &"(redacted)")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "(redacted)"),
            )
            .finish()
    }
}

/// Where and how to reach the bucket. Credentials come from `credentials` (authentik's
/// ACCESS_KEY/SECRET_KEY) or else the AWS credential chain (environment, profile, web
/// identity, ECS, IMDS, SSO).
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    /// Attempts per request (first try included) before an error reaches the caller.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Bound on one attempt of one request, so a dead endpoint cannot hang a writer.
    pub attempt_timeout: Duration,
    /// Static keys; None: the AWS credential chain.
    pub credentials: Option<StaticCredentials>,
    /// Sign with legacy Signature Version 2 (authentik's SIGNATURE_VERSION=s3) instead of SigV4.
    pub signature_v2: bool,
    /// Canned ACL sent with every object write (PutObject, CreateMultipartUpload, CopyObject);
    /// None sends no ACL header.
    pub object_acl: Option<String>,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    acl: Option<ObjectCannedAcl>,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    region: String,
    profile: Option<String>,
    /// Off during the start-up check, whose failure is reported as one line instead.
    log_failures: AtomicBool,
}

impl S3Store {
    pub async fn connect(s: &S3Settings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &s.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(p) = &s.profile {
            // A named profile is the only source (as with the AWS CLI's --profile): the
            // default chain would let environment keys win without a word.
            loader = loader.profile_name(p).credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(p)
                    .build(),
            );
        } else if let Some(c) = &s.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                c.access_key.clone(),
                c.secret_key.clone(),
                c.session_token.clone(),
                None,
                "bucketfs-config",
            ));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.force_path_style)
            // Many S3-compatible servers reject the SDK's default CRC32 trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(s.max_attempts.max(1))
                    .with_max_backoff(Duration::from_secs(4)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(s.connect_timeout)
                    .operation_attempt_timeout(s.attempt_timeout)
                    .build(),
            );
        if shared.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e);
        }
        let credentials = shared.credentials_provider();
        if s.signature_v2 {
            let slot = crate::sigv2::CredentialSlot::default();
            if let Some(inner) = credentials.clone() {
                b = b.credentials_provider(crate::sigv2::CapturingCredentials {
                    inner,
                    slot: slot.clone(),
                });
            }
            b = b.interceptor(crate::sigv2::SigV2Interceptor {
                bucket: s.bucket.clone(),
                slot,
            });
        }
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: s.bucket.clone(),
            acl: s.object_acl.as_deref().map(ObjectCannedAcl::from),
            credentials,
            profile: s.profile.clone(),
            region,
            log_failures: AtomicBool::new(true),
        }
    }

    /// The SDK client, for the bucket commands (setup, check, fix-content-type).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The canned ACL sent with every object write.
    pub fn acl(&self) -> Option<ObjectCannedAcl> {
        self.acl.clone()
    }

    /// The signing region in use.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The credentials the client signs with (for presigned URLs); None if there are none.
    pub async fn credentials(&self) -> Option<aws_credential_types::Credentials> {
        use aws_credential_types::provider::ProvideCredentials;
        self.credentials.as_ref()?.provide_credentials().await.ok()
    }

    /// Why the named profile (`--profile`, SESSION_PROFILE) yields no credentials, if it
    /// does not: a missing or broken profile is a start-up error, never a silent fallback.
    pub async fn profile_problem(&self) -> Option<String> {
        use aws_credential_types::provider::ProvideCredentials;
        let name = self.profile.as_ref()?;
        let Some(provider) = self.credentials.as_ref() else {
            return Some(format!("the AWS profile `{name}` gives no credentials"));
        };
        match provider.provide_credentials().await {
            Ok(_) => None,
            // The provider's error names files and profiles, never key material.
            Err(e) => Some(format!(
                "the AWS profile `{name}` gives no credentials ({}): check that it is defined in ~/.aws/config or ~/.aws/credentials (or AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)",
                error_chain(&e)
            )),
        }
    }

    /// Whether each failed request is logged (operation, key, error; never credentials).
    pub fn set_log_failures(&self, on: bool) {
        self.log_failures.store(on, Ordering::Relaxed);
    }

    fn fail<E>(
        &self,
        op: &str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = map_err(e);
        crate::metrics::s3_failed(op, &err);
        if !matches!(err, StoreError::NotFound) && self.log_failures.load(Ordering::Relaxed) {
            tracing::warn!(op, key, error = %err, "S3 request failed");
        }
        err
    }

    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, encode_key(key))
    }
}

/// Percent-encode a key for `x-amz-copy-source` (keeps `/`, as AWS expects).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An error and its sources, each once, on one line (no Debug dumps).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let t = err
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// What `AccessDenied` carries when no credentials could be found at all.
pub const NO_CREDENTIALS: &str = "no AWS credentials found";

/// The SDK reports a credential chain that found nothing as a request failure.
fn is_credentials_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("no credentials")
        || t.contains("credentials provider")
        || t.contains("failed to load credentials")
        || t.contains("identity")
}

/// The SDK's error as a [`StoreError`]: what happened, for the caller's errno.
fn map_err<E>(e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let err = match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => StoreError::NoSuchBucket,
                (404, _) | (_, "NoSuchKey") | (_, "NotFound") => StoreError::NotFound,
                (412, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed,
                (403, _)
                | (_, "AccessDenied")
                | (_, "SignatureDoesNotMatch")
                | (_, "InvalidAccessKeyId") => StoreError::AccessDenied(if code.is_empty() {
                    "403".to_string()
                } else {
                    code
                }),
                (400..=499, _) => StoreError::Rejected(format!(
                    "{status} {code} {}",
                    se.err().message().unwrap_or("")
                )),
                _ => StoreError::Other(format!(
                    "{status} {code} {}",
                    se.err().message().unwrap_or("")
                )),
            }
        }
        SdkError::TimeoutError(_) => StoreError::Timeout(DisplayErrorContext(&e).to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            StoreError::Timeout(DisplayErrorContext(&e).to_string())
        }
        _ if is_credentials_error(&DisplayErrorContext(&e).to_string()) => {
            StoreError::AccessDenied(NO_CREDENTIALS.into())
        }
        SdkError::DispatchFailure(_) => {
            StoreError::Unreachable(DisplayErrorContext(&e).to_string())
        }
        _ => StoreError::Other(DisplayErrorContext(&e).to_string()),
    };
    err
}

fn to_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        let o = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("HeadObject", key, e))?;
        crate::metrics::s3_ok("HeadObject");
        Ok(ObjectInfo {
            key: key.to_string(),
            size: o.content_length().unwrap_or(0).max(0) as u64,
            etag: o.e_tag().map(str::to_string),
            last_modified: to_time(o.last_modified()),
            content_type: o.content_type().map(str::to_string),
            metadata: o
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let o = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .set_max_keys(max_keys)
            .send()
            .await
            .map_err(|e| self.fail("ListObjectsV2", prefix, e))?;
        crate::metrics::s3_ok("ListObjectsV2");
        let objects = o
            .contents()
            .iter()
            .filter_map(|c| {
                Some(ObjectInfo {
                    key: c.key()?.to_string(),
                    size: c.size().unwrap_or(0).max(0) as u64,
                    etag: c.e_tag().map(str::to_string),
                    last_modified: to_time(c.last_modified()),
                    content_type: None,
                    metadata: HashMap::new(),
                })
            })
            .collect();
        let prefixes = o
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let next_token = if o.is_truncated().unwrap_or(false) {
            o.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next_token,
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.fail("GetObject", key, e))?;
        // Copied once into a buffer of the final size as the body arrives, each network
        // chunk freed at once: collecting all chunks first and then joining them held the
        // range twice and left the allocator's arenas fragmented (RSS far above the budget).
        // The size asked is trusted up to 64 MiB; a larger range grows as it arrives.
        let want = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let mut out = super::bufpool::take(want.min(64 << 20));
        let mut body = o.body;
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(op = "GetObject", key, error = %e, "reading body failed");
                    return Err(StoreError::Other(format!("reading body: {e}")));
                }
            }
        }
        crate::metrics::s3_ok("GetObject");
        crate::metrics::s3_received(out.len());
        Ok(super::bufpool::freeze(out))
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        let _in_flight = crate::metrics::put_started();
        let len = body.len() as i64;
        let o = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len)
            .content_type(&opts.content_type)
            .set_metadata(meta(opts))
            .set_acl(self.acl())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail("PutObject", key, e))?;
        crate::metrics::s3_ok("PutObject");
        crate::metrics::s3_sent(len as usize);
        Ok(o.e_tag().map(str::to_string))
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let o = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(&opts.content_type)
            .set_metadata(meta(opts))
            .set_acl(self.acl())
            .send()
            .await
            .map_err(|e| self.fail("CreateMultipartUpload", key, e))?;
        crate::metrics::s3_ok("CreateMultipartUpload");
        crate::metrics::multipart_started();
        o.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let len = body.len() as i64;
        let o = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail("UploadPart", key, e))?;
        crate::metrics::s3_ok("UploadPart");
        crate::metrics::s3_sent(len as usize);
        o.e_tag()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("UploadPart returned no ETag".into()))
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
        let o = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(self.copy_source(src_key))
            .set_copy_source_if_match(src_if_match.map(str::to_string))
            .copy_source_range(format!(
                "bytes={}-{}",
                range.start,
                range.end.saturating_sub(1)
            ))
            .send()
            .await
            .map_err(|e| self.fail("UploadPartCopy", key, e))?;
        crate::metrics::s3_ok("UploadPartCopy");
        o.copy_part_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("UploadPartCopy returned no ETag".into()))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StoreResult<Option<String>> {
        let parts = parts
            .into_iter()
            .map(|p| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.etag)
                    .build()
            })
            .collect();
        let o = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail("CompleteMultipartUpload", key, e))?;
        crate::metrics::s3_ok("CompleteMultipartUpload");
        crate::metrics::multipart_ended();
        Ok(o.e_tag().map(str::to_string))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        crate::metrics::multipart_ended();
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.fail("AbortMultipartUpload", key, e))?;
        crate::metrics::s3_ok("AbortMultipartUpload");
        Ok(())
    }

    async fn copy(&self, src: &str, dst: &str, opts: Option<&PutOptions>) -> StoreResult<()> {
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst)
            .copy_source(self.copy_source(src))
            .set_acl(self.acl());
        if let Some(o) = opts {
            req = req
                .metadata_directive(MetadataDirective::Replace)
                .content_type(&o.content_type)
                .set_metadata(meta(o));
        }
        req.send()
            .await
            .map_err(|e| self.fail("CopyObject", dst, e))?;
        crate::metrics::s3_ok("CopyObject");
        Ok(())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("DeleteObject", key, e))?;
        crate::metrics::s3_ok("DeleteObject");
        Ok(())
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<MultipartInfo>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let o = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.fail("ListMultipartUploads", prefix, e))?;
            crate::metrics::s3_ok("ListMultipartUploads");
            out.extend(o.uploads().iter().filter_map(|u| {
                Some(MultipartInfo {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated: to_time(u.initiated()),
                })
            }));
            // Some servers omit IsTruncated or repeat markers: stop unless they move on.
            let next = (
                o.next_key_marker().map(str::to_string),
                o.next_upload_id_marker().map(str::to_string),
            );
            if !o.is_truncated().unwrap_or(false)
                || next.0.is_none()
                || (next.0.as_deref() == o.key_marker()
                    && next.1.as_deref() == o.upload_id_marker())
            {
                return Ok(out);
            }
            (key_marker, id_marker) = next;
        }
    }
}

fn meta(o: &PutOptions) -> Option<HashMap<String, String>> {
    if o.metadata.is_empty() {
        None
    } else {
        Some(o.metadata.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::encode_key;

    #[test]
    fn copy_source_encoding_keeps_slashes_and_escapes_the_rest() {
        assert_eq!(encode_key("a b/c+d%.txt"), "a%20b/c%2Bd%25.txt");
        assert_eq!(encode_key("café"), "caf%C3%A9");
        assert_eq!(encode_key("q?x#y&z=1"), "q%3Fx%23y%26z%3D1");
    }
}
