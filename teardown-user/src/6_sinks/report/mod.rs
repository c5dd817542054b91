//! `teardown report`: every judged connection in one self-contained HTML page (no network):
//! totals by verdict, variant and finding, TIME_WAIT and CLOSE_WAIT over time, per network
//! namespace, a table of connections that filters and sorts, and the ladder of any of them
//! (`#conn=ID` in the address opens one).
//!
//! The page carries the connections as one JSON document that its script reads; each
//! connection's [`Ladder`] is written into it as it is reported (strings that repeat, such as
//! labels, state and process names, once in a table), so that what is kept per connection
//! until the end is a few numbers. Everything that came from a trace is text to the page's
//! script, never markup: the JSON cannot end its `<script>` element (`<`, `>` and `&` are
//! written as `\u003c`, ...), and the script puts it in the page with `textContent` only.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
};

use super::{
    ladder::{svg::LAYOUT, Ladder, TimeWaitBar, TimeWaitEnd},
    svg_dir::time_wait_owner,
    Report, Sink, Summary,
};
use crate::{
    decode::{EventKind, TcpState},
    judge::{Code, Conformance, Variant},
    sock_diag::namespaces::ContainerDirectory,
    track::timewait::TimewaitNote,
};

const SCRIPT: &str = include_str!("page.js");
const CSS: &str = include_str!("page.css");

/// Points of the TIME_WAIT and CLOSE_WAIT series.
const SERIES_POINTS: usize = 240;
/// A TIME_WAIT whose end was not seen is drawn this long (Linux's 2MSL), up to the trace's end.
const TIME_WAIT_NS: u64 = 60_000_000_000;

/// Strings written once, referred to by index.
#[derive(Default)]
struct Strings {
    index: HashMap<String, u32>,
    list: Vec<String>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.list.len() as u32;
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// A JSON string that cannot end a `<script>` element or start markup.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    for c in quoted.chars() {
        match c {
            '<' => out.extend_from_slice(b"\\u003c"),
            '>' => out.extend_from_slice(b"\\u003e"),
            '&' => out.extend_from_slice(b"\\u0026"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => num(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// One reported connection, as kept until the page is written.
struct Entry {
    /// Its row of the table and its ladder, without the TIME_WAIT bar (which may still change).
    json: Vec<u8>,
    bar: Option<TimeWaitBar>,
    /// Its own TIME_WAIT's start (monotonic ns), for the series.
    time_wait_from: Option<u64>,
}

#[derive(Default, Clone, Copy)]
struct NsCounts {
    connections: u64,
    deviating: u64,
    time_wait: u64,
    close_wait: u64,
}

pub struct ReportSink<W: Write> {
    out: W,
    source: String,
    strings: Strings,
    entries: Vec<Entry>,
    /// Entries whose ladder draws a TIME_WAIT, by the id of the end whose it is.
    by_time_wait_owner: HashMap<u64, Vec<usize>>,
    by_conformance: [u64; 3],
    by_variant: BTreeMap<&'static str, u64>,
    by_finding: BTreeMap<Code, u64>,
    namespaces: BTreeMap<u32, NsCounts>,
    containers: Option<ContainerDirectory>,
    /// CLOSE_WAIT spans (monotonic ns; `u64::MAX`: not left by the trace's end).
    close_wait: Vec<(u64, u64)>,
    first_ns: u64,
    last_ns: u64,
    wall_offset_ns: i64,
}

impl<W: Write> ReportSink<W> {
    /// `source` names what the report is of (a file), for its heading.
    pub fn new(out: W, source: &str) -> Self {
        ReportSink {
            out,
            source: source.to_owned(),
            strings: Strings::default(),
            entries: Vec::new(),
            by_time_wait_owner: HashMap::new(),
            by_conformance: [0; 3],
            by_variant: BTreeMap::new(),
            by_finding: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            containers: None,
            close_wait: Vec::new(),
            first_ns: u64::MAX,
            last_ns: 0,
            wall_offset_ns: 0,
        }
    }

    /// Names the container of a connection's network namespace, where one is known.
    pub fn with_containers(mut self, containers: Option<ContainerDirectory>) -> Self {
        self.containers = containers;
        self
    }

    fn ladder_json(&mut self, b: &mut Vec<u8>, l: &Ladder) {
        b.push(b'[');
        b.push(b'[');
        for (i, t) in l.rows.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            num(b, *t);
        }
        b.extend_from_slice(b"],[");
        for (i, a) in l.arrows.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            let label = self.strings.id(&a.label);
            b.push(b'[');
            for (j, n) in [
                u64::from(a.from),
                u64::from(a.row),
                u64::from(a.to_row),
                kind_index(a.kind),
                u64::from(label),
                a.count,
            ]
            .iter()
            .enumerate()
            {
                if j > 0 {
                    b.push(b',');
                }
                num(b, *n);
            }
            b.push(b',');
            opt(b, a.step);
            b.push(b']');
        }
        b.extend_from_slice(b"],[");
        for (i, s) in l.states.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            let name = self.strings.id(s.state.name());
            b.push(b'[');
            num(b, s.row);
            b.push(b',');
            num(b, s.lane);
            b.push(b',');
            num(b, name);
            b.push(b',');
            num(b, u8::from(s.inferred));
            b.push(b']');
        }
        b.extend_from_slice(b"],[");
        for (i, r) in l.template.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            num(b, *r);
        }
        b.extend_from_slice(b"],");
        for v in [l.u, l.v, l.w, l.data_in_close_wait] {
            opt(b, v);
            b.push(b',');
        }
        let us = usize::from(l.us_lane());
        let (us_lane, peer_lane) = (&l.lanes[us], &l.lanes[1 - us]);
        let roles = [
            self.strings.id(us_lane.role),
            self.strings.id(peer_lane.role),
        ];
        let headline = self.strings.id(&l.headline);
        num(b, us);
        b.push(b',');
        num(b, u8::from(peer_lane.traced));
        for n in [roles[0], roles[1], headline] {
            b.push(b',');
            num(b, n);
        }
        b.push(b']');
    }
}

fn kind_index(k: super::ladder::ArrowKind) -> u64 {
    super::ladder::ArrowKind::ALL
        .iter()
        .position(|x| *x == k)
        .unwrap_or(0) as u64
}

fn bar_json(b: &mut Vec<u8>, bar: Option<TimeWaitBar>) {
    let Some(bar) = bar else {
        b.extend_from_slice(b"null");
        return;
    };
    b.push(b'[');
    num(b, bar.lane);
    b.push(b',');
    num(b, bar.row);
    b.push(b',');
    match bar.end {
        TimeWaitEnd::NotSeen => b.extend_from_slice(b"null"),
        TimeWaitEnd::Left(how) => json_str(b, how.name()),
    }
    b.push(b',');
    num(b, bar.restarts);
    b.push(b',');
    opt(b, bar.duration_ms);
    b.push(b',');
    num(b, u8::from(bar.inferred));
    b.push(b']');
}

impl<W: Write> Sink for ReportSink<W> {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        let (c, v) = (r.conn, r.verdict);
        self.wall_offset_ns = r.wall_offset_ns;
        let (first, last) = (c.first_ts(), c.last_ts());
        self.first_ns = self.first_ns.min(first);
        self.last_ns = self.last_ns.max(last);
        let conf = match v.conformance {
            Conformance::Deviates => 0u8,
            Conformance::Incomplete => 1,
            Conformance::Conforms => 2,
        };
        self.by_conformance[usize::from(conf)] += 1;
        *self.by_variant.entry(v.variant.name()).or_default() += 1;
        for f in &v.findings {
            *self.by_finding.entry(f.code).or_default() += 1;
        }

        // CLOSE_WAIT, from this end's own states.
        let mut cw_from = None;
        let mut cw_seen = false;
        for run in &c.events {
            if let EventKind::State { old, new } = run.ev.kind {
                if new == TcpState::CloseWait {
                    cw_from = Some(run.ev.ts_ns);
                    cw_seen = true;
                } else if old == TcpState::CloseWait {
                    if let Some(from) = cw_from.take() {
                        self.close_wait.push((from, run.ev.ts_ns));
                    }
                }
            }
        }
        if let Some(from) = cw_from {
            self.close_wait.push((from, u64::MAX));
        }

        let ladder = Ladder::of(r);
        let owner = time_wait_owner(&ladder, r);
        let own_time_wait = ladder
            .time_wait
            .filter(|bar| bar.lane == ladder.us_lane())
            .map(|bar| first + ladder.rows.get(usize::from(bar.row)).copied().unwrap_or(0));
        let ns = self.namespaces.entry(c.netns).or_default();
        ns.connections += 1;
        ns.deviating += u64::from(conf == 0);
        ns.time_wait += u64::from(own_time_wait.is_some());
        ns.close_wait += u64::from(cw_seen);

        let mut b = Vec::with_capacity(512);
        b.push(b'[');
        num(&mut b, c.id);
        b.push(b',');
        opt(&mut b, r.peer_id);
        b.push(b',');
        json_str(&mut b, &super::endpoint(&c.local));
        b.push(b',');
        json_str(&mut b, &super::endpoint(&c.remote));
        b.push(b',');
        match &c.process {
            Some(p) => {
                num(&mut b, p.pid);
                b.push(b',');
                // As every text output shows it (a control character as its escape), so
                // the page and the SVG files name a process alike.
                let comm = self.strings.id(&crate::escape::text(&p.comm.as_str()));
                num(&mut b, comm);
            }
            None => b.extend_from_slice(b"null,null"),
        }
        b.push(b',');
        num(&mut b, c.netns);
        b.push(b',');
        let start_ms = (i128::from(first) + i128::from(r.wall_offset_ns)) / 1_000_000;
        num(&mut b, start_ms.max(0) as u64);
        b.push(b',');
        num(&mut b, last.saturating_sub(first));
        let variant = self.strings.id(v.variant.name());
        let role = self.strings.id(v.role.code());
        b.push(b',');
        num(&mut b, variant);
        b.push(b',');
        num(&mut b, conf);
        b.push(b',');
        num(&mut b, role);
        b.extend_from_slice(b",[");
        for (i, f) in v.findings.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            let code = self.strings.id(f.code.as_str());
            num(&mut b, code);
        }
        b.extend_from_slice(b"],");
        let zeek = self.strings.id(v.zeek.conn_state.code());
        num(&mut b, zeek);
        b.push(b',');
        json_str(&mut b, v.zeek.history.as_str());
        b.push(b',');
        self.ladder_json(&mut b, &ladder);
        let index = self.entries.len();
        if let Some(owner) = owner {
            self.by_time_wait_owner
                .entry(owner)
                .or_default()
                .push(index);
        }
        self.entries.push(Entry {
            json: b,
            bar: ladder.time_wait,
            time_wait_from: own_time_wait,
        });
        Ok(())
    }

    fn timewait(&mut self, note: &TimewaitNote) -> io::Result<()> {
        let Some(indexes) = self.by_time_wait_owner.get(&note.id) else {
            return Ok(());
        };
        for i in indexes {
            let Some(e) = self.entries.get_mut(*i) else {
                continue;
            };
            if let Some(bar) = e.bar.as_mut() {
                bar.apply(&note.fact);
            }
        }
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        let data = self.data(summary);
        let out = &mut self.out;
        out.write_all(
            b"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
              <meta name=\"viewport\" content=\"width=device-width\">\n\
              <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
              script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n\
              <title>teardown report</title>\n<style>",
        )?;
        out.write_all(CSS.as_bytes())?;
        out.write_all(super::ladder::svg::STYLE.as_bytes())?;
        out.write_all(b"</style></head>\n<body data-ready=\"0\">\n")?;
        out.write_all(BODY.as_bytes())?;
        out.write_all(b"<script type=\"application/json\" id=\"report-data\">")?;
        out.write_all(&data)?;
        out.write_all(b"</script>\n<script>")?;
        out.write_all(SCRIPT.as_bytes())?;
        out.write_all(b"</script>\n</body></html>\n")?;
        out.flush()
    }
}

/// The page's sections, filled by its script.
const BODY: &str = "<header><h1>teardown report</h1><p id=\"source\"></p></header>\n\
<main>\n<section id=\"summary\"><h2>Verdicts</h2><div id=\"totals\"></div>\
<div class=\"tables\"><table id=\"by-variant\"><caption>By variant</caption></table>\
<table id=\"by-finding\"><caption>By finding</caption></table></div></section>\n\
<section id=\"over-time\"><h2>TIME_WAIT and CLOSE_WAIT over time</h2><div id=\"charts\"></div></section>\n\
<section id=\"namespaces\"><h2>By network namespace</h2><table id=\"by-namespace\"></table></section>\n\
<section id=\"connections\"><h2>Connections</h2><div id=\"filters\">\
<input id=\"filter-text\" type=\"search\" placeholder=\"filter: address, process, variant, finding\" size=\"40\">\
<select id=\"filter-verdict\"><option value=\"\">every verdict</option><option value=\"0\">deviates</option>\
<option value=\"1\">incomplete</option><option value=\"2\">conforms</option></select>\
<select id=\"filter-variant\"><option value=\"\">every variant</option></select>\
<span id=\"shown\"></span></div>\
<table id=\"table\"><thead><tr><th data-sort=\"id\">#</th><th data-sort=\"local\">local</th>\
<th data-sort=\"remote\">remote</th><th data-sort=\"process\">process</th><th data-sort=\"verdict\">verdict</th>\
<th data-sort=\"variant\">variant</th><th>findings</th><th data-sort=\"duration\">duration</th></tr></thead>\
<tbody></tbody></table><div id=\"pager\"></div></section>\n\
<section id=\"ladder\"><h2>Ladder</h2><div id=\"ladder-view\"></div></section>\n\
</main>\n<pre id=\"errors\" hidden></pre>\n";

impl<W: Write> ReportSink<W> {
    /// The page's JSON document.
    fn data(&mut self, summary: &Summary) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.entries.iter().map(|e| e.json.len() + 40).sum());
        b.extend_from_slice(b"{\"version\":1,\"source\":");
        json_str(&mut b, &self.source);
        b.extend_from_slice(b",\"layout\":");
        b.extend_from_slice(LAYOUT.json().as_bytes());
        b.extend_from_slice(b",\"totals\":{\"connections\":");
        num(&mut b, self.entries.len());
        for (k, i) in [("deviates", 0), ("incomplete", 1), ("conforms", 2)] {
            b.extend_from_slice(format!(",\"{k}\":").as_bytes());
            num(&mut b, self.by_conformance[i]);
        }
        b.extend_from_slice(b",\"lost_events\":");
        num(&mut b, summary.lost_events);
        b.extend_from_slice(b",\"events\":");
        num(&mut b, summary.events);
        b.extend_from_slice(b"},\"by_variant\":[");
        let mut variants: Vec<(&&str, &u64)> = self.by_variant.iter().collect();
        variants.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (name, n)) in variants.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.push(b'[');
            json_str(&mut b, name);
            b.push(b',');
            let label = Variant::ALL
                .iter()
                .find(|v| v.name() == **name)
                .map_or(**name, |v| v.label());
            json_str(&mut b, label);
            b.push(b',');
            num(&mut b, **n);
            b.push(b']');
        }
        b.extend_from_slice(b"],\"by_finding\":[");
        for (i, (code, n)) in self.by_finding.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.push(b'[');
            json_str(&mut b, code.as_str());
            b.push(b',');
            num(&mut b, *n);
            b.push(b']');
        }
        b.extend_from_slice(b"],\"namespaces\":[");
        let names: Vec<(u32, String)> = self
            .namespaces
            .keys()
            .map(|ns| (*ns, self.namespace_name(*ns)))
            .collect();
        for (i, (ns, name)) in names.iter().enumerate() {
            let c = self.namespaces.get(ns).copied().unwrap_or_default();
            if i > 0 {
                b.push(b',');
            }
            b.push(b'[');
            num(&mut b, *ns);
            b.push(b',');
            json_str(&mut b, name);
            for n in [c.connections, c.deviating, c.time_wait, c.close_wait] {
                b.push(b',');
                num(&mut b, n);
            }
            b.push(b']');
        }
        b.extend_from_slice(b"],\"series\":");
        self.series(&mut b);
        b.extend_from_slice(b",\"rows\":[");
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                b.extend_from_slice(b",\n");
            }
            b.extend_from_slice(&e.json);
            b.push(b',');
            bar_json(&mut b, e.bar);
            b.push(b']');
        }
        b.extend_from_slice(b"],\"strings\":[");
        for (i, s) in self.strings.list.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            json_str(&mut b, s);
        }
        b.extend_from_slice(b"]}");
        b
    }

    fn namespace_name(&self, ns: u32) -> String {
        if ns == 0 {
            return "unknown (not recorded)".to_owned();
        }
        let container = self.containers.as_ref().and_then(|d| d.get(ns));
        match container {
            Some(c) => match &c.name {
                Some(name) => format!("net:[{ns}] container {name} ({})", c.short_id()),
                None => format!("net:[{ns}] container {}", c.short_id()),
            },
            None => format!("net:[{ns}]"),
        }
    }

    /// `{"t0_ms":..,"step_ms":..,"time_wait":[..],"close_wait":[..]}`: sockets in each state at
    /// evenly spaced instants of the trace.
    fn series(&self, b: &mut Vec<u8>) {
        let (first, mut last) = (self.first_ns, self.last_ns);
        if first == u64::MAX {
            b.extend_from_slice(b"null");
            return;
        }
        let time_wait: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter_map(|e| {
                let from = e.time_wait_from?;
                let len = e
                    .bar
                    .and_then(|bar| bar.duration_ms)
                    .map_or(TIME_WAIT_NS, |ms| ms.saturating_mul(1_000_000));
                Some((from, from.saturating_add(len)))
            })
            .collect();
        last = last.max(first.saturating_add(1));
        let step = (last - first).div_ceil(SERIES_POINTS as u64 - 1).max(1);
        let points = |spans: &[(u64, u64)]| -> Vec<usize> {
            // Sorted starts and ends: each point is a count of starts minus ends before it.
            // An end never precedes its start (a trace's lines may give times out of order),
            // so no point counts more ends than starts.
            let mut starts: Vec<u64> = spans.iter().map(|s| s.0).collect();
            let mut ends: Vec<u64> = spans.iter().map(|&(s, e)| e.max(s)).collect();
            starts.sort_unstable();
            ends.sort_unstable();
            (0..SERIES_POINTS)
                .map(|i| {
                    let at = first.saturating_add(step.saturating_mul(i as u64));
                    let begun = starts.partition_point(|s| *s <= at);
                    let ended = ends.partition_point(|e| *e <= at);
                    begun - ended
                })
                .collect()
        };
        let tw = points(&time_wait);
        let cw = points(&self.close_wait);
        let t0_ms = (i128::from(first) + i128::from(self.wall_offset_ns)) / 1_000_000;
        let _ = write!(
            b,
            "{{\"t0_ms\":{},\"step_ms\":{},\"time_wait\":{:?},\"close_wait\":{:?}}}",
            t0_ms.max(0),
            step as f64 / 1e6,
            tw,
            cw
        );
    }
}
