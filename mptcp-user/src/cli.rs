//! Command line (clap derive). Each verb's runtime lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Trace every MPTCP connection and each of its subflows, live, from eBPF.
///
/// Example: sudo mptcp-trace events --json --port 4321
#[derive(Debug, Parser)]
#[command(name = "mptcp-trace", version, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr: -v debug (includes the kernel programs' log lines), -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Without a command: the live view on a terminal, event lines in a pipe, with these
    /// selectors.
    #[command(flatten)]
    pub select: SelectArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Selectors go after the command when there is one (`mptcp-trace
    /// events --port 80`), so selectors before a command are a usage error, not ignored.
    pub fn check_selectors(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory;
        if self.command.is_some() && self.select != SelectArgs::default() {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "selectors go after the command (e.g. `mptcp-trace events --port 80`)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream one line per event (or NDJSON with --json) until Ctrl-C.
    ///
    /// Example: sudo mptcp-trace events
    ///
    /// Example: sudo mptcp-trace events --json --netns mptcp-client | jq .
    Events(EventsArgs),
    /// Full-screen live view: one block per connection, one row per subflow with live
    /// throughput, RTT and retransmits (the default when stdout is a terminal).
    ///
    /// Example: sudo mptcp-trace live --port 4321
    Live(LiveArgs),
    /// Build the seed's two-path test bed in network namespaces, run an MPTCP transfer over it
    /// and show it live (or as NDJSON); everything it made is removed on exit.
    ///
    /// Example: sudo mptcp-trace demo
    ///
    /// Example: sudo mptcp-trace demo --json --duration 5 | jq -c 'select(.event=="subflow_established")'
    Demo(DemoArgs),
    /// Print the JSON schema of the NDJSON events (schema version 1).
    ///
    /// Example: mptcp-trace schema > mptcp-trace.schema.json
    Schema,
    /// Turn TCP sockets into MPTCP when they are created (Linux ≥ 6.6), for a scope of
    /// processes, until Ctrl-C (prints the counters then) or, with --pin, until `upgrade --off`.
    ///
    /// Example: sudo mptcp-trace upgrade --cgroup system.slice/nginx.service
    ///
    /// Example: sudo mptcp-trace upgrade --comm curl --comm wget --pin
    ///
    /// Example: sudo mptcp-trace upgrade --all --count-only
    ///
    /// Example: sudo mptcp-trace upgrade --status
    Upgrade(UpgradeArgs),
    /// Run CMD in a fresh cgroup with the TCP→MPTCP upgrade scoped to it (an `mptcpize run`
    /// that also covers static and Go binaries); exits with CMD's status.
    ///
    /// Exit status: 125 when mptcp-trace itself fails (bad options included), 126 when CMD
    /// is found but cannot be executed, 127 when it is not found, otherwise CMD's own status
    /// (128+N when a signal N killed it).
    ///
    /// Example: sudo mptcp-trace run -- curl http://10.0.0.1:8080/
    ///
    /// Example: sudo mptcp-trace run --method seccomp -- busybox nc 10.0.0.1 4321
    Run(RunArgs),
    /// Check the host and each network namespace for what MPTCP and mptcp-trace need: one
    /// line per check (✓ ok, ⚠ warning, ✗ failure), each failure with the command that fixes
    /// it. Exit status: 0 without ✗, 1 with at least one ✗, 2 for bad input.
    ///
    /// Example: sudo mptcp-trace doctor
    ///
    /// Example: sudo mptcp-trace doctor --netns mptcp-client --netns mptcp-server --json | jq .
    Doctor(DoctorArgs),
    /// Why a connection has fewer subflows than configured, why a join failed, why it fell
    /// back: per connection, its subflows and every `conn_diagnosis` (cause, detail,
    /// evidence). Reads the recent connections of the tracers running now (`events`, `live`,
    /// …), or an NDJSON capture of `events --json` with --from. Exit status: 0, 1 when TOKEN
    /// matches no connection, 2 for bad input or when no tracer runs.
    ///
    /// Example: sudo mptcp-trace why
    ///
    /// Example: mptcp-trace why 5c0089f8 --from capture.ndjson
    Why(WhyArgs),
    /// Write one self-contained HTML page from an NDJSON capture: a summary of every
    /// connection, then per connection its subflows as lanes over time (joins, failures,
    /// resets, fallback, ADD_ADDR), throughput per subflow stacked to the total and RTT per
    /// subflow (from `subflow_stats`: capture with --stats-interval), and its diagnoses.
    ///
    /// Example: sudo mptcp-trace events --json --stats-interval 1 > run.ndjson
    ///
    /// Example: mptcp-trace report run.ndjson -o run.html
    Report(ReportArgs),
    /// Counters since start, refreshed every interval like `nstat`/`vmstat`: connections
    /// opened/established/closed, fallbacks, joins, failed and closed subflows, resets received
    /// and sent, ADD_ADDR/RM_ADDR — in total, per network namespace and per command (the most
    /// active first), with the reasons, the loss, and a pinned upgrade's socket counters.
    ///
    /// Example: sudo mptcp-trace stats --interval 5
    ///
    /// Example: sudo mptcp-trace stats --json --netns mptcp-client | jq .total
    Stats(StatsArgs),
    /// Serve Prometheus metrics (`/metrics`) of the traced connections until SIGTERM/SIGINT:
    /// counters by netns, comm and cgroup, histograms of connection duration, time to the
    /// first join, subflows per connection and bytes per subflow by interface, and the
    /// tracer's own health.
    ///
    /// Example: sudo mptcp-trace exporter --listen 127.0.0.1:9464
    Exporter(ExporterArgs),
}

#[derive(Debug, Args, Default, Clone)]
pub struct WhyArgs {
    /// Only the connection whose token or peer token this is (8 hex digits, as in the events).
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,

    /// Read this NDJSON capture (`mptcp-trace events --json > FILE`) instead of the running
    /// tracers; `-` is standard input.
    #[arg(long, value_name = "FILE")]
    pub from: Option<std::path::PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct StatsArgs {
    /// Seconds between two printouts (fractions allowed, 0.1 to 86400; default 1).
    // A string, checked by the command: a bad value is one line and status 2.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub interval: Option<String>,

    /// One JSON object per interval instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Namespaces and commands shown, the most active first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Stop after this many seconds (printing once more).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Create this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ExporterArgs {
    /// Address and port to serve /metrics on (`[::]:9464` for every interface).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: String,

    /// Create this file once every program is attached and the port is open.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    /// The capture (`mptcp-trace events --json > FILE`); `-` is standard input.
    #[arg(value_name = "CAPTURE")]
    pub capture: std::path::PathBuf,

    /// Where to write the page (`-`: standard output). Default: the capture's name with
    /// `.html` (`report.html` for standard input).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DoctorArgs {
    /// Only this network namespace (repeat for several): a name from `ip netns`, a path such
    /// as /proc/PID/ns/net, or an inode number. Default: every namespace on the host.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,

    /// One JSON object with every check (name, scope, netns, status, detail, fix).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct UpgradeArgs {
    /// Which processes: --cgroup, --comm (repeatable), --pid (repeatable), --uid; several
    /// combine with "and".
    #[command(flatten)]
    pub select: SelectArgs,

    /// Every process on the machine.
    #[arg(long, conflicts_with_all = ["cgroup", "comm", "pid", "uid"])]
    pub all: bool,

    /// Count the sockets that would be upgraded, change nothing.
    #[arg(long)]
    pub count_only: bool,

    /// Keep the upgrade after this command returns (pinned in /sys/fs/bpf/mptcp-trace).
    #[arg(long)]
    pub pin: bool,

    /// Print the scope and counters of the pinned upgrade.
    #[arg(long, conflicts_with_all = ["cgroup", "comm", "pid", "uid", "all", "count_only", "pin", "off"])]
    pub status: bool,

    /// Remove the pinned upgrade.
    #[arg(long, conflicts_with_all = ["cgroup", "comm", "pid", "uid", "all", "count_only", "pin"])]
    pub off: bool,

    /// Create this file once the upgrade is attached (for scripts and tests).
    #[arg(long, value_name = "PATH", conflicts_with = "pin")]
    pub ready_file: Option<PathBuf>,

    /// Also trace the scope's MPTCP connections while the upgrade runs (event lines on stdout),
    /// in this process: exactly the processes the upgrade selects.
    #[arg(long, conflicts_with = "pin")]
    pub events: bool,

    /// With --events: NDJSON instead of text lines.
    #[arg(long, requires = "events")]
    pub json: bool,
}

/// How `run` upgrades CMD's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RunMethod {
    /// bpf where the kernel has the hook and lets the program load, else seccomp.
    #[default]
    Auto,
    /// fmod_ret on update_socket_protocol (Linux ≥ 6.6, BPF trampolines allowed).
    Bpf,
    /// seccomp user notification on socket(); the supervisor installs an MPTCP socket in
    /// CMD with SECCOMP_IOCTL_NOTIF_ADDFD (Linux ≥ 5.9).
    Seccomp,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// How to upgrade: auto (bpf if the kernel allows it, else seccomp), bpf or seccomp.
    #[arg(long, value_enum, default_value_t = RunMethod::Auto)]
    pub method: RunMethod,

    /// Count the sockets CMD creates that would be upgraded, change nothing.
    #[arg(long)]
    pub count_only: bool,

    /// Also trace CMD's MPTCP connections (event lines on stderr; CMD keeps stdout).
    #[arg(long)]
    pub trace: bool,

    /// With --trace: NDJSON instead of text lines.
    #[arg(long, requires = "trace")]
    pub json: bool,

    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct EventsArgs {
    /// Print NDJSON, one object per line (schema: `mptcp-trace schema`).
    #[arg(long)]
    pub json: bool,

    /// Create this file once every program is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Every SECS seconds (fractions allowed, at least 0.1), a `subflow_stats` record per open
    /// subflow: bytes sent/acked/received since the previous record and in all, RTT, cwnd,
    /// retransmits, pacing rate (sock_diag). Nothing is polled without it.
    // A string, checked by the command: a bad value is one line and status 2.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub stats_interval: Option<String>,

    #[command(flatten)]
    pub select: SelectArgs,
}

/// A bad option value, found after parsing: one line, status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

#[derive(Debug, Args, Default, Clone)]
pub struct LiveArgs {
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Play a capture of `mptcp-trace events --json` through the view instead of tracing (no
    /// eBPF, no privileges); stays on the final screen until `q`.
    #[arg(long, value_name = "CAPTURE.ndjson")]
    pub replay: Option<PathBuf>,

    /// With --replay: the capture's pace times N (default 1); 0 plays it as fast as possible.
    // A string, checked by the command: a bad value is one line and status 2.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub speed: Option<String>,

    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DemoArgs {
    /// Stream NDJSON events instead of the live view.
    #[arg(long)]
    pub json: bool,

    /// Stop after this many seconds (default: 10 with --json, until `q` otherwise).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// With --json: a `subflow_stats` record per open subflow every SECS seconds, as with
    /// `events --stats-interval` (a capture `mptcp-trace report` draws throughput and RTT from).
    #[arg(
        long,
        value_name = "SECS",
        allow_hyphen_values = true,
        requires = "json"
    )]
    pub stats_interval: Option<String>,
}

/// Which connections: the one set of selector flags of every command. Process flags (pid, comm,
/// cgroup, uid) and netns are applied in the kernel when a connection is created; addresses,
/// ports, tokens and the family match any subflow of a connection. Repeated flags mean "any of
/// them"; different flags combine with "and".
#[derive(Debug, Args, Default, Clone, PartialEq, Eq)]
pub struct SelectArgs {
    /// Only connections owned by this process id (repeatable).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only connections owned by a process with this command name, as in /proc/PID/comm
    /// (repeatable).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,

    /// Only connections owned by processes in this cgroup v2 directory or below it (absolute,
    /// or relative to the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Only connections owned by processes running as this user id.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Only this network namespace: a name from `ip netns`, an absolute path such as
    /// /proc/PID/ns/net, or the inode of a namespace that exists (repeatable).
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,

    /// Only connections with a subflow using this local or remote port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,

    /// Only connections with a subflow using this local or remote address (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub addr: Vec<std::net::IpAddr>,

    /// Only the connection with this local token: hex, as `ip mptcp monitor` prints it
    /// (repeatable).
    #[arg(long, value_name = "TOKEN")]
    pub token: Vec<String>,

    /// Only IPv4 connections.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 connections.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Also show plain TCP connections (conn_* events with "protocol":"tcp"): to find the
    /// programs that do not use MPTCP yet.
    #[arg(long)]
    pub all_tcp: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_events_with_filters() {
        let cli = Cli::try_parse_from([
            "mptcp-trace",
            "events",
            "--json",
            "--port",
            "4321",
            "-4",
            "--netns",
            "blue",
        ])
        .unwrap();
        let Some(Command::Events(a)) = cli.command else {
            panic!("not events")
        };
        assert!(a.json);
        assert_eq!(a.select.port, [4321]);
        assert!(a.select.ipv4);
        assert_eq!(a.select.netns, ["blue"]);
    }

    #[test]
    fn parses_upgrade_and_run() {
        let cli = Cli::try_parse_from([
            "mptcp-trace",
            "upgrade",
            "--comm",
            "curl",
            "--comm",
            "wget",
            "--uid",
            "0",
            "--pin",
        ])
        .unwrap();
        let Some(Command::Upgrade(a)) = cli.command else {
            panic!("not upgrade")
        };
        assert_eq!(a.select.comm, ["curl", "wget"]);
        assert_eq!(a.select.uid, Some(0));
        assert!(a.pin && !a.count_only);
        let cli = Cli::try_parse_from(["mptcp-trace", "run", "--", "sh", "-c", "exit 3"]).unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.command, ["sh", "-c", "exit 3"]);
        assert_eq!(r.method, RunMethod::Auto);
        let cli =
            Cli::try_parse_from(["mptcp-trace", "run", "--method", "seccomp", "--", "nc"]).unwrap();
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.method, RunMethod::Seccomp);
        for args in [
            &["mptcp-trace", "upgrade", "--all", "--comm", "x"][..],
            &["mptcp-trace", "upgrade", "--status", "--all"],
            &["mptcp-trace", "upgrade", "--off", "--pid", "1"],
            &["mptcp-trace", "run"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn the_bare_command_takes_selectors() {
        let cli =
            Cli::try_parse_from(["mptcp-trace", "--netns", "x", "--port", "1", "--port", "2"])
                .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.select.port, [1, 2]);
        let both = Cli::try_parse_from(["mptcp-trace", "--port", "1", "events"]).unwrap();
        assert_ne!(
            both.select,
            SelectArgs::default(),
            "caught by parse_checked"
        );
    }

    #[test]
    fn parses_doctor() {
        let cli = Cli::try_parse_from([
            "mptcp-trace",
            "doctor",
            "--netns",
            "a",
            "--netns",
            "b",
            "--json",
        ])
        .unwrap();
        let Some(Command::Doctor(d)) = cli.command else {
            panic!("not doctor")
        };
        assert_eq!(d.netns, ["a", "b"]);
        assert!(d.json);
    }

    #[test]
    fn rejects_bad_values_with_usage_errors() {
        for args in [
            &["mptcp-trace", "events", "--port", "70000"][..],
            &["mptcp-trace", "events", "--addr", "10.0.0"],
            &["mptcp-trace", "events", "-4", "-6"],
            &["mptcp-trace", "events", "--pid", "x"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
