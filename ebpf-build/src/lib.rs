//! Finds a toolchain that can compile Rust for `bpfel-unknown-none` and builds `mptcp-ebpf`
//! with it. Used by `cargo xtask build-ebpf` and by `mptcp-user/build.rs`, so there is one
//! copy of this logic.
//!
//! Two toolchains work (ENVIRONMENT.md): a rustup nightly with `rust-src`, or Debian's
//! `rustc-web` + `rust-web-src` driven with `RUSTC_BOOTSTRAP=1`. Either needs `bpf-linker`.

use std::{
    env, fmt,
    path::{Path, PathBuf},
    process::Command,
};

pub const TARGET: &str = "bpfel-unknown-none";
/// Name of the `[[bin]]` in mptcp-ebpf: the object file's name.
pub const OBJECT_NAME: &str = "mptcp-trace";
/// Name of the second `[[bin]]`: the TCP→MPTCP upgrade, loaded with raw bpf(2) because aya
/// cannot load fmod_ret programs.
pub const UPGRADE_OBJECT_NAME: &str = "mptcp-upgrade";

/// A compiler able to build `core` for the BPF target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// `cargo +nightly` through rustup, with the `rust-src` component.
    RustupNightly,
    /// Debian's `rustc-web` (`/usr/bin/rustc`, `/usr/bin/cargo`) with `rust-web-src`.
    Debian { cargo: PathBuf, rustc: PathBuf },
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Toolchain::RustupNightly => write!(f, "rustup nightly with rust-src"),
            Toolchain::Debian { rustc, .. } => {
                write!(
                    f,
                    "Debian rustc-web ({}) with RUSTC_BOOTSTRAP=1",
                    rustc.display()
                )
            }
        }
    }
}

/// What is missing, and the command that installs it.
#[derive(Debug)]
pub struct Missing {
    pub what: &'static str,
    pub install: &'static str,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "missing {}; install it with: {}",
            self.what, self.install
        )
    }
}

impl std::error::Error for Missing {}

const SETUP_HINT: &str = "sudo ./scripts/setup.sh";

fn run_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rustup_nightly_with_src() -> bool {
    run_ok(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")))
}

/// Picks the first toolchain that is complete on this machine.
pub fn find_toolchain() -> Result<Toolchain, Missing> {
    if rustup_nightly_with_src() {
        return Ok(Toolchain::RustupNightly);
    }
    let rustc = PathBuf::from("/usr/bin/rustc");
    let cargo = PathBuf::from("/usr/bin/cargo");
    if !rustc.exists() || !cargo.exists() {
        return Err(Missing {
            what: "a compiler for the BPF target (Debian's rustc-web, or a rustup nightly with rust-src)",
            install: "apt-get install rustc-web cargo-web rust-web-src",
        });
    }
    let sysroot = run_ok(Command::new(&rustc).args(["--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|| PathBuf::from("/usr"));
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Err(Missing {
            what: "the Rust library sources for -Z build-std (rust-web-src)",
            install: "apt-get install rust-web-src",
        });
    }
    Ok(Toolchain::Debian { cargo, rustc })
}

/// `bpf-linker` on PATH or in cargo's bin directory.
pub fn find_bpf_linker() -> Result<PathBuf, Missing> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
        .ok_or(Missing {
            what: "bpf-linker",
            install: "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --no-default-features --features llvm-22",
        })
}

/// Where the object lands for a given workspace root and profile.
pub fn object_path(workspace: &Path, release: bool) -> PathBuf {
    target_dir(workspace)
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join(OBJECT_NAME)
}

/// Where the upgrade object lands (built by the same [`build`]).
pub fn upgrade_object_path(workspace: &Path, release: bool) -> PathBuf {
    object_path(workspace, release).with_file_name(UPGRADE_OBJECT_NAME)
}

/// A target directory of its own: the outer cargo holds a lock on `target/` while a build
/// script runs, so the nested build must not share it.
fn target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("ebpf")
}

#[derive(Debug)]
pub enum BuildError {
    Missing(Missing),
    Failed(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Missing(m) => write!(f, "{m} (or run {SETUP_HINT})"),
            BuildError::Failed(s) => write!(f, "building the eBPF object failed: {s}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<Missing> for BuildError {
    fn from(m: Missing) -> Self {
        BuildError::Missing(m)
    }
}

/// `cargo <subcommand> --package mptcp-ebpf --target bpfel-unknown-none -Z build-std=core` with
/// the eBPF toolchain, the linker on PATH and nothing inherited from an outer cargo.
fn ebpf_cargo(
    workspace: &Path,
    subcommand: &str,
    release: bool,
) -> Result<(Command, Toolchain), BuildError> {
    let toolchain = find_toolchain()?;
    let linker = find_bpf_linker()?;
    let mut cmd = match &toolchain {
        Toolchain::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        Toolchain::Debian { cargo, .. } => Command::new(cargo),
    };
    // Variables set by an outer cargo (when called from a build script) would point the nested
    // build at the host compiler, its flags and its jobserver.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOC"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let linker_dir = linker.parent().unwrap_or(Path::new("/"));
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Toolchain::Debian { rustc, .. } = &toolchain {
        cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
        // Debian's cargo-clippy/clippy-driver match Debian's rustc; rustup's proxies (in the
        // same directory as bpf-linker, usually) would not.
        paths.push("/usr/bin".into());
    }
    paths.push(linker_dir.to_path_buf());
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env(
        "PATH",
        env::join_paths(paths).map_err(|e| BuildError::Failed(e.to_string()))?,
    )
    .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
    .current_dir(workspace)
    .args([
        subcommand,
        "--package",
        "mptcp-ebpf",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(target_dir(workspace));
    if release {
        cmd.arg("--release");
    }
    Ok((cmd, toolchain))
}

/// Lints the eBPF crate for its own target (`cargo clippy -- -D warnings`).
pub fn lint(workspace: &Path) -> Result<(), BuildError> {
    let (mut cmd, toolchain) = ebpf_cargo(workspace, "clippy", true)?;
    cmd.args(["--", "-D", "warnings"]);
    let status = cmd
        .status()
        .map_err(|e| BuildError::Failed(format!("cannot run {toolchain} clippy: {e}")))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "clippy on the eBPF crate ({toolchain}) exited with {status}"
        )));
    }
    Ok(())
}

/// Builds `mptcp-ebpf` and returns the object's path.
pub fn build(workspace: &Path, release: bool) -> Result<PathBuf, BuildError> {
    let (mut cmd, toolchain) = ebpf_cargo(workspace, "build", release)?;
    let status = cmd
        .status()
        .map_err(|e| BuildError::Failed(format!("cannot run {toolchain}: {e}")))?;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "{toolchain} exited with {status}"
        )));
    }
    let obj = object_path(workspace, release);
    for produced in [&obj, &upgrade_object_path(workspace, release)] {
        if !produced.is_file() {
            return Err(BuildError::Failed(format!(
                "{} was not produced",
                produced.display()
            )));
        }
    }
    Ok(obj)
}
