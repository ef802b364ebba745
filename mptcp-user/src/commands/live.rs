//! `mptcp-trace live`: the full-screen view (see `crate::live`), a sink of the pipeline.

use anyhow::{bail, Result};

use crate::{cli::LiveArgs, live, select::Selector, trace::Pipeline};

pub async fn run(args: LiveArgs) -> Result<()> {
    if let Some(why) = live::no_terminal() {
        bail!("the live view needs a terminal ({why}); use `mptcp-trace events` in pipes");
    }
    let sel = Selector::for_tracing(&args.select)?;
    let pipe = Pipeline::start(&sel)?;
    let banner = (!pipe.degraded().is_empty())
        .then(|| format!("this kernel lacks: {}", pipe.degraded().join(", ")));
    let (_, pipe) = live::run(
        pipe,
        |_| {},
        live::Options {
            banner,
            duration: args.duration.map(std::time::Duration::from_secs),
        },
    )
    .await?;
    let (_, totals) = pipe.finish();
    if totals.lost.count > 0 {
        eprintln!("mptcp-trace: {}", totals.describe());
    }
    Ok(())
}
