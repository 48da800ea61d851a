//! Finds the eBPF object built by `cargo xtask build-ebpf` so the `lb` binary
//! can embed it. A plain `cargo build` without it fails with a message that
//! says what to run instead.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = std::env::var_os("LB_EBPF_OBJECT").map_or_else(
        || {
            let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            let workspace = manifest_dir.parent().unwrap().to_path_buf();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from);
            target.join("ebpf/bpfel-unknown-none/release/lb-ebpf")
        },
        PathBuf::from,
    );
    if !object.is_file() {
        eprintln!(
            "error: the eBPF object {} is missing.\n\
             Build lb with `cargo xtask build` (it builds lb-ebpf for \
             bpfel-unknown-none first), or point LB_EBPF_OBJECT at a built object.",
            object.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=LB_EBPF_OBJECT={}", object.display());
}
