//! `mptcp-trace`: parse, dispatch, print the error.

use std::process::ExitCode;

use clap::Parser;

use mptcp_user::{
    cli::{BadValue, Cli, Command, EventsArgs, LiveArgs},
    commands,
    doctor::UnknownNetns,
    loader::LoadError,
    output::ReadyFileError,
    select::SelectError,
    trace::TraceError,
    upgrade::UpgradeError,
};

/// `run`'s own failures (usage errors included), like env(1) and timeout(1).
const RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    // The seccomp supervisor `run` starts is this binary again.
    if let Some(code) = mptcp_user::upgrade::supervisor::main_if_requested() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let usage_error = e.use_stderr();
            return if usage_error && is_run() {
                ExitCode::from(RUN_FAILED)
            } else {
                ExitCode::from(e.exit_code() as u8)
            };
        }
    };
    if let Err(e) = cli.check_selectors() {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let is_run = matches!(cli.command, Some(Command::Run(_)));
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        // `run` exits with its command's status.
        Some(Command::Run(args)) => commands::run::run(args),
        // `doctor` exits 1 when a check fails.
        Some(Command::Doctor(args)) => commands::doctor::run(args),
        // `why` exits 1 when the token matches nothing, 2 for bad input or no tracer.
        Some(Command::Why(args)) => commands::why::run(args),
        Some(Command::Upgrade(args)) => {
            block_on(commands::upgrade::run(args)).map(|()| ExitCode::SUCCESS)
        }
        other => dispatch(other, cli.select).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`mptcp-trace schema | head`) is the reader's choice, not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mptcp-trace: {}", one_line(&e));
            if is_run {
                return ExitCode::from(RUN_FAILED);
            }
            // Bad input and refusals are exit code 2, like clap's own usage errors.
            let refused = e.downcast_ref::<SelectError>().is_some()
                || e.downcast_ref::<BadValue>().is_some()
                || e.downcast_ref::<UnknownNetns>().is_some()
                || e.downcast_ref::<ReadyFileError>().is_some()
                || matches!(e.downcast_ref::<TraceError>(), Some(TraceError::Load(l)) if l.refused())
                || e.downcast_ref::<LoadError>()
                    .is_some_and(LoadError::refused);
            if refused {
                ExitCode::from(2)
            } else if let Some(u) = e.downcast_ref::<UpgradeError>() {
                ExitCode::from(u.exit_code())
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but a cause whose text an outer message
/// already quotes (`"cannot pin …: {source}"` with `#[source]`) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Whether the command line names the `run` verb (its first word that is not an option).
fn is_run() -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "run")
}

fn dispatch(command: Option<Command>, select: mptcp_user::cli::SelectArgs) -> anyhow::Result<()> {
    match command {
        Some(Command::Run(_) | Command::Upgrade(_) | Command::Doctor(_) | Command::Why(_)) => {
            unreachable!("handled in main")
        }
        Some(Command::Schema) => commands::schema::run(),
        Some(Command::Report(args)) => commands::report::run(args),
        Some(Command::Stats(args)) => block_on(commands::stats::run(args)),
        Some(Command::Exporter(args)) => block_on(commands::exporter::run(args)),
        Some(Command::Events(args)) => block_on(commands::events::run(args)),
        Some(Command::Live(args)) => block_on(commands::live::run(args)),
        Some(Command::Demo(args)) => block_on(commands::demo::run(args)),
        // A terminal gets the live view; a pipe or file gets event lines.
        None if mptcp_user::live::no_terminal().is_none() => {
            block_on(commands::live::run(LiveArgs {
                select,
                ..LiveArgs::default()
            }))
        }
        None => block_on(commands::events::run(EventsArgs {
            select,
            ..EventsArgs::default()
        })),
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(1);
        let quoted = anyhow::Error::new(std::io::Error::from_raw_os_error(1))
            .context(format!("cannot remove /x: {io}"));
        assert_eq!(
            one_line(&quoted),
            format!("cannot remove /x: {io}"),
            "printed once"
        );
        let chained =
            anyhow::Error::new(std::io::Error::from_raw_os_error(2)).context("cannot open /y");
        assert_eq!(
            one_line(&chained),
            format!("cannot open /y: {}", std::io::Error::from_raw_os_error(2))
        );
    }
}
