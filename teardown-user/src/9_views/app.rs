//! The state of `teardown top`: the latest report, the history of counts, the latest deviating
//! teardowns from the eBPF tracer, and what the keys did. No terminal here: the state is
//! drawn by [`super::ui`] and fed by the event loop in [`super::run`].

use std::collections::VecDeque;

use crate::monitor::{HostReport, Level, Report, StateCounts};

/// How many deviating teardowns are kept.
pub const TEARDOWNS_KEPT: usize = 200;

/// Rows kept in the host-wide tables (destinations, port pressure): more than a screen shows.
const ROWS_KEPT: usize = 50;

/// One network namespace in the namespaces panel.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceRow {
    pub netns: u32,
    /// Who owns it: `host`, a container, an `ip netns` name.
    pub label: String,
    pub counts: StateCounts,
    pub level: Level,
}

/// The application state.
#[derive(Debug, Clone)]
pub struct App {
    /// The latest report, once the first poll is done.
    pub report: Option<Report>,
    /// Counts per closing state, one entry per poll: (seconds since start, counts).
    pub history: VecDeque<(f64, StateCounts)>,
    pub history_len: usize,
    /// Deviating teardowns reported by the eBPF tracer, newest last.
    pub teardowns: VecDeque<String>,
    /// Whether the eBPF tracer feeds the teardown panel.
    pub tracer_attached: bool,
    /// Why the tracer is not attached, if known (shown in the panel).
    pub tracer_note: Option<String>,
    /// The latest poll error, shown in the status line until the next good poll.
    pub error: Option<String>,
    /// Where the view is taken from (host, or a network namespace).
    pub source: String,
    /// Every namespace of the latest host-wide poll, most timewait sockets first (empty when
    /// one namespace is observed).
    pub namespaces: Vec<NamespaceRow>,
    /// Namespaces found but not observed in the latest host-wide poll, and why the first was
    /// not (a lacking capability, typically).
    pub unobserved: Option<(usize, String)>,
    pub paused: bool,
    pub should_quit: bool,
    first_ms: Option<u64>,
}

impl App {
    /// A new state keeping `history_len` polls of history.
    pub fn new(source: impl Into<String>, history_len: usize) -> Self {
        Self {
            report: None,
            history: VecDeque::new(),
            history_len: history_len.max(2),
            teardowns: VecDeque::new(),
            tracer_attached: false,
            tracer_note: None,
            error: None,
            source: source.into(),
            namespaces: Vec::new(),
            unobserved: None,
            paused: false,
            should_quit: false,
            first_ms: None,
        }
    }

    /// Takes in a new report (ignored while paused).
    pub fn update(&mut self, report: Report) {
        if self.paused {
            return;
        }
        let first = *self.first_ms.get_or_insert(report.taken_at_ms);
        let t = report.taken_at_ms.saturating_sub(first) as f64 / 1000.0;
        if self.history.len() >= self.history_len {
            self.history.pop_front();
        }
        self.history.push_back((t, report.counts));
        self.report = Some(report);
        self.error = None;
    }

    /// Takes in a report of every namespace: the host's sums for the panels, and one row per
    /// namespace (ignored while paused).
    pub fn update_host(&mut self, host: &HostReport) {
        if self.paused {
            return;
        }
        let Some(merged) = host.merged(ROWS_KEPT) else {
            self.poll_failed("no network namespace could be observed".into());
            return;
        };
        self.namespaces = host
            .namespaces
            .iter()
            .map(|n| NamespaceRow {
                netns: n.owner.netns,
                label: n.owner.label(),
                counts: n.report.counts,
                level: n.report.level,
            })
            .collect();
        self.unobserved = host
            .unobserved
            .first()
            .map(|u| (host.unobserved.len(), u.error.clone()));
        self.update(merged);
    }

    /// Records a failed poll.
    pub fn poll_failed(&mut self, error: String) {
        // It may quote a path or a file's contents.
        self.error = Some(crate::escape::text(&error).into_owned());
    }

    /// Says whether the eBPF tracer is connected, and if not, why.
    pub fn set_tracer(&mut self, attached: bool, note: Option<String>) {
        self.tracer_attached = attached;
        self.tracer_note = note.map(|n| crate::escape::text(&n).into_owned());
    }

    /// A line describing one deviating teardown, from the eBPF tracer. Receiving one also marks
    /// the tracer attached.
    pub fn push_teardown(&mut self, line: String) {
        self.tracer_attached = true;
        if self.teardowns.len() >= TEARDOWNS_KEPT {
            self.teardowns.pop_front();
        }
        self.teardowns.push_back(safe_line(&line).into_owned());
    }

    /// Handles a key: `q` / Esc / Ctrl-C quit, `p` or space pauses, `c` clears the teardowns.
    pub fn on_key(&mut self, c: char, ctrl: bool) {
        match (c, ctrl) {
            ('q', false) | ('c', true) => self.should_quit = true,
            ('p', false) | (' ', false) => self.paused = !self.paused,
            ('c', false) => self.teardowns.clear(),
            _ => {}
        }
    }
}

/// A teardown line as the tracer composed it, its names already escaped; a line that still
/// holds a control character (a feed that did not escape) is escaped whole before it is shown.
/// ratatui would drop such characters silently, hiding what was there.
pub fn safe_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.contains(char::is_control) {
        crate::escape::text(line)
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}
