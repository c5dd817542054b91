//! The running kernel's BTF, read as the agent reads it before loading the programs: every
//! socket field found at a plausible offset (those of timewait sockets and their timers too),
//! and the TCP states numbered as teardown-common numbers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use teardown::kernel::btf::{resolve, StateNumbers, VMLINUX_BTF};
use teardown_integration_tests::gate;

#[test]
fn the_running_kernels_sock_layout_and_state_numbers() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let r = resolve(Path::new(VMLINUX_BTF)).unwrap();
    assert_eq!(r.state_numbers, StateNumbers::Match);
    assert!(r.missing.is_empty(), "unresolved: {:?}", r.missing);
    let o = r.offsets;
    // sock_common comes first in struct sock, so its fields are at small offsets, and the
    // TCP sequence fields lie far beyond it, within a few KiB.
    assert!(o.skc_family < 64 && o.skc_num < 64 && o.skc_dport < 64);
    assert!(o.snd_una > o.sk_err && o.snd_una < 8192);
    assert!(o.rcv_nxt != o.snd_nxt && o.snd_una != o.write_seq);
    assert!(r.has_seq());
    assert_eq!(
        o.fast,
        o.fast_bits(),
        "the fast paths follow the resolved layout"
    );
    // A timewait socket: sock_common, then its substate; its timer further on, within the
    // small struct; the timer's expiry and function after its list node; and the namespace's
    // reference count (named `count` before 6.18, `__ns_ref` since).
    let tw = r.tw;
    assert!(tw.complete(), "{tw:?}");
    assert!(
        tw.tw_substate > o.skc_family && tw.tw_substate < tw.tw_timer,
        "{tw:?}"
    );
    assert!(tw.tw_timer < 512, "{tw:?}");
    assert!(
        tw.timer_expires < tw.timer_function && tw.timer_function < 64,
        "{tw:?}"
    );
    // Both in the namespace's `ns_common`, the count after the inode number.
    assert!(
        tw.net_refs > o.net_inum && tw.net_refs < o.net_inum + 64,
        "{tw:?} {o:?}"
    );
}
