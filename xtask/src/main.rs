//! Developer tasks that a build script should not do: set up the eBPF toolchain, run the agent
//! as root, run the kernel tests, clippy on every crate, the scenario lab and the benchmark.
//!
//! `cargo xtask <task>` (the alias is in .cargo/config.toml).

mod bench;
mod churn;
mod scenario;
mod setup;
mod sh;

use std::process::Command;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "teardown's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Find or install the eBPF toolchain (compiler with core source, bpf-linker). Idempotent.
    Setup,
    /// Set up, build the release binary, and run it as root: `cargo xtask run -- trace --port 80`.
    /// With no arguments it runs `teardown trace`.
    Run {
        /// Arguments for `teardown` (default: trace).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit tests, and the root/kernel integration tests. Under
    /// CI=true the kernel tests fail, never skip, when they cannot run.
    Test {
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then clippy with `-D warnings` on every crate: the host crates (all targets), then
    /// the eBPF crate for the BPF target with the eBPF toolchain. What CI runs.
    Clippy,
    /// Loopback connection churn (load generator for the benchmark), in a fresh network
    /// namespace: `cargo xtask churn --threads 8 --seconds 5`.
    Churn {
        #[command(flatten)]
        args: churn::ChurnArgs,
    },
    /// Benchmark: churn untraced, with `teardown trace`, with top's back end and with the peer
    /// tool, interleaved; writes bench-results/latest.{json,md}. Needs root.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// The scenario lab by hand (root): `cargo xtask scenario final-ack-lost` runs one scenario
    /// and prints its trace and verdicts; `cargo xtask scenario --list` lists them.
    Scenario {
        /// A scenario name, or --list.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup(false).map(drop),
        Task::Run { args } => run(args),
        Task::Test { args } => test(args),
        Task::Clippy => clippy(),
        Task::Churn { args } => churn::churn(args),
        Task::Bench { args } => bench::bench(args),
        Task::Scenario { args } => scenario::scenario(args),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(mut args: Vec<String>) -> Result<()> {
    setup::setup(true)?;
    sh::run(cargo().args(["build", "--release", "--package", "teardown-user"]))
        .context("building teardown failed")?;
    if args.is_empty() {
        args.push("trace".into());
    }
    let bin = "target/release/teardown";
    let mut cmd = if setup::is_root() {
        Command::new(bin)
    } else {
        println!("xtask: tracing needs root: running it with sudo");
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    sh::run(cmd.args(&args))
}

fn test(args: Vec<String>) -> Result<()> {
    setup::setup(true)?;
    // The kernel tests build network namespaces (iproute2) and drop segments (nftables).
    setup::ensure_tool(
        "ip",
        "iproute2",
        "the kernel tests create network namespaces and veth pairs",
    )?;
    scenario::ensure_nft()?;
    let kernel_ready = setup::is_root() && std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if kernel_ready {
        println!("xtask: root and kernel BTF present: the kernel tests will run");
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        println!("xtask: CI=true without root or BTF: the kernel tests will fail, as they must");
    } else {
        println!(
            "xtask: not root (or no kernel BTF): the kernel tests will be skipped; run as root"
        );
    }
    // Everything but the eBPF crate: unit tests, replay fixtures, and the root/kernel tests of
    // tests/ (lifecycle, timewait monitor, scenario lab).
    let mut all = cargo();
    all.args(["test", "--workspace", "--exclude", "teardown-ebpf"]);
    if !args.is_empty() {
        all.arg("--").args(&args);
    }
    sh::run(&mut all).context("tests failed")
}

fn clippy() -> Result<()> {
    let tc = setup::setup(true)?;
    sh::run(
        cargo()
            .args(["clippy", "--workspace", "--exclude", "teardown-ebpf"])
            .args(["--all-targets", "--", "-D", "warnings"]),
    )
    .context("clippy found problems in the host crates")?;

    // The eBPF crate builds only for the BPF target, with the compiler that teardown-user's
    // build.rs uses for it (the same choice, TEARDOWN_EBPF_TOOLCHAIN first).
    let toolchain = std::env::var("TEARDOWN_EBPF_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or(tc.name);
    if sh::output_of("rustup", &["run", &toolchain, "cargo-clippy", "--version"]).is_none() {
        anyhow::bail!(
            "the eBPF toolchain `{toolchain}` has no clippy: install Debian's rust-web-clippy \
             (for {}) or `rustup component add clippy --toolchain {toolchain}`",
            setup::LINKED_TOOLCHAIN
        );
    }
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    let mut bpf = Command::new("rustup");
    bpf.current_dir(root);
    bpf.args([
        "run",
        &toolchain,
        "cargo",
        "clippy",
        "--package",
        "teardown-ebpf",
    ]);
    bpf.args(["--target", target, "-Z", "build-std=core", "--target-dir"]);
    // A target directory of its own: another compiler than the host crates', other flags.
    bpf.arg(root.join("target/bpf-clippy"));
    bpf.args(["--", "-D", "warnings"]);
    // aya-ebpf's architecture cfg, as the real build sets it.
    bpf.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );
    bpf.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if toolchain != "nightly" {
        // A stable compiler takes `-Z build-std` only with RUSTC_BOOTSTRAP (as in build.rs).
        bpf.env("RUSTC_BOOTSTRAP", "1");
    }
    sh::run(&mut bpf).context("clippy found problems in the eBPF crate")
}
