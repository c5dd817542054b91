//! Time: kernel event times are CLOCK_MONOTONIC (`bpf_ktime_get_ns`), wall-clock times are
//! derived with an offset taken once; and durations as the command line takes them and the
//! outputs write them.

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now, on the kernel programs' clock.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC) as u64
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in nanoseconds.
pub fn wall_offset_ns() -> i64 {
    (read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)) as i64
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 500ms, 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a duration (it must be positive and finite)"))
}

/// A number of seconds for an option: finite, from 0 to a day.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        return Err(format!("{s:?}: give a number of seconds from 0 to 86400"));
    }
    Ok(v)
}

// Durations as people read them, in the two precisions the outputs use: a teardown's steps
// (sub-millisecond apart, so with a decimal) and the ages of closing sockets (whole units).

/// A duration in the unit that reads best.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

/// A duration for people: `850ms`, `42s`, `3m05s`, `2h03m`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// An age, with `>=` when it is a lower bound.
pub fn human_age(ms: u64, at_least: bool) -> String {
    if at_least {
        format!(">={}", human_ms(ms))
    } else {
        human_ms(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_ms_in_whole_units() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(42_000), "42s");
        assert_eq!(human_ms(185_000), "3m05s");
        assert_eq!(human_ms(7_380_000), "2h03m");
        assert_eq!(human_age(61_000, true), ">=1m01s");
    }

    #[test]
    fn human_ns_keeps_a_decimal() {
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(43_800_000), "43.8ms");
        assert_eq!(human_ns(2_500_000_000), "2.50s");
    }

    use std::time::Duration;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_secs("0.5"), Ok(0.5));
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("1e30").is_err());
    }

    #[test]
    fn monotonic_is_monotonic() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
