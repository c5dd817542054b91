//! The validator: one connection's events in, one [`Verdict`] out. Pure logic, no kernel, no I/O.
//!
//! PLACEHOLDER INTERFACE — being written; see `judge`.

use serde::Serialize;

use crate::{event::TcpState, tracker::Connection};

/// Which side of the close a socket was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ActiveCloser,
    PassiveCloser,
    Simultaneous,
    NeverEstablished,
    Unknown,
}

/// A way in which the teardown departed from the documented sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The documented step (1-4) it breaks, when it breaks one.
    pub step: Option<u8>,
    /// Stable short identifier, for counting and filtering.
    pub code: &'static str,
    pub message: String,
}

/// The judgement of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub role: Role,
    pub variant: Variant,
    pub incomplete: Option<String>,
    pub conforms: bool,
    pub findings: Vec<Finding>,
    /// Nanoseconds spent in each closing state.
    pub closing_times: Vec<(TcpState, u64)>,
}

/// Judges one connection; `peer` is the other end when it was traced on this host too.
pub fn judge(conn: &Connection, _peer: Option<&Connection>) -> Verdict {
    let _ = conn;
    Verdict {
        role: Role::Unknown,
        variant: Variant::Unknown,
        incomplete: None,
        conforms: true,
        findings: Vec::new(),
        closing_times: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Unknown,
}

impl Variant {
    pub fn name(&self) -> &'static str {
        "unknown"
    }
}

impl Verdict {
    pub fn headline(&self) -> String {
        format!("{:?}", self.role)
    }
    pub fn write_text(&self, _w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        Ok(())
    }
}
