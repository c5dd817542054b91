//! The kernel's text files (/proc, /sys, tracefs) read with a bound: a file of the expected kind
//! is far smaller, and one that is not (a path bind-mounted over, a device) must not be read
//! without end.

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

/// `/proc/PID/comm` and other one-word files.
pub const WORD: u64 = 256;
/// A sysctl value, a status or a counters file of a few kilobytes.
pub const SMALL: u64 = 1 << 20;
/// Tables that grow with the host: mountinfo, kallsyms.
pub const TABLE: u64 = 256 << 20;

/// The text of `path`, if it is at most `max` bytes: never more than `max + 1` are read.
pub fn read_to_string(path: impl AsRef<Path>, max: u64) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?
        .take(max.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_bound_and_no_further() {
        let text = read_to_string("/proc/self/status", SMALL).unwrap();
        assert!(text.contains("CapEff:"), "{text}");
        let err = read_to_string("/dev/zero", 4096).unwrap_err();
        assert_eq!(err.to_string(), "longer than 4096 bytes");
        assert!(read_to_string("/nonexistent/file", WORD).is_err());
    }
}
