//! `bucketfs migrate-status`: reads a live migration's status file and prints where it stands
//! (exit 0 once complete, 1 while not, 2 if there is no status to read).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The migration's state directory or its status.json (the mount names it when it starts).
    #[arg(value_name = "STATE")]
    pub state: Option<PathBuf>,
    /// Or find the default state directory: the mount's --migrate-from ...
    #[arg(
        long,
        value_name = "OLD_DIR",
        requires = "bucket",
        conflicts_with = "state"
    )]
    pub migrate_from: Option<PathBuf>,
    /// ... its BUCKET[:PREFIX] ...
    #[arg(long, value_name = "BUCKET[:PREFIX]", requires = "migrate_from")]
    pub bucket: Option<String>,
    /// ... and its --cache-dir, if it set one.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the status file as it is (JSON).
    #[arg(long)]
    pub json: bool,
}

fn status_file(a: &StatusArgs) -> Result<PathBuf, String> {
    if let Some(s) = &a.state {
        return Ok(if s.is_dir() {
            s.join("status.json")
        } else {
            s.clone()
        });
    }
    let (Some(old), Some(spec)) = (&a.migrate_from, &a.bucket) else {
        return Err(
            "name the state directory, or give --migrate-from OLD_DIR --bucket BUCKET[:PREFIX]"
                .into(),
        );
    };
    let (bucket, prefix) = crate::config::split_bucket(spec)?;
    let old = std::fs::canonicalize(old).map_err(|e| format!("{}: {e}", old.display()))?;
    let cache = a
        .cache_dir
        .clone()
        .unwrap_or_else(crate::config::default_cache_dir);
    Ok(super::default_state_dir(&cache, &bucket, &prefix, &old).join("status.json"))
}

fn mib(v: &serde_json::Value) -> String {
    format!(
        "{:.1} MiB",
        v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0)
    )
}

/// The human summary of a status file.
pub fn summary(s: &serde_json::Value, now: SystemTime) -> String {
    let age = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(s["updated"].as_u64().unwrap_or(0));
    let state = if s["complete"] == true {
        "complete: --migrate-from can be removed".to_string()
    } else if s["walk_done"] == true {
        format!(
            "pass {} finished with failures; retried by the mount",
            s["pass"]
        )
    } else {
        format!("in progress (pass {})", s["pass"])
    };
    let mut out = format!(
        "migration of {} into prefix {:?}: {state}\n  status written {age} s ago\n",
        s["old_dir"].as_str().unwrap_or("?"),
        s["prefix"].as_str().unwrap_or(""),
    );
    out += &format!(
        "  copied     {} files, {} (this pass; {} more on demand)\n",
        s["copied"],
        mib(&s["bytes_copied"]),
        s["copied_on_demand"]
    );
    out += &format!("  in bucket  {} (already there)\n", s["already_in_bucket"]);
    out += &format!(
        "  deleted    {} (through the mount; never copied)\n",
        s["deleted"]
    );
    out += &format!(
        "  remaining  {} of {} files found{} ({})\n",
        s["remaining"],
        s["total"],
        if s["walk_done"] == true {
            ""
        } else {
            " so far"
        },
        mib(&s["bytes_total"])
    );
    out += &format!("  failed     {}\n", s["failed"]);
    if let Some(f) = s["failures"].as_array() {
        for e in f {
            out += &format!(
                "    {}: {}\n",
                e["path"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

fn read(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a status file: {e}", path.display()))
}

/// Runs `bucketfs migrate-status`; returns the exit status.
pub fn run(a: &StatusArgs) -> i32 {
    let s = match status_file(a).and_then(|p| read(&p)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bucketfs: {e}");
            return 2;
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print!("{}", summary(&s, SystemTime::now()));
    }
    if s["complete"] == true {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_where_it_stands() {
        let s = serde_json::json!({
            "old_dir": "/data.old", "prefix": "", "updated": 100, "pass": 2,
            "walk_done": true, "complete": false, "total": 5, "bytes_total": 3145728,
            "copied": 2, "bytes_copied": 1048576, "copied_on_demand": 1,
            "already_in_bucket": 1, "deleted": 1, "remaining": 0, "failed": 1,
            "failures": [{"path": "media/fifo", "reason": "not a regular file"}],
        });
        let t = summary(
            &s,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(130),
        );
        assert!(t.contains("pass 2 finished with failures"), "{t}");
        assert!(t.contains("written 30 s ago"), "{t}");
        assert!(t.contains("copied     2 files, 1.0 MiB"), "{t}");
        assert!(t.contains("media/fifo: not a regular file"), "{t}");
    }
}
