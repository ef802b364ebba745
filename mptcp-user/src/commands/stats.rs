//! `mptcp-trace stats`: counters since start, printed every interval (a table, or one JSON
//! object per line with --json) until Ctrl-C, SIGTERM, SIGHUP or `--duration`; a last
//! printout on the way out. A sink of the one pipeline.

use std::{io::Write, time::Duration};

use anyhow::Result;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::{
    cli::{BadValue, StatsArgs},
    fleet::{observe::Observer, pinned_upgrade, tally::Tally},
    output::ReadyFile,
    select::Selector,
    sys::signals::Stop,
    trace::Pipeline,
};

pub async fn run(args: StatsArgs) -> Result<()> {
    // Checked before anything is loaded: a bad value leaves nothing behind.
    let every = match args.interval.as_deref() {
        None => Duration::from_secs(1),
        Some(v) => crate::trace::stats::parse_interval("--interval", v).map_err(BadValue)?,
    };
    if args.top == 0 {
        return Err(BadValue("--top 0: show at least one namespace and command".into()).into());
    }
    let sel = Selector::for_tracing(&args.select)?;
    let ready = ReadyFile::from_arg(args.ready_file.as_deref())?;
    let mut stop = Stop::install()?;
    let mut pipe = Pipeline::start(&sel)?;
    if let Some(r) = &ready {
        r.signal()?;
    }
    let started = Instant::now();
    let clock = crate::decode::Clock::now();
    let mut observer = Observer::default();
    let mut tally = Tally::default();
    let mut seen = Vec::new();
    let mut tick = interval_at(started + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let until = tokio::time::sleep(Duration::from_secs(args.duration.unwrap_or(u64::MAX / 4)));
    tokio::pin!(until);
    let mut out = std::io::stdout().lock();
    let mut print = |tally: &Tally, pipe: &Pipeline| -> std::io::Result<()> {
        let now = crate::decode::monotonic_ns();
        let snap = tally.snapshot(
            clock.rfc3339(now),
            started.elapsed().as_secs_f64(),
            args.top,
            pipe.totals().lost,
            pinned_upgrade(),
        );
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&snap).expect("plain data"))?;
        } else {
            writeln!(out, "{}", snap.text())?;
        }
        out.flush()
    };
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = &mut until => break,
            _ = tick.tick() => print(&tally, &pipe)?,
            e = pipe.next() => {
                observer.observe(&*e?, &mut seen);
                for o in seen.drain(..) {
                    tally.add(&o);
                }
            }
        }
    }
    let (rest, totals) = pipe.finish();
    for e in &rest {
        observer.observe(e, &mut seen);
    }
    for o in seen.drain(..) {
        tally.add(&o);
    }
    // The last printout with the final loss (the pipeline is finished: its totals are given).
    let now = crate::decode::monotonic_ns();
    let snap = tally.snapshot(
        clock.rfc3339(now),
        started.elapsed().as_secs_f64(),
        args.top,
        totals.lost.clone(),
        pinned_upgrade(),
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&snap).expect("plain data"))?;
    } else {
        writeln!(out, "{}", snap.text())?;
    }
    eprintln!("mptcp-trace: {}", totals.describe());
    Ok(())
}
