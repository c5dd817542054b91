//! Builds the kernel programs (`teardown-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/kernel/mod.rs` embeds it: one self-contained `teardown` binary.
//!
//! The eBPF build needs a compiler with the `core` source (it is built with `-Z build-std=core`)
//! and `bpf-linker`. `cargo xtask setup` installs them; this script only finds them:
//! 1. `TEARDOWN_EBPF_TOOLCHAIN`, when set, names the rustup toolchain to use;
//! 2. else rustup's `nightly`, when it has the `rust-src` component;
//! 3. else the `teardown-bpf` toolchain that `cargo xtask setup` links to Debian's rustc-web,
//!    built with `RUSTC_BOOTSTRAP=1` (a stable compiler that accepts `-Z build-std`).
use std::{env, path::Path, process::Command};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Name under which `cargo xtask setup` links Debian's compiler into rustup.
const LINKED_TOOLCHAIN: &str = "teardown-bpf";

fn sysroot_has_core_source(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TEARDOWN_EBPF_TOOLCHAIN");
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("teardown-user has no parent directory"))?
        .join("teardown-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("the path of teardown-ebpf is not UTF-8"))?
        .to_owned();

    let chosen = match env::var("TEARDOWN_EBPF_TOOLCHAIN") {
        Ok(name) if !name.is_empty() => name,
        _ if sysroot_has_core_source("nightly") => "nightly".to_owned(),
        _ if sysroot_has_core_source(LINKED_TOOLCHAIN) => LINKED_TOOLCHAIN.to_owned(),
        _ => {
            return Err(anyhow!(
                "no toolchain can build the eBPF programs: need a rustup nightly with rust-src, \
                 or Debian's rustc-web with rust-web-src linked as `{LINKED_TOOLCHAIN}`, and \
                 bpf-linker. Run `cargo xtask setup` to install and link them."
            ));
        }
    };
    if which::which("bpf-linker").is_err() {
        return Err(anyhow!(
            "bpf-linker is not on PATH. Run `cargo xtask setup` to build it against the right LLVM."
        ));
    }
    if chosen != "nightly" {
        // A stable compiler takes `-Z build-std=core` only with RUSTC_BOOTSTRAP; set here, in this
        // process, it reaches the child cargo of aya-build and no user-space crate.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    let package = Package {
        name: "teardown-ebpf",
        root_dir: &ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&chosen))
}
