//! `teardown report`: a recording (or a JSON Lines trace) judged into one self-contained HTML
//! page.

use std::{
    fs::{self, File},
    io::{self, BufReader, BufWriter, Read as _, Write as _},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{output::FilterArgs, replay};
use crate::{
    decode::recording::read_line_bounded,
    live::from_lines,
    sinks::{ReportSink, Sink, Summary},
};

#[derive(Clone, Debug, clap::Args)]
pub struct ReportArgs {
    /// A recording made by `teardown record`, or what `trace --format jsonl` wrote (its
    /// connections are judged again from their events); "-" reads standard input.
    pub file: PathBuf,
    /// Where to write the page [default: the recording's name with `.html`, beside it; with
    /// standard input, `teardown-report.html`].
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// As `replay --slow-close`. (The filters above apply to recordings only.)
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = super::args::parse_secs)]
    pub slow_close: f64,
    /// Skip lines that cannot be read, and count them, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

/// The page's path when `-o` is not given.
fn default_output(file: &Path) -> PathBuf {
    if file.as_os_str() == "-" {
        return PathBuf::from("teardown-report.html");
    }
    let stem = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "teardown".to_owned());
    let stem = stem
        .strip_suffix(".jsonl")
        .or_else(|| stem.strip_suffix(".json"))
        .unwrap_or(&stem);
    file.with_file_name(format!("{stem}.html"))
}

/// Whether `a` and `b` name the same file (through links, `..` or another spelling).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The page's file. A regular file (or a new one) is written beside its path and renamed onto
/// it once whole: a report that fails leaves no half page, and a page there before stays until
/// the new one replaces it. Any other file (a pipe, a terminal, /dev/stdout) is written in place.
struct PageFile {
    path: PathBuf,
    /// The file being written, until it is renamed onto `path`.
    partial: Option<PathBuf>,
}

impl PageFile {
    fn create(path: &Path) -> io::Result<(PageFile, File)> {
        // (A directory too, so that opening it fails as such.)
        let in_place = fs::metadata(path).is_ok_and(|m| {
            let t = m.file_type();
            t.is_dir() || t.is_fifo() || t.is_char_device() || t.is_socket() || t.is_block_device()
        });
        if in_place {
            let page = PageFile {
                path: path.to_owned(),
                partial: None,
            };
            return Ok((page, super::output::create_output_file(path)?));
        }
        let name = path.file_name().map_or_else(
            || "teardown-report.html".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let partial = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let file = super::output::create_output_file(&partial)?;
        let page = PageFile {
            path: path.to_owned(),
            partial: Some(partial),
        };
        Ok((page, file))
    }

    /// The page is whole: it takes its path.
    fn complete(mut self) -> io::Result<()> {
        match self.partial.take() {
            Some(partial) => fs::rename(&partial, &self.path).inspect_err(|_| {
                let _ = fs::remove_file(&partial);
            }),
            None => Ok(()),
        }
    }
}

impl Drop for PageFile {
    fn drop(&mut self) {
        if let Some(partial) = self.partial.take() {
            let _ = fs::remove_file(partial);
        }
    }
}

pub fn run(args: ReportArgs) -> anyhow::Result<Summary> {
    let (name, input) = replay::open(&args.file)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.file));
    if path == args.file || same_file(&path, &args.file) {
        anyhow::bail!(
            "the page would overwrite its recording {}: give another -o FILE",
            path.display()
        );
    }
    let (page, file) = PageFile::create(&path).with_context(|| {
        format!(
            "cannot create {} (give -o the path of a file in a directory you can write)",
            path.display()
        )
    })?;
    let source = args
        .file
        .file_name()
        .map_or(name.clone(), |n| n.to_string_lossy().into_owned());
    let sink: Box<dyn Sink + Send> = Box::new(ReportSink::new(
        BufWriter::with_capacity(1 << 20, file),
        &source,
    ));
    let slow_close_ns = super::timewait::secs_to_ms(args.slow_close) * 1_000_000;
    // A recording's header, or a trace's first line: which one decides how it is read.
    // Bounded: a line too long for either is the reader's to tell.
    let mut input = BufReader::new(input);
    let mut first = Vec::new();
    read_line_bounded(&mut input, &mut first).with_context(|| format!("cannot read {name}"))?;
    let is_trace = from_lines::is_trace_line(&String::from_utf8_lossy(&first));
    let input = io::Cursor::new(first).chain(input);
    let summary = if is_trace {
        let f = &args.filters;
        if !(f.port.is_empty() && f.addr.is_empty() && f.pid.is_empty() && f.netns.is_empty()) {
            anyhow::bail!(
                "{name} is a JSON Lines trace: --port, --addr, --pid and --netns filter \
                 recordings (the trace was filtered when it was made)"
            );
        }
        from_lines::judge_lines(BufReader::new(input), &mut [sink], slow_close_ns)
            .map_err(|e| anyhow::anyhow!("{name} cannot be reported: {e}"))?
    } else {
        replay::judge(
            &name,
            Box::new(input),
            &args.filters,
            slow_close_ns,
            args.skip_bad_lines,
            vec![sink],
        )?
    };
    page.complete()
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}\nreport: {} ({} connections)",
        summary.to_text(),
        crate::escape::text(&path.display().to_string()),
        summary.connections
    );
    Ok(summary)
}
