//! Embeds the kernel objects built by `cargo xtask build` (see
//! xtask/src/ebpf.rs): the agent's programs, and next to them the minimal
//! programs `clew probe` loads (`clew-probe`).
use std::{env, path::PathBuf};

fn main() {
    let obj = env::var_os("CLEW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/clew")
        });
    println!("cargo:rerun-if-env-changed=CLEW_EBPF_OBJECT");
    let probe = obj.with_file_name("clew-probe");
    for (var, path) in [
        ("CLEW_EBPF_OBJECT", &obj),
        ("CLEW_EBPF_PROBE_OBJECT", &probe),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.exists() {
            panic!(
                "the eBPF object {} is missing: build through `cargo xtask build` (or `cargo xtask test`), \
                 which compiles ebpf/ with the nightly toolchain first",
                path.display()
            );
        }
        println!(
            "cargo:rustc-env={var}={}",
            path.canonicalize().unwrap().display()
        );
    }
}
