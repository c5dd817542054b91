//! Builds the kernel programs (`teardown-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/1_kernel/mod.rs` embeds it: one self-contained `teardown` binary.
//!
//! The eBPF build needs a compiler with the `core` source (it is built with `-Z build-std=core`)
//! and `bpf-linker`. `cargo xtask setup` installs them; this script only finds them:
//! 1. `TEARDOWN_EBPF_TOOLCHAIN`, when set, names the rustup toolchain to use;
//! 2. else rustup's `nightly`, when it has the `rust-src` component;
//! 3. else the `teardown-bpf` toolchain that `cargo xtask setup` links to Debian's rustc-web,
//!    built with `RUSTC_BOOTSTRAP=1` (a stable compiler that accepts `-Z build-std`).
//!
//! The eBPF crate is built by a child cargo, as aya-build does, but with its output held back:
//! a build script can only speak through `cargo:warning=`, so echoing the child's progress lines
//! would make every build look like it had warnings. A successful build passes on only the
//! child's real warnings; a failed one prints everything the child said, and cargo shows it.
use std::{
    env, fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{anyhow, bail, Context as _};

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
    build_ebpf(&chosen, &ebpf_dir)
}

/// Builds the eBPF crate's binaries with `toolchain` and copies them into `OUT_DIR`.
fn build_ebpf(toolchain: &str, ebpf_dir: &Path) -> anyhow::Result<()> {
    // The build-dependency on teardown-ebpf makes cargo rerun this script when its library or
    // teardown-common changes; this line covers the binary's sources (src/main.rs) too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    // aya-ebpf names the riscv64 variants by their common prefix.
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        arch.as_str()
    };

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        toolchain,
        "cargo",
        "build",
        "--package",
        "teardown-ebpf",
    ]);
    cmd.args([
        "--bins",
        "--release",
        "--message-format=json",
        "--target",
        target,
    ]);
    cmd.args(["-Z", "build-std=core"]);
    // Its own target directory: the child cargo would wait forever on the lock of ours.
    cmd.arg("--target-dir").arg(out_dir.join("ebpf-target"));
    cmd.current_dir(ebpf_dir);
    // The flags aya-build passes: the architecture for aya-ebpf's cfgs, and BTF in the object
    // (the loader and the verifier need it).
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );
    // Set by the outer cargo for its own compiler; the child must use the toolchain's.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if toolchain != "nightly" {
        // A stable compiler takes `-Z build-std=core` only with RUSTC_BOOTSTRAP; set on the
        // child alone, it reaches no user-space crate.
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;

    // stderr on its own thread, so neither pipe can fill up and stall the child.
    let mut stderr = child.stderr.take().context("child stderr not piped")?;
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });

    // With --message-format=json, stdout has one JSON message a line: the compiler's
    // diagnostics (rendered as a terminal would show them) and the artifacts built.
    let stdout = child.stdout.take().context("child stdout not piped")?;
    let mut diagnostics: Vec<(String, String)> = Vec::new();
    let mut other_lines: Vec<String> = Vec::new();
    let mut executables: Vec<(String, PathBuf)> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the eBPF build's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            other_lines.push(line);
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-message") => {
                let level = msg["message"]["level"].as_str().unwrap_or_default();
                let rendered = msg["message"]["rendered"].as_str().unwrap_or_default();
                diagnostics.push((level.to_owned(), rendered.to_owned()));
            }
            Some("compiler-artifact") => {
                if let (Some(name), Some(exe)) =
                    (msg["target"]["name"].as_str(), msg["executable"].as_str())
                {
                    executables.push((name.to_owned(), PathBuf::from(exe)));
                }
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the eBPF build")?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("the thread reading the eBPF build's stderr panicked"))?
        .context("reading the eBPF build's stderr")?;

    if !status.success() {
        // Everything, in full: cargo prints a failed build script's stderr.
        for (_, rendered) in &diagnostics {
            eprint!("{rendered}");
        }
        for line in &other_lines {
            eprintln!("{line}");
        }
        eprint!("{stderr}");
        bail!("building the eBPF programs failed ({status}): {cmd:?}");
    }
    // Success: only the real warnings, the compiler's and cargo's own.
    for (level, rendered) in &diagnostics {
        if level == "warning" {
            for line in rendered.trim_end().lines() {
                println!("cargo:warning={line}");
            }
        }
    }
    for line in stderr.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning={line}");
    }
    if executables.is_empty() {
        bail!("the eBPF build succeeded but reported no binary: {cmd:?}");
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}
