//! `bucketfs fix-content-type [--dry-run] [PREFIX]`: every object whose Content-Type is
//! missing or wrong for its extension is copied onto itself with the right one (user metadata,
//! Cache-Control, Content-Disposition, Content-Encoding, Content-Language and storage class
//! kept; the copy is conditional on the ETag, so a concurrent overwrite is never clobbered).
//! Objects above 5 GiB are copied in parts (UploadPartCopy). Also the audit of `check`.

use futures::stream::{self, StreamExt};

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

use super::progress::Progress;
use super::{sdk_error, CmdError, Ctx, FixArgs};
use crate::meta::{content_type_for, DEFAULT_TYPE};
use crate::store::s3::encode_key;

const CONCURRENCY: usize = 16;
const MIB: u64 = 1024 * 1024;

/// The type part of a Content-Type (`text/plain; charset=utf-8` → `text/plain`), lower-case.
fn essence(t: &str) -> String {
    t.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Spellings that browsers treat alike.
const ALIASES: &[&[&str]] = &[
    &[
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
    ],
    &["image/vnd.microsoft.icon", "image/x-icon"],
    &["application/xml", "text/xml"],
];

fn same_type(a: &str, b: &str) -> bool {
    a == b || ALIASES.iter().any(|g| g.contains(&a) && g.contains(&b))
}

/// The Content-Type `key` should get instead of `current`, or None if `current` is fine.
/// Missing, empty and generic (`binary/octet-stream`, or `application/octet-stream` where the
/// extension is known) types are replaced; so is a type that disagrees with a known extension.
/// An unknown extension keeps whatever type it has.
pub fn correction(key: &str, current: Option<&str>) -> Option<String> {
    let want = content_type_for(key);
    let cur = current.map(essence).unwrap_or_default();
    if cur.is_empty() || cur == "binary/octet-stream" {
        return Some(want);
    }
    if want == DEFAULT_TYPE {
        return None;
    }
    (!same_type(&cur, &essence(&want))).then_some(want)
}

/// One object as seen by a HEAD.
pub struct Seen {
    pub key: String,
    pub head: HeadObjectOutput,
    pub fix: Option<String>,
}

/// What happened to one object.
pub enum Outcome {
    Right,
    Fixed { from: Option<String>, to: String },
    WouldFix { from: Option<String>, to: String },
    Failed(String),
}

/// Every key under `prefix` (directory markers `x/` left out), page by page, passed to `f`
/// with its HEAD, CONCURRENCY at a time.
pub async fn scan<F, Fut>(
    ctx: &Ctx,
    prefix: &str,
    skip: &[String],
    progress: &Progress,
    f: F,
) -> Result<Vec<(String, Outcome)>, CmdError>
where
    F: Fn(Seen) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let client = ctx.store.client();
    let mut token: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let page = client
            .list_objects_v2()
            .bucket(ctx.bucket())
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| CmdError::S3 {
                op: "ListObjectsV2",
                msg: sdk_error(&e),
            })?;
        let keys: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .filter(|k| !k.ends_with('/') && !skip.contains(k))
            .collect();
        progress.add_total(keys.len() as u64);
        let f = &f;
        let results: Vec<(String, Outcome)> =
            stream::iter(keys.into_iter().map(|key| async move {
                let r = client
                    .head_object()
                    .bucket(ctx.bucket())
                    .key(&key)
                    .send()
                    .await;
                let outcome = match r {
                    Ok(head) => {
                        let fix = correction(&key, head.content_type());
                        f(Seen {
                            key: key.clone(),
                            head,
                            fix,
                        })
                        .await
                    }
                    Err(e) => Outcome::Failed(format!("HeadObject: {}", sdk_error(&e))),
                };
                progress.inc();
                (key, outcome)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        out.extend(results);
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Copy `s` onto itself with Content-Type `to`, keeping its other headers.
async fn rewrite(ctx: &Ctx, s: &Seen, to: &str, threshold: u64) -> Result<(), String> {
    let client = ctx.store.client();
    let bucket = ctx.bucket();
    let h = &s.head;
    let source = format!("{bucket}/{}", encode_key(&s.key));
    let size = h.content_length().unwrap_or(0).max(0) as u64;
    let etag = h.e_tag().map(str::to_string);
    if size <= threshold {
        client
            .copy_object()
            .bucket(bucket)
            .key(&s.key)
            .copy_source(&source)
            .set_copy_source_if_match(etag)
            .metadata_directive(MetadataDirective::Replace)
            .content_type(to)
            .set_metadata(h.metadata().cloned())
            .set_cache_control(h.cache_control().map(str::to_string))
            .set_content_disposition(h.content_disposition().map(str::to_string))
            .set_content_encoding(h.content_encoding().map(str::to_string))
            .set_content_language(h.content_language().map(str::to_string))
            .set_storage_class(h.storage_class().cloned())
            .set_acl(ctx.store.acl())
            .send()
            .await
            .map_err(|e| format!("CopyObject: {}", sdk_error(&e)))?;
        return Ok(());
    }
    // in parts: at most 10 000, each at most 5 GiB
    let part = size
        .div_ceil(10_000)
        .max(threshold.min(512 * MIB))
        .max(5 * MIB);
    let up = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&s.key)
        .content_type(to)
        .set_metadata(h.metadata().cloned())
        .set_cache_control(h.cache_control().map(str::to_string))
        .set_content_disposition(h.content_disposition().map(str::to_string))
        .set_content_encoding(h.content_encoding().map(str::to_string))
        .set_content_language(h.content_language().map(str::to_string))
        .set_storage_class(h.storage_class().cloned())
        .set_acl(ctx.store.acl())
        .send()
        .await
        .map_err(|e| format!("CreateMultipartUpload: {}", sdk_error(&e)))?;
    let Some(id) = up.upload_id().map(str::to_string) else {
        return Err("CreateMultipartUpload returned no upload id".into());
    };
    let copy = async {
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut n = 1i32;
        while start < size {
            let end = (start + part).min(size);
            let r = client
                .upload_part_copy()
                .bucket(bucket)
                .key(&s.key)
                .upload_id(&id)
                .part_number(n)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{}", end - 1))
                .set_copy_source_if_match(h.e_tag().map(str::to_string))
                .send()
                .await
                .map_err(|e| format!("UploadPartCopy {n}: {}", sdk_error(&e)))?;
            let tag = r
                .copy_part_result()
                .and_then(|c| c.e_tag())
                .ok_or_else(|| format!("UploadPartCopy {n} returned no ETag"))?;
            parts.push(CompletedPart::builder().part_number(n).e_tag(tag).build());
            start = end;
            n += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(&s.key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("CompleteMultipartUpload: {}", sdk_error(&e)))?;
        Ok::<(), String>(())
    };
    if let Err(e) = copy.await {
        let _ = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(&s.key)
            .upload_id(&id)
            .send()
            .await;
        return Err(e);
    }
    Ok(())
}

/// Fix (or in a dry run, report) one object, then verify with a HEAD.
async fn fix_one(ctx: &Ctx, s: Seen, dry_run: bool, threshold: u64) -> Outcome {
    let Some(to) = s.fix.clone() else {
        return Outcome::Right;
    };
    let from = s.head.content_type().map(str::to_string);
    if dry_run {
        return Outcome::WouldFix { from, to };
    }
    if let Err(e) = rewrite(ctx, &s, &to, threshold).await {
        return Outcome::Failed(e);
    }
    match ctx
        .store
        .client()
        .head_object()
        .bucket(ctx.bucket())
        .key(&s.key)
        .send()
        .await
    {
        Ok(h) if h.content_type().map(essence) == Some(essence(&to)) => Outcome::Fixed { from, to },
        Ok(h) => Outcome::Failed(format!(
            "the store kept Content-Type {:?} after the copy",
            h.content_type().unwrap_or("")
        )),
        Err(e) => Outcome::Failed(format!("HeadObject after the copy: {}", sdk_error(&e))),
    }
}

fn show(t: &Option<String>) -> &str {
    t.as_deref().filter(|t| !t.is_empty()).unwrap_or("(none)")
}

pub fn run(a: &FixArgs) -> Result<i32, CmdError> {
    let ctx = Ctx::new(&a.s3)?;
    ctx.ensure_reachable()?;
    let progress = Progress::new("objects checked");
    let threshold = a.multipart_threshold_mib.max(5) * MIB;
    let dry = a.dry_run;
    let results = ctx.rt.block_on(scan(&ctx, &a.prefix, &[], &progress, |s| {
        let ctx = &ctx;
        let progress = &progress;
        async move {
            let key = s.key.clone();
            let o = fix_one(ctx, s, dry, threshold).await;
            match &o {
                Outcome::Fixed { from, to } => {
                    progress.line(&format!("fixed      {key}: {} -> {to}", show(from)))
                }
                Outcome::WouldFix { from, to } => {
                    progress.line(&format!("would fix  {key}: {} -> {to}", show(from)))
                }
                Outcome::Failed(e) => progress.line(&format!("FAILED     {key}: {e}")),
                Outcome::Right => {}
            }
            o
        }
    }));
    progress.finish();
    let results = results?;
    let count = |p: fn(&Outcome) -> bool| results.iter().filter(|(_, o)| p(o)).count();
    let right = count(|o| matches!(o, Outcome::Right));
    let fixed = count(|o| matches!(o, Outcome::Fixed { .. }));
    let would = count(|o| matches!(o, Outcome::WouldFix { .. }));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    if dry {
        outln!(
            "{} objects: {would} would be fixed, {right} already right, {failed} failed (dry run: nothing changed)",
            results.len()
        );
    } else {
        outln!(
            "{} objects: {fixed} fixed, {right} already right, {failed} failed",
            results.len()
        );
    }
    Ok(if failed > 0 { super::EXIT_FAILED } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections() {
        assert_eq!(correction("a/icon.svg", None), Some("image/svg+xml".into()));
        assert_eq!(
            correction("a/icon.svg", Some("")),
            Some("image/svg+xml".into())
        );
        assert_eq!(
            correction("a/icon.svg", Some("binary/octet-stream")),
            Some("image/svg+xml".into())
        );
        assert_eq!(
            correction("a/icon.svg", Some("application/octet-stream")),
            Some("image/svg+xml".into())
        );
        assert_eq!(
            correction("a/icon.svg", Some("text/xml")),
            Some("image/svg+xml".into())
        );
        assert_eq!(correction("a/icon.svg", Some("image/svg+xml")), None);
        assert_eq!(correction("r.csv", Some("text/csv; charset=utf-8")), None);
        assert_eq!(correction("x.ico", Some("image/x-icon")), None);
        assert_eq!(correction("x.js", Some("application/javascript")), None);
        // unknown extension: only a missing type is set
        assert_eq!(correction("blob", Some("application/x-custom")), None);
        assert_eq!(correction("blob", None), Some(DEFAULT_TYPE.into()));
        assert_eq!(correction("blob", Some("application/octet-stream")), None);
    }
}
