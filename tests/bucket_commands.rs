//! Integration tests of authentik's configuration and the bucket commands (config, setup,
//! check, fix-content-type, url) on a real S3 server, plus the file → s3 backend switch.
//! Server: BUCKETFS_TEST_SERVER=seaweedfs (default) | moto | garage.

mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use aws_sdk_s3::primitives::ByteStream;

const ORIGIN: &str = "http://authentik.test";

fn bucketfs(args: &[&str], extra_env: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", "300", BIN]).args(args);
    for (k, v) in authentik_env(extra_env) {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    // no stray authentik settings of the machine
    let ours: Vec<String> = authentik_env(extra_env)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (k, _) in std::env::vars() {
        if k.starts_with("AUTHENTIK_") && !ours.contains(&k) {
            cmd.env_remove(&k);
        }
    }
    cmd.stdin(Stdio::null());
    let out = cmd.output().expect("run bucketfs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `check` table rows: check name → result (ok / FAIL / skip).
fn check_results(r: &Run) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in r.stdout.lines().skip(1) {
        for res in ["  ok  ", "  FAIL  ", "  skip  "] {
            if let Some(i) = line.find(res) {
                m.insert(line[..i].trim().to_string(), res.trim().to_string());
                break;
            }
        }
    }
    m
}

const WRITE_ACTIONS: &[&str] = &[
    "PutObject",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "DeleteObject",
];
const READ_ACTIONS: &[&str] = &["ListObjectsV2", "HeadObject", "GetObject"];

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bucketfs-test-{tag}-{}-{}",
        std::process::id(),
        nanos()
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

/// Status line, headers (lower-case names) of a GET with `Origin:`, via curl.
fn fetch_with_origin(url: &str, origin: &str) -> (u16, HashMap<String, String>) {
    let r = sh(&format!(
        "curl -sS -o /dev/null -D - --max-time 30 -H {} {}",
        q(format!("Origin: {origin}")),
        q(url)
    ));
    assert!(r.ok(), "curl {url}: {r:?}");
    let mut lines = r.stdout.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {r:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn cors_origins(bucket: &str) -> BTreeSet<String> {
    let r = block_on(s3().client.get_bucket_cors().bucket(bucket).send());
    match r {
        Ok(o) => o
            .cors_rules()
            .iter()
            .flat_map(|r| r.allowed_origins().to_vec())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn cors_rules_debug(bucket: &str) -> String {
    match block_on(s3().client.get_bucket_cors().bucket(bucket).send()) {
        Ok(o) => format!("{:?}", o.cors_rules()),
        Err(e) => format!("error {}", aws_sdk_s3::error::DisplayErrorContext(e)),
    }
}

// ------------------------------------------------------------------------------------------
// configuration

#[test]
fn config_shows_each_source_with_flags_over_env_over_env_file_and_redacts_secrets() {
    let dir = tmpdir("cfg");
    let secret_file = dir.join("s3-secret");
    fs::write(&secret_file, "very-secret-value-123\n").unwrap();
    let env_file = dir.join(".env");
    fs::write(
        &env_file,
        format!(
            "# authentik .env\nPG_PASS=abc\nAUTHENTIK_STORAGE__BACKEND=s3\n\
             AUTHENTIK_STORAGE__S3__BUCKET_NAME=from-env-file\n\
             AUTHENTIK_STORAGE__S3__REGION=file-region\n\
             AUTHENTIK_STORAGE__S3__ENDPOINT=http://file.example:9000\n\
             AUTHENTIK_STORAGE__S3__ACCESS_KEY=AKIAFROMFILE0000\n\
             AUTHENTIK_STORAGE__S3__SECRET_KEY=file://{}\n\
             AUTHENTIK_STORAGE__MEDIA__S3__OBJECT_ACL=\"\"\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let env_file_s = env_file.to_string_lossy().into_owned();
    let r = bucketfs(
        &[
            "config",
            "--env-file",
            &env_file_s,
            "--endpoint",
            "http://flag.example:9000",
        ],
        &[
            (
                "AUTHENTIK_STORAGE__S3__ENDPOINT",
                Some("http://env.example:9000"),
            ),
            ("AUTHENTIK_STORAGE__S3__REGION", Some("env-region")),
            ("AUTHENTIK_STORAGE__S3__BUCKET_NAME", None),
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", None),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", None),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let row = |name: &str| -> String {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row: {r:?}"))
            .to_string()
    };
    assert!(
        row("endpoint").contains("http://flag.example:9000")
            && row("endpoint").contains("--endpoint"),
        "{r:?}"
    );
    assert!(
        row("region").contains("env-region") && row("region").contains("(environment)"),
        "{r:?}"
    );
    assert!(
        row("bucket_name").contains("from-env-file") && row("bucket_name").contains(".env"),
        "{r:?}"
    );
    assert!(row("secret_key").contains("redacted"), "{r:?}");
    assert!(
        row("object_acl").contains("no ACL header") && row("object_acl").contains("MEDIA"),
        "{r:?}"
    );
    assert!(row("backend").contains("s3"), "{r:?}");
    assert!(
        !r.stdout.contains("very-secret-value-123") && !r.stderr.contains("very-secret-value-123"),
        "secret printed: {r:?}"
    );
    assert!(
        !r.stdout.contains("AKIAFROMFILE0000"),
        "full key id printed: {r:?}"
    );

    // a malformed value: exit 2, one line naming the variable
    let r = bucketfs(
        &["config"],
        &[("AUTHENTIK_STORAGE__S3__ADDRESSING_STYLE", Some("sideways"))],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("AUTHENTIK_STORAGE__S3__ADDRESSING_STYLE")
            && r.stderr.contains("sideways"),
        "{r:?}"
    );
    let r = bucketfs(
        &["config"],
        &[(
            "AUTHENTIK_STORAGE__S3__SECRET_KEY",
            Some("file:///nonexistent/secret"),
        )],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("AUTHENTIK_STORAGE__S3__SECRET_KEY"),
        "{r:?}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn without_keys_the_aws_credential_chain_is_used_env_and_session_profile() {
    let s = server();
    let p = format!("{}/", scratch());
    let no_keys = [
        ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", None),
        ("AUTHENTIK_STORAGE__S3__SECRET_KEY", None),
    ];
    // AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    let mut env = no_keys.to_vec();
    env.push(("AWS_ACCESS_KEY_ID", Some(s.access_key.as_str())));
    env.push(("AWS_SECRET_ACCESS_KEY", Some(s.secret_key.as_str())));
    let r = bucketfs(&["check", "--prefix", &p], &env);
    assert_eq!(r.code, 0, "{r:?}");
    let r = bucketfs(&["config"], &env);
    assert!(r.stdout.contains("AWS credential chain"), "{r:?}");

    // SESSION_PROFILE: a profile of the shared credentials file
    let dir = tmpdir("profile");
    let creds = dir.join("credentials");
    fs::write(
        &creds,
        format!(
            "[authentik-s3]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s.access_key, s.secret_key
        ),
    )
    .unwrap();
    let creds_s = creds.to_string_lossy().into_owned();
    let mut env = no_keys.to_vec();
    env.push((
        "AUTHENTIK_STORAGE__S3__SESSION_PROFILE",
        Some("authentik-s3"),
    ));
    env.push(("AWS_SHARED_CREDENTIALS_FILE", Some(creds_s.as_str())));
    let r = bucketfs(&["check", "--prefix", &p], &env);
    assert_eq!(r.code, 0, "{r:?}");
    let r = bucketfs(&["config"], &env);
    assert!(r.stdout.contains("AWS profile `authentik-s3`"), "{r:?}");
    if is(Kind::Moto) {
        skip("moto accepts any key: the wrong-profile half needs a server that checks credentials");
    } else {
        // the profile really is what signs: a profile with a wrong secret is refused
        fs::write(
            &creds,
            format!(
                "[authentik-s3]\naws_access_key_id = {}\naws_secret_access_key = wrong-secret-000000000\n",
                s.access_key
            ),
        )
        .unwrap();
        let r = bucketfs(&["check", "--prefix", &p], &env);
        assert_eq!(r.code, 1, "{r:?}");
    }
    let _ = fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------------------------------
// setup

#[test]
fn setup_creates_a_private_bucket_with_cors_and_a_second_run_changes_nothing() {
    let bucket = format!("bucketfs-setup-{}", &scratch()[2..14]).to_ascii_lowercase();
    let env = [("AUTHENTIK_STORAGE__S3__BUCKET_NAME", Some(bucket.as_str()))];
    let r = bucketfs(&["setup", "--origin", ORIGIN], &env);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!("bucket {bucket}: created")),
        "{r:?}"
    );
    assert!(r.stderr.contains("CORS: now allows"), "{r:?}");
    let policy: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("policy JSON: {e}: {r:?}"));
    assert_eq!(
        policy["Statement"][0]["Resource"],
        format!("arn:aws:s3:::{bucket}")
    );
    assert!(block_on(s3().client.head_bucket().bucket(&bucket).send()).is_ok());
    assert_eq!(cors_origins(&bucket), BTreeSet::from([ORIGIN.to_string()]));
    let rules_before = cors_rules_debug(&bucket);

    let r2 = bucketfs(&["setup", "--origin", ORIGIN], &env);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert!(
        r2.stderr.contains(&format!("bucket {bucket}: exists")),
        "{r2:?}"
    );
    assert!(r2.stderr.contains("CORS: unchanged"), "{r2:?}");
    assert!(r2.stderr.contains("setup: nothing changed"), "{r2:?}");
    assert_eq!(cors_rules_debug(&bucket), rules_before);
    assert_eq!(r2.stdout, r.stdout, "same policy both times");

    // a second origin joins the rule; the first stays
    let r3 = bucketfs(
        &[
            "setup",
            "--origin",
            ORIGIN,
            "--origin",
            "https://sso.example.com",
        ],
        &env,
    );
    assert_eq!(r3.code, 0, "{r3:?}");
    assert_eq!(
        cors_origins(&bucket),
        BTreeSet::from([ORIGIN.to_string(), "https://sso.example.com".to_string()])
    );
    // an origin without a scheme is refused before anything is sent
    let r4 = bucketfs(&["setup", "--origin", "authentik.company"], &env);
    assert_eq!(r4.code, 2, "{r4:?}");

    let _ = block_on(s3().client.delete_bucket_cors().bucket(&bucket).send());
    block_on(s3().client.delete_bucket().bucket(&bucket).send()).expect("DeleteBucket");
}

// ------------------------------------------------------------------------------------------
// check

#[test]
fn check_passes_every_action_and_the_cors_answer_with_a_read_write_key() {
    let p = format!("{}/", scratch());
    let r = bucketfs(&["setup", "--origin", ORIGIN], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    s3().put_typed(&format!("{p}ok.svg"), "<svg/>", Some("image/svg+xml"));
    let r = bucketfs(&["check", "--origin", ORIGIN, "--prefix", &p], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let res = check_results(&r);
    for a in READ_ACTIONS.iter().chain(WRITE_ACTIONS) {
        assert_eq!(res.get(*a).map(String::as_str), Some("ok"), "{a}: {r:?}");
    }
    assert_eq!(
        res.get(&format!("CORS GET from {ORIGIN}"))
            .map(String::as_str),
        Some("ok"),
        "{r:?}"
    );
    assert_eq!(
        res.get("Content-Type").map(String::as_str),
        Some("ok"),
        "{r:?}"
    );
    // the probe keys are gone
    assert_eq!(s3().keys(&p), vec![format!("{p}ok.svg")]);
    assert!(s3().multipart_uploads(&p).is_empty());

    // an origin without a CORS rule fails, and the fix names setup
    let other = "http://not-allowed.test";
    if is(Kind::Moto) {
        skip("moto_server answers every Origin with Access-Control-Allow-Origin, whatever the bucket's CORS rules (AWS: no header for an origin no rule allows)");
    } else {
        let r = bucketfs(&["check", "--origin", other, "--prefix", &p], &[]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(
            check_results(&r)
                .get(&format!("CORS GET from {other}"))
                .map(String::as_str),
            Some("FAIL"),
            "{r:?}"
        );
        assert!(
            r.stdout
                .contains(&format!("fix: bucketfs setup --origin {other}")),
            "{r:?}"
        );
    }

    // an object without a type fails the audit, with the fix named
    s3().put_typed(&format!("{p}bad.png"), "png", Some("binary/octet-stream"));
    let r = bucketfs(&["check", "--prefix", &p], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        check_results(&r).get("Content-Type").map(String::as_str),
        Some("FAIL"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("bad.png") && r.stdout.contains("fix-content-type"),
        "{r:?}"
    );
}

#[test]
fn check_with_a_read_only_key_names_exactly_the_write_actions_it_lacks() {
    let Some((ak, sk)) = server().ro.clone() else {
        skip("no read-only key on this server (moto does not check credentials)");
        return;
    };
    let p = format!("{}/", scratch());
    s3().put_typed(&format!("{p}icon.svg"), "<svg/>", Some("image/svg+xml"));
    let r = bucketfs(
        &["check", "--prefix", &p],
        &[
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", Some(ak.as_str())),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", Some(sk.as_str())),
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let res = check_results(&r);
    let failed: BTreeSet<&str> = res
        .iter()
        .filter(|(_, v)| *v == "FAIL")
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        failed,
        WRITE_ACTIONS.iter().copied().collect::<BTreeSet<_>>(),
        "{r:?}"
    );
    for a in READ_ACTIONS {
        assert_eq!(res.get(*a).map(String::as_str), Some("ok"), "{a}: {r:?}");
    }
    assert_eq!(
        res.get("Content-Type").map(String::as_str),
        Some("ok"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("grant s3:PutObject") && r.stdout.contains("grant s3:DeleteObject"),
        "{r:?}"
    );
    // nothing was left behind
    assert_eq!(s3().keys(&p), vec![format!("{p}icon.svg")]);
}

// ------------------------------------------------------------------------------------------
// fix-content-type

fn head_full(key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    block_on(
        s3().client
            .head_object()
            .bucket(&s3().bucket)
            .key(key)
            .send(),
    )
    .unwrap_or_else(|e| panic!("HEAD {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
}

fn put_raw(key: &str, body: Vec<u8>, ct: Option<&str>, meta: &[(&str, &str)]) {
    let mut req = s3()
        .client
        .put_object()
        .bucket(&s3().bucket)
        .key(key)
        .body(ByteStream::from(body));
    if let Some(ct) = ct {
        req = req.content_type(ct);
    }
    for (k, v) in meta {
        req = req.metadata(*k, *v);
    }
    block_on(req.send())
        .unwrap_or_else(|e| panic!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

#[test]
fn fix_content_type_repairs_untyped_and_wrong_objects_and_leaves_good_ones_untouched() {
    let p = format!("{}/media/public/", scratch());
    let big = random_bytes(12 * 1024 * 1024 + 17);
    put_raw(&format!("{p}untyped.svg"), b"<svg/>".to_vec(), None, &[]);
    put_raw(
        &format!("{p}generic.png"),
        b"png".to_vec(),
        Some("binary/octet-stream"),
        &[("uid", "1000")],
    );
    put_raw(
        &format!("{p}wrong.svg"),
        b"<svg/>".to_vec(),
        Some("text/plain"),
        &[("mode", "33188"), ("note", "kept")],
    );
    put_raw(
        &format!("{p}big.svg"),
        big.clone(),
        Some("binary/octet-stream"),
        &[("note", "big")],
    );
    put_raw(
        &format!("{p}good.png"),
        b"png".to_vec(),
        Some("image/png"),
        &[("note", "good")],
    );
    put_raw(
        &format!("{p}custom-blob"),
        b"x".to_vec(),
        Some("application/x-custom"),
        &[],
    );
    let good_before = head_full(&format!("{p}good.png"));
    let blob_before = head_full(&format!("{p}custom-blob"));

    // what needs a fix: AWS stores binary/octet-stream for an upload without a type; some
    // servers (SeaweedFS) set one from the extension themselves
    let want = [
        ("untyped.svg", "image/svg+xml"),
        ("generic.png", "image/png"),
        ("wrong.svg", "image/svg+xml"),
        ("big.svg", "image/svg+xml"),
    ];
    let to_fix: Vec<&str> = want
        .iter()
        .filter(|(k, t)| s3().content_type(&format!("{p}{k}")) != *t)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        to_fix.contains(&"generic.png")
            && to_fix.contains(&"wrong.svg")
            && to_fix.contains(&"big.svg"),
        "{to_fix:?}"
    );
    if !to_fix.contains(&"untyped.svg") {
        skip("the server set a Content-Type from the extension on an upload without one (AWS: binary/octet-stream); untyped.svg needs no fix here");
    }
    let (n_fix, n_right) = (to_fix.len(), 6 - to_fix.len());

    // dry run: reports, changes nothing
    let r = bucketfs(&["fix-content-type", "--dry-run", &p], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    for k in &to_fix {
        assert!(
            r.stdout.contains(&format!("would fix  {p}{k}")),
            "{k}: {r:?}"
        );
    }
    assert!(
        r.stdout.contains(&format!(
            "{n_fix} would be fixed, {n_right} already right, 0 failed"
        )),
        "{r:?}"
    );
    assert_eq!(s3().content_type(&format!("{p}wrong.svg")), "text/plain");

    let r = bucketfs(
        &["fix-content-type", "--multipart-threshold-mib", "5", &p],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("{n_fix} fixed, {n_right} already right, 0 failed")),
        "{r:?}"
    );
    for (k, t) in want {
        assert_eq!(s3().content_type(&format!("{p}{k}")), t, "{k}");
    }
    // user metadata and bytes kept
    let h = head_full(&format!("{p}wrong.svg"));
    let m = h.metadata().cloned().unwrap_or_default();
    assert_eq!(m.get("note").map(String::as_str), Some("kept"), "{m:?}");
    assert_eq!(m.get("mode").map(String::as_str), Some("33188"), "{m:?}");
    let m = head_full(&format!("{p}generic.png"))
        .metadata()
        .cloned()
        .unwrap_or_default();
    assert_eq!(m.get("uid").map(String::as_str), Some("1000"), "{m:?}");
    let hb = head_full(&format!("{p}big.svg"));
    assert_eq!(hb.content_length(), Some(big.len() as i64));
    assert_eq!(
        hb.metadata()
            .and_then(|m| m.get("note"))
            .map(String::as_str),
        Some("big")
    );
    assert!(
        s3().get(&format!("{p}big.svg")).unwrap() == big,
        "big.svg bytes changed"
    );
    assert_eq!(s3().get(&format!("{p}wrong.svg")).unwrap(), b"<svg/>");
    // good ones untouched: same ETag and Last-Modified
    let good_after = head_full(&format!("{p}good.png"));
    assert_eq!(good_after.e_tag(), good_before.e_tag());
    assert_eq!(good_after.last_modified(), good_before.last_modified());
    let blob_after = head_full(&format!("{p}custom-blob"));
    assert_eq!(blob_after.e_tag(), blob_before.e_tag());
    assert_eq!(blob_after.content_type(), Some("application/x-custom"));
    assert!(s3().multipart_uploads(&p).is_empty());

    // nothing left to do
    let r = bucketfs(&["fix-content-type", &p], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("0 fixed, 6 already right, 0 failed"),
        "{r:?}"
    );
}

// ------------------------------------------------------------------------------------------
// SigV2

#[test]
fn sigv2_requests_are_signed_by_bucketfs_and_verified_by_the_server() {
    if is(Kind::Garage) {
        skip(
            "Garage does not implement Signature Version 2 (400 Unsupported authorization method)",
        );
        return;
    }
    let v2 = [("AUTHENTIK_STORAGE__S3__SIGNATURE_VERSION", Some("s3"))];
    let p = format!("{}/", scratch());
    let r = bucketfs(&["check", "--prefix", &p], &v2);
    assert_eq!(r.code, 0, "{r:?}");

    // a presigned V2 URL (AWSAccessKeyId/Expires/Signature) fetches the object
    let key = format!("{p}media/public/v2.svg");
    s3().put_typed(&key, "<svg/>", Some("image/svg+xml"));
    let u = bucketfs(&["url", &key], &v2);
    assert_eq!(u.code, 0, "{u:?}");
    let url = u.stdout.trim().to_string();
    assert!(
        url.contains("AWSAccessKeyId=") && url.contains("Signature=") && !url.contains("X-Amz-"),
        "{url}"
    );
    let (status, _) = fetch_with_origin(&url, ORIGIN);
    assert_eq!(status, 200, "{url}");

    // a mount signing with V2 writes and reads
    let m = Mount::with(MountOpts {
        spec: format!(":{p}"),
        flags: false,
        env: authentik_env(&v2),
        args: vec![],
    });
    write_close(&m.p("through-v2.txt"), b"signed with v2").unwrap();
    assert_eq!(
        s3().get(&format!("{p}through-v2.txt")).unwrap(),
        b"signed with v2"
    );
    assert_eq!(read(&m.p("through-v2.txt")), b"signed with v2");
    drop(m);

    if is(Kind::Moto) {
        skip("moto accepts any signature: the wrong-secret half (SignatureDoesNotMatch) needs a verifying server");
        return;
    }
    // the server really verifies them: a wrong secret is refused
    let r = bucketfs(
        &["check", "--prefix", &p],
        &[
            v2[0],
            (
                "AUTHENTIK_STORAGE__S3__SECRET_KEY",
                Some("wrong-secret-0000000000"),
            ),
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("SignatureDoesNotMatch"), "{r:?}");
    let tampered = url.replace("Signature=", "Signature=x");
    let (status, _) = fetch_with_origin(&tampered, ORIGIN);
    assert_eq!(status, 403, "tampered V2 URL accepted: {tampered}");
}

// ------------------------------------------------------------------------------------------
// mount from an authentik .env

#[test]
fn mount_configured_only_from_an_authentik_env_file_with_a_file_secret() {
    let s = server();
    let dir = tmpdir("dotenv");
    let secret = dir.join("s3_secret_key");
    fs::write(&secret, format!("{}\n", s.secret_key)).unwrap();
    let env_file = dir.join(".env");
    fs::write(
        &env_file,
        format!(
            "PG_PASS=changeme\nAUTHENTIK_SECRET_KEY=not-the-s3-one\n\
             AUTHENTIK_STORAGE__BACKEND=file\n\
             AUTHENTIK_STORAGE__S3__ENDPOINT={}\n\
             AUTHENTIK_STORAGE__S3__REGION={}\n\
             AUTHENTIK_STORAGE__S3__ADDRESSING_STYLE=path\n\
             AUTHENTIK_STORAGE__S3__ACCESS_KEY={}\n\
             AUTHENTIK_STORAGE__S3__SECRET_KEY=file://{}\n\
             AUTHENTIK_STORAGE__S3__BUCKET_NAME={}\n",
            s.endpoint,
            s.region,
            s.access_key,
            secret.display(),
            s.bucket
        ),
    )
    .unwrap();
    // nothing but the .env: no AWS_* and no AUTHENTIK_* in the environment
    let mut env = authentik_env(&[]);
    env.retain(|(k, _)| !k.starts_with("AUTHENTIK_"));
    for k in [
        "AUTHENTIK_STORAGE__S3__ENDPOINT",
        "AUTHENTIK_STORAGE__S3__REGION",
        "AUTHENTIK_STORAGE__S3__ACCESS_KEY",
        "AUTHENTIK_STORAGE__S3__SECRET_KEY",
        "AUTHENTIK_STORAGE__S3__BUCKET_NAME",
    ] {
        env.push((k.into(), None));
    }
    let p = scratch();
    let env_path = env_file.to_string_lossy().into_owned();
    let mut m = Mount::with(MountOpts {
        spec: format!(":{p}"),
        flags: false,
        env,
        args: vec!["--env-file".into(), env_path],
    });
    fs::create_dir_all(m.p("media/public")).unwrap();
    write_close(&m.p("media/public/logo.png"), b"png bytes").unwrap();
    let key = format!("{p}/media/public/logo.png");
    assert_eq!(s3().get(&key).unwrap(), b"png bytes");
    assert_eq!(s3().content_type(&key), "image/png");
    assert_eq!(ls(&m.p("media/public")), vec!["logo.png"]);
    let st = m.unmount();
    assert!(st.success(), "{}", m.log_text());
    assert!(!m.log_text().contains(&s.secret_key), "secret in the log");
    let _ = fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------------------------------
// the backend switch

#[test]
fn backend_switch_file_to_s3_on_the_same_bucket_with_nothing_copied() {
    let r = bucketfs(&["setup", "--origin", ORIGIN], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    // AUTHENTIK_STORAGE__BACKEND=file: authentik writes /data/media/public/... through the mount
    let root = scratch();
    let m = Mount::with(MountOpts::prefix(&root));
    let icons = m.p("media/public/application-icons");
    fs::create_dir_all(&icons).unwrap();
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>"#.to_vec();
    let png = random_bytes(40_000);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("application-icons/app.svg", svg.clone()),
        ("application-icons/other.png", png.clone()),
        ("flow-backgrounds/bg.jpg", random_bytes(3000)),
    ];
    fs::create_dir_all(m.p("media/public/flow-backgrounds")).unwrap();
    for (name, data) in &files {
        // open("wb"), sequential writes, close
        let path = m.p(&format!("media/public/{name}"));
        let mut f = fs::File::create(&path).unwrap();
        for chunk in data.chunks(4096) {
            std::io::Write::write_all(&mut f, chunk).unwrap();
        }
        drop(f);
    }
    drop(m);

    // AUTHENTIK_STORAGE__BACKEND=s3: list media/public/ and get exactly those names
    let base = format!("{root}/media/public/");
    let listed: Vec<String> = s3()
        .keys(&base)
        .into_iter()
        .map(|k| k[base.len()..].to_string())
        .collect();
    let mut want: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "no markers, nothing else");

    // and the browser fetches each file's URL from authentik's origin
    for (name, data, ct) in [
        ("application-icons/app.svg", &svg, "image/svg+xml"),
        ("application-icons/other.png", &png, "image/png"),
    ] {
        let key = format!("{base}{name}");
        let u = bucketfs(&["url", &key], &[]);
        assert_eq!(u.code, 0, "{u:?}");
        let url = u.stdout.trim();
        let (status, h) = fetch_with_origin(url, ORIGIN);
        assert_eq!(status, 200, "{url}: {h:?}");
        assert_eq!(
            h.get("content-type").map(String::as_str),
            Some(ct),
            "{url}: {h:?}"
        );
        assert_eq!(
            h.get("access-control-allow-origin").map(String::as_str),
            Some(ORIGIN),
            "{url}: {h:?}"
        );
        assert_eq!(
            h.get("content-length").map(String::as_str),
            Some(data.len().to_string().as_str()),
            "{h:?}"
        );
    }
}

#[test]
fn an_unreachable_endpoint_is_one_line_and_fast() {
    let t = std::time::Instant::now();
    let r = bucketfs(
        &["check"],
        &[(
            "AUTHENTIK_STORAGE__S3__ENDPOINT",
            Some("http://127.0.0.1:1"),
        )],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot reach the S3 endpoint http://127.0.0.1:1"),
        "{r:?}"
    );
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn url_follows_custom_domain_secure_urls_and_querystring_auth() {
    let r = bucketfs(
        &["url", "media/public/a b.png"],
        &[
            (
                "AUTHENTIK_STORAGE__S3__CUSTOM_DOMAIN",
                Some("cdn.example.com/files"),
            ),
            ("AUTHENTIK_STORAGE__S3__QUERYSTRING_AUTH", Some("false")),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        "https://cdn.example.com/files/media/public/a%20b.png"
    );
    let r = bucketfs(
        &["url", "media/public/x.png"],
        &[
            (
                "AUTHENTIK_STORAGE__S3__CUSTOM_DOMAIN",
                Some("cdn.example.com"),
            ),
            ("AUTHENTIK_STORAGE__S3__SECURE_URLS", Some("false")),
            ("AUTHENTIK_STORAGE__S3__URL_EXPIRY", Some("minutes=5")),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let u = r.stdout.trim();
    assert!(
        u.starts_with("http://cdn.example.com/media/public/x.png?"),
        "{u}"
    );
    assert!(
        u.contains("X-Amz-Expires=300") && u.contains("X-Amz-Signature="),
        "{u}"
    );
}
