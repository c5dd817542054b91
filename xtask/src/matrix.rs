//! `cargo xtask matrix`: the kernel tests on the kernels our users run, in QEMU guests.
//!
//! Each guest boots one of Debian's own kernels (the cloud flavour, fetched through its
//! metapackage, so that the newest build of a series is used: old builds leave the archive) with
//! an initramfs made here from packages: busybox (static) for the shell, the host's iproute2,
//! nftables and kmod with the libraries they load, the kernel's network modules (loaded on demand
//! by the kernel, through kmod's modprobe, as on a full system), the release `teardown` and the
//! kernel test binaries. The guest's `/init` (below) runs every test binary with `CI=true`, so a
//! test that cannot run fails, prints what ran, and powers off. The serial console is the only
//! channel out: lines starting with [`MARK`] carry the results, everything is kept in a log.
//!
//! There is no usable KVM on every host (TCG, software emulation, is the fallback), so the
//! guests are slow: each has a time limit, and a guest that does not report in time fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cargo,
    setup::{self, find_program},
    sh,
};

/// A kernel of the matrix: a Debian metapackage that depends on the newest image of a series.
pub struct Kernel {
    /// What the user types (`--kernel 6.1`) and what the output is prefixed with.
    pub label: &'static str,
    pub metapackage: &'static str,
}

/// The kernels the guests boot, besides the host's own (which `cargo xtask test` covers).
pub const KERNELS: &[Kernel] = &[
    Kernel {
        label: "6.1",
        metapackage: "linux-image-cloud-amd64",
    },
    Kernel {
        label: "6.12",
        metapackage: "linux-image-6.12-cloud-amd64",
    },
];

/// Prefix of the lines the guest's `/init` writes for the host to read.
const MARK: &str = "TEARDOWN-MATRIX:";

/// The checks `/init` runs itself, besides the test binaries: the agent loading the sock_diag
/// module where the kernel does not.
const GUEST_CHECKS: &[&str] = &["sock_diag_modprobe"];

/// How long one guest may take, boot to power-off (about 4 minutes is usual under software
/// emulation): two guests stay within the matrix's 20 minutes even when both hang.
const GUEST_LIMIT: Duration = Duration::from_secs(9 * 60);
/// Boots of one guest when its kernel panics before our init speaks, or on a stray int3 of its
/// own live code patching. Under software emulation with two CPUs, a kernel patching its code
/// (int3 breakpoints while static keys flip, at boot or as programs attach) now and then traps on
/// the half-written instruction; 6.12 has done so twice in one run. A boot after such a panic
/// resumes after the steps that finished, the one cut short run again, so a retry hides nothing
/// and costs little. Any other panic is reported, never retried.
const BOOT_ATTEMPTS: usize = 4;

/// The modules a guest carries: the kernel's whole network stack (TCP diagnostics, nf_tables and
/// its expressions, which the kernel loads as rules need them), veth, and what they depend on.
const MODULE_DIRS: &[&str] = &["kernel/net/", "kernel/drivers/net/veth.ko"];

/// The host's programs the tests run, copied with their libraries: (program, Debian package).
const TOOLS: &[(&str, &str)] = &[("ip", "iproute2"), ("ss", "iproute2"), ("nft", "nftables")];

/// The guest's `/init`. Output goes to the serial console; results are the `MARK` lines.
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /sys/fs/bpf
mount -t bpf bpf /sys/fs/bpf
# The kernel loads modules on demand through this program (nf_tables' expressions, veth, the
# sock_diag modules), as on a full system.
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
echo "TEARDOWN-MATRIX: kernel $(uname -r)"
failed=0
# A boot after a stray panic skips the steps an earlier boot finished (teardown.skip=N).
skip=0
for word in $(cat /proc/cmdline); do
    case $word in teardown.skip=*) skip=${word#teardown.skip=} ;; esac
done
step=0
# Where the kernel cannot load tcp_diag by itself (its module loader off, as in many containers
# and minimal hosts), the agent loads it: a sock_diag report must work, and leave it loaded.
step=$((step + 1))
if [ "$step" -gt "$skip" ]; then
    echo /bin/false > /proc/sys/kernel/modprobe
    echo "TEARDOWN-MATRIX: begin sock_diag_modprobe"
    if lsmod | grep -q '^tcp_diag'; then
        echo "tcp_diag was loaded before the agent ran"
        rc=1
    else
        /usr/bin/teardown -v timewait
        rc=$?
        lsmod | grep -q '^tcp_diag' || { echo "tcp_diag is not loaded"; rc=1; }
    fi
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    echo "TEARDOWN-MATRIX: end sock_diag_modprobe rc=$rc"
    echo /sbin/modprobe > /proc/sys/kernel/modprobe
fi
export CI=true TEARDOWN_BIN=/usr/bin/teardown TEARDOWN_TESTS_NOT_RUN=/tmp/not-run.tsv
export RUST_BACKTRACE=1 HOME=/tmp
args=$(cat /tests.args)
for t in /tests/*; do
    step=$((step + 1))
    [ "$step" -gt "$skip" ] || continue
    name=${t##*/}
    : > /tmp/not-run.tsv
    echo "TEARDOWN-MATRIX: begin $name"
    # shellcheck disable=SC2086 # the arguments are words
    "$t" $args
    rc=$?
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    # Told before the step ends, so that a later panic cannot lose them.
    while IFS= read -r line; do
        echo "TEARDOWN-MATRIX: not-run $line"
    done < /tmp/not-run.tsv
    echo "TEARDOWN-MATRIX: end $name rc=$rc"
done
echo "TEARDOWN-MATRIX: done failed=$failed"
sync
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// `cargo xtask matrix [--kernel LABEL]... [-- TEST-ARGS]`.
#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Only these kernels of the matrix (6.1, 6.12); all by default.
    #[arg(long = "kernel", value_name = "LABEL")]
    pub kernels: Vec<String>,
    /// Arguments for every test binary in the guests (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// What a guest reported.
#[derive(Debug, Default, PartialEq, Eq)]
struct Report {
    kernel: Option<String>,
    /// Test binary -> its exit status.
    binaries: BTreeMap<String, i32>,
    not_run: Vec<String>,
    /// The guest's own count of failed binaries, from its last line.
    failed: Option<usize>,
    /// The kernel said "Kernel panic".
    panicked: bool,
    /// An "Oops: int3": a breakpoint of the kernel's live code patching (jump labels, as
    /// tracepoints are enabled) met by another CPU after the patch, which emulated guests (no
    /// KVM) have shown on 6.12 while programs attached and detached.
    stray_int3: bool,
}

impl Report {
    /// The kernel panicked before our init printed its first line: no test ran.
    fn died_before_init(&self) -> bool {
        self.panicked && self.kernel.is_none()
    }

    /// The kernel panicked on a stray int3 of its own code patching, during the tests.
    fn died_of_stray_int3(&self) -> bool {
        self.panicked && self.stray_int3 && self.failed.is_none()
    }

    /// Takes in what the boots before this one finished (this one skipped those steps).
    fn follows(&mut self, earlier: Report) {
        self.binaries.extend(earlier.binaries);
        let mut not_run = earlier.not_run;
        not_run.append(&mut self.not_run);
        self.not_run = not_run;
    }

    /// Takes one console line.
    fn read(&mut self, line: &str) {
        if line.contains("Kernel panic - not syncing") {
            self.panicked = true;
        }
        if line.contains("Oops: int3") {
            self.stray_int3 = true;
        }
        // Anywhere in the line: the firmware's terminal escapes may come first.
        let Some(at) = line.find(MARK) else {
            return;
        };
        let rest = line[at + MARK.len()..].trim();
        if let Some(k) = rest.strip_prefix("kernel ") {
            self.kernel = Some(k.to_owned());
        } else if let Some(end) = rest.strip_prefix("end ") {
            if let Some((name, rc)) = end.rsplit_once(" rc=") {
                self.binaries
                    .insert(name.to_owned(), rc.parse().unwrap_or(-1));
            }
        } else if let Some(n) = rest.strip_prefix("not-run ") {
            self.not_run.push(n.to_owned());
        } else if let Some(f) = rest.strip_prefix("done failed=") {
            self.failed = f.parse().ok();
        }
    }

    /// Why the guest's run failed, if it did; `expected` are the binaries it was given.
    fn problems(&self, expected: &BTreeSet<String>) -> Vec<String> {
        let mut p = Vec::new();
        if self.failed.is_none() {
            p.push("the guest did not finish (no final line): see its log".to_owned());
        }
        for (name, rc) in &self.binaries {
            if *rc != 0 {
                p.push(format!("{name} failed (exit status {rc})"));
            }
        }
        for name in expected.iter().filter(|n| !self.binaries.contains_key(*n)) {
            p.push(format!("{name} did not run"));
        }
        for n in &self.not_run {
            p.push(format!("could not run: {n}"));
        }
        p
    }
}

pub fn matrix(args: MatrixArgs) -> Result<()> {
    let chosen: Vec<&Kernel> = if args.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        args.kernels
            .iter()
            .map(|l| {
                KERNELS.iter().find(|k| k.label == l).with_context(|| {
                    let labels: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
                    format!(
                        "no kernel `{l}` in the matrix (it has {})",
                        labels.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    setup::setup(true)?;
    ensure_host_packages()?;
    let root = workspace_root()?;
    let work = root.join("target/matrix");
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    println!("matrix: building the release binary and the kernel test binaries");
    sh::run(cargo().current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "teardown-user",
    ]))
    .context("building teardown failed")?;
    let tests = test_binaries(&root)?;
    let payload = Payload {
        teardown: root.join("target/release/teardown"),
        tests,
        args: args.args.join(" "),
    };

    let mut failures = Vec::new();
    for kernel in chosen {
        let started = Instant::now();
        match run_guest(kernel, &work, &payload) {
            Ok(problems) if problems.is_empty() => println!(
                "matrix: {}: every kernel test passed ({} s)",
                kernel.label,
                started.elapsed().as_secs()
            ),
            Ok(problems) => {
                for p in &problems {
                    println!("matrix: {}: {p}", kernel.label);
                }
                failures.push(format!("{}: {} problems", kernel.label, problems.len()));
            }
            Err(e) => {
                println!("matrix: {}: {e:#}", kernel.label);
                failures.push(format!("{}: {e}", kernel.label));
            }
        }
    }
    if !failures.is_empty() {
        bail!("the kernel matrix failed: {}", failures.join("; "));
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// QEMU, busybox (static), cpio, kmod (depmod and the guests' modprobe) and the tools the tests
/// run.
fn ensure_host_packages() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    let mut want = |have: bool, package: &'static str| {
        if !have && !missing.contains(&package) {
            missing.push(package);
        }
    };
    want(
        which::which("qemu-system-x86_64").is_ok(),
        "qemu-system-x86",
    );
    want(is_static(Path::new("/bin/busybox")), "busybox-static");
    want(which::which("cpio").is_ok(), "cpio");
    want(find_program("depmod").is_ok(), "kmod");
    want(which::which("objcopy").is_ok(), "binutils");
    for (tool, package) in TOOLS {
        want(find_program(tool).is_ok(), package);
    }
    if missing.is_empty() {
        return Ok(());
    }
    setup::apt_install_lean(
        &missing,
        "the kernel matrix boots Debian's kernels in QEMU guests built from these packages",
    )
}

/// Whether `path` is a statically linked program (`ldd` says so).
fn is_static(path: &Path) -> bool {
    path.exists()
        && Command::new("ldd").arg(path).output().is_ok_and(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
        })
}

/// Test binaries the guests do not run, and why: what they need is not in the initramfs, and
/// what they test does not depend on the kernel's version beyond what every guest test covers.
const HOST_ONLY: &[(&str, &str)] = &[
    (
        "containers",
        "a container engine (podman, its storage, runc, conmon)",
    ),
    (
        "privilege",
        "util-linux's setpriv and an unprivileged user's view of /proc",
    ),
    (
        "top_terminal",
        "a pseudo-terminal (devpts), which the guests do not mount",
    ),
    ("prometheus", "a Prometheus server, installed on the host"),
    ("report_browser", "Debian's chromium, installed on the host"),
    (
        "deploy",
        "the repository's deploy/ files and systemd-analyze",
    ),
    (
        "bounded_memory",
        "hundreds of thousands of sockets and minutes of load, too much for an emulated guest",
    ),
];

/// The kernel test binaries (the integration tests), built by cargo; name -> path.
fn test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let out = cargo()
        .current_dir(root)
        .args([
            "test",
            "--quiet",
            "--package",
            "teardown-integration-tests",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the kernel test binaries failed");
    }
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe), Some(name)) = (
            is_test,
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) {
            tests.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("cargo built no kernel test binaries");
    }
    for (name, why) in HOST_ONLY {
        if tests.remove(*name).is_some() {
            println!("matrix: {name} runs on the host only (it needs {why})");
        }
    }
    Ok(tests)
}

/// What every guest runs.
struct Payload {
    teardown: PathBuf,
    tests: BTreeMap<String, PathBuf>,
    args: String,
}

/// The kernel's image and modules, extracted from its package (downloaded once).
struct KernelFiles {
    version: String,
    vmlinuz: PathBuf,
    /// `lib/modules/VERSION` of the extracted package, with depmod's indexes.
    modules: PathBuf,
}

/// The image package a metapackage depends on today.
fn image_package(metapackage: &str) -> Result<String> {
    let ask = || sh::output_of("apt-cache", &["depends", "--no-recommends", metapackage]);
    // A fresh machine may have no package lists yet.
    let deps = match ask() {
        Some(d) => d,
        None => {
            sh::run(Command::new("apt-get").args(["update", "-q"]))
                .context("apt-get update failed")?;
            ask().with_context(|| format!("apt knows no package {metapackage}"))?
        }
    };
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_owned)
        .with_context(|| format!("{metapackage} depends on no kernel image"))
}

fn fetch_kernel(kernel: &Kernel, work: &Path) -> Result<KernelFiles> {
    let package = image_package(kernel.metapackage)?;
    let dir = work.join(&package);
    let extracted = dir.join("extracted");
    if !extracted.join("boot").is_dir() {
        fs::create_dir_all(&dir)?;
        println!("matrix: {}: downloading {package}", kernel.label);
        sh::run(
            Command::new("apt-get")
                .current_dir(&dir)
                .args(["download", "-q", &package]),
        )
        .with_context(|| format!("cannot download {package}"))?;
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
        let partial = dir.join("extracting");
        let _ = fs::remove_dir_all(&partial);
        sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &extracted)?;
        fs::remove_file(&deb)?;
    }
    let version = only_entry(&extracted.join("lib/modules"))?;
    let vmlinuz = extracted.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    let modules = extracted.join("lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        // The package leaves the indexes to its post-install script.
        sh::run(
            Command::new(find_program("depmod")?)
                .arg("-b")
                .arg(&extracted)
                .arg(&version),
        )?;
    }
    Ok(KernelFiles {
        version,
        vmlinuz,
        modules,
    })
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => bail!(
            "{} has {n} entries, expected one kernel version",
            dir.display()
        ),
    }
}

/// Builds the guest for `kernel`, boots it, and returns what went wrong (nothing: it passed).
fn run_guest(kernel: &Kernel, work: &Path, payload: &Payload) -> Result<Vec<String>> {
    let files = fetch_kernel(kernel, work)?;
    let guest = work.join(format!("guest-{}", kernel.label));
    let _ = fs::remove_dir_all(&guest);
    let root = guest.join("root");
    build_root(&root, &files, payload)?;
    let initrd = guest.join("initrd.cpio");
    pack(&root, &initrd)?;
    let mut attempt = 1;
    // What earlier boots finished before their kernel panicked.
    let mut finished = Report::default();
    let report = loop {
        let log_path = guest.join(format!("console-{attempt}.log"));
        println!(
            "matrix: {}: booting {} (console in {})",
            kernel.label,
            files.version,
            log_path.display()
        );
        let skip = finished.binaries.len();
        let mut report = boot(kernel.label, &files.vmlinuz, &initrd, &log_path, skip)?;
        let retry = report.died_before_init() || report.died_of_stray_int3();
        if !retry || attempt == BOOT_ATTEMPTS {
            report.follows(finished);
            break report;
        }
        if report.died_before_init() {
            println!(
                "matrix: {}: the kernel panicked before any test ran (see {}); booting it again",
                kernel.label,
                log_path.display()
            );
        } else {
            println!(
                "matrix: {}: the kernel panicked on a stray int3 of its live code patching (an \
                 emulated guest's; see {}); booting it again, resuming after the {} steps that \
                 finished",
                kernel.label,
                log_path.display(),
                skip + report.binaries.len()
            );
        }
        finished.binaries.append(&mut report.binaries);
        finished.not_run.append(&mut report.not_run);
        attempt += 1;
    };
    let expected: BTreeSet<String> = payload
        .tests
        .keys()
        .cloned()
        .chain(GUEST_CHECKS.iter().map(|c| (*c).to_owned()))
        .collect();
    let mut problems = report.problems(&expected);
    if report.kernel.as_deref() != Some(files.version.as_str()) {
        problems.push(format!(
            "the guest ran kernel {:?}, not {}",
            report.kernel, files.version
        ));
    }
    Ok(problems)
}

/// The guest's root file system.
fn build_root(root: &Path, kernel: &KernelFiles, payload: &Payload) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "tests",
        "var",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying busybox")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;

    let mut programs: Vec<PathBuf> = Vec::new();
    for (tool, _) in TOOLS {
        let src = find_program(tool)?;
        let dst = root.join("usr/bin").join(tool);
        fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        programs.push(src);
    }
    let kmod = find_program("kmod")?;
    fs::copy(&kmod, root.join("usr/bin/kmod"))?;
    programs.push(kmod);
    for link in ["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"] {
        std::os::unix::fs::symlink("/usr/bin/kmod", root.join("sbin").join(link))?;
    }
    fs::copy(&payload.teardown, root.join("usr/bin/teardown"))
        .with_context(|| format!("copying {}", payload.teardown.display()))?;
    programs.push(payload.teardown.clone());
    for (name, exe) in &payload.tests {
        // Without debug information: the guest's memory holds the whole initramfs.
        let dst = root.join("tests").join(name);
        sh::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(exe)
                .arg(&dst),
        )?;
        programs.push(exe.clone());
    }
    for lib in libraries(&programs)? {
        let dst = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
    }
    copy_modules(root, kernel)?;
    fs::write(root.join("tests.args"), &payload.args)?;
    let init = root.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// The shared libraries `programs` load (as `ldd` resolves them), the dynamic loader included.
fn libraries(programs: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for p in programs {
        let out = Command::new("ldd")
            .arg(p)
            .output()
            .context("cannot run ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader's
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|w| w.starts_with('/')),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

/// The modules of [`MODULE_DIRS`] and their dependencies, with fresh indexes.
fn copy_modules(root: &Path, kernel: &KernelFiles) -> Result<()> {
    let dep = fs::read_to_string(kernel.modules.join("modules.dep"))?;
    let deps: BTreeMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let mut wanted: Vec<&str> = deps
        .keys()
        .copied()
        .filter(|m| MODULE_DIRS.iter().any(|d| m.starts_with(d)))
        .collect();
    let mut chosen = BTreeSet::new();
    while let Some(m) = wanted.pop() {
        if chosen.insert(m) {
            wanted.extend(deps.get(m).into_iter().flatten().copied());
        }
    }
    let dst = root.join("lib/modules").join(&kernel.version);
    for m in &chosen {
        let to = dst.join(m);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(kernel.modules.join(m), &to).with_context(|| format!("copying module {m}"))?;
    }
    for index in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let from = kernel.modules.join(index);
        if from.exists() {
            fs::copy(&from, dst.join(index))?;
        }
    }
    sh::run(
        Command::new(find_program("depmod")?)
            .arg("-b")
            .arg(root)
            .arg(&kernel.version),
    )
}

/// An uncompressed newc archive of `root` (the guest unpacks it faster than a compressed one).
fn pack(root: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run find")?;
    let list = find.stdout.take().context("find has no stdout")?;
    let status = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(root)
        .stdin(list)
        .stdout(file)
        .status()
        .context("cannot run cpio")?;
    let found = find.wait()?;
    if !status.success() || !found.success() {
        bail!(
            "packing {} failed (find {found}, cpio {status})",
            root.display()
        );
    }
    Ok(())
}

/// KVM where the CPU offers virtualisation to this host, else software emulation. `/dev/kvm`
/// alone is not enough: where the CPU lacks it, KVM starts and then fails on the first
/// instruction it cannot emulate.
fn accelerator() -> &'static str {
    let cpu_has_it = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    if cpu_has_it && Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

/// Boots the guest and reads its console until it powers off, or [`GUEST_LIMIT`] passes.
/// Boots the guest once; its init skips the first `skip` steps (an earlier boot finished them).
fn boot(
    label: &str,
    vmlinuz: &Path,
    initrd: &Path,
    log_path: &Path,
    skip: usize,
) -> Result<Report> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        accelerator(),
        "-cpu",
        "max",
        "-m",
        "2048",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 teardown.skip={skip}"
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let stderr = child.stderr.take().context("qemu has no stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(log_path)?;
    let mut report = Report::default();
    let deadline = Instant::now() + GUEST_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                // The console writes CR LF, and the firmware terminal escapes: the log keeps
                // them, the output shows the text.
                let line = line.trim_end_matches('\r');
                writeln!(log, "{line}")?;
                let plain: String = line.chars().filter(|c| !c.is_control()).collect();
                println!("[{label}] {plain}");
                report.read(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not power off within {} min (console in {})",
                    GUEST_LIMIT.as_secs() / 60,
                    log_path.display()
                );
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && report.failed.is_none() && !report.panicked {
        bail!(
            "qemu ended with {status} (console in {})",
            log_path.display()
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_report_names_what_failed_and_what_did_not_run() {
        let mut r = Report::default();
        for line in [
            "\x1bc\x1b[?7l\x1b[2JTEARDOWN-MATRIX: kernel 6.1.0-57-cloud-amd64\r",
            "test ipv4::x ... ok",
            "TEARDOWN-MATRIX: begin lifecycle",
            "TEARDOWN-MATRIX: end lifecycle rc=0",
            "TEARDOWN-MATRIX: end lab rc=101",
            "TEARDOWN-MATRIX: not-run btf kernel_btf\tnot root",
            "TEARDOWN-MATRIX: done failed=1",
        ] {
            r.read(line);
        }
        assert_eq!(r.kernel.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(r.failed, Some(1));
        let expected: BTreeSet<String> = ["lifecycle", "lab", "stop"].map(String::from).into();
        assert_eq!(
            r.problems(&expected),
            [
                "lab failed (exit status 101)",
                "stop did not run",
                "could not run: btf kernel_btf\tnot root",
            ]
        );
    }

    #[test]
    fn only_a_panic_before_init_is_a_failed_boot() {
        let panic = "[    4.115518] Kernel panic - not syncing: Fatal exception in interrupt";
        let mut boot = Report::default();
        boot.read("[    4.110045] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI");
        boot.read(panic);
        assert!(boot.died_before_init());

        let mut late = Report::default();
        late.read("TEARDOWN-MATRIX: kernel 6.12.117+deb12-cloud-amd64");
        late.read(panic);
        assert!(!late.died_before_init());
        assert!(!Report::default().died_before_init());
        // A panic mid-run is retried only when it is a stray int3 of the kernel's patching.
        assert!(!late.died_of_stray_int3());
        let mut stray = Report::default();
        stray.read("TEARDOWN-MATRIX: kernel 6.12.117+deb12-cloud-amd64");
        stray.read("[  170.251534] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI");
        stray.read(panic);
        assert!(stray.died_of_stray_int3());
        stray.read("TEARDOWN-MATRIX: done failed=0");
        assert!(
            !stray.died_of_stray_int3(),
            "a guest that finished is not retried"
        );
    }

    #[test]
    fn a_resumed_guest_reports_every_step_once() {
        let mut first = Report::default();
        for line in [
            "TEARDOWN-MATRIX: kernel 6.12.117+deb12-cloud-amd64",
            "TEARDOWN-MATRIX: end sock_diag_modprobe rc=0",
            "TEARDOWN-MATRIX: not-run btf kernel_btf\tnot root",
            "TEARDOWN-MATRIX: end btf rc=0",
            "TEARDOWN-MATRIX: begin lab",
            "[  170.251534] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "Kernel panic - not syncing: Fatal exception in interrupt",
        ] {
            first.read(line);
        }
        assert!(first.died_of_stray_int3());
        let mut second = Report::default();
        for line in [
            "TEARDOWN-MATRIX: kernel 6.12.117+deb12-cloud-amd64",
            "TEARDOWN-MATRIX: begin lab",
            "TEARDOWN-MATRIX: end lab rc=0",
            "TEARDOWN-MATRIX: end stop rc=101",
            "TEARDOWN-MATRIX: done failed=1",
        ] {
            second.read(line);
        }
        second.follows(first);
        let expected: BTreeSet<String> = ["sock_diag_modprobe", "btf", "lab", "stop"]
            .map(String::from)
            .into();
        assert_eq!(
            second.problems(&expected),
            [
                "stop failed (exit status 101)",
                "could not run: btf kernel_btf\tnot root",
            ]
        );
    }

    #[test]
    fn a_guest_that_never_finished_is_a_failure() {
        let mut r = Report::default();
        r.read("TEARDOWN-MATRIX: end lifecycle rc=0");
        let expected: BTreeSet<String> = ["lifecycle".to_owned()].into();
        assert_eq!(r.problems(&expected).len(), 1);
    }
}
