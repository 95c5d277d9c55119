//! `bucketfs setup --origin URL...`: what authentik's S3 guide asks for by hand, done and
//! verified, and idempotent: a private bucket (created if absent, with a LocationConstraint
//! outside us-east-1), a CORS rule letting each origin GET with an Authorization header
//! (MaxAge 3000; merged into the bucket's existing rules), and the IAM policy to grant.
//! Status lines go to stderr, the policy JSON to stdout.

use aws_sdk_s3::types::{
    BucketCannedAcl, BucketLocationConstraint, CorsConfiguration, CorsRule,
    CreateBucketConfiguration,
};

use super::{sdk_error, sdk_status, CmdError, Ctx, SetupArgs};

pub const MAX_AGE: i32 = 3000;

/// A CORS rule, independent of the SDK types (for the pure merge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub id: Option<String>,
    pub methods: Vec<String>,
    pub origins: Vec<String>,
    pub headers: Vec<String>,
    pub expose: Vec<String>,
    pub max_age: Option<i32>,
}

impl Rule {
    fn from_sdk(r: &CorsRule) -> Rule {
        Rule {
            id: r.id().map(str::to_string),
            methods: r.allowed_methods().to_vec(),
            origins: r.allowed_origins().to_vec(),
            headers: r.allowed_headers().to_vec(),
            expose: r.expose_headers().to_vec(),
            max_age: r.max_age_seconds(),
        }
    }

    fn to_sdk(&self) -> Result<CorsRule, CmdError> {
        CorsRule::builder()
            .set_id(self.id.clone())
            .set_allowed_methods(Some(self.methods.clone()))
            .set_allowed_origins(Some(self.origins.clone()))
            .set_allowed_headers((!self.headers.is_empty()).then(|| self.headers.clone()))
            .set_expose_headers((!self.expose.is_empty()).then(|| self.expose.clone()))
            .set_max_age_seconds(self.max_age)
            .build()
            .map_err(|e| CmdError::Failed(format!("CORS rule: {e}")))
    }

    fn is_ours(&self) -> bool {
        self.methods.len() == 1
            && self.methods[0].eq_ignore_ascii_case("GET")
            && self.headers.len() == 1
            && self.headers[0].eq_ignore_ascii_case("authorization")
            && self.max_age == Some(MAX_AGE)
    }
}

/// `pattern` with at most one `*` (as S3 allows in AllowedOrigin/AllowedHeader).
pub fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(s),
        Some((a, b)) => {
            let (s_l, a_l, b_l) = (
                s.to_ascii_lowercase(),
                a.to_ascii_lowercase(),
                b.to_ascii_lowercase(),
            );
            s_l.len() >= a_l.len() + b_l.len() && s_l.starts_with(&a_l) && s_l.ends_with(&b_l)
        }
    }
}

/// Does some rule let `origin` GET with an Authorization header?
pub fn covered(rules: &[Rule], origin: &str) -> bool {
    rules.iter().any(|r| {
        r.methods.iter().any(|m| m.eq_ignore_ascii_case("GET"))
            && r.origins.iter().any(|o| glob(o, origin))
            && r.headers.iter().any(|h| glob(h, "authorization"))
    })
}

/// The rules with every origin covered; None if they already are (nothing to change).
/// Missing origins join an existing rule of bucketfs's shape, else a new rule is appended;
/// other rules are kept as they are.
pub fn merge(rules: &[Rule], origins: &[String]) -> Option<Vec<Rule>> {
    let missing: Vec<&String> = origins.iter().filter(|o| !covered(rules, o)).collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = rules.to_vec();
    match out.iter_mut().find(|r| r.is_ours()) {
        Some(r) => {
            for o in missing {
                if !r.origins.contains(o) {
                    r.origins.push(o.clone());
                }
            }
        }
        None => out.push(Rule {
            id: None,
            methods: vec!["GET".into()],
            origins: missing.into_iter().cloned().collect(),
            headers: vec!["Authorization".into()],
            expose: vec![],
            max_age: Some(MAX_AGE),
        }),
    }
    Some(out)
}

/// `https://authentik.company[:port]`: what a browser sends as `Origin:`.
pub fn validate_origin(o: &str) -> Result<String, CmdError> {
    let bad = || {
        CmdError::Usage(format!(
            "--origin `{o}` is not an origin like https://authentik.company (scheme, host, optional port; no path)"
        ))
    };
    let u = url::Url::parse(o).map_err(|_| bad())?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none()
        || !(u.path().is_empty() || u.path() == "/")
        || u.query().is_some()
    {
        return Err(bad());
    }
    Ok(u.origin().ascii_serialization())
}

/// The IAM policy authentik (and bucketfs) need on `bucket`.
pub fn iam_policy(bucket: &str, acl: bool) -> serde_json::Value {
    let mut object_actions = vec![
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ];
    if acl {
        // PutObject with an x-amz-acl header also needs this
        object_actions.push("s3:PutObjectAcl");
    }
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BucketfsList",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": format!("arn:aws:s3:::{bucket}"),
            },
            {
                "Sid": "BucketfsObjects",
                "Effect": "Allow",
                "Action": object_actions,
                "Resource": format!("arn:aws:s3:::{bucket}/*"),
            }
        ]
    })
}

async fn get_rules(ctx: &Ctx) -> Result<Vec<Rule>, CmdError> {
    match ctx
        .store
        .client()
        .get_bucket_cors()
        .bucket(ctx.bucket())
        .send()
        .await
    {
        Ok(o) => Ok(o.cors_rules().iter().map(Rule::from_sdk).collect()),
        Err(e) => {
            let (status, code) = sdk_status(&e);
            if code == "NoSuchCORSConfiguration" || (status == Some(404) && code.is_empty()) {
                Ok(vec![])
            } else {
                Err(CmdError::S3 {
                    op: "GetBucketCors",
                    msg: format!("{} (setup needs s3:GetBucketCORS)", sdk_error(&e)),
                })
            }
        }
    }
}

pub fn run(a: &SetupArgs) -> Result<i32, CmdError> {
    let origins = a
        .origins
        .iter()
        .map(|o| validate_origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Ctx::new(&a.s3)?;
    ctx.ensure_reachable()?;
    let bucket = ctx.bucket().to_string();
    let client = ctx.store.client().clone();
    let mut changed = false;

    // 1. the bucket
    let head = ctx.rt.block_on(client.head_bucket().bucket(&bucket).send());
    match head {
        Ok(_) => eprintln!("bucket {bucket}: exists"),
        Err(e) if sdk_status(&e).0 == Some(404) => {
            let region = ctx.store.region().to_string();
            let mut req = client
                .create_bucket()
                .bucket(&bucket)
                .acl(BucketCannedAcl::Private);
            if region != "us-east-1" {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_str()))
                        .build(),
                );
            }
            ctx.rt.block_on(req.send()).map_err(|e| CmdError::S3 {
                op: "CreateBucket",
                msg: format!("{} (setup needs s3:CreateBucket)", sdk_error(&e)),
            })?;
            changed = true;
            eprintln!("bucket {bucket}: created (private, region {region})");
        }
        Err(e) => {
            return Err(CmdError::S3 {
                op: "HeadBucket",
                msg: format!(
                    "{} at {}: check the credentials, and that the bucket name is yours",
                    sdk_error(&e),
                    ctx.endpoint_desc()
                ),
            })
        }
    }

    // 2. CORS
    if origins.is_empty() {
        eprintln!("CORS: no --origin given, left as it is (the s3 backend needs one for authentik's origin)");
    } else {
        let rules = ctx.rt.block_on(get_rules(&ctx))?;
        match merge(&rules, &origins) {
            None => eprintln!(
                "CORS: unchanged (GET with Authorization already allowed for {})",
                origins.join(", ")
            ),
            Some(new_rules) => {
                let sdk_rules = new_rules
                    .iter()
                    .map(Rule::to_sdk)
                    .collect::<Result<Vec<_>, _>>()?;
                let conf = CorsConfiguration::builder()
                    .set_cors_rules(Some(sdk_rules))
                    .build()
                    .map_err(|e| CmdError::Failed(format!("CORS configuration: {e}")))?;
                ctx.rt
                    .block_on(
                        client
                            .put_bucket_cors()
                            .bucket(&bucket)
                            .cors_configuration(conf)
                            .send(),
                    )
                    .map_err(|e| CmdError::S3 {
                        op: "PutBucketCors",
                        msg: format!("{} (setup needs s3:PutBucketCORS)", sdk_error(&e)),
                    })?;
                let after = ctx.rt.block_on(get_rules(&ctx))?;
                let not = origins
                    .iter()
                    .filter(|o| !covered(&after, o))
                    .cloned()
                    .collect::<Vec<_>>();
                if !not.is_empty() {
                    return Err(CmdError::Failed(format!(
                        "CORS: the bucket accepted the rule but still does not allow {}",
                        not.join(", ")
                    )));
                }
                changed = true;
                eprintln!(
                    "CORS: now allows GET with Authorization from {} (MaxAge {MAX_AGE}; {} rule(s), verified)",
                    origins.join(", "),
                    after.len()
                );
            }
        }
    }

    // 3. the policy
    eprintln!("IAM policy for the key authentik and bucketfs use (stdout):");
    let policy = iam_policy(&bucket, ctx.settings.object_acl.is_some());
    outln!(
        "{}",
        serde_json::to_string_pretty(&policy).unwrap_or_else(|_| policy.to_string())
    );
    if !changed {
        eprintln!("setup: nothing changed");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], headers: &[&str]) -> Rule {
        Rule {
            methods: vec!["GET".into()],
            origins: origins.iter().map(|s| s.to_string()).collect(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            max_age: Some(MAX_AGE),
            ..Rule::default()
        }
    }

    #[test]
    fn merge_adds_then_is_idempotent() {
        let o = vec!["https://a.example".to_string()];
        let r1 = merge(&[], &o).unwrap();
        assert_eq!(r1, vec![rule(&["https://a.example"], &["Authorization"])]);
        assert_eq!(merge(&r1, &o), None);
        // a second origin joins the same rule
        let o2 = vec!["https://a.example".to_string(), "https://b.example".into()];
        let r2 = merge(&r1, &o2).unwrap();
        assert_eq!(r2.len(), 1);
        assert_eq!(
            r2[0].origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(merge(&r2, &o2), None);
    }

    #[test]
    fn other_rules_are_kept_and_wildcards_count() {
        let put = Rule {
            methods: vec!["PUT".into()],
            origins: vec!["https://up.example".into()],
            ..Rule::default()
        };
        let r = merge(
            std::slice::from_ref(&put),
            &["https://a.example".to_string()],
        )
        .unwrap();
        assert_eq!(r[0], put);
        assert_eq!(r.len(), 2);
        let star = rule(&["https://*.example"], &["*"]);
        assert_eq!(merge(&[star], &["https://a.example".to_string()]), None);
        // GET allowed but not the Authorization header: not covered
        let no_auth = rule(&["https://a.example"], &[]);
        assert!(!covered(&[no_auth], "https://a.example"));
    }

    #[test]
    fn origins_are_validated() {
        assert_eq!(
            validate_origin("https://authentik.company/").unwrap(),
            "https://authentik.company"
        );
        assert_eq!(
            validate_origin("http://localhost:9000").unwrap(),
            "http://localhost:9000"
        );
        assert!(validate_origin("authentik.company").is_err());
        assert!(validate_origin("https://a.example/path").is_err());
    }

    #[test]
    fn policy_names_the_bucket() {
        let p = iam_policy("authentik-data", true);
        assert_eq!(p["Statement"][0]["Resource"], "arn:aws:s3:::authentik-data");
        assert_eq!(
            p["Statement"][1]["Resource"],
            "arn:aws:s3:::authentik-data/*"
        );
        let acts = p["Statement"][1]["Action"].as_array().unwrap();
        assert!(acts.iter().any(|a| a == "s3:PutObjectAcl"));
        let p = iam_policy("b", false);
        let acts = p["Statement"][1]["Action"].as_array().unwrap();
        assert!(!acts.iter().any(|a| a == "s3:PutObjectAcl"));
    }
}
