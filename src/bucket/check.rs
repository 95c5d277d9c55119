//! `bucketfs check [--origin URL...]`: each S3 action authentik's s3 backend and bucketfs use,
//! proven with a real call on a probe key that is removed again; the CORS answer a browser
//! gets for each origin; the Content-Type of every object. One line each, with the fix for
//! what fails; exit 1 if anything fails.
//!
//! Without write access there is no probe object, and Head/Get of a missing key, or
//! Complete/Abort of a made-up upload id, still prove the permission: a server checks access
//! before it looks the object up (404 = allowed, 403 = denied).

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::fixct::{self, Outcome};
use super::progress::Progress;
use super::{format_table, sdk_error, sdk_status, CheckArgs, CmdError, Ctx};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    Skip,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub check: String,
    pub status: Status,
    pub detail: String,
    pub fix: String,
}

fn row(check: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Row {
    Row {
        check: check.into(),
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// The fix for a denied or failed action.
fn fix_for(action: &str, bucket: &str, code: &str, message: &str) -> String {
    if message
        .to_ascii_lowercase()
        .contains("authorization method")
    {
        return "the store does not accept this signature: set SIGNATURE_VERSION=s3v4".into();
    }
    match code {
        "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AuthorizationHeaderMalformed" => {
            return "check ACCESS_KEY/SECRET_KEY, REGION and SIGNATURE_VERSION".into()
        }
        "AccessControlListNotSupported" => {
            return "the bucket has ACLs disabled: set AUTHENTIK_STORAGE__S3__OBJECT_ACL= (empty)"
                .into()
        }
        _ => {}
    }
    let (perm, res) = match action {
        "ListObjectsV2" => ("s3:ListBucket", format!("arn:aws:s3:::{bucket}")),
        "HeadObject" | "GetObject" => ("s3:GetObject", format!("arn:aws:s3:::{bucket}/*")),
        "AbortMultipartUpload" => (
            "s3:AbortMultipartUpload",
            format!("arn:aws:s3:::{bucket}/*"),
        ),
        "DeleteObject" => ("s3:DeleteObject", format!("arn:aws:s3:::{bucket}/*")),
        _ => ("s3:PutObject", format!("arn:aws:s3:::{bucket}/*")),
    };
    format!("grant {perm} on {res} (bucketfs setup prints the policy)")
}

type SdkErr<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

fn denied<E>(action: &str, bucket: &str, e: &SdkErr<E>) -> Row
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let (_, code) = sdk_status(e);
    row(
        action,
        Status::Fail,
        sdk_error(e),
        fix_for(action, bucket, &code, &sdk_error(e)),
    )
}

/// A call on something that does not exist: 404 proves the permission, anything else fails.
fn allowed_if_missing<T, E>(action: &str, bucket: &str, what: &str, r: Result<T, SdkErr<E>>) -> Row
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(_) => row(action, Status::Ok, format!("allowed ({what})"), ""),
        Err(e) if sdk_status(&e).0 == Some(404) => row(
            action,
            Status::Ok,
            format!("allowed ({what}: {})", sdk_error(&e)),
            "",
        ),
        Err(e) => denied(action, bucket, &e),
    }
}

async fn actions(
    ctx: &Ctx,
    prefix: &str,
    probe: &str,
    rows: &mut Vec<Row>,
) -> (bool, Option<String>) {
    let c = ctx.store.client();
    let b = ctx.bucket();
    let mp = format!("{probe}.multipart");
    let bogus_upload = "bucketfs-check-no-such-upload";

    // ListObjectsV2
    let mut sample = None;
    match c
        .list_objects_v2()
        .bucket(b)
        .prefix(prefix)
        .max_keys(20)
        .send()
        .await
    {
        Ok(o) => {
            sample = o
                .contents()
                .iter()
                .filter_map(|x| x.key())
                .find(|k| !k.ends_with('/'))
                .map(str::to_string);
            rows.push(row(
                "ListObjectsV2",
                Status::Ok,
                format!("{} keys on the first page", o.key_count().unwrap_or(0)),
                "",
            ));
        }
        Err(e) => rows.push(denied("ListObjectsV2", b, &e)),
    }

    // PutObject
    let put = c
        .put_object()
        .bucket(b)
        .key(probe)
        .content_type("text/plain")
        .set_acl(ctx.store.acl())
        .body(ByteStream::from_static(b"bucketfs check probe\n"))
        .send()
        .await;
    let put_ok = match put {
        Ok(_) => {
            rows.push(row("PutObject", Status::Ok, format!("wrote {probe}"), ""));
            true
        }
        Err(e) => {
            rows.push(denied("PutObject", b, &e));
            false
        }
    };

    // HeadObject, GetObject
    if put_ok {
        match c.head_object().bucket(b).key(probe).send().await {
            Ok(h) => rows.push(row(
                "HeadObject",
                Status::Ok,
                format!(
                    "{} bytes, {}",
                    h.content_length().unwrap_or(0),
                    h.content_type().unwrap_or("no type")
                ),
                "",
            )),
            Err(e) => rows.push(denied("HeadObject", b, &e)),
        }
        match c.get_object().bucket(b).key(probe).send().await {
            Ok(o) => match o.body.collect().await.map(|d| d.into_bytes()) {
                Ok(d) if d.as_ref() == b"bucketfs check probe\n" => rows.push(row(
                    "GetObject",
                    Status::Ok,
                    "read back what was written",
                    "",
                )),
                Ok(_) => rows.push(row(
                    "GetObject",
                    Status::Fail,
                    "read back other bytes than were written",
                    "check the store",
                )),
                Err(e) => rows.push(row(
                    "GetObject",
                    Status::Fail,
                    format!("reading the body: {e}"),
                    "check the network",
                )),
            },
            Err(e) => rows.push(denied("GetObject", b, &e)),
        }
    } else {
        rows.push(allowed_if_missing(
            "HeadObject",
            b,
            "no probe object",
            c.head_object().bucket(b).key(probe).send().await,
        ));
        rows.push(allowed_if_missing(
            "GetObject",
            b,
            "no probe object",
            c.get_object().bucket(b).key(probe).send().await,
        ));
    }

    // CreateMultipartUpload, (UploadPart), CompleteMultipartUpload
    let mut mp_done = false;
    let created = c
        .create_multipart_upload()
        .bucket(b)
        .key(&mp)
        .content_type("text/plain")
        .set_acl(ctx.store.acl())
        .send()
        .await;
    match created {
        Ok(o) => {
            rows.push(row(
                "CreateMultipartUpload",
                Status::Ok,
                "upload started",
                "",
            ));
            let id = o.upload_id().unwrap_or_default().to_string();
            let part = c
                .upload_part()
                .bucket(b)
                .key(&mp)
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from_static(b"bucketfs check multipart probe\n"))
                .send()
                .await;
            match part {
                Ok(p) => {
                    let done = c
                        .complete_multipart_upload()
                        .bucket(b)
                        .key(&mp)
                        .upload_id(&id)
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .parts(
                                    CompletedPart::builder()
                                        .part_number(1)
                                        .set_e_tag(p.e_tag().map(str::to_string))
                                        .build(),
                                )
                                .build(),
                        )
                        .send()
                        .await;
                    match done {
                        Ok(_) => {
                            mp_done = true;
                            rows.push(row(
                                "CompleteMultipartUpload",
                                Status::Ok,
                                "one-part upload completed",
                                "",
                            ));
                        }
                        Err(e) => rows.push(denied("CompleteMultipartUpload", b, &e)),
                    }
                }
                Err(e) => {
                    let (_, code) = sdk_status(&e);
                    rows.push(row(
                        "CompleteMultipartUpload",
                        Status::Fail,
                        format!("UploadPart failed: {}", sdk_error(&e)),
                        fix_for("UploadPart", b, &code, &sdk_error(&e)),
                    ));
                }
            }
            if !mp_done {
                let _ = c
                    .abort_multipart_upload()
                    .bucket(b)
                    .key(&mp)
                    .upload_id(&id)
                    .send()
                    .await;
            }
        }
        Err(e) => {
            rows.push(denied("CreateMultipartUpload", b, &e));
            rows.push(allowed_if_missing(
                "CompleteMultipartUpload",
                b,
                "made-up upload id",
                c.complete_multipart_upload()
                    .bucket(b)
                    .key(&mp)
                    .upload_id(bogus_upload)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .parts(
                                CompletedPart::builder()
                                    .part_number(1)
                                    .e_tag("\"0\"")
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await,
            ));
        }
    }

    // AbortMultipartUpload
    match c
        .create_multipart_upload()
        .bucket(b)
        .key(&mp)
        .set_acl(ctx.store.acl())
        .send()
        .await
    {
        Ok(o) => {
            let id = o.upload_id().unwrap_or_default().to_string();
            match c
                .abort_multipart_upload()
                .bucket(b)
                .key(&mp)
                .upload_id(&id)
                .send()
                .await
            {
                Ok(_) => rows.push(row(
                    "AbortMultipartUpload",
                    Status::Ok,
                    "upload aborted",
                    "",
                )),
                Err(e) => rows.push(denied("AbortMultipartUpload", b, &e)),
            }
        }
        Err(_) => rows.push(allowed_if_missing(
            "AbortMultipartUpload",
            b,
            "made-up upload id",
            c.abort_multipart_upload()
                .bucket(b)
                .key(&mp)
                .upload_id(bogus_upload)
                .send()
                .await,
        )),
    }
    (put_ok, sample.or_else(|| mp_done.then(|| mp.clone())))
}

async fn delete(ctx: &Ctx, probe: &str, put_ok: bool, rows: &mut Vec<Row>) {
    let c = ctx.store.client();
    let b = ctx.bucket();
    let mp = format!("{probe}.multipart");
    let r = c.delete_object().bucket(b).key(probe).send().await;
    let what = if put_ok {
        "probe removed"
    } else {
        "no probe object"
    };
    match r {
        Ok(_) => rows.push(row("DeleteObject", Status::Ok, what, "")),
        Err(e) if sdk_status(&e).0 == Some(404) => {
            rows.push(row("DeleteObject", Status::Ok, what, ""))
        }
        Err(e) => rows.push(denied("DeleteObject", b, &e)),
    }
    // the multipart probe, if it was completed (ignored if absent)
    let _ = c.delete_object().bucket(b).key(&mp).send().await;
}

async fn cors(ctx: &Ctx, key: Option<&str>, origins: &[String], rows: &mut Vec<Row>) {
    let Some(key) = key else {
        for o in origins {
            rows.push(row(
                &format!("CORS GET from {o}"),
                Status::Skip,
                "no object to fetch (nothing listed, nothing written)",
                "run check with a key that may write",
            ));
        }
        return;
    };
    let url = match super::url::browser_url_async(ctx, key).await {
        Ok(u) => u,
        Err(e) => {
            rows.push(row(
                "CORS",
                Status::Fail,
                format!("no URL for {key}: {e}"),
                "check the URL settings",
            ));
            return;
        }
    };
    for o in origins {
        let name = format!("CORS GET from {o}");
        match super::http::get(&url, &[("Origin", o)], Duration::from_secs(30)).await {
            Ok(a) => {
                let allow = a.header("access-control-allow-origin").map(str::to_string);
                let good =
                    a.status == 200 && matches!(allow.as_deref(), Some(x) if x == o || x == "*");
                if good {
                    rows.push(row(
                        &name,
                        Status::Ok,
                        format!(
                            "HTTP 200, Access-Control-Allow-Origin: {}",
                            allow.unwrap_or_default()
                        ),
                        "",
                    ));
                } else {
                    rows.push(row(
                        &name,
                        Status::Fail,
                        format!(
                            "HTTP {}, Access-Control-Allow-Origin: {}",
                            a.status,
                            allow.as_deref().unwrap_or("(none)")
                        ),
                        format!("bucketfs setup --origin {o}"),
                    ));
                }
            }
            Err(e) => rows.push(row(
                &name,
                Status::Fail,
                format!("{e}"),
                "check the URL settings (CUSTOM_DOMAIN, ENDPOINT)",
            )),
        }
    }
}

fn audit(ctx: &Ctx, prefix: &str, skip: &[String], rows: &mut Vec<Row>) {
    let progress = Progress::new("objects audited");
    let r = ctx
        .rt
        .block_on(fixct::scan(ctx, prefix, skip, &progress, |s| async move {
            match s.fix {
                Some(to) => Outcome::WouldFix {
                    from: s.head.content_type().map(str::to_string),
                    to,
                },
                None => Outcome::Right,
            }
        }));
    progress.finish();
    let results = match r {
        Ok(r) => r,
        Err(e) => {
            rows.push(row(
                "Content-Type",
                Status::Fail,
                e.to_string(),
                "the key needs s3:ListBucket",
            ));
            return;
        }
    };
    let wrong: Vec<String> = results
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::WouldFix { from, to } => Some(format!(
                "{k} ({} -> {to})",
                from.as_deref().unwrap_or("none")
            )),
            _ => None,
        })
        .collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::Failed(e) => Some(format!("{k}: {e}")),
            _ => None,
        })
        .collect();
    let n = results.len();
    if wrong.is_empty() && failed.is_empty() {
        rows.push(row(
            "Content-Type",
            Status::Ok,
            format!("{n} objects, every type matches its extension"),
            "",
        ));
        return;
    }
    if !wrong.is_empty() {
        let shown: Vec<&str> = wrong.iter().take(5).map(String::as_str).collect();
        let more = if wrong.len() > 5 {
            format!(", and {} more", wrong.len() - 5)
        } else {
            String::new()
        };
        let fix = if prefix.is_empty() {
            "bucketfs fix-content-type".to_string()
        } else {
            format!("bucketfs fix-content-type {prefix}")
        };
        rows.push(row(
            "Content-Type",
            Status::Fail,
            format!(
                "{} of {n} objects missing or wrong: {}{more}",
                wrong.len(),
                shown.join(", ")
            ),
            fix,
        ));
    }
    if !failed.is_empty() {
        rows.push(row(
            "Content-Type",
            Status::Fail,
            format!("{} objects could not be read: {}", failed.len(), failed[0]),
            "grant s3:GetObject",
        ));
    }
}

pub fn run(a: &CheckArgs) -> Result<i32, CmdError> {
    let origins = a
        .origins
        .iter()
        .map(|o| super::setup::validate_origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Ctx::new(&a.s3)?;
    ctx.ensure_reachable()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let probe = format!("{}bucketfs-check-{nanos}.txt", a.prefix);
    let mut rows = Vec::new();
    ctx.rt.block_on(async {
        let (put_ok, sample) = actions(&ctx, &a.prefix, &probe, &mut rows).await;
        if !origins.is_empty() {
            let key = if put_ok { Some(probe.clone()) } else { sample };
            cors(&ctx, key.as_deref(), &origins, &mut rows).await;
        }
        delete(&ctx, &probe, put_ok, &mut rows).await;
    });
    let skip = vec![probe.clone(), format!("{probe}.multipart")];
    audit(&ctx, &a.prefix, &skip, &mut rows);

    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.check.clone(),
                match r.status {
                    Status::Ok => "ok",
                    Status::Fail => "FAIL",
                    Status::Skip => "skip",
                }
                .to_string(),
                r.detail.clone(),
                if r.fix.is_empty() {
                    String::new()
                } else {
                    format!("fix: {}", r.fix)
                },
            ]
        })
        .collect();
    print!(
        "{}",
        format_table(&["check", "result", "detail", ""], &table)
    );
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    let ok = rows.iter().filter(|r| r.status == Status::Ok).count();
    outln!(
        "bucket {} at {}: {ok} ok, {failed} FAILED",
        ctx.bucket(),
        ctx.endpoint_desc()
    );
    Ok(if failed > 0 { super::EXIT_FAILED } else { 0 })
}
