//! `teardown report`: a recording (or a JSON Lines trace) judged into one self-contained HTML
//! page.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, BufWriter, Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{output::FilterArgs, replay};
use crate::{
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

pub fn run(args: ReportArgs) -> anyhow::Result<Summary> {
    let (name, input) = replay::open(&args.file)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.file));
    if path == args.file {
        anyhow::bail!(
            "the page would overwrite its recording {}: give another -o FILE",
            path.display()
        );
    }
    let file = File::create(&path).with_context(|| {
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
    let mut input = BufReader::new(input);
    let mut first = String::new();
    input
        .read_line(&mut first)
        .with_context(|| format!("cannot read {name}"))?;
    let input = io::Cursor::new(first.clone().into_bytes()).chain(input);
    let summary = if from_lines::is_trace_line(&first) {
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
