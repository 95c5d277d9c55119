//! Pure mapping between file names and S3 keys: which keys can be file names, and what a
//! listing page means as directory entries.

use std::collections::BTreeMap;

/// Longest file-name component Linux accepts.
pub const NAME_MAX: usize = 255;
/// Longest key S3 accepts (bytes of UTF-8, mount prefix included).
pub const KEY_MAX: usize = 1024;

/// Whether a new object `key` fits S3's key limit; checked when a name is made, so the
/// caller gets `ENAMETOOLONG` there and not an upload error at close.
pub fn key_fits(key: &str) -> bool {
    key.len() <= KEY_MAX
}

/// Whether directory `prefix` (ending in `/`) can hold at least a one-byte name.
pub fn dir_fits(prefix: &str) -> bool {
    prefix.len() < KEY_MAX
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("`.` or `..`")]
    Dot,
    #[error("contains `/` or NUL")]
    BadByte,
    #[error("longer than 255 bytes")]
    TooLong,
    #[error("not UTF-8")]
    NotUtf8,
}

impl NameError {
    pub fn errno(self) -> i32 {
        match self {
            NameError::TooLong => libc::ENAMETOOLONG,
            _ => libc::EINVAL,
        }
    }
}

/// Checks that `name` (one path component) can be a file name and part of a key.
pub fn check_name(name: &[u8]) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(NameError::BadByte);
    }
    std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)
}

/// Normalises the `PREFIX` of `BUCKET:PREFIX`: no leading `/`, one trailing `/` unless empty.
pub fn normalize_prefix(p: &str) -> String {
    let t = p.trim_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        format!("{t}/")
    }
}

/// Key of file `name` in the directory whose key prefix is `dir` (`""` or ending in `/`).
pub fn file_key(dir: &str, name: &str) -> String {
    format!("{dir}{name}")
}

/// Key prefix of subdirectory `name` of `dir`.
pub fn dir_prefix(dir: &str, name: &str) -> String {
    format!("{dir}{name}/")
}

/// A child of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Child<T> {
    Dir,
    File(T),
}

/// Why a key was left out of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hidden {
    pub key: String,
    pub reason: String,
}

/// Turns the objects and common prefixes of a delimiter listing of `dir` into entries.
/// Keys that cannot be names are returned in `hidden`; a directory beats a file of the same
/// name; the zero-byte `dir/` marker itself is not an entry.
pub fn classify<T>(
    dir: &str,
    prefixes: impl IntoIterator<Item = String>,
    objects: impl IntoIterator<Item = (String, T)>,
) -> (BTreeMap<String, Child<T>>, Vec<Hidden>) {
    let mut out = BTreeMap::new();
    let mut hidden = Vec::new();
    for p in prefixes {
        let Some(name) = p.strip_prefix(dir).and_then(|r| r.strip_suffix('/')) else {
            continue;
        };
        match check_name(name.as_bytes()) {
            Ok(n) => {
                out.insert(n.to_string(), Child::Dir);
            }
            Err(e) => hidden.push(Hidden {
                key: p.clone(),
                reason: format!("directory name {e}"),
            }),
        }
    }
    for (k, v) in objects {
        let Some(name) = k.strip_prefix(dir) else {
            continue;
        };
        if name.is_empty() {
            continue; // the directory's own marker
        }
        match check_name(name.as_bytes()) {
            Ok(n) => {
                if out.contains_key(n) {
                    hidden.push(Hidden {
                        key: k.clone(),
                        reason: "a directory of the same name exists".into(),
                    });
                } else {
                    out.insert(n.to_string(), Child::File(v));
                }
            }
            Err(e) => hidden.push(Hidden {
                key: k.clone(),
                reason: format!("file name {e}"),
            }),
        }
    }
    (out, hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(check_name(b"a b.txt"), Ok("a b.txt"));
        assert_eq!(check_name(b""), Err(NameError::Empty));
        assert_eq!(check_name(b".."), Err(NameError::Dot));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(check_name(b"a\0b"), Err(NameError::BadByte));
        assert_eq!(check_name(&[0xff, 0xfe]), Err(NameError::NotUtf8));
        assert_eq!(NameError::TooLong.errno(), libc::ENAMETOOLONG);
        assert!(key_fits(&"k".repeat(KEY_MAX)));
        assert!(!key_fits(&"k".repeat(KEY_MAX + 1)));
        assert!(dir_fits(&format!("{}/", "d".repeat(KEY_MAX - 2))));
        assert!(!dir_fits(&format!("{}/", "d".repeat(KEY_MAX - 1))));
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/media/"), "media/");
        assert_eq!(normalize_prefix("a/b"), "a/b/");
        assert_eq!(file_key("a/", "x"), "a/x");
        assert_eq!(dir_prefix("", "x"), "x/");
    }

    #[test]
    fn classify_hides_bad_keys_and_dir_wins() {
        let (m, hidden) = classify(
            "d/",
            vec!["d/x/".to_string(), "d//".to_string(), "d/../".to_string()],
            vec![
                ("d/".to_string(), 0),
                ("d/x".to_string(), 1),
                ("d/f".to_string(), 2),
                (format!("d/{}", "n".repeat(256)), 3),
            ],
        );
        assert_eq!(m.get("x"), Some(&Child::Dir));
        assert_eq!(m.get("f"), Some(&Child::File(2)));
        assert_eq!(m.len(), 2);
        assert_eq!(hidden.len(), 4);
    }

    proptest! {
        #[test]
        fn valid_names_round_trip_through_keys(name in "[^/\u{0}]{1,60}", dir in "([a-z]{1,5}/){0,3}") {
            prop_assume!(name != "." && name != "..");
            let key = file_key(&dir, &name);
            let (m, hidden) = classify::<()>(&dir, vec![], vec![(key, ())]);
            prop_assert!(hidden.is_empty());
            prop_assert!(m.contains_key(&name));
        }
    }
}
