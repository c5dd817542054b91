//! teardown: watch every TCP connection on a host close, and check each teardown against the
//! documented close sequence (`docs/close-sequence.md`).
//!
//! The library is grouped by stage, in the order data flows; each folder is numbered so that
//! the tree lists the stages in that order, and a stage imports only the stages before it:
//!
//! ```text
//! 1_kernel     the eBPF programs loaded and attached; the ring buffer as a stream of records
//! 2_sock_diag  netlink dumps of closing and timewait sockets (what `ss` reads), followed
//!              from poll to poll
//! 3_decode     raw records -> typed, Copy events; the recording format; the event filter
//! 4_track      events grouped per connection, both ends paired; timewait facts joined
//! 5_judge      the documented sequence as data and the verdict of each connection
//! 6_sinks      where verdicts go: text, JSON Lines, metrics, a channel; the summary
//! 7_live       the loop that drives 1 -> 6 (sock_diag polled beside the kernel events), live
//!              or replayed from a recording
//! 8_monitor    closing-state figures from sock_diag polls (`timewait`, `top`)
//! 9_views      `top`'s terminal view and its batch lines
//! commands     the command line: clap arguments turned into calls of the stages above
//! ```
//!
//! Beside the stages, `escape` makes untrusted text (names a process or a user chose) safe to
//! print; every stage that prints may use it.
//!
//! The vocabulary every stage shares (TCP states, event kinds, timewait substates and fates,
//! the predicates the kernel programs use too) lives in `teardown-common`.

/// `eprintln!` that never panics: when standard error is a pipe whose reader went away, the
/// agent must go on and flush its real output (stdout, `-o FILE`) rather than die on a note.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod escape;

#[path = "1_kernel/mod.rs"]
pub mod kernel;

#[path = "2_sock_diag/mod.rs"]
pub mod sock_diag;

#[path = "3_decode/mod.rs"]
pub mod decode;

#[path = "4_track/mod.rs"]
pub mod track;

#[path = "5_judge/mod.rs"]
pub mod judge;

#[path = "6_sinks/mod.rs"]
pub mod sinks;

#[path = "7_live/mod.rs"]
pub mod live;

#[path = "8_monitor/mod.rs"]
pub mod monitor;

#[path = "9_views/mod.rs"]
pub mod views;

pub mod commands;
