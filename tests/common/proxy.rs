//! A fault-injecting HTTP/1.1 proxy between a bucketfs daemon and the S3 server.
//!
//! The daemon mounts with `--endpoint http://127.0.0.1:<proxy port>` ([`Proxy::mount_opts`]);
//! the test's own S3 client ([`super::s3`]) keeps talking to the server directly. Controls, as in
//! the conventions of `shared/cases/acceptance.md`:
//!
//! * [`Proxy::net_down`]: every open connection is reset (client and server side) and every new
//!   one is accepted and reset at once (RST, `SO_LINGER 0`), so the daemon sees "connection
//!   reset" on each attempt; [`Proxy::net_up`] restores service.
//! * [`Proxy::throttle`]: [`Throttle::Transient`] answers the first 3 attempts of each request
//!   with `503 SlowDown` (an S3 XML error body); [`Throttle::Always`] answers every request so;
//!   [`Throttle::Off`] passes everything through. "One request" is one SDK operation: the
//!   `amz-sdk-invocation-id` header, which stays the same across the SDK's retries (falling back
//!   to method + target + Content-Length + Range when a client does not send it).
//!
//! The proxy lives in the test process, so a daemon mounted through it must not outlive that
//! process: if the test binary is killed (SIGTERM to its group, say) while a test thread waits in
//! a FUSE call, the process cannot finish exiting, the proxy is gone, and the daemon would spend
//! minutes on attempt timeouts. A small watcher process (python3) therefore SIGKILLs the daemons
//! registered with [`Proxy::guard`] as soon as the test process is dying or gone, and lazily
//! unmounts their mount points; it checks each pid's command line (this bucketfs binary, this
//! proxy's endpoint) before it kills it.
//!
//! The proxy parses HTTP/1.1 framing (Content-Length, chunked, HEAD/204/304, read-to-EOF) so it
//! can throttle on a keep-alive connection request by request. `Expect: 100-continue` is answered
//! by the proxy itself. One thread per connection: test traffic only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    Off,
    /// the first 3 attempts of each request get `503 SlowDown`
    Transient,
    /// every request gets `503 SlowDown`
    Always,
}

/// How many attempts of one request [`Throttle::Transient`] refuses.
pub const TRANSIENT_FAILURES: u32 = 3;

struct Inner {
    upstream: SocketAddr,
    down: AtomicBool,
    throttle: AtomicU8,
    stop: AtomicBool,
    attempts: Mutex<HashMap<String, u32>>,
    /// every live socket (both sides), to reset on net_down
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    throttled: AtomicU64,
    resets: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    inner: Arc<Inner>,
    accept: Option<std::thread::JoinHandle<()>>,
    watcher: Mutex<Option<std::process::Child>>,
}

/// The watcher: argv = test pid, proxy port, bucketfs binary; stdin = daemon pids, one a line.
const WATCHER: &str = r#"
import os, select, signal, sys
test, port, binary = int(sys.argv[1]), sys.argv[2], sys.argv[3]
endpoint = ("--endpoint\0http://127.0.0.1:%s\0" % port).encode()
pids, buf = set(), b""
def dying():
    try:
        with open("/proc/%d/stat" % test) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
def ours(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return cmd.startswith(binary.encode() + b"\0") and endpoint in cmd
eof = False
while True:
    if not eof:
        r, _, _ = select.select([0], [], [], 0.5)
        if r:
            d = os.read(0, 4096)
            if not d:
                eof = True
            buf += d
            *lines, buf = buf.split(b"\n")
            pids.update(int(l) for l in lines if l.strip())
    else:
        select.select([], [], [], 0.5)
    if dying():
        for p in pids:
            if ours(p):
                try:
                    with open("/proc/%d/cmdline" % p, "rb") as f:
                        mnt = f.read().split(b"\0")[3]  # bucketfs mount SPEC MNT ...
                    os.kill(p, signal.SIGKILL)
                    for _ in range(50):
                        if not os.path.exists("/proc/%d" % p):
                            break
                        select.select([], [], [], 0.1)
                    os.spawnvp(os.P_WAIT, "fusermount3", ["fusermount3", "-u", "-z", mnt])
                except (OSError, IndexError):
                    pass
        sys.exit(0)
"#;

fn spawn_watcher(port: u16) -> Option<std::process::Child> {
    use std::process::{Command, Stdio};
    Command::new("python3")
        .arg("-c")
        .arg(WATCHER)
        .arg(std::process::id().to_string())
        .arg(port.to_string())
        .arg(super::BIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("[proxy] no watcher process (python3: {e})"))
        .ok()
}

/// Counters since the proxy started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// requests read from the daemon (every attempt)
    pub requests: u64,
    /// requests passed to the server
    pub forwarded: u64,
    /// requests answered with 503 SlowDown
    pub throttled: u64,
    /// connections reset by net_down (live ones and refused new ones)
    pub resets: u64,
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Reset a connection: RST instead of FIN, and wake any thread blocked on it.
fn reset(s: &TcpStream) {
    set_linger_zero(s);
    let _ = s.shutdown(Shutdown::Both);
}

impl Proxy {
    /// A proxy on 127.0.0.1 (free port) in front of `endpoint` (`http://host:port`).
    pub fn start(endpoint: &str) -> Proxy {
        let hostport = endpoint
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("proxy: only http:// endpoints, got {endpoint}"))
            .trim_end_matches('/');
        let upstream = hostport
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("proxy: resolve {hostport}: {e}"))
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind");
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            upstream,
            down: AtomicBool::new(false),
            throttle: AtomicU8::new(0),
            stop: AtomicBool::new(false),
            attempts: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let inner2 = inner.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, inner2))
            .unwrap();
        eprintln!("[proxy] 127.0.0.1:{port} -> {upstream}");
        Proxy {
            port,
            inner,
            accept: Some(accept),
            watcher: Mutex::new(spawn_watcher(port)),
        }
    }

    /// Have the watcher SIGKILL this mount's daemon if the test process dies with it mounted.
    /// Call after every (re)mount through this proxy.
    pub fn guard(&self, m: &super::Mount) {
        if let Some(w) = self.watcher.lock().unwrap().as_mut() {
            if let Some(stdin) = w.stdin.as_mut() {
                let _ = writeln!(stdin, "{}", m.pid());
                let _ = stdin.flush();
            }
        }
    }

    /// Mount `opts` through this proxy, guarded (see [`Proxy::guard`]).
    pub fn mount(&self, opts: super::MountOpts) -> super::Mount {
        let m = super::Mount::with(self.mount_opts_for(opts));
        self.guard(&m);
        m
    }

    /// A proxy in front of this test binary's S3 server.
    pub fn for_server() -> Proxy {
        Proxy::start(&super::server().endpoint)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whole-bucket mount options whose S3 endpoint is this proxy.
    pub fn mount_opts(&self) -> super::MountOpts {
        self.mount_opts_for(super::MountOpts::default())
    }

    /// `opts` (whatever spec and extra args) with the endpoint replaced by this proxy.
    pub fn mount_opts_for(&self, mut opts: super::MountOpts) -> super::MountOpts {
        let s = super::server();
        opts.flags = false;
        let mut args = vec![
            "--endpoint".to_string(),
            self.url(),
            "--region".to_string(),
            s.region.clone(),
            "--force-path-style".to_string(),
        ];
        args.append(&mut opts.args);
        opts.args = args;
        opts.env
            .push(("AWS_ENDPOINT_URL".to_string(), Some(self.url())));
        opts
    }

    /// Cut the daemon off from S3: reset every open connection, reset new ones at once.
    pub fn net_down(&self) {
        self.inner.down.store(true, Ordering::SeqCst);
        let conns: Vec<TcpStream> = {
            let mut c = self.inner.conns.lock().unwrap();
            c.drain().map(|(_, s)| s).collect()
        };
        for s in &conns {
            reset(s);
        }
        self.inner
            .resets
            .fetch_add(conns.len() as u64, Ordering::SeqCst);
        eprintln!(
            "[proxy {}] net_down ({} connections reset)",
            self.port,
            conns.len()
        );
    }

    pub fn net_up(&self) {
        self.inner.down.store(false, Ordering::SeqCst);
        eprintln!("[proxy {}] net_up", self.port);
    }

    pub fn throttle(&self, t: Throttle) {
        let v = match t {
            Throttle::Off => 0,
            Throttle::Transient => 1,
            Throttle::Always => 2,
        };
        self.inner.attempts.lock().unwrap().clear();
        self.inner.throttle.store(v, Ordering::SeqCst);
        eprintln!("[proxy {}] throttle {t:?}", self.port);
    }

    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.inner.requests.load(Ordering::SeqCst),
            forwarded: self.inner.forwarded.load(Ordering::SeqCst),
            throttled: self.inner.throttled.load(Ordering::SeqCst),
            resets: self.inner.resets.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // wake the accept loop
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let conns: Vec<TcpStream> = self
            .inner
            .conns
            .lock()
            .map(|mut c| c.drain().map(|(_, s)| s).collect())
            .unwrap_or_default();
        for s in &conns {
            reset(s);
        }
        // the mounts using this proxy are gone by now (declared after it, dropped first)
        if let Some(mut w) = self.watcher.lock().ok().and_then(|mut w| w.take()) {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for conn in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if inner.down.load(Ordering::SeqCst) {
            inner.resets.fetch_add(1, Ordering::SeqCst);
            reset(&conn);
            continue;
        }
        let inner = inner.clone();
        let _ = std::thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || {
                let ids = ConnIds::default();
                let _ = serve(conn, &inner, &ids);
                let mut c = inner.conns.lock().unwrap();
                for id in ids.0.lock().unwrap().iter() {
                    if let Some(s) = c.remove(id) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            });
    }
}

#[derive(Default)]
struct ConnIds(Mutex<Vec<u64>>);

fn register(inner: &Inner, ids: &ConnIds, s: &TcpStream) -> io::Result<()> {
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let clone = s.try_clone()?;
    let mut c = inner.conns.lock().unwrap();
    if inner.down.load(Ordering::SeqCst) {
        // net_down ran after we were accepted: behave as if reset
        reset(s);
        return Err(io::Error::new(io::ErrorKind::ConnectionReset, "down"));
    }
    c.insert(id, clone);
    ids.0.lock().unwrap().push(id);
    Ok(())
}

struct Head {
    /// request line or status line
    first: String,
    /// (name, value) in order
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
    fn encode(&self, skip: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(self.first.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            if skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Read one message head; Ok(None) on a clean EOF before any byte.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut first = String::new();
    loop {
        first.clear();
        if r.read_line(&mut first)? == 0 {
            return Ok(None);
        }
        if !first.trim().is_empty() {
            break; // tolerate stray CRLF between messages
        }
    }
    let first = first.trim_end().to_string();
    let mut headers = vec![];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { first, headers }))
}

enum Body {
    None,
    Length(u64),
    Chunked,
    UntilEof,
}

fn copy_exact<R: Read, W: Write>(r: &mut R, w: Option<&mut W>, mut n: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = w;
    while n > 0 {
        let want = buf.len().min(n as usize);
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        if let Some(w) = w.as_deref_mut() {
            w.write_all(&buf[..got])?;
        }
        n -= got as u64;
    }
    Ok(())
}

/// Copy (or with `w` None, drain) one body with the given framing.
fn copy_body<R: BufRead, W: Write>(
    r: &mut R,
    mut w: Option<&mut W>,
    body: &Body,
) -> io::Result<()> {
    match body {
        Body::None => Ok(()),
        Body::Length(n) => copy_exact(r, w, *n),
        Body::UntilEof => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = r.read(&mut buf)?;
                if got == 0 {
                    return Ok(());
                }
                if let Some(w) = w.as_deref_mut() {
                    w.write_all(&buf[..got])?;
                }
            }
        }
        Body::Chunked => loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
            }
            if let Some(w) = w.as_deref_mut() {
                w.write_all(line.as_bytes())?;
            }
            let size = line.trim().split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers up to the empty line
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "eof in trailer",
                        ));
                    }
                    if let Some(w) = w.as_deref_mut() {
                        w.write_all(t.as_bytes())?;
                    }
                    if t.trim().is_empty() {
                        return Ok(());
                    }
                }
            }
            copy_exact(r, w.as_deref_mut(), size + 2)?; // data + CRLF
        },
    }
}

fn request_body(h: &Head) -> Body {
    if h.has_token("transfer-encoding", "chunked") {
        Body::Chunked
    } else if let Some(n) = h.get("content-length").and_then(|v| v.parse().ok()) {
        Body::Length(n)
    } else {
        Body::None
    }
}

fn response_body(h: &Head, method: &str) -> Body {
    let status: u16 = h
        .first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Body::None
    } else if h.has_token("transfer-encoding", "chunked") {
        Body::Chunked
    } else if let Some(n) = h.get("content-length").and_then(|v| v.parse().ok()) {
        Body::Length(n)
    } else {
        Body::UntilEof
    }
}

fn slow_down(method: &str, target: &str, n: u64, close: bool) -> Vec<u8> {
    let path = target.split('?').next().unwrap_or("");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
         <Message>Please reduce your request rate.</Message><Resource>{path}</Resource>\
         <RequestId>proxy{n:08}</RequestId></Error>"
    );
    let is_head = method.eq_ignore_ascii_case("HEAD");
    let mut out = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nx-amz-request-id: proxy{n:08}\r\n\
         Content-Length: {}\r\nConnection: {}\r\n\r\n",
        if is_head { 0 } else { body.len() },
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    if !is_head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Has the peer closed (or reset) this idle connection?
fn peer_closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false, // unexpected bytes: leave them to the response parser
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

fn serve(client: TcpStream, inner: &Inner, ids: &ConnIds) -> io::Result<()> {
    register(inner, ids, &client)?;
    let _ = client.set_nodelay(true);
    let mut client_w = client.try_clone()?;
    let mut client_r = BufReader::with_capacity(64 * 1024, client);
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    loop {
        let Some(req) = read_head(&mut client_r)? else {
            return Ok(());
        };
        if inner.down.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "down"));
        }
        let n = inner.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let mut parts = req.first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let body = request_body(&req);
        let expect = req.has_token("expect", "100-continue");
        let throttled = match inner.throttle.load(Ordering::SeqCst) {
            1 => {
                let key = match req.get("amz-sdk-invocation-id") {
                    Some(id) => id.to_string(),
                    None => format!(
                        "{method} {target} len={} range={}",
                        req.get("content-length").unwrap_or("-"),
                        req.get("range").unwrap_or("-")
                    ),
                };
                let mut a = inner.attempts.lock().unwrap();
                let c = a.entry(key).or_insert(0);
                *c += 1;
                *c <= TRANSIENT_FAILURES
            }
            2 => true,
            _ => false,
        };
        if throttled {
            inner.throttled.fetch_add(1, Ordering::SeqCst);
            if expect {
                // the client holds its body back: answer and close
                client_w.write_all(&slow_down(&method, &target, n, true))?;
                return Ok(());
            }
            copy_body(&mut client_r, None::<&mut TcpStream>, &body)?;
            client_w.write_all(&slow_down(&method, &target, n, false))?;
            continue;
        }
        // a kept-alive server connection the server has closed meanwhile: open a new one (else
        // the proxy would fail a request the server never saw)
        if let Some((r, w)) = upstream.as_ref() {
            if r.buffer().is_empty() && peer_closed(w) {
                upstream = None;
            }
        }
        if upstream.is_none() {
            let s = TcpStream::connect_timeout(&inner.upstream, Duration::from_secs(5))?;
            register(inner, ids, &s)?;
            let _ = s.set_nodelay(true);
            let w = s.try_clone()?;
            upstream = Some((BufReader::with_capacity(64 * 1024, s), w));
        }
        let (up_r, up_w) = upstream.as_mut().unwrap();
        inner.forwarded.fetch_add(1, Ordering::SeqCst);
        up_w.write_all(&req.encode(&["expect"]))?;
        if expect {
            client_w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        copy_body(&mut client_r, Some(up_w), &body)?;
        up_w.flush()?;
        // response (skip any interim 1xx the server sends anyway)
        let resp = loop {
            let Some(resp) = read_head(up_r)? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            };
            let interim = resp
                .first
                .split_whitespace()
                .nth(1)
                .map(|s| s.starts_with('1') && s != "101")
                .unwrap_or(false);
            if !interim {
                break resp;
            }
        };
        let rbody = response_body(&resp, &method);
        client_w.write_all(&resp.encode(&[]))?;
        copy_body(up_r, Some(&mut client_w), &rbody)?;
        client_w.flush()?;
        let close = resp.has_token("connection", "close")
            || req.has_token("connection", "close")
            || matches!(rbody, Body::UntilEof);
        if close {
            return Ok(());
        }
    }
}
