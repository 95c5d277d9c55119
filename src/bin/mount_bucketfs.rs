//! `mount.bucketfs`: the mount(8) helper, so that an `/etc/fstab` line such as
//!
//! ```text
//! authentik-data  /data  bucketfs  _netdev,allow_other,uid=1000,gid=1000  0 0
//! ```
//!
//! and `mount /data` work. mount(8) runs `/sbin/mount.bucketfs SPEC DIR [-sfnv] -o OPTIONS` and
//! expects it to return once the file system is mounted; this helper starts `bucketfs mount` as
//! a daemon (own session, stdin closed), waits for its `READY=1` on a private notify socket (the
//! daemon sends it only once the mount answers), and exits 0 — or prints why it failed and
//! exits 32, as mount helpers do.
//!
//! Options: every generic mount option is accepted (`defaults`, `_netdev`, `nofail`, `noauto`,
//! `user`, `noatime`, `nodev`, `nosuid`, ... — bucketfs mounts are always nodev,nosuid), `ro`/`rw`,
//! `noexec`/`exec`; `path_style` (also `use_path_request_style`, s3fs' name) is
//! `--force-path-style`; any other `name=value` or `name` becomes `--name value` / `--name` of
//! `bucketfs mount` (underscores as dashes: `uid=1000`, `allow_other`, `endpoint=URL`,
//! `max_memory=256`, `metrics_addr=127.0.0.1:9101`, ...). Options of the helper itself:
//!
//! * `environment_file=PATH` — `KEY=VALUE` lines (systemd `EnvironmentFile=` syntax) put in the
//!   daemon's environment: credentials (`AWS_ACCESS_KEY_ID`, ..., or authentik's
//!   `AUTHENTIK_STORAGE__S3__*`) and `BUCKETFS_OPTIONS` (more command-line flags). Default:
//!   `/etc/bucketfs/<mount point, systemd-escaped>.env` if it exists (`/data` → `data.env`) — the
//!   file the `bucketfs@.service` unit reads, so fstab and systemd share one configuration.
//! * `log_file=PATH` — append the daemon's log there. Default: the helper's stderr (the journal
//!   when systemd mounts from fstab), or `/var/log/bucketfs/<escaped>.log` when that is a terminal.
//! * `ready_timeout=SECONDS` — how long to wait for the mount (default 120).
//!
//! The `bucketfs` binary is the one next to this helper (symlinks resolved) or in `../bin`, else
//! `bucketfs` on PATH; `BUCKETFS_BIN` overrides.

use std::ffi::OsString;
use std::fs;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bucketfs::notify::{self, Listener};

/// mount(8)'s helper exit statuses.
const EX_USAGE: u8 = 1;
const EX_SYSERR: u8 = 2;
const EX_FAIL: u8 = 32;

const DEFAULT_CONFIG_DIR: &str = "/etc/bucketfs";
const DEFAULT_LOG_DIR: &str = "/var/log/bucketfs";

#[derive(Debug, thiserror::Error)]
enum HelperError {
    #[error("{0}\nusage: mount.bucketfs BUCKET[:PREFIX] MOUNTPOINT [-sfnvrw] [-o OPTIONS]")]
    Usage(String),
    #[error("option `{0}`: {1}")]
    BadOption(String, String),
    #[error("{path}: {msg}")]
    EnvFile { path: PathBuf, msg: String },
    #[error("{0}")]
    System(String),
    #[error("{0}")]
    Failed(String),
}

impl HelperError {
    fn status(&self) -> u8 {
        match self {
            HelperError::Usage(_) | HelperError::BadOption(..) | HelperError::EnvFile { .. } => {
                EX_USAGE
            }
            HelperError::System(_) => EX_SYSERR,
            HelperError::Failed(_) => EX_FAIL,
        }
    }
}

/// What mount(8) asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    spec: String,
    dir: PathBuf,
    options: Vec<String>,
    fake: bool,
    verbose: bool,
    read_only: bool,
}

/// The plan: the daemon's arguments and the helper's own settings.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    args: Vec<String>,
    environment_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    ready_timeout: Option<Duration>,
}

fn parse_argv(argv: &[String]) -> Result<Invocation, HelperError> {
    let mut inv = Invocation::default();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if let Some(rest) = a.strip_prefix("-o") {
            let v = if rest.is_empty() {
                i += 1;
                argv.get(i - 1)
                    .cloned()
                    .ok_or_else(|| HelperError::Usage("-o needs a value".into()))?
            } else {
                rest.to_string()
            };
            inv.options.extend(split_options(&v)?);
        } else if a == "-t" {
            i += 1; // the type (bucketfs) is implied
        } else if a == "-N" {
            return Err(HelperError::Usage(
                "-N (another mount namespace) is not supported".into(),
            ));
        } else if a.len() > 1 && a.starts_with('-') && !a.starts_with("--") {
            for c in a[1..].chars() {
                match c {
                    'f' => inv.fake = true,
                    'v' => inv.verbose = true,
                    'r' => inv.read_only = true,
                    'w' => inv.read_only = false,
                    's' | 'n' => {} // sloppy: our options are checked by bucketfs; no mtab
                    _ => return Err(HelperError::Usage(format!("unknown flag -{c}"))),
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    match positional.as_slice() {
        [spec, dir] => {
            inv.spec = spec.clone();
            inv.dir = PathBuf::from(dir);
        }
        _ => {
            return Err(HelperError::Usage(format!(
                "expected BUCKET[:PREFIX] and MOUNTPOINT, got {positional:?}"
            )))
        }
    }
    Ok(inv)
}

/// Splits a mount option string at commas outside double quotes (libmount's quoting).
fn split_options(s: &str) -> Result<Vec<String>, HelperError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(HelperError::BadOption(s.into(), "unbalanced quote".into()));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Generic options of mount(8) and the VFS that need nothing from bucketfs (bucketfs mounts
/// are always nodev,nosuid; atime is never written to S3).
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "async",
    "sync",
    "dirsync",
    "mand",
    "nomand",
    "silent",
    "loud",
    "iversion",
    "noiversion",
];

fn is_ignored(name: &str) -> bool {
    IGNORED.contains(&name)
        || name.starts_with("x-")
        || name.starts_with("comment=")
        || name.starts_with("context=")
        || name.starts_with("fscontext=")
        || name.starts_with("defcontext=")
        || name.starts_with("rootcontext=")
}

fn plan(inv: &Invocation) -> Result<Plan, HelperError> {
    let mut p = Plan {
        args: vec!["mount".into(), inv.spec.clone(), path_arg(&inv.dir)?],
        ..Plan::default()
    };
    let mut read_only = inv.read_only;
    let mut noexec = false;
    for o in &inv.options {
        let (name, value) = match o.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (o.as_str(), None),
        };
        let need = |what: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| HelperError::BadOption(o.clone(), format!("needs ={what}")))
        };
        match name {
            _ if is_ignored(o) => {}
            "ro" => read_only = true,
            "noexec" => noexec = true,
            "exec" => noexec = false,
            "path_style" | "use_path_request_style" | "force_path_style" => {
                p.args.push("--force-path-style".into())
            }
            "environment_file" => p.environment_file = Some(PathBuf::from(need("PATH")?)),
            "log_file" => p.log_file = Some(PathBuf::from(need("PATH")?)),
            "ready_timeout" => {
                let v = need("SECONDS")?;
                let s: u64 = v.parse().map_err(|_| {
                    HelperError::BadOption(o.clone(), "expected a number of seconds".into())
                })?;
                p.ready_timeout = Some(Duration::from_secs(s.max(1)));
            }
            "" => return Err(HelperError::BadOption(o.clone(), "empty name".into())),
            _ => {
                if name.starts_with('-')
                    || !name
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    return Err(HelperError::BadOption(
                        o.clone(),
                        "not an option name".into(),
                    ));
                }
                p.args.push(format!("--{}", name.replace('_', "-")));
                if let Some(v) = value {
                    p.args.push(v.to_string());
                }
            }
        }
    }
    if read_only {
        p.args.push("--read-only".into());
    }
    if noexec {
        p.args.push("--noexec".into());
    }
    Ok(p)
}

/// `base` (`mount SPEC DIR` and the flags from fstab) with the flags of `BUCKETFS_OPTIONS`
/// that fstab does not set (fstab wins; bucketfs refuses a flag given twice).
fn merge_flags(base: &[String], extra: &str) -> Vec<String> {
    let name = |t: &str| t.split('=').next().unwrap_or(t).to_string();
    let given: Vec<String> = base
        .iter()
        .skip(3)
        .filter(|t| t.starts_with("--"))
        .map(|t| name(t))
        .collect();
    let mut out: Vec<String> = base.iter().take(3).cloned().collect();
    let tokens: Vec<&str> = extra.split_whitespace().collect();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        // a flag and, unless it is `--flag=value` or the next token is a flag, its value
        let mut end = i + 1;
        if t.starts_with("--") && !t.contains('=') {
            if let Some(v) = tokens.get(i + 1) {
                if !v.starts_with("--") {
                    end = i + 2;
                }
            }
        }
        if !(t.starts_with("--") && given.contains(&name(t))) {
            out.extend(tokens[i..end].iter().map(|s| s.to_string()));
        }
        i = end;
    }
    out.extend(base.iter().skip(3).cloned());
    out
}

fn path_arg(p: &Path) -> Result<String, HelperError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| HelperError::Usage(format!("{} is not UTF-8", p.display())))
}

/// `systemd-escape --path`: `/data` → `data`, `/srv/authentik data` → `srv-authentik\x20data`.
fn systemd_escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    let mut prev_slash = false;
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' if prev_slash => continue,
            b'/' => {
                out.push('-');
                prev_slash = true;
                continue;
            }
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
        prev_slash = false;
    }
    out
}

/// systemd `EnvironmentFile=` syntax: `KEY=VALUE` lines, `#`/`;` comments, optional quotes.
fn parse_environment_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, HelperError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |msg: &str| HelperError::EnvFile {
            path: path.to_path_buf(),
            msg: format!("line {}: {msg}", n + 1),
        };
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| err("expected KEY=VALUE"))?;
        let k = k.trim();
        let valid = k
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !valid {
            return Err(err("not a variable name"));
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The daemon binary: `BUCKETFS_BIN`, else `bucketfs` beside this helper, else from PATH.
fn daemon_binary() -> PathBuf {
    if let Some(b) = std::env::var_os("BUCKETFS_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(b);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| fs::canonicalize(e).ok())
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        // beside the helper, or PREFIX/bin for a helper installed as PREFIX/sbin/mount.bucketfs
        for candidate in [dir.join("bucketfs"), dir.join("../bin/bucketfs")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("bucketfs")
}

/// A private directory for the notify socket: under /run when we may write there (early
/// boot: /tmp may not be mounted yet), else the temp dir.
fn private_dir() -> Result<PathBuf, HelperError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("mount.bucketfs.{}.{nanos:09}", std::process::id());
    let mut last = None;
    for base in [PathBuf::from("/run"), std::env::temp_dir()] {
        let d = base.join(&name);
        match fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .map(|()| d.clone())
        {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(format!("{}: {e}", d.display())),
        }
    }
    Err(HelperError::System(format!(
        "cannot create a private directory: {}",
        last.unwrap_or_default()
    )))
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(argv: &[String]) -> Result<(), HelperError> {
    let inv = parse_argv(argv)?;
    let plan = plan(&inv)?;
    let escaped = systemd_escape_path(&inv.dir);
    let env_path = match &plan.environment_file {
        Some(p) => Some(p.clone()),
        None => {
            let d = Path::new(DEFAULT_CONFIG_DIR).join(format!("{escaped}.env"));
            d.is_file().then_some(d)
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(p) = &env_path {
        let text = fs::read_to_string(p).map_err(|e| HelperError::EnvFile {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        env = parse_environment_file(p, &text)?;
    }
    let extra = env
        .iter()
        .rev()
        .find(|(k, _)| k == "BUCKETFS_OPTIONS")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let args = merge_flags(&plan.args, extra);
    let bin = daemon_binary();
    if inv.verbose {
        // The command line never holds secrets (they come from the environment file).
        eprintln!(
            "mount.bucketfs: {} {}{}",
            bin.display(),
            args.join(" "),
            env_path
                .as_ref()
                .map(|p| format!(" (environment from {})", p.display()))
                .unwrap_or_default()
        );
    }
    if inv.fake {
        return Ok(());
    }

    // Where the daemon's log goes.
    let log_path = match &plan.log_file {
        Some(p) => Some(p.clone()),
        None if std::io::stderr().is_terminal() => {
            Some(Path::new(DEFAULT_LOG_DIR).join(format!("{escaped}.log")))
        }
        None => None,
    };
    let (stderr, log_start) = match &log_path {
        Some(p) => {
            if let Some(d) = p.parent() {
                let _ = fs::create_dir_all(d);
            }
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(p)
                .map_err(|e| HelperError::System(format!("log file {}: {e}", p.display())))?;
            let start = f.metadata().map(|m| m.len()).unwrap_or(0);
            (Stdio::from(f), start)
        }
        None => (Stdio::inherit(), 0),
    };

    let dir = private_dir()?;
    let _cleanup = Cleanup(dir.clone());
    let listener =
        Listener::bind(&dir.join("notify")).map_err(|e| HelperError::System(e.to_string()))?;

    let mut cmd = Command::new(&bin);
    cmd.args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(notify::NOTIFY_SOCKET, listener.address())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from mount(8)'s session and
    // terminal, so it outlives the helper and no SIGHUP of a closing terminal reaches it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| HelperError::System(format!("cannot start {}: {e}", bin.display())))?;

    let limit = plan.ready_timeout.unwrap_or(Duration::from_secs(120));
    let deadline = Instant::now() + limit;
    loop {
        match listener.recv(Duration::from_millis(200)) {
            Ok(Some(m)) if notify::has(&m, "READY", "1") => {
                if inv.verbose {
                    eprintln!(
                        "mount.bucketfs: {} mounted on {} (bucketfs pid {})",
                        inv.spec,
                        inv.dir.display(),
                        child.id()
                    );
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(HelperError::System(e.to_string())),
        }
        if let Ok(Some(st)) = child.try_wait() {
            let tail = log_path
                .as_ref()
                .map(|p| log_since(p, log_start))
                .filter(|t| !t.trim().is_empty())
                .map(|t| format!(":\n{}", t.trim_end()))
                .unwrap_or_default();
            return Err(HelperError::Failed(format!(
                "bucketfs exited ({st}) before {} was mounted{tail}",
                inv.dir.display()
            )));
        }
        if Instant::now() > deadline {
            // SAFETY: plain kill(2) of the child we started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(HelperError::Failed(format!(
                "{} was not mounted within {} s (see the log{})",
                inv.dir.display(),
                limit.as_secs(),
                log_path
                    .as_ref()
                    .map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            )));
        }
    }
}

/// What the log file got since `start` (the daemon's explanation of a failed start).
fn log_since(p: &Path, start: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(p) {
        if f.seek(SeekFrom::Start(start)).is_ok() {
            let _ = f.take(64 * 1024).read_to_string(&mut s);
        }
    }
    s
}

fn main() -> ExitCode {
    let argv: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(_) => {
            eprintln!("mount.bucketfs: arguments must be UTF-8");
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.bucketfs: {e}");
            ExitCode::from(e.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn mount8_invocation() {
        let inv = parse_argv(&argv(
            "authentik-data /data -v -o rw,noatime,nodev,nosuid,allow_other,uid=1000,gid=1000,_netdev,nofail",
        ))
        .unwrap();
        assert_eq!(inv.spec, "authentik-data");
        assert_eq!(inv.dir, PathBuf::from("/data"));
        assert!(inv.verbose && !inv.fake);
        let p = plan(&inv).unwrap();
        assert_eq!(
            p.args,
            argv("mount authentik-data /data --allow-other --uid 1000 --gid 1000")
        );
        let inv = parse_argv(&argv(
            "b:media /mnt -f -o ro,user,noexec,nosuid,nodev -t bucketfs",
        ))
        .unwrap();
        assert!(inv.fake);
        assert_eq!(
            plan(&inv).unwrap().args,
            argv("mount b:media /mnt --read-only --noexec")
        );
        let inv = parse_argv(&argv("b /mnt -r -oexec")).unwrap();
        assert_eq!(plan(&inv).unwrap().args, argv("mount b /mnt --read-only"));
    }

    #[test]
    fn bucketfs_and_helper_options() {
        let inv = parse_argv(&argv(
            "b /mnt -o endpoint=http://127.0.0.1:8333,region=garage,path_style,max_memory=64,x-systemd.automount,comment=x,environment_file=/etc/b.env,log_file=/var/log/b.log,ready_timeout=7,metrics_addr=127.0.0.1:9101",
        ))
        .unwrap();
        let p = plan(&inv).unwrap();
        assert_eq!(
            p.args,
            argv("mount b /mnt --endpoint http://127.0.0.1:8333 --region garage --force-path-style --max-memory 64 --metrics-addr 127.0.0.1:9101")
        );
        assert_eq!(p.environment_file, Some(PathBuf::from("/etc/b.env")));
        assert_eq!(p.log_file, Some(PathBuf::from("/var/log/b.log")));
        assert_eq!(p.ready_timeout, Some(Duration::from_secs(7)));
        // a quoted value may hold commas
        let inv = parse_argv(&[
            "b".into(),
            "/m".into(),
            "-o".into(),
            "uid=1,endpoint=\"http://h/a,b\"".into(),
        ])
        .unwrap();
        assert_eq!(
            plan(&inv).unwrap().args,
            argv("mount b /m --uid 1 --endpoint http://h/a,b")
        );
    }

    #[test]
    fn bad_invocations() {
        assert!(matches!(
            parse_argv(&argv("only-one")),
            Err(HelperError::Usage(_))
        ));
        assert!(matches!(
            parse_argv(&argv("b /m -N 1")),
            Err(HelperError::Usage(_))
        ));
        assert!(matches!(
            parse_argv(&argv("b /m -q")),
            Err(HelperError::Usage(_))
        ));
        for bad in [
            "log_file",
            "ready_timeout=soon",
            "--x",
            "a b",
            "environment_file=",
        ] {
            let inv = Invocation {
                spec: "b".into(),
                dir: "/m".into(),
                options: vec![bad.into()],
                ..Invocation::default()
            };
            let e = plan(&inv).unwrap_err();
            assert!(matches!(e, HelperError::BadOption(..)), "{bad}: {e:?}");
            assert_eq!(e.status(), EX_USAGE);
        }
        assert!(split_options("a=\"b,c").is_err());
    }

    #[test]
    fn environment_options_merge_under_fstab_ones() {
        let base = argv("mount b /data --allow-other --uid 1000 --read-only");
        assert_eq!(
            merge_flags(
                &base,
                "--endpoint http://x --uid 33 --allow-other --force-path-style --gid=5 --metadata-ttl 2"
            ),
            argv("mount b /data --endpoint http://x --force-path-style --gid=5 --metadata-ttl 2 --allow-other --uid 1000 --read-only")
        );
        assert_eq!(merge_flags(&base, ""), base);
        assert_eq!(
            merge_flags(&argv("mount b /d --gid 1"), "--gid=2 --uid 3"),
            argv("mount b /d --uid 3 --gid 1")
        );
    }

    #[test]
    fn escaping_like_systemd() {
        assert_eq!(systemd_escape_path(Path::new("/data")), "data");
        assert_eq!(
            systemd_escape_path(Path::new("/srv/authentik//data/")),
            "srv-authentik-data"
        );
        assert_eq!(systemd_escape_path(Path::new("/a b/.c")), "a\\x20b-.c");
        assert_eq!(systemd_escape_path(Path::new("/.x")), "\\x2ex");
        assert_eq!(systemd_escape_path(Path::new("/")), "-");
        assert_eq!(systemd_escape_path(Path::new("/my-data")), "my\\x2ddata");
    }

    #[test]
    fn environment_files() {
        let p = Path::new("/etc/bucketfs/data.env");
        let v = parse_environment_file(
            p,
            "# comment\n; also\n\nAWS_ACCESS_KEY_ID=AK\n AWS_SECRET_ACCESS_KEY = \"s e\" \nBUCKETFS_OPTIONS='--endpoint http://x --force-path-style'\n",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("AWS_ACCESS_KEY_ID".into(), "AK".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "s e".into()),
                (
                    "BUCKETFS_OPTIONS".into(),
                    "--endpoint http://x --force-path-style".into()
                ),
            ]
        );
        let e = parse_environment_file(p, "OK=1\nnot a line\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_environment_file(p, "1X=2").is_err());
    }
}
