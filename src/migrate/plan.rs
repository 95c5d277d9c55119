//! Pure decisions of `bucketfs migrate`: which keys a local tree maps to (and which keys
//! can be local paths), and, for each path, whether to copy it, skip it, or refuse it.
//!
//! "Identical" (what a rerun skips):
//! * default: same size and the same mtime in whole seconds (the bucket's `x-amz-meta-mtime`,
//!   the resolution s3fs and the mount store), and the same mode/owner where the object
//!   has them. An object without `x-amz-meta-mtime` (written by `aws s3 sync` or any tool
//!   without POSIX headers) counts as identical when its size matches and its LastModified
//!   is not older than the local mtime — the rule `aws s3 sync` itself uses — so migrate over
//!   a bucket filled by the guide's recipe copies nothing that is already there.
//! * `--checksum`: the same MD5: the object's `x-amz-meta-bucketfs-md5` (written by every
//!   upload of migrate), else its ETag when that is a single-part MD5. An object with
//!   neither (a multipart upload by another tool) cannot be compared and is copied. Where the
//!   object has POSIX headers, they must agree too.
//!
//! Downloads compare the local mtime with the object's stored mtime, else its LastModified
//! (what a download sets), so a second download run skips everything as well.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys;
use crate::meta::PosixMeta;

/// What kind of thing a local path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalKind {
    File,
    Symlink,
    /// A directory; `empty` if nothing (that migrates) is below it.
    Dir {
        empty: bool,
    },
    /// A FIFO, socket or device (`S_IFMT` bits), with its device number: an empty object
    /// with the type in its mode, as the mount stores it.
    Special {
        type_bits: u32,
        rdev: u32,
    },
    /// A file type nothing can hold.
    Other,
}

/// A local path as the plan sees it (from lstat).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEntry {
    pub kind: LocalKind,
    /// Bytes of a file; length of a symlink's target.
    pub size: u64,
    /// Whole seconds since the epoch.
    pub mtime: i64,
    /// Permission bits (07777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

/// An object as the plan sees it: from the listing, and after a HEAD its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub size: u64,
    pub etag: Option<String>,
    /// Whole seconds.
    pub last_modified: Option<i64>,
    /// None until a HEAD fetched it (listings carry no user metadata).
    pub meta: Option<RemoteMeta>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteMeta {
    pub posix: PosixMeta,
    /// `x-amz-meta-bucketfs-md5`
    pub md5: Option<String>,
}

impl LocalKind {
    /// `S_IFMT` bits of a file, symlink or special file (0 for directories and others).
    fn type_bits(self) -> u32 {
        match self {
            LocalKind::File => libc::S_IFREG,
            LocalKind::Symlink => libc::S_IFLNK,
            LocalKind::Special { type_bits, .. } => type_bits,
            LocalKind::Dir { .. } | LocalKind::Other => 0,
        }
    }
}

/// Whether the object is another kind of file than the local one (or another device).
fn type_differs(local: &LocalEntry, remote: &RemoteEntry) -> bool {
    if local.kind.type_bits() != remote.type_bits() {
        return true;
    }
    match local.kind {
        LocalKind::Special { rdev, .. } => rdev != remote.rdev(),
        _ => false,
    }
}

impl RemoteEntry {
    fn mtime_secs(&self) -> Option<i64> {
        self.meta
            .as_ref()
            .and_then(|m| m.posix.mtime)
            .map(super::copy::secs)
    }

    /// The file type the object stands for (`S_IFREG` without a stored type).
    fn type_bits(&self) -> u32 {
        match self.meta.as_ref().and_then(|m| m.posix.mode) {
            Some(m) if m & libc::S_IFMT != 0 => m & libc::S_IFMT,
            _ => libc::S_IFREG,
        }
    }

    fn rdev(&self) -> u32 {
        self.meta.as_ref().and_then(|m| m.posix.rdev).unwrap_or(0)
    }

    /// The content MD5 the object vouches for, if any.
    pub fn md5(&self) -> Option<String> {
        if let Some(m) = self.meta.as_ref().and_then(|m| m.md5.as_deref()) {
            return Some(m.trim().to_ascii_lowercase());
        }
        self.etag.as_deref().and_then(super::copy::plain_md5)
    }
}

/// What to do with one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Copy it; the reason is shown by `--dry-run`.
    Copy(&'static str),
    Skip,
    /// The object's metadata (HEAD) is needed to decide.
    NeedHead,
    /// The local content's MD5 is needed (`--checksum`).
    NeedLocalMd5,
    /// It cannot be copied; the reason goes into the summary.
    Refuse(String),
}

/// Options that change decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub checksum: bool,
    /// Compare uid/gid (downloads as root restore them; uploads always store them).
    pub owner: bool,
}

/// POSIX headers of the object that disagree with the local entry, if any.
fn meta_differs(local: &LocalEntry, remote: &RemoteEntry, rules: Rules) -> Option<&'static str> {
    let m = remote.meta.as_ref()?;
    if let Some(t) = m.posix.mtime {
        if super::copy::secs(t) != local.mtime {
            return Some("mtime differs");
        }
    }
    if local.kind != LocalKind::Symlink {
        if let Some(mode) = m.posix.mode {
            if mode & 0o7777 != local.perm {
                return Some("mode differs");
            }
        }
    }
    if rules.owner {
        if m.posix.uid.is_some_and(|u| u != local.uid) {
            return Some("owner differs");
        }
        if m.posix.gid.is_some_and(|g| g != local.gid) {
            return Some("group differs");
        }
    }
    None
}

/// Local → bucket: what to do with the local `local` whose key holds `remote` (None: no
/// such object; for an empty directory, its `dir/` marker).
pub fn decide_upload(
    local: &LocalEntry,
    remote: Option<&RemoteEntry>,
    local_md5: Option<&str>,
    rules: Rules,
) -> Decision {
    match local.kind {
        LocalKind::Other => return Decision::Refuse("a file type S3 cannot hold".into()),
        LocalKind::Dir { empty: false } => return Decision::Skip,
        LocalKind::Dir { empty: true } => {
            return match remote {
                Some(_) => Decision::Skip,
                None => Decision::Copy("new"),
            }
        }
        LocalKind::File | LocalKind::Symlink | LocalKind::Special { .. } => {}
    }
    let Some(remote) = remote else {
        return Decision::Copy("new");
    };
    if remote.size != local.size {
        return Decision::Copy("size differs");
    }
    if remote.meta.is_none() {
        return Decision::NeedHead;
    }
    if type_differs(local, remote) {
        return Decision::Copy("type differs");
    }
    if rules.checksum && !matches!(local.kind, LocalKind::Special { .. }) {
        let Some(md5) = local_md5 else {
            return Decision::NeedLocalMd5;
        };
        return match remote.md5() {
            None => Decision::Copy("no checksum in the bucket to compare"),
            Some(r) if r != md5 => Decision::Copy("content differs"),
            Some(_) => match meta_differs(local, remote, rules) {
                Some(why) => Decision::Copy(why),
                None => Decision::Skip,
            },
        };
    }
    match remote.mtime_secs() {
        Some(_) => match meta_differs(local, remote, rules) {
            Some(why) => Decision::Copy(why),
            None => Decision::Skip,
        },
        // No POSIX headers (aws s3 sync): its rule, size and a LastModified not older.
        None => match remote.last_modified {
            Some(lm) if lm >= local.mtime => Decision::Skip,
            _ => Decision::Copy("older in the bucket"),
        },
    }
}

/// Bucket → local: what to do with object `remote` whose path holds `local` (None: nothing).
pub fn decide_download(
    remote: &RemoteEntry,
    local: Option<&LocalEntry>,
    local_md5: Option<&str>,
    rules: Rules,
) -> Decision {
    let Some(local) = local else {
        return Decision::Copy("new");
    };
    match local.kind {
        LocalKind::Dir { .. } => {
            return Decision::Refuse("a local directory is in the way (use --delete)".into())
        }
        LocalKind::Other => return Decision::Refuse("a file of unknown type is in the way".into()),
        LocalKind::File | LocalKind::Symlink | LocalKind::Special { .. } => {}
    }
    if remote.size != local.size {
        return Decision::Copy("size differs");
    }
    if remote.meta.is_none() {
        return Decision::NeedHead;
    }
    if type_differs(local, remote) {
        return Decision::Copy("type differs");
    }
    let special = matches!(local.kind, LocalKind::Special { .. });
    let mtime = remote.mtime_secs().or(remote.last_modified);
    if mtime.is_some_and(|t| t != local.mtime) && (!rules.checksum || special) {
        return Decision::Copy("mtime differs");
    }
    if rules.checksum && !special {
        let Some(md5) = local_md5 else {
            return Decision::NeedLocalMd5;
        };
        match remote.md5() {
            None => return Decision::Copy("no checksum in the bucket to compare"),
            Some(r) if r != md5 => return Decision::Copy("content differs"),
            Some(_) => {}
        }
        if mtime.is_some_and(|t| t != local.mtime) {
            return Decision::Copy("mtime differs");
        }
    }
    let m = remote.meta.as_ref().map(|m| m.posix).unwrap_or_default();
    if local.kind != LocalKind::Symlink {
        let want = m.mode.map(|m| m & 0o7777).unwrap_or(0o644);
        if want != local.perm {
            return Decision::Copy("mode differs");
        }
    }
    if rules.owner
        && (m.uid.is_some_and(|u| u != local.uid) || m.gid.is_some_and(|g| g != local.gid))
    {
        return Decision::Copy("owner differs");
    }
    Decision::Skip
}

/// The key of the relative path `rel` (components joined by `/`) under `prefix` (`""` or
/// ending in `/`). A directory's marker key gets a trailing `/`.
pub fn key_for(prefix: &str, rel: &str, dir: bool) -> String {
    if dir {
        keys::dir_prefix(prefix, rel)
    } else {
        keys::file_key(prefix, rel)
    }
}

/// Checks that a local name can be part of a key (valid UTF-8, which S3 keys are).
pub fn local_name(name: &[u8]) -> Result<&str, String> {
    keys::check_name(name).map_err(|e| format!("the name cannot be an S3 key: {e}"))
}

/// The objects below a prefix, as a tree of relative paths.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RemoteTree<T> {
    /// Relative path → object.
    pub files: BTreeMap<String, T>,
    /// Relative paths of directories (from keys below them and from `dir/` markers).
    pub dirs: BTreeSet<String>,
    /// Relative paths of `dir/` markers (with the marker object).
    pub markers: BTreeMap<String, T>,
    /// Keys that cannot be local paths, with the reason.
    pub refused: Vec<(String, String)>,
}

/// Maps the full keys under `prefix` to relative paths, the way the mount shows them: a key
/// whose components are not all valid names (`//`, `.`, `..`, longer than 255 bytes, NUL) is
/// refused, and so is a file `x` beside keys below `x/` (the directory wins). The prefix's own
/// marker is the root.
pub fn remote_tree<T>(
    prefix: &str,
    objects: impl IntoIterator<Item = (String, T)>,
) -> RemoteTree<T> {
    let mut t = RemoteTree {
        files: BTreeMap::new(),
        dirs: BTreeSet::new(),
        markers: BTreeMap::new(),
        refused: Vec::new(),
    };
    let mut files = Vec::new();
    'keys: for (key, v) in objects {
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() {
            continue;
        }
        let (body, is_dir) = match rel.strip_suffix('/') {
            Some(b) => (b, true),
            None => (rel, false),
        };
        for c in body.split('/') {
            if let Err(e) = keys::check_name(c.as_bytes()) {
                let what = if c.is_empty() {
                    "an empty path component (`//` or a leading `/`)".to_string()
                } else {
                    format!("a path component that is {e}")
                };
                t.refused
                    .push((key.clone(), format!("cannot be a file name: {what}")));
                continue 'keys;
            }
        }
        // Every ancestor is a directory.
        let mut end = 0;
        while let Some(i) = body[end..].find('/') {
            t.dirs.insert(body[..end + i].to_string());
            end += i + 1;
        }
        if is_dir {
            t.dirs.insert(body.to_string());
            t.markers.insert(body.to_string(), v);
        } else {
            files.push((body.to_string(), key, v));
        }
    }
    for (rel, key, v) in files {
        if t.dirs.contains(&rel) {
            t.refused.push((
                key,
                "a directory of the same name exists (keys below it); the mount shows the directory"
                    .into(),
            ));
        } else {
            t.files.insert(rel, v);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(size: u64, mtime: i64, perm: u32) -> LocalEntry {
        LocalEntry {
            kind: LocalKind::File,
            size,
            mtime,
            perm,
            uid: 1000,
            gid: 1000,
        }
    }

    #[allow(clippy::needless_update)]
    fn posix(mode: u32, mtime: u64) -> PosixMeta {
        PosixMeta {
            mode: Some(mode),
            uid: Some(1000),
            gid: Some(1000),
            mtime: Some(UNIX_EPOCH + Duration::from_secs(mtime)),
            ..PosixMeta::default()
        }
    }

    fn remote(size: u64, lm: i64, meta: Option<RemoteMeta>) -> RemoteEntry {
        RemoteEntry {
            size,
            etag: Some("\"0cc175b9c0f1b6a831c399e269772661\"".into()),
            last_modified: Some(lm),
            meta,
        }
    }

    const R: Rules = Rules {
        checksum: false,
        owner: true,
    };

    #[test]
    fn upload_size_then_head_then_mtime() {
        let l = file(1, 100, 0o644);
        assert_eq!(decide_upload(&l, None, None, R), Decision::Copy("new"));
        assert_eq!(
            decide_upload(&l, Some(&remote(2, 500, None)), None, R),
            Decision::Copy("size differs")
        );
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 500, None)), None, R),
            Decision::NeedHead
        );
        let same = RemoteMeta {
            posix: posix(libc::S_IFREG | 0o644, 100),
            md5: None,
        };
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 500, Some(same.clone()))), None, R),
            Decision::Skip
        );
        let newer = RemoteMeta {
            posix: posix(libc::S_IFREG | 0o644, 101),
            md5: None,
        };
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 500, Some(newer))), None, R),
            Decision::Copy("mtime differs")
        );
        let l600 = file(1, 100, 0o600);
        assert_eq!(
            decide_upload(&l600, Some(&remote(1, 500, Some(same))), None, R),
            Decision::Copy("mode differs")
        );
    }

    #[test]
    fn objects_without_posix_headers_follow_aws_s3_sync() {
        let l = file(1, 100, 0o644);
        let bare = Some(RemoteMeta::default());
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 100, bare.clone())), None, R),
            Decision::Skip
        );
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 99, bare.clone())), None, R),
            Decision::Copy("older in the bucket")
        );
        // --checksum: the single-part ETag is the MD5.
        let c = Rules {
            checksum: true,
            ..R
        };
        assert_eq!(
            decide_upload(&l, Some(&remote(1, 99, bare.clone())), None, c),
            Decision::NeedLocalMd5
        );
        assert_eq!(
            decide_upload(
                &l,
                Some(&remote(1, 99, bare.clone())),
                Some("0cc175b9c0f1b6a831c399e269772661"),
                c
            ),
            Decision::Skip
        );
        let mut multi = remote(1, 99, bare);
        multi.etag = Some("\"abc-3\"".into());
        assert_eq!(
            decide_upload(&l, Some(&multi), Some("x"), c),
            Decision::Copy("no checksum in the bucket to compare")
        );
    }

    #[test]
    fn symlinks_dirs_and_specials() {
        let mut link = file(5, 100, 0o777);
        link.kind = LocalKind::Symlink;
        let as_file = RemoteMeta {
            posix: posix(libc::S_IFREG | 0o644, 100),
            md5: None,
        };
        assert_eq!(
            decide_upload(&link, Some(&remote(5, 100, Some(as_file))), None, R),
            Decision::Copy("type differs")
        );
        let as_link = RemoteMeta {
            posix: posix(libc::S_IFLNK | 0o777, 100),
            md5: None,
        };
        assert_eq!(
            decide_upload(&link, Some(&remote(5, 100, Some(as_link))), None, R),
            Decision::Skip
        );
        let mut d = file(0, 0, 0o755);
        d.kind = LocalKind::Dir { empty: true };
        assert_eq!(decide_upload(&d, None, None, R), Decision::Copy("new"));
        d.kind = LocalKind::Dir { empty: false };
        assert_eq!(decide_upload(&d, None, None, R), Decision::Skip);
        d.kind = LocalKind::Other;
        assert!(matches!(
            decide_upload(&d, None, None, R),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn download_decisions() {
        let meta = RemoteMeta {
            posix: posix(libc::S_IFREG | 0o600, 100),
            md5: Some("0cc175b9c0f1b6a831c399e269772661".into()),
        };
        let r = remote(1, 500, Some(meta));
        assert_eq!(decide_download(&r, None, None, R), Decision::Copy("new"));
        assert_eq!(
            decide_download(&r, Some(&file(1, 100, 0o600)), None, R),
            Decision::Skip
        );
        assert_eq!(
            decide_download(&r, Some(&file(1, 100, 0o644)), None, R),
            Decision::Copy("mode differs")
        );
        assert_eq!(
            decide_download(&r, Some(&file(1, 101, 0o600)), None, R),
            Decision::Copy("mtime differs")
        );
        // No headers: LastModified is the mtime a download set, 0644 the mode.
        let bare = remote(1, 500, Some(RemoteMeta::default()));
        assert_eq!(
            decide_download(&bare, Some(&file(1, 500, 0o644)), None, R),
            Decision::Skip
        );
        let mut d = file(0, 0, 0o755);
        d.kind = LocalKind::Dir { empty: false };
        assert!(matches!(
            decide_download(&r, Some(&d), None, R),
            Decision::Refuse(_)
        ));
        let c = Rules {
            checksum: true,
            ..R
        };
        assert_eq!(
            decide_download(&r, Some(&file(1, 100, 0o600)), Some("ff"), c),
            Decision::Copy("content differs")
        );
    }

    #[test]
    fn keys_that_cannot_be_paths_are_refused_with_reasons() {
        let long = "n".repeat(256);
        let keys = vec![
            "p/a/b.txt".to_string(),
            "p/a".to_string(),
            "p/empty/".to_string(),
            "p/x//y".to_string(),
            "p/./z".to_string(),
            "p/../z".to_string(),
            format!("p/{long}"),
            "p/".to_string(),
            "q/other".to_string(),
        ];
        let t = remote_tree("p/", keys.into_iter().map(|k| (k, ())));
        assert_eq!(t.files.keys().collect::<Vec<_>>(), vec!["a/b.txt"]);
        assert!(t.dirs.contains("a") && t.dirs.contains("empty"));
        assert!(t.markers.contains_key("empty"));
        let refused: Vec<&str> = t.refused.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(refused.len(), 5, "{:?}", t.refused);
        assert!(refused.contains(&"p/a"));
        assert!(refused.contains(&"p/x//y"));
        assert!(t.refused.iter().any(|(_, r)| r.contains("255")));
        assert_eq!(key_for("p/", "a/b", false), "p/a/b");
        assert_eq!(key_for("", "d", true), "d/");
    }
}
