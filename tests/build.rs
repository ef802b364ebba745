//! Builds the static Go-like client (tests/c/go-like-client.c) that the upgrade tests run under
//! `mptcp-trace run`; the tests embed it (`GO_LIKE_CLIENT`) and write it out where they run
//! (also inside the VM guests).

use std::{env, path::PathBuf, process::Command};

fn main() {
    let src = "c/go-like-client.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("go-like-client");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc and libc6-dev): {e}"));
    assert!(st.success(), "{cc} -static {src} failed");
    println!("cargo:rustc-env=GO_LIKE_CLIENT={}", out.display());
}
