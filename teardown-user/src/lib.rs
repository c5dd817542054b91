//! teardown: watch every TCP connection on a host close, and check each teardown against the
//! documented close sequence.
//!
//! The pipeline, top-down:
//!
//! ```text
//! kernel ring buffer ── kernel::EventStream (tokio AsyncFd)
//!   -> event::Event::decode            raw bytes to typed, Copy values
//!   -> bounded channel                 (pipeline)
//!   -> tracker::Tracker                events grouped per connection, both ends paired
//!   -> validate::judge                 the documented sequence as a state machine: a Verdict
//!   -> sink::Sink                      terminal text, JSON Lines, recording, summary
//! ```
//!
//! `record` writes events to a versioned file, `replay` feeds such a file through the same
//! pipeline without a kernel.

/// `eprintln!` that never panics: when standard error is a pipe whose reader went away, the
/// agent must go on and flush its real output (stdout, `-o FILE`) rather than die on a note.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod clock;
pub mod commands;
pub mod diag;
pub mod event;
pub mod join;
pub mod kernel;
pub mod monitor;
pub mod pipeline;
pub mod recording;
pub mod sink;
pub mod tracker;
pub mod tui;
pub mod validate;
