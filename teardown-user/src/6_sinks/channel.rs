//! One line per deviating teardown, sent to another thread (the `top` view).

use std::{io, sync::mpsc::SyncSender};

use super::{endpoint, Report, Sink, Summary};
use crate::judge::Conformance;

pub struct DeviationLines {
    tx: SyncSender<String>,
}

impl DeviationLines {
    pub fn new(tx: SyncSender<String>) -> Self {
        DeviationLines { tx }
    }
}

impl Sink for DeviationLines {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        if r.verdict.conformance != Conformance::Deviates {
            return Ok(());
        }
        let c = r.conn;
        let who = c
            .process
            .map(|t| format!(" {}({})", crate::escape::text(&t.comm.as_str()), t.pid))
            .unwrap_or_default();
        let first = r
            .verdict
            .findings
            .first()
            .map(|f| format!(": {}", f.message))
            .unwrap_or_default();
        let line = format!(
            "{} -> {}{}  {}{}",
            endpoint(&c.local),
            endpoint(&c.remote),
            who,
            r.verdict.headline(),
            first
        );
        // A full view drops lines rather than slowing the trace; the view shows the latest.
        let _ = self.tx.try_send(line);
        Ok(())
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        Ok(())
    }
}
