//! `cargo xtask setup`: finds, or installs, what building the eBPF programs needs.
//!
//! Kernel-side Rust needs the `core` source for the BPF target (`-Z build-std=core`) and
//! bpf-linker. In order of preference:
//! 1. a rustup `nightly` that has the `rust-src` component (the upstream recipe);
//! 2. Debian's `rustc-web` with `rust-web-src`, linked into rustup as `teardown-bpf` and used with
//!    `RUSTC_BOOTSTRAP=1` (teardown-user's build.rs does that);
//!
//! and bpf-linker built against the LLVM of the chosen compiler. With Debian's compiler it also
//! installs `rust-web-clippy`, that compiler's clippy, which `cargo xtask clippy` runs on the
//! eBPF crate. Everything is checked first, so a machine that is ready costs about a second.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::sh::{output_of, run};

pub const LINKED_TOOLCHAIN: &str = "teardown-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The compiler that will build the eBPF crate.
#[derive(Debug, Clone)]
pub struct BpfToolchain {
    /// rustup toolchain name.
    pub name: String,
    /// Major LLVM version of that compiler (bpf-linker must match it).
    pub llvm_major: u32,
}

fn sysroot_has_core_source(toolchain: &str) -> bool {
    let Some(sysroot) = output_of("rustup", &["run", toolchain, "rustc", "--print", "sysroot"])
    else {
        return false;
    };
    Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn llvm_major(toolchain: &str) -> Option<u32> {
    let vv = output_of("rustup", &["run", toolchain, "rustc", "-vV"])?;
    let v = vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    v.split('.').next()?.trim().parse().ok()
}

fn have(cmd: &str) -> bool {
    which::which(cmd).is_ok()
}

/// A program on PATH or in the sbin directories (root's tools are there, and PATH may lack them).
pub fn find_program(name: &str) -> Result<PathBuf> {
    if let Ok(p) = which::which(name) {
        return Ok(p);
    }
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("`{name}` is not installed"))
}

fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    apt_install_with(packages, why, &[])
}

/// [`apt_install`] without the packages' recommendations (QEMU's would bring a desktop).
pub fn apt_install_lean(packages: &[&str], why: &str) -> Result<()> {
    apt_install_with(packages, why, &["--no-install-recommends"])
}

fn apt_install_with(packages: &[&str], why: &str, options: &[&str]) -> Result<()> {
    if !have("apt-get") {
        bail!(
            "{} are needed ({why}) and this system has no apt-get",
            packages.join(" ")
        );
    }
    println!("setup: installing {} ({why})", packages.join(" "));
    let sudo = !is_root();
    let mut update = sudo_cmd(sudo, "apt-get");
    update.args(["update", "-q"]);
    run(&mut update).context("apt-get update failed")?;
    let mut install = sudo_cmd(sudo, "apt-get");
    install
        .args(["install", "-y", "-q"])
        .args(options)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install).with_context(|| format!("apt-get install {} failed", packages.join(" ")))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sudo_cmd(sudo: bool, program: &str) -> Command {
    if sudo {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn apt_has_candidate(pkg: &str) -> bool {
    output_of("apt-cache", &["policy", pkg])
        .is_some_and(|s| s.contains("Candidate:") && !s.contains("Candidate: (none)"))
}

/// Finds (or installs and links) a compiler that can build the eBPF crate.
fn bpf_toolchain() -> Result<BpfToolchain> {
    if !have("rustup") {
        bail!(
            "rustup is not installed; the eBPF build runs its compiler through `rustup run`. \
             Install rustup (https://rustup.rs), then run `cargo xtask setup` again."
        );
    }
    // 1. The upstream recipe: a nightly with rust-src.
    if sysroot_has_core_source("nightly") {
        if let Some(llvm) = llvm_major("nightly") {
            return Ok(BpfToolchain {
                name: "nightly".into(),
                llvm_major: llvm,
            });
        }
    }
    // 2. Debian's rustc-web with its library source, linked into rustup.
    if !sysroot_has_core_source(LINKED_TOOLCHAIN) {
        let src = Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml");
        if !(Path::new("/usr/bin/rustc").exists() && src.exists()) {
            if !(have("apt-get") && apt_has_candidate("rustc-web")) {
                bail!(manual_steps());
            }
            apt_install(
                &["rustc-web", "rust-web-src", "cargo-web", "rust-web-clippy"],
                "a Rust compiler with the core library source, to build the kernel programs, \
                 and its clippy",
            )?;
        }
        println!("setup: linking Debian's rustc into rustup as `{LINKED_TOOLCHAIN}`");
        run(Command::new("rustup").args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"]))
            .context("rustup toolchain link failed")?;
        if !sysroot_has_core_source(LINKED_TOOLCHAIN) {
            bail!(
                "Debian's rustc is installed but its sysroot has no library source; {}",
                manual_steps()
            );
        }
    }
    // A machine set up before clippy was part of the set-up has the compiler but not its clippy.
    if output_of(
        "rustup",
        &["run", LINKED_TOOLCHAIN, "cargo-clippy", "--version"],
    )
    .is_none()
    {
        if have("apt-get") && apt_has_candidate("rust-web-clippy") {
            apt_install(
                &["rust-web-clippy"],
                "clippy for Debian's compiler, to lint the kernel programs",
            )?;
        } else {
            println!(
                "setup: note: no rust-web-clippy for Debian's compiler here; \
                 `cargo xtask clippy` cannot check the eBPF crate"
            );
        }
    }
    let llvm = llvm_major(LINKED_TOOLCHAIN)
        .context("cannot tell which LLVM the linked compiler uses (rustc -vV)")?;
    Ok(BpfToolchain {
        name: LINKED_TOOLCHAIN.into(),
        llvm_major: llvm,
    })
}

fn bpf_linker_ok() -> bool {
    output_of("bpf-linker", &["--version"]).is_some()
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn install_bpf_linker(tc: &BpfToolchain) -> Result<()> {
    let llvm = tc.llvm_major;
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{llvm}"));
    // The -dev package brings the headers and llvm-config that bpf-linker's build needs.
    if !prefix.join("include/llvm-c/Core.h").exists() {
        apt_install(
            &[&format!("llvm-{llvm}-dev")],
            &format!("LLVM {llvm}, which bpf-linker links against to match the compiler"),
        )?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute)"
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm}"),
    ])
    .env("LLVM_PREFIX", &prefix);
    run(&mut cmd).context("building bpf-linker failed")
}

fn manual_steps() -> String {
    format!(
        "no compiler that can build the kernel programs was found, and this system cannot be \
         set up automatically. Do one of these, then run `cargo xtask setup` again:\n\
         \x20 a) with internet access to rustup:\n\
         \x20      rustup toolchain install nightly --component rust-src\n\
         \x20      cargo install bpf-linker\n\
         \x20 b) on Debian 12/13 with the rustc-web packages:\n\
         \x20      apt-get install rustc-web rust-web-src cargo-web rust-web-clippy llvm-22-dev\n\
         \x20      rustup toolchain link {LINKED_TOOLCHAIN} /usr\n\
         \x20      LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version {BPF_LINKER_VERSION} \\\n\
         \x20          --no-default-features --features llvm-22"
    )
}

/// Checks everything and installs what is missing. Returns the chosen toolchain.
pub fn setup(quiet: bool) -> Result<BpfToolchain> {
    let tc = bpf_toolchain()?;
    // bpf-linker is looked up on PATH by rustc; cargo install puts it in ~/.cargo/bin.
    let bin = cargo_bin_dir();
    if let Some(path) = std::env::var_os("PATH") {
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if !paths.contains(&bin) {
            paths.push(bin);
            // SAFETY: single-threaded at this point of xtask.
            unsafe { std::env::set_var("PATH", std::env::join_paths(paths)?) };
        }
    }
    if !bpf_linker_ok() {
        install_bpf_linker(&tc)?;
        if !bpf_linker_ok() {
            bail!("bpf-linker was built but does not run; {}", manual_steps());
        }
    }
    if !quiet {
        println!(
            "setup: ready: eBPF toolchain `{}` (LLVM {}), bpf-linker {}",
            tc.name,
            tc.llvm_major,
            output_of("bpf-linker", &["--version"])
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(tc)
}

/// Installs a Debian package providing `cmd` when `cmd` is missing (test and bench tools).
pub fn ensure_tool(cmd: &str, package: &str, why: &str) -> Result<()> {
    if find_program(cmd).is_ok() {
        return Ok(());
    }
    apt_install(&[package], why)
}

/// [`ensure_tool`] without the package's recommendations.
pub fn ensure_tool_lean(cmd: &str, package: &str, why: &str) -> Result<()> {
    if find_program(cmd).is_ok() {
        return Ok(());
    }
    apt_install_lean(&[package], why)
}
