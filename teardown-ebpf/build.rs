use which::which;

/// Rebuild the eBPF object when bpf-linker changes (aya's template does the same): cargo does
/// not know that the linker is part of the build.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
