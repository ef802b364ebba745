//! `mptcp-trace events`: one line (or NDJSON object) per event until Ctrl-C, SIGTERM, SIGHUP,
//! `--duration` or a closed pipe; then the loss summary. A sink of the one pipeline.

use std::{io, time::Duration};

use anyhow::Result;

use crate::{
    cli::{BadValue, EventsArgs},
    output::{self, Printer, ReadyFile},
    select::Selector,
    sys::signals::Stop,
    trace::Pipeline,
};

pub async fn run(args: EventsArgs) -> Result<()> {
    // Checked before anything is loaded: a bad value leaves nothing behind.
    let stats = args
        .stats_interval
        .as_deref()
        .map(|v| crate::trace::stats::parse_interval("--stats-interval", v))
        .transpose()
        .map_err(BadValue)?;
    let sel = Selector::for_tracing(&args.select)?;
    let ready = ReadyFile::from_arg(args.ready_file.as_deref())?;
    let mut stop = Stop::install()?;
    let mut pipe = Pipeline::start(&sel)?;
    if let Some(period) = stats {
        pipe.stats_every(period);
    }
    if let Some(r) = &ready {
        r.signal()?;
    }
    let mut out = Printer::new(io::stdout(), args.json);
    let mut open = out.header()?;
    if open {
        let duration = Duration::from_secs(args.duration.unwrap_or(u64::MAX / 4));
        let until = async {
            tokio::select! {
                _ = stop.recv() => {}
                _ = tokio::time::sleep(duration) => {}
            }
        };
        open = output::stream(&mut pipe, &mut out, until, |_| {}).await? == output::End::Stopped;
    }
    let (rest, totals) = pipe.finish();
    if open {
        output::finish(&mut out, &rest, |_| {})?;
    }
    eprintln!(
        "mptcp-trace: {} events shown, {}",
        out.printed,
        totals.describe()
    );
    Ok(())
}
