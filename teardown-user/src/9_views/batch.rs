//! `teardown top --batch`: the same feeds as the view, printed as lines (as `top -b` does), for
//! logs, scripts and hosts without a terminal. A line per poll, a line per deviating teardown.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::{App, Feed};
use crate::monitor::Report;

/// How often the loop looks at the stop flag and the teardown channel.
const TICK: Duration = Duration::from_millis(100);

/// One poll as a line: UTC time, level, counts per closing state, table headroom, entry rate,
/// leaks and stuck sockets.
pub fn poll_line(r: &Report) -> String {
    let secs = r.taken_at_ms / 1000 % 86_400;
    let mut s = format!(
        "{:02}:{:02}:{:02}Z {:<8}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        r.level.name()
    );
    for (name, n) in r.counts.rows() {
        s.push_str(&format!(" {}={n}", name.replace(" (timewait)", "_tw")));
    }
    let b = &r.tw_buckets;
    s.push_str(&format!(
        " | timewait {}/{} ({:.1}%) overflow {} | entries {:.1}/s steady {:.0} | leaks {} stuck {}",
        b.count,
        b.max,
        b.used_pct,
        b.overflow_total
            .map_or_else(|| "?".to_string(), |o| o.to_string()),
        r.rate.per_second,
        r.rate.steady_state,
        r.close_wait_leaks.len(),
        r.stalls.len(),
    ));
    s
}

/// The namespaces part of a host-wide poll line: how many, and the one holding the most
/// timewait sockets.
pub fn namespaces_suffix(app: &App) -> String {
    let Some(busiest) = app.namespaces.first() else {
        return String::new();
    };
    let unobserved = match &app.unobserved {
        Some((n, why)) => format!(", {n} not observed ({why})"),
        None => String::new(),
    };
    format!(
        " | namespaces {}, most timewait: {} ({}){unobserved}",
        app.namespaces.len(),
        busiest.label,
        busiest.counts.timewait_total()
    )
}

/// Poll errors worth saying: a failure is said once, and again only once a poll succeeded or
/// failed otherwise (a missing kernel module, say, fails every poll alike).
#[derive(Default)]
struct Failures {
    last: Option<String>,
}

impl Failures {
    fn failed(&mut self, error: String) -> Option<&str> {
        if self.last.as_ref() == Some(&error) {
            return None;
        }
        Some(self.last.insert(error).as_str())
    }

    fn succeeded(&mut self) {
        self.last = None;
    }
}

/// Prints until `stop` is set, `until` passes, or the collector stops (an error). Poll errors
/// go to stderr, each once in a row, and the loop goes on.
pub fn run(
    app: &mut App,
    reports: &Receiver<Feed>,
    teardowns: Option<&Receiver<String>>,
    stop: &AtomicBool,
    until: Option<Instant>,
    out: &mut impl Write,
) -> io::Result<()> {
    if !app.tracer_attached {
        if let Some(note) = &app.tracer_note {
            writeln!(out, "# deviating teardowns not shown: {note}")?;
        }
    }
    let mut failures = Failures::default();
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        match reports.recv_timeout(TICK) {
            Ok(Feed::Report(r)) => {
                failures.succeeded();
                writeln!(out, "{}", poll_line(&r))?;
                app.update(*r);
            }
            Ok(Feed::Host(h)) => {
                failures.succeeded();
                app.update_host(&h);
                if let Some(r) = &app.report {
                    writeln!(out, "{}{}", poll_line(r), namespaces_suffix(app))?;
                }
            }
            Ok(Feed::Error(e)) => {
                if let Some(e) = failures.failed(e) {
                    crate::say!("teardown top: poll failed: {}", crate::escape::text(e));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                out.flush()?;
                return Err(io::Error::other("the sock_diag collector stopped"));
            }
        }
        if let Some(rx) = teardowns {
            loop {
                match rx.try_recv() {
                    Ok(line) => writeln!(out, "teardown {}", super::app::safe_line(&line))?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if app.tracer_attached {
                            app.set_tracer(false, Some("the eBPF tracer stopped".into()));
                            writeln!(out, "# the eBPF tracer stopped")?;
                        }
                        break;
                    }
                }
            }
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Failures;

    #[test]
    fn a_failure_is_said_once_in_a_row() {
        let mut f = Failures::default();
        assert_eq!(f.failed("no tcp_diag".into()), Some("no tcp_diag"));
        assert_eq!(f.failed("no tcp_diag".into()), None);
        assert_eq!(f.failed("interrupted".into()), Some("interrupted"));
        f.succeeded();
        assert_eq!(f.failed("interrupted".into()), Some("interrupted"));
    }
}
