//! `mptcp-trace upgrade`: attach the TCP→MPTCP upgrade for a scope until Ctrl-C/SIGTERM (then
//! print the counters), or pin it (`--pin`); `--status` and `--off` for a pinned one.

use std::{ffi::OsString, fs};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::{ScopeArgs, UpgradeArgs},
    commands::side_tracer::{Output, SideTracer},
    upgrade::{self, policy, policy::PolicyExt, Upgrade},
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
    let policy = policy::from_args(&args.scope, args.count_only)?;
    let up = Upgrade::attach(policy)?;
    let what = if args.count_only {
        "counting (count only)"
    } else {
        "upgrading"
    };
    if args.pin {
        let dir = up.pin()?;
        println!(
            "upgrade: {what} TCP sockets of {}; pinned in {} (remove with `mptcp-trace upgrade --off`)",
            policy.describe(),
            dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "upgrade: {what} TCP sockets of {} until Ctrl-C",
        policy.describe()
    );
    let tracer = if args.events {
        Some(SideTracer::start(
            &trace_filters(&args.scope),
            args.json,
            Output::Stdout,
        )?)
    } else {
        None
    };
    if let Some(path) = &args.ready_file {
        fs::write(path, b"").with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let counts = up.counts();
    if let Some(t) = tracer {
        t.stop(std::time::Duration::ZERO);
    }
    drop(up);
    println!("upgrade: stopped; {counts}");
    Ok(())
}

/// The tracer filters that select what the upgrade's scope selects, as far as they can: the
/// tracer has no uid filter and takes one command name.
fn trace_filters(scope: &ScopeArgs) -> Vec<OsString> {
    let mut f: Vec<OsString> = Vec::new();
    if let Some(c) = &scope.cgroup {
        f.extend(["--cgroup".into(), c.clone().into_os_string()]);
    }
    if let Some(p) = scope.pid {
        f.extend(["--pid".into(), p.to_string().into()]);
    }
    if let [comm] = scope.comm.as_slice() {
        f.extend(["--comm".into(), comm.into()]);
    }
    f
}

fn status() -> Result<()> {
    match upgrade::pinned_status()? {
        None => println!("upgrade: not pinned (nothing in {})", upgrade::PIN_DIR),
        Some(s) => {
            println!("upgrade: pinned in {}", s.dir.display());
            println!("scope: {}", s.policy.describe());
            println!("counters: {}", s.counts);
            match s.recursion_misses {
                Some(n) => println!("skipped by the kernel (recursion): {n}"),
                None => println!("skipped by the kernel (recursion): not reported by this kernel"),
            }
        }
    }
    Ok(())
}
