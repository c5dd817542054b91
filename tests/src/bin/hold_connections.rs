//! `hold_connections N PORTS ADDRESSES`: opens N TCP connections from this network namespace
//! to 127.0.0.1..127.0.0.ADDRESSES on each port of PORTS (comma-separated) in turn, says
//! `held N` on stdout, and holds them until its stdin closes. The tests run several, to hold
//! more connections than one process's open-file limit allows.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::ExitCode,
};

/// Raises the soft open-file limit to the hard one (the hard one too, when the process may).
fn raise_fd_limit(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reports errors through its
    // result.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    for lim in [
        libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(r.rlim_max),
        },
        libc::rlimit {
            rlim_cur: want.min(r.rlim_max),
            rlim_max: r.rlim_max,
        },
    ] {
        // SAFETY: setrlimit reads the struct it is given and reports errors through its result.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            return lim.rlim_cur;
        }
    }
    r.rlim_cur
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, ports, addresses] = args.as_slice() else {
        eprintln!("usage: hold_connections N PORT[,PORT...] ADDRESSES");
        return ExitCode::from(2);
    };
    let (Ok(n), Ok(addresses)) = (n.parse::<usize>(), addresses.parse::<u8>()) else {
        eprintln!("N and ADDRESSES are numbers");
        return ExitCode::from(2);
    };
    let Ok(ports) = ports
        .split(',')
        .map(str::parse::<u16>)
        .collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("PORTS: comma-separated port numbers");
        return ExitCode::from(2);
    };
    if ports.is_empty() || addresses == 0 {
        eprintln!("at least one port and one address");
        return ExitCode::from(2);
    }
    let limit = raise_fd_limit(n as u64 + 64);
    if (limit as usize) < n + 16 {
        eprintln!("open-file limit {limit}: too low for {n} connections");
        return ExitCode::from(1);
    }
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let last = 1 + (i % usize::from(addresses)) as u8;
        let port = ports[(i / usize::from(addresses)) % ports.len()];
        match TcpStream::connect(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port))) {
            Ok(c) => held.push(c),
            Err(e) => {
                eprintln!("connection {i} to 127.0.0.{last}:{port}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    println!("held {}", held.len());
    let _ = std::io::stdout().flush();
    // Until the test closes our stdin (or goes away).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    ExitCode::SUCCESS
}
