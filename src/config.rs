//! Command-line configuration and the pure rules that turn it into the settings of each
//! layer. Credentials never pass through here: the AWS credential chain supplies them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fs::FsConfig;
use crate::keys;
use crate::prefetch::ReadConfig;
use crate::store::s3::S3Settings;
use crate::upload::{MIB, MIN_PART_SIZE};

#[derive(Parser, Debug)]
#[command(
    name = "bucketfs",
    version,
    about = "Mount an S3 bucket as a directory"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the mount variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount [BUCKET[:PREFIX]] at MOUNTPOINT; runs in the foreground until unmounted.
    /// Without BUCKET, authentik's BUCKET_NAME is used (`:PREFIX` keeps it and adds a prefix).
    #[command(allow_missing_positional = true)]
    Mount(MountArgs),
    /// Print the effective S3 settings (authentik's variables, env file, flags) and where each
    /// came from; secrets redacted.
    Config(crate::bucket::ConfigArgs),
    /// Create the bucket (private) if absent, apply a CORS rule for the origins, print the IAM
    /// policy. Idempotent.
    Setup(crate::bucket::SetupArgs),
    /// Prove every S3 action authentik needs with real calls, the CORS answer, and the
    /// Content-Type of every object. Exit 1 if anything fails.
    Check(crate::bucket::CheckArgs),
    /// Rewrite missing or wrong Content-Type headers in place (user metadata kept).
    FixContentType(crate::bucket::FixArgs),
    /// The URL a browser gets for a file, by authentik's rules.
    Url(crate::bucket::UrlArgs),
    /// Copy a local directory to s3://BUCKET[/PREFIX] or back, in the mount's layout:
    /// verified, with Content-Type and POSIX metadata, skipping what is identical, resumable.
    Migrate(crate::migrate::MigrateArgs),
    /// Where a live migration (`mount --migrate-from`) stands: copied, remaining, failures.
    /// Exit 0 once complete, 1 while not.
    MigrateStatus(crate::migrate::live::report::StatusArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Bucket, optionally with a key prefix that becomes the mount root: `bucket:media`.
    /// Default: authentik's BUCKET_NAME; `:media` is that bucket with a prefix.
    #[arg(value_name = "BUCKET[:PREFIX]")]
    pub bucket: Option<String>,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// S3 endpoint URL for non-AWS stores (also read from AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region (also AWS_REGION or the profile; default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS profile to take credentials and region from.
    #[arg(long)]
    pub profile: Option<String>,
    /// Path-style requests (http://host/bucket/key), which most self-hosted stores need.
    #[arg(long)]
    pub force_path_style: bool,
    /// authentik env file to read AUTHENTIK_STORAGE__S3__* from (the environment overrides it).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Which authentik usage's S3 settings to use.
    #[arg(long, value_enum, default_value_t = crate::authentik::Usage::Media)]
    pub usage: crate::authentik::Usage,
    /// Settings resolved from authentik's configuration (set by `main` before mounting).
    #[arg(skip)]
    pub resolved: Option<S3Settings>,
    /// Owner of files and directories without stored ownership (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permissions of files without a stored mode (octal).
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u32,
    /// Permissions of directories (octal).
    #[arg(long, default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u32,
    /// Let users other than the mounting one use the mount (needed for containers).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Refuse to execute programs from the mount (mount option `noexec`).
    #[arg(long)]
    pub noexec: bool,
    /// Seconds that metadata and listings are cached (0 disables the cache).
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
    pub metadata_ttl: f64,
    /// Memory (MiB) for read-ahead and upload buffers together.
    #[arg(long, default_value_t = 240)]
    pub max_memory: u64,
    /// First multipart part size (MiB, at least 5); parts grow for very large files.
    #[arg(long, default_value_t = 8)]
    pub part_size: u64,
    /// Parts of one file uploaded in parallel.
    #[arg(long, default_value_t = 4)]
    pub upload_concurrency: usize,
    /// Largest read-ahead window (MiB).
    #[arg(long, default_value_t = 64)]
    pub max_readahead: u64,
    /// Attempts per S3 request, first included, before the error reaches the caller.
    #[arg(long, default_value_t = 4)]
    pub max_attempts: u32,
    /// Directory where files open for writing are staged (default: a `bucketfs` directory
    /// in /var/cache for root, else in $XDG_CACHE_HOME or ~/.cache, else /tmp).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound (MiB) on staged bytes of all open files; a stream larger than it still uploads.
    #[arg(long, default_value_t = 4096)]
    pub max_cache_size: u64,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9101; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Live migration: serve OLD_DIR (the file backend's directory) for every path the bucket
    /// lacks, and copy it into the bucket in the background; OLD_DIR is never modified.
    #[arg(long, value_name = "OLD_DIR")]
    pub migrate_from: Option<PathBuf>,
    /// Where the live migration keeps its tombstones and status.json (default: under the
    /// cache directory, one per bucket, prefix and OLD_DIR).
    #[arg(long, value_name = "DIR", requires = "migrate_from")]
    pub migrate_state: Option<PathBuf>,
    /// Files the live migration uploads at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub migrate_parallel: usize,
    /// Test hook: pause after each file the live migration copies (milliseconds).
    #[arg(long, default_value_t = 0, hide = true)]
    pub migrate_throttle_ms: u64,
}

/// The cache directory when `--cache-dir` is not given.
pub fn default_cache_dir() -> PathBuf {
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/bucketfs");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("bucketfs");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache/bucketfs");
    }
    std::env::temp_dir().join("bucketfs")
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    let v =
        u32::from_str_radix(t, 8).map_err(|_| format!("`{s}` is not an octal mode like 0644"))?;
    if v > 0o7777 {
        return Err(format!("`{s}` is larger than 07777"));
    }
    Ok(v)
}

pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0 and 86400"
        )),
    }
}

/// `bucket` or `bucket:prefix` → (bucket, normalised prefix).
pub fn split_bucket(s: &str) -> Result<(String, String), String> {
    let (b, p) = s.split_once(':').unwrap_or((s, ""));
    let valid = (3..=63).contains(&b.len())
        && b.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b'_'
        })
        && !b.starts_with(['-', '.'])
        && !b.ends_with(['-', '.']);
    if !valid {
        return Err(format!(
            "`{b}` is not a valid bucket name (3-63 lower-case letters, digits, `-`, `.`)"
        ));
    }
    let prefix = keys::normalize_prefix(p);
    if prefix
        .split('/')
        .filter(|c| !c.is_empty())
        .any(|c| keys::check_name(c.as_bytes()).is_err())
        || p.contains("//")
    {
        return Err(format!("`{p}` is not a usable key prefix"));
    }
    Ok((b.to_string(), prefix))
}

/// The mount's `BUCKET[:PREFIX]` argument: (bucket, if named; normalised prefix).
/// `:prefix` names only a prefix (the bucket comes from the configuration).
pub fn split_spec(spec: Option<&str>) -> Result<(Option<String>, String), String> {
    match spec {
        None => Ok((None, String::new())),
        Some(s) if s.starts_with(':') => {
            let (_, p) = split_bucket(&format!("placeholder{s}"))?;
            Ok((None, p))
        }
        Some(s) => split_bucket(s).map(|(b, p)| (Some(b), p)),
    }
}

impl MountArgs {
    pub fn s3_settings(&self) -> Result<S3Settings, String> {
        if let Some(s) = &self.resolved {
            return Ok(s.clone());
        }
        let bucket = split_spec(self.bucket.as_deref())?.0.ok_or(
            "no bucket: name it (BUCKET[:PREFIX]) or set AUTHENTIK_STORAGE__S3__BUCKET_NAME",
        )?;
        Ok(S3Settings {
            bucket,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            profile: self.profile.clone(),
            max_attempts: self.max_attempts.clamp(1, 20),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
            ..S3Settings::default()
        })
    }

    pub fn fs_config(&self, default_uid: u32, default_gid: u32) -> Result<FsConfig, String> {
        let (_, prefix) = split_spec(self.bucket.as_deref())?;
        if self.part_size * MIB < MIN_PART_SIZE || self.part_size > 5 * 1024 {
            return Err("--part-size must be between 5 and 5120 MiB".into());
        }
        if self.max_memory < 16 {
            return Err("--max-memory must be at least 16 MiB".into());
        }
        // Out-of-range values are refused, not clamped without a word.
        if !(1..=64).contains(&self.upload_concurrency) {
            return Err("--upload-concurrency must be between 1 and 64".into());
        }
        if !(1..=20).contains(&self.max_attempts) {
            return Err("--max-attempts must be between 1 and 20".into());
        }
        if self.max_readahead == 0 {
            return Err("--max-readahead must be at least 1 MiB".into());
        }
        let ttl = Duration::from_secs_f64(self.metadata_ttl);
        Ok(FsConfig {
            prefix,
            uid: self.uid.unwrap_or(default_uid),
            gid: self.gid.unwrap_or(default_gid),
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            ttl,
            miss_ttl: ttl.min(Duration::from_millis(500)),
            part_size: self.part_size * MIB,
            max_inflight_parts: self.upload_concurrency.clamp(1, 64),
            max_memory: self.max_memory * MIB,
            read: ReadConfig {
                max_window: self.max_readahead.max(1) * MIB,
                ..ReadConfig::default()
            },
            cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
            max_cache_size: self.max_cache_size.max(16) * MIB,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix() {
        assert_eq!(split_bucket("data").unwrap(), ("data".into(), "".into()));
        assert_eq!(
            split_bucket("data:media").unwrap(),
            ("data".into(), "media/".into())
        );
        assert_eq!(
            split_bucket("data:/a/b/").unwrap(),
            ("data".into(), "a/b/".into())
        );
        assert!(split_bucket("Bad_Bucket!").is_err());
        assert!(split_bucket("ab").is_err());
        assert!(split_bucket("data:a/../b").is_err());
    }

    #[test]
    fn modes_and_seconds() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("77777").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
    }

    #[test]
    fn cli_parses_a_mount() {
        let c = Cli::try_parse_from([
            "bucketfs",
            "mount",
            "b-1:media",
            "/data",
            "--uid",
            "1000",
            "--allow-other",
            "--metadata-ttl",
            "2",
        ])
        .unwrap();
        let Command::Mount(m) = c.command else {
            panic!("not a mount")
        };
        let f = m.fs_config(0, 0).unwrap();
        assert_eq!((f.uid, f.gid, f.prefix.as_str()), (1000, 0, "media/"));
        assert_eq!(f.ttl, Duration::from_secs(2));
        assert!(m.allow_other);
    }

    #[test]
    fn out_of_range_numbers_are_refused_not_clamped() {
        for (flag, value, msg) in [
            ("--upload-concurrency", "0", "--upload-concurrency"),
            ("--upload-concurrency", "65", "--upload-concurrency"),
            ("--max-attempts", "0", "--max-attempts"),
            ("--max-readahead", "0", "--max-readahead"),
            ("--max-memory", "0", "--max-memory"),
        ] {
            let c =
                Cli::try_parse_from(["bucketfs", "mount", "b-1", "/data", flag, value]).unwrap();
            let Command::Mount(m) = c.command else {
                panic!("not a mount")
            };
            let e = m.fs_config(0, 0).err().unwrap_or_default();
            assert!(e.contains(msg), "{flag} {value}: {e:?}");
        }
    }
}
