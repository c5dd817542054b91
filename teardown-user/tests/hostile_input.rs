//! `teardown replay` on input no recording holds: endless lines, random bytes, directories,
//! damaged recordings. Each run must end quickly, with one message that names the file, the
//! line and what to do, never a panic; none needs root or a kernel.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory of this test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("teardown-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn teardown() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teardown"))
}

/// Waits for `child` at most `limit`; kills it and fails the test if it runs longer.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `teardown replay ARGS`, which must end within 10 s.
fn replay(args: &[&std::ffi::OsStr]) -> (Output, String) {
    let child = teardown()
        .arg("replay")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, Duration::from_secs(10), &format!("replay {args:?}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// The one error line of a failed run: `error: ` once, `needle` once.
fn one_error<'a>(out: &Output, err: &'a str, needle: &str) -> &'a str {
    assert!(!out.status.success(), "accepted: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.matches("error: ").count(), 1, "{err}");
    assert_eq!(
        err.matches(needle).count(),
        1,
        "{needle:?} not said once: {err}"
    );
    err.lines().find(|l| l.starts_with("error: ")).unwrap()
}

#[test]
fn replay_of_dev_zero_stops_after_the_line_limit() {
    let (out, err) = replay(&["/dev/zero".as_ref()]);
    let line = one_error(&out, &err, "longer than 65536 bytes");
    assert!(
        line.starts_with("error: /dev/zero cannot be replayed: line 1: not a teardown recording"),
        "{line}"
    );
    assert!(line.contains("`teardown record FILE`"), "{line}");
}

#[test]
fn replay_of_dev_urandom_ends_with_a_clear_message() {
    let (out, err) = replay(&["/dev/urandom".as_ref()]);
    let line = one_error(&out, &err, "not a teardown recording");
    assert!(
        line.starts_with("error: /dev/urandom cannot be replayed: line 1: "),
        "{line}"
    );
    assert!(line.contains("`teardown record FILE`"), "{line}");
}

/// A good header, then a line that never ends: reading stops after the limit, whatever the
/// writer still sends, and --skip-bad-lines cannot skip it (where would the next line begin?).
#[test]
fn an_endless_line_after_the_header_is_read_no_further_than_the_limit() {
    let header = std::fs::read_to_string(fixtures().join("four_way_close.events.jsonl")).unwrap();
    let header = header.lines().next().unwrap().to_owned();
    for extra in [&[][..], &["--skip-bad-lines"][..]] {
        let mut child = teardown()
            .args(["replay", "-"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let header = header.clone();
        // Up to 256 MiB of zeros; the write fails once replay has stopped reading.
        let writer = std::thread::spawn(move || {
            let mut sent = 0usize;
            let zeros = vec![0u8; 64 * 1024];
            if writeln!(stdin, "{header}").is_err() {
                return sent;
            }
            while sent < 256 << 20 && stdin.write_all(&zeros).is_ok() {
                sent += zeros.len();
            }
            sent
        });
        let out = finish_within(child, Duration::from_secs(10), "replay of an endless line");
        let sent = writer.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let line = one_error(&out, &err, "longer than 65536 bytes");
        assert!(
            line.starts_with("error: standard input cannot be replayed: line 2 is longer"),
            "{line}"
        );
        // What was read, plus what the pipe held when replay stopped.
        assert!(sent < 8 << 20, "{sent} bytes were taken");
    }
}

#[test]
fn replay_of_a_directory_says_so_once_and_what_to_give() {
    let dir = Scratch::new("replay-dir");
    let (out, err) = replay(&[dir.0.as_os_str()]);
    let line = one_error(&out, &err, "is a directory");
    assert!(line.contains(&dir.0.display().to_string()), "{line}");
    assert!(line.contains("`teardown record FILE`"), "{line}");
    assert!(!err.contains("os error 21"), "{err}");
}

#[test]
fn output_to_a_directory_says_its_cause_once_and_what_to_give() {
    let dir = Scratch::new("output-dir");
    let fixture = fixtures().join("four_way_close.events.jsonl");
    let (out, err) = replay(&[fixture.as_os_str(), "-o".as_ref(), dir.0.as_os_str()]);
    let line = one_error(&out, &err, "Is a directory (os error 21)");
    assert!(line.contains(&dir.0.display().to_string()), "{line}");
    assert!(line.contains("give -o the path of a file"), "{line}");
}

/// Replays of fixtures damaged in ways chosen by a seeded generator: bit flips, cut lines,
/// huge numbers, values of the wrong type, overlong lines, random bytes. Each replay ends on
/// its own, with success or one error line naming a line (with --skip-bad-lines, only what
/// cannot be skipped stops it). Bounded: 120 cases or 40 s, whichever comes first.
#[test]
fn damaged_recordings_end_in_a_verdict_or_one_clear_error() {
    let dir = Scratch::new("damaged");
    let names: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let mut rng = Rng(0x7ea2_d0e5);
    let start = Instant::now();
    let (mut cases, mut failed, mut ok) = (0, 0, 0);
    while cases < 120 && start.elapsed() < Duration::from_secs(40) {
        let source = &names[rng.below(names.len())];
        let text = std::fs::read(source).unwrap();
        let damaged = damage(&text, &mut rng);
        let path = dir.0.join(format!("case{cases}.jsonl"));
        std::fs::write(&path, &damaged).unwrap();
        let skip = rng.below(2) == 0;
        let mut args = vec![path.as_os_str(), "--format".as_ref(), "jsonl".as_ref()];
        if skip {
            args.push("--skip-bad-lines".as_ref());
        }
        let (out, err) = replay(&args);
        let what = format!("case {cases} (from {}, skip {skip})", source.display());
        assert!(!err.contains("panicked"), "{what}: {err}");
        if out.status.success() {
            ok += 1;
            let stdout = String::from_utf8(out.stdout).unwrap();
            let summary = stdout.lines().last().unwrap_or_default();
            assert!(summary.contains("\"type\":\"summary\""), "{what}: {stdout}");
        } else {
            failed += 1;
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            let line = one_error(&out, &err, "cannot be replayed");
            assert!(line.contains(&path.display().to_string()), "{what}: {line}");
            assert!(
                line.contains("line ") || line.contains("empty"),
                "{what}: no line named: {line}"
            );
        }
        cases += 1;
    }
    assert!(cases >= 20, "only {cases} cases in the time allowed");
    assert!(ok > 0 && failed > 0, "{ok} replayed, {failed} refused");
}

/// xorshift64*: the same cases on every run, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// One to four damages of one kind or another.
fn damage(text: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = text.to_vec();
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(out.len());
        match rng.below(8) {
            // A flipped bit.
            0 => out[at] ^= 1 << rng.below(8),
            // Cut short.
            1 => out.truncate(at),
            // A number made huge, or negative, or fractional.
            2 => {
                let huge: &[&[u8]] = &[
                    b"18446744073709551616",
                    b"-1",
                    b"1e308",
                    b"0.5",
                    b"99999999999999999999999999",
                ];
                if let Some(d) = out[at..].iter().position(u8::is_ascii_digit) {
                    let start = at + d;
                    let len = out[start..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                    out.splice(
                        start..start + len,
                        huge[rng.below(huge.len())].iter().copied(),
                    );
                }
            }
            // A value of the wrong type.
            3 => {
                let values: &[&[u8]] = &[b"null", b"\"x\"", b"[]", b"{}", b"true"];
                if let Some(c) = out[at..].iter().position(|&c| c == b':') {
                    let start = at + c + 1;
                    out.splice(
                        start..start,
                        values[rng.below(values.len())].iter().copied(),
                    );
                }
            }
            // A line longer than the limit.
            4 => {
                let n = 64 * 1024 + rng.below(4096);
                out.splice(at..at, std::iter::repeat_n(b'a', n));
            }
            // Random bytes.
            5 => {
                let n = 1 + rng.below(512);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            // A line dropped or repeated.
            6 => {
                let lines: Vec<&[u8]> = out.split(|&c| c == b'\n').collect();
                let i = rng.below(lines.len());
                let mut v: Vec<&[u8]> = lines.clone();
                if rng.below(2) == 0 {
                    v.remove(i);
                } else {
                    v.insert(i, lines[i]);
                }
                out = v.join(&b'\n');
            }
            // Another state, kind or family name.
            _ => {
                let words: &[&[u8]] = &[
                    b"\"SYN_RECV\"",
                    b"\"BOGUS\"",
                    b"\"retransmit\"",
                    b"\"lost\"",
                ];
                if let Some(q) = out[at..].iter().position(|&c| c == b'"') {
                    let start = at + q;
                    out.splice(start..start, words[rng.below(words.len())].iter().copied());
                }
            }
        }
    }
    out
}
