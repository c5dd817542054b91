//! sock_diag polled beside the live loop, on threads of their own, one per network namespace:
//! the timewait sockets the traced connections leave behind, and the sockets already closing
//! when the trace began.

use std::{path::PathBuf, time::Duration};

use tokio::sync::mpsc;

use crate::sock_diag::watch::{Closing, TwFact};

/// Which network namespaces' timewait sockets are followed, and how often.
#[derive(Clone, Debug)]
pub struct TimewaitFollow {
    pub every: Duration,
    /// Namespaces besides the process's own, as paths.
    pub netns: Vec<PathBuf>,
}

/// One sock_diag poll of one network namespace.
pub(super) struct Polled {
    pub facts: Vec<TwFact>,
    /// The sockets closing at that moment, on the namespace's first poll only (they seed the
    /// tracker: connections first seen mid-teardown).
    pub closing_at_start: Option<Vec<Closing>>,
}

/// Polls sock_diag on threads of its own, one per network namespace (a dump can take
/// milliseconds on a busy host; the ring buffer must not wait for it). Problems are reported
/// once and end the polling of that namespace, not the trace.
pub(super) fn watch_timewait(
    follow: &TimewaitFollow,
) -> (
    mpsc::Receiver<Polled>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (tx, rx) = mpsc::channel::<Polled>(16);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let namespaces = std::iter::once(None).chain(follow.netns.iter().cloned().map(Some));
    for netns in namespaces {
        let (tx, stop, every) = (tx.clone(), stop.clone(), follow.every);
        let spawned = std::thread::Builder::new()
            .name("sock_diag".into())
            .spawn(move || poll_timewait(netns, every, &tx, &stop));
        if let Err(e) = spawned {
            crate::say!("note: timewait sockets are not followed: {e}");
        }
    }
    (rx, stop)
}

/// The loop of one [`watch_timewait`] thread, in `netns` (None: the process's own).
fn poll_timewait(
    netns: Option<PathBuf>,
    every: Duration,
    tx: &mpsc::Sender<Polled>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let where_ = netns
        .as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default();
    if let Some(path) = &netns {
        if let Err(e) = crate::sock_diag::netns::enter(path) {
            crate::say!("note: timewait sockets{where_} are not followed: {e}");
            return;
        }
    }
    let mut watcher = match crate::sock_diag::watch::TwWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            crate::say!("note: timewait sockets{where_} are not followed: {e}");
            return;
        }
    };
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        match watcher.poll() {
            Ok((facts, closing)) => {
                let polled = Polled {
                    facts,
                    closing_at_start: std::mem::take(&mut first).then_some(closing),
                };
                if tx.blocking_send(polled).is_err() {
                    return;
                }
            }
            Err(e) => {
                crate::say!("note: timewait sockets{where_} are no longer followed: {e}");
                return;
            }
        }
        while started.elapsed() < every && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
    }
}
