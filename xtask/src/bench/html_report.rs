//! The HTML report's benchmark (`cargo xtask bench --only-report`): `teardown report` on a
//! recording of 100,000 connections, and the page it writes opened in headless chromium,
//! against the issue's targets: the page is written in under 10 s, is at most 50 MB, and
//! chromium shows its summary and first ladder within 5 s.
//!
//! The recording is made of real kernel events: the connections of every replay fixture
//! (teardown-user/tests/fixtures/*.events.jsonl, recorded on a kernel) copied again and again,
//! each copy with new socket addresses (`sk`), new client addresses and ports (so that no two
//! connections share a 4-tuple, and the two ends of each copy still mirror each other) and its
//! times moved, copies 20 µs apart, merged in time order. A fixture's listening socket is kept
//! in its first copy only (it is not a judged connection). Results go to report.json and
//! report.md beside the benchmark's latest.*. A missed target is reported, not an error; a page
//! that does not draw, or fewer connections than asked, is.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap},
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{de, Deserialize, Serialize};
use serde_json::Value;

use super::{last_lines, procs::Proc, spread, Spread, Target};

/// Copies of the fixtures start this far apart (the 100,000 connections span about a second).
const COPY_SPACING_NS: u64 = 20_000;
/// Where the first copy starts on the recording's monotonic clock.
const FIRST_NS: u64 = 1_000_000_000_000;
/// A socket's `sk` in the recording: this, plus a multiple of `SK_STRIDE`.
const SK_BASE: u64 = 0xffff_8880_0000_0000;
const SK_STRIDE: u64 = 0x980;
const FIXTURES: &str = "teardown-user/tests/fixtures";

const TARGET_REPORT_S: f64 = 10.0;
const TARGET_HTML_BYTES: u64 = 50_000_000;
const TARGET_CHROMIUM_S: f64 = 5.0;

const REPORT_TIMEOUT: Duration = Duration::from_secs(600);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(180);

const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium's flags (then `--user-data-dir=` a new empty directory, and `--dump-dom URL`).
const CHROMIUM_FLAGS: [&str; 8] = crate::chromium::HEADLESS;

/// One round: the page written, then opened.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct ReportRound {
    pub round: usize,
    /// `teardown report` from start to exit.
    pub report_seconds: f64,
    pub report_cpu_seconds: f64,
    /// Its peak RSS (wait4's ru_maxrss).
    pub report_max_rss_mib: f64,
    pub html_bytes: u64,
    /// Chromium `--dump-dom` from start to exit.
    pub chromium_seconds: Option<f64>,
    /// The peak RSS of chromium's processes (wait4's ru_maxrss: the largest of the tree).
    pub chromium_max_rss_mib: Option<f64>,
    /// performance.now() when the page's script had drawn the summary, the table and the
    /// first ladder (`data-ready-ms`).
    pub page_ready_ms: Option<f64>,
    /// What `--dump-dom` printed.
    pub dom_bytes: Option<u64>,
}

/// A `#conn=ID` address opened at scale: is that connection's ladder the one shown?
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct FragmentCheck {
    pub what: String,
    pub id: u64,
    /// `data-connection="ID"` on the ladder view, with its `<svg class="ladder">`.
    pub shown: bool,
    pub chromium_seconds: f64,
    pub page_ready_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct HtmlReportResult {
    pub date: String,
    pub connections_asked: usize,
    /// The fixtures copied, and how many copies of them all together.
    pub fixtures: Vec<String>,
    pub copies: usize,
    pub recording_records: u64,
    pub recording_bytes: u64,
    pub synthesize_seconds: f64,
    /// The report's own count (`report: PATH (N connections)`).
    pub connections_judged: Option<u64>,
    /// Rows of the page's data, and how many of them deviate.
    pub rows_in_page: Option<usize>,
    pub deviating_in_page: Option<usize>,
    /// The same recording through `teardown replay --format jsonl --conforming none -o
    /// /dev/null`: the judging with next to no output, to tell it from the page's share.
    pub replay_seconds: Option<f64>,
    pub replay_max_rss_mib: Option<f64>,
    pub rounds: Vec<ReportRound>,
    pub report_seconds: Option<Spread>,
    pub report_max_rss_mib: Option<Spread>,
    pub html_bytes_max: Option<u64>,
    pub chromium_seconds: Option<Spread>,
    pub page_ready_ms: Option<Spread>,
    pub fragments: Vec<FragmentCheck>,
    /// Chromium on the report of one fixture (two connections): its start-up and exit, and
    /// the dump of a small DOM.
    pub chromium_baseline_seconds: Option<f64>,
    pub chromium: String,
    pub chromium_flags: Vec<String>,
    pub targets: Vec<Target>,
    pub error: Option<String>,
}

pub(super) fn run(
    teardown: &Path,
    work: &Path,
    connections: usize,
    rounds: usize,
) -> HtmlReportResult {
    let mut res = HtmlReportResult {
        date: super::date_now(),
        connections_asked: connections,
        chromium_flags: CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect(),
        ..HtmlReportResult::default()
    };
    if let Err(e) = bench(teardown, work, rounds, &mut res) {
        eprintln!("bench: the HTML report's benchmark failed: {e:#}");
        res.error = Some(format!("{e:#}"));
    }
    res.targets = targets(&res);
    res
}

fn bench(teardown: &Path, work: &Path, rounds: usize, res: &mut HtmlReportResult) -> Result<()> {
    let chromium = chromium_path()?;
    res.chromium = chromium_version(&chromium);
    let rec = work.join("report-recording.jsonl");
    let html = work.join("report.html");
    let t = Instant::now();
    let made = synthesize(&rec, res.connections_asked)?;
    res.synthesize_seconds = t.elapsed().as_secs_f64();
    res.fixtures = made.fixtures;
    res.copies = made.copies;
    res.recording_records = made.records;
    res.recording_bytes = std::fs::metadata(&rec)?.len();
    println!(
        "bench: report: {} records ({:.0} MB) from {} copies of {} fixtures, {} connections \
         expected, in {:.1} s",
        res.recording_records,
        res.recording_bytes as f64 / 1e6,
        res.copies,
        res.fixtures.len(),
        made.connections,
        res.synthesize_seconds
    );

    let (secs, exit) = timed(
        Command::new(teardown)
            .arg("replay")
            .arg(&rec)
            .args([
                "--format",
                "jsonl",
                "--conforming",
                "none",
                "-o",
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "teardown replay",
        REPLAY_TIMEOUT,
    )?;
    if exit.success() {
        res.replay_seconds = Some(secs);
        res.replay_max_rss_mib = Some(exit.maxrss_kib as f64 / 1024.0);
        println!("bench: report: judging alone (teardown replay): {secs:.2} s");
    } else {
        eprintln!(
            "bench: teardown replay failed ({}): not counted",
            exit.describe()
        );
    }

    res.chromium_baseline_seconds = Some(baseline(teardown, &chromium, work)?);

    let mut first = None;
    for round in 1..=rounds {
        let _ = std::fs::remove_file(&html);
        let err = work.join("report.err");
        let (secs, exit) = timed(
            Command::new(teardown)
                .arg("report")
                .arg(&rec)
                .arg("-o")
                .arg(&html)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&err)?),
            "teardown report",
            REPORT_TIMEOUT,
        )?;
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        if !exit.success() {
            bail!(
                "teardown report failed ({}): {}",
                exit.describe(),
                last_lines(&said, 5)
            );
        }
        let judged = judged_count(&said).with_context(|| {
            format!(
                "teardown report did not say how many connections: {}",
                last_lines(&said, 3)
            )
        })?;
        res.connections_judged = Some(judged);
        if judged < res.connections_asked as u64 {
            bail!(
                "the report judged {judged} connections, fewer than the {} asked",
                res.connections_asked
            );
        }
        let mut r = ReportRound {
            round,
            report_seconds: secs,
            report_cpu_seconds: exit.cpu_s,
            report_max_rss_mib: exit.maxrss_kib as f64 / 1024.0,
            html_bytes: std::fs::metadata(&html)?.len(),
            ..ReportRound::default()
        };
        let ids = match first {
            Some(ids) => ids,
            None => {
                let ids = page_ids(&html)?;
                res.rows_in_page = Some(ids.rows);
                res.deviating_in_page = Some(ids.deviating);
                first = Some(ids);
                ids
            }
        };
        let shown = open_page(&chromium, work, &html, ids.first)?;
        let ready = shown.check(ids.first)?;
        r.chromium_seconds = Some(shown.seconds);
        r.chromium_max_rss_mib = Some(shown.maxrss_kib as f64 / 1024.0);
        r.page_ready_ms = Some(ready);
        r.dom_bytes = Some(shown.dom.len() as u64);
        println!(
            "bench: report round {round}: written in {:.2} s (peak RSS {:.0} MiB), {:.1} MB; \
             chromium {:.2} s, page ready at {ready:.0} ms",
            r.report_seconds,
            r.report_max_rss_mib,
            r.html_bytes as f64 / 1e6,
            shown.seconds
        );
        res.rounds.push(r);
    }

    if let Some(ids) = first {
        let checks = [
            ("the last deviating row", ids.last_deviating),
            ("the last row", Some(ids.last)),
        ];
        for (what, id) in checks {
            let Some(id) = id else { continue };
            let shown = open_page(&chromium, work, &html, id)?;
            let ok = shown.check(id);
            println!(
                "bench: report: #conn={id} ({what}): {} in {:.2} s",
                if ok.is_ok() { "shown" } else { "NOT shown" },
                shown.seconds
            );
            res.fragments.push(FragmentCheck {
                what: what.to_owned(),
                id,
                shown: ok.is_ok(),
                chromium_seconds: shown.seconds,
                page_ready_ms: ok.as_ref().ok().copied(),
            });
            if let Err(e) = ok {
                bail!("#conn={id} ({what}): {e:#}");
            }
        }
    }
    let _ = std::fs::remove_file(&rec);
    let _ = std::fs::remove_file(&html);

    let r = &res.rounds;
    res.report_seconds = spread(r.iter().map(|r| r.report_seconds).collect());
    res.report_max_rss_mib = spread(r.iter().map(|r| r.report_max_rss_mib).collect());
    res.html_bytes_max = r.iter().map(|r| r.html_bytes).max();
    res.chromium_seconds = spread(r.iter().filter_map(|r| r.chromium_seconds).collect());
    res.page_ready_ms = spread(r.iter().filter_map(|r| r.page_ready_ms).collect());
    Ok(())
}

fn targets(res: &HtmlReportResult) -> Vec<Target> {
    let report = res.report_seconds.map(|s| s.max);
    let html = res.html_bytes_max;
    let chromium = res.chromium_seconds.map(|s| s.max);
    vec![
        Target {
            target: format!("report written in under {TARGET_REPORT_S:.0} s (slowest round)"),
            measured: report.map_or("–".into(), |s| format!("{s:.2} s")),
            met: report.map(|s| s < TARGET_REPORT_S),
        },
        Target {
            target: format!(
                "page at most {:.0} MB ({TARGET_HTML_BYTES} bytes)",
                TARGET_HTML_BYTES as f64 / 1e6
            ),
            measured: html.map_or("–".into(), |b| format!("{:.1} MB ({b} bytes)", b as f64 / 1e6)),
            met: html.map(|b| b <= TARGET_HTML_BYTES),
        },
        Target {
            target: format!(
                "headless chromium shows the summary and first ladder within {TARGET_CHROMIUM_S:.0} \
                 s (start to exit, slowest round)"
            ),
            measured: chromium.map_or("–".into(), |s| {
                let ready = res
                    .page_ready_ms
                    .map_or(String::new(), |r| format!("; page ready at {:.0} ms", r.max));
                format!("{s:.2} s{ready}")
            }),
            met: chromium.map(|s| s <= TARGET_CHROMIUM_S),
        },
    ]
}

/// Chromium's seconds on the page of one small fixture.
fn baseline(teardown: &Path, chromium: &Path, work: &Path) -> Result<f64> {
    let rec = super::workspace_root()?
        .join(FIXTURES)
        .join("four_way_close.events.jsonl");
    let html = work.join("report-small.html");
    let (_, exit) = timed(
        Command::new(teardown)
            .arg("report")
            .arg(&rec)
            .arg("-o")
            .arg(&html)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "teardown report",
        REPORT_TIMEOUT,
    )?;
    if !exit.success() {
        bail!(
            "teardown report of {} failed ({})",
            rec.display(),
            exit.describe()
        );
    }
    let ids = page_ids(&html)?;
    let shown = open_page(chromium, work, &html, ids.first)?;
    shown.check(ids.first)?;
    let _ = std::fs::remove_file(&html);
    println!(
        "bench: report: chromium on a two-connection page (start-up, baseline): {:.2} s",
        shown.seconds
    );
    Ok(shown.seconds)
}

/// Runs `cmd` to its end (killed after `timeout`): its wall seconds and how it ended.
fn timed(cmd: &mut Command, name: &str, timeout: Duration) -> Result<(f64, super::Exit)> {
    let t = Instant::now();
    let mut p = Proc::spawn(cmd, name)?;
    let e = p.wait_timeout(timeout)?;
    Ok((t.elapsed().as_secs_f64(), e))
}

/// N of the report's last line, `report: PATH (N connections)`.
fn judged_count(stderr: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.starts_with("report: "))?;
    let open = line.rfind('(')?;
    line[open + 1..].strip_suffix(" connections)")?.parse().ok()
}

fn chromium_path() -> Result<PathBuf> {
    if Path::new(CHROMIUM).exists() {
        return Ok(PathBuf::from(CHROMIUM));
    }
    which::which("chromium")
        .or_else(|_| which::which("chromium-browser"))
        .context("chromium is not installed (apt-get install chromium)")
}

fn chromium_version(chromium: &Path) -> String {
    Command::new(chromium)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ---- The page's data: which connections it has.

#[derive(Clone, Copy, Debug)]
struct PageIds {
    first: u64,
    last: u64,
    last_deviating: Option<u64>,
    rows: usize,
    deviating: usize,
}

#[derive(Deserialize)]
struct PageData {
    rows: Vec<RowHead>,
}

/// A row of the page's data (sinks/report/mod.rs): its id (0) and conformance (10; 0 deviates).
struct RowHead {
    id: u64,
    conf: u8,
}

impl<'de> Deserialize<'de> for RowHead {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RowHead;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a row of the report: [id, peer, local, ...]")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<RowHead, A::Error> {
                let short = || de::Error::custom("a row shorter than 11 fields");
                let id: u64 = seq.next_element()?.ok_or_else(short)?;
                for _ in 1..10 {
                    seq.next_element::<de::IgnoredAny>()?.ok_or_else(short)?;
                }
                let conf: u8 = seq.next_element()?.ok_or_else(short)?;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RowHead { id, conf })
            }
        }
        d.deserialize_seq(V)
    }
}

fn page_ids(html: &Path) -> Result<PageIds> {
    let text = std::fs::read_to_string(html)?;
    let tag = "<script type=\"application/json\" id=\"report-data\">";
    let from = text.find(tag).context("the page has no report-data")? + tag.len();
    let len = text[from..]
        .find("</script>")
        .context("the page's report-data does not end")?;
    let data: PageData =
        serde_json::from_str(&text[from..from + len]).context("the page's report-data")?;
    let rows = &data.rows;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        bail!("the page has no connections");
    };
    Ok(PageIds {
        first: first.id,
        last: last.id,
        last_deviating: rows.iter().rev().find(|r| r.conf == 0).map(|r| r.id),
        rows: rows.len(),
        deviating: rows.iter().filter(|r| r.conf == 0).count(),
    })
}

// ---- Chromium.

struct Shown {
    seconds: f64,
    maxrss_kib: u64,
    dom: String,
}

/// `chromium --headless ... --dump-dom file://HTML#conn=ID`, timed, with a new profile.
fn open_page(chromium: &Path, work: &Path, html: &Path, id: u64) -> Result<Shown> {
    let profile = tempdir("teardown-bench-chromium")?;
    let dom_path = work.join("report.dom.html");
    let err_path = work.join("chromium.err");
    let url = format!("{}#conn={id}", file_url(html)?);
    let mut cmd = Command::new(chromium);
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(File::create(&dom_path)?)
        .stderr(File::create(&err_path)?);
    let ran = timed(&mut cmd, "chromium", CHROMIUM_TIMEOUT);
    let _ = std::fs::remove_dir_all(&profile);
    let (seconds, exit) = ran?;
    let dom = std::fs::read_to_string(&dom_path).unwrap_or_default();
    let _ = std::fs::remove_file(&dom_path);
    if !exit.success() || dom.is_empty() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "chromium --dump-dom {url} failed ({}): {}",
            exit.describe(),
            last_lines(&err, 5)
        );
    }
    Ok(Shown {
        seconds,
        maxrss_kib: exit.maxrss_kib,
        dom,
    })
}

impl Shown {
    /// The page drew its summary, its table and connection `id`'s ladder: its `data-ready-ms`.
    fn check(&self, id: u64) -> Result<f64> {
        let dom = &self.dom;
        let body = tag_at(dom, "<body").context("the dumped page has no <body>")?;
        if let Some(n) = attr(body, "data-errors") {
            let errors = dom
                .find("<pre id=\"errors\"")
                .map(|i| &dom[i..dom.len().min(i + 600)])
                .unwrap_or("");
            bail!("the page's script reported {n} errors: {errors}");
        }
        if attr(body, "data-ready") != Some("1") {
            bail!("the page was not ready when chromium dumped it: {body}");
        }
        let ready: f64 = attr(body, "data-ready-ms")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no data-ready-ms on {body}"))?;
        if !dom.contains("<div id=\"totals\"><div class=\"total") {
            bail!("the page shows no totals");
        }
        if !dom.contains("<tbody><tr data-id=") {
            bail!("the page's table has no rows");
        }
        let at = dom
            .find("<div id=\"ladder-view\"")
            .context("the page has no ladder view")?;
        let view = tag_at(&dom[at..], "<div").unwrap_or("");
        let want = id.to_string();
        if attr(view, "data-connection") != Some(want.as_str()) {
            bail!("the ladder view is not connection {id}'s: {view}");
        }
        let end = dom[at..].find("</section>").map_or(dom.len(), |e| at + e);
        if !dom[at..end].contains("<svg class=\"ladder\"") {
            bail!("the ladder view of connection {id} has no <svg class=\"ladder\">");
        }
        Ok(ready)
    }
}

/// The start tag that begins `text` at the first `open` (`<body`): `<body ...>`.
fn tag_at<'a>(text: &'a str, open: &str) -> Option<&'a str> {
    let i = text.find(open)?;
    let end = text[i..].find('>')?;
    Some(&text[i..=i + end])
}

/// The value of attribute `name` in a start tag (values in double quotes, as a DOM dump has).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    let end = tag[i..].find('"')?;
    Some(&tag[i..i + end])
}

fn file_url(path: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(path)?;
    let s = abs.to_str().context("the page's path is not UTF-8")?;
    let mut url = String::from("file://");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(char::from(b));
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    Ok(url)
}

/// A new empty directory under the system's temporary directory.
fn tempdir(prefix: &str) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = base.join(format!("{prefix}-{}-{nanos}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
    bail!("cannot make a temporary directory in {}", base.display())
}

// ---- The recording.

/// An address a copy writes.
#[derive(Clone, Copy, Debug)]
enum Addr {
    /// As the fixture has it (the server's end, a listener's, 0.0.0.0:0).
    Fixed(SocketAddr),
    /// The template's client end `n`, made anew for each copy; port 0 where the fixture has 0.
    Client { n: usize, port: bool },
}

/// A field that each copy writes anew.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Ts,
    Sk,
    Local,
    Remote,
    AtMs,
    /// entered_ms: this far from at_ms.
    EnteredMs(i64),
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Slot(Slot),
}

#[derive(Debug)]
struct TRecord {
    /// From the template's first event (ns); written as is.
    rel_ns: i64,
    /// The order of the merge: rel_ns, never less than the record before's.
    key_ns: u64,
    /// The template's socket (events only).
    sock: usize,
    local: Addr,
    remote: Addr,
    /// An event of a listening socket: only in a template's first copy.
    listener: bool,
    /// An event (else a timewait record).
    event: bool,
    pieces: Vec<Piece>,
}

#[derive(Debug)]
struct Template {
    name: String,
    records: Vec<TRecord>,
    sockets: usize,
    /// The client ends, as the fixture has them.
    clients: Vec<SocketAddr>,
    /// Sockets other than listeners: the connections the report judges of a copy.
    connections: usize,
    servers: Vec<SocketAddr>,
}

struct Header {
    line: String,
    wall_offset_ns: i64,
    /// The fields other than the wall offset, which every fixture must share.
    rest: Value,
}

fn header(line: &str) -> Result<Header> {
    let mut v: Value = serde_json::from_str(line).context("the header")?;
    if v.get("format").and_then(Value::as_str) != Some("teardown-recording") {
        bail!("not a teardown recording");
    }
    let wall_offset_ns = v
        .get("wall_offset_ns")
        .and_then(Value::as_i64)
        .context("no wall_offset_ns in the header")?;
    if let Some(m) = v.as_object_mut() {
        m.remove("wall_offset_ns");
    }
    Ok(Header {
        line: line.to_owned(),
        wall_offset_ns,
        rest: v,
    })
}

fn addr_of(v: &Value, key: &str) -> Result<SocketAddr> {
    let s = v
        .get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("no {key}"))?;
    s.parse().with_context(|| format!("{key} {s:?}"))
}

/// Where the value of the top-level `"key":` is in a compact JSON line (once only).
fn span(line: &str, key: &str) -> Result<(usize, usize)> {
    let pat = format!("\"{key}\":");
    let mut found = line.match_indices(&pat);
    let (i, _) = found.next().with_context(|| format!("no {key}"))?;
    if found.next().is_some() {
        bail!("{key} is there twice");
    }
    let start = i + pat.len();
    let rest = &line[start..];
    let len = if let Some(s) = rest.strip_prefix('"') {
        s.find('"').with_context(|| format!("{key} does not end"))? + 2
    } else {
        rest.find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len())
    };
    if len == 0 {
        bail!("{key} has no value");
    }
    Ok((start, start + len))
}

fn pieces(line: &str, mut slots: Vec<(&str, Slot)>) -> Result<Vec<Piece>> {
    let mut spans = Vec::new();
    for (key, slot) in slots.drain(..) {
        let (a, b) = span(line, key)?;
        spans.push((a, b, slot));
    }
    spans.sort_by_key(|s| s.0);
    let mut out = Vec::new();
    let mut at = 0;
    for (a, b, slot) in spans {
        if a < at {
            bail!("overlapping fields");
        }
        out.push(Piece::Text(line[at..a].to_owned()));
        out.push(Piece::Slot(slot));
        at = b;
    }
    out.push(Piece::Text(line[at..].to_owned()));
    Ok(out)
}

/// A fixture's connections, as a template of copies.
fn template(name: &str, lines: &[String], wall_offset_ns: i64) -> Result<Template> {
    let values: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 2)))
        .collect::<Result<_>>()?;
    let kind = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let events: Vec<&Value> = values.iter().filter(|v| kind(v) == "event").collect();
    let sk = |v: &Value| v.get("sk").and_then(Value::as_u64).context("no sk");
    let state = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();

    // Servers: where the connect()s went. Listeners: sockets that listened.
    let mut servers = BTreeSet::new();
    let mut listeners = BTreeSet::new();
    for e in &events {
        if state(e, "new") == "SYN_SENT" {
            let r = addr_of(e, "remote")?;
            if r.port() != 0 {
                servers.insert(r);
            }
        }
        if state(e, "new") == "LISTEN" {
            listeners.insert(sk(e)?);
        }
    }
    // Each socket, in order of first appearance: its index, and its client end (a client
    // socket's own address, a server child's peer).
    let mut socks: Vec<u64> = Vec::new();
    let mut role: HashMap<u64, Option<usize>> = HashMap::new();
    let mut clients: Vec<SocketAddr> = Vec::new();
    for e in &events {
        let s = sk(e)?;
        if !socks.contains(&s) {
            socks.push(s);
        }
    }
    for &s in &socks {
        if listeners.contains(&s) {
            role.insert(s, None);
            continue;
        }
        let mine: Vec<&&Value> = events.iter().filter(|e| sk(e).ok() == Some(s)).collect();
        let mut is_client = None;
        for e in &mine {
            let (l, r) = (addr_of(e, "local")?, addr_of(e, "remote")?);
            if servers.contains(&r) {
                is_client = Some(true);
            } else if servers.contains(&l)
                || servers.iter().any(|v| v.ip() == l.ip() && l.port() == 0)
            {
                is_client.get_or_insert(false);
            }
        }
        let end = match is_client {
            Some(true) => {
                let first = addr_of(mine[0], "local")?;
                mine.iter()
                    .filter_map(|e| addr_of(e, "local").ok())
                    .find(|a| a.port() != 0)
                    .unwrap_or(first)
            }
            Some(false) => mine
                .iter()
                .filter_map(|e| addr_of(e, "remote").ok())
                .find(|a| a.port() != 0)
                .with_context(|| format!("{name}: socket {s} has no peer port"))?,
            None => bail!("{name}: socket {s} is neither a client's nor a server's"),
        };
        let n = match clients.iter().position(|c| *c == end && end.port() != 0) {
            Some(n) => n,
            None => {
                clients.push(end);
                clients.len() - 1
            }
        };
        role.insert(s, Some(n));
    }

    let first_ts = events
        .iter()
        .filter_map(|e| e.get("ts_ns").and_then(Value::as_u64))
        .min()
        .context("no events")?;
    let mut records = Vec::new();
    let mut key = 0u64;
    for (line, v) in lines.iter().zip(&values) {
        let rec = match kind(v).as_str() {
            "event" => {
                let s = sk(v)?;
                let sock = socks.iter().position(|x| *x == s).unwrap_or(0);
                let ts = v.get("ts_ns").and_then(Value::as_u64).context("no ts_ns")?;
                let (l, r) = (addr_of(v, "local")?, addr_of(v, "remote")?);
                let (local, remote) = match role.get(&s).copied().flatten() {
                    None => (Addr::Fixed(l), Addr::Fixed(r)),
                    Some(n) if servers.contains(&r) => {
                        if l.port() != 0 && l != clients[n] {
                            bail!("{name}: socket {s} moved from {} to {l}", clients[n]);
                        }
                        let local = Addr::Client {
                            n,
                            port: l.port() != 0,
                        };
                        (local, Addr::Fixed(r))
                    }
                    Some(n) => {
                        if r.port() != 0 && r != clients[n] {
                            bail!("{name}: socket {s} has two peers, {} and {r}", clients[n]);
                        }
                        let remote = Addr::Client {
                            n,
                            port: r.port() != 0,
                        };
                        (Addr::Fixed(l), remote)
                    }
                };
                let slots = vec![
                    ("ts_ns", Slot::Ts),
                    ("sk", Slot::Sk),
                    ("local", Slot::Local),
                    ("remote", Slot::Remote),
                ];
                TRecord {
                    rel_ns: i64::try_from(ts - first_ts)?,
                    key_ns: 0,
                    sock,
                    local,
                    remote,
                    listener: listeners.contains(&s),
                    event: true,
                    pieces: pieces(line, slots)?,
                }
            }
            "timewait" => {
                let at = v.get("at_ms").and_then(Value::as_i64).context("no at_ms")?;
                let (l, r) = (addr_of(v, "local")?, addr_of(v, "remote")?);
                let client = |a: &SocketAddr| clients.iter().position(|c| c == a && a.port() != 0);
                let (local, remote) = match (client(&l), client(&r)) {
                    (Some(n), _) => (Addr::Client { n, port: true }, Addr::Fixed(r)),
                    (None, Some(n)) => (Addr::Fixed(l), Addr::Client { n, port: true }),
                    (None, None) => bail!("{name}: a timewait record of no connection: {line}"),
                };
                let mut slots = vec![
                    ("at_ms", Slot::AtMs),
                    ("local", Slot::Local),
                    ("remote", Slot::Remote),
                ];
                if let Some(e) = v.get("entered_ms").and_then(Value::as_i64) {
                    slots.push(("entered_ms", Slot::EnteredMs(e - at)));
                }
                let mono = i128::from(at) * 1_000_000 - i128::from(wall_offset_ns);
                TRecord {
                    rel_ns: i64::try_from(mono - i128::from(first_ts))?,
                    key_ns: 0,
                    sock: 0,
                    local,
                    remote,
                    listener: false,
                    event: false,
                    pieces: pieces(line, slots)?,
                }
            }
            other => bail!("{name}: records of type {other:?} are not copied"),
        };
        key = key.max(u64::try_from(rec.rel_ns.max(0))?);
        records.push(TRecord { key_ns: key, ..rec });
    }
    Ok(Template {
        name: name.to_owned(),
        records,
        sockets: socks.len(),
        connections: socks.len() - listeners.len(),
        clients,
        servers: servers.into_iter().collect(),
    })
}

/// What [`synthesize`] made.
#[derive(Debug)]
pub(super) struct Made {
    pub fixtures: Vec<String>,
    pub copies: usize,
    pub records: u64,
    /// Judged connections to expect: the copies' sockets other than listeners.
    pub connections: usize,
}

/// Writes to `path` a recording of at least `connections` connections made from the replay
/// fixtures of the workspace.
pub(super) fn synthesize(path: &Path, connections: usize) -> Result<Made> {
    synthesize_from(&super::workspace_root()?.join(FIXTURES), path, connections)
}

fn synthesize_from(dir: &Path, path: &Path, connections: usize) -> Result<Made> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.events.jsonl in {}", dir.display());
    }
    let mut head: Option<Header> = None;
    let mut templates = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".events.jsonl")
                    .to_owned()
            })
            .unwrap_or_default();
        let mut lines = BufReader::new(File::open(f)?).lines();
        let first = lines.next().context("an empty fixture")??;
        let h = header(&first).with_context(|| format!("{}", f.display()))?;
        if let Some(h0) = &head {
            if h0.rest != h.rest {
                bail!("{name}'s header differs from the first fixture's: {first}");
            }
        }
        let lines: Vec<String> = lines
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let t = template(&name, &lines, h.wall_offset_ns)
            .with_context(|| format!("{}", f.display()))?;
        if t.connections > 0 {
            templates.push(t);
        }
        head.get_or_insert(h);
    }
    let head = head.context("no fixtures")?;
    write_copies(&templates, &head, path, connections)
}

/// Client ports: every port from 1024 up that no fixture's server listens on, so a client's
/// 4-tuple is never the mirror of another copy's server end.
fn client_ports(templates: &[Template]) -> Vec<u16> {
    let servers: BTreeSet<u16> = templates
        .iter()
        .flat_map(|t| t.servers.iter().map(|s| s.port()))
        .collect();
    (1024..=u16::MAX).filter(|p| !servers.contains(p)).collect()
}

/// Client end `g` of the whole recording (from the fixture's `orig`): the next port, and past
/// the last port the next address.
fn client_addr(orig: SocketAddr, g: usize, ports: &[u16], port: bool) -> SocketAddr {
    let (j, p) = (g / ports.len(), ports[g % ports.len()]);
    let ip = match orig.ip() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(j as u32))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(j as u128))),
    };
    SocketAddr::new(ip, if port { p } else { 0 })
}

fn write_copies(templates: &[Template], head: &Header, path: &Path, want: usize) -> Result<Made> {
    let n = templates.len();
    let per_cycle: usize = templates.iter().map(|t| t.connections).sum();
    let (sock_cycle, client_cycle): (usize, usize) = (
        templates.iter().map(|t| t.sockets).sum(),
        templates.iter().map(|t| t.clients.len()).sum(),
    );
    let prefix = |f: &dyn Fn(&Template) -> usize| -> Vec<usize> {
        templates
            .iter()
            .scan(0, |acc, t| {
                let here = *acc;
                *acc += f(t);
                Some(here)
            })
            .collect()
    };
    let (sock_prefix, client_prefix) = (prefix(&|t| t.sockets), prefix(&|t| t.clients.len()));
    // Copies: whole cycles through the fixtures, then as many as still needed.
    let mut copies = want / per_cycle * n;
    let mut got = copies / n * per_cycle;
    while got < want {
        got += templates[copies % n].connections;
        copies += 1;
    }
    let ports = client_ports(templates);

    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "{}", head.line)?;
    let base = |k: usize| FIRST_NS + k as u64 * COPY_SPACING_NS;
    // Listeners only in a fixture's first copy.
    let included = |k: usize, i: usize| k < n || !templates[k % n].records[i].listener;
    let next_of =
        |k: usize, from: usize| (from..templates[k % n].records.len()).find(|&i| included(k, i));
    let mut heap: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
    let mut next_copy = 0;
    let mut line = String::with_capacity(512);
    let mut records = 0u64;
    // Every 4-tuple written belongs to one socket.
    let mut tuples: HashMap<(SocketAddr, SocketAddr), u64> = HashMap::new();
    loop {
        while next_copy < copies
            && heap
                .peek()
                .is_none_or(|Reverse((ts, _, _))| base(next_copy) <= *ts)
        {
            if let Some(i) = next_of(next_copy, 0) {
                let key = templates[next_copy % n].records[i].key_ns;
                heap.push(Reverse((base(next_copy) + key, next_copy, i)));
            }
            next_copy += 1;
        }
        let Some(Reverse((_, k, i))) = heap.pop() else {
            break;
        };
        let t = &templates[k % n];
        let cycle = k / n;
        let rec = &t.records[i];
        let sk = SK_BASE + (cycle * sock_cycle + sock_prefix[k % n] + rec.sock) as u64 * SK_STRIDE;
        let client_base = cycle * client_cycle + client_prefix[k % n];
        let addr = |a: Addr| match a {
            Addr::Fixed(a) => a,
            Addr::Client { n: c, port } => client_addr(t.clients[c], client_base + c, &ports, port),
        };
        let ts = i64::try_from(base(k))? + rec.rel_ns;
        let at_ms = (i128::from(ts) + i128::from(head.wall_offset_ns)) / 1_000_000;
        let (local, remote) = (addr(rec.local), addr(rec.remote));
        line.clear();
        for p in &rec.pieces {
            match p {
                Piece::Text(s) => line.push_str(s),
                Piece::Slot(Slot::Ts) => write!(line, "{ts}")?,
                Piece::Slot(Slot::Sk) => write!(line, "{sk}")?,
                Piece::Slot(Slot::Local) => write!(line, "\"{local}\"")?,
                Piece::Slot(Slot::Remote) => write!(line, "\"{remote}\"")?,
                Piece::Slot(Slot::AtMs) => write!(line, "{at_ms}")?,
                Piece::Slot(Slot::EnteredMs(d)) => write!(line, "{}", at_ms + i128::from(*d))?,
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        records += 1;
        if rec.event && !rec.listener && local.port() != 0 && remote.port() != 0 {
            let owner = *tuples.entry((local, remote)).or_insert(sk);
            if owner != sk {
                bail!(
                    "{}: copy {k} reuses the 4-tuple {local} -> {remote}",
                    t.name
                );
            }
        }
        if let Some(j) = next_of(k, i + 1) {
            heap.push(Reverse((base(k) + t.records[j].key_ns, k, j)));
        }
    }
    out.flush()?;
    Ok(Made {
        fixtures: templates.iter().map(|t| t.name.clone()).collect(),
        copies,
        records,
        connections: got,
    })
}

// ---- The report's Markdown.

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

pub(super) fn markdown(r: &HtmlReportResult, machine: &str) -> String {
    let mut s = String::new();
    s.push_str("# teardown report: a 100,000-connection recording\n\n");
    let _ = write!(
        s,
        "{} on {machine}. The recording: real kernel events, copied: the connections of the {} \
         replay fixtures ({}) replayed {} times in all, each copy with new socket addresses, \
         client addresses and ports, and times (copies {} µs apart, merged in time order; a \
         fixture's listening socket in its first copy only): {} records, {:.1} MB, {} \
         connections judged ({} rows in the page, {} deviating). Each of {} rounds: `teardown \
         report REC -o OUT.html` (wall time; peak RSS from wait4), then `chromium {} \
         --user-data-dir=(new empty dir) --dump-dom file://OUT.html#conn=ID` (ID: the page's \
         first row; wall time from start to exit; `data-ready-ms` is the page's own \
         performance.now() once its summary, table and first ladder are drawn). {}.\n\n",
        r.date,
        r.fixtures.len(),
        r.fixtures.join(", "),
        r.copies,
        COPY_SPACING_NS / 1000,
        r.recording_records,
        r.recording_bytes as f64 / 1e6,
        r.connections_judged.map_or("–".into(), |n| n.to_string()),
        r.rows_in_page.map_or("–".into(), |n| n.to_string()),
        r.deviating_in_page.map_or("–".into(), |n| n.to_string()),
        r.rounds.len(),
        CHROMIUM_FLAGS.join(" "),
        if r.chromium.is_empty() {
            "chromium's version unknown"
        } else {
            &r.chromium
        }
    );
    if let Some(e) = &r.error {
        let _ = write!(s, "**The benchmark failed**: {e}\n\n");
    }
    s.push_str("| target | measured | |\n|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(s, "| {} | {} | {} |", t.target, t.measured, met(t.met));
    }
    s.push_str(
        "\n| round | report (s) | report CPU (s) | report peak RSS | page | chromium (s) | page \
         ready (ms) | chromium peak RSS |\n|---|---|---|---|---|---|---|---|\n",
    );
    for x in &r.rounds {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.0} MiB | {:.1} MB | {} | {} | {} MiB |",
            x.round,
            x.report_seconds,
            x.report_cpu_seconds,
            x.report_max_rss_mib,
            x.html_bytes as f64 / 1e6,
            opt(x.chromium_seconds, 2),
            opt(x.page_ready_ms, 0),
            opt(x.chromium_max_rss_mib, 0)
        );
    }
    if let (Some(a), Some(b)) = (r.report_seconds, r.chromium_seconds) {
        let _ = writeln!(
            s,
            "| median | {:.2} | | | | {:.2} | {} | |",
            a.median,
            b.median,
            opt(r.page_ready_ms.map(|p| p.median), 0)
        );
    }
    if let Some(b) = r.chromium_baseline_seconds {
        let dom = r
            .rounds
            .iter()
            .filter_map(|x| x.dom_bytes)
            .max()
            .unwrap_or(0);
        let _ = write!(
            s,
            "\nChromium's time is its start-up and exit ({b:.2} s on the page of one fixture, \
             two connections), the page's load and script (page ready), and `--dump-dom` \
             serializing the document ({:.1} MB at most) for its output.\n",
            dom as f64 / 1e6
        );
    }
    if let Some(secs) = r.replay_seconds {
        let _ = write!(
            s,
            "\nJudging alone, `teardown replay REC --format jsonl --conforming none -o /dev/null`: \
             {secs:.2} s (peak RSS {} MiB); the rest of the report's time is the page.\n",
            opt(r.replay_max_rss_mib, 0)
        );
    }
    if !r.fragments.is_empty() {
        s.push_str("\n`#conn=ID` at this scale:\n\n| connection | shown | chromium (s) | page ready (ms) |\n|---|---|---|---|\n");
        for f in &r.fragments {
            let _ = writeln!(
                s,
                "| #{} ({}) | {} | {:.2} | {} |",
                f.id,
                f.what,
                if f.shown { "yes" } else { "no" },
                f.chromium_seconds,
                opt(f.page_ready_ms, 0)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_tuples_apart_and_ends_mirrored() -> Result<()> {
        let dir = tempdir("teardown-html-report-test")?;
        let rec = dir.join("rec.jsonl");
        let made = synthesize(&rec, 300)?;
        assert!(made.connections >= 300);
        let text = std::fs::read_to_string(&rec)?;
        let _ = std::fs::remove_dir_all(&dir);
        let mut lines = text.lines();
        let h: Value = serde_json::from_str(lines.next().unwrap_or(""))?;
        assert_eq!(h["format"], "teardown-recording");
        let mut last = 0;
        let mut sks = BTreeSet::new();
        for l in lines {
            let v: Value = serde_json::from_str(l)?;
            if v["type"] == "event" {
                let ts = v["ts_ns"].as_u64().unwrap_or(0);
                assert!(ts >= last, "out of order: {l}");
                last = ts;
                sks.insert(v["sk"].as_u64().unwrap_or(0));
                let _: SocketAddr = v["local"].as_str().unwrap_or("").parse()?;
            }
        }
        assert!(sks.len() >= 300);
        Ok(())
    }

    #[test]
    fn finds_fields_and_counts() {
        let l = r#"{"type":"event","ts_ns":12,"sk":34,"local":"127.0.0.1:0","remote":"[::1]:80"}"#;
        let (a, b) = span(l, "local").unwrap_or((0, 0));
        assert_eq!(&l[a..b], "\"127.0.0.1:0\"");
        let (a, b) = span(l, "ts_ns").unwrap_or((0, 0));
        assert_eq!(&l[a..b], "12");
        assert_eq!(
            judged_count("x\nreport: /a b.html (100002 connections)\n"),
            Some(100_002)
        );
        let tag = "<body data-ready=\"1\" data-ready-ms=\"812\">";
        assert_eq!(attr(tag, "data-ready-ms"), Some("812"));
        assert_eq!(attr(tag, "data-ready"), Some("1"));
    }
}
