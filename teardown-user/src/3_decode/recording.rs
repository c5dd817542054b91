//! Recordings: the raw events of a trace, as versioned JSON Lines, for `teardown replay`.
//!
//! Line 1 is a header: `{"format":"teardown-recording","version":1,...}`. Every other line is
//! `{"type":"event",...}` (an [`Event`]), `{"type":"tw_timer",...}` (a [`TwTimer`]: an event of
//! a timewait socket's timer, when the header says `"tw_timers":true`), `{"type":"timewait",...}`
//! (what sock_diag showed of a timewait socket, otherwise) or
//! `{"type":"lost","ts_ns":..,"total":..,"by_cause":..}` (the kernel's loss counters moved). The format is documented in the README; a reader refuses versions it does
//! not know rather than guessing.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Write},
};

use serde::{Deserialize, Serialize};

pub use super::filter::EventFilter;
use super::{Event, TwTimer};
use crate::{kernel::LostCounts, sock_diag::watch::TwFact};

pub const FORMAT: &str = "teardown-recording";
pub const VERSION: u32 = 1;
/// Longest line a reader accepts: an event line is about 500 bytes.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at the start, ns: turns event times into wall-clock.
    pub wall_offset_ns: i64,
    /// The hook that made the events ("btf" or "tracepoint").
    pub hook: String,
    /// Whether events carry sequence numbers and socket flags.
    pub seq: bool,
    /// Whether events and timewait facts carry their network namespace (absent in recordings
    /// made before they did).
    #[serde(default)]
    pub netns: bool,
    /// Whether timewait sockets were followed from the kernel's timer events (`tw_timer`
    /// records) rather than sock_diag's facts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tw_timers: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Event(Event),
    /// What sock_diag showed of a timewait socket.
    Timewait(TwFact),
    /// An event of a timewait socket's timer, from the kernel.
    TwTimer(TwTimer),
    /// The loss counters read `total` at `ts_ns`; they read less at `since_ns`.
    Lost {
        ts_ns: u64,
        total: u64,
        #[serde(default)]
        since_ns: u64,
        /// `total` by cause (absent from recordings made before causes were told apart, whose
        /// losses were a full ring buffer's or unreadable records').
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by_cause: Option<LostCounts>,
        /// What the events counted instead of sent were, since the trace began.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        not_judged: BTreeMap<String, u64>,
    },
}

pub struct Writer<W: Write> {
    out: W,
    filter: Option<EventFilter>,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Writer { out, filter: None })
    }

    /// Records only the events of matching sockets.
    pub fn with_filter(mut self, filter: Option<EventFilter>) -> Self {
        self.filter = filter;
        self
    }

    pub fn write(&mut self, rec: &Record) -> io::Result<()> {
        if let Some(f) = self.filter.as_mut() {
            let keep = match rec {
                Record::Event(ev) => f.keep(ev),
                Record::Timewait(t) => f.keep_tuple(&t.local, &t.remote),
                Record::TwTimer(t) => f.keep_tuple(&t.local, &t.remote),
                Record::Lost { .. } => true,
            };
            if !keep {
                return Ok(());
            }
        }
        serde_json::to_writer(&mut self.out, rec)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What is wrong with a recording, and where.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line {line}: {what}")]
    Line { line: u64, what: String },
    #[error("the file is empty: a recording begins with a header line")]
    Empty,
    #[error("line 1: not a teardown recording ({0})")]
    NotARecording(String),
    #[error("line 1: recording format version {found}; this teardown reads version {VERSION}")]
    Version { found: u32 },
    #[error("reading the recording failed: {0}")]
    Io(#[from] io::Error),
}

pub struct Reader<R: BufRead> {
    input: R,
    line_no: u64,
    buf: Vec<u8>,
    pub header: Header,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut buf = Vec::new();
        let n = read_line_bounded(&mut input, &mut buf)?;
        if n == 0 {
            return Err(ReadError::Empty);
        }
        if buf.len() > MAX_LINE {
            return Err(ReadError::NotARecording(
                "the first line is too long".into(),
            ));
        }
        let header: Header = serde_json::from_slice(trim(&buf))
            .map_err(|e| ReadError::NotARecording(e.to_string()))?;
        if header.format != FORMAT {
            return Err(ReadError::NotARecording(format!(
                "format is {:?}, expected {FORMAT:?}",
                header.format
            )));
        }
        if header.version != VERSION {
            return Err(ReadError::Version {
                found: header.version,
            });
        }
        Ok(Reader {
            input,
            line_no: 1,
            buf,
            header,
        })
    }

    /// The next record; `Ok(None)` at the end. A bad line is an error naming it; the caller may
    /// go on reading after it.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            self.buf.clear();
            let n = read_line_bounded(&mut self.input, &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let line = self.line_no;
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::Line {
                    line,
                    what: format!("line longer than {MAX_LINE} bytes"),
                });
            }
            let text = trim(&self.buf);
            if text.is_empty() {
                continue;
            }
            return serde_json::from_slice(text)
                .map(Some)
                .map_err(|e| ReadError::Line {
                    line,
                    what: e.to_string(),
                });
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &b[..end]
}

/// Reads one line, keeping at most MAX_LINE + 1 bytes of it (the rest is consumed and dropped),
/// so that a huge line cannot exhaust memory. Returns the bytes consumed.
fn read_line_bounded<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let avail = input.fill_buf()?;
        if avail.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match avail.iter().position(|&c| c == b'\n') {
            Some(p) => (&avail[..=p], true),
            None => (avail, false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        input.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TcpState;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            wall_offset_ns: 1_700_000_000_000_000_000,
            hook: "btf".into(),
            seq: true,
            netns: true,
            tw_timers: false,
        }
    }

    fn sample() -> Event {
        crate::decode::testing::ev(
            5,
            0xabc,
            TcpState::Established,
            TcpState::FinWait1,
            "127.0.0.1:40000",
            "127.0.0.1:8080",
        )
    }

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &header()).unwrap();
        w.write(&Record::Event(sample())).unwrap();
        let lost = Record::Lost {
            ts_ns: 9,
            total: 3,
            since_ns: 5,
            by_cause: Some(LostCounts {
                ring_full: 1,
                unreadable: 0,
                behind: 2,
                port_table_evicted: 1,
                ..LostCounts::default()
            }),
            not_judged: [("ESTABLISHED>CLOSE_WAIT".to_owned(), 2)].into(),
        };
        w.write(&lost).unwrap();
        // As recordings made before causes were told apart wrote it.
        out.extend_from_slice(b"{\"type\":\"lost\",\"ts_ns\":10,\"total\":4}\n");
        let mut r = Reader::new(&out[..]).unwrap();
        assert_eq!(r.header, header());
        assert_eq!(r.next_record().unwrap(), Some(Record::Event(sample())));
        assert_eq!(r.next_record().unwrap(), Some(lost));
        assert_eq!(
            r.next_record().unwrap(),
            Some(Record::Lost {
                ts_ns: 10,
                total: 4,
                since_ns: 0,
                by_cause: None,
                not_judged: BTreeMap::new(),
            })
        );
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn names_the_bad_line_and_goes_on() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &header()).unwrap();
        w.write(&Record::Event(sample())).unwrap();
        out.extend_from_slice(b"{\"type\":\"event\",\"ts_ns\":\"oops\"}\n");
        w = Writer {
            out: &mut out,
            filter: None,
        };
        w.write(&Record::Event(sample())).unwrap();
        let mut r = Reader::new(&out[..]).unwrap();
        assert!(r.next_record().unwrap().is_some());
        let err = r.next_record().unwrap_err().to_string();
        assert!(err.starts_with("line 3: "), "{err}");
        assert!(
            r.next_record().unwrap().is_some(),
            "reading goes on after a bad line"
        );
    }

    #[test]
    fn refuses_other_versions_and_non_recordings() {
        let mut h = header();
        h.version = 99;
        let text = format!("{}\n", serde_json::to_string(&h).unwrap());
        assert!(matches!(
            Reader::new(text.as_bytes()),
            Err(ReadError::Version { found: 99 })
        ));
        assert!(matches!(
            Reader::new(&b"hello\n"[..]),
            Err(ReadError::NotARecording(_))
        ));
        assert!(matches!(Reader::new(&b""[..]), Err(ReadError::Empty)));
    }

    #[test]
    fn a_huge_line_is_an_error_not_an_allocation() {
        let mut out = Vec::new();
        Writer::new(&mut out, &header()).unwrap();
        out.extend(std::iter::repeat_n(b'x', MAX_LINE * 4));
        out.push(b'\n');
        let mut r = Reader::new(&out[..]).unwrap();
        let err = r.next_record().unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("longer"), "{err}");
        assert!(r.buf.capacity() < MAX_LINE * 2);
        assert_eq!(r.next_record().unwrap(), None);
    }
}
