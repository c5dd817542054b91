//! Options shared by `trace`, `record` and `replay`: output format and destination, filters.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context as _;

use crate::{
    sinks::{ladder::Chosen, Conforming, JsonlSink, Sink, SvgDirSink, TextSink, ZeekSink},
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
    /// A Zeek conn.log (TSV, with Zeek's #fields and #types header): one row per connection,
    /// both ends merged when both were traced; the summary goes to stderr.
    Zeek,
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
    /// Also draw the ladder diagram of chosen connections (see --svg) as DIR/connection-ID.svg:
    /// the documented close drawn faintly, what this connection did over it. DIR is created.
    #[arg(long, value_name = "DIR")]
    pub svg_dir: Option<PathBuf>,
    /// Which connections --svg-dir draws.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = SvgChoice::Deviating, requires = "svg_dir")]
    pub svg: SvgChoice,
}

/// `--svg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SvgChoice {
    /// Those that deviate from the documented sequence (findings).
    Deviating,
    /// Those that deviate or whose record is incomplete.
    NotConforming,
    /// Every connection.
    All,
}

impl OutputArgs {
    /// `--svg-dir`'s sink, when asked for.
    pub fn svg_sink(&self) -> anyhow::Result<Option<Box<dyn Sink + Send>>> {
        let Some(dir) = &self.svg_dir else {
            return Ok(None);
        };
        let chosen = match self.svg {
            SvgChoice::Deviating => Chosen::Deviating,
            SvgChoice::NotConforming => Chosen::NotConforming,
            SvgChoice::All => Chosen::All,
        };
        let sink = SvgDirSink::new(dir, chosen).with_context(|| {
            format!(
                "cannot create the directory {} for --svg-dir (give a directory you can write)",
                dir.display()
            )
        })?;
        Ok(Some(Box::new(sink)))
    }

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
        Ok(self.reopenable_sink(home_netns, containers)?.0)
    }

    /// [`Self::sink`], and with `-o FILE`, what reopens that file (on SIGHUP, after a rotation).
    pub fn reopenable_sink(
        &self,
        home_netns: Option<u32>,
        containers: Option<ContainerDirectory>,
    ) -> anyhow::Result<(Box<dyn Sink + Send>, Option<Reopen>)> {
        if self.format != Format::Jsonl && self.conforming.is_some() {
            anyhow::bail!(
                "--conforming chooses what JSON Lines writes; add --format jsonl (the text \
                 format and the Zeek log always show every connection)"
            );
        }
        let (out, reopen): (Box<dyn io::Write + Send>, _) = match &self.output {
            Some(path) => {
                let file = create_output_file(path).with_context(|| {
                    format!(
                        "cannot create the output file {} (give -o the path of a file in a \
                         directory you can write)",
                        path.display()
                    )
                })?;
                let (out, reopen) = OutputFile::new(file, path);
                (Box::new(out), Some(reopen))
            }
            None => (Box::new(BufWriter::with_capacity(OUT_BUFFER, Stdout)), None),
        };
        let sink: Box<dyn Sink + Send> = match self.format {
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
            Format::Zeek => {
                // A rotated conn.log is closed, and the new one has the header.
                if let Some(r) = &reopen {
                    r.set_framing(Framing {
                        close: crate::sinks::zeek_close,
                        open: crate::sinks::zeek_header,
                    });
                }
                Box::new(ZeekSink::new(out))
            }
        };
        Ok((sink, reopen))
    }
}

/// What the output is buffered by: a JSON line or a text block is written whole.
const OUT_BUFFER: usize = 64 * 1024;

/// Set once a write to standard output failed with EPIPE (its reader went away, as `head`
/// does) or [`watch_stdout`] saw it closed: the command then ends cleanly.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether standard output was found closed (see [`STDOUT_CLOSED`]).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Whether `e` comes from writing to a pipe whose reader went away (Rust ignores SIGPIPE, so
/// the write fails with EPIPE instead of killing the process).
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().map(io::Error::kind) == Some(io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Standard output, noting EPIPE in [`STDOUT_CLOSED`].
struct Stdout;

impl Stdout {
    fn noted<T>(r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if e.kind() == io::ErrorKind::BrokenPipe {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::noted(io::stdout().write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Self::noted(io::stdout().flush())
    }
}

/// Whether standard output is a pipe or a socket whose reader has gone: poll(2) reports
/// POLLERR (a pipe without reader) or POLLHUP (a socket shut down) without any write. A
/// terminal or a file is never taken for closed here.
pub fn stdout_hung_up() -> bool {
    use std::os::fd::AsRawFd as _;
    let fd = io::stdout().as_raw_fd();
    // SAFETY: `stat` is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is this process's stdout; `st` is a struct of the type fstat writes.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return false;
    }
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a timeout of 0: poll only reports, never waits.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    let closed = n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
    if closed {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
    closed
}

/// Resolves once standard output is found closed, by a failed write or by [`stdout_hung_up`]
/// (looked at four times a second: a quiet host writes nothing that would fail).
pub async fn watch_stdout() {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        every.tick().await;
        if stdout_closed() || stdout_hung_up() {
            return;
        }
    }
}

/// The `-o` file: buffered, and reopened at its path on request (see [`Reopen`]).
struct OutputFile(Arc<Mutex<OpenFile>>);

struct OpenFile {
    out: BufWriter<File>,
    path: PathBuf,
    /// What a file of this format ends and begins with (a Zeek log's `#close` and header):
    /// written to the old file and the new one when it is reopened.
    framing: Option<Framing>,
}

/// The last and first lines of a file of a format that has them.
#[derive(Clone, Copy)]
pub struct Framing {
    pub close: fn() -> String,
    pub open: fn() -> String,
}

/// Reopens the `-o` file at its path: after logrotate renamed it, what follows goes to a new
/// file of that name; what was written before, flushed first, stays in the renamed one. Called
/// between two records, never within one.
pub struct Reopen(Arc<Mutex<OpenFile>>);

impl OutputFile {
    fn new(file: File, path: &Path) -> (OutputFile, Reopen) {
        let open = Arc::new(Mutex::new(OpenFile {
            out: BufWriter::with_capacity(OUT_BUFFER, file),
            path: path.to_owned(),
            framing: None,
        }));
        (OutputFile(Arc::clone(&open)), Reopen(open))
    }

    fn with<T>(&self, f: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>) -> io::Result<T> {
        // A panic while it was held leaves a buffer that is still whole bytes: go on with it.
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut open.out)
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|o| o.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|o| o.write_all(buf))
    }
    fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> io::Result<()> {
        self.with(|o| o.write_fmt(args))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.with(|o| o.flush())
    }
}

impl Reopen {
    /// The path reopened.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenFile> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flushes the file as it is, then opens the path anew (created if it is gone, appended to
    /// if something is there already: nothing is truncated). On an error the old file stays
    /// in use.
    pub fn reopen(&self) -> io::Result<()> {
        let mut open = self.lock();
        let file = open_output_file(&open.path, Mode::Append)?;
        if let Some(f) = open.framing {
            open.out.write_all((f.close)().as_bytes())?;
        }
        open.out.flush()?;
        open.out = BufWriter::with_capacity(OUT_BUFFER, file);
        if let Some(f) = open.framing {
            open.out.write_all((f.open)().as_bytes())?;
        }
        Ok(())
    }

    /// Sets what the file ends and begins with at each reopen.
    fn set_framing(&self, framing: Framing) {
        self.lock().framing = Some(framing);
    }
}

/// Whether an output file that exists is emptied or appended to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Truncate,
    Append,
}

/// Creates (or truncates) a file the agent writes its output or a recording to.
pub fn create_output_file(path: &std::path::Path) -> io::Result<File> {
    open_output_file(path, Mode::Truncate)
}

/// Opens an output file; one it creates is readable by others as the umask allows and writable
/// by no one else whatever the umask: a trace names every process on the host, and a tampered
/// recording would be replayed as the truth.
fn open_output_file(path: &std::path::Path, mode: Mode) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.create(true).mode(0o644);
    match mode {
        Mode::Truncate => options.write(true).truncate(true),
        Mode::Append => options.append(true),
    };
    // The mode applies to a file this creates; an existing path (a file its owner made, or
    // /dev/null, a fifo, a terminal) keeps its own: changing it is not ours to do.
    options.open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reopen_sends_what_follows_to_a_new_file_at_the_path() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("teardown-reopen-unit-{}", std::process::id()));
        let rotated = path.with_extension("1");
        let (mut out, reopen) = OutputFile::new(File::create(&path).unwrap(), &path);
        writeln!(out, "one").unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Still buffered: flushed into the renamed file by the reopen.
        reopen.reopen().unwrap();
        writeln!(out, "two").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        // A file already at the path is appended to, not truncated.
        reopen.reopen().unwrap();
        writeln!(out, "three").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\nthree\n");
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&rotated).unwrap();
    }

    #[test]
    fn an_existing_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("teardown-mode-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        create_output_file(&path).unwrap();
        // 0644 less this process's umask: never writable by others.
        let created = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(created & 0o022, 0, "{created:o}");
        // A mode its owner chose (as /dev/null's 0666) is not ours to change.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_output_file(&path).unwrap();
        let kept = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(kept & 0o777, 0o666);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_closed_pipe_is_told_from_other_errors() {
        let epipe = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing to stdout");
        assert!(is_closed_pipe(&epipe));
        let json = serde_json::Error::io(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_closed_pipe(&anyhow::Error::new(json)));
        assert!(!is_closed_pipe(&anyhow::Error::new(io::Error::from(
            io::ErrorKind::PermissionDenied
        ))));
    }

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
