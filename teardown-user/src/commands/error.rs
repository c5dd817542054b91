//! How the binary says an error: each cause of the chain once.

/// The error and its causes, joined by ": " as anyhow's `{:#}` joins them, but leaving out a
/// cause whose text its error already says: many errors (ours once, and the libraries') put
/// their source's text in their own, and `{:#}` then repeats it
/// (`... Address already in use (os error 98): Address already in use (os error 98)`).
pub fn text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || out.contains(&part) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&part);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io;

    use super::text;

    #[derive(Debug, thiserror::Error)]
    #[error("opening it failed: {0}")]
    struct SaysItsSource(#[source] io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = || io::Error::from(io::ErrorKind::AddrInUse);
        let cause = io().to_string();
        let e = anyhow::Error::new(SaysItsSource(io())).context("cannot start");
        assert_eq!(format!("{e:#}").matches(&cause).count(), 2, "{e:#}");
        assert_eq!(
            text(&e),
            format!("cannot start: opening it failed: {cause}")
        );
        // A cause its error does not say is kept.
        let e = anyhow::Error::new(io()).context("cannot start");
        assert_eq!(text(&e), format!("cannot start: {cause}"));
        assert_eq!(text(&anyhow::anyhow!("plain")), "plain");
    }
}
