//! The live loop: kernel records read on a task of their own, decoded, recorded if asked, and
//! fed with sock_diag's timewait facts through the [`Pipeline`] until told to stop.
//!
//! The reader task and the pipeline share one thread; the bounded channel between them means
//! a slow pipeline lets the ring buffer fill, and the kernel then counts by kind what it did not
//! send: loss is reported, by cause, never silent.

use std::{collections::BTreeMap, fs::File, io::BufWriter, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use super::{
    timewait::{watch_timewait, Polled, TimewaitFollow, Wanted},
    Pipeline,
};
use crate::{
    decode::{
        self,
        recording::{self, Record},
        Decoded,
    },
    kernel::{
        caps::{self, Capability},
        clock, LostCounts, Probe,
    },
    sinks::{Metrics, Summary},
};

/// A batch of decoded records from one wake-up of the reader.
struct Batch {
    events: Vec<Decoded>,
    undecodable: u64,
}

/// Records read per batch at most. The batches' vectors go back to the reader once handled:
/// at this size (about 150 KB) a fresh one per batch would be a fresh mapping of memory, and
/// its page faults, each time.
const BATCH: usize = 1024;

pub type Recorder = recording::Writer<BufWriter<File>>;

/// How the live loop behaves towards the operator and the host.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveOptions {
    /// Say on stderr, as it happens, that events are not being delivered (a full-screen view
    /// says it its own way).
    pub say_losses: bool,
    /// The nice value for the thread the loop runs on (None: as it is).
    pub nice: Option<i32>,
}

/// Runs the live pipeline until `stop` resolves (or an output fails), then drains the ring
/// buffer, flushes everything and returns the summary.
pub async fn live(
    probe: &mut Probe,
    mut pipeline: Pipeline,
    mut recorder: Option<Recorder>,
    timewait: Option<TimewaitFollow>,
    metrics: Option<Arc<Metrics>>,
    options: LiveOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let say_losses = options.say_losses;
    let mut stream = probe.events().context("cannot read the ring buffer")?;
    // The kernel programs' debug records (`-vv` only), read on the tick: they are rare.
    let mut kernel_log = probe.kernel_log();
    let tw_wanted = Arc::new(Wanted::default());
    let (mut tw_rx, tw_stop) = match timewait {
        Some(follow) => {
            let (rx, stop) = watch_timewait(&follow, &tw_wanted);
            (Some(rx), Some(stop))
        }
        None => (None, None),
    };
    // After the sock_diag threads started (a thread inherits its creator's nice value): the
    // reader and the pipeline share this thread.
    if let Some(nice) = options.nice {
        if let Err(e) = set_thread_nice(nice) {
            let why = caps::lacking_note(Capability::SysNice).unwrap_or_else(|| e.to_string());
            crate::say!(
                "note: the agent's priority could not be raised ({why}); on a saturated host it \
                 may fall behind (--nice 0 does not ask)"
            );
        }
    }
    let (tx, mut rx) = mpsc::channel::<Batch>(256);
    // Handled batches' vectors, back to the reader (at most the batches in flight).
    let (spare_tx, mut spare_rx) = mpsc::unbounded_channel::<Vec<Decoded>>();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let decode =
            |events: &mut Vec<Decoded>, undecodable: &mut u64, bytes: &[u8]| match Decoded::decode(
                bytes,
            ) {
                Ok(e) => events.push(e),
                Err(e) => {
                    // E.g. a state number this kernel added: the kernel programs pass those
                    // on as they are, and the summary counts them.
                    log::debug!("undecodable kernel record: {e}");
                    *undecodable += 1;
                }
            };
        loop {
            let mut batch = Batch {
                events: spare_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(BATCH)),
                undecodable: 0,
            };
            tokio::select! {
                biased;
                _ = &mut stop_rx => {
                    // Last read: what is already in the ring buffer is still reported.
                    stream.drain_now(|b| decode(&mut batch.events, &mut batch.undecodable, b));
                    let _ = tx.send(batch).await;
                    return Ok::<(), std::io::Error>(());
                }
                r = stream.next_batch(BATCH, |b| decode(&mut batch.events, &mut batch.undecodable, b)) => {
                    r?;
                    if tx.send(batch).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    });

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_lost = LostCounts::default();
    let mut not_judged = BTreeMap::new();
    let mut last_check_ns = clock::monotonic_ns();
    let handle = |pipeline: &mut Pipeline,
                  recorder: &mut Option<Recorder>,
                  batch: Batch|
     -> anyhow::Result<()> {
        for _ in 0..batch.undecodable {
            pipeline.on_undecodable();
        }
        let mut events = batch.events;
        for d in events.drain(..) {
            match d {
                Decoded::Sock(ev) => {
                    if let Some(r) = recorder.as_mut() {
                        r.write(&Record::Event(ev))
                            .context("cannot write to the recording")?;
                    }
                    pipeline.on_event(ev);
                }
                Decoded::Timer(t) => {
                    if let Some(r) = recorder.as_mut() {
                        r.write(&Record::TwTimer(t))
                            .context("cannot write to the recording")?;
                    }
                    pipeline.on_tw_timer(&t);
                }
            }
        }
        // The reader may have stopped: then the vector is simply dropped.
        let _ = spare_tx.send(events);
        Ok(())
    };
    // `last`: the final check, after which nothing is read again.
    let mut check_lost = |pipeline: &mut Pipeline,
                          recorder: &mut Option<Recorder>,
                          last: bool|
     -> anyhow::Result<()> {
        let now = clock::monotonic_ns();
        let lost = probe
            .lost(last)
            .context("cannot read the lost-event counters")?;
        if lost.recursion != last_lost.recursion {
            pipeline.on_recursion_misses(&probe.recursion_misses());
        }
        // The kernel counts an event in LOST, then in NOT_JUDGED: a read between the two
        // is one short, so the last check reads both again.
        let recount = last && lost.behind > 0;
        if lost != last_lost || recount {
            if say_losses {
                say_first_loss(last_lost, lost);
            }
            if lost.behind != last_lost.behind || recount {
                not_judged = decode::not_judged(
                    &probe
                        .not_judged()
                        .context("cannot read the not-judged counters")?,
                );
            }
            last_lost = lost;
            if let Some(r) = recorder.as_mut() {
                r.write(&Record::Lost {
                    ts_ns: now,
                    total: lost.total(),
                    since_ns: last_check_ns,
                    by_cause: Some(lost),
                    not_judged: not_judged.clone(),
                })?;
            }
            pipeline.on_lost(lost.total(), lost, &not_judged, last_check_ns, now);
        }
        last_check_ns = now;
        Ok(())
    };

    tokio::pin!(stop);
    // A failure (the reader stopped, the recording cannot be written) ends the loop, but the
    // pipeline is still finished and its output flushed before the error is returned.
    let mut failure: Option<anyhow::Error> = None;
    loop {
        let step: anyhow::Result<()> = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => handle(&mut pipeline, &mut recorder, batch),
                None => Err(anyhow::anyhow!("the ring-buffer reader stopped")),
            },
            _ = tick.tick() => {
                if let Some(k) = kernel_log.as_mut() {
                    k.flush();
                }
                let r = check_lost(&mut pipeline, &mut recorder, false);
                // Hand on what settled, by a clock held back behind the reader (which may lag
                // the kernel by a batch): live output then matches a replay of the recording.
                // Totals first: a scrape never shows connections whose events it does not count.
                if let Some(m) = &metrics {
                    let p = pipeline.progress();
                    m.set_totals(p.events, p.lost_events, p.open_connections);
                    m.set_lost(&pipeline.lost());
                }
                pipeline.tick(clock::monotonic_ns().saturating_sub(TICK_LAG_NS));
                tw_wanted.set(pipeline.timewait_wanted());
                r
            }
            Some(polled) = async {
                match tw_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Polled { facts, closing_at_start } = polled;
                if let Some(closing) = closing_at_start {
                    pipeline.seed(&closing);
                }
                let mut r = Ok(());
                // The kernel's timer events follow timewait sockets: sock_diag only seeds.
                let facts = if pipeline.follows_timewait_from_kernel() {
                    Vec::new()
                } else {
                    facts
                };
                for fact in facts {
                    if let Some(rec) = recorder.as_mut() {
                        if let Err(e) = rec.write(&Record::Timewait(fact.clone())) {
                            r = Err(anyhow::Error::new(e).context("cannot write to the recording"));
                        }
                    }
                    pipeline.on_timewait(fact);
                }
                r
            }
            _ = &mut stop => break,
        };
        if let Err(e) = step {
            failure = Some(e);
            break;
        }
        if pipeline.failed() {
            break;
        }
    }
    if failure.is_some() {
        // The recording failed or the reader stopped: keep the output, drop the recording.
        recorder = None;
    }

    // Clean stop: the reader drains the ring buffer once more, then everything is flushed.
    if let Some(s) = tw_stop {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = stop_tx.send(());
    while let Some(batch) = rx.recv().await {
        if let Err(e) = handle(&mut pipeline, &mut recorder, batch) {
            failure.get_or_insert(e);
            recorder = None;
        }
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            failure.get_or_insert(anyhow::Error::new(e).context("reading the ring buffer failed"));
        }
        Err(e) => {
            failure.get_or_insert(anyhow::anyhow!("the ring-buffer reader stopped: {e}"));
        }
    }
    if let Err(e) = check_lost(&mut pipeline, &mut recorder, true) {
        failure.get_or_insert(e);
    }
    if let Some(k) = kernel_log.as_mut() {
        k.flush();
    }
    if let Some(mut r) = recorder {
        if let Err(e) = r.flush() {
            failure.get_or_insert(anyhow::Error::new(e).context("cannot write to the recording"));
        }
    }
    let summary = pipeline.finish().context("cannot write the output")?;
    match failure {
        Some(e) => Err(e.context(format!(
            "the trace stopped early; the output so far was written ({})",
            summary.to_text().lines().next().unwrap_or_default()
        ))),
        None => Ok(summary),
    }
}

/// Sets the calling thread's nice value (the others keep theirs).
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain integers; with PRIO_PROCESS, Linux takes a thread id for that thread alone.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Says once per cause, when it first happens, that events are not being delivered, and what
/// to do: the summary says how many, but an operator watching should not wait for it.
fn say_first_loss(before: LostCounts, now: LostCounts) {
    if before.behind == 0 && now.behind > 0 {
        crate::say!(
            "note: the agent is behind the kernel: events are being counted by kind instead of \
             judged (the summary lists them); a bigger --ring-size, narrower filters or \
             --conforming none help"
        );
    }
    if before.ring_full == 0 && now.ring_full > 0 {
        crate::say!(
            "note: the ring buffer was full: events are being lost (counted in the summary); \
             raise --ring-size or narrow the filters"
        );
    }
    if before.unreadable == 0 && now.unreadable > 0 {
        crate::say!(
            "note: some events were dropped for a field the kernel could not read (counted in \
             the summary); -vv names the fields"
        );
    }
    if before.port_table_evicted == 0 && now.port_table_evicted > 0 {
        crate::say!(
            "note: the --port table of matched sockets is full: sockets are evicted and lose \
             their last events (counted in the summary); raise --port-table"
        );
    }
}

/// How far the settle clock is held back behind real time in a live trace.
const TICK_LAG_NS: u64 = 500_000_000;
