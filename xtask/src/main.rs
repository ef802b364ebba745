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
    /// Build the eBPF object (mptcp-ebpf) for bpfel-unknown-none.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf { release } => {
            let obj = ebpf_build::build(&workspace_root(), release)?;
            println!("{}", obj.display());
        }
    }
    Ok(())
}
