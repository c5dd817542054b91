//! Options shared by `trace`, `record` and `replay`: output format and destination, filters.

use std::{
    fs::File,
    io::{self, BufWriter},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context as _;

use crate::{
    pipeline::Filter,
    sink::{JsonlSink, Sink, TextSink},
    tracker::TrackerConfig,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One block per connection: its 4-tuple, process, states with times, and the verdict.
    Text,
    /// One JSON object per connection timeline, then a summary object (schema in the README).
    Jsonl,
}

#[derive(Clone, Debug, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Text format: show each event's raw sequence fields (snd_una, snd_nxt, rcv_nxt,
    /// write_seq) too.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct FilterArgs {
    /// Only connections with this local or remote port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Only connections with this local or remote address (repeatable).
    #[arg(long, value_name = "IP")]
    pub addr: Vec<IpAddr>,
    /// Only connections owned by this process (repeatable). The owner is known from the
    /// process's own connect/close calls, so a connection it never closed may not match.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only connections in this network namespace (repeatable): a name from `ip netns`, a path
    /// such as /proc/PID/ns/net of a container's process, or the namespace's inode number.
    /// Needs kernel BTF (events carry their namespace then).
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,
    /// Report listening sockets too (hidden by default).
    #[arg(long)]
    pub listeners: bool,
    /// Most connections tracked at once; beyond it the oldest is evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = TrackerConfig::default().max_open)]
    pub max_connections: usize,
}

impl FilterArgs {
    /// The filter; an error names a --netns that is no namespace.
    pub fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            ports: self.port.clone(),
            addrs: self.addr.clone(),
            pids: self.pid.clone(),
            netns: self
                .netns
                .iter()
                .map(|n| netns_inode(n))
                .collect::<anyhow::Result<_>>()?,
            listeners: self.listeners,
        })
    }

    pub fn tracker(&self) -> TrackerConfig {
        TrackerConfig {
            max_open: self.max_connections.max(1),
            ..TrackerConfig::default()
        }
    }
}

/// The inode number of a network namespace given as an inode number, a name from `ip netns`,
/// or a path.
pub fn netns_inode(name: &str) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(inode) = name.parse::<u32>() {
        return Ok(inode);
    }
    let path = crate::diag::netns::path_for(name);
    let meta = std::fs::metadata(&path).map_err(|e| {
        anyhow::anyhow!(
            "--netns {name}: no network namespace at {} ({e}); see `ip netns list`, or give \
             /proc/PID/ns/net of a process inside it, or its inode number",
            path.display()
        )
    })?;
    u32::try_from(meta.ino()).map_err(|_| anyhow::anyhow!("--netns {name}: inode out of range"))
}

impl OutputArgs {
    /// The output. `home_netns` is the network namespace the text output need not name (a live
    /// trace's own); connections of any other are marked with theirs.
    pub fn sink(&self, home_netns: Option<u32>) -> anyhow::Result<Box<dyn Sink + Send>> {
        let out: Box<dyn io::Write + Send> = match &self.output {
            Some(path) => Box::new(
                File::create(path)
                    .with_context(|| format!("cannot create the output file {}", path.display()))?,
            ),
            None => Box::new(io::stdout()),
        };
        let out = BufWriter::with_capacity(64 * 1024, out);
        Ok(match self.format {
            Format::Text => Box::new(TextSink::new(out, self.raw).with_home_netns(home_netns)),
            Format::Jsonl => Box::new(JsonlSink::new(out)),
        })
    }
}
