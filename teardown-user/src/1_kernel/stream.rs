//! The ring buffer as an async source: tokio's `AsyncFd` wakes us when records are ready and we
//! drain everything available in one go, so the cost of a wake-up is shared by a batch.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<EventStream> {
        // SAFETY: the RingBuf owns its map fd; it stays open and the same for as long as the
        // AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(EventStream { fd })
    }

    /// Waits until records are available, then hands each to `f` (at most `max` of them, so a
    /// flood cannot starve the rest of the agent). Returns how many were handed over.
    ///
    /// The kernel side wakes us only once a good amount is waiting (see `WAKEUP_BYTES` in the
    /// eBPF crate), so this also looks every `POLL` without a wake-up.
    pub async fn next_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        const POLL: std::time::Duration = std::time::Duration::from_millis(50);
        loop {
            let woken = tokio::time::timeout(POLL, self.fd.readable_mut()).await;
            let n = match woken {
                Ok(guard) => {
                    let mut guard = guard?;
                    let n = drain(guard.get_inner_mut(), max, &mut f);
                    if n < max {
                        // Drained: wait for the next notification.
                        guard.clear_ready();
                    }
                    n
                }
                Err(_elapsed) => drain(self.fd.get_mut(), max, &mut f),
            };
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, max: usize, f: &mut impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    while n < max {
        match ring.next() {
            Some(item) => {
                f(&item);
                n += 1;
            }
            None => break,
        }
    }
    n
}

impl EventStream {
    /// Hands every record available right now to `f`, without waiting: the last read when the
    /// trace stops, so that events already in the ring are not dropped.
    pub fn drain_now(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }
}
