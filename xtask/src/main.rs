//! Development tasks: `cargo xtask <task>`. The README names the ones a person needs.

mod bench;
mod dist;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mptcp-trace development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (mptcp-ebpf) for bpfel-unknown-none and print its path.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Build everything and run the whole suite: fmt, clippy, unit tests, root integration
    /// tests on this kernel, and the VM kernel matrix.
    Test(test::TestArgs),
    /// Run the integration tests inside qemu guests on Debian's kernels (TCG, no KVM needed).
    ///
    /// Example: cargo xtask vm-test --kernel 6.12
    /// Example: cargo xtask vm-test -- vm_smoke
    VmTest(vm::VmTestArgs),
    /// Build the Debian package target/dist/mptcp-trace_<version>_amd64.deb: the release
    /// binary, man pages, bash/zsh/fish completions and the systemd units; prints its path.
    ///
    /// Example: cargo xtask dist && sudo dpkg -i target/dist/mptcp-trace_*.deb
    Dist(dist::DistArgs),
    /// Measure what tracing costs the traffic it watches (root; never part of `test`):
    /// interleaved rounds of a churn generator with each arm attached; then what the upgrade
    /// costs one socket(), on the host and in the 6.12 guest; writes BENCHMARKS.md.
    ///
    /// Example: sudo cargo xtask bench --rate 1000
    ///
    /// Example: sudo cargo xtask bench --only upgrade --quick
    Bench(bench::BenchArgs),
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf { release } => {
            let obj = ebpf_build::build(&workspace_root(), release)?;
            println!("{}", obj.display());
        }
        Cmd::Test(args) => test::run(args)?,
        Cmd::VmTest(args) => vm::run(args)?,
        Cmd::Dist(args) => {
            dist::run(args)?;
        }
        Cmd::Bench(args) => bench::run(args)?,
    }
    Ok(())
}
