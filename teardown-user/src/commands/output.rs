//! Options shared by `trace`, `record` and `replay`: output format and destination, filters.

use std::{
    fs::File,
    io::{self, BufWriter},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context as _;

use crate::{
    sinks::{Conforming, JsonlSink, Sink, TextSink},
    sock_diag::namespaces::ContainerDirectory,
    track::Filter,
    track::TrackerConfig,
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
    /// JSON Lines: what is written for a conforming connection. Deviating and incomplete
    /// connections are always written in full. [default: compact]
    #[arg(long, value_enum, value_name = "FORM")]
    pub conforming: Option<ConformingForm>,
    /// A passive closer whose application stayed in CLOSE_WAIT longer than this many seconds
    /// (after the peer's FIN, before its own close) gets a `slow_close` note naming the
    /// process: slow to close, a CLOSE_WAIT leak in the making. 0 turns the note off.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = super::args::parse_secs)]
    pub slow_close: f64,
}

impl OutputArgs {
    /// The slow-close threshold in nanoseconds (0: off).
    pub fn slow_close_ns(&self) -> u64 {
        super::timewait::secs_to_ms(self.slow_close) * 1_000_000
    }
}

/// `--conforming`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConformingForm {
    /// The whole timeline and verdict, as for a deviating connection (about 2 KB).
    Full,
    /// One short line (about a third of that): each step's time, states and sequence numbers,
    /// and the verdict's names; what a diagram of the close needs.
    Compact,
    /// Nothing: counted in the summary only.
    None,
}

impl From<ConformingForm> for Conforming {
    fn from(f: ConformingForm) -> Conforming {
        match f {
            ConformingForm::Full => Conforming::Full,
            ConformingForm::Compact => Conforming::Compact,
            ConformingForm::None => Conforming::Omitted,
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct FilterArgs {
    /// Only connections with this local or remote port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Only connections with this local or remote address (repeatable). An IPv4 address also
    /// matches its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`, a dual-stack socket), and the other
    /// way round.
    #[arg(long, value_name = "IP")]
    pub addr: Vec<IpAddr>,
    /// Only connections owned by this process (repeatable). The owner is known from the
    /// process's own connect/close calls, so a connection it never closed may not match.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only connections in this network namespace (repeatable): a name from `ip netns`, a path
    /// such as /proc/PID/ns/net of a container's process, or the namespace's inode number.
    /// Needs kernel BTF (events carry their namespace then). With `record`, it narrows what is
    /// reported, not what is recorded.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,
    /// Report listening sockets too (hidden by default).
    #[arg(long)]
    pub listeners: bool,
    /// Most open connection ends tracked at once (about 1 KiB each). Past it the least
    /// recently active sixteenth is reported at once as `evicted` (judged incomplete: its close
    /// is not seen) and counted in the summary; closed ends waiting to be judged are bounded by
    /// it too.
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

/// The inode number of a network namespace given as a name from `ip netns`, a path, or an
/// inode number (tried in that order).
pub fn netns_inode(name: &str) -> anyhow::Result<u32> {
    let path = crate::sock_diag::netns::path_for(name);
    match namespace_file_inode(&path) {
        Ok(inode) => Ok(inode),
        Err(_) if name.parse::<u32>().is_ok_and(|n| n != 0) => Ok(name.parse()?),
        Err(e) => anyhow::bail!(
            "--netns {name}: {e}; see `ip netns list`, or give /proc/PID/ns/net of a process \
             inside it, or its inode number (`ls -iL /proc/PID/ns/net`)"
        ),
    }
}

/// The inode number of the network namespace file at `path`, refusing any other file.
pub fn namespace_file_inode(path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("no network namespace at {} ({e})", path.display()))?;
    // A bind-mounted namespace lives on nsfs; a leftover /var/run/netns entry whose namespace
    // is gone, or any other file, does not.
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: `statfs` is plain data, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `st` is a struct of the type statfs writes.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != NSFS_MAGIC {
        anyhow::bail!("{} is not a namespace file", path.display());
    }
    u32::try_from(meta.ino()).map_err(|_| anyhow::anyhow!("{}: inode out of range", path.display()))
}

impl OutputArgs {
    /// The output. `home_netns` is the network namespace the text output need not name (a live
    /// trace's own); connections of any other are marked with theirs, and with the container
    /// inside it when `containers` is given (a live trace only: a recording's containers may be
    /// long gone).
    pub fn sink(
        &self,
        home_netns: Option<u32>,
        containers: Option<ContainerDirectory>,
    ) -> anyhow::Result<Box<dyn Sink + Send>> {
        if self.format == Format::Text && self.conforming.is_some() {
            anyhow::bail!(
                "--conforming chooses what JSON Lines writes; add --format jsonl (the text \
                 format always shows every connection)"
            );
        }
        let out: Box<dyn io::Write + Send> = match &self.output {
            Some(path) => Box::new(
                File::create(path)
                    .with_context(|| format!("cannot create the output file {}", path.display()))?,
            ),
            None => Box::new(io::stdout()),
        };
        let out = BufWriter::with_capacity(64 * 1024, out);
        Ok(match self.format {
            Format::Text => Box::new(
                TextSink::new(out, self.raw)
                    .with_home_netns(home_netns)
                    .with_containers(containers),
            ),
            Format::Jsonl => Box::new(
                JsonlSink::new(
                    out,
                    self.conforming.map(Conforming::from).unwrap_or_default(),
                )
                .with_containers(containers),
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_files_of_nsfs_or_inode_numbers() {
        use std::os::unix::fs::MetadataExt as _;
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(netns_inode("/proc/self/ns/net").unwrap(), own);
        assert_eq!(netns_inode(&own.to_string()).unwrap(), own);
        // A file that is no namespace, a missing one, and 0 are refused.
        let e = netns_inode("/proc/self/status").unwrap_err().to_string();
        assert!(e.contains("is not a namespace file"), "{e}");
        assert!(netns_inode("/no/such/namespace").is_err());
        assert!(netns_inode("0").is_err());
    }
}
