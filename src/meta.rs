//! Pure rules for object headers: Content-Type from the name, and POSIX attributes from
//! s3fs-compatible user metadata (`x-amz-meta-mode/uid/gid/mtime/atime/ctime/rdev`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_TYPE: &str = "application/octet-stream";

/// Content-Type for a file name, by extension (the answers of Python's `mimetypes`, which is
/// what authentik's s3 backend uses), else `application/octet-stream`.
pub fn content_type_for(name: &str) -> String {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    // mime_guess differs from Python's table on a few types authentik serves.
    match ext.as_deref() {
        Some("ico") => return "image/vnd.microsoft.icon".into(),
        Some("js") | Some("mjs") => return "text/javascript".into(),
        None => return DEFAULT_TYPE.into(),
        _ => {}
    }
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or(DEFAULT_TYPE)
        .to_string()
}

/// The Content-Type a renamed object should get: a type that was just the guess for the old
/// name (or generic) follows the new name; a type someone chose is kept.
pub fn content_type_after_rename(old_name: &str, new_name: &str, current: Option<&str>) -> String {
    match current {
        Some(t)
            if !t.is_empty()
                && t != DEFAULT_TYPE
                && t != "binary/octet-stream"
                && t != content_type_for(old_name) =>
        {
            t.to_string()
        }
        _ => content_type_for(new_name),
    }
}

/// POSIX attributes stored on an object, where present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PosixMeta {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    /// s3fs's `x-amz-meta-atime`: only set by utimes here (the mount is `noatime`).
    pub atime: Option<SystemTime>,
    /// s3fs's `x-amz-meta-ctime`: set by every change made through this mount.
    pub ctime: Option<SystemTime>,
    /// Device number of a character or block special file (s3fs's `x-amz-meta-rdev`, the
    /// kernel's `dev_t` encoding in decimal).
    pub rdev: Option<u32>,
}

/// Reads decimal modes (s3fs) and octal ones with a leading 0 (rclone).
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else if let Some(o) = s.strip_prefix("0o") {
        u32::from_str_radix(o, 8).ok()
    } else {
        s.parse().ok()
    }
}

/// Reads integer and fractional epoch seconds.
pub fn parse_mtime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

impl PosixMeta {
    pub fn from_metadata(m: &HashMap<String, String>) -> Self {
        PosixMeta {
            mode: m.get("mode").and_then(|v| parse_mode(v)),
            uid: m.get("uid").and_then(|v| v.trim().parse().ok()),
            gid: m.get("gid").and_then(|v| v.trim().parse().ok()),
            mtime: m.get("mtime").and_then(|v| parse_mtime(v)),
            atime: m.get("atime").and_then(|v| parse_mtime(v)),
            ctime: m.get("ctime").and_then(|v| parse_mtime(v)),
            rdev: m.get("rdev").and_then(|v| v.trim().parse().ok()),
        }
    }

    /// The file-type bits of the stored mode (`S_IFREG` when no mode or no type is stored).
    pub fn type_bits(&self) -> u32 {
        match self.mode.map(|m| m & libc::S_IFMT) {
            None | Some(0) => libc::S_IFREG,
            Some(t) => t,
        }
    }

    /// Writes the s3fs-compatible headers into `m` (decimal mode with type bits, integer
    /// times: geesefs parses only integers, so sub-second parts are not stored).
    pub fn write_to(&self, m: &mut HashMap<String, String>) {
        if let Some(v) = self.mode {
            m.insert("mode".into(), v.to_string());
        }
        if let Some(v) = self.uid {
            m.insert("uid".into(), v.to_string());
        }
        if let Some(v) = self.gid {
            m.insert("gid".into(), v.to_string());
        }
        for (name, t) in [
            ("mtime", self.mtime),
            ("atime", self.atime),
            ("ctime", self.ctime),
        ] {
            if let Some(t) = t {
                m.insert(name.into(), epoch_secs(t).to_string());
            }
        }
        if let Some(v) = self.rdev {
            m.insert("rdev".into(), v.to_string());
        }
    }
}

/// A time as object headers hold it (whole seconds), so what this mount shows before and
/// after a HEAD is the same.
pub fn whole_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(epoch_secs(t))
}

/// A time as an s3fs header value: decimal whole seconds since the epoch.
pub fn secs_header(t: SystemTime) -> String {
    epoch_secs(t).to_string()
}

/// Now, in whole seconds (see [`whole_secs`]).
pub fn now_secs() -> SystemTime {
    whole_secs(SystemTime::now())
}

/// Whole seconds since the epoch (0 for times before it).
fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_what_authentik_serves() {
        assert_eq!(content_type_for("a.svg"), "image/svg+xml");
        assert_eq!(content_type_for("a.PNG"), "image/png");
        assert_eq!(content_type_for("a.jpg"), "image/jpeg");
        assert_eq!(content_type_for("a.webp"), "image/webp");
        assert_eq!(content_type_for("a.ico"), "image/vnd.microsoft.icon");
        assert_eq!(content_type_for("r.csv"), "text/csv");
        assert_eq!(content_type_for("index.html"), "text/html");
        assert_eq!(content_type_for("a.json"), "application/json");
        assert_eq!(content_type_for("noext"), DEFAULT_TYPE);
        assert_eq!(content_type_for("blob.bin"), DEFAULT_TYPE);
    }

    #[test]
    fn rename_keeps_chosen_types() {
        assert_eq!(
            content_type_after_rename("i.svg", "l.png", Some("image/svg+xml")),
            "image/png"
        );
        assert_eq!(
            content_type_after_rename("c.dat", "d.dat", Some("image/x-custom")),
            "image/x-custom"
        );
        assert_eq!(content_type_after_rename("x", "y.txt", None), "text/plain");
    }

    #[test]
    fn posix_meta_parsing() {
        assert_eq!(parse_mode("33188"), Some(0o100644));
        assert_eq!(parse_mode("0100644"), Some(0o100644));
        assert_eq!(parse_mode("junk"), None);
        assert_eq!(
            parse_mtime("1700000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        let mut m = HashMap::new();
        PosixMeta {
            mode: Some(0o100640),
            uid: Some(1000),
            gid: Some(1000),
            mtime: parse_mtime("5"),
            ctime: parse_mtime("7.25"),
            rdev: Some(0x0102),
            ..PosixMeta::default()
        }
        .write_to(&mut m);
        assert_eq!(m["mode"], "33184");
        assert_eq!((m["ctime"].as_str(), m["rdev"].as_str()), ("7", "258"));
        assert!(!m.contains_key("atime"));
        let back = PosixMeta::from_metadata(&m);
        assert_eq!((back.uid, back.rdev), (Some(1000), Some(258)));
        assert_eq!(back.type_bits(), libc::S_IFREG);
        let fifo = PosixMeta {
            mode: Some(libc::S_IFIFO | 0o644),
            ..PosixMeta::default()
        };
        assert_eq!(fifo.type_bits(), libc::S_IFIFO);
        assert_eq!(PosixMeta::default().type_bits(), libc::S_IFREG);
    }
}

/// What bucketfs knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    /// None while the file exists only in this mount (created, not yet uploaded).
    pub etag: Option<String>,
    pub modified: SystemTime,
    pub posix: PosixMeta,
    /// Whether `posix` came from a HEAD (listings carry no user metadata).
    pub posix_known: bool,
}

impl FileMeta {
    /// Whether the stored mode says symlink.
    pub fn is_symlink(&self) -> bool {
        self.posix
            .mode
            .is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK)
    }

    pub fn from_info(info: &crate::store::ObjectInfo, from_head: bool) -> Self {
        FileMeta {
            size: info.size,
            etag: info.etag.clone(),
            modified: info.last_modified.unwrap_or(UNIX_EPOCH),
            posix: PosixMeta::from_metadata(&info.metadata),
            posix_known: from_head,
        }
    }
}
