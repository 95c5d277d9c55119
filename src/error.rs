//! Errors of the filesystem logic, each with the errno the kernel is answered with.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Invalid,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("larger than the largest object S3 can hold")]
    TooBig,
    #[error("staging: {1}")]
    Staging(i32, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Unsupported(_) => libc::ENOTSUP,
            FsError::BadHandle => libc::EBADF,
            FsError::TooBig => libc::EFBIG,
            FsError::Staging(errno, _) => *errno,
            FsError::Store(e) => e.errno(),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Why copying one file or object (`bucketfs migrate`, the live copier) failed. Each is one
/// line in the summary, next to the path.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{op}: {err}")]
    Io {
        op: &'static str,
        err: std::io::Error,
    },
    #[error("S3: {0}")]
    Store(#[from] StoreError),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("the file changed while it was copied (run again to copy the new version)")]
    Changed,
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Name(String),
}

impl MigrateError {
    pub fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> MigrateError {
        move |err| MigrateError::Io { op, err }
    }
}
