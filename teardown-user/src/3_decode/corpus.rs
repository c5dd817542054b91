//! A generated corpus for the recording reader and the event decoder: the replay fixtures and
//! valid kernel records, damaged by a seeded generator (bit flips, cuts, huge numbers, values of
//! the wrong type, overlong lines, random bytes), the same cases on every run. An ordinary test,
//! bounded in cases and time, so that CI runs it everywhere without a fuzzing toolchain.

use std::{
    io::Cursor,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    recording::{ReadError, Reader, Record, Writer, MAX_LINE},
    Comm, DecodeError, Decoded, Event, AF_INET, AF_INET6,
};
use teardown_common as raw;

/// Each test stops generating after this long, whatever its count.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// xorshift64*: small, seeded, the same sequence on every machine.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One to four damages of a recording.
fn damage(text: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = text.to_vec();
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            out.push(rng.byte());
        }
        let at = rng.below(out.len());
        match rng.below(9) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out.truncate(at),
            2 => {
                const HUGE: &[&[u8]] = &[
                    b"18446744073709551616",
                    b"18446744073709551615",
                    b"-9223372036854775809",
                    b"-1",
                    b"1e308",
                    b"0.5",
                    b"4294967296",
                    b"65536",
                    b"99999999999999999999999999999999999999",
                ];
                if let Some(d) = out[at..].iter().position(u8::is_ascii_digit) {
                    let start = at + d;
                    let len = out[start..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                    let with = HUGE[rng.below(HUGE.len())];
                    out.splice(start..start + len, with.iter().copied());
                }
            }
            3 => {
                const VALUES: &[&[u8]] = &[b"null", b"\"x\"", b"[]", b"{}", b"true", b"[[[[[[["];
                if let Some(c) = out[at..].iter().position(|&c| c == b':') {
                    let start = at + c + 1;
                    let with = VALUES[rng.below(VALUES.len())];
                    out.splice(start..start, with.iter().copied());
                }
            }
            4 => {
                // Around the limit: some lines just fit, most do not.
                let n = MAX_LINE - 600 + rng.below(1200);
                out.splice(at..at, std::iter::repeat_n(b' ', n));
            }
            5 => {
                let n = 1 + rng.below(256);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                out.splice(at..at, bytes);
            }
            6 => {
                // Deep nesting: serde_json's recursion limit must refuse it, not the stack.
                let n = 1 + rng.below(100_000);
                out.splice(at..at, std::iter::repeat_n(b'[', n));
            }
            7 => {
                let lines: Vec<Vec<u8>> = out.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                let i = rng.below(lines.len());
                let mut v = lines.clone();
                match rng.below(3) {
                    0 => drop(v.remove(i)),
                    1 => v.insert(i, lines[i].clone()),
                    _ => v.swap(i, rng.below(lines.len())),
                }
                out = v.join(&b'\n');
            }
            _ => {
                const WORDS: &[&[u8]] = &[
                    b"\"SYN_RECV\"",
                    b"\"NEW_SYN_RECV\"",
                    b"\"BOGUS\"",
                    b"\"retransmit\"",
                    b"\"lost\"",
                    b"\"tw_timer\"",
                    b"\"\\u0000\"",
                    b"\"\\ud800\"",
                ];
                if let Some(q) = out[at..].iter().position(|&c| c == b'"') {
                    let start = at + q;
                    let with = WORDS[rng.below(WORDS.len())];
                    out.splice(start..start, with.iter().copied());
                }
            }
        }
    }
    out
}

/// Reads a whole input as replay does (going on after bad lines), checking at every step that
/// no more than a line's limit was read per line, and that what was read back is what a
/// recording could hold. Returns (records, bad lines).
fn read_all(input: &[u8]) -> Result<(usize, usize), ReadError> {
    let mut r = Reader::new(Cursor::new(input))?;
    let newlines = input.iter().filter(|&&c| c == b'\n').count() as u64;
    let (mut records, mut bad) = (0, 0);
    loop {
        let (line_before, at_before) = (r.line(), r.input_position());
        let next = r.next_record();
        let lines_read = (r.line() - line_before).max(1);
        let read = r.input_position() - at_before;
        assert!(
            read <= lines_read * (MAX_LINE as u64 + 1),
            "{read} bytes read for {lines_read} lines"
        );
        assert!(r.line() <= newlines + 1, "line {} of {newlines}", r.line());
        assert!(r.buffer_capacity() <= 2 * (MAX_LINE + 1));
        match next {
            Ok(None) => return Ok((records, bad)),
            Ok(Some(rec)) => {
                records += 1;
                // What was accepted writes back within a line, and reads back the same.
                let mut again = Vec::new();
                let mut w = Writer::new(&mut again, &r.header).unwrap();
                w.write(&rec).unwrap();
                let line = again.split(|&c| c == b'\n').nth(1).unwrap();
                assert!(line.len() < MAX_LINE, "{} bytes", line.len());
                let back = Reader::new(&again[..]).unwrap().next_record().unwrap();
                assert_eq!(back.as_ref().map(without_comm), Some(without_comm(&rec)));
            }
            Err(ReadError::Line { line, what }) => {
                assert_eq!(line, r.line());
                assert!(!what.is_empty());
                bad += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A record with its task name left out: a name that is not UTF-8 is read back with
/// replacement characters, cut at 15 bytes.
fn without_comm(r: &Record) -> Record {
    match r {
        Record::Event(ev) => Record::Event(Event {
            comm: Comm::default(),
            ..*ev
        }),
        other => other.clone(),
    }
}

#[test]
fn damaged_recordings_are_read_or_refused_within_the_line_limit() {
    let sources = fixtures();
    assert!(sources.len() >= 10);
    let mut rng = Rng::new(0x5eed_0001);
    let start = Instant::now();
    let (mut cases, mut refused, mut with_bad_lines, mut clean) = (0, 0, 0, 0);
    // The fixtures themselves first: every line read, none bad.
    for text in &sources {
        let (records, bad) = read_all(text).unwrap();
        assert!(records > 0 && bad == 0);
    }
    while cases < 3000 && start.elapsed() < TIME_LIMIT {
        let text = damage(&sources[rng.below(sources.len())], &mut rng);
        match read_all(&text) {
            Ok((_, 0)) => clean += 1,
            Ok(_) => with_bad_lines += 1,
            Err(e) => {
                let said = e.to_string();
                assert!(
                    said.starts_with("line ") || matches!(e, ReadError::Empty),
                    "{said}"
                );
                refused += 1;
            }
        }
        cases += 1;
    }
    assert!(cases >= 300, "{cases} cases in {TIME_LIMIT:?}");
    // The generator makes every kind of outcome.
    assert!(
        refused > 0 && with_bad_lines > 0 && clean > 0,
        "{refused} refused, {with_bad_lines} with bad lines, {clean} clean"
    );
}

#[test]
fn random_bytes_and_endless_lines_are_refused_after_the_limit() {
    let mut rng = Rng::new(0x5eed_0002);
    let start = Instant::now();
    for case in 0..200 {
        if start.elapsed() > TIME_LIMIT {
            break;
        }
        let len = rng.below(4 * MAX_LINE);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if case % 4 == 0 {
            // No newline at all, as in /dev/zero.
            bytes
                .iter_mut()
                .for_each(|b| *b = if *b == b'\n' { 0 } else { *b });
        }
        let mut input = &bytes[..];
        match Reader::new(&mut input) {
            Ok(_) => panic!("case {case}: random bytes taken for a recording"),
            Err(e) => {
                let said = e.to_string();
                assert!(
                    said.starts_with("line 1: ") || matches!(e, ReadError::Empty),
                    "{said}"
                );
            }
        }
        assert!(bytes.len() - input.len() <= MAX_LINE + 1, "case {case}");
    }
}

fn raw_bytes<T: Copy>(r: &T) -> Vec<u8> {
    // SAFETY: called with the kernel's record types only, `#[repr(C)]` plain data of a fixed
    // size whose padding the types name as fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((r as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// A plausible record of either kind, before damage.
fn raw_record(rng: &mut Rng) -> Vec<u8> {
    let family = if rng.below(2) == 0 { AF_INET } else { AF_INET6 };
    if rng.below(4) == 0 {
        let mut r = raw::TwTimerEvent::ZERO;
        r.ts_ns = rng.next();
        r.twaddr = rng.next();
        r.kind = raw::kind::TW_START + (rng.below(3) as u8);
        r.substate = [5, 6][rng.below(2)];
        r.family = family;
        r.expires = rng.next();
        r.jiffies = rng.next();
        r.saddr[0] = 127;
        r.sport = rng.next() as u16;
        return raw_bytes(&r);
    }
    let mut r = raw::Event::ZERO;
    r.ts_ns = rng.next();
    r.skaddr = rng.next();
    r.kind = rng.below(5) as u8;
    r.oldstate = 1 + rng.below(12) as u8;
    r.newstate = 1 + rng.below(12) as u8;
    r.family = family;
    r.saddr[0] = 127;
    r.daddr[0] = 10;
    r.sport = rng.next() as u16;
    r.dport = rng.next() as u16;
    r.pid = rng.next() as u32;
    r.flags = rng.byte();
    r.comm = rng.next().to_le_bytes().repeat(2).try_into().unwrap();
    raw_bytes(&r)
}

#[test]
fn damaged_kernel_records_decode_or_are_refused() {
    let mut rng = Rng::new(0x5eed_0003);
    let start = Instant::now();
    let event_size = std::mem::size_of::<raw::Event>();
    let timer_size = std::mem::size_of::<raw::TwTimerEvent>();
    let (mut decoded, mut refused) = (0, 0);
    for case in 0..200_000 {
        if case % 1024 == 0 && start.elapsed() > TIME_LIMIT {
            break;
        }
        let mut bytes = raw_record(&mut rng);
        match rng.below(5) {
            0 => {}
            1 => {
                for _ in 0..=rng.below(8) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            2 => bytes.truncate(rng.below(bytes.len())),
            3 => bytes.extend((0..rng.below(64)).map(|_| rng.byte())),
            _ => bytes.iter_mut().for_each(|b| *b = rng.byte()),
        }
        match Decoded::decode(&bytes) {
            Ok(d) => {
                decoded += 1;
                let (local, remote) = match d {
                    Decoded::Sock(ev) => {
                        assert!(bytes.len() >= event_size && bytes.len() != timer_size);
                        (ev.local, ev.remote)
                    }
                    Decoded::Timer(t) => {
                        assert_eq!(bytes.len(), timer_size);
                        (t.local, t.remote)
                    }
                };
                assert_eq!(local.is_ipv4(), remote.is_ipv4());
                // Whatever the kernel sent, its recording line fits the reader's limit.
                let line = match d {
                    Decoded::Sock(ev) => serde_json::to_vec(&Record::Event(ev)),
                    Decoded::Timer(t) => serde_json::to_vec(&Record::TwTimer(t)),
                }
                .unwrap();
                assert!(line.len() < MAX_LINE);
            }
            Err(e) => {
                refused += 1;
                if let DecodeError::Size(n) = e {
                    assert_eq!(n, bytes.len());
                    assert!(n < event_size);
                }
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        decoded > 1000 && refused > 1000,
        "{decoded} decoded, {refused} refused"
    );
}
