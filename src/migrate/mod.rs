//! `bucketfs migrate SRC DST`: copy a local directory to `s3://bucket[/prefix]` or back, in
//! the mount's layout (path `<p>` ↔ key `<prefix><p>`), verified, resumable, in parallel.
//! `copy` moves one item (also used by the live copier); `plan` decides per item (pure);
//! `offline` walks both sides, runs the plan and reports.

pub mod copy;
pub mod live;
pub mod offline;
pub mod plan;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::bucket::{CmdError, Ctx, S3Args, EXIT_FAILED};
use crate::upload::MIB;

/// Exit status after SIGINT or SIGTERM (128 + SIGINT, the shell's convention).
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Where to copy from: a local directory, or s3://BUCKET[/PREFIX].
    #[arg(value_name = "SRC")]
    pub src: String,
    /// Where to copy to: s3://BUCKET[/PREFIX], or a local directory (created if missing).
    #[arg(value_name = "DST")]
    pub dst: String,
    /// List what would be copied or deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Make DST an exact mirror: delete what SRC does not have.
    #[arg(long)]
    pub delete: bool,
    /// Compare content (MD5) instead of size and mtime to decide what is identical.
    #[arg(long)]
    pub checksum: bool,
    /// Files copied at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub jobs: usize,
    /// First multipart part size (MiB, 5 to 5120); files up to one part are a single PUT.
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub part_size: u64,
    /// Memory (MiB) for the parts and ranges in flight, all files together.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub max_memory: u64,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10.0, value_parser = crate::config::parse_seconds)]
    pub progress_interval: f64,
    #[command(flatten)]
    pub s3: S3Args,
}

/// One side of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Side {
    /// `s3://bucket[/prefix]` or a local path.
    pub fn parse(s: &str) -> Result<Side, String> {
        let Some(rest) = s.strip_prefix("s3://") else {
            if s.is_empty() {
                return Err("an empty path".into());
            }
            return Ok(Side::Local(PathBuf::from(s)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (bucket, prefix) = crate::config::split_bucket(&format!("{bucket}:{prefix}"))?;
        Ok(Side::S3 { bucket, prefix })
    }
}

/// `bucketfs migrate`: the exit status (0 only if nothing failed); errors are printed.
pub fn run(a: &MigrateArgs) -> i32 {
    match run_inner(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bucketfs: {e}");
            e.exit_code()
        }
    }
}

fn run_inner(a: &MigrateArgs) -> Result<i32, CmdError> {
    let src = Side::parse(&a.src).map_err(|e| CmdError::Usage(format!("SRC: {e}")))?;
    let dst = Side::parse(&a.dst).map_err(|e| CmdError::Usage(format!("DST: {e}")))?;
    let (local, bucket, prefix, upload) = match (src, dst) {
        (Side::Local(l), Side::S3 { bucket, prefix }) => (l, bucket, prefix, true),
        (Side::S3 { bucket, prefix }, Side::Local(l)) => (l, bucket, prefix, false),
        _ => {
            return Err(CmdError::Usage(
                "one of SRC and DST must be s3://BUCKET[/PREFIX], the other a local directory"
                    .into(),
            ))
        }
    };
    if upload {
        match std::fs::metadata(&local) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CmdError::Usage(format!(
                    "SRC {} is not a directory",
                    local.display()
                )))
            }
            Err(e) => {
                return Err(CmdError::Usage(format!("SRC {}: {e}", local.display())));
            }
        }
    }
    if a.part_size * MIB < crate::upload::MIN_PART_SIZE || a.part_size > 5 * 1024 {
        return Err(CmdError::Usage(
            "--part-size must be between 5 and 5120 MiB".into(),
        ));
    }
    if a.max_memory < 16 {
        return Err(CmdError::Usage(
            "--max-memory must be at least 16 MiB".into(),
        ));
    }
    if !(1..=256).contains(&a.jobs) {
        return Err(CmdError::Usage("--jobs must be between 1 and 256".into()));
    }
    let mut s3 = a.s3.clone();
    if let Some(b) = &s3.bucket {
        if *b != bucket {
            return Err(CmdError::Usage(format!(
                "--bucket {b} and the bucket of s3://{bucket} differ"
            )));
        }
    }
    s3.bucket = Some(bucket.clone());
    let ctx = Ctx::new(&s3)?;
    ctx.ensure_reachable()?;
    let job = offline::Job {
        local,
        bucket,
        prefix,
        upload,
        dry_run: a.dry_run,
        delete: a.delete,
        checksum: a.checksum,
        jobs: a.jobs,
        copy: copy::CopyOptions {
            part_size: a.part_size * MIB,
            part_concurrency: 4,
            budget: crate::budget::MemoryBudget::new(a.max_memory.max(16) * MIB),
            ..copy::CopyOptions::default()
        },
        progress_interval: Duration::from_secs_f64(a.progress_interval),
    };
    let started = Instant::now();
    let tally = ctx
        .rt
        .block_on(offline::run(&job, &ctx.store))
        .map_err(|e| CmdError::Failed(e.to_string()))?;
    let mut planned = tally.planned.lock().clone();
    // Workers finish in any order; the list reads best grouped by action, then path.
    planned.sort();
    for l in planned {
        crate::bucket::out(&format!("{l}\n"));
    }
    crate::bucket::out(&offline::summary(&job, &tally, started.elapsed()));
    if tally.interrupted.lock().is_some() {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if tally.failed.lock().is_empty() {
        0
    } else {
        EXIT_FAILED
    })
}
