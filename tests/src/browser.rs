//! Debian's chromium, headless, as an operator's browser: a page opened from a file, its DOM
//! once its scripts ran, what its console said, and a screenshot read back as pixels.

// Used by tests only: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Chromium gives up on a page after this long (a page that hangs fails the test).
const LIMIT: Duration = Duration::from_secs(90);

/// Flags for a headless run as root on a machine without a network: no sandbox (root), no
/// GPU, and none of chromium's own background connections.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
];

/// A fresh, empty profile directory, removed when dropped.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Profile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("teardown-chromium-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Profile(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What chromium printed: stdout (the DOM, with --dump-dom) and its log (console messages).
pub struct Run {
    pub stdout: String,
    pub log: String,
}

impl Run {
    /// Console lines that report a script error.
    pub fn script_errors(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
            .collect()
    }
}

/// `chromium FLAGS ARGS URL`, bounded in time.
fn chromium(args: &[&str], url: &str) -> Run {
    let profile = Profile::new();
    let mut child = Command::new("chromium")
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium cannot be started");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let log_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let began = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if began.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {url} in {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Run {
        stdout: reader.join().unwrap(),
        log: log_reader.join().unwrap(),
    }
}

/// `file:///PATH#FRAGMENT`.
pub fn file_url(path: &Path, fragment: Option<&str>) -> String {
    let path = fs::canonicalize(path).unwrap();
    match fragment {
        Some(f) => format!("file://{}#{f}", path.display()),
        None => format!("file://{}", path.display()),
    }
}

/// The page's DOM after its scripts ran, serialized.
pub fn dom(url: &str) -> Run {
    chromium(&["--dump-dom"], url)
}

/// A screenshot of the page at `width` x `height`, as RGBA pixels.
pub fn screenshot(url: &str, png_path: &Path, width: u32, height: u32) -> Image {
    let _ = fs::remove_file(png_path);
    let run = chromium(
        &[
            &format!("--screenshot={}", png_path.display()),
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
        ],
        url,
    );
    assert!(
        png_path.exists(),
        "chromium wrote no screenshot of {url}: {}",
        run.log
    );
    Image::read(png_path)
}

/// A decoded screenshot.
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// RGBA, row by row.
    pub pixels: Vec<u8>,
}

impl Image {
    pub fn read(path: &Path) -> Image {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let pixels = match info.color_type {
            png::ColorType::Rgba => buf,
            png::ColorType::Rgb => buf
                .chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect(),
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        Image {
            width: info.width,
            height: info.height,
            pixels,
        }
    }

    /// The pixels of the rectangle (x, y, w, h) that match `pred` (r, g, b).
    pub fn count(&self, rect: (u32, u32, u32, u32), pred: impl Fn(u8, u8, u8) -> bool) -> usize {
        let (x0, y0, w, h) = rect;
        let mut n = 0;
        for y in y0..(y0 + h).min(self.height) {
            for x in x0..(x0 + w).min(self.width) {
                let i = ((y * self.width + x) * 4) as usize;
                if pred(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]) {
                    n += 1;
                }
            }
        }
        n
    }

    pub fn all(&self) -> (u32, u32, u32, u32) {
        (0, 0, self.width, self.height)
    }
}

/// Dark, nearly black (text, lifelines, the documented steps' arrows).
pub fn dark(r: u8, g: u8, b: u8) -> bool {
    r < 80 && g < 80 && b < 80
}

/// Strong red (a RST, a missing step).
pub fn red(r: u8, g: u8, b: u8) -> bool {
    r > 180 && g < 60 && b < 60
}

/// `&lt;` and the other entities a serializer writes, read back.
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the start tag `tag` (`<g class="x" ...>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let len = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + len]))
}

/// Every element `<TAG ...>` of `doc` whose start tag contains `needle`: its start tag and
/// what follows up to its end tag (elements of the same name are not nested here).
fn elements<'a>(doc: &'a str, tag: &str, needle: &str) -> Vec<(&'a str, &'a str)> {
    let open = format!("<{tag} ");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        let from = &rest[i..];
        let Some(end_tag) = from.find('>') else { break };
        let start = &from[..=end_tag];
        let body_end = from.find(&close).unwrap_or(from.len());
        let body = &from[end_tag + 1..body_end.max(end_tag + 1)];
        if start.contains(needle) {
            out.push((start, body));
        }
        rest = &from[end_tag + 1..];
    }
    out
}

/// The words of every `<text>` element, in document order.
pub fn texts(svg: &str) -> Vec<String> {
    elements(svg, "text", "")
        .into_iter()
        .map(|(_, body)| unescape(body))
        .collect()
}

/// An arrow of a drawn ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawnArrow {
    pub kind: String,
    pub step: Option<u8>,
    pub label: String,
    /// The lifeline it leaves (0 left, 1 right), from its line's x1.
    pub from_left: bool,
}

/// A ladder as drawn: its arrows, its states by lane, its other words.
#[derive(Debug, Clone)]
pub struct Drawn {
    pub connection: Option<u64>,
    pub arrows: Vec<DrawnArrow>,
    /// (lane, state name, inferred).
    pub states: Vec<(u8, String, bool)>,
    pub template_steps: usize,
    pub time_wait: Option<String>,
    pub texts: Vec<String>,
}

impl Drawn {
    /// The first `<svg class="ladder">` of `doc`.
    pub fn parse(doc: &str) -> Option<Drawn> {
        let at = doc.find("<svg ")?;
        let svg = &doc[at..];
        let svg = &svg[..svg.find("</svg>")? + 6];
        if !svg[..svg.find('>')?].contains("class=\"ladder\"") {
            return None;
        }
        let start = &svg[..svg.find('>')? + 1];
        let left_x = elements(svg, "line", "class=\"lifeline")
            .first()
            .and_then(|(t, _)| attr(t, "x1"));
        let arrows = split_groups(svg, "<g class=\"arrow ")
            .into_iter()
            .map(|g| {
                let start = &g[..g.find('>').unwrap_or(g.len())];
                let label = elements(g, "text", "class=\"label\"")
                    .first()
                    .map(|(_, b)| unescape(b))
                    .unwrap_or_default();
                let x1 = elements(g, "line", "")
                    .first()
                    .and_then(|(t, _)| attr(t, "x1"));
                DrawnArrow {
                    kind: attr(start, "data-kind").unwrap_or_default(),
                    step: attr(start, "data-step").and_then(|s| s.parse().ok()),
                    label,
                    from_left: x1 == left_x,
                }
            })
            .collect();
        let states = elements(svg, "g", "data-state=")
            .into_iter()
            .map(|(t, _)| {
                (
                    attr(t, "data-lane")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(9),
                    attr(t, "data-state").unwrap_or_default(),
                    attr(t, "class").is_some_and(|c| c.contains("inferred")),
                )
            })
            .collect();
        let time_wait = split_groups(svg, "<g class=\"timewait")
            .first()
            .map(|g| texts(g).join(" "));
        Some(Drawn {
            connection: attr(start, "data-connection").and_then(|c| c.parse().ok()),
            arrows,
            states,
            template_steps: elements(svg, "g", "class=\"tmpl\"").len(),
            time_wait,
            texts: texts(svg),
        })
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&DrawnArrow> {
        self.arrows.iter().filter(|a| a.kind == kind).collect()
    }

    pub fn states_of(&self, lane: u8) -> Vec<&str> {
        self.states
            .iter()
            .filter(|s| s.0 == lane)
            .map(|s| s.1.as_str())
            .collect()
    }
}

/// The `<g ...>...</g>` groups starting with `prefix` (groups whose children are not groups).
fn split_groups<'a>(svg: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find(prefix) {
        let g = &rest[i..];
        let end = g.find("</g>").map_or(g.len(), |e| e + 4);
        out.push(&g[..end]);
        rest = &g[end..];
    }
    out
}
