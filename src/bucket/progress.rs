//! Progress of long runs: a bar on a terminal (stderr), plain lines otherwise (one per event
//! on stdout, and a count on stderr every 10 s), so logs and pipes stay readable.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    done: AtomicU64,
    total: AtomicU64,
    last: Mutex<Instant>,
}

impl Progress {
    /// `what`: e.g. "objects checked".
    pub fn new(what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner} {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            b.set_style(style);
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            bar,
            what: what.to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// More work became known (listing pages arrive while objects are processed).
    pub fn add_total(&self, n: u64) {
        let t = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.set_length(t);
        }
    }

    pub fn inc(&self) {
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(b) => b.inc(1),
            None => {
                let mut last = self.last.lock();
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    eprintln!("{}: {d}/{}", self.what, self.total.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// An event line (stdout), kept clear of the bar.
    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| outln!("{s}")),
            None => outln!("{s}"),
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
