//! Stage 9, views: how `top` shows the monitor's figures (stage 8) and the live trace's
//! deviations (stage 7), and how the metrics endpoint shows those figures ([`gauges`]).
//!
//! The live terminal view of `teardown top`, split as ratatui apps usually are:
//!
//! - [`app`]: the state ([`App`]): latest report, history, deviating teardowns, keys;
//! - [`ui`]: drawing the state into a frame (testable with ratatui's `TestBackend`);
//! - this module: the terminal (raw mode and alternate screen, restored on exit and on panic)
//!   and the event loop, which drains the report and teardown channels and reads keys.
//!
//! It draws with plain characters and colours only, so it works over SSH in any terminal that
//! `top` works in.

pub mod app;
pub mod batch;
pub mod gauges;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

pub use app::App;

use crate::monitor::{HostReport, Report};

/// What the collector thread sends to the view.
#[derive(Debug, Clone)]
pub enum Feed {
    /// One network namespace's report.
    Report(Box<Report>),
    /// Every namespace's.
    Host(Box<HostReport>),
    Error(String),
}

/// Errors of the terminal.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
}

// Not `#[from]`: that would make the error its source too, and "{:#}" say it twice.
impl From<std::io::Error> for TuiError {
    fn from(e: std::io::Error) -> Self {
        TuiError::Terminal(e)
    }
}

/// How long the loop waits for a key before looking at the channels again.
const TICK: Duration = Duration::from_millis(200);
/// Teardown lines taken per tick at most (the rest wait for the next tick).
const TEARDOWNS_PER_TICK: usize = 1000;

/// Takes in whatever the channels hold now. Returns false once the report channel is closed.
pub fn drain(
    app: &mut App,
    reports: &Receiver<Feed>,
    teardowns: Option<&Receiver<String>>,
) -> bool {
    let mut open = true;
    loop {
        match reports.try_recv() {
            Ok(Feed::Report(r)) => app.update(*r),
            Ok(Feed::Host(h)) => app.update_host(&h),
            Ok(Feed::Error(e)) => app.poll_failed(e),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                open = false;
                break;
            }
        }
    }
    if let Some(rx) = teardowns {
        for _ in 0..TEARDOWNS_PER_TICK {
            match rx.try_recv() {
                Ok(line) => app.push_teardown(line),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if app.tracer_attached {
                        app.set_tracer(false, Some("the eBPF tracer stopped".into()));
                    }
                    break;
                }
            }
        }
    }
    open
}

/// Runs the view until `q`, `stop` (a signal), or `until`. The terminal is restored when this
/// returns, and by a panic hook if anything panics meanwhile: raw mode off, the alternate
/// screen left, the cursor shown, before the panic's message is printed.
pub fn run(
    app: &mut App,
    reports: Receiver<Feed>,
    teardowns: Option<Receiver<String>>,
    stop: &AtomicBool,
    until: Option<Instant>,
) -> Result<(), TuiError> {
    set_panic_hook();
    VIEW_OPEN.store(true, Ordering::SeqCst);
    let result = open_terminal().and_then(|mut terminal| {
        event_loop(
            &mut terminal,
            app,
            &reports,
            teardowns.as_ref(),
            stop,
            until,
        )
    });
    let restored = restore_terminal();
    result.and(restored.map_err(Into::into))
}

/// Set while the view owns the terminal: the panic hook restores it only then.
static VIEW_OPEN: AtomicBool = AtomicBool::new(false);

/// Set to any value, the view panics after its first frame. For tests only: they check that the
/// terminal is restored after a panic.
pub const PANIC_FOR_TESTS: &str = "TEARDOWN_TEST_VIEW_PANIC";

fn open_terminal() -> Result<ratatui::DefaultTerminal, TuiError> {
    use ratatui::crossterm::{execute, terminal};
    terminal::enable_raw_mode()?;
    execute!(std::io::stdout(), terminal::EnterAlternateScreen)?;
    Ok(ratatui::Terminal::new(
        ratatui::backend::CrosstermBackend::new(std::io::stdout()),
    )?)
}

/// Gives the terminal back as it was: raw mode off, the main screen, the cursor shown. Every
/// step is tried even if one fails; the first error is returned.
fn restore_terminal() -> std::io::Result<()> {
    use ratatui::crossterm::{cursor, execute, terminal};
    if !VIEW_OPEN.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    let raw = terminal::disable_raw_mode();
    let screen = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    raw.and(screen)
}

/// Restores the terminal before the panic's message is printed (on the alternate screen it
/// would be erased at once, and a shell left in raw mode without a cursor is unusable).
fn set_panic_hook() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = restore_terminal();
            previous(info);
        }));
    });
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    reports: &Receiver<Feed>,
    teardowns: Option<&Receiver<String>>,
    stop: &AtomicBool,
    until: Option<Instant>,
) -> Result<(), TuiError> {
    while !app.should_quit
        && !stop.load(Ordering::Relaxed)
        && until.is_none_or(|u| Instant::now() < u)
    {
        if !drain(app, reports, teardowns) && app.error.is_none() {
            app.poll_failed("the sock_diag collector stopped".into());
        }
        terminal.draw(|f| ui::draw(f, app))?;
        if std::env::var_os(PANIC_FOR_TESTS).is_some() {
            panic!("{PANIC_FOR_TESTS} is set: the view panics, as asked");
        }
        if event::poll(TICK)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Release {
                    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                    match k.code {
                        KeyCode::Char(c) => app.on_key(c, ctrl),
                        KeyCode::Esc => app.should_quit = true,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::monitor::{build_report, ReportConfig};
    use crate::sock_diag::{follow::Tracker, sysctl::KernelSettings};
    use crate::sock_diag::{FourTuple, FullSocket, Snapshot, TcpState, TimewaitSocket, TwSubstate};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn report(at: u64, n_tw: u16) -> Report {
        let tuple = |l: String, r: &str| FourTuple {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
        };
        let snap = Snapshot {
            taken_at_ms: at,
            timewait: (0..n_tw)
                .map(|i| TimewaitSocket {
                    tuple: tuple(format!("10.0.0.1:{}", 40000 + i), "10.0.0.9:443"),
                    substate: TwSubstate::TimeWait,
                    remaining_ms: 50_000,
                    cookie: u64::from(i),
                })
                .collect(),
            closing: vec![FullSocket {
                tuple: tuple("10.0.0.1:80".into(), "10.0.0.2:5555"),
                state: TcpState::CloseWait,
                inode: 7,
                uid: 0,
                cookie: 99_999,
                recv_queue: 1,
                send_queue: 0,
                retransmits: None,
                timer_ms: None,
                last_ack_recv_ms: Some(300_000),
            }],
            open: vec![],
        };
        let mut t = Tracker::new(60);
        t.observe(&snap);
        let mut k = KernelSettings::linux_defaults();
        k.port_range = (40000, 40009);
        k.tw_reuse = 0;
        build_report(&snap, &t, &k, None, None, &ReportConfig::default())
    }

    fn screen(app: &App) -> String {
        let mut term = Terminal::new(TestBackend::new(120, 36)).unwrap();
        term.draw(|f| ui::draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn renders_all_panels_without_tracer() {
        let mut app = App::new("host", 60);
        app.update(report(1_700_000_000_000, 6));
        app.update(report(1_700_000_001_000, 8));
        let s = screen(&app);
        for want in [
            "teardown top",
            "Closing states",
            "History",
            "Top destinations by TIME_WAIT",
            "10.0.0.9:443",
            "Port pressure (range 40000-40009, tw_reuse=0)",
            "80.0%",
            "WARNING",
            "Leaks and stuck sockets",
            ">=5m00s",
            ui::TRACER_MISSING,
            "q quit",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        let row = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(&format!("│{name} ")))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        };
        assert_eq!(row("TIME_WAIT").as_deref(), Some("8"));
        assert_eq!(row("CLOSE_WAIT").as_deref(), Some("1"));
        assert_eq!(app.history.len(), 2);
    }

    #[test]
    fn every_namespace_gets_a_row_and_the_panels_sum_them() {
        use crate::monitor::{HostReport, NamespaceOwner, NamespaceReport};
        let ns = |netns: u32, own: bool, n_tw: u16| NamespaceReport {
            owner: NamespaceOwner {
                netns,
                own,
                ip_netns: if own { vec![] } else { vec!["blue".into()] },
                container: None,
                processes: usize::from(own),
                processes_hidden: false,
            },
            report: report(1_700_000_000_000, n_tw),
        };
        let host = HostReport {
            namespaces: vec![ns(7, false, 6), ns(1, true, 2)],
            unobserved: vec![],
            left_out: 0,
            unreadable_processes: 0,
            totals: Default::default(),
            level: crate::monitor::Level::Ok,
        };
        let mut app = App::new("every network namespace", 10);
        let (rtx, rrx) = std::sync::mpsc::channel();
        rtx.send(Feed::Host(Box::new(host))).unwrap();
        assert!(drain(&mut app, &rrx, None));
        assert_eq!(app.report.as_ref().unwrap().counts.time_wait, 8);
        assert_eq!(app.report.as_ref().unwrap().counts.close_wait, 2);
        let s = screen(&app);
        assert!(s.contains("Network namespaces"), "{s}");
        let row = |label: &str| {
            s.lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{s}"))
                .to_string()
        };
        assert!(row("ip netns blue").contains(" 6 "), "{s}");
        assert!(row("│host").contains(" 2 "), "{s}");
        assert_eq!(
            batch::namespaces_suffix(&app),
            " | namespaces 2, most timewait: ip netns blue (no process left) (6)"
        );
    }

    #[test]
    fn teardown_lines_replace_the_tracer_message_and_q_quits() {
        let mut app = App::new("netns blue", 10);
        let (tx, rx) = std::sync::mpsc::channel();
        let (rtx, rrx) = std::sync::mpsc::channel();
        rtx.send(Feed::Report(Box::new(report(1_700_000_000_000, 1))))
            .unwrap();
        tx.send("10.0.0.1:40000 -> 10.0.0.9:443 RST in CLOSE_WAIT (EPIPE)".to_string())
            .unwrap();
        assert!(drain(&mut app, &rrx, Some(&rx)));
        let s = screen(&app);
        assert!(s.contains("RST in CLOSE_WAIT (EPIPE)"), "{s}");
        assert!(!s.contains(ui::TRACER_MISSING));
        assert!(s.contains("netns blue"));
        drop(tx);
        drop(rtx);
        assert!(!drain(&mut app, &rrx, Some(&rx)));
        assert!(!app.tracer_attached);
        app.on_key('p', false);
        assert!(app.paused);
        app.on_key('q', false);
        assert!(app.should_quit);
    }

    #[test]
    fn batch_prints_a_line_per_poll_and_per_teardown_until_stopped() {
        let mut app = App::new("host", 10);
        app.set_tracer(true, None);
        let (rtx, rrx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        rtx.send(Feed::Report(Box::new(report(1_700_000_000_000, 6))))
            .unwrap();
        rtx.send(Feed::Report(Box::new(report(1_700_000_001_000, 8))))
            .unwrap();
        tx.send("10.0.0.1:40000 -> 10.0.0.9:443 RST in CLOSE_WAIT".to_string())
            .unwrap();
        // Stops at the deadline, with both polls and the teardown printed.
        let mut out = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(1);
        batch::run(
            &mut app,
            &rrx,
            Some(&rx),
            &AtomicBool::new(false),
            Some(until),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // 1_700_000_000 s is 22:13:20 UTC.
        assert!(lines[0].starts_with("22:13:20Z "), "{text}");
        assert!(lines[0].contains(" TIME_WAIT=6 "), "{text}");
        assert!(lines[0].contains(" CLOSE_WAIT=1 "), "{text}");
        assert!(lines[0].contains("leaks 1 stuck 0"), "{text}");
        assert!(lines[2].starts_with("22:13:21Z "), "{text}");
        assert!(lines[2].contains(" TIME_WAIT=8 "), "{text}");
        assert_eq!(
            lines[1],
            "teardown 10.0.0.1:40000 -> 10.0.0.9:443 RST in CLOSE_WAIT"
        );
        assert_eq!(app.history.len(), 2);

        // A signal's flag stops it at once; a stopped collector is an error.
        let mut out = Vec::new();
        batch::run(&mut app, &rrx, None, &AtomicBool::new(true), None, &mut out).unwrap();
        assert!(out.is_empty());
        drop(rtx);
        let e = batch::run(
            &mut app,
            &rrx,
            None,
            &AtomicBool::new(false),
            None,
            &mut out,
        );
        assert!(e.is_err());
    }

    #[test]
    fn batch_says_why_teardowns_are_missing() {
        let mut app = App::new("host", 10);
        app.set_tracer(false, Some("eBPF tracer not attached: not root".into()));
        let (_rtx, rrx) = std::sync::mpsc::channel::<Feed>();
        let mut out = Vec::new();
        batch::run(&mut app, &rrx, None, &AtomicBool::new(true), None, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# deviating teardowns not shown: eBPF tracer not attached: not root\n"
        );
    }

    #[test]
    fn control_characters_are_drawn_escaped() {
        let mut app = App::new("host", 10);
        app.update(report(1_700_000_000_000, 1));
        // A line that reached the view unescaped, and an error quoting a file's contents.
        app.push_teardown("10.0.0.1:1 -> 10.0.0.9:2 evil\u{1b}]0;PWN\u{7}(1)".into());
        app.poll_failed("bad line \"\u{1b}[2J\"".into());
        let s = screen(&app);
        assert!(s.contains("evil\\x1b]0;PWN\\x07(1)"), "{s}");
        assert!(s.contains("bad line \"\\x1b[2J\""), "{s}");
        // An already escaped line is shown as it is, not escaped twice.
        app.push_teardown("a -> b name\\x1b".into());
        assert!(screen(&app).contains("name\\x1b "));
    }

    #[test]
    fn poll_errors_show_in_the_status_line() {
        let mut app = App::new("host", 10);
        app.poll_failed("sock_diag: permission denied".into());
        let s = screen(&app);
        assert!(
            s.contains("poll failed: sock_diag: permission denied"),
            "{s}"
        );
        assert!(s.contains("waiting for the first poll"));
    }
}
