//! `teardown replay`: a recording through the same pipeline as a live trace, no kernel needed.

use std::{
    fs::File,
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::output::{FilterArgs, OutputArgs};
use crate::{
    decode::recording::{ReadError, Reader, Record},
    live::Pipeline,
    sinks::Summary,
};

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// A recording made by `teardown record` ("-" reads standard input).
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Skip lines that cannot be read, and count them, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<Summary> {
    let (name, input) = open(&args.file)?;
    // Replayed elsewhere, no namespace is "ours": only a live trace marks foreign ones.
    let mut sinks = vec![args.output.sink(None, None)?];
    if let Some(svg) = args.output.svg_sink()? {
        sinks.push(svg);
    }
    let summary = judge(
        &name,
        input,
        &args.filters,
        args.output.slow_close_ns(),
        args.skip_bad_lines,
        sinks,
    )?;
    // A closed stdout (EPIPE) stopped the replay early, cleanly: the summary goes to stderr.
    if args.output.output.is_some()
        || args.output.format != super::output::Format::Text
        || super::output::stdout_closed()
    {
        crate::say!("{}", summary.to_text());
    }
    Ok(summary)
}

/// The recording at `file` ("-": standard input), and its name for messages.
pub fn open(file: &Path) -> anyhow::Result<(String, Box<dyn io::Read>)> {
    if file.as_os_str() == "-" {
        return Ok(("standard input".to_owned(), Box::new(io::stdin())));
    }
    let name = file.display().to_string();
    if file.is_dir() {
        anyhow::bail!(
            "{name} is a directory: replay reads a recording, a file `teardown record FILE` writes"
        );
    }
    let f = File::open(file).with_context(|| format!("cannot open the recording {name}"))?;
    Ok((name, Box::new(f)))
}

/// A recording through the pipeline into `sinks`, as a live trace would have judged it.
pub fn judge(
    name: &str,
    input: Box<dyn io::Read>,
    filters: &FilterArgs,
    slow_close_ns: u64,
    skip_bad_lines: bool,
    sinks: Vec<Box<dyn crate::sinks::Sink + Send>>,
) -> anyhow::Result<Summary> {
    // Each error of the reader says its cause and where; this says which file, once.
    let mut reader = Reader::new(BufReader::new(input))
        .map_err(|e| anyhow::anyhow!("{name} cannot be replayed: {e}"))?;
    let mut pipeline = Pipeline::new(
        filters.tracker(),
        filters.filter()?,
        sinks,
        reader.header.wall_offset_ns,
    );
    pipeline.match_netns(reader.header.netns);
    pipeline.slow_close_after(slow_close_ns);
    if reader.header.tw_timers {
        pipeline.timewait_from_kernel();
    }
    if !reader.header.netns && !filters.netns.is_empty() {
        anyhow::bail!(
            "--netns: the events of this recording carry no network namespace (it was made \
             without kernel BTF, or by an older teardown); filter by --addr or --port instead"
        );
    }
    if !reader.header.seq {
        crate::say!(
            "note: this recording has no sequence numbers: its sequence checks are skipped"
        );
    }
    let mut skipped = 0u64;
    loop {
        match reader.next_record() {
            Ok(Some(Record::Event(ev))) => pipeline.on_event(ev),
            Ok(Some(Record::Timewait(fact))) => pipeline.on_timewait(fact),
            Ok(Some(Record::TwTimer(t))) => pipeline.on_tw_timer(&t),
            Ok(Some(Record::Lost {
                ts_ns,
                total,
                since_ns,
                by_cause,
                not_judged,
            })) => {
                // Recordings made before causes were told apart carry the total only.
                let by_cause = by_cause.unwrap_or_default();
                pipeline.on_lost(total, by_cause, &not_judged, since_ns, ts_ns);
            }
            Ok(None) => break,
            Err(e @ ReadError::Line { .. }) if skip_bad_lines => {
                log::debug!("skipped: {}", crate::escape::text(&e.to_string()));
                skipped += 1;
            }
            Err(e @ ReadError::Line { .. }) => anyhow::bail!(
                "{name} cannot be replayed: {e} (--skip-bad-lines skips such lines and counts \
                 them)"
            ),
            Err(e) => anyhow::bail!("{name} cannot be replayed: {e}"),
        }
        if pipeline.failed() {
            break;
        }
    }
    if skip_bad_lines {
        pipeline.set_skipped_lines(skipped);
    }
    pipeline.finish().context("cannot write the output")
}
