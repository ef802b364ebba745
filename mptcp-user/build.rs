//! Builds the eBPF objects through the same code as `cargo xtask build-ebpf` and tells the crate
//! where they are (`MPTCP_EBPF_OBJECT`, and `MPTCP_UPGRADE_OBJECT` for the TCP→MPTCP upgrade;
//! embedded with `include_bytes_aligned!`).

use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .expect("mptcp-user lives in the workspace")
        .to_path_buf();
    for dir in [
        "mptcp-ebpf/src",
        "mptcp-ebpf/Cargo.toml",
        "mptcp-ebpf/build.rs",
        "mptcp-common/src",
        "ebpf-build/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // The programs are always built optimised: unoptimised BPF code does not pass the verifier.
    match ebpf_build::build(&workspace, true) {
        Ok(obj) => {
            println!("cargo:rustc-env=MPTCP_EBPF_OBJECT={}", obj.display());
            // The TCP→MPTCP upgrade (src/upgrade/), built alongside.
            println!(
                "cargo:rustc-env=MPTCP_UPGRADE_OBJECT={}",
                ebpf_build::upgrade_object_path(&workspace, true).display()
            );
        }
        Err(e) => {
            eprintln!("error: {e}; or build it with `cargo xtask build-ebpf --release`");
            std::process::exit(1);
        }
    }
}
