//! A live trace on a thread of its own, for a view that is not the trace's output: `top`
//! shows a line per deviating teardown beside its sock_diag figures.

use std::sync::mpsc::{self, Receiver};

use super::{live, LiveOptions, Pipeline};
use crate::{
    kernel::{clock, Probe, ProbeConfig},
    sinks::DeviationLines,
    track::{Filter, TrackerConfig},
};

/// The live trace pipeline on its own thread, sending a line per deviating teardown.
pub struct TracerFeed {
    pub lines: Receiver<String>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub thread: std::thread::JoinHandle<()>,
}

impl TracerFeed {
    /// Starts the tracer; with `netns` (an inode number), only that namespace's teardowns.
    pub fn start(netns: Option<u32>) -> Result<TracerFeed, String> {
        let (line_tx, lines) = mpsc::sync_channel(1024);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("tracer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    // Its view shows no timewait facts: the timer programs would cost for nothing.
                    let cfg = ProbeConfig {
                        timewait_timers: false,
                        ..ProbeConfig::default()
                    };
                    let mut probe = match Probe::load(cfg) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    if netns.is_some() && !probe.caps.netns {
                        let _ = ready_tx.send(Err("this kernel's BTF does not give the \
                            socket's network namespace, so teardowns cannot be shown for one \
                            namespace"
                            .into()));
                        return;
                    }
                    let _ = ready_tx.send(Ok(()));
                    let filter = Filter {
                        netns: netns.into_iter().collect(),
                        ..Filter::default()
                    };
                    let mut pipeline = Pipeline::new(
                        TrackerConfig::default(),
                        filter,
                        vec![Box::new(DeviationLines::new(line_tx))],
                        clock::wall_offset_ns(),
                    );
                    pipeline.match_netns(probe.caps.netns);
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    if let Err(e) = live(
                        &mut probe,
                        pipeline,
                        None,
                        None,
                        None,
                        LiveOptions::default(),
                        stop,
                    )
                    .await
                    {
                        log::warn!("the tracer behind `top` stopped: {e:#}");
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TracerFeed {
                lines,
                stop,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the tracer thread ended before starting".into()),
        }
    }
}
