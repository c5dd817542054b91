//! Text that others chose, made safe to print: process names (a process sets its own with
//! `prctl(PR_SET_NAME)`), paths, container and namespace names, file contents quoted in errors.
//!
//! Printed raw, such text could move the cursor, retitle or clear the operator's terminal, or
//! split one record into two with a newline. Every stage that prints it (the text sinks, `top`,
//! the reports) passes it through [`text`] first; JSON output escapes it its own way. It lives
//! outside the stages so that any of them can use it.
//!
//! The form is that of a Rust string literal's escapes, so that it is unambiguous: a backslash
//! is doubled, `\n`, `\r`, `\t` and `\0` are shown so, other ASCII control characters as `\xNN`
//! (ESC is `\x1b`, BEL `\x07`, DEL `\x7f`), and other characters that are not printable (C1
//! controls, bidirectional overrides, zero-width and other format characters, unassigned code
//! points) as `\u{NNNN}`. Printable characters, Unicode included, and quotes are kept as they
//! are: the text outputs do not quote names. (Bytes that are not UTF-8 reach here already
//! replaced by U+FFFD, which is printable.)

use std::{borrow::Cow, fmt::Write as _};

/// `s` with its control and other non-printable characters escaped (see the module).
pub fn text(s: &str) -> Cow<'_, str> {
    // The common case, a plain ASCII name, is borrowed as it is.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push(&mut out, s);
    Cow::Owned(out)
}

/// Appends `s` to `out`, escaped.
fn push(out: &mut String, s: &str) {
    // `str::escape_debug` knows which characters are printable (it carries Unicode's tables,
    // and escapes a combining mark only where it would join onto what comes before the text);
    // its escapes are read back here and rewritten where this module's form differs.
    let mut esc = s.escape_debug();
    while let Some(c) = esc.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match esc.next() {
            // Quotes need no escape outside a quoted literal.
            Some(q @ ('"' | '\'')) => out.push(q),
            Some('u') => {
                // `{XXXX}`: the code point in hex.
                let mut hex = String::new();
                for h in esc.by_ref() {
                    if h == '}' {
                        break;
                    }
                    if h != '{' {
                        hex.push(h);
                    }
                }
                match u32::from_str_radix(&hex, 16) {
                    Ok(cp) if cp < 0x80 => {
                        let _ = write!(out, "\\x{cp:02x}");
                    }
                    _ => {
                        let _ = write!(out, "\\u{{{hex}}}");
                    }
                }
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push_str("\\\\"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_never_sent() {
        // What a process can name itself (15 bytes, all kept by the kernel).
        let name = "\u{1b}]0;PWN\u{7}\u{1b}[2J\n\"x";
        assert_eq!(text(name), "\\x1b]0;PWN\\x07\\x1b[2J\\n\"x");
        assert_eq!(text("a\tb\rc\0d\u{7f}"), "a\\tb\\rc\\0d\\x7f");
        // C1 controls, a bidirectional override, a zero-width space, a line separator.
        assert_eq!(
            text("\u{9b}2J \u{202e}evil \u{200b} \u{2028}"),
            "\\u{9b}2J \\u{202e}evil \\u{200b} \\u{2028}"
        );
        for s in [name, "\u{9b}\u{202e}\u{2028}\u{feff}\u{e0001}"] {
            let shown = text(s);
            assert!(
                shown.chars().all(|c| !c.is_control() && c.is_ascii()),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn printable_text_is_kept_and_the_form_is_unambiguous() {
        assert!(matches!(text("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(text("café 東京 e\u{301}"), "café 東京 e\u{301}");
        assert_eq!(text("it's \"q\""), "it's \"q\"");
        // A backslash is doubled: a name that spells an escape is told from the escape.
        assert_eq!(text("\\x1b"), "\\\\x1b");
        assert_ne!(text("\\x1b"), text("\u{1b}"));
        assert_eq!(text("\\"), "\\\\");
    }
}
