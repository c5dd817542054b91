//! sock_diag polled beside the live loop, on threads of their own, one per network namespace:
//! the timewait sockets the traced connections leave behind, and the sockets already closing
//! when the trace began.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

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

/// The namespaces whose timewait sockets the pipeline waits for, as it last said: a thread
/// polls its namespace only then (and once at the start, for the sockets already closing).
/// A dump walks every socket of the host, whatever its namespace: on a container host full of
/// timewait sockets, polling a namespace nobody waits on would cost more than the trace.
#[derive(Default)]
pub(super) struct Wanted(std::sync::Mutex<Option<Vec<u32>>>);

impl Wanted {
    /// None: every namespace is wanted.
    pub(super) fn set(&self, netns: Option<Vec<u32>>) {
        if let Ok(mut w) = self.0.lock() {
            *w = netns;
        }
    }

    fn wants(&self, netns: u32) -> bool {
        match self.0.lock() {
            Ok(w) => w.as_ref().is_none_or(|list| list.contains(&netns)),
            Err(_) => true,
        }
    }
}

/// Polls sock_diag on threads of its own, one per network namespace (a dump can take
/// milliseconds on a busy host; the ring buffer must not wait for it). Problems are reported
/// once and end the polling of that namespace, not the trace.
pub(super) fn watch_timewait(
    follow: &TimewaitFollow,
    wanted: &Arc<Wanted>,
) -> (mpsc::Receiver<Polled>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<Polled>(16);
    let stop = Arc::new(AtomicBool::new(false));
    let namespaces = std::iter::once(None).chain(follow.netns.iter().cloned().map(Some));
    for netns in namespaces {
        let (tx, stop, every) = (tx.clone(), stop.clone(), follow.every);
        let wanted = Arc::clone(wanted);
        let spawned = std::thread::Builder::new()
            .name("sock_diag".into())
            .spawn(move || poll_timewait(netns, every, &tx, &stop, &wanted));
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
    stop: &AtomicBool,
    wanted: &Wanted,
) {
    let where_ = netns
        .as_ref()
        .map(|p| format!(" in {}", crate::escape::text(&p.to_string_lossy())))
        .unwrap_or_default();
    if let Some(path) = &netns {
        if let Err(e) = crate::sock_diag::netns::enter(path) {
            crate::say!(
                "note: timewait sockets{where_} are not followed: {}",
                crate::escape::text(&e.to_string())
            );
            return;
        }
    }
    let mut watcher = match crate::sock_diag::watch::TwWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            crate::say!(
                "note: timewait sockets{where_} are not followed: {}",
                crate::escape::text(&e.to_string())
            );
            return;
        }
    };
    let inode = crate::sock_diag::watch::current_netns();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        if !first && !wanted.wants(inode) {
            std::thread::sleep(Duration::from_millis(20).min(every));
            continue;
        }
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
                crate::say!(
                    "note: timewait sockets{where_} are no longer followed: {}",
                    crate::escape::text(&e.to_string())
                );
                return;
            }
        }
        while started.elapsed() < every && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
    }
}
