//! Text rendering of a [`Verdict`] for the terminal.

use std::fmt::{self, Write};

use crate::kernel::clock::human_ns;

use super::{
    model::DocSide,
    seq::{Outcome, Sender, Term, Waves},
    verdict::{Conformance, Finding, ResetBy, Verdict},
};

/// " (step N)" unless the message already names its step.
fn step_suffix(f: &Finding) -> String {
    match f.step {
        Some(n) if !f.message.starts_with("step ") => format!(" (step {n})"),
        _ => String::new(),
    }
}

fn term(t: &Term) -> String {
    match t.value {
        Some(v) => format!("{:<3} ({v})", t.expr),
        None => format!("{:<3} (?)", t.expr),
    }
}

impl Verdict {
    /// One line: role, variant, conformance.
    pub fn headline(&self) -> String {
        let conf = match self.conformance {
            Conformance::Conforms => "conforms".to_owned(),
            Conformance::Deviates => {
                let n = self.findings.len();
                format!("deviates ({n} finding{})", if n == 1 { "" } else { "s" })
            }
            Conformance::Incomplete => "incomplete".to_owned(),
        };
        format!("{}, {}: {conf}", self.role.name(), self.variant.label())
    }

    /// Indented lines (the headline excluded, callers print it): why, what is unknown, findings,
    /// notes, the RST, the TIME_WAIT path, the waves with seq/ack, the checks, the durations.
    pub fn write_text(&self, w: &mut dyn Write) -> fmt::Result {
        writeln!(w, "  why: {}", self.why)?;
        if let Some(u) = &self.incomplete {
            writeln!(w, "  unknown: {u}")?;
        }
        for f in &self.findings {
            writeln!(w, "  ! [{}] {}{}", f.code, f.message, step_suffix(f))?;
        }
        for n in &self.notes {
            writeln!(w, "  - [{}] {}{}", n.code, n.message, step_suffix(n))?;
        }
        if let Some(r) = &self.reset {
            let by = match r.by {
                ResetBy::Us => "us",
                ResetBy::Peer => "the peer",
                ResetBy::Unknown => "unknown",
            };
            writeln!(w, "  reset: by {by} in {}: {}", r.state, r.cause)?;
        }
        if let Some(tw) = self.time_wait {
            writeln!(w, "  at close: {}", tw.describe())?;
        }
        if let Some(waves) = &self.waves {
            write_waves(w, waves)?;
        }
        if !self.checks.is_empty() {
            let count = |o: Outcome| self.checks.iter().filter(|c| c.outcome == o).count();
            writeln!(
                w,
                "  checks: {} hold, {} broken, {} not checkable, {} read U/V/W",
                count(Outcome::Holds),
                count(Outcome::Broken),
                count(Outcome::NotCheckable),
                count(Outcome::Defines)
            )?;
            // The relations that held are counted above; those that did not are shown.
            for c in self
                .checks
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Broken | Outcome::NotCheckable))
            {
                let mark = match c.outcome {
                    Outcome::Holds => "ok",
                    Outcome::Broken => "BROKEN",
                    Outcome::Defines => "def",
                    Outcome::NotCheckable => "n/a",
                };
                let obs = c.observed.map_or("?".to_owned(), |v| v.to_string());
                write!(w, "    {mark:<6} step {} {} [{obs}]", c.step, c.relation)?;
                if c.outcome == Outcome::Broken {
                    write!(
                        w,
                        " expected {}",
                        c.expected.map_or("?".to_owned(), |v| v.to_string())
                    )?;
                }
                match &c.note {
                    Some(n) => writeln!(w, " ({n})")?,
                    None => writeln!(w)?,
                }
            }
        }
        if !self.closing_times.is_empty() {
            let parts: Vec<String> = self
                .closing_times
                .iter()
                .map(|t| format!("{} {}", t.state, human_ns(t.ns)))
                .collect();
            writeln!(w, "  time in: {}", parts.join(", "))?;
        }
        Ok(())
    }
}

fn write_waves(w: &mut dyn Write, waves: &Waves) -> fmt::Result {
    let show = |v: Option<u32>| v.map_or("?".to_owned(), |v| v.to_string());
    write!(
        w,
        "  waves (we are the {} closer): U={} V={} W={}",
        match waves.we_are {
            DocSide::Active => "active",
            DocSide::Passive => "passive",
        },
        show(waves.u),
        show(waves.v),
        show(waves.w)
    )?;
    match waves.data_in_close_wait {
        Some(n) => writeln!(w, ", {n} bytes from CLOSE_WAIT")?,
        None => writeln!(w)?,
    }
    for wave in &waves.waves {
        let dir = match wave.sender {
            Sender::Us => "us -> peer",
            Sender::Peer => "peer -> us",
        };
        write!(
            w,
            "    {} {:<8} {dir}  seq={}",
            wave.step,
            wave.segment,
            term(&wave.seq)
        )?;
        match &wave.ack {
            Some(a) => writeln!(w, "  ack={}", term(a))?,
            None => writeln!(w)?,
        }
    }
    Ok(())
}
