//! tracefs, for the classic tracepoint: mounted when it is not, and the tracepoint's record
//! layout read from its `format` file rather than assumed.

use std::path::Path;

use teardown_common::{TracepointOffsets, OFFSET_UNKNOWN};

use super::caps::{self, Capability};

/// "CAP_X is lacking" when it is (the usual reason for `e`), else `e` itself.
fn lacking_or(c: Capability, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            caps::lacking_note(c).unwrap_or_else(|| e.to_string())
        }
        _ => e.to_string(),
    }
}
use super::files;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const FORMAT: &str = "events/sock/inet_sock_set_state/format";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({}); mount it with \
         `mount -t tracefs tracefs {TRACEFS}`",
        lacking_or(Capability::SysAdmin, .0)
    )]
    Mount(std::io::Error),
    #[error(
        "tracefs at {TRACEFS} cannot be read ({}): the classic tracepoint's layout is read there; \
         {}, or use --hook btf",
        lacking_or(Capability::DacReadSearch, .0),
        caps::grant_hint(&[Capability::Bpf, Capability::Perfmon, Capability::DacReadSearch])
    )]
    Unreadable(std::io::Error),
    #[error("cannot read {path}: {error}; this kernel may not have the sock:inet_sock_set_state tracepoint (Linux 4.16 or newer)")]
    Format {
        path: String,
        // Not named `source`: that would make it the source too, said twice by "{:#}".
        error: std::io::Error,
    },
    #[error("the tracepoint format at {path} lacks the field `{field}`")]
    Field { path: String, field: &'static str },
}

/// Mounts tracefs at its usual place unless it is there already.
pub fn ensure_mounted() -> Result<(), TracefsError> {
    match std::fs::metadata(Path::new(TRACEFS).join("events")) {
        Ok(_) => return Ok(()),
        // Mounted, but root's alone (mode 0700 by default).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(TracefsError::Unreadable(e))
        }
        Err(_) => {}
    }
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads the offsets of the fields the classic program uses.
pub fn tracepoint_offsets() -> Result<TracepointOffsets, TracefsError> {
    let path = Path::new(TRACEFS).join(FORMAT);
    let text =
        files::read_to_string(&path, files::SMALL).map_err(|error| TracefsError::Format {
            path: path.display().to_string(),
            error,
        })?;
    parse_format(&text).map_err(|field| TracefsError::Field {
        path: path.display().to_string(),
        field,
    })
}

/// Parses lines such as `\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;`.
pub fn parse_format(text: &str) -> Result<TracepointOffsets, &'static str> {
    let offset_of = |name: &'static str| -> Result<u32, &'static str> {
        text.lines()
            .filter_map(|line| {
                let line = line.trim();
                let field = line.strip_prefix("field:")?;
                let decl = field.split(';').next()?;
                // The name is the last word of the declaration, without any array suffix.
                let last = decl.split_whitespace().last()?;
                let fname = last.split('[').next()?;
                if fname != name {
                    return None;
                }
                let off = line.split("offset:").nth(1)?.split(';').next()?;
                off.trim().parse::<u32>().ok()
            })
            .next()
            .ok_or(name)
    };
    Ok(TracepointOffsets {
        skaddr: offset_of("skaddr")?,
        oldstate: offset_of("oldstate")?,
        newstate: offset_of("newstate")?,
        sport: offset_of("sport")?,
        dport: offset_of("dport")?,
        family: offset_of("family")?,
        protocol: offset_of("protocol")?,
        saddr: offset_of("saddr")?,
        daddr: offset_of("daddr")?,
        saddr_v6: offset_of("saddr_v6").unwrap_or(OFFSET_UNKNOWN),
        daddr_v6: offset_of("daddr_v6").unwrap_or(OFFSET_UNKNOWN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The format file as Linux 6.x prints it.
    const FORMAT_6X: &str = "name: inet_sock_set_state
ID: 1435
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_the_format_file() {
        let o = parse_format(FORMAT_6X).unwrap();
        assert_eq!(o.skaddr, 8);
        assert_eq!(o.oldstate, 16);
        assert_eq!(o.newstate, 20);
        assert_eq!(o.sport, 24);
        assert_eq!(o.protocol, 30);
        assert_eq!(o.saddr, 32);
        assert_eq!(o.daddr, 36);
        assert_eq!(o.saddr_v6, 40);
        assert_eq!(o.daddr_v6, 56);
    }

    #[test]
    fn names_a_missing_field() {
        let text = FORMAT_6X.replace("protocol", "proto");
        assert_eq!(parse_format(&text), Err("protocol"));
    }
}
