//! Legacy AWS Signature Version 2 (authentik's `SIGNATURE_VERSION=s3`), which aws-sdk-s3
//! does not implement.
//!
//! The pure part ([`string_to_sign`], [`canonical_resource`], [`signature`], [`presign_query`])
//! follows the S3 "REST authentication" rules and is tested against the AWS documentation's
//! example signatures. [`SigV2Interceptor`] re-signs every request the SDK sends: it runs after
//! the SDK's own SigV4 signing, drops the SigV4 headers and writes `Date` and
//! `Authorization: AWS <key>:<signature>` instead. [`CapturingCredentials`] hands it the
//! credentials the SDK just resolved (from the same chain, cache and refresh as SigV4 would).

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use hmac::{KeyInit, Mac};
use parking_lot::RwLock;

/// Query parameters that are part of the signed resource (all others, like `list-type` or
/// `prefix`, are not). Kept sorted: the resource lists them in this order.
pub const SUBRESOURCES: &[&str] = &[
    "acl",
    "cors",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `CanonicalizedResource`: `/bucket` for virtual-hosted requests (`bucket` given), then the
/// path exactly as sent (still percent-encoded), then the sub-resources of `query`
/// (`?uploadId=...&partNumber=...`, byte order, values decoded).
pub fn canonical_resource(bucket: Option<&str>, encoded_path: &str, query: &str) -> String {
    let mut out = String::new();
    if let Some(b) = bucket {
        out.push('/');
        out.push_str(b);
    }
    out.push_str(if encoded_path.is_empty() {
        "/"
    } else {
        encoded_path
    });
    let mut subs: Vec<(String, Option<String>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (percent_decode(k), Some(percent_decode(v))),
                None => (percent_decode(p), None),
            };
            SUBRESOURCES.contains(&k.as_str()).then_some((k, v))
        })
        .collect();
    subs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (i, (k, v)) in subs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

/// `CanonicalizedAmzHeaders`: every `x-amz-*` header, name lower-cased, sorted, repeated
/// headers joined with `,`, each line `name:value\n`.
pub fn canonical_amz_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<(String, String)> = Vec::new();
    for (k, val) in headers {
        let k = k.to_ascii_lowercase();
        if !k.starts_with("x-amz-") {
            continue;
        }
        let val = val.trim().to_string();
        match v.iter_mut().find(|(n, _)| *n == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&val);
            }
            None => v.push((k, val)),
        }
    }
    v.sort();
    v.iter().map(|(k, val)| format!("{k}:{val}\n")).collect()
}

/// The V2 `StringToSign`. `date` is the `Date` header (empty when `x-amz-date` is among the
/// amz headers), or the `Expires` epoch seconds of a presigned URL.
pub fn string_to_sign(
    method: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    amz_headers: &str,
    resource: &str,
) -> String {
    format!("{method}\n{content_md5}\n{content_type}\n{date}\n{amz_headers}{resource}")
}

/// Base64 of HMAC-SHA1(secret, string_to_sign).
pub fn signature(secret: &str, string_to_sign: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(string_to_sign.as_bytes());
    aws_smithy_types::base64::encode(mac.finalize().into_bytes())
}

/// The query string of a V2 presigned GET (`AWSAccessKeyId`, `Expires`, `Signature`, and
/// `x-amz-security-token` for temporary credentials), percent-encoded.
pub fn presign_query(
    access_key: &str,
    secret: &str,
    session_token: Option<&str>,
    resource: &str,
    expires_epoch: u64,
) -> String {
    let amz = match session_token {
        Some(t) => canonical_amz_headers([("x-amz-security-token", t)]),
        None => String::new(),
    };
    let sts = string_to_sign("GET", "", "", &expires_epoch.to_string(), &amz, resource);
    let sig = signature(secret, &sts);
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, QUERY_VALUE)
            .to_string()
            .replace("%7E", "~")
    };
    let mut q = format!(
        "AWSAccessKeyId={}&Expires={expires_epoch}&Signature={}",
        enc(access_key),
        enc(&sig)
    );
    if let Some(t) = session_token {
        q.push_str(&format!("&x-amz-security-token={}", enc(t)));
    }
    q
}

/// Everything but RFC 3986 unreserved characters is encoded in query values.
pub const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `Date` header value, RFC 1123 (`Tue, 27 Mar 2007 19:36:42 GMT`).
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The bucket to put in front of the path, when the request is virtual-hosted (the host
/// starts with `<bucket>.`); None for path-style requests.
pub fn virtual_bucket<'a>(host: &str, bucket: &'a str) -> Option<&'a str> {
    let prefix_len = bucket.len() + 1;
    (host.len() > prefix_len
        && host.as_bytes()[bucket.len()] == b'.'
        && host[..bucket.len()].eq_ignore_ascii_case(bucket))
    .then_some(bucket)
}

// ------------------------------------------------------------------------------------------
// SDK glue

/// The credentials most recently resolved by the SDK for this client.
pub type CredentialSlot = Arc<RwLock<Option<Credentials>>>;

/// A credentials provider that passes the inner one's answers through and remembers the last,
/// for [`SigV2Interceptor`] (the SDK's identity cache decides when the inner one is asked).
#[derive(Debug)]
pub struct CapturingCredentials {
    pub inner: SharedCredentialsProvider,
    pub slot: CredentialSlot,
}

impl ProvideCredentials for CapturingCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let c = self.inner.provide_credentials().await?;
            *self.slot.write() = Some(c.clone());
            Ok(c)
        })
    }
}

/// Replaces the SDK's SigV4 signature with a V2 one on every attempt of every request.
#[derive(Debug)]
pub struct SigV2Interceptor {
    pub bucket: String,
    pub slot: CredentialSlot,
}

#[derive(Debug, thiserror::Error)]
pub enum SigV2Error {
    #[error("SigV2: no credentials resolved (SIGNATURE_VERSION=s3 needs an access key)")]
    NoCredentials,
    #[error("SigV2: a header value is not valid")]
    BadHeader,
}

const SIGV4_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// Replace the SigV4 headers of `req` with a V2 `Date` + `Authorization` (and the session
/// token, if any), signed for `bucket` at `date`.
pub fn resign(
    req: &mut aws_smithy_runtime_api::http::Request,
    bucket: &str,
    creds: &Credentials,
    date: &str,
) -> Result<(), SigV2Error> {
    for h in SIGV4_HEADERS {
        req.headers_mut().remove(*h);
    }
    req.headers_mut().insert("date", date.to_string());
    if let Some(t) = creds.session_token() {
        let v = http::HeaderValue::from_str(t).map_err(|_| SigV2Error::BadHeader)?;
        req.headers_mut().insert("x-amz-security-token", v);
    }
    let uri: http::Uri = req.uri().parse().map_err(|_| SigV2Error::BadHeader)?;
    let host = uri.host().unwrap_or("");
    let resource = canonical_resource(
        virtual_bucket(host, bucket),
        uri.path(),
        uri.query().unwrap_or(""),
    );
    let headers = req.headers();
    let amz = canonical_amz_headers(headers.iter());
    let sts = string_to_sign(
        req.method(),
        headers.get("content-md5").unwrap_or(""),
        headers.get("content-type").unwrap_or(""),
        date,
        &amz,
        &resource,
    );
    let auth = format!(
        "AWS {}:{}",
        creds.access_key_id(),
        signature(creds.secret_access_key(), &sts)
    );
    let v = http::HeaderValue::from_str(&auth).map_err(|_| SigV2Error::BadHeader)?;
    req.headers_mut().insert("authorization", v);
    Ok(())
}

impl Intercept for SigV2Interceptor {
    fn name(&self) -> &'static str {
        "bucketfs-sigv2"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let creds = self.slot.read().clone().ok_or(SigV2Error::NoCredentials)?;
        resign(
            context.request_mut(),
            &self.bucket,
            &creds,
            &http_date(SystemTime::now()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of the AWS S3 documentation ("Signing and authenticating REST requests").
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn object_get() {
        let r = canonical_resource(Some("johnsmith"), "/photos/puppy.jpg", "");
        let s = string_to_sign("GET", "", "", "Tue, 27 Mar 2007 19:36:42 +0000", "", &r);
        assert_eq!(
            s,
            "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/johnsmith/photos/puppy.jpg"
        );
        assert_eq!(signature(SECRET, &s), "bWq2s1WEIj+Ydj0vQ697zp+IXMU=");
        let r = canonical_resource(
            None,
            "/awsexamplebucket1/photos/puppy.jpg",
            "x-id=GetObject",
        );
        let s = string_to_sign("GET", "", "", "Tue, 27 Mar 2007 19:36:42 +0000", "", &r);
        assert_eq!(signature(SECRET, &s), "qgk2+6Sv9/oM7G3qLEjTH1a1l1g=");
    }

    #[test]
    fn object_put() {
        let r = canonical_resource(Some("johnsmith"), "/photos/puppy.jpg", "");
        let s = string_to_sign(
            "PUT",
            "",
            "image/jpeg",
            "Tue, 27 Mar 2007 21:15:45 +0000",
            "",
            &r,
        );
        assert_eq!(signature(SECRET, &s), "MyyxeRY7whkBe+bq8fHCL/2kKUg=");
    }

    #[test]
    fn list_and_acl() {
        let r = canonical_resource(
            Some("johnsmith"),
            "/",
            "prefix=photos&max-keys=50&marker=puppy",
        );
        assert_eq!(r, "/johnsmith/");
        let s = string_to_sign("GET", "", "", "Tue, 27 Mar 2007 19:42:41 +0000", "", &r);
        assert_eq!(signature(SECRET, &s), "htDYFYduRNen8P9ZfE/s9SuKy0U=");
        let r = canonical_resource(Some("johnsmith"), "", "acl");
        assert_eq!(r, "/johnsmith/?acl");
        let s = string_to_sign("GET", "", "", "Tue, 27 Mar 2007 19:44:46 +0000", "", &r);
        assert_eq!(signature(SECRET, &s), "c2WLPFtWHVgbEmeEG93a4cG37dM=");
    }

    #[test]
    fn upload_with_amz_headers() {
        let amz = canonical_amz_headers([
            ("x-amz-acl", "public-read"),
            ("X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"),
            ("X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"),
            ("X-Amz-Meta-FileChecksum", "0x02661779"),
            ("X-Amz-Meta-ChecksumAlgorithm", " crc32 "),
            ("Content-Type", "application/x-download"),
        ]);
        assert_eq!(
            amz,
            "x-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\nx-amz-meta-filechecksum:0x02661779\nx-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n"
        );
        let r = canonical_resource(Some("static.johnsmith.net"), "/db-backup.dat.gz", "");
        let s = string_to_sign(
            "PUT",
            "4gJE4saaMU4BqNR0kLY+lw==",
            "application/x-download",
            "Tue, 27 Mar 2007 21:06:08 +0000",
            &amz,
            &r,
        );
        assert_eq!(signature(SECRET, &s), "ilyl83RwaSoYIEdixDQcA4OnAnc=");
    }

    #[test]
    fn query_string_authentication() {
        let r = canonical_resource(Some("johnsmith"), "/photos/puppy.jpg", "");
        let q = presign_query("AKIAIOSFODNN7EXAMPLE", SECRET, None, &r, 1175139620);
        assert_eq!(
            q,
            "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D"
        );
    }

    #[test]
    fn subresources_sorted_and_decoded_others_dropped() {
        assert_eq!(
            canonical_resource(
                None,
                "/b/k%20x",
                "x-id=UploadPart&uploadId=a%2Bb&partNumber=3"
            ),
            "/b/k%20x?partNumber=3&uploadId=a+b"
        );
        assert_eq!(
            canonical_resource(None, "/b/", "uploads&prefix=x"),
            "/b/?uploads"
        );
        assert_eq!(canonical_resource(None, "/b", "cors"), "/b?cors");
        assert_eq!(
            canonical_resource(None, "/b/", "list-type=2&delimiter=%2F"),
            "/b/"
        );
    }

    fn sdk_request(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> aws_smithy_runtime_api::http::Request {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = b
            .body(aws_smithy_types::body::SdkBody::empty())
            .expect("request");
        aws_smithy_runtime_api::http::Request::try_from(r).expect("smithy request")
    }

    #[test]
    fn resign_replaces_the_sigv4_headers_of_an_sdk_request() {
        // what the SDK sends after SigV4 signing, virtual-hosted
        let mut req = sdk_request(
            "PUT",
            "https://johnsmith.s3.amazonaws.com/photos/puppy.jpg?x-id=PutObject",
            &[
                ("content-type", "image/jpeg"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/...",
                ),
                ("x-amz-date", "20070327T211545Z"),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ("amz-sdk-invocation-id", "abc"),
            ],
        );
        let creds = Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "t");
        resign(
            &mut req,
            "johnsmith",
            &creds,
            "Tue, 27 Mar 2007 21:15:45 +0000",
        )
        .unwrap();
        assert_eq!(
            req.headers().get("authorization"),
            Some("AWS AKIAIOSFODNN7EXAMPLE:MyyxeRY7whkBe+bq8fHCL/2kKUg=")
        );
        assert_eq!(
            req.headers().get("date"),
            Some("Tue, 27 Mar 2007 21:15:45 +0000")
        );
        assert!(req.headers().get("x-amz-date").is_none());
        assert!(req.headers().get("x-amz-content-sha256").is_none());

        // path-style, with a session token: the token is signed as an amz header
        let mut req = sdk_request(
            "GET",
            "http://127.0.0.1:9000/johnsmith/photos/puppy.jpg",
            &[("x-amz-security-token", "stale")],
        );
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            SECRET,
            Some("token-1".into()),
            None,
            "t",
        );
        resign(
            &mut req,
            "johnsmith",
            &creds,
            "Tue, 27 Mar 2007 19:36:42 +0000",
        )
        .unwrap();
        let sts = string_to_sign(
            "GET",
            "",
            "",
            "Tue, 27 Mar 2007 19:36:42 +0000",
            "x-amz-security-token:token-1\n",
            "/johnsmith/photos/puppy.jpg",
        );
        assert_eq!(
            req.headers().get("authorization").map(str::to_string),
            Some(format!(
                "AWS AKIAIOSFODNN7EXAMPLE:{}",
                signature(SECRET, &sts)
            ))
        );
        assert_eq!(req.headers().get("x-amz-security-token"), Some("token-1"));
    }

    #[test]
    fn virtual_host_detection() {
        assert_eq!(virtual_bucket("data.s3.example.com", "data"), Some("data"));
        assert_eq!(virtual_bucket("s3.example.com", "data"), None);
        assert_eq!(virtual_bucket("database.example.com", "data"), None);
        assert_eq!(virtual_bucket("127.0.0.1", "data"), None);
    }

    #[test]
    fn date_format() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1175024202);
        assert_eq!(http_date(t), "Tue, 27 Mar 2007 19:36:42 GMT");
    }
}
