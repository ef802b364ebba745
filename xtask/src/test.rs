//! `cargo xtask test`: the README's test command.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip cargo fmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the VM kernel matrix (`cargo xtask vm-test`).
    #[arg(long)]
    no_vm: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {name}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run(args: TestArgs) -> Result<()> {
    let obj = ebpf_build::build(&workspace_root(), true)?;
    eprintln!("==> eBPF object: {}", obj.display());
    if !args.no_lint {
        step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        eprintln!("==> cargo clippy (eBPF crate, bpfel-unknown-none)");
        ebpf_build::lint(&workspace_root())?;
        step(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "mptcp-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step(
        "cargo build",
        cargo().args(["build", "--workspace", "--exclude", "mptcp-ebpf", "--bins"]),
    )?;
    // tests/tests/dist.rs installs the package this builds (and fails without it).
    eprintln!("==> cargo xtask dist");
    crate::dist::run(crate::dist::DistArgs::default())?;
    // The root-only integration tests are not a default member (plain `cargo test` as a normal
    // user runs the unit tests); here they run too.
    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", "mptcp-ebpf"]);
    if !args.cargo_test_args.is_empty() {
        test.arg("--").args(&args.cargo_test_args);
    }
    step("cargo test (unit and root integration tests)", &mut test)?;
    if !args.no_vm {
        eprintln!(
            "==> VM kernel matrix (cargo xtask vm-test --kernel {})",
            crate::vm::CI_KERNELS
        );
        crate::vm::run(crate::vm::VmTestArgs {
            kernel: crate::vm::CI_KERNELS.into(),
            ..Default::default()
        })?;
    }
    Ok(())
}
