//! `cargo xtask churn`: a loopback connection-churn load generator.
//!
//! Client threads loop over connect, 1 byte each way, close; server threads accept and answer.
//! The client closes first by default (`--server-first` flips it); `--rst-pct` makes that share
//! of the closes resets (SO_LINGER 0). Bounded by `--seconds` and `--count`.
//!
//! Each run happens in a fresh network namespace (the process unshares its own and brings `lo`
//! up) so timewait sockets left by earlier runs cannot change the result; the kernel's
//! tracepoints are global, so a tracer in the root namespace still sees every state change.
//!
//! `--hold N` instead opens N connections and keeps them open (the memory scenario of the
//! benchmark). `--handshake` is for `cargo xtask bench`: the process reports readiness as a JSON
//! line on stdout and waits for a line on stdin before it starts (and, with `--hold`, before it
//! releases the connections).

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use socket2::{Domain, Socket, Type};

/// Arguments of `cargo xtask churn`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChurnArgs {
    /// Client threads (as many server threads answer them).
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Stop after this many connections in all (default: only the time bound).
    #[arg(long)]
    pub count: Option<u64>,
    /// The server closes first (the client then sees EOF and closes).
    #[arg(long)]
    pub server_first: bool,
    /// Percent of connections the client ends with a reset (SO_LINGER 0) instead of a FIN.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rst_pct: u8,
    /// First listening port (below 32768, out of the ephemeral range).
    #[arg(long, default_value_t = 24000)]
    pub port: u16,
    /// Stay in the current network namespace instead of a fresh one.
    #[arg(long)]
    pub no_netns: bool,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Open this many connections and hold them open (until a line on stdin with
    /// --handshake, else for --seconds), instead of churning.
    #[arg(long, value_name = "N")]
    pub hold: Option<u64>,
    /// Connections per second in all, paced evenly over the client threads (default: as many
    /// as they can make): a steady load, as a soak wants.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// For `cargo xtask bench`: say `{"ready":..}` on stdout, then wait for a line on stdin.
    #[arg(long, hide = true)]
    pub handshake: bool,
}

/// The result line of a run.
#[derive(Debug, Default, Serialize, serde::Deserialize, Clone)]
pub struct ChurnResult {
    pub connections: u64,
    pub errors: u64,
    pub resets: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Hold mode: connections that were open at once.
    #[serde(default)]
    pub held: u64,
}

impl ChurnResult {
    /// The result of holding `opened` connections open for `secs`.
    fn held(opened: u64, errors: u64, secs: f64) -> ChurnResult {
        ChurnResult {
            connections: opened,
            errors,
            resets: 0,
            seconds: secs,
            per_second: opened as f64 / secs.max(1e-9),
            held: opened,
        }
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-thread bound on consecutive failures before a client thread gives up.
const MAX_CONSECUTIVE_ERRORS: u64 = 2_000;
/// Connections per listening port in hold mode (each needs a distinct ephemeral port).
const HOLD_PER_PORT: u64 = 20_000;

pub fn churn(args: ChurnArgs) -> Result<()> {
    if args.threads == 0 || args.threads > 256 {
        bail!("--threads must be between 1 and 256");
    }
    if !(args.seconds > 0.0 && args.seconds <= 24.0 * 3600.0) {
        bail!("--seconds must be positive (and at most a day)");
    }
    if args.rate.is_some_and(|r| !(1.0..=1e6).contains(&r)) {
        bail!("--rate must be between 1 and 1000000 connections per second");
    }
    if args.port == 0 || args.port >= 32768 {
        bail!(
            "--port must be in 1..32767 (ports from 32768 are ephemeral and collide under churn)"
        );
    }
    let want_fds = args.hold.map_or(4096, |n| n.saturating_mul(2) + 256);
    let fds = raise_nofile(want_fds)?;
    if !args.no_netns {
        enter_fresh_netns().context("cannot run in a fresh network namespace (needs root)")?;
    }
    let result = match args.hold {
        Some(n) if n.saturating_mul(2) + 256 > fds => hold_split(&args, n, fds)?,
        Some(n) => hold(&args, n)?,
        None => run_churn(&args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "churn: {} connections in {:.2} s = {:.0} connections/s ({} resets, {} errors){}",
            result.connections,
            result.seconds,
            result.per_second,
            result.resets,
            result.errors,
            if args.hold.is_some() {
                format!(", {} held open at once", result.held)
            } else {
                String::new()
            }
        );
    }
    std::io::stdout().flush().ok();
    // Server threads may still block in accept(); the process ends here and takes them along.
    std::process::exit(0)
}

/// Raises RLIMIT_NOFILE to at least `want` (as root the hard limit too), or as far as allowed.
/// Returns the soft limit now in force.
fn raise_nofile(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let target = want.min(nr_open);
    let new = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max.max(target),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        // Not root: take what the hard limit allows.
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
        return Ok(lim.rlim_max);
    }
    Ok(target)
}

/// unshare(CLONE_NEWNET) for this process (before any thread starts), then `ip link set lo up`
/// done with an ioctl.
fn enter_fresh_netns() -> Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; called while single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    lo_up()
}

/// Brings `lo` up in the calling thread's network namespace (`ip link set lo up`, as an ioctl).
pub fn lo_up() -> Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for the lo ioctl");
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own; fd is open.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err).context("bringing lo up");
    }
    Ok(())
}

fn listen(port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).context("socket")?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    s.listen(4096)?;
    Ok(s.into())
}

/// `--handshake`: one JSON line out, then wait for one line in. EOF on stdin aborts.
fn handshake(what: &str, extra: &str) -> Result<()> {
    println!("{{\"{what}\":true,\"pid\":{}{extra}}}", std::process::id());
    std::io::stdout().flush()?;
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the go-ahead on stdin")?;
    if n == 0 {
        bail!("stdin closed before the go-ahead: stopping");
    }
    Ok(())
}

fn serve(listener: TcpListener, server_first: bool, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_nodelay(true);
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            continue;
        }
        if s.write_all(b"y").is_err() {
            continue;
        }
        if !server_first {
            // Wait for the client's FIN (or reset), then close: the client closed first.
            let mut rounds = 0;
            while rounds < 16 {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => rounds += 1,
                    _ => break,
                }
            }
        }
        drop(s);
    }
}

struct ClientStats {
    ok: u64,
    errors: u64,
    resets: u64,
}

fn client(
    addr: SocketAddr,
    server_first: bool,
    rst_pct: u8,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    // The time between two of this thread's connections, when paced.
    every: Option<Duration>,
) -> ClientStats {
    let start = Instant::now();
    let mut st = ClientStats {
        ok: 0,
        errors: 0,
        resets: 0,
    };
    let mut consecutive = 0u64;
    let mut n = 0u64;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && consecutive < MAX_CONSECUTIVE_ERRORS {
        // Take one connection from the shared budget (bounded by --count).
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        if let Some(every) = every {
            // Connection n starts at start + n x every: a late one does not make the next
            // ones early, so the rate holds over the run, not only on average.
            let due = start + every.mul_f64(n as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        n += 1;
        let rst = rst_pct > 0 && (n % 100) < u64::from(rst_pct);
        let mut one = || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            s.read_exact(&mut buf[..1])?;
            if server_first && !rst {
                // The server closes first: wait for its FIN.
                let mut k = 0;
                while k < 16 && s.read(&mut buf)? > 0 {
                    k += 1;
                }
            }
            if rst {
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            }
            drop(s);
            Ok(())
        };
        match one() {
            Ok(()) => {
                st.ok += 1;
                st.resets += u64::from(rst);
                consecutive = 0;
            }
            Err(_) => {
                st.errors += 1;
                consecutive += 1;
            }
        }
    }
    st
}

fn run_churn(args: &ChurnArgs) -> Result<ChurnResult> {
    let listener = listen(args.port)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..args.threads {
        let l = listener.try_clone()?;
        let stop = stop.clone();
        let sf = args.server_first;
        thread::Builder::new()
            .name("churn-server".into())
            .spawn(move || serve(l, sf, stop))
            .context("spawning a server thread")?;
    }
    if args.handshake {
        handshake("ready", "")?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let budget = Arc::new(AtomicU64::new(args.count.unwrap_or(u64::MAX)));
    let mut handles = Vec::with_capacity(args.threads);
    for _ in 0..args.threads {
        let budget = budget.clone();
        let (sf, rst) = (args.server_first, args.rst_pct);
        let every = args
            .rate
            .map(|r| Duration::from_secs_f64(args.threads as f64 / r));
        handles.push(
            thread::Builder::new()
                .name("churn-client".into())
                .spawn(move || client(addr, sf, rst, deadline, budget, every))
                .context("spawning a client thread")?,
        );
    }
    let mut res = ChurnResult::default();
    for h in handles {
        let st = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        res.connections += st.ok;
        res.errors += st.errors;
        res.resets += st.resets;
    }
    res.seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    res.per_second = res.connections as f64 / res.seconds.max(1e-9);
    Ok(res)
}

/// Opens `n` connections (spread over several listening ports, `HOLD_PER_PORT` each) and keeps
/// both ends open, then closes them all.
fn hold(args: &ChurnArgs, n: u64) -> Result<ChurnResult> {
    let ports = n.div_ceil(HOLD_PER_PORT).max(1);
    if u64::from(args.port) + ports >= 32768 {
        bail!("--port too high for {ports} listening ports below 32768");
    }
    let mut addrs = Vec::new();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
    for i in 0..ports {
        // `ports` is at most a few dozen here (checked against 32768 above).
        let port = args.port + i as u16;
        let l = listen(port)?;
        addrs.push(l.local_addr()?);
        let acc = accepted.clone();
        thread::Builder::new()
            .name("hold-accept".into())
            .spawn(move || {
                for _ in 0..HOLD_PER_PORT {
                    match l.accept() {
                        Ok((s, _)) => {
                            if let Ok(mut a) = acc.lock() {
                                a.push(s);
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
            .context("spawning an accept thread")?;
    }
    if args.handshake {
        handshake("ready", "")?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds.max(60.0));
    let mut clients = Vec::with_capacity(n as usize);
    let mut errors = 0u64;
    let mut i = 0u64;
    while (clients.len() as u64) < n && Instant::now() < deadline && errors < 10_000 {
        let addr = addrs[(i % ports) as usize];
        i += 1;
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => clients.push(s),
            Err(_) => errors += 1,
        }
    }
    let opened = clients.len() as u64;
    // Wait (bounded) for the server side to have accepted them all.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < wait_until {
        let got = accepted.lock().map(|a| a.len() as u64).unwrap_or(0);
        if got >= opened {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    if args.handshake {
        handshake("held", &format!(",\"open\":{opened}"))?;
    } else {
        eprintln!("churn: holding {opened} connections for {} s", args.seconds);
        thread::sleep(Duration::from_secs_f64(args.seconds));
    }
    drop(clients);
    if let Ok(mut a) = accepted.lock() {
        a.clear();
    }
    Ok(ChurnResult::held(opened, errors, secs))
}

/// A hold worker process: `churn --hold K --no-netns --handshake` in this namespace.
struct Worker {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> Result<serde_json::Value> {
        let mut l = String::new();
        if self.out.read_line(&mut l)? == 0 {
            bail!("a hold worker stopped early");
        }
        serde_json::from_str(l.trim()).with_context(|| format!("a hold worker said {l:?}"))
    }
    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("worker stdin already closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin makes a waiting worker stop; kill it anyway, then reap it.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--hold N` past this process's descriptor limit (RLIMIT_NOFILE cannot always be raised, e.g.
/// without CAP_SYS_RESOURCE): several worker processes in this namespace hold a share each.
fn hold_split(args: &ChurnArgs, n: u64, fds: u64) -> Result<ChurnResult> {
    let per = fds.saturating_sub(256) / 2;
    if per < 100 {
        bail!("RLIMIT_NOFILE ({fds}) is too low to hold connections open");
    }
    let workers = n.div_ceil(per);
    if workers > 64 || u64::from(args.port) + workers >= 32768 {
        bail!("holding {n} connections needs {workers} worker processes: too many");
    }
    eprintln!(
        "churn: RLIMIT_NOFILE is {fds}: holding {n} connections in {workers} processes of at most {per}"
    );
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut ws = Vec::new();
    let mut left = n;
    let mut port = u64::from(args.port);
    for _ in 0..workers {
        let k = left.min(per);
        left -= k;
        // Consecutive listening ports, as many per worker as it needs.
        let first_port = port;
        port += k.div_ceil(HOLD_PER_PORT).max(1);
        if port >= 32768 {
            bail!("holding {n} connections needs listening ports past 32767: lower --port");
        }
        let mut child = std::process::Command::new(&exe)
            .args(["churn", "--no-netns", "--handshake", "--json", "--hold"])
            .arg(k.to_string())
            .arg("--port")
            .arg(first_port.to_string())
            .arg("--seconds")
            .arg(args.seconds.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cannot start a hold worker")?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().context("no worker stdout")?;
        ws.push(Worker {
            child,
            stdin,
            out: std::io::BufReader::new(out),
        });
    }
    for w in &mut ws {
        w.line()?; // ready
    }
    if args.handshake {
        handshake("ready", "")?;
    }
    let start = Instant::now();
    let mut opened = 0;
    for w in &mut ws {
        w.go()?;
    }
    for w in &mut ws {
        let v = w.line()?;
        opened += v.get("open").and_then(|o| o.as_u64()).unwrap_or(0);
    }
    let secs = start.elapsed().as_secs_f64();
    if args.handshake {
        handshake("held", &format!(",\"open\":{opened}"))?;
    } else {
        eprintln!("churn: holding {opened} connections for {} s", args.seconds);
        thread::sleep(Duration::from_secs_f64(args.seconds));
    }
    let mut errors = 0;
    for w in &mut ws {
        w.go()?;
    }
    for w in &mut ws {
        let v = w.line()?;
        errors += v.get("errors").and_then(|o| o.as_u64()).unwrap_or(0);
    }
    Ok(ChurnResult::held(opened, errors, secs))
}
