//! `mptcp-trace live`: the full-screen view (see `crate::live`), a sink of the pipeline.

use anyhow::{bail, Result};

use crate::{
    cli::{BadValue, LiveArgs, SelectArgs},
    live,
    select::Selector,
    trace::Pipeline,
};

pub async fn run(args: LiveArgs) -> Result<()> {
    if let Some(path) = &args.replay {
        return replay(path, &args).await;
    }
    if args.speed.is_some() {
        return Err(BadValue("--speed applies to --replay only".into()).into());
    }
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

/// `live --replay`: the capture is read and checked before the terminal is touched.
async fn replay(path: &std::path::Path, args: &LiveArgs) -> Result<()> {
    if args.select != SelectArgs::default() {
        return Err(BadValue(
            "selectors do not apply to --replay (the capture holds what was selected when it was made)"
                .into(),
        )
        .into());
    }
    let speed = args
        .speed
        .as_deref()
        .map(live::replay::parse_speed)
        .transpose()?
        .unwrap_or(1.0);
    let events = live::replay::load(path)?;
    if let Some(why) = live::no_terminal() {
        bail!("the live view needs a terminal ({why})");
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    live::replay::run(
        events,
        &name,
        speed,
        args.duration.map(std::time::Duration::from_secs),
    )
    .await?;
    Ok(())
}
