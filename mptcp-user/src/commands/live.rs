//! `mptcp-trace live`: the full-screen view (see `crate::live`).

use anyhow::{bail, Result};

use crate::{
    cli::LiveArgs,
    live::{self, Collector},
};

pub async fn run(args: LiveArgs) -> Result<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("the live view needs a terminal on stdout; use `mptcp-trace events` in pipes");
    }
    let collector = Collector::load(&args.filters)?;
    let banner = (!collector.degraded().is_empty())
        .then(|| format!("this kernel lacks: {}", collector.degraded().join(", ")));
    live::run(
        collector,
        |_| true,
        live::Options {
            banner,
            duration: args.duration.map(std::time::Duration::from_secs),
        },
    )
    .await?;
    Ok(())
}
