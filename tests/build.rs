//! Builds the C helpers of the upgrade tests: the static Go-like client
//! (tests/c/go-like-client.c) that runs under `mptcp-trace run`, and the dynamically linked
//! socket()+close() benchmark (tests/c/socket-bench.c). The tests embed them (`GO_LIKE_CLIENT`,
//! `SOCKET_BENCH`) and write them out where they run (also inside the VM guests).

use std::{env, path::PathBuf, process::Command};

fn main() {
    build("go-like-client", true, "GO_LIKE_CLIENT");
    build("socket-bench", false, "SOCKET_BENCH");
}

/// Compiles c/NAME.c into OUT_DIR and names the executable in the environment variable `var`.
fn build(name: &str, static_: bool, var: &str) {
    let src = format!("c/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join(name);
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cmd = Command::new(&cc);
    if static_ {
        cmd.arg("-static");
    }
    let st = cmd
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc and libc6-dev): {e}"));
    assert!(st.success(), "{cc} {src} failed");
    println!("cargo:rustc-env={var}={}", out.display());
}
