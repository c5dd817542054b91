//! `cargo xtask scenario NAME` / `cargo xtask scenario --list`: the scenario lab by hand.
//!
//! Sets up the eBPF toolchain, makes sure `nft` is there (the lab drops chosen segments with
//! nftables rules inside its network namespaces; a fresh machine lacks it, so it is installed
//! with apt-get), builds the `scenario` binary of the integration-test crate and runs it as root:
//! it prints both ends' trace (events, sequence fields, socket flags) and their verdicts.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cargo, setup, sh};

/// Installs nftables when `nft` is missing (also for `cargo xtask test`, whose lab tests need it).
pub fn ensure_nft() -> Result<()> {
    setup::ensure_tool(
        "nft",
        "nftables",
        "the scenario lab drops chosen TCP segments with nftables rules inside its network \
         namespaces",
    )
}

pub fn scenario(args: Vec<String>) -> Result<()> {
    let listing = args.is_empty() || args.iter().any(|a| a == "--list" || a == "-l");
    // The binary embeds the eBPF programs: building it needs the toolchain.
    setup::setup(true)?;
    if !listing {
        ensure_nft()?;
    }
    sh::run(cargo().args([
        "build",
        "--quiet",
        "--package",
        "teardown-integration-tests",
        "--bin",
        "scenario",
    ]))
    .context("building the scenario binary failed")?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let bin = format!("{target}/debug/scenario");
    let bin = bin.as_str();
    if listing {
        return sh::run(Command::new(bin).arg("--list"));
    }
    let mut cmd = if setup::is_root() {
        Command::new(bin)
    } else {
        println!("xtask: the lab needs root (namespaces, eBPF): running it with sudo");
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    sh::run(cmd.args(&args))
}
