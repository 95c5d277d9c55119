//! sd_notify(3) without libsystemd: one datagram to the unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). systemd (`Type=notify`) and the
//! `mount.bucketfs` helper both listen there: `READY=1` once the mount answers, `STOPPING=1`
//! when the daemon starts to save pending writes and unmount, `STATUS=...` for humans.
//!
//! [`Listener`] is the receiving side, used by the mount helper (and by tests).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Largest message we send or accept (systemd accepts far more; ours are short).
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is not an absolute path or an @abstract name")]
    BadAddress(String),
    #[error("sending to NOTIFY_SOCKET {addr:?}: {source}")]
    Send { addr: String, source: io::Error },
    #[error("notify socket: {0}")]
    Io(#[from] io::Error),
}

fn socket_addr(spec: &str) -> Result<SocketAddr, NotifyError> {
    if let Some(name) = spec.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|_| NotifyError::BadAddress(spec.to_string()));
    }
    if !spec.starts_with('/') {
        return Err(NotifyError::BadAddress(spec.to_string()));
    }
    SocketAddr::from_pathname(spec).map_err(|_| NotifyError::BadAddress(spec.to_string()))
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `NOTIFY_SOCKET`. Ok(false) when
/// nobody asked for notifications (the variable is unset or empty).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var(NOTIFY_SOCKET) {
        Ok(spec) if !spec.is_empty() => notify_to(&spec, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notify socket `spec`.
pub fn notify_to(spec: &str, state: &str) -> Result<(), NotifyError> {
    let addr = socket_addr(spec)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(|source| NotifyError::Send {
            addr: spec.to_string(),
            source,
        })?;
    Ok(())
}

/// Like [`notify`], but a failure is only a debug line: the mount works without a listener
/// (the helper that started it may be gone; systemd may have been restarted).
pub fn notify_quietly(state: &str) {
    match notify(state) {
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "sd_notify failed"),
    }
}

/// A `STATUS=` value on one line (the protocol is line-based).
pub fn status_line(s: &str) -> String {
    format!("STATUS={}", s.replace('\n', " "))
}

/// The listening end of a notify socket, bound to a path it removes when dropped.
pub struct Listener {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Listener {
    /// Binds a datagram socket at `path` (which must not exist).
    pub fn bind(path: &Path) -> Result<Listener, NotifyError> {
        let sock = UnixDatagram::bind(path)?;
        Ok(Listener {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// The value to put in `NOTIFY_SOCKET` for a child.
    pub fn address(&self) -> &Path {
        &self.path
    }

    /// The next message, or None if none arrives within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Option<String>, NotifyError> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a notify message sets `key` to `value` (e.g. `READY`, `1`).
pub fn has(message: &str, key: &str, value: &str) -> bool {
    message
        .lines()
        .filter_map(|l| l.split_once('='))
        .any(|(k, v)| k == key && v == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let l = Listener::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=Mounted").unwrap();
        let m = l.recv(Duration::from_secs(5)).unwrap().unwrap();
        assert!(has(&m, "READY", "1"));
        assert!(has(&m, "STATUS", "Mounted"));
        assert!(!has(&m, "STOPPING", "1"));
        assert_eq!(l.recv(Duration::from_millis(20)).unwrap(), None);
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bucketfs-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = l.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn bad_addresses_and_no_listener() {
        assert!(matches!(
            notify_to("relative/path", "READY=1"),
            Err(NotifyError::BadAddress(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody");
        assert!(matches!(
            notify_to(missing.to_str().unwrap(), "READY=1"),
            Err(NotifyError::Send { .. })
        ));
        assert_eq!(status_line("a\nb"), "STATUS=a b");
    }
}
