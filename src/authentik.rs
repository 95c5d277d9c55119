//! authentik's S3 settings, read by authentik's own rules, so bucketfs and authentik agree on
//! the bucket without a second configuration.
//!
//! * Variables start with `AUTHENTIK_`; the prefix is dropped, `__` nests, names are lower-cased:
//!   `AUTHENTIK_STORAGE__S3__BUCKET_NAME` is `storage.s3.bucket_name`.
//! * Values are parsed as JSON first (`true`, `15`, `"text"`); a string may then be
//!   `env://NAME?default` (another variable) or `file:///path?default` (a file's text, stripped).
//! * Each setting is looked up per usage first (`storage.media.s3.<name>`), then globally
//!   (`storage.s3.<name>`), then its default.
//! * Sources, strongest first: command-line flags, the process environment, the env file
//!   (`--env-file`, e.g. the `.env` beside authentik's compose file). The environment and the env
//!   file are merged into one set of variables first (the environment wins per variable), which
//!   is what authentik's container sees; the usage-before-global rule then applies to that set.
//!
//! Everything here is pure: the caller passes the environment, the env file's text and a file
//! reader, and gets [`Config`] with the source of every value, or an error naming the variable.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub const PREFIX: &str = "AUTHENTIK_";

/// Which of authentik's storage usages the settings are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Usage {
    #[default]
    Media,
    Reports,
}

impl Usage {
    pub fn name(self) -> &'static str {
        match self {
            Usage::Media => "media",
            Usage::Reports => "reports",
        }
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag or argument (its name).
    Flag(&'static str),
    /// A process environment variable.
    Env(String),
    /// A variable of the env file.
    EnvFile { path: PathBuf, var: String },
    /// Not set anywhere: authentik's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(n) => write!(f, "{n}"),
            Source::Env(v) => write!(f, "{v} (environment)"),
            Source::EnvFile { path, var } => write!(f, "{var} ({})", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

impl Source {
    /// The variable the value came from, if any.
    pub fn var(&self) -> Option<&str> {
        match self {
            Source::Env(v) | Source::EnvFile { var: v, .. } => Some(v),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    fn new(value: T, source: Source) -> Self {
        Sourced { value, source }
    }
    fn default(value: T) -> Self {
        Sourced {
            value,
            source: Source::Default,
        }
    }
}

/// A secret: never printed; `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressingStyle {
    Auto,
    Path,
    Virtual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureVersion {
    /// `s3v4` (default)
    V4,
    /// `s3`: legacy Signature Version 2
    V2,
}

/// S3 canned ACLs accepted for OBJECT_ACL.
pub const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The effective S3 settings of one usage.
#[derive(Clone, Debug)]
pub struct Config {
    pub usage: Usage,
    /// `storage.backend` (file or s3), for information.
    pub backend: Sourced<String>,
    pub access_key: Option<Sourced<String>>,
    pub secret_key: Option<Sourced<Secret>>,
    pub session_token: Option<Sourced<Secret>>,
    pub session_profile: Option<Sourced<String>>,
    pub bucket_name: Option<Sourced<String>>,
    pub region: Option<Sourced<String>>,
    pub endpoint: Option<Sourced<String>>,
    pub use_ssl: Sourced<bool>,
    pub addressing_style: Sourced<AddressingStyle>,
    pub signature_version: Sourced<SignatureVersion>,
    pub custom_domain: Option<Sourced<String>>,
    pub secure_urls: Sourced<bool>,
    pub querystring_auth: Sourced<bool>,
    pub url_expiry: Sourced<Duration>,
    /// None: send no ACL header.
    pub object_acl: Sourced<Option<String>>,
    /// Things worth telling the operator (unknown setting names, ignored settings).
    pub warnings: Vec<String>,
}

/// Command-line values, which beat every variable.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub path_style: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}:{line}: expected KEY=VALUE")]
    EnvFileSyntax { path: PathBuf, line: usize },
    #[error("{path}:{line}: unterminated quoted value")]
    EnvFileQuote { path: PathBuf, line: usize },
    #[error("{var}: {msg}")]
    Invalid { var: String, msg: String },
    #[error("{var}: cannot read {path}: {err} (give a default with `file://{path}?default`)")]
    FileRef {
        var: String,
        path: String,
        err: String,
    },
}

fn invalid(var: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_string(),
        msg: msg.into(),
    }
}

// ------------------------------------------------------------------------------------------
// env file

/// Parse a docker-compose style env file: `KEY=VALUE` lines, `export ` allowed, `#` comments,
/// blank lines; values unquoted (trimmed, ` #comment` dropped), `'single'` (literal) or
/// `"double"` (`\n`, `\t`, `\"`, `\\` escapes; may span lines). No `${VAR}` interpolation.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::EnvFileSyntax {
                path: path.to_path_buf(),
                line: lineno,
            });
        };
        let k = k.trim();
        if k.is_empty()
            || !k
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
        {
            return Err(ConfigError::EnvFileSyntax {
                path: path.to_path_buf(),
                line: lineno,
            });
        }
        let v = v.trim_start();
        let value = if let Some(rest) = v.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_string(),
                None => {
                    return Err(ConfigError::EnvFileQuote {
                        path: path.to_path_buf(),
                        line: lineno,
                    })
                }
            }
        } else if let Some(rest) = v.strip_prefix('"') {
            // may continue on following lines
            let mut buf = rest.to_string();
            loop {
                if let Some(end) = closing_quote(&buf) {
                    break unescape_double(&buf[..end]);
                }
                if i >= lines.len() {
                    return Err(ConfigError::EnvFileQuote {
                        path: path.to_path_buf(),
                        line: lineno,
                    });
                }
                buf.push('\n');
                buf.push_str(lines[i]);
                i += 1;
            }
        } else {
            let v = match v.find(" #").or_else(|| v.find("\t#")) {
                Some(c) => &v[..c],
                None => v,
            };
            v.trim_end().to_string()
        };
        out.push((k.to_string(), value));
    }
    Ok(out)
}

fn closing_quote(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// raw variables

/// What the loader reads.
pub struct Inputs<'a> {
    /// The process environment.
    pub env: &'a HashMap<String, String>,
    /// The env file's path and parsed variables.
    pub env_file: Option<(&'a Path, &'a [(String, String)])>,
    /// Reads `file://` references.
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<String>,
}

#[derive(Clone, Debug)]
struct Raw {
    var: String,
    text: String,
    source: Source,
}

/// `AUTHENTIK_STORAGE__S3__X` → `storage.s3.x`.
pub fn dotted(var: &str) -> Option<String> {
    let rest = var.strip_prefix(PREFIX)?;
    Some(rest.replace("__", ".").to_ascii_lowercase())
}

struct Vars<'a> {
    /// dotted path → variable (env file first, then the environment over it)
    by_path: BTreeMap<String, Raw>,
    /// every variable by name, for `env://` (environment over env file)
    all: HashMap<String, String>,
    read_file: &'a dyn Fn(&Path) -> std::io::Result<String>,
}

impl<'a> Vars<'a> {
    fn new(inputs: &Inputs<'a>) -> Self {
        let mut by_path = BTreeMap::new();
        let mut all = HashMap::new();
        if let Some((path, vars)) = inputs.env_file {
            for (k, v) in vars {
                all.insert(k.clone(), v.clone());
                if let Some(d) = dotted(k) {
                    by_path.insert(
                        d,
                        Raw {
                            var: k.clone(),
                            text: v.clone(),
                            source: Source::EnvFile {
                                path: path.to_path_buf(),
                                var: k.clone(),
                            },
                        },
                    );
                }
            }
        }
        // sorted, as authentik walks os.environ, so the last of two spellings wins there too
        let mut env: Vec<(&String, &String)> = inputs.env.iter().collect();
        env.sort();
        for (k, v) in env {
            all.insert(k.clone(), v.clone());
            if let Some(d) = dotted(k) {
                by_path.insert(
                    d,
                    Raw {
                        var: k.clone(),
                        text: v.clone(),
                        source: Source::Env(k.clone()),
                    },
                );
            }
        }
        Vars {
            by_path,
            all,
            read_file: inputs.read_file,
        }
    }

    /// The value of a variable after authentik's rules: JSON first, then `env://` / `file://`.
    fn resolve(&self, raw: &Raw) -> Result<Value, ConfigError> {
        let v = serde_json::from_str::<Value>(&raw.text)
            .unwrap_or_else(|_| Value::String(raw.text.clone()));
        let Value::String(s) = &v else {
            return Ok(v);
        };
        if let Some(rest) = s.strip_prefix("env://") {
            let (name, default) = split_default(rest);
            return Ok(Value::String(
                self.all
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| default.unwrap_or("").to_string()),
            ));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            let (path, default) = split_default(rest);
            return match (self.read_file)(Path::new(path)) {
                Ok(text) => Ok(Value::String(text.trim().to_string())),
                Err(e) => match default {
                    Some(d) => Ok(Value::String(d.to_string())),
                    None => Err(ConfigError::FileRef {
                        var: raw.var.clone(),
                        path: path.to_string(),
                        err: e.to_string(),
                    }),
                },
            };
        }
        Ok(v)
    }

    /// `storage.<usage>.s3.<name>`, then `storage.s3.<name>`; JSON null counts as unset.
    fn lookup(&self, usage: Usage, name: &str) -> Result<Option<(Value, Raw)>, ConfigError> {
        for path in [
            format!("storage.{}.s3.{name}", usage.name()),
            format!("storage.s3.{name}"),
        ] {
            if let Some(raw) = self.by_path.get(&path) {
                let v = self.resolve(raw)?;
                if !v.is_null() {
                    return Ok(Some((v, raw.clone())));
                }
            }
        }
        Ok(None)
    }
}

/// `NAME?default` → (NAME, Some(default)).
fn split_default(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

// ------------------------------------------------------------------------------------------
// typed values

/// Settings whose values must never be echoed.
fn is_secret(name: &str) -> bool {
    matches!(name, "secret_key" | "session_token" | "security_token")
}

fn shown(raw: &Raw, name: &str) -> String {
    if is_secret(name) {
        "(redacted)".into()
    } else {
        format!("{:?}", raw.text)
    }
}

fn as_string(v: &Value, raw: &Raw, name: &str) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // numbers keep their exact text (a long numeric key must not go through f64)
        Value::Number(_) | Value::Bool(_) => Ok(raw.text.trim().to_string()),
        _ => Err(invalid(
            &raw.var,
            format!("expected a string, got {}", shown(raw, name)),
        )),
    }
}

fn as_bool(v: &Value, raw: &Raw, name: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0) > 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            _ => Err(invalid(
                &raw.var,
                format!("expected true or false, got {}", shown(raw, name)),
            )),
        },
        _ => Err(invalid(
            &raw.var,
            format!("expected true or false, got {}", shown(raw, name)),
        )),
    }
}

/// authentik's `timedelta_from_string`: `hours=1;minutes=30` (weeks, days, hours, minutes,
/// seconds, milliseconds; unknown keys ignored). A bare number is taken as seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let mut total = 0f64;
    let mut any = false;
    for pair in s.split(';').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!(
                "`{pair}` is not a duration like `minutes=15` or `hours=1;minutes=30`"
            ));
        };
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a number", v.trim()))?;
        let unit = match k.trim().to_ascii_lowercase().as_str() {
            "weeks" => 604_800.0,
            "days" => 86_400.0,
            "hours" => 3_600.0,
            "minutes" => 60.0,
            "seconds" => 1.0,
            "milliseconds" => 0.001,
            "microseconds" => 0.000_001,
            _ => continue,
        };
        any = true;
        total += v * unit;
    }
    if !any {
        return Err("expected a duration like `minutes=15` or `hours=1;minutes=30`".into());
    }
    secs_to_duration(total)
}

fn secs_to_duration(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 1.0 {
        return Err("the duration must be at least one second".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A bucket name S3 accepts: 3-63 of `a-z 0-9 . -`, starting and ending alphanumeric.
pub fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

/// Known S3 setting names (after `storage[.usage].s3.`).
pub const SETTINGS: &[&str] = &[
    "access_key",
    "secret_key",
    "session_token",
    "security_token",
    "session_profile",
    "bucket_name",
    "region",
    "endpoint",
    "use_ssl",
    "addressing_style",
    "signature_version",
    "custom_domain",
    "secure_urls",
    "querystring_auth",
    "url_expiry",
    "object_acl",
];

/// Read the settings of `usage`.
pub fn load(inputs: &Inputs<'_>, flags: &Flags, usage: Usage) -> Result<Config, ConfigError> {
    let vars = Vars::new(inputs);
    let mut warnings = Vec::new();

    // Unknown names under storage[.usage].s3 are ignored by authentik; say so.
    for (path, raw) in &vars.by_path {
        let rest = path
            .strip_prefix("storage.s3.")
            .or_else(|| path.strip_prefix("storage.media.s3."))
            .or_else(|| path.strip_prefix("storage.reports.s3."));
        if let Some(name) = rest {
            if !SETTINGS.contains(&name) {
                warnings.push(format!(
                    "{}: not an S3 setting authentik knows (ignored)",
                    raw.var
                ));
            }
        }
    }

    let string = |name: &str| -> Result<Option<Sourced<String>>, ConfigError> {
        Ok(match vars.lookup(usage, name)? {
            Some((v, raw)) => Some(Sourced::new(as_string(&v, &raw, name)?, raw.source)),
            None => None,
        })
    };
    let boolean = |name: &str, default: bool| -> Result<Sourced<bool>, ConfigError> {
        Ok(match vars.lookup(usage, name)? {
            Some((v, raw)) => Sourced::new(as_bool(&v, &raw, name)?, raw.source),
            None => Sourced::default(default),
        })
    };
    let nonempty = |o: Option<Sourced<String>>| o.filter(|s| !s.value.trim().is_empty());

    let backend = match vars.by_path.get("storage.backend") {
        Some(raw) => {
            let v = vars.resolve(raw)?;
            Sourced::new(as_string(&v, raw, "backend")?, raw.source.clone())
        }
        None => Sourced::default("file".to_string()),
    };

    let access_key = nonempty(string("access_key")?);
    let secret_key =
        nonempty(string("secret_key")?).map(|s| Sourced::new(Secret(s.value), s.source));
    let session_token = nonempty(string("session_token")?)
        .or(nonempty(string("security_token")?))
        .map(|s| Sourced::new(Secret(s.value), s.source));
    let mut session_profile = nonempty(string("session_profile")?);
    if let Some(p) = &flags.profile {
        session_profile = Some(Sourced::new(p.clone(), Source::Flag("--profile")));
    }

    let mut bucket_name = nonempty(string("bucket_name")?);
    if let Some(b) = &bucket_name {
        if !valid_bucket(&b.value) {
            return Err(invalid(
                b.source.var().unwrap_or("BUCKET_NAME"),
                format!(
                    "`{}` is not a valid bucket name (3-63 lower-case letters, digits, `-`, `.`)",
                    b.value
                ),
            ));
        }
    }
    if let Some(b) = &flags.bucket {
        if !valid_bucket(b) {
            return Err(invalid(
                "--bucket",
                format!(
                    "`{b}` is not a valid bucket name (3-63 lower-case letters, digits, `-`, `.`)"
                ),
            ));
        }
        bucket_name = Some(Sourced::new(b.clone(), Source::Flag("BUCKET argument")));
    }

    let mut region = nonempty(string("region")?);
    if let Some(r) = &flags.region {
        region = Some(Sourced::new(r.clone(), Source::Flag("--region")));
    }

    let mut endpoint = nonempty(string("endpoint")?);
    if let Some(e) = &flags.endpoint {
        endpoint = Some(Sourced::new(e.clone(), Source::Flag("--endpoint")));
    }
    if let Some(e) = &endpoint {
        let ok = url::Url::parse(&e.value)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if ok.is_none() {
            return Err(invalid(
                e.source.var().unwrap_or("--endpoint"),
                format!(
                    "`{}` is not an endpoint URL like https://s3.example.com",
                    e.value
                ),
            ));
        }
    }

    let use_ssl = boolean("use_ssl", true)?;

    let mut addressing_style = match vars.lookup(usage, "addressing_style")? {
        Some((v, raw)) => {
            let s = as_string(&v, &raw, "addressing_style")?;
            let style = match s.trim().to_ascii_lowercase().as_str() {
                "auto" | "" => AddressingStyle::Auto,
                "path" => AddressingStyle::Path,
                "virtual" => AddressingStyle::Virtual,
                _ => {
                    return Err(invalid(
                        &raw.var,
                        format!("`{s}` is not auto, path or virtual"),
                    ))
                }
            };
            Sourced::new(style, raw.source)
        }
        None => Sourced::default(AddressingStyle::Auto),
    };
    if flags.path_style {
        addressing_style = Sourced::new(AddressingStyle::Path, Source::Flag("--force-path-style"));
    }

    let signature_version = match vars.lookup(usage, "signature_version")? {
        Some((v, raw)) => {
            let s = as_string(&v, &raw, "signature_version")?;
            let sv = match s.trim().to_ascii_lowercase().as_str() {
                "s3v4" | "v4" => SignatureVersion::V4,
                "s3" => SignatureVersion::V2,
                _ => {
                    return Err(invalid(
                        &raw.var,
                        format!("`{s}` is not s3v4 (Signature Version 4) or s3 (legacy Signature Version 2)"),
                    ))
                }
            };
            Sourced::new(sv, raw.source)
        }
        None => Sourced::default(SignatureVersion::V4),
    };

    let custom_domain = nonempty(string("custom_domain")?);
    if let Some(c) = &custom_domain {
        if c.value.contains("://") {
            return Err(invalid(
                c.source.var().unwrap_or("CUSTOM_DOMAIN"),
                format!(
                    "`{}` must have no scheme (host[:port][/path]; SECURE_URLS picks https or http)",
                    c.value
                ),
            ));
        }
    }
    let secure_urls = boolean("secure_urls", true)?;
    let querystring_auth = boolean("querystring_auth", true)?;

    let url_expiry = match vars.lookup(usage, "url_expiry")? {
        Some((v, raw)) => {
            let s = as_string(&v, &raw, "url_expiry")?;
            let d = parse_duration(&s).map_err(|m| invalid(&raw.var, m))?;
            if signature_version.value == SignatureVersion::V4 && d > Duration::from_secs(604_800) {
                return Err(invalid(
                    &raw.var,
                    "Signature Version 4 URLs expire after at most 7 days (weeks=1)",
                ));
            }
            Sourced::new(d, raw.source)
        }
        None => Sourced::default(Duration::from_secs(15 * 60)),
    };

    let object_acl = match vars.lookup(usage, "object_acl")? {
        Some((v, raw)) => {
            let s = as_string(&v, &raw, "object_acl")?;
            let s = s.trim().to_string();
            if !s.is_empty() && !CANNED_ACLS.contains(&s.as_str()) {
                return Err(invalid(
                    &raw.var,
                    format!(
                        "`{s}` is not a canned ACL ({}; empty sends no ACL)",
                        CANNED_ACLS.join(", ")
                    ),
                ));
            }
            Sourced::new((!s.is_empty()).then_some(s), raw.source)
        }
        None => Sourced::default(Some("private".to_string())),
    };

    if session_profile.is_none() {
        match (&access_key, &secret_key) {
            (Some(a), None) => {
                return Err(invalid(
                    a.source.var().unwrap_or("ACCESS_KEY"),
                    "an access key is set but no SECRET_KEY",
                ))
            }
            (None, Some(s)) => {
                return Err(invalid(
                    s.source.var().unwrap_or("SECRET_KEY"),
                    "a secret key is set but no ACCESS_KEY",
                ))
            }
            _ => {}
        }
    } else if access_key.is_some() || secret_key.is_some() {
        warnings.push(
            "SESSION_PROFILE is set: the profile's credentials are used, ACCESS_KEY/SECRET_KEY are ignored (as in authentik)".into(),
        );
    }
    if endpoint.is_some() && use_ssl.source != Source::Default {
        warnings.push("USE_SSL is ignored when ENDPOINT is set (its scheme decides)".into());
    }

    Ok(Config {
        usage,
        backend,
        access_key,
        secret_key,
        session_token,
        session_profile,
        bucket_name,
        region,
        endpoint,
        use_ssl,
        addressing_style,
        signature_version,
        custom_domain,
        secure_urls,
        querystring_auth,
        url_expiry,
        object_acl,
        warnings,
    })
}

impl Config {
    /// Static keys, unless a profile replaces them (authentik: SESSION_PROFILE wins).
    pub fn static_keys(&self) -> Option<(&str, &Secret, Option<&Secret>)> {
        if self.session_profile.is_some() {
            return None;
        }
        match (&self.access_key, &self.secret_key) {
            (Some(a), Some(s)) => Some((
                &a.value,
                &s.value,
                self.session_token.as_ref().map(|t| &t.value),
            )),
            _ => None,
        }
    }

    /// The signing region: REGION, else None (the SDK's chain: AWS_REGION, profile, us-east-1).
    pub fn region(&self) -> Option<&str> {
        self.region.as_ref().map(|r| r.value.as_str())
    }

    /// The endpoint requests go to: ENDPOINT; else, with USE_SSL=false, AWS's plain-http
    /// endpoint of the region; else None (the SDK's choice: AWS_ENDPOINT_URL or AWS).
    pub fn endpoint_url(&self) -> Option<String> {
        if let Some(e) = &self.endpoint {
            return Some(e.value.trim_end_matches('/').to_string());
        }
        if !self.use_ssl.value {
            let r = self.region().unwrap_or("us-east-1");
            return Some(format!("http://s3.{r}.amazonaws.com"));
        }
        None
    }

    /// Path-style requests? `auto` means virtual-hosted on AWS and path-style on a custom
    /// endpoint (what self-hosted stores need), as boto3 does.
    pub fn path_style(&self, custom_endpoint: bool) -> bool {
        match self.addressing_style.value {
            AddressingStyle::Path => true,
            AddressingStyle::Virtual => false,
            AddressingStyle::Auto => custom_endpoint,
        }
    }
}

/// A redacted view of an access key id: the first 4 characters and the length.
pub fn redact_key_id(k: &str) -> String {
    let head: String = k.chars().take(4).collect();
    format!("{head}… ({} chars)", k.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_files(_: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let e = env(pairs);
        load(
            &Inputs {
                env: &e,
                env_file: None,
                read_file: &no_files,
            },
            &Flags::default(),
            Usage::Media,
        )
    }

    #[test]
    fn defaults() {
        let c = load_env(&[]).unwrap();
        assert_eq!(c.backend.value, "file");
        assert!(c.bucket_name.is_none() && c.access_key.is_none() && c.endpoint.is_none());
        assert!(c.use_ssl.value && c.secure_urls.value && c.querystring_auth.value);
        assert_eq!(c.addressing_style.value, AddressingStyle::Auto);
        assert_eq!(c.signature_version.value, SignatureVersion::V4);
        assert_eq!(c.url_expiry.value, Duration::from_secs(900));
        assert_eq!(c.object_acl.value.as_deref(), Some("private"));
        assert_eq!(c.object_acl.source, Source::Default);
        assert!(c.static_keys().is_none());
    }

    #[test]
    fn per_usage_before_global() {
        let c = load_env(&[
            ("AUTHENTIK_STORAGE__S3__BUCKET_NAME", "global"),
            ("AUTHENTIK_STORAGE__MEDIA__S3__BUCKET_NAME", "media-bucket"),
            (
                "AUTHENTIK_STORAGE__REPORTS__S3__BUCKET_NAME",
                "reports-bucket",
            ),
            ("AUTHENTIK_STORAGE__S3__REGION", "eu-west-1"),
        ])
        .unwrap();
        let b = c.bucket_name.unwrap();
        assert_eq!(b.value, "media-bucket");
        assert_eq!(
            b.source,
            Source::Env("AUTHENTIK_STORAGE__MEDIA__S3__BUCKET_NAME".into())
        );
        assert_eq!(c.region.unwrap().value, "eu-west-1");
    }

    #[test]
    fn json_first_values() {
        let c = load_env(&[
            ("AUTHENTIK_STORAGE__S3__USE_SSL", "false"),
            ("AUTHENTIK_STORAGE__S3__SECURE_URLS", "0"),
            ("AUTHENTIK_STORAGE__S3__QUERYSTRING_AUTH", "\"false\""),
            ("AUTHENTIK_STORAGE__S3__BUCKET_NAME", "\"quoted-bucket\""),
            (
                "AUTHENTIK_STORAGE__S3__ACCESS_KEY",
                "12345678901234567890123",
            ),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", "s"),
            ("AUTHENTIK_STORAGE__S3__URL_EXPIRY", "hours=1;minutes=30"),
        ])
        .unwrap();
        assert!(!c.use_ssl.value && !c.secure_urls.value && !c.querystring_auth.value);
        assert_eq!(c.bucket_name.unwrap().value, "quoted-bucket");
        // a long number keeps its digits
        assert_eq!(c.access_key.unwrap().value, "12345678901234567890123");
        assert_eq!(c.url_expiry.value, Duration::from_secs(5400));
    }

    #[test]
    fn env_and_file_references() {
        let e = env(&[
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "env://MY_KEY"),
            ("MY_KEY", "AKIAEXAMPLE"),
            (
                "AUTHENTIK_STORAGE__S3__SECRET_KEY",
                "file:///run/secrets/s3?ignored",
            ),
            (
                "AUTHENTIK_STORAGE__S3__REGION",
                "env://NOT_SET?eu-central-1",
            ),
            ("AUTHENTIK_STORAGE__S3__SESSION_TOKEN", "file:///missing?"),
        ]);
        let read = |p: &Path| {
            if p == Path::new("/run/secrets/s3") {
                Ok("  top-secret\n".to_string())
            } else {
                no_files(p)
            }
        };
        let c = load(
            &Inputs {
                env: &e,
                env_file: None,
                read_file: &read,
            },
            &Flags::default(),
            Usage::Media,
        )
        .unwrap();
        assert_eq!(c.access_key.unwrap().value, "AKIAEXAMPLE");
        assert_eq!(c.secret_key.as_ref().unwrap().value.expose(), "top-secret");
        assert_eq!(c.region.unwrap().value, "eu-central-1");
        // an unreadable file with an empty default is unset
        assert!(c.session_token.is_none());
        // no default: an error naming the variable, never the secret
        let err = load(
            &Inputs {
                env: &env(&[
                    ("AUTHENTIK_STORAGE__S3__SECRET_KEY", "file:///nope"),
                    ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "a"),
                ]),
                env_file: None,
                read_file: &no_files,
            },
            &Flags::default(),
            Usage::Media,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("AUTHENTIK_STORAGE__S3__SECRET_KEY: cannot read /nope"));
    }

    #[test]
    fn precedence_flags_env_file() {
        let file_vars = parse_env_file(
            Path::new(".env"),
            "AUTHENTIK_STORAGE__S3__BUCKET_NAME=from-file\nAUTHENTIK_STORAGE__S3__REGION=file-region\nAUTHENTIK_STORAGE__S3__ENDPOINT=http://file:9000\n",
        )
        .unwrap();
        let e = env(&[
            ("AUTHENTIK_STORAGE__S3__REGION", "env-region"),
            ("AUTHENTIK_STORAGE__S3__ENDPOINT", "http://env:9000"),
        ]);
        let flags = Flags {
            endpoint: Some("http://flag:9000".into()),
            ..Flags::default()
        };
        let c = load(
            &Inputs {
                env: &e,
                env_file: Some((Path::new(".env"), &file_vars)),
                read_file: &no_files,
            },
            &flags,
            Usage::Media,
        )
        .unwrap();
        let b = c.bucket_name.unwrap();
        assert_eq!(b.value, "from-file");
        assert_eq!(
            b.source,
            Source::EnvFile {
                path: ".env".into(),
                var: "AUTHENTIK_STORAGE__S3__BUCKET_NAME".into()
            }
        );
        assert_eq!(c.region.unwrap().value, "env-region");
        let ep = c.endpoint.unwrap();
        assert_eq!(
            (ep.value.as_str(), ep.source),
            ("http://flag:9000", Source::Flag("--endpoint"))
        );
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "AUTHENTIK_STORAGE__S3__USE_SSL",
                "maybe",
                "expected true or false",
            ),
            (
                "AUTHENTIK_STORAGE__MEDIA__S3__ADDRESSING_STYLE",
                "sideways",
                "auto, path or virtual",
            ),
            ("AUTHENTIK_STORAGE__S3__SIGNATURE_VERSION", "v3", "s3v4"),
            (
                "AUTHENTIK_STORAGE__S3__OBJECT_ACL",
                "secret-ish",
                "canned ACL",
            ),
            ("AUTHENTIK_STORAGE__S3__URL_EXPIRY", "soon", "duration"),
            ("AUTHENTIK_STORAGE__S3__URL_EXPIRY", "weeks=2", "7 days"),
            (
                "AUTHENTIK_STORAGE__S3__ENDPOINT",
                "s3.example.com",
                "endpoint URL",
            ),
            (
                "AUTHENTIK_STORAGE__S3__CUSTOM_DOMAIN",
                "https://cdn.example.com",
                "no scheme",
            ),
            (
                "AUTHENTIK_STORAGE__S3__BUCKET_NAME",
                "Bad_Bucket",
                "bucket name",
            ),
            (
                "AUTHENTIK_STORAGE__S3__BUCKET_NAME",
                "[1,2]",
                "expected a string",
            ),
        ];
        for (var, val, want) in cases {
            let err = load_env(&[(var, val)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}: ")), "{err}");
            assert!(err.contains(want), "{var}={val}: {err}");
        }
        // a secret's value is never echoed
        let err = load_env(&[
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "a"),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", "{\"x\": \"hunter2\"}"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SECRET_KEY") && !err.contains("hunter2"),
            "{err}"
        );
        let err = load_env(&[("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "a")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no SECRET_KEY"), "{err}");
    }

    #[test]
    fn acl_empty_means_no_header_and_signature_v2() {
        let c = load_env(&[
            ("AUTHENTIK_STORAGE__S3__OBJECT_ACL", ""),
            ("AUTHENTIK_STORAGE__S3__SIGNATURE_VERSION", "s3"),
            ("AUTHENTIK_STORAGE__S3__SECURITY_TOKEN", "tok"),
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "a"),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", "b"),
        ])
        .unwrap();
        assert_eq!(c.object_acl.value, None);
        assert_eq!(c.signature_version.value, SignatureVersion::V2);
        let (a, s, t) = c.static_keys().unwrap();
        assert_eq!(
            (a, s.expose(), t.map(Secret::expose)),
            ("a", "b", Some("tok"))
        );
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
    }

    #[test]
    fn profile_replaces_keys_and_unknown_names_warn() {
        let c = load_env(&[
            ("AUTHENTIK_STORAGE__S3__SESSION_PROFILE", "prod"),
            ("AUTHENTIK_STORAGE__S3__ACCESS_KEY", "a"),
            ("AUTHENTIK_STORAGE__S3__SECRET_KEY", "b"),
            ("AUTHENTIK_STORAGE__S3__ACESS_KEY", "typo"),
        ])
        .unwrap();
        assert!(c.static_keys().is_none());
        assert!(c.warnings.iter().any(|w| w.contains("ACESS_KEY")));
        assert!(c.warnings.iter().any(|w| w.contains("SESSION_PROFILE")));
    }

    #[test]
    fn endpoint_ssl_and_addressing() {
        let c = load_env(&[("AUTHENTIK_STORAGE__S3__USE_SSL", "false")]).unwrap();
        assert_eq!(
            c.endpoint_url().as_deref(),
            Some("http://s3.us-east-1.amazonaws.com")
        );
        assert!(!c.path_style(false));
        let c = load_env(&[("AUTHENTIK_STORAGE__S3__ENDPOINT", "http://127.0.0.1:9000/")]).unwrap();
        assert_eq!(c.endpoint_url().as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.path_style(true));
        let c = load_env(&[("AUTHENTIK_STORAGE__S3__ADDRESSING_STYLE", "virtual")]).unwrap();
        assert!(!c.path_style(true));
    }

    #[test]
    fn env_file_syntax() {
        let p = Path::new("/x/.env");
        let v = parse_env_file(
            p,
            "# authentik\n\nPG_PASS=abc # comment\nexport A='lit # not comment'\nB=\"two\\nlines\"\nC=\"multi\nline\"\nD=a#b\nE=\n",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("PG_PASS".into(), "abc".into()),
                ("A".into(), "lit # not comment".into()),
                ("B".into(), "two\nlines".into()),
                ("C".into(), "multi\nline".into()),
                ("D".into(), "a#b".into()),
                ("E".into(), "".into()),
            ]
        );
        assert_eq!(
            parse_env_file(p, "OK=1\nnot a line\n").unwrap_err(),
            ConfigError::EnvFileSyntax {
                path: p.into(),
                line: 2
            }
        );
        assert!(matches!(
            parse_env_file(p, "A=\"open\n"),
            Err(ConfigError::EnvFileQuote { line: 1, .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("minutes=15"), Ok(Duration::from_secs(900)));
        assert_eq!(
            parse_duration("days=1;foo=3"),
            Ok(Duration::from_secs(86400))
        );
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("foo=3").is_err());
        assert!(parse_duration("seconds=0").is_err());
    }
}
