//! The upgrade part of `cargo xtask bench`: what the TCP→MPTCP upgrade adds to one
//! `socket()`. The worker is the ignored test `bench_socket_cost` (tests/tests/upgrade.rs):
//! socket-bench (tests/c/socket-bench.c) creates and closes N TCP sockets with no upgrade,
//! under `mptcpize run`, under `mptcp-trace run --method bpf|seccomp`, and beside a background
//! `mptcp-trace upgrade` (in scope, out of scope, count-only), in interleaved rounds. It runs
//! here on the host (whose kernel may refuse the bpf upgrade: the refusal is reported) and in
//! the 6.12 guest (the one kernel here that lets it load), booted through the VM runner, which
//! brings back the worker's marker lines from the guest's console. The results replace the
//! upgrade section of BENCHMARKS.md and go to `target/bench/upgrade.json`.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{median, replace_section, spread, BenchArgs, Machine};
use crate::vm;

const BEGIN: &str = "<!-- bench:upgrade:begin -->";
const END: &str = "<!-- bench:upgrade:end -->";
/// The worker's lines (tests/tests/upgrade.rs): one per variant, one about its machine.
const MARKER: &str = "MPTCP-TRACE-SOCKET-BENCH ";
const MACHINE_MARKER: &str = "MPTCP-TRACE-SOCKET-BENCH-MACHINE ";
/// The worker: an ignored test of the `upgrade` test executable.
const WORKER_EXE: &str = "upgrade";
const WORKER_TEST: &str = "bench_socket_cost";
/// The guest's kernel series: the only one here whose `fmod_ret` upgrade loads.
const GUEST_KERNEL: &str = "6.12";

/// The worker's variants, in its order: its key, and what the tables call it.
const VARIANTS: &[(&str, &str)] = &[
    ("none", "no upgrade"),
    ("mptcpize_run", "`mptcpize run` (LD_PRELOAD)"),
    (
        "run_bpf",
        "`mptcp-trace run --method bpf` (fmod_ret, in scope)",
    ),
    (
        "upgrade_all",
        "`mptcp-trace upgrade --all` in the background (fmod_ret, in scope)",
    ),
    (
        "upgrade_comm_in_scope",
        "`upgrade --comm socket-bench` in the background (in scope)",
    ),
    (
        "upgrade_comm_out_of_scope",
        "`upgrade --comm not-this-bench` in the background (out of scope)",
    ),
    (
        "upgrade_all_count_only",
        "`upgrade --all --count-only` in the background",
    ),
    (
        "run_seccomp",
        "`mptcp-trace run --method seccomp` (seccomp user notification)",
    ),
];
/// The variants the "≤ 1.05× (bpf)" target is about: the fmod_ret upgrade doing its work.
const BPF_IN_SCOPE: &[&str] = &["run_bpf", "upgrade_all", "upgrade_comm_in_scope"];

/// How big the runs are.
struct Sizes {
    rounds: usize,
    /// Sockets per socket-bench run on the host.
    host_n: u64,
    /// In the guest: TCG makes each call about 10× slower (the seccomp variant's about
    /// 0.3 ms there); fewer sockets keep its runs to seconds.
    guest_n: u64,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Sizes {
        if args.quick {
            Sizes {
                rounds: 3,
                host_n: 5_000,
                guest_n: 2_000,
            }
        } else {
            Sizes {
                rounds: args.upgrade_rounds,
                host_n: 20_000,
                guest_n: 10_000,
            }
        }
    }
}

/// One variant's rounds, as the worker reported them.
struct Variant {
    key: String,
    /// ns per socket()+close(), per round.
    ns: Vec<f64>,
    /// SO_PROTOCOL of socket-bench's first socket, per round (262 MPTCP, 6 TCP).
    protocols: Vec<i64>,
    /// Why it did not run (a kernel's refusal, a missing tool).
    refused: Option<String>,
    /// The background upgrader's counters when it stopped, per round.
    counters: Vec<String>,
}

impl Variant {
    fn label(&self) -> &str {
        VARIANTS
            .iter()
            .find(|(k, _)| *k == self.key)
            .map_or(self.key.as_str(), |(_, l)| l)
    }

    fn median(&self) -> Option<f64> {
        (!self.ns.is_empty()).then(|| median(self.ns.clone()))
    }
}

/// What the worker reported from one machine.
struct Report {
    kernel: String,
    cpu: String,
    cores: u64,
    sockets_per_run: u64,
    rounds: u64,
    variants: Vec<Variant>,
    /// The whole run, build and (for the guest) boot included.
    wall_s: f64,
    /// The host's /proc/loadavg when the run started: how busy the machine was otherwise.
    loadavg: String,
}

impl Report {
    fn variant(&self, key: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.key == key)
    }

    /// The median of `key`'s rounds, when it ran.
    fn median_of(&self, key: &str) -> Option<f64> {
        self.variant(key)?.median()
    }
}

/// What follows `marker` in `line`, wherever it starts: libtest prints `test NAME ... ` and
/// the test's first output on one line.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// Reads the worker's marker lines (its stdout, or a guest's console).
/// `wall_s` and `loadavg` are the run's duration and the host's load when it started.
fn parse(lines: &[String], wall_s: f64, loadavg: String) -> Result<Report> {
    let machine: Value = lines
        .iter()
        .find_map(|l| after(l, MACHINE_MARKER))
        .context("the worker printed no machine line")
        .and_then(|j| serde_json::from_str(j).context("the worker's machine line"))?;
    let mut variants = Vec::new();
    for l in lines.iter().filter_map(|l| after(l, MARKER)) {
        let v: Value = serde_json::from_str(l).with_context(|| format!("a worker line: {l}"))?;
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        variants.push(Variant {
            key: v["variant"].as_str().context("no variant")?.to_string(),
            ns: v["ns_per_socket"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
            protocols: v["so_protocol"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect(),
            refused: v["refused"].as_str().map(str::to_string),
            counters: strings("upgrader_counters"),
        });
    }
    ensure!(
        variants.iter().any(|v| v.key == "none" && !v.ns.is_empty()),
        "the worker gave no result for the no-upgrade variant"
    );
    Ok(Report {
        kernel: machine["kernel"].as_str().unwrap_or("?").to_string(),
        cpu: machine["cpu"].as_str().unwrap_or("?").to_string(),
        cores: machine["cores"].as_u64().unwrap_or(0),
        sockets_per_run: machine["sockets_per_run"].as_u64().unwrap_or(0),
        rounds: machine["rounds"].as_u64().unwrap_or(0),
        variants,
        wall_s,
        loadavg,
    })
}

/// The host's load averages (1, 5, 15 min).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The worker's environment: its size.
fn worker_env(n: u64, rounds: usize) -> Vec<(String, String)> {
    vec![
        ("SOCKET_BENCH_N".into(), n.to_string()),
        ("SOCKET_BENCH_ROUNDS".into(), rounds.to_string()),
    ]
}

/// The worker's libtest arguments: the one ignored test, its output as it goes.
const WORKER_ARGS: &[&str] = &["--ignored", "--exact", WORKER_TEST];

/// Runs the worker here, with the release `mptcp-trace` at `bin`.
fn on_host(bin: &Path, sizes: &Sizes) -> Result<Report> {
    let (t0, load) = (Instant::now(), loadavg());
    let exe = vm::cargo_executables(&[
        "test",
        "-p",
        "integration-tests",
        "--test",
        WORKER_EXE,
        "--no-run",
    ])?
    .into_iter()
    .find(|(name, _, test)| *test && name == WORKER_EXE)
    .map(|(_, exe, _)| exe)
    .context("cargo reported no upgrade test executable")?;
    eprintln!(
        "==> host: {WORKER_TEST}, {} sockets per run, {} rounds",
        sizes.host_n, sizes.rounds
    );
    let out = Command::new(&exe)
        .args(WORKER_ARGS)
        .args(["--nocapture", "--test-threads=1"])
        .envs(worker_env(sizes.host_n, sizes.rounds))
        .env("MPTCP_TRACE_BIN", bin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the worker failed on the host ({}):\n{stdout}", out.status);
    }
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    parse(&lines, t0.elapsed().as_secs_f64(), load)
}

/// Runs the worker in the 6.12 guest.
fn in_guest(sizes: &Sizes) -> Result<Report> {
    let (t0, load) = (Instant::now(), loadavg());
    eprintln!(
        "==> {GUEST_KERNEL} guest: {WORKER_TEST}, {} sockets per run, {} rounds",
        sizes.guest_n, sizes.rounds
    );
    let run = vm::run_guest(&vm::VmTestArgs {
        kernel: GUEST_KERNEL.into(),
        tests: vec![WORKER_EXE.into()],
        test_args: WORKER_ARGS.iter().map(|a| a.to_string()).collect(),
        env: worker_env(sizes.guest_n, sizes.rounds),
        ..Default::default()
    })?;
    let report = parse(&run.marked, t0.elapsed().as_secs_f64(), load)?;
    ensure!(
        report.kernel == run.release,
        "the worker ran on {}, not the guest's {}",
        report.kernel,
        run.release
    );
    Ok(report)
}

pub fn run(args: &BenchArgs, bin: &Path, dir: &Path, out: &Path) -> Result<()> {
    let sizes = Sizes::of(args);
    ensure!(sizes.rounds > 0, "--upgrade-rounds must be at least 1");
    let machine = Machine::this()?;
    let host = on_host(bin, &sizes)?;
    super::check_interrupted()?;
    let guest = if args.no_vm {
        None
    } else {
        Some(in_guest(&sizes)?)
    };
    let command = command_line(args);
    let json_path = dir.join("upgrade.json");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&to_json(&command, &machine, &host, guest.as_ref()))?,
    )?;
    eprintln!("==> wrote {}", json_path.display());
    eprintln!(
        "==> upgrade part: host {:.0} s, guest {}",
        host.wall_s,
        guest
            .as_ref()
            .map_or("skipped".into(), |g| format!("{:.0} s", g.wall_s))
    );
    let md = markdown(&command, &machine, &host, guest.as_ref())?;
    replace_section(out, BEGIN, END, &md)
}

/// The command that reproduces this run.
fn command_line(args: &BenchArgs) -> String {
    let mut c = "sudo cargo xtask bench --only upgrade".to_string();
    if args.quick {
        c.push_str(" --quick");
    } else {
        c.push_str(&format!(" --upgrade-rounds {}", args.upgrade_rounds));
    }
    if args.no_vm {
        c.push_str(" --no-vm");
    }
    c
}

/// `key`'s ratio to `base`'s median, when both ran.
fn ratio(r: &Report, key: &str, base: &str) -> Option<f64> {
    Some(r.median_of(key)? / r.median_of(base)?)
}

/// How much slower `a` is than `b` with no upgrade (the guest against the host).
fn slower(a: &Report, b: &Report) -> Option<f64> {
    Some(a.median_of("none")? / b.median_of("none")?)
}

fn report_json(r: &Report) -> Value {
    json!({
        "kernel": r.kernel,
        "cpu": r.cpu,
        "cores": r.cores,
        "sockets_per_run": r.sockets_per_run,
        "rounds": r.rounds,
        "wall_s": r.wall_s,
        "host_loadavg_at_start": r.loadavg,
        "variants": r.variants.iter().map(|v| {
            let (lo, hi) = if v.ns.is_empty() { (None, None) } else {
                let (lo, hi) = spread(&v.ns);
                (Some(lo), Some(hi))
            };
            json!({
                "variant": v.key,
                "label": v.label(),
                "ns_per_socket": v.ns,
                "so_protocol": v.protocols,
                "median_ns": v.median(),
                "min_ns": lo,
                "max_ns": hi,
                "ratio_vs_no_upgrade": ratio(r, &v.key, "none"),
                "ratio_vs_mptcpize_run": ratio(r, &v.key, "mptcpize_run"),
                "refused": v.refused,
                "upgrader_counters": v.counters,
            })
        }).collect::<Vec<_>>(),
    })
}

fn to_json(command: &str, m: &Machine, host: &Report, guest: Option<&Report>) -> Value {
    json!({
        "command": command,
        "date": m.date,
        "host": report_json(host),
        "guest": guest.map_or_else(
            || json!({"skipped": "--no-vm"}),
            |g| {
                let mut v = report_json(g);
                v["accel"] = json!("qemu TCG, no KVM");
                v
            }
        ),
    })
}

/// The counters of an upgrader's closing line (`upgrade: stopped; TCP sockets seen …`).
fn counters(line: &str) -> &str {
    line.find("TCP sockets seen").map_or(line, |at| &line[at..])
}

/// A Markdown table cell: no pipe, no line break.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The refusal's first sentence (the whole line is in the JSON).
fn first_sentence(s: &str) -> &str {
    s.split_once(". ").map_or(s, |(a, _)| a)
}

/// The distinct SO_PROTOCOL values of the rounds: one, unless something changed between them.
fn protocols(v: &Variant) -> String {
    let mut p = v.protocols.clone();
    p.sort_unstable();
    p.dedup();
    p.iter().map(i64::to_string).collect::<Vec<_>>().join(" / ")
}

fn ratio_cell(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), |x| format!("{x:.2}×"))
}

/// One machine's table.
fn table(o: &mut String, r: &Report) -> Result<()> {
    writeln!(
        o,
        "| variant | SO_PROTOCOL | ns per socket()+close(), median (min–max) | vs no upgrade | vs `mptcpize run` | background upgrader's counters (last round) |"
    )?;
    writeln!(o, "|---|---:|---:|---:|---:|---|")?;
    let mut previous: Option<&str> = None;
    for v in &r.variants {
        let Some(m) = v.median() else {
            let why = v.refused.as_deref().unwrap_or("no result");
            let what = if why.starts_with("not installed") {
                "not run"
            } else {
                "refused"
            };
            // One kernel refuses every bpf variant alike: the reason once, then "as above".
            let shown = if previous == Some(why) {
                "as above".to_string()
            } else {
                cell(first_sentence(why))
            };
            writeln!(o, "| {} | — | **{what}**: {shown} | — | — | — |", v.label())?;
            previous = Some(why);
            continue;
        };
        let (lo, hi) = spread(&v.ns);
        writeln!(
            o,
            "| {} | {} | {m:.0} ({lo:.0}–{hi:.0}) | {} | {} | {} |",
            v.label(),
            protocols(v),
            ratio_cell(ratio(r, &v.key, "none")),
            ratio_cell(ratio(r, &v.key, "mptcpize_run")),
            v.counters.last().map_or("—".into(), |c| cell(counters(c))),
        )?;
        previous = None;
    }
    Ok(())
}

/// The two targets against both machines' numbers.
fn targets(o: &mut String, host: &Report, guest: Option<&Report>) -> Result<()> {
    writeln!(o, "| target | where | measured | met? |")?;
    writeln!(o, "|---|---|---|---|")?;
    let places: Vec<(&str, &Report)> = std::iter::once(("host", host))
        .chain(guest.map(|g| ("6.12 guest", g)))
        .collect();
    for (place, r) in &places {
        for key in BPF_IN_SCOPE {
            let Some(v) = r.variant(key) else { continue };
            let (measured, met) = match ratio(r, key, "none") {
                Some(x) => (format!("{x:.2}× no upgrade"), yes_no(x <= 1.05)),
                None => ("refused by the kernel".to_string(), "not measurable here"),
            };
            writeln!(
                o,
                "| upgrade socket() cost ≤ 1.05×: {} | {place} | {measured} | {met} |",
                v.label()
            )?;
        }
        let overhead = |key: &str| Some(r.median_of(key)? - r.median_of("none")?);
        let (measured, met) = match (overhead("run_seccomp"), overhead("mptcpize_run")) {
            (Some(s), Some(z)) => (
                format!("seccomp adds {s:.0} ns per call, `mptcpize run` {z:.0} ns"),
                yes_no(s < z),
            ),
            (Some(s), None) => (
                format!("seccomp adds {s:.0} ns per call; no `mptcpize run` here"),
                "not measurable here",
            ),
            _ => ("seccomp did not run".to_string(), "no"),
        };
        writeln!(
            o,
            "| seccomp method cheaper per call than `mptcpize run` | {place} | {measured} | {met} |"
        )?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn markdown(command: &str, m: &Machine, host: &Report, guest: Option<&Report>) -> Result<String> {
    let mut o = String::new();
    writeln!(o, "{BEGIN}")?;
    writeln!(
        o,
        "## The upgrade: the cost of one `socket()` (`cargo xtask bench`)\n"
    )?;
    writeln!(
        o,
        "Measured by `{command}` on {}. The worker (`bench_socket_cost` in \
         `tests/tests/upgrade.rs`) runs `tests/c/socket-bench.c` — dynamically linked, so that \
         `mptcpize run`'s LD_PRELOAD applies — which creates and closes N \
         `socket(AF_INET, SOCK_STREAM, 0)` and prints the mean per pair and the `SO_PROTOCOL` \
         of its first socket (262: MPTCP, the upgrade happened; 6: TCP). The variants take \
         turns, round by round; each cell is the median of the rounds (min–max). A background \
         `upgrade` is attached (its `--ready-file`) before socket-bench starts and stopped \
         with SIGINT after it (its counters line is shown; its programs are checked gone). A \
         variant the kernel refuses shows the refusal instead of a number. \
         Machine-readable: `target/bench/upgrade.json`.\n",
        m.date
    )?;
    writeln!(
        o,
        "### Host: Linux {}, {} cores ({})\n",
        host.kernel, host.cores, host.cpu
    )?;
    writeln!(
        o,
        "{} sockets per run, {} rounds; the whole host run took {:.0} s; load average when \
         it started: {} (the machine's other work shows in the spread).\n",
        host.sockets_per_run, host.rounds, host.wall_s, host.loadavg
    )?;
    table(&mut o, host)?;
    writeln!(o, "\n### 6.12 guest\n")?;
    match guest {
        Some(g) => {
            writeln!(
                o,
                "Linux {} in qemu **without KVM** (TCG, `-cpu max`, {} vCPUs, on the host \
                 above; the guest's CPU calls itself {}): emulated, every absolute number is \
                 several times the host's (no upgrade: {} the host's here; earlier runs saw \
                 about 10×), so compare the ratios. {} sockets per run, {} rounds; the \
                 guest's build, boot and run took {:.0} s; the host's load average when it \
                 started: {}.\n",
                g.kernel,
                g.cores,
                g.cpu,
                ratio_cell(slower(g, host)),
                g.sockets_per_run,
                g.rounds,
                g.wall_s,
                g.loadavg
            )?;
            table(&mut o, g)?;
        }
        None => writeln!(
            o,
            "Not run: the bench was started with `--no-vm`, so this run has no kernel where \
             the bpf upgrade loads (unless the host's did)."
        )?,
    }
    writeln!(o, "\n### Targets (issue 17)\n")?;
    targets(&mut o, host, guest)?;
    writeln!(o, "{END}")?;
    Ok(o)
}
