//! `mptcp-trace doctor`: runs the checks of [`crate::doctor`] and prints them.

use std::{io::Write, process::ExitCode};

use crate::{cli::DoctorArgs, doctor};

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let namespaces = if args.netns.is_empty() {
        doctor::all_namespaces()
    } else {
        doctor::resolve_namespaces(&args.netns)?
    };
    let report = doctor::run(&namespaces);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.text())?;
    }
    out.flush()?;
    Ok(if report.summary.fail > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
