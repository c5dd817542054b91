//! `cargo xtask screenshot`: the README's picture, made from a real trace. Runs the scenario
//! lab's "final ACK lost" (the real eBPF programs tracing a real connection whose last ACK an
//! nftables rule drops) recording its events, writes `teardown report` of that recording, and
//! has headless chromium photograph the page at the passive closer's ladder: docs/report.png.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, scenario, setup, sh};

/// The scenario photographed: a resent FIN, the final ACK and a TIME_WAIT in one ladder.
const SCENARIO: &str = "final-ack-lost";

pub fn screenshot() -> Result<()> {
    setup::setup(true)?;
    scenario::ensure_nft()?;
    setup::ensure_tool_lean(
        "chromium",
        "chromium",
        "the README's picture is the report opened in headless chromium",
    )?;
    if !setup::is_root() {
        bail!(
            "the lab traces with eBPF in network namespaces: run `cargo xtask screenshot` as root"
        );
    }
    sh::run(cargo().args([
        "build",
        "--quiet",
        "--package",
        "teardown-user",
        "--package",
        "teardown-integration-tests",
        "--bin",
        "teardown",
        "--bin",
        "scenario",
    ]))
    .context("building teardown and the scenario binary failed")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| root.join("target"), std::path::PathBuf::from);
    let work = std::env::temp_dir().join(format!("teardown-screenshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let rec = work.join("lab.events.jsonl");
    sh::run(
        Command::new(target.join("debug/scenario"))
            .arg(SCENARIO)
            .arg("--record")
            .arg(&rec),
    )
    .context("the scenario failed")?;
    let teardown = target.join("debug/teardown");
    let page = work.join("report.html");
    sh::run(
        Command::new(&teardown)
            .arg("report")
            .arg(&rec)
            .arg("-o")
            .arg(&page),
    )?;
    // The passive closer: the end that resent its FIN.
    let out = Command::new(&teardown)
        .args(["replay", "--format", "jsonl", "--conforming", "full"])
        .arg(&rec)
        .output()?;
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["verdict"]["role"] == "passive_closer")
        .and_then(|v| v["id"].as_u64())
        .context("the recording has no passive closer")?;
    let png = root.join("docs/report.png");
    let profile = work.join("chromium-profile");
    sh::run(
        Command::new("chromium")
            .args(crate::chromium::HEADLESS)
            .args(["--hide-scrollbars", "--window-size=1280,2000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("file://{}#conn={id}", page.display())),
    )?;
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "xtask: {} (connection #{id} of a live trace of {SCENARIO})",
        png.display()
    );
    Ok(())
}
