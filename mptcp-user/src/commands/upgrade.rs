//! `mptcp-trace upgrade`: attach the TCP→MPTCP upgrade for a scope until Ctrl-C/SIGTERM (then
//! print the counters), or pin it (`--pin`); `--status` and `--off` for a pinned one.

use std::io;

use anyhow::Result;

use crate::{
    cli::UpgradeArgs,
    output::{self, Printer, ReadyFile},
    select::{describe_scope, Selector},
    sys::signals::Stop,
    trace::{Pipeline, UpgradeFeed},
    upgrade::{self, Upgrade},
};

pub async fn run(args: UpgradeArgs) -> Result<()> {
    if args.status {
        return status();
    }
    if args.off {
        if upgrade::unpin()? {
            println!(
                "upgrade: removed the pinned upgrade from {}",
                upgrade::PIN_DIR
            );
        } else {
            println!("upgrade: nothing pinned in {}", upgrade::PIN_DIR);
        }
        return Ok(());
    }
    let sel = Selector::for_upgrade(&args.select, args.all)?;
    let ready = ReadyFile::from_arg(args.ready_file.as_deref())?;
    let mut stop = Stop::install()?;
    let mut policy = sel.policy(args.count_only);
    // The program reports each socket only when `--events` reads its ring (never pinned).
    policy.events = (args.events && !args.pin) as u32;
    if args.pin {
        // A planted or occupied pin directory is refused before anything is loaded.
        upgrade::check_pin_dir()?;
    }
    let mut up = Upgrade::attach(policy)?;
    let what = if args.count_only {
        "counting (count only)"
    } else {
        "upgrading"
    };
    if args.pin {
        let dir = up.pin()?;
        println!(
            "upgrade: {what} TCP sockets of {}; pinned in {} (remove with `mptcp-trace upgrade --off`)",
            sel.describe(),
            dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "upgrade: {what} TCP sockets of {} until Ctrl-C",
        sel.describe()
    );
    // The tracer sees exactly the processes the upgrade selects: the same scope, in the kernel.
    let mut trace = if args.events {
        let mut pipe = Pipeline::start(&sel)?;
        if let Some(f) = up.event_feed() {
            pipe.attach_upgrades(UpgradeFeed::Bpf(Box::new(f)))
                .map_err(|e| anyhow::anyhow!("the upgrade's event ring: {e}"))?;
        }
        Some((pipe, Printer::new(io::stdout(), args.json)))
    } else {
        None
    };
    if let Some(r) = &ready {
        r.signal()?;
    }
    match &mut trace {
        Some((pipe, out)) => {
            if out.header()? {
                output::stream(
                    pipe,
                    out,
                    async {
                        stop.recv().await;
                    },
                    |_| {},
                )
                .await?;
            }
        }
        None => {
            stop.recv().await;
        }
    }
    let counts = up.counts();
    let up_skipped = up.recursion_misses();
    if let Some((pipe, mut out)) = trace {
        let (rest, totals) = pipe.finish();
        output::finish(&mut out, &rest, |_| {})?;
        eprintln!(
            "mptcp-trace: {} events shown, {}",
            out.printed,
            totals.describe()
        );
    }
    drop(up);
    // A run the kernel skipped is a socket() the upgrade never saw: it stayed TCP.
    let skipped = match up_skipped {
        Ok(Some(n)) => n.to_string(),
        Ok(None) => crate::upgrade::raw_bpf::MISSES_UNKNOWN.into(),
        Err(e) => format!("unknown ({e})"),
    };
    println!("upgrade: stopped; {counts}; skipped program runs {skipped}");
    Ok(())
}

fn status() -> Result<()> {
    match upgrade::pinned_status()? {
        None => println!("upgrade: not pinned (nothing in {})", upgrade::PIN_DIR),
        Some(s) => {
            println!("upgrade: pinned in {}", s.dir.display());
            let mut scope = describe_scope(&s.policy.scope, None);
            if s.policy.count_only != 0 {
                scope += " (count only)";
            }
            println!("scope: {scope}");
            println!("counters: {}", s.counts);
            match s.recursion_misses {
                Some(n) => println!("skipped by the kernel (recursion): {n}"),
                None => println!("skipped by the kernel (recursion): not reported by this kernel"),
            }
        }
    }
    Ok(())
}
