//! `--format zeek`: a conn.log in Zeek's TSV layout (its `#fields` / `#types` header), one row
//! per connection, for the pipelines and SIEMs that read Zeek's logs.
//!
//! Zeek logs a connection once, both directions merged. When both ends were traced, each end
//! is reported with the other's events, and the one reported last knows the most (the peer had
//! finished): the first end's row waits for it, and is written alone only if the peer is not
//! reported by the end of the trace (or too many rows wait). The fields the hooks cannot fill
//! (packet and IP byte counts, the service, local nets) are Zeek's unset field, `-`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;

use super::{Report, Sink, Summary};
use crate::judge::zeek::{Originator, Zeek};

/// Zeek's conn.log columns (Zeek 6 and 7, base/protocols/conn/main.zeek), and their types.
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

/// One row, as far as one end knows it.
#[derive(Clone, Debug)]
struct Row {
    ts_ns: i128,
    duration_ns: u64,
    orig: SocketAddr,
    resp: SocketAddr,
    /// The originator's end id when traced, else this end's: the connection's uid.
    uid: u64,
    zeek: Zeek,
}

pub struct ZeekSink<W: Write> {
    out: W,
    header_written: bool,
    /// Rows of ends whose peer is to come, by the peer's id.
    waiting: BTreeMap<u64, Row>,
    /// Their order of arrival (peer ids), to write the oldest first when too many wait.
    order: VecDeque<u64>,
    /// Ends whose row was written alone (peer ids expected): their peer's is not written again.
    written_alone: VecDeque<u64>,
}

impl<W: Write> ZeekSink<W> {
    pub fn new(out: W) -> Self {
        ZeekSink {
            out,
            header_written: false,
            waiting: BTreeMap::new(),
            order: VecDeque::new(),
            written_alone: VecDeque::new(),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        let names: Vec<&str> = FIELDS.iter().map(|f| f.0).collect();
        let types: Vec<&str> = FIELDS.iter().map(|f| f.1).collect();
        writeln!(self.out, "#separator \\x09")?;
        writeln!(self.out, "#set_separator\t,")?;
        writeln!(self.out, "#empty_field\t(empty)")?;
        writeln!(self.out, "#unset_field\t-")?;
        writeln!(self.out, "#path\tconn")?;
        writeln!(self.out, "#open\t{}", zeek_date(unix_now()))?;
        writeln!(self.out, "#fields\t{}", names.join("\t"))?;
        writeln!(self.out, "#types\t{}", types.join("\t"))
    }

    fn write_row(&mut self, r: &Row) -> io::Result<()> {
        let z = &r.zeek;
        let count = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
        let history = match z.history.as_str() {
            "" => "-",
            h => h,
        };
        writeln!(
            self.out,
            "{}\tT{:x}\t{}\t{}\t{}\t{}\ttcp\t-\t{}\t{}\t{}\t{}\t-\t-\t0\t{history}\t-\t-\t-\t-\t-\t6",
            seconds(r.ts_ns),
            r.uid,
            r.orig.ip(),
            r.orig.port(),
            r.resp.ip(),
            r.resp.port(),
            seconds(i128::from(r.duration_ns)),
            count(z.orig_bytes),
            count(z.resp_bytes),
            z.conn_state.code(),
        )
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
        let first = c.first_ts();
        let last = c.events.last().map_or(first, |r| r.ev.ts_ns);
        let uid = match (z.originator, report.peer_id) {
            (Originator::Peer, Some(p)) => p,
            _ => c.id,
        };
        let row = Row {
            ts_ns: i128::from(first) + i128::from(report.wall_offset_ns),
            duration_ns: last.saturating_sub(first),
            orig,
            resp,
            uid,
            zeek: z,
        };
        // The second end of a pair: its row, which knows both, replaces the first's.
        if self.waiting.remove(&c.id).is_some() {
            self.order.retain(|&w| w != c.id);
            return self.write_row(&row);
        }
        if let Some(i) = self.written_alone.iter().position(|&w| w == c.id) {
            self.written_alone.remove(i);
            return Ok(());
        }
        match report.peer_id {
            // The first end of a pair: wait for the peer's report.
            Some(peer) => {
                if self.waiting.len() >= MAX_WAITING {
                    if let Some(oldest) = self.order.pop_front() {
                        if let Some(r) = self.waiting.remove(&oldest) {
                            self.write_row(&r)?;
                            self.written_alone.push_back(oldest);
                            if self.written_alone.len() > MAX_WAITING {
                                self.written_alone.pop_front();
                            }
                        }
                    }
                }
                self.waiting.insert(peer, row);
                self.order.push_back(peer);
                Ok(())
            }
            None => self.write_row(&row),
        }
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        self.header()?;
        // Ends whose peer was never reported: written as they knew it, in order.
        for peer in std::mem::take(&mut self.order) {
            if let Some(r) = self.waiting.remove(&peer) {
                self.write_row(&r)?;
            }
        }
        writeln!(self.out, "#close\t{}", zeek_date(unix_now()))?;
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
