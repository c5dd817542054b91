//! Developer tasks that a build script should not do: set up the eBPF toolchain, run the agent
//! as root, run the kernel tests, clippy on every crate, the scenario lab and the benchmark.
//!
//! `cargo xtask <task>` (the alias is in .cargo/config.toml).

mod bench;
mod chromium;
mod churn;
mod matrix;
mod scenario;
mod screenshot;
mod setup;
mod sh;

use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Context as _, Result};
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
    /// Set up, then run every test: unit tests, the root/kernel integration tests on this
    /// host's kernel, then the same kernel tests on each kernel of the matrix in QEMU guests
    /// (see `matrix`). Ends with the number of tests that could not run here (not root, no
    /// BTF...) and why; under CI=true such a test fails instead, and so does this task.
    Test {
        /// Only this host's kernel: leave out the kernel matrix (counted as not run).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The kernel tests on the kernels users run: boots Debian's 6.1 and 6.12 cloud kernels in
    /// QEMU guests (KVM when available, else software emulation, slow) with the release binary
    /// and the kernel test binaries, and fails if any test fails or cannot run in a guest.
    /// Needs root; installs QEMU and what the guests are built from.
    Matrix {
        #[command(flatten)]
        args: matrix::MatrixArgs,
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
    /// tool, interleaved; then a soak under `teardown trace`; writes
    /// bench-results/latest.{json,md}. Needs root; about 21 minutes by default.
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
    /// The README's picture (root): a live trace of the lab's final-ack-lost scenario, its
    /// `teardown report` opened in headless chromium, written to docs/report.png.
    Screenshot,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup(false).map(drop),
        Task::Run { args } => run(args),
        Task::Test { host_only, args } => test(host_only, args),
        Task::Matrix { args } => matrix::matrix(args),
        Task::Clippy => clippy(),
        Task::Churn { args } => churn::churn(args),
        Task::Bench { args } => bench::bench(args),
        Task::Scenario { args } => scenario::scenario(args),
        Task::Screenshot => screenshot::screenshot(),
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

fn test(host_only: bool, args: Vec<String>) -> Result<()> {
    setup::setup(true)?;
    // The kernel tests build network namespaces (iproute2) and drop segments (nftables).
    setup::ensure_tool(
        "ip",
        "iproute2",
        "the kernel tests create network namespaces and veth pairs",
    )?;
    scenario::ensure_nft()?;
    // The container tests run real containers: podman with runc (podman's default runtime,
    // crun, fails on hosts whose cgroups are in hybrid mode), and an image made of busybox.
    for (cmd, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ] {
        setup::ensure_tool(
            cmd,
            package,
            "the container tests run busybox httpd in podman",
        )?;
    }
    // A real Prometheus server scrapes `serve` (its recommendations, exporters, are not needed),
    // and systemd checks the unit file offline.
    setup::ensure_tool_lean(
        "prometheus",
        "prometheus",
        "the fleet tests query a real Prometheus server that scrapes the agent",
    )?;
    setup::ensure_tool(
        "systemd-analyze",
        "systemd",
        "the deploy tests check the systemd unit with `systemd-analyze verify`",
    )?;
    // The report's tests open its pages and drawings in a real browser: Debian's chromium,
    // headless (its recommendations, fonts beyond the default and extensions, are not needed).
    setup::ensure_tool_lean(
        "chromium",
        "chromium",
        "the report tests open the HTML report and the SVG ladders in headless chromium",
    )?;
    // The privilege tests run each command as an unprivileged user with chosen capabilities.
    setup::ensure_tool(
        "setpriv",
        "util-linux",
        "the privilege tests run commands with exactly their capabilities",
    )?;
    let kernel_ready = setup::is_root() && std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if kernel_ready {
        println!("xtask: root and kernel BTF present: the kernel tests will run");
    } else if in_ci() {
        println!("xtask: CI without root or BTF: the kernel tests will fail, as they must");
    } else {
        println!(
            "xtask: not root (or no kernel BTF): the kernel tests will not run (counted at the \
             end); run as root"
        );
    }
    // A fresh list per run: the gate of the tests (tests/src/gate.rs) appends a line
    // `BINARY TEST<TAB>REASON` for each test that could not run.
    let not_run =
        std::env::temp_dir().join(format!("teardown-tests-not-run-{}.tsv", std::process::id()));
    std::fs::write(&not_run, "").with_context(|| format!("cannot create {}", not_run.display()))?;
    // Everything but the eBPF crate: unit tests, replay fixtures, and the root/kernel tests of
    // tests/ (lifecycle, timewait monitor, scenario lab). Every test binary runs even after a
    // failure, so that the count of tests that did not run covers them all.
    let mut all = cargo();
    all.args([
        "test",
        "--workspace",
        "--exclude",
        "teardown-ebpf",
        "--no-fail-fast",
    ])
    .env(NOT_RUN_FILE, &not_run);
    if !args.is_empty() {
        all.arg("--").args(&args);
    }
    let ran = sh::run(&mut all);
    // The kernel matrix, after the host's tests (and even when they failed: a failure on one
    // kernel says more beside the others' results).
    let matrix_ran = if host_only {
        append_not_run(&not_run, "matrix (every guest)", "--host-only");
        Ok(())
    } else if !setup::is_root() {
        append_not_run(
            &not_run,
            "matrix (every guest)",
            "not root (the guests are built and booted as root)",
        );
        Ok(())
    } else {
        matrix::matrix(matrix::MatrixArgs {
            kernels: Vec::new(),
            args: args.clone(),
        })
    };
    let listed = std::fs::read_to_string(&not_run).unwrap_or_default();
    let _ = std::fs::remove_file(&not_run);
    let count = report_not_run(&listed);
    ran.context("tests failed")?;
    matrix_ran?;
    if count > 0 && in_ci() {
        bail!("{count} tests did not run, and CI forbids skipping");
    }
    Ok(())
}

/// Lists `what` as not run, in the file the tests' gate writes.
fn append_not_run(file: &std::path::Path, what: &str, why: &str) {
    use std::io::Write as _;
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .and_then(|mut f| writeln!(f, "xtask {what}\t{why}"));
    if let Err(e) = written {
        println!(
            "xtask: cannot list {what} as not run in {}: {e}",
            file.display()
        );
    }
}

/// The variable naming the file the tests' gate lists the tests that did not run in.
const NOT_RUN_FILE: &str = "TEARDOWN_TESTS_NOT_RUN";

/// Whether this run is CI: `CI=true` (what `.ci/run` sets) or `CI=1`. The same rule as the
/// tests' gate (`tests/src/gate.rs`, where the reason for `1` is written).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The lines `BINARY TEST<TAB>REASON` of the tests that did not run, grouped by reason, each
/// group's tests sorted.
fn not_run_by_reason(listed: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        let (test, why) = line.split_once('\t').unwrap_or((line, "(no reason given)"));
        by_reason.entry(why).or_default().push(test);
    }
    for tests in by_reason.values_mut() {
        tests.sort_unstable();
    }
    by_reason
}

/// Prints the tests that did not run, grouped by reason, and last their number; returns it.
fn report_not_run(listed: &str) -> usize {
    let by_reason = not_run_by_reason(listed);
    let count: usize = by_reason.values().map(Vec::len).sum();
    if count > 0 {
        println!("xtask: tests that did not run, by reason:");
        for (why, tests) in &by_reason {
            println!("  {:>3}  {why}", tests.len());
            for t in tests {
                println!("         {t}");
            }
        }
    }
    let noun = if count == 1 { "test" } else { "tests" };
    println!("xtask: {count} {noun} did not run");
    count
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_that_did_not_run_are_grouped_by_reason() {
        let listed = "lab s02\tnot root\n\nlab s01\tnot root\nstop x\tno BTF\nodd line\n";
        let by = not_run_by_reason(listed);
        assert_eq!(by["not root"], ["lab s01", "lab s02"]);
        assert_eq!(by["no BTF"], ["stop x"]);
        assert_eq!(by["(no reason given)"], ["odd line"]);
        assert_eq!(by.len(), 3);
        assert_eq!(report_not_run(listed), 4);
        assert_eq!(report_not_run(""), 0);
    }
}
