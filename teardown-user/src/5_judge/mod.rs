//! Stage 5, judge: each tracked connection (stage 4) against the documented sequence.
//!
//! The validator: one connection's events in, one [`Verdict`] out. Pure logic, no kernel, no I/O.
//!
//! - [`model`]: the documented steps and the legal transitions as data, and the one transition
//!   function ([`model::Trace::apply`]) that folds events into the judgement state;
//! - [`seq`]: U, V, W and the relations of the documented table (docs/close-sequence.md, §5);
//! - `classify`: the role of each end and how the connection ended (variant, finding);
//! - `decide`: [`judge`], which folds, classifies and checks one connection into a verdict;
//! - [`verdict`]: the verdict and its parts, as the sinks read them;
//! - [`zeek`]: the connection in Zeek's conn.log words (`conn_state`, `history`);
//! - [`render`]: text for the terminal.
//!
//! [`judge`] never panics, whatever the events: every input gives exactly one verdict.

mod classify;
mod decide;
pub mod model;
pub mod render;
pub mod seq;
pub mod verdict;
pub mod zeek;

#[cfg(test)]
mod tests;

pub use decide::{judge, judge_with, JudgeOptions, TimewaitOutcome};
pub use model::{DocSide, Meaning, StateTime, Step, STEPS, TRANSITIONS};
pub use seq::{Outcome, Sender, SeqCheck, Term, Wave, Waves};
pub use verdict::{
    Code, Conformance, Finding, ResetBy, ResetInfo, Role, TimeWaitPath, Variant, Verdict,
};
