//! The real tracer, attached for the length of a test: the embedded eBPF programs are loaded
//! exactly as `teardown trace` loads them, and every event is kept for the test to inspect.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use teardown::{
    decode::Event,
    judge::{self, Verdict},
    kernel::{Capabilities, Probe, ProbeConfig},
    track::{Finished, Tracker, TrackerConfig},
};

/// What the tracer thread hands back: the events and the kernel's lost-event count.
type Collected = Result<(Vec<Event>, u64), String>;

pub struct Tracer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Collected>>,
    pub caps: Capabilities,
}

/// One traced connection with its verdict.
#[derive(Debug)]
pub struct Traced {
    pub finished: Finished,
    pub verdict: Verdict,
}

impl Traced {
    /// The states, as `OLD->NEW` strings, and non-state events as `retransmit@STATE` and so on:
    /// one per stored run (repeats past the first three of a kind in a state are one run).
    pub fn steps(&self) -> Vec<String> {
        use teardown::decode::EventKind::*;
        self.finished
            .conn
            .events
            .iter()
            .map(|e| match e.ev.kind {
                State { old, new } => format!("{old}->{new}"),
                Retransmit { state } => format!("retransmit@{state}"),
                ResetSent { state } => format!("rst_sent@{state}"),
                ResetReceived { state } => format!("rst_received@{state}"),
            })
            .collect()
    }
}

/// The steps every connection opens with, and the two documented ways of closing, as
/// [`Traced::steps`] writes them.
pub const CLIENT_OPEN: [&str; 2] = ["CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED"];
pub const SERVER_OPEN: [&str; 2] = ["LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED"];
pub const ACTIVE_CLOSE: [&str; 3] = [
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];
pub const PASSIVE_CLOSE: [&str; 3] = [
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
];

/// An abort while established: the RST sent by the end that closed (SO_LINGER 0, unread
/// data), and received by the other.
pub const RESET_SENT: [&str; 2] = ["ESTABLISHED->CLOSE", "rst_sent@CLOSE"];
pub const RESET_RECEIVED: [&str; 2] = ["rst_received@ESTABLISHED", "ESTABLISHED->CLOSE"];
/// A RST received in CLOSE_WAIT.
pub const RESET_IN_CLOSE_WAIT: [&str; 3] = [
    "ESTABLISHED->CLOSE_WAIT",
    "rst_received@CLOSE_WAIT",
    "CLOSE_WAIT->CLOSE",
];

/// The steps `open`, then `rest`.
pub fn steps(open: [&str; 2], rest: &[&str]) -> Vec<String> {
    open.iter().chain(rest).map(|s| (*s).to_owned()).collect()
}

/// Splits the two traced ends of one connection to `port` into (client end, server end).
pub fn split_ends(mut traced: Vec<Traced>, port: u16) -> (Traced, Traced) {
    // The server end (local port = `port`) last.
    traced.sort_by_key(|t| t.finished.conn.local.port() == port);
    let [client, server] = <[Traced; 2]>::try_from(traced).unwrap_or_else(|traced| {
        panic!(
            "expected exactly the two ends, got {:#?}",
            traced.iter().map(Traced::steps).collect::<Vec<_>>()
        )
    });
    assert_eq!(server.finished.conn.local.port(), port);
    assert_eq!(client.finished.conn.remote.port(), port);
    (client, server)
}

impl Tracer {
    /// Loads and attaches; returns once events are flowing.
    pub fn start() -> Tracer {
        Tracer::start_with(ProbeConfig::default())
    }

    pub fn start_with(cfg: ProbeConfig) -> Tracer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut probe = match Probe::load(cfg) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e}")));
                        return Err(format!("{e}"));
                    }
                };
                let mut stream = probe.events().map_err(|e| e.to_string())?;
                let _ = ready_tx.send(Ok(probe.caps.clone()));
                let mut events = Vec::new();
                let mut push = |b: &[u8]| {
                    if let Ok(e) = Event::decode(b) {
                        events.push(e);
                    }
                };
                while !stop2.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        stream.next_batch(4096, &mut push),
                    )
                    .await;
                }
                stream.drain_now(&mut push);
                let lost = probe.lost(true).map_err(|e| e.to_string())?.total();
                Ok((events, lost))
            })
        });
        let caps = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(caps)) => caps,
            Ok(Err(e)) => panic!("the tracer could not start: {e}"),
            Err(e) => panic!("the tracer did not start in 30 s: {e}"),
        };
        Tracer {
            stop,
            handle: Some(handle),
            caps,
        }
    }

    /// Stops tracing and returns the raw events and the lost-event count.
    pub fn stop(mut self) -> (Vec<Event>, u64) {
        // Let the last softirq-side transitions land.
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take();
        match h.map(|h| h.join()) {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => panic!("tracer failed: {e}"),
            Some(Err(_)) => panic!("tracer thread panicked"),
            None => (Vec::new(), 0),
        }
    }

    /// Stops, groups the events into connections and judges each; keeps those with `ip:port` as
    /// their local or remote end (other tests trace the same host at the same time).
    pub fn connections(self, ip: IpAddr, port: u16) -> Vec<Traced> {
        let end = SocketAddr::new(ip, port);
        let (events, lost) = self.stop();
        assert_eq!(lost, 0, "the kernel lost events during a small test");
        if let Some(path) = RECORD_TO.with(|r| r.borrow_mut().take()) {
            if let Err(e) = write_recording(&path, &events, end) {
                panic!("cannot write the recording {}: {e}", path.display());
            }
        }
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for e in events {
            tracker.on_event(e, &mut |f| out.push(f));
        }
        tracker.finish(&mut |f| out.push(f));
        out.into_iter()
            .filter(|f| !f.conn.is_listener() && (f.conn.local == end || f.conn.remote == end))
            .map(|finished| {
                let verdict = judge::judge(&finished.conn, finished.peer.as_deref());
                Traced { finished, verdict }
            })
            .collect()
    }
}

thread_local! {
    /// Where the next [`Tracer::connections`] of this thread writes its events as a recording.
    static RECORD_TO: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// The next [`Tracer::connections`] on this thread also writes the events of its connections
/// (those with its end) as a recording at `path`, as `teardown record` would.
pub fn record_next(path: &std::path::Path) {
    RECORD_TO.with(|r| *r.borrow_mut() = Some(path.to_path_buf()));
}

fn write_recording(
    path: &std::path::Path,
    events: &[Event],
    end: SocketAddr,
) -> std::io::Result<()> {
    use teardown::decode::recording::{Header, Record, Writer};
    let header = Header {
        format: "teardown-recording".to_owned(),
        version: 1,
        wall_offset_ns: teardown::kernel::clock::wall_offset_ns(),
        hook: "btf".to_owned(),
        seq: true,
        netns: true,
        tw_timers: false,
    };
    let file = std::fs::File::create(path)?;
    let mut w = Writer::new(std::io::BufWriter::new(file), &header)?;
    // By socket, one life at a time: a socket's last events carry a zeroed port (it was
    // unhashed), and a freed socket's address soon serves another connection, often another
    // test's running at the same time.
    let mut ours: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
    for e in events {
        // A usable tuple without our end is another connection's; a zeroed one belongs to
        // whichever life the socket had.
        let theirs =
            e.has_tuple() && !e.local.ip().is_unspecified() && !e.remote.ip().is_unspecified();
        let mine = if e.local == end || e.remote == end {
            true
        } else if e.starts_connection() || theirs {
            false
        } else {
            ours.get(&e.sk).copied().unwrap_or(false)
        };
        ours.insert(e.sk, mine);
        if mine {
            w.write(&Record::Event(*e))?;
        }
    }
    w.flush()
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
