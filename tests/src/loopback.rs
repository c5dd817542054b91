//! Connections made and closed on the spot, for tests that only need some teardowns to trace.

use std::{
    io::{self, Read},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use socket2::SockRef;

/// One connection to `listener`: the client closes first, in order, or aborts with SO_LINGER 0
/// when `abort`; the server reads to the end (the FIN, or the RST) and closes.
pub fn close_one(listener: &TcpListener, abort: bool) -> io::Result<()> {
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    if abort {
        SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
    }
    drop(client);
    let mut buf = Vec::new();
    let read = server.read_to_end(&mut buf);
    if abort {
        // The RST may come before the read (an error) or after it (end of stream).
        return Ok(());
    }
    read.map(drop)
}

/// [`close_one`] on a fresh listener on loopback port `port` of the calling thread's
/// namespace.
pub fn close_one_on(port: u16, abort: bool) -> io::Result<()> {
    close_one(&TcpListener::bind(("127.0.0.1", port))?, abort)
}
