//! `--format zeek`: a conn.log in Zeek's TSV layout (its `#fields` / `#types` header), one row
//! per connection, for the pipelines and SIEMs that read Zeek's logs.
//!
//! Zeek logs a connection once, both directions merged. When both ends were traced, each end
//! is reported with the other's events, and the one reported last knows the most (the peer had
//! finished): the first end's row waits for it, and is written alone only if the peer is not
//! reported within a minute of the trace's time, by the end of the trace, or before too many
//! rows wait. The fields the hooks cannot fill
//! (packet and IP byte counts, the service, local nets) are Zeek's unset field, `-`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;

use super::{Report, Sink, Summary};
use crate::judge::zeek::{Originator, Zeek};

/// Zeek's conn.log columns (base/protocols/conn/main.zeek; `ip_proto` since Zeek 7.1), and
/// their types.
pub const FIELDS: [(&str, &str); 22] = [
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("service", "string"),
    ("duration", "interval"),
    ("orig_bytes", "count"),
    ("resp_bytes", "count"),
    ("conn_state", "string"),
    ("local_orig", "bool"),
    ("local_resp", "bool"),
    ("missed_bytes", "count"),
    ("history", "string"),
    ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"),
    ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"),
    ("ip_proto", "count"),
];

/// Rows waiting for their peer's at most: past it, the oldest is written alone.
const MAX_WAITING: usize = 65_536;
/// How long (in the trace's time) a row waits for its peer's at most: a peer that a one-sided
/// filter (`--pid`, `--netns`) leaves out is never reported.
const WAIT_NS: i128 = 60_000_000_000;

/// One row, as far as one end knows it.
#[derive(Clone, Debug)]
struct Row {
    first_ns: i128,
    last_ns: i128,
    orig: SocketAddr,
    resp: SocketAddr,
    /// The originator's end id when traced, else this end's: the connection's uid.
    uid: u64,
    /// Judged with the peer's trace.
    with_peer: bool,
    zeek: Zeek,
}

impl Row {
    /// The two ends' rows as one: the words of the one that knew more (judged with its peer;
    /// of two, the later), the times of both.
    fn merged(first: Row, second: Row) -> Row {
        let (first_ns, last_ns) = (
            first.first_ns.min(second.first_ns),
            first.last_ns.max(second.last_ns),
        );
        let mut r = if second.with_peer || !first.with_peer {
            second
        } else {
            first
        };
        r.first_ns = first_ns;
        r.last_ns = last_ns;
        r
    }
}

pub struct ZeekSink<W: Write> {
    out: W,
    header_written: bool,
    /// Rows of ends whose peer is to come, by the peer's id.
    waiting: HashMap<u64, Row>,
    /// Peer ids in order of arrival, to write the oldest first when too many wait (ids no
    /// longer waiting are skipped when met).
    order: VecDeque<u64>,
    /// Ends whose row was written alone (peer ids expected): their peer's is not written again.
    written_alone: HashSet<u64>,
    written_alone_order: VecDeque<u64>,
}

/// Zeek's header of a conn.log, with its `#open` time now.
pub fn zeek_header() -> String {
    let names: Vec<&str> = FIELDS.iter().map(|f| f.0).collect();
    let types: Vec<&str> = FIELDS.iter().map(|f| f.1).collect();
    format!(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n\
         #open\t{}\n#fields\t{}\n#types\t{}\n",
        zeek_date(unix_now()),
        names.join("\t"),
        types.join("\t")
    )
}

/// The last line of a conn.log, with its `#close` time now.
pub fn zeek_close() -> String {
    format!("#close\t{}\n", zeek_date(unix_now()))
}

impl<W: Write> ZeekSink<W> {
    pub fn new(out: W) -> Self {
        ZeekSink {
            out,
            header_written: false,
            waiting: HashMap::new(),
            order: VecDeque::new(),
            written_alone: HashSet::new(),
            written_alone_order: VecDeque::new(),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        self.out.write_all(zeek_header().as_bytes())
    }

    fn write_row(&mut self, r: &Row) -> io::Result<()> {
        let z = &r.zeek;
        let duration = u64::try_from(r.last_ns - r.first_ns).unwrap_or(0);
        // Zeek leaves the duration and the byte counts unset when the duration is 0.
        let count = |n: Option<u64>| match n {
            Some(n) if duration > 0 => n.to_string(),
            _ => "-".to_string(),
        };
        let history = match z.history.as_str() {
            "" => "-",
            h => h,
        };
        let duration = if duration > 0 {
            seconds(i128::from(duration))
        } else {
            "-".to_string()
        };
        writeln!(
            self.out,
            "{}\tC{:x}\t{}\t{}\t{}\t{}\ttcp\t-\t{duration}\t{}\t{}\t{}\t-\t-\t0\t{history}\t-\t-\t-\t-\t-\t6",
            seconds(r.first_ns),
            r.uid,
            r.orig.ip().to_canonical(),
            r.orig.port(),
            r.resp.ip().to_canonical(),
            r.resp.port(),
            count(z.orig_bytes),
            count(z.resp_bytes),
            z.conn_state.code(),
        )
    }

    /// Writes `row` alone (its peer is not to be waited for any longer): its peer's, if it comes,
    /// is not written again.
    fn write_alone(&mut self, peer: u64, row: &Row) -> io::Result<()> {
        self.write_row(row)?;
        if self.written_alone.insert(peer) {
            self.written_alone_order.push_back(peer);
        }
        while self.written_alone_order.len() > MAX_WAITING {
            if let Some(old) = self.written_alone_order.pop_front() {
                self.written_alone.remove(&old);
            }
        }
        Ok(())
    }
}

/// `1796220632.788123`: Zeek's time, seconds with microseconds.
fn seconds(ns: i128) -> String {
    let us = ns.div_euclid(1000);
    format!(
        "{}.{:06}",
        us.div_euclid(1_000_000),
        us.rem_euclid(1_000_000)
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `2026-12-02-14-30-00`, the UTC time of `#open` and `#close` as Zeek writes it.
fn zeek_date(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}-{:02}-{:02}-{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl<W: Write + Send> Sink for ZeekSink<W> {
    fn connection(&mut self, report: &Report<'_>) -> io::Result<()> {
        self.header()?;
        // A listening socket is no connection of Zeek's.
        if report.verdict.role == crate::judge::Role::Listener {
            return Ok(());
        }
        let c = report.conn;
        let z = report.verdict.zeek;
        let (orig, resp) = match z.originator {
            Originator::ThisEnd | Originator::Guessed => (c.local, c.remote),
            Originator::Peer => (c.remote, c.local),
        };
        let uid = match (z.originator, report.peer_id) {
            (Originator::Peer, Some(p)) => p,
            _ => c.id,
        };
        let wall = i128::from(report.wall_offset_ns);
        let row = Row {
            first_ns: i128::from(c.first_ts()) + wall,
            last_ns: i128::from(c.last_ts()) + wall,
            orig,
            resp,
            uid,
            with_peer: report.verdict.with_peer,
            zeek: z,
        };
        // The second end of a pair: the two rows as one.
        if let Some(first) = self.waiting.remove(&c.id) {
            return self.write_row(&Row::merged(first, row));
        }
        if self.written_alone.remove(&c.id) {
            return Ok(());
        }
        let Some(peer) = report.peer_id else {
            return self.write_row(&row);
        };
        // Rows that waited too long, or too many, are written alone, oldest first.
        while let Some(&oldest) = self.order.front() {
            let Some(r) = self.waiting.get(&oldest) else {
                // Its peer came: only its place in the order was left.
                self.order.pop_front();
                continue;
            };
            if self.waiting.len() < MAX_WAITING && r.last_ns + WAIT_NS > row.last_ns {
                break;
            }
            self.order.pop_front();
            if let Some(r) = self.waiting.remove(&oldest) {
                self.write_alone(oldest, &r)?;
            }
        }
        // The first end of a pair: wait for the peer's report.
        // Another end waiting for the same peer (the peer's id reused): written as it is.
        if let Some(old) = self.waiting.insert(peer, row) {
            self.write_row(&old)?;
        }
        self.order.push_back(peer);
        Ok(())
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        self.header()?;
        // Ends whose peer was never reported: written as they knew it, in order.
        for peer in std::mem::take(&mut self.order) {
            if let Some(r) = self.waiting.remove(&peer) {
                self.write_row(&r)?;
            }
        }
        self.out.write_all(zeek_close().as_bytes())?;
        self.out.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_written_as_zeek_writes_them() {
        assert_eq!(zeek_date(0), "1970-01-01-00-00-00");
        // 2026-12-02 14:30:05 UTC.
        assert_eq!(zeek_date(1_796_221_805), "2026-12-02-14-30-05");
        assert_eq!(zeek_date(951_782_400), "2000-02-29-00-00-00");
        assert_eq!(seconds(1_796_220_632_788_123_456), "1796220632.788123");
        assert_eq!(seconds(5_000), "0.000005");
    }
}
