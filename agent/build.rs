//! Embeds the kernel object built by `cargo xtask build` (see xtask/src/ebpf.rs).
use std::{env, path::PathBuf};

fn main() {
    let obj = env::var_os("CLEW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/clew")
        });
    println!("cargo:rerun-if-env-changed=CLEW_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.exists() {
        panic!(
            "the eBPF object {} is missing: build through `cargo xtask build` (or `cargo xtask test`), \
             which compiles ebpf/ with the nightly toolchain first",
            obj.display()
        );
    }
    println!(
        "cargo:rustc-env=CLEW_EBPF_OBJECT={}",
        obj.canonicalize().unwrap().display()
    );
}
