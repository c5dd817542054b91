//! `--svg-dir DIR`: the ladder of each chosen connection as `DIR/connection-ID.svg`.
//!
//! A connection that left a TIME_WAIT is drawn at once, and drawn again when sock_diag (or the
//! kernel's timer events) tells how its TIME_WAIT ended, up to a bound of connections waiting.

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    ladder::{svg, Chosen, Ladder},
    Report, Sink, Summary,
};
use crate::{sock_diag::watch::TwWhat, track::timewait::TimewaitNote};

/// Ladders kept for their TIME_WAIT's end at most; past it, the oldest stays as first drawn.
const WAITING_MAX: usize = 4096;

pub struct SvgDirSink {
    dir: PathBuf,
    chosen: Chosen,
    /// Ladders whose TIME_WAIT has not ended, with their title, by the id of the end whose
    /// TIME_WAIT it is (both ends' ladders draw it).
    waiting: HashMap<u64, Vec<(Ladder, String)>>,
    order: VecDeque<u64>,
    written: u64,
}

/// The line above a ladder: `#7 10.0.0.1:40000 -> 10.0.0.2:80  pid 12 (curl)`.
pub fn title(r: &Report<'_>) -> String {
    let c = r.conn;
    let mut t = format!(
        "#{} {} -> {}",
        c.id,
        super::endpoint(&c.local),
        super::endpoint(&c.remote)
    );
    if let Some(p) = &c.process {
        t.push_str(&format!(
            "  pid {} ({})",
            p.pid,
            crate::escape::text(&p.comm.as_str())
        ));
    }
    t
}

/// The id of the end whose TIME_WAIT a ladder draws (the facts about it carry that id), when
/// that end was traced.
pub fn time_wait_owner(l: &Ladder, r: &Report<'_>) -> Option<u64> {
    let bar = l.time_wait?;
    if bar.lane == l.us_lane() {
        Some(r.conn.id)
    } else {
        r.peer_id
    }
}

impl SvgDirSink {
    /// Creates `dir` if it is missing.
    pub fn new(dir: &Path, chosen: Chosen) -> io::Result<SvgDirSink> {
        fs::create_dir_all(dir)?;
        Ok(SvgDirSink {
            dir: dir.to_path_buf(),
            chosen,
            waiting: HashMap::new(),
            order: VecDeque::new(),
            written: 0,
        })
    }

    fn write(&self, l: &Ladder, title: &str) -> io::Result<()> {
        let path = self.dir.join(format!("connection-{}.svg", l.id));
        // Written whole, then renamed: a reader never sees half a drawing.
        let tmp = self.dir.join(format!(".connection-{}.svg.tmp", l.id));
        fs::write(&tmp, svg::render(l, title))?;
        fs::rename(&tmp, &path)
    }
}

impl Sink for SvgDirSink {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        if !self.chosen.takes(r.verdict) {
            return Ok(());
        }
        let l = Ladder::of(r);
        let title = title(r);
        self.write(&l, &title)?;
        self.written += 1;
        if let Some(owner) = time_wait_owner(&l, r) {
            if self.waiting.len() >= WAITING_MAX {
                while let Some(old) = self.order.pop_front() {
                    if self.waiting.remove(&old).is_some() {
                        break;
                    }
                }
            }
            self.order.push_back(owner);
            self.waiting.entry(owner).or_default().push((l, title));
        }
        Ok(())
    }

    fn timewait(&mut self, note: &TimewaitNote) -> io::Result<()> {
        let Some(mut ladders) = self.waiting.remove(&note.id) else {
            return Ok(());
        };
        for (l, title) in &mut ladders {
            l.timewait_fact(&note.fact);
            self.write(l, title)?;
        }
        if !matches!(note.fact.what, TwWhat::Left { .. }) {
            self.waiting.insert(note.id, ladders);
        }
        Ok(())
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        crate::say!(
            "{} ladder{} written to {}",
            self.written,
            if self.written == 1 { "" } else { "s" },
            crate::escape::text(&self.dir.display().to_string())
        );
        Ok(())
    }
}
