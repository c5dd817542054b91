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
    io::{self, BufRead, Read as _, Write},
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

/// What is wrong with a recording, and where. Each says its cause once (no error here has a
/// `source()`: the text is complete as it is).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line that is not a record: the caller may go on reading after it.
    #[error("line {line}: {what}")]
    Line { line: u64, what: String },
    /// A line longer than [`MAX_LINE`]: reading stopped there, as finding the next line could
    /// mean reading without end (a file of zeros has no newline).
    #[error(
        "line {line} is longer than {MAX_LINE} bytes (a recording's lines are about 500): this \
         is not a recording teardown wrote, or it is damaged"
    )]
    TooLong { line: u64 },
    #[error("the file is empty: a recording begins with a header line")]
    Empty,
    #[error(
        "line 1: not a teardown recording ({0}); replay reads the files `teardown record FILE` \
         writes"
    )]
    NotARecording(String),
    #[error(
        "line 1: recording format version {found}; this teardown reads version {VERSION} (replay \
         it with the teardown that recorded it)"
    )]
    Version { found: u32 },
    #[error("cannot read it: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub struct Reader<R: BufRead> {
    input: R,
    line_no: u64,
    buf: Vec<u8>,
    pub header: Header,
    /// A line was too long: nothing after it is read.
    finished: bool,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut buf = Vec::new();
        if read_line_bounded(&mut input, &mut buf)? == 0 {
            return Err(ReadError::Empty);
        }
        if buf.len() > MAX_LINE {
            return Err(ReadError::NotARecording(format!(
                "its first line is longer than {MAX_LINE} bytes"
            )));
        }
        let header: Header = serde_json::from_slice(trim(&buf)).map_err(|e| {
            // The output of `trace --format jsonl` is JSON Lines too: say so rather than name a
            // missing field.
            let typed = serde_json::from_slice::<serde_json::Value>(trim(&buf))
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
            ReadError::NotARecording(match typed {
                Some(t) => format!(
                    "it begins with a {t:?} line and no header: the output of `teardown trace \
                     --format jsonl`?"
                ),
                None => json_error(&e),
            })
        })?;
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
            finished: false,
        })
    }

    /// The next record; `Ok(None)` at the end. A bad line is an error naming it; the caller may
    /// go on reading after a [`ReadError::Line`]. After a [`ReadError::TooLong`] the reader
    /// reads no more: what follows it is `Ok(None)`.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            self.buf.clear();
            if read_line_bounded(&mut self.input, &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let line = self.line_no;
            if self.buf.len() > MAX_LINE {
                self.finished = true;
                self.buf = Vec::new();
                return Err(ReadError::TooLong { line });
            }
            let text = trim(&self.buf);
            if text.is_empty() {
                continue;
            }
            let record: Record = serde_json::from_slice(text).map_err(|e| ReadError::Line {
                line,
                what: json_error(&e),
            })?;
            // Names the summary prints and keeps: only those a trace writes, so that a
            // recording can neither grow the summary without bound nor send text to a terminal.
            if let Record::Lost { not_judged, .. } = &record {
                if let Some(name) = not_judged.keys().find(|k| !super::is_not_judged_name(k)) {
                    return Err(ReadError::Line {
                        line,
                        what: format!(
                            "`{}` is not something an event counted instead of sent can be",
                            crate::escape::text(name)
                        ),
                    });
                }
            }
            return Ok(Some(record));
        }
    }

    /// The number of the line read last (1 is the header).
    pub fn line(&self) -> u64 {
        self.line_no
    }
}

/// serde_json's message without its "at line 1": the slice it parsed is one line of the file,
/// whose number the caller gives.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((what, _)) if e.column() > 0 => format!("{what} (column {})", e.column()),
        _ => text,
    }
}

#[cfg(test)]
impl<T: AsRef<[u8]>> Reader<io::Cursor<T>> {
    /// The bytes of the input read so far.
    pub(crate) fn input_position(&self) -> u64 {
        self.input.position()
    }
}

#[cfg(test)]
impl<R: BufRead> Reader<R> {
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &b[..end]
}

/// Reads one line, newline included, but never more than MAX_LINE + 1 bytes of it: a longer
/// line is left unfinished (`buf` then holds more than MAX_LINE bytes), however long it goes on.
/// Returns the bytes read, 0 at the end of the input.
pub fn read_line_bounded<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    const LIMIT: u64 = MAX_LINE as u64 + 1;
    input.take(LIMIT).read_until(b'\n', buf)
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
    fn a_count_of_something_no_trace_counts_is_a_bad_line() {
        let mut out = Vec::new();
        Writer::new(&mut out, &header()).unwrap();
        out.extend_from_slice(
            b"{\"type\":\"lost\",\"ts_ns\":1,\"total\":1,\"not_judged\":{\"SYN_SENT>CLOSE\":1}}\n\
              {\"type\":\"lost\",\"ts_ns\":2,\"total\":1,\"not_judged\":{\"\\u001b[2J\":1}}\n",
        );
        let mut r = Reader::new(&out[..]).unwrap();
        assert!(matches!(r.next_record(), Ok(Some(Record::Lost { .. }))));
        let err = r.next_record().unwrap_err().to_string();
        assert!(
            err.starts_with("line 3: `\\x1b[2J` is not something an event counted instead of sent"),
            "{err}"
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
    fn a_huge_line_is_an_error_after_at_most_the_limit_read() {
        let mut out = Vec::new();
        Writer::new(&mut out, &header()).unwrap();
        let header_len = out.len();
        // A line that never ends, as in /dev/zero, then more lines.
        out.extend(std::iter::repeat_n(b'x', MAX_LINE * 16));
        out.push(b'\n');
        Writer {
            out: &mut out,
            filter: None,
        }
        .write(&Record::Event(sample()))
        .unwrap();
        let mut r = Reader::new(io::Cursor::new(&out)).unwrap();
        let err = r.next_record().unwrap_err();
        assert!(matches!(err, ReadError::TooLong { line: 2 }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("line 2 is longer than 65536 bytes"),
            "{text}"
        );
        let read = usize::try_from(r.input.position()).unwrap() - header_len;
        assert_eq!(read, MAX_LINE + 1, "bytes read of the long line");
        assert!(r.buf.capacity() <= MAX_LINE * 2);
        // Nothing after it is read: where the next line begins is unknown.
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(
            usize::try_from(r.input.position()).unwrap() - header_len,
            read
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read() {
        let mut out = Vec::new();
        Writer::new(&mut out, &header()).unwrap();
        let ev = serde_json::to_string(&Record::Event(sample())).unwrap();
        // Padded with spaces to MAX_LINE bytes, newline included.
        out.extend_from_slice(ev.as_bytes());
        out.extend(std::iter::repeat_n(b' ', MAX_LINE - ev.len() - 1));
        out.push(b'\n');
        out.extend_from_slice(ev.as_bytes());
        out.extend(std::iter::repeat_n(b' ', MAX_LINE - ev.len()));
        out.push(b'\n');
        let mut r = Reader::new(&out[..]).unwrap();
        assert_eq!(r.next_record().unwrap(), Some(Record::Event(sample())));
        assert!(matches!(
            r.next_record(),
            Err(ReadError::TooLong { line: 3 })
        ));
    }

    #[test]
    fn a_header_without_end_or_of_another_kind_says_what_it_is() {
        let zeros = vec![0u8; MAX_LINE * 8];
        let mut input = &zeros[..];
        let err = Reader::new(&mut input).err().unwrap().to_string();
        assert!(err.contains("first line is longer than 65536"), "{err}");
        assert_eq!(input.len(), zeros.len() - (MAX_LINE + 1), "bytes read");
        let trace = b"{\"type\":\"connection\",\"id\":1}\n";
        let err = Reader::new(&trace[..]).err().unwrap().to_string();
        assert!(err.contains("teardown trace --format jsonl"), "{err}");
        let err = Reader::new(&b"{\"format\":\n"[..])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "line 1: not a teardown recording (EOF while parsing a value (column 10)); replay \
             reads the files `teardown record FILE` writes"
        );
    }
}
