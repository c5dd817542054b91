//! The scenario lab (docs/close-sequence.md, §4): every teardown variant reproduced in a pair of network
//! namespaces, traced by the real eBPF programs and judged by the validator. One test per
//! scenario; the scenarios are in `teardown_integration_tests::lab::scenarios` (also run by hand
//! with `cargo xtask scenario NAME`). Needs root, BTF and `nft`.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use teardown_integration_tests::{gate, lab::scenarios};

fn run(name: &str) {
    if !gate::can_run(gate::LAB) {
        return;
    }
    let s = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    (s.run)();
}

macro_rules! lab_tests {
    ($($test:ident = $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run($name);
            }
        )*

        /// Every scenario of the lab has its test.
        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in scenarios::ALL {
                assert!(tested.contains(&s.name), "no test for scenario {}", s.name);
            }
        }
    };
}

lab_tests! {
    s01_four_way_client_first = "four-way-client-first",
    s02_four_way_server_first = "four-way-server-first",
    s03_three_segment_close = "three-segment-close",
    s04_half_close_with_data = "half-close-with-data",
    s05_simultaneous_close = "simultaneous-close",
    s06_final_ack_lost = "final-ack-lost",
    s07_first_fin_lost = "first-fin-lost",
    s08_fin_wait2_timeout = "fin-wait2-timeout",
    s08_fin_wait2_timewait_expires = "fin-wait2-timewait-expires",
    s09_last_ack_given_up = "last-ack-given-up",
    s10_reset_linger_zero = "reset-linger-zero",
    s10_reset_unread_data = "reset-unread-data",
    s10_reset_data_after_close = "reset-data-after-close",
    s10_reset_in_close_wait = "reset-in-close-wait",
    s11_close_wait_leak = "close-wait-leak",
    s12_time_wait_reuse = "time-wait-reuse",
    s13_syn_to_closed_port = "syn-to-closed-port",
    s14_ipv6_four_way_client_first = "ipv6-four-way-client-first",
    s14_ipv6_final_ack_lost = "ipv6-final-ack-lost",
}
