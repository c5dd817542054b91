//! Bounded waits: a test waits for the condition it needs, never a fixed time that is only
//! usually long enough.

use std::{
    io,
    time::{Duration, Instant},
};

/// Polls `f` every 5 ms until it is true; an error after `limit`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> io::Result<bool>,
) -> io::Result<()> {
    let end = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {limit:?} waiting for {what}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
