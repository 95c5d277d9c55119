//! `bucketfs url PATH`: the URL a browser gets for a file, by authentik's s3 backend rules.
//!
//! * The request URL is the GetObject URL of the key: ENDPOINT (or AWS's regional endpoint,
//!   http when USE_SSL=false), path-style or virtual-hosted per ADDRESSING_STYLE.
//! * CUSTOM_DOMAIN (host[:port][/path], no scheme; it stands for the bucket) replaces scheme
//!   and host: SECURE_URLS picks https (default) or http, a leading `/<bucket>` of a
//!   path-style path is dropped, the domain's own path goes in front.
//! * QUERYSTRING_AUTH (default true) presigns that final URL for URL_EXPIRY (default 15
//!   minutes), with SigV4, or SigV2 when SIGNATURE_VERSION=s3; false gives the plain URL.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

use super::{CmdError, Ctx, UrlArgs};
use crate::store::s3::encode_key;

/// What decides a browser URL.
#[derive(Clone, Debug)]
pub struct UrlInputs {
    /// Custom endpoint (`http://127.0.0.1:9000`), or None for AWS.
    pub endpoint: Option<String>,
    pub use_ssl: bool,
    pub region: String,
    pub path_style: bool,
    pub bucket: String,
    pub custom_domain: Option<String>,
    pub secure_urls: bool,
}

/// The unsigned browser URL of `key`.
pub fn plain_url(i: &UrlInputs, key: &str) -> Result<url::Url, String> {
    let enc = encode_key(key);
    let (scheme, host, base) = match &i.endpoint {
        Some(e) => {
            let u = url::Url::parse(e).map_err(|_| format!("`{e}` is not a URL"))?;
            let host = u.host_str().ok_or_else(|| format!("`{e}` has no host"))?;
            let host = match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            (
                u.scheme().to_string(),
                host,
                u.path().trim_end_matches('/').to_string(),
            )
        }
        None => (
            if i.use_ssl { "https" } else { "http" }.to_string(),
            format!("s3.{}.amazonaws.com", i.region),
            String::new(),
        ),
    };
    // a dotted bucket cannot be a TLS host label; an IP address has no subdomains (the SDK
    // sends path-style requests there too)
    let ip_host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
        || host.starts_with('[');
    let virtual_host = !i.path_style && !ip_host && (!i.bucket.contains('.') || scheme != "https");
    let (host, path) = if virtual_host {
        (format!("{}.{host}", i.bucket), format!("{base}/{enc}"))
    } else {
        (host, format!("{base}/{}/{enc}", i.bucket))
    };
    let (scheme, host, path) = match &i.custom_domain {
        Some(cd) => {
            let scheme = if i.secure_urls { "https" } else { "http" };
            let mut path = path;
            let lead = format!("/{}/", i.bucket);
            if path.starts_with(&lead) {
                path = path[i.bucket.len() + 1..].to_string();
            }
            let cb = url::Url::parse(&format!("{scheme}://{}", cd.trim_end_matches('/')))
                .map_err(|_| format!("CUSTOM_DOMAIN `{cd}` is not host[:port][/path]"))?;
            let chost = cb
                .host_str()
                .ok_or_else(|| format!("CUSTOM_DOMAIN `{cd}` has no host"))?;
            let chost = match cb.port() {
                Some(p) => format!("{chost}:{p}"),
                None => chost.to_string(),
            };
            let public = format!("{}{path}", cb.path().trim_end_matches('/'));
            (scheme.to_string(), chost, public)
        }
        None => (scheme, host, path),
    };
    url::Url::parse(&format!("{scheme}://{host}{path}")).map_err(|e| format!("bad URL: {e}"))
}

/// SigV4 query presigning of a GET of `u`.
pub fn presign_v4(
    u: &url::Url,
    creds: &Credentials,
    region: &str,
    expires: Duration,
    now: SystemTime,
) -> Result<url::Url, String> {
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
        SigningSettings, UriPathNormalizationMode,
    };
    let identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing: {e}"))?
        .into();
    let req = SignableRequest::new(
        "GET",
        u.as_str(),
        std::iter::empty(),
        SignableBody::UnsignedPayload,
    )
    .map_err(|e| format!("signing: {e}"))?;
    let (instructions, _) = sign(req, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let mut out = u.clone();
    {
        let mut q = out.query_pairs_mut();
        for (k, v) in instructions.params() {
            q.append_pair(k, v);
        }
    }
    Ok(out)
}

/// SigV2 query presigning (`AWSAccessKeyId`, `Expires`, `Signature`) of a GET of
/// `bucket`/`key` at `u`.
pub fn presign_v2(
    u: &url::Url,
    creds: &Credentials,
    bucket: &str,
    key: &str,
    expires: Duration,
    now: SystemTime,
) -> url::Url {
    let resource = format!("/{bucket}/{}", encode_key(key));
    let exp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + expires.as_secs();
    let q = crate::sigv2::presign_query(
        creds.access_key_id(),
        creds.secret_access_key(),
        creds.session_token(),
        &resource,
        exp,
    );
    let mut out = u.clone();
    out.set_query(Some(&q));
    out
}

/// Inputs from the context.
pub fn inputs(ctx: &Ctx) -> UrlInputs {
    let endpoint = ctx
        .settings
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|e| !e.is_empty());
    UrlInputs {
        endpoint,
        use_ssl: ctx.config.use_ssl.value,
        region: ctx.store.region().to_string(),
        path_style: ctx.settings.force_path_style,
        bucket: ctx.settings.bucket.clone(),
        custom_domain: ctx.config.custom_domain.as_ref().map(|c| c.value.clone()),
        secure_urls: ctx.config.secure_urls.value,
    }
}

/// The browser URL of `key`, presigned unless QUERYSTRING_AUTH is false.
pub fn browser_url(ctx: &Ctx, key: &str) -> Result<String, CmdError> {
    ctx.rt.block_on(browser_url_async(ctx, key))
}

pub async fn browser_url_async(ctx: &Ctx, key: &str) -> Result<String, CmdError> {
    let i = inputs(ctx);
    let u = plain_url(&i, key).map_err(CmdError::Usage)?;
    if !ctx.config.querystring_auth.value {
        return Ok(u.to_string());
    }
    let creds = ctx
        .store
        .credentials()
        .await
        .ok_or_else(|| {
            CmdError::Failed(
                "no credentials to presign with (set ACCESS_KEY/SECRET_KEY or an AWS profile, or QUERYSTRING_AUTH=false)".into(),
            )
        })?;
    let expires = ctx.config.url_expiry.value;
    let now = SystemTime::now();
    let signed = if ctx.settings.signature_v2 {
        presign_v2(&u, &creds, &i.bucket, key, expires, now)
    } else {
        presign_v4(&u, &creds, &i.region, expires, now).map_err(CmdError::Failed)?
    };
    Ok(signed.to_string())
}

pub fn run(a: &UrlArgs) -> Result<i32, CmdError> {
    let key = a.path.trim_start_matches('/');
    if key.is_empty() {
        return Err(CmdError::Usage("PATH is empty".into()));
    }
    let ctx = Ctx::new(&a.s3)?;
    outln!("{}", browser_url(&ctx, key)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> UrlInputs {
        UrlInputs {
            endpoint: Some("http://127.0.0.1:9000".into()),
            use_ssl: true,
            region: "us-east-1".into(),
            path_style: true,
            bucket: "authentik-data".into(),
            custom_domain: None,
            secure_urls: true,
        }
    }

    #[test]
    fn endpoint_path_and_virtual() {
        let k = "media/public/a b+c.svg";
        assert_eq!(
            plain_url(&base(), k).unwrap().as_str(),
            "http://127.0.0.1:9000/authentik-data/media/public/a%20b%2Bc.svg"
        );
        let v = UrlInputs {
            endpoint: Some("https://s3.example.com".into()),
            path_style: false,
            ..base()
        };
        assert_eq!(
            plain_url(&v, "x.png").unwrap().as_str(),
            "https://authentik-data.s3.example.com/x.png"
        );
    }

    #[test]
    fn ip_endpoints_stay_path_style() {
        let v = UrlInputs {
            path_style: false,
            ..base()
        };
        assert_eq!(
            plain_url(&v, "k").unwrap().as_str(),
            "http://127.0.0.1:9000/authentik-data/k"
        );
    }

    #[test]
    fn aws_default_and_plain_http() {
        let a = UrlInputs {
            endpoint: None,
            path_style: false,
            region: "eu-west-1".into(),
            ..base()
        };
        assert_eq!(
            plain_url(&a, "k").unwrap().as_str(),
            "https://authentik-data.s3.eu-west-1.amazonaws.com/k"
        );
        let dotted = UrlInputs {
            bucket: "a.b.c".into(),
            ..a.clone()
        };
        assert_eq!(
            plain_url(&dotted, "k").unwrap().as_str(),
            "https://s3.eu-west-1.amazonaws.com/a.b.c/k"
        );
        let http = UrlInputs {
            use_ssl: false,
            ..a
        };
        assert!(plain_url(&http, "k")
            .unwrap()
            .as_str()
            .starts_with("http://authentik-data.s3.eu-west-1"));
    }

    #[test]
    fn custom_domain_rules() {
        // path-style: the bucket in the path is dropped, the domain carries it
        let c = UrlInputs {
            custom_domain: Some("cdn.example.com/authentik-data/".into()),
            ..base()
        };
        assert_eq!(
            plain_url(&c, "media/x.png").unwrap().as_str(),
            "https://cdn.example.com/authentik-data/media/x.png"
        );
        let c = UrlInputs {
            custom_domain: Some("files.example.com:8443".into()),
            secure_urls: false,
            path_style: false,
            ..base()
        };
        assert_eq!(
            plain_url(&c, "media/x.png").unwrap().as_str(),
            "http://files.example.com:8443/media/x.png"
        );
    }

    #[test]
    fn presigned_v4_has_the_query_and_a_stable_signature() {
        let u = plain_url(&base(), "media/x.png").unwrap();
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = presign_v4(&u, &creds, "us-east-1", Duration::from_secs(900), t).unwrap();
        let q = s.query().unwrap();
        for p in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Fus-east-1%2Fs3%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=",
        ] {
            assert!(q.contains(p), "{p} missing in {q}");
        }
        let again = presign_v4(&u, &creds, "us-east-1", Duration::from_secs(900), t).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn presigned_v2() {
        let u = plain_url(&base(), "photos/puppy.jpg").unwrap();
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "t",
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1175139620 - 900);
        let s = presign_v2(
            &u,
            &creds,
            "johnsmith",
            "photos/puppy.jpg",
            Duration::from_secs(900),
            t,
        );
        assert_eq!(
            s.query(),
            Some("AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D")
        );
    }
}
