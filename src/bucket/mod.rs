//! The bucket commands: `config`, `setup`, `check`, `fix-content-type`, `url`, and the
//! resolution of authentik's S3 settings for `mount`. Each command reads the configuration
//! through [`crate::authentik`] (flags > environment > env file) and talks to S3 through the
//! same [`S3Store`] client the mount uses (so SigV2, ACL and credentials behave the same).

/// `println!` that does not panic when stdout is closed (`bucketfs check | head`).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::bucket::out(&format!("{}\n", format_args!($($t)*)))
    };
}

pub mod check;
pub mod fixct;
pub mod http;
pub mod progress;
pub mod setup;
pub mod url;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::authentik::{self, Config, ConfigError, Flags, Inputs, SignatureVersion, Source, Usage};
use crate::config::MountArgs;
use crate::store::s3::{S3Settings, S3Store, StaticCredentials};

/// Exit status of a command that ran and found problems (check), or could not finish.
pub const EXIT_FAILED: i32 = 1;
/// Exit status of bad configuration or usage.
pub const EXIT_CONFIG: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the env file {path}: {err}")]
    EnvFile { path: PathBuf, err: String },
    #[error("no bucket: set AUTHENTIK_STORAGE__S3__BUCKET_NAME (or AUTHENTIK_STORAGE__{usage}__S3__BUCKET_NAME), or name it (--bucket; mount: BUCKET[:PREFIX])")]
    NoBucket { usage: String },
    #[error("{0}")]
    Usage(String),
    #[error("{op}: {msg}")]
    S3 { op: &'static str, msg: String },
    #[error("{0}")]
    Failed(String),
}

impl CmdError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Config(_)
            | CmdError::EnvFile { .. }
            | CmdError::NoBucket { .. }
            | CmdError::Usage(_) => EXIT_CONFIG,
            CmdError::S3 { .. } | CmdError::Failed(_) => EXIT_FAILED,
        }
    }
}

/// Where the S3 settings come from; shared by every bucket command.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// authentik env file (e.g. the `.env` beside its compose file); the environment wins.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Which authentik usage's settings (AUTHENTIK_STORAGE__<USAGE>__S3__* before the global ones).
    #[arg(long, value_enum, default_value_t = Usage::Media)]
    pub usage: Usage,
    /// Bucket (overrides BUCKET_NAME).
    #[arg(long)]
    pub bucket: Option<String>,
    /// S3 endpoint URL (overrides ENDPOINT).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Signing region (overrides REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS profile (overrides SESSION_PROFILE).
    #[arg(long)]
    pub profile: Option<String>,
    /// Path-style requests (overrides ADDRESSING_STYLE).
    #[arg(long)]
    pub force_path_style: bool,
}

impl S3Args {
    fn flags(&self) -> Flags {
        Flags {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            path_style: self.force_path_style,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    /// Origin the browser loads authentik from (`https://authentik.company`); repeatable.
    #[arg(long = "origin", value_name = "URL")]
    pub origins: Vec<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Origin whose CORS answer to check (`https://authentik.company`); repeatable.
    #[arg(long = "origin", value_name = "URL")]
    pub origins: Vec<String>,
    /// Audit the Content-Type of objects under this key prefix only (default: the whole bucket).
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug, Clone)]
pub struct FixArgs {
    /// Only objects whose key starts with PREFIX (default: the whole bucket).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Say what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Objects larger than this (MiB) are copied in parts (S3's CopyObject limit is 5 GiB).
    #[arg(long, default_value_t = 5 * 1024, hide = true)]
    pub multipart_threshold_mib: u64,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug, Clone)]
pub struct UrlArgs {
    /// The file's path below the bucket root (authentik: `media/public/<name>`).
    pub path: String,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Write to stdout; a reader that went away (EPIPE) is not an error worth a panic.
pub fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
}

/// The process environment.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Read authentik's configuration: flags, then `env`, then the env file.
pub fn load_config(
    env: &HashMap<String, String>,
    env_file: Option<&std::path::Path>,
    flags: &Flags,
    usage: Usage,
) -> Result<Config, CmdError> {
    let file_vars = match env_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| CmdError::EnvFile {
                path: p.to_path_buf(),
                err: e.to_string(),
            })?;
            Some((p, authentik::parse_env_file(p, &text)?))
        }
        None => None,
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p);
    let inputs = Inputs {
        env,
        env_file: file_vars.as_ref().map(|(p, v)| (*p, v.as_slice())),
        read_file: &read,
    };
    Ok(authentik::load(&inputs, flags, usage)?)
}

/// Is a non-AWS endpoint in use (ENDPOINT, or the SDK's AWS_ENDPOINT_URL[_S3])?
fn custom_endpoint(c: &Config, env: &HashMap<String, String>) -> bool {
    c.endpoint.is_some()
        || env
            .get("AWS_ENDPOINT_URL_S3")
            .is_some_and(|v| !v.is_empty())
        || env.get("AWS_ENDPOINT_URL").is_some_and(|v| !v.is_empty())
}

/// The store settings for `c` (the bucket must be known).
pub fn s3_settings(
    c: &Config,
    env: &HashMap<String, String>,
    max_attempts: u32,
) -> Result<S3Settings, CmdError> {
    let bucket = c
        .bucket_name
        .as_ref()
        .ok_or_else(|| CmdError::NoBucket {
            usage: c.usage.name().to_ascii_uppercase(),
        })?
        .value
        .clone();
    Ok(S3Settings {
        bucket,
        endpoint: c.endpoint_url(),
        region: c.region().map(str::to_string),
        force_path_style: c.path_style(custom_endpoint(c, env)),
        profile: c.session_profile.as_ref().map(|p| p.value.clone()),
        max_attempts: max_attempts.clamp(1, 20),
        connect_timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(60),
        credentials: c.static_keys().map(|(a, s, t)| StaticCredentials {
            access_key: a.to_string(),
            secret_key: s.expose().to_string(),
            session_token: t.map(|t| t.expose().to_string()),
        }),
        signature_v2: c.signature_version.value == SignatureVersion::V2,
        object_acl: c.object_acl.value.clone(),
    })
}

/// Fill `args.resolved` from authentik's configuration, the mount's flags winning. Warnings
/// go to stderr.
pub fn resolve_mount(args: &mut MountArgs) -> Result<(), CmdError> {
    let env = process_env();
    let (bucket, _) = crate::config::split_spec(args.bucket.as_deref()).map_err(CmdError::Usage)?;
    let flags = Flags {
        bucket,
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        profile: args.profile.clone(),
        path_style: args.force_path_style,
    };
    let c = load_config(&env, args.env_file.as_deref(), &flags, args.usage)?;
    for w in &c.warnings {
        eprintln!("bucketfs: warning: {w}");
    }
    args.resolved = Some(s3_settings(&c, &env, args.max_attempts)?);
    Ok(())
}

/// Configuration and a connected store, for the commands that talk to S3.
pub struct Ctx {
    pub config: Config,
    pub settings: S3Settings,
    pub store: S3Store,
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    pub fn new(a: &S3Args) -> Result<Ctx, CmdError> {
        let env = process_env();
        let config = load_config(&env, a.env_file.as_deref(), &a.flags(), a.usage)?;
        for w in &config.warnings {
            eprintln!("bucketfs: warning: {w}");
        }
        let settings = s3_settings(&config, &env, 4)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| CmdError::Failed(format!("cannot start the I/O runtime: {e}")))?;
        let store = rt.block_on(S3Store::connect(&settings));
        // commands report failures themselves, one line each
        store.set_log_failures(false);
        if let Some(problem) = rt.block_on(store.profile_problem()) {
            return Err(CmdError::Failed(problem));
        }
        Ok(Ctx {
            config,
            settings,
            store,
            rt,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    /// Fail fast, with one line, when the endpoint does not answer at all (instead of every
    /// later call retrying into its timeout).
    pub fn ensure_reachable(&self) -> Result<(), CmdError> {
        use aws_sdk_s3::error::SdkError;
        let r = self.rt.block_on(
            self.store
                .client()
                .list_objects_v2()
                .bucket(self.bucket())
                .max_keys(1)
                .send(),
        );
        match r {
            Err(SdkError::DispatchFailure(_)) | Err(SdkError::TimeoutError(_)) => {
                Err(CmdError::Failed(format!(
                    "cannot reach the S3 endpoint {}: check ENDPOINT (or AWS_ENDPOINT_URL) and that the server is running",
                    self.endpoint_desc()
                )))
            }
            _ => Ok(()),
        }
    }

    /// What the operator should look at when a request cannot reach the store.
    pub fn endpoint_desc(&self) -> String {
        self.settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| format!("AWS S3 ({})", self.store.region()))
    }
}

/// One line for an SDK error: code, message and HTTP status; never credentials.
pub fn sdk_error<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            match (code.is_empty(), msg.is_empty()) {
                (true, _) => format!("HTTP {status}"),
                (false, true) => format!("{code} (HTTP {status})"),
                (false, false) => format!("{code}: {msg} (HTTP {status})"),
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "timed out".into(),
        SdkError::DispatchFailure(_) => "cannot reach the endpoint".into(),
        other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
    }
}

/// HTTP status and error code of an SDK error, if the server answered.
pub fn sdk_status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> (Option<u16>, String)
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(se) => (
            Some(se.raw().status().as_u16()),
            se.err().code().unwrap_or("").to_string(),
        ),
        _ => (e.raw_response().map(|r| r.status().as_u16()), String::new()),
    }
}

// ------------------------------------------------------------------------------------------
// bucketfs config

fn src(s: &Source) -> String {
    s.to_string()
}

/// The `bucketfs config` table: setting, effective value, source. Secrets are redacted.
pub fn config_table(c: &Config, env: &HashMap<String, String>) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |k: &str, v: String, s: String| rows.push((k.to_string(), v, s));
    let opt = |o: &Option<authentik::Sourced<String>>| match o {
        Some(s) => (s.value.clone(), src(&s.source)),
        None => ("(not set)".into(), "default".into()),
    };
    row("usage", c.usage.name().into(), "--usage".into());
    row("backend", c.backend.value.clone(), src(&c.backend.source));
    let (v, s) = opt(&c.bucket_name);
    row("bucket_name", v, s);
    match &c.access_key {
        Some(a) => row(
            "access_key",
            authentik::redact_key_id(&a.value),
            src(&a.source),
        ),
        None => row("access_key", "(not set)".into(), "default".into()),
    }
    match &c.secret_key {
        Some(s) => row("secret_key", "(set, redacted)".into(), src(&s.source)),
        None => row("secret_key", "(not set)".into(), "default".into()),
    }
    match &c.session_token {
        Some(s) => row("session_token", "(set, redacted)".into(), src(&s.source)),
        None => row("session_token", "(not set)".into(), "default".into()),
    }
    let (v, s) = opt(&c.session_profile);
    row("session_profile", v, s);
    let creds = if let Some(p) = &c.session_profile {
        format!("AWS profile `{}`", p.value)
    } else if c.static_keys().is_some() {
        "static keys (ACCESS_KEY/SECRET_KEY)".into()
    } else {
        "AWS credential chain (AWS_ACCESS_KEY_ID…, AWS_PROFILE, web identity, ECS, IMDSv2, SSO)"
            .into()
    };
    row("credentials", creds, "derived".into());
    match &c.region {
        Some(r) => row("region", r.value.clone(), src(&r.source)),
        None => {
            let (v, s) = match env
                .get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION"))
            {
                Some(r) => (r.clone(), "AWS_REGION (AWS SDK)".to_string()),
                None => ("us-east-1".into(), "profile, else us-east-1".into()),
            };
            row("region", v, s)
        }
    }
    match &c.endpoint {
        Some(e) => row("endpoint", e.value.clone(), src(&e.source)),
        None => {
            let aws = env
                .get("AWS_ENDPOINT_URL_S3")
                .map(|v| (v, "AWS_ENDPOINT_URL_S3"))
                .or_else(|| env.get("AWS_ENDPOINT_URL").map(|v| (v, "AWS_ENDPOINT_URL")));
            match (c.endpoint_url(), aws) {
                (Some(u), _) => row("endpoint", u, "USE_SSL=false on AWS".into()),
                (None, Some((v, n))) => row("endpoint", v.clone(), format!("{n} (AWS SDK)")),
                (None, None) => row("endpoint", "AWS S3".into(), "default".into()),
            }
        }
    }
    row(
        "use_ssl",
        c.use_ssl.value.to_string(),
        src(&c.use_ssl.source),
    );
    let style = match c.addressing_style.value {
        authentik::AddressingStyle::Auto => format!(
            "auto ({})",
            if c.path_style(custom_endpoint(c, env)) {
                "path-style: custom endpoint"
            } else {
                "virtual-hosted"
            }
        ),
        authentik::AddressingStyle::Path => "path".into(),
        authentik::AddressingStyle::Virtual => "virtual".into(),
    };
    row("addressing_style", style, src(&c.addressing_style.source));
    let sig = match c.signature_version.value {
        SignatureVersion::V4 => "s3v4",
        SignatureVersion::V2 => "s3 (legacy Signature Version 2)",
    };
    row(
        "signature_version",
        sig.into(),
        src(&c.signature_version.source),
    );
    let (v, s) = opt(&c.custom_domain);
    row("custom_domain", v, s);
    row(
        "secure_urls",
        c.secure_urls.value.to_string(),
        src(&c.secure_urls.source),
    );
    row(
        "querystring_auth",
        c.querystring_auth.value.to_string(),
        src(&c.querystring_auth.source),
    );
    row(
        "url_expiry",
        format!("{} s", c.url_expiry.value.as_secs()),
        src(&c.url_expiry.source),
    );
    row(
        "object_acl",
        c.object_acl
            .value
            .clone()
            .unwrap_or_else(|| "(none: no ACL header)".into()),
        src(&c.object_acl.source),
    );
    rows
}

/// Left-aligned columns.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn run_config(a: &ConfigArgs) -> Result<i32, CmdError> {
    let env = process_env();
    let c = load_config(&env, a.s3.env_file.as_deref(), &a.s3.flags(), a.s3.usage)?;
    for w in &c.warnings {
        eprintln!("bucketfs: warning: {w}");
    }
    let rows: Vec<Vec<String>> = config_table(&c, &env)
        .into_iter()
        .map(|(a, b, c)| vec![a, b, c])
        .collect();
    out(&format_table(&["setting", "value", "source"], &rows));
    Ok(0)
}

/// Run one bucket command; returns the exit status, printing the error (one line) if any.
pub fn run(cmd: &crate::config::Command) -> i32 {
    use crate::config::Command;
    let r = match cmd {
        Command::Config(a) => run_config(a),
        Command::Setup(a) => setup::run(a),
        Command::Check(a) => check::run(a),
        Command::FixContentType(a) => fixct::run(a),
        Command::Url(a) => url::run(a),
        Command::Mount(_) => Err(CmdError::Usage("mount is not a bucket command".into())),
        Command::Migrate(a) => Ok(crate::migrate::run(a)),
        Command::MigrateStatus(a) => Ok(crate::migrate::live::report::run(a)),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bucketfs: {e}");
            e.exit_code()
        }
    }
}
