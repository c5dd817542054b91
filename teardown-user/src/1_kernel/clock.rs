//! Time: kernel event times are CLOCK_MONOTONIC (`bpf_ktime_get_ns`), wall-clock times are
//! derived with an offset taken once; and durations as the outputs write them.

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

// Durations as people read them, in the two precisions the outputs use: a teardown's steps
// (sub-millisecond apart, so with a decimal) and the ages of closing sockets (whole units).

/// A duration in the unit that reads best.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}µs", decimal(ns, 1_000, 1))
    } else if ns < 1_000_000_000 {
        format!("{}ms", decimal(ns, 1_000_000, 1))
    } else {
        format!("{}s", decimal(ns, 1_000_000_000, 2))
    }
}

/// `value / unit` with `places` decimals (`unit` a multiple of 10^places), rounded half up in
/// integers: the report's script rounds so too, and the page and the SVG files agree to the
/// digit (floating-point formatting rounds ties to even in Rust and up in JavaScript).
pub fn decimal(value: u64, unit: u64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let quantum = (unit / scale).max(1);
    let n = (u128::from(value) + u128::from(quantum / 2)) / u128::from(quantum);
    let scale = u128::from(scale);
    format!(
        "{}.{:0width$}",
        n / scale,
        n % scale,
        width = places as usize
    )
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
        // Ties round up, as the report's script rounds them.
        assert_eq!(human_ns(62_500), "62.5µs");
        assert_eq!(human_ns(1_250_000), "1.3ms");
        assert_eq!(human_ns(1_005_000_000), "1.01s");
        assert_eq!(decimal(62_500, 1_000_000, 3), "0.063");
        assert_eq!(decimal(u64::MAX, 1_000_000_000, 2), "18446744073.71");
    }

    #[test]
    fn monotonic_is_monotonic() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
