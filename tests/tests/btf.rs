//! The running kernel's BTF, read as the agent reads it before loading the programs: every
//! socket field found at a plausible offset, and the TCP states numbered as teardown-common
//! numbers them.
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
}
