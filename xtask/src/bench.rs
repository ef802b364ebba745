//! `cargo xtask bench` (root; never part of `cargo xtask test`): what tracing costs the traffic
//! it watches, measured side by side in one run. In the seed's test bed, a churn generator
//! (short MPTCP connections — connect, 1 KiB each way, close — from worker threads in the
//! client namespace) runs for a few seconds per round with one arm attached: nothing (the
//! baseline), `events --json`, `events` (text), the exporter (scraped every second), `live` in a
//! pseudo-terminal, `ip mptcp monitor` in both namespaces, bpftrace printing the same state
//! changes. Two MPTCP phases: at a target rate (what the arm costs at a known load) and as
//! fast as the machine goes (the throughput ratio, and loss when it matters); a plain TCP phase
//! at the maximum (MPTCP-only tracing's early exit, `--all-tcp`, bpftrace); then a bulk transfer
//! per arm. Rounds are interleaved (A/B/A/B…), and
//! each arm reports the median and spread of connections/s and its ratio to the baseline of
//! the same phase, its CPU (% of one core) and peak RSS, our programs' kernel time per state
//! change, the time from exec to attached, what it showed against what the generator and the
//! kernel's MPTcpExt counters say happened, and what it reported lost. The results replace
//! the churn section of BENCHMARKS.md and go to `target/bench/churn.json`.
//!
//! Then the upgrade part ([`upgrade`]): what the TCP→MPTCP upgrade adds to one socket(), on
//! the host and in the 6.12 guest.

mod upgrade;

use std::{
    fs,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use mptcp_user::{
    peer::{self, Proto},
    testbed::{self, TestBed},
};

use crate::{test::cargo, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds per arm (the tables give the median and the spread).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of churn per round.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Target connections per second; 0: as fast as the machine goes.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Client worker threads.
    #[arg(long, default_value_t = 8)]
    pub workers: u32,
    /// Write the results here instead of BENCHMARKS.md (the churn and upgrade sections are
    /// replaced, or appended when the file has none).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// For development: the churn part in about two minutes (2 rounds of 2 s per arm and
    /// phase), the upgrade part with 3 rounds of fewer sockets.
    #[arg(long)]
    pub quick: bool,
    /// Interleaved rounds per variant of the upgrade part (a round is seconds, not minutes:
    /// more rounds than the churn's for a steadier median on a busy machine).
    #[arg(long, default_value_t = 11)]
    pub upgrade_rounds: usize,
    /// Run only this part: `churn` (tracing's cost to the traffic it watches) or `upgrade`
    /// (the upgrade's cost to one socket(), on the host and in the 6.12 guest).
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Option<Part>,
    /// Skip the upgrade part's 6.12 guest (the only kernel here that lets the bpf upgrade
    /// load); its table then says so.
    #[arg(long)]
    pub no_vm: bool,
    /// For development: only these arms of the churn part (repeatable; the baseline always
    /// runs), e.g. `--arm events-json` to profile one tracer over longer rounds.
    #[arg(long = "arm", value_enum, value_name = "ARM")]
    pub arms: Vec<Arm>,
    /// For development: measure this mptcp-trace binary instead of building the workspace's
    /// (to compare two builds in turns).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
}

impl BenchArgs {
    /// Whether the churn part runs `arm` (`--arm`; the baseline always).
    fn selects(&self, arm: Arm) -> bool {
        arm == Arm::Baseline || self.arms.is_empty() || self.arms.contains(&arm)
    }
}

/// The parts of the bench, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    Churn,
    Upgrade,
}

/// A bulk transfer per arm and round: this many bytes over the two paths.
const BULK_BYTES: u64 = 1 << 30;

const PORT: u16 = 5201;
const PAYLOAD: usize = 1024;
/// The bpftrace arm: every state change of a TCP or MPTCP socket in the two namespaces ($1,
/// $2), printed with what `events` prints for it (time, process, netns, protocol, addresses,
/// ports, states), from the tracepoint our main program uses.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:sock:inet_sock_set_state
/(args->protocol == 6 || args->protocol == 262) &&
 (((struct sock *)args->skaddr)->__sk_common.skc_net.net->ns.inum == $1 ||
  ((struct sock *)args->skaddr)->__sk_common.skc_net.net->ns.inum == $2)/
{
  $sk = (struct sock *)args->skaddr;
  printf("%llu %d %s netns=%u proto=%d %s:%d -> %s:%d %d->%d\n", nsecs, pid, comm,
    $sk->__sk_common.skc_net.net->ns.inum, args->protocol,
    ntop(args->saddr), args->sport, ntop(args->daddr), args->dport,
    args->oldstate, args->newstate);
}
"#;

/// Mounts tracefs for bpftrace's tracepoints where the machine has not, and unmounts it when
/// the bench ends, however it ends.
struct TraceFs(bool);

impl TraceFs {
    const PATH: &str = "/sys/kernel/tracing";

    fn ensure() -> Result<TraceFs> {
        if Path::new(Self::PATH).join("events").exists() {
            return Ok(TraceFs(false));
        }
        let st = Command::new("mount")
            .args(["-t", "tracefs", "nodev", Self::PATH])
            .status()?;
        ensure!(
            st.success(),
            "cannot mount tracefs on {} for bpftrace",
            Self::PATH
        );
        Ok(TraceFs(true))
    }
}

impl Drop for TraceFs {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount").arg(Self::PATH).status();
        }
    }
}

const BEGIN: &str = "<!-- bench:churn:begin -->";
const END: &str = "<!-- bench:churn:end -->";

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Arm {
    Baseline,
    EventsJson,
    EventsText,
    Exporter,
    Live,
    IpMonitor,
    /// bpftrace printing every TCP/MPTCP state change of the two namespaces, from the same
    /// tracepoint: what an operator would write by hand instead of this tool.
    Bpftrace,
    /// `events --json --all-tcp`: plain TCP connections too (the plain TCP phase).
    EventsJsonAllTcp,
}

impl Arm {
    /// The arms of the MPTCP phases and of the bulk transfers.
    const MPTCP: [Arm; 7] = [
        Arm::Baseline,
        Arm::EventsJson,
        Arm::EventsText,
        Arm::Exporter,
        Arm::Live,
        Arm::IpMonitor,
        Arm::Bpftrace,
    ];
    /// The arms of the plain TCP phase: what MPTCP-only tracing costs traffic it does not show
    /// (the programs' early exit), and what `--all-tcp` costs when it shows it.
    const TCP: [Arm; 4] = [
        Arm::Baseline,
        Arm::EventsJson,
        Arm::EventsJsonAllTcp,
        Arm::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Arm::Baseline => "no tracer (baseline)",
            Arm::EventsJson => "`events --json` > file",
            Arm::EventsText => "`events` (text) > file",
            Arm::Exporter => "`exporter`, scraped every 1 s",
            Arm::Live => "`live` in a pseudo-terminal (160x50)",
            Arm::IpMonitor => "`ip mptcp monitor` in both namespaces",
            Arm::Bpftrace => "bpftrace, one printf per state change",
            Arm::EventsJsonAllTcp => "`events --json --all-tcp` > file",
        }
    }

    /// Prints connections: its output is counted against the generator's.
    fn traces(self) -> bool {
        matches!(
            self,
            Arm::EventsJson | Arm::EventsText | Arm::EventsJsonAllTcp | Arm::Bpftrace
        )
    }

    /// Runs eBPF programs (ours or bpftrace's), whose kernel time is measured.
    fn has_programs(self) -> bool {
        !matches!(self, Arm::Baseline | Arm::IpMonitor)
    }

    fn key(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline",
            Arm::EventsJson => "events_json",
            Arm::EventsText => "events_text",
            Arm::Exporter => "exporter",
            Arm::Live => "live",
            Arm::IpMonitor => "ip_mptcp_monitor",
            Arm::Bpftrace => "bpftrace",
            Arm::EventsJsonAllTcp => "events_json_all_tcp",
        }
    }
}

/// One round of one arm.
#[derive(Clone, Debug, Default)]
struct Sample {
    conns_per_s: f64,
    made: u64,
    failed: u64,
    cpu_pct: f64,
    /// Peak RSS (VmHWM), KiB.
    rss_kib: u64,
    /// RSS when the churn ended (VmRSS), KiB: what the arm holds once started.
    rss_end_kib: u64,
    /// Client-side connections the arm showed (`conn_created` in the client namespace).
    shown: Option<u64>,
    lost: Option<u64>,
    /// Client-side join subflows the arm showed, and those the kernel counted
    /// (MPJoinSynAckRx of the client namespace).
    joins_shown: Option<u64>,
    joins_expected: u64,
    /// From exec to attached (the ready file, or the first program held), ms.
    attach_ms: Option<f64>,
    /// Our programs' kernel time per state change (`run_time_ns` / `run_cnt`, with
    /// `kernel.bpf_stats_enabled`), ns.
    kernel_ns: Option<f64>,
}

/// CPU time (user + system) of a process, in clock ticks, its peak RSS and its RSS now, in KiB.
fn usage(pid: u32) -> (u64, u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmHWM:"), kib("VmRSS:"))
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The arm's processes, running.
struct Running {
    children: Vec<Child>,
    /// The processes whose CPU and memory count (the arm's own, not a wrapper's).
    pids: Vec<u32>,
    attach_ms: Option<f64>,
    outputs: Vec<PathBuf>,
    stop_scraper: Arc<AtomicBool>,
    scraper: Option<thread::JoinHandle<()>>,
}

impl Drop for Running {
    /// An error between start and stop must not leave a tracer attached.
    fn drop(&mut self) {
        self.stop_scraper.store(true, Ordering::Relaxed);
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Running {
    fn stop(mut self) -> Vec<String> {
        self.stop_scraper.store(true, Ordering::Relaxed);
        if let Some(s) = self.scraper.take() {
            let _ = s.join();
        }
        let mut stderr = Vec::new();
        // A wrapped arm (`live` under `script`) is stopped itself; its wrapper follows.
        for p in &self.pids {
            if !self.children.iter().any(|c| c.id() == *p) {
                // SAFETY: plain kill(2) on a process of this arm.
                unsafe { libc::kill(*p as i32, libc::SIGINT) };
            }
        }
        for c in &mut self.children {
            // SIGINT, as Ctrl-C: the tracer prints its loss summary. Sent again every 2 s, and
            // the arm killed after 10 s: bpftrace once in a while does not act on the first
            // (twice this bench waited for it for ever; a second SIGINT ended it).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut again = Instant::now();
            loop {
                if Instant::now() >= again {
                    // SAFETY: plain kill(2) on our own child.
                    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                    again += Duration::from_secs(2);
                }
                match c.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    Ok(None) => {
                        eprintln!("        arm {} did not stop on SIGINT: killed", c.id());
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => break,
                }
            }
            if let Some(mut e) = c.stderr.take() {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                stderr.push(s);
            }
        }
        stderr
    }
}

/// Set by SIGINT (see [`run`]).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupted() -> Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted (Ctrl-C): the test bed and the settings the bench changed are undone"
    );
    Ok(())
}

/// Polls `ready` until it gives a value, for at most 60 s; fails (with what the arm printed on
/// stderr) when `child` exits first. `what` names the arm in the error.
fn wait_ready<T>(
    child: &mut Child,
    what: &str,
    mut ready: impl FnMut(&Child) -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = ready(child)? {
            return Ok(v);
        }
        if let Some(st) = child.try_wait()? {
            let mut e = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut e);
            }
            bail!("{what} exited before it was ready: {st}: {}", e.trim());
        }
        ensure!(Instant::now() < deadline, "{what} was not ready in 60 s");
        check_interrupted()?;
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the arm's ready file.
fn wait_file(p: &Path, child: &mut Child) -> Result<()> {
    wait_ready(child, "the arm", |_| Ok(p.exists().then_some(())))
}

fn start(arm: Arm, bin: &Path, bed: &TestBed, dir: &Path, round: usize) -> Result<Running> {
    let netns_ids = [
        TestBed::netns_inode(&bed.client)?,
        TestBed::netns_inode(&bed.server)?,
    ];
    let mut r = Running {
        children: Vec::new(),
        pids: Vec::new(),
        attach_ms: None,
        outputs: Vec::new(),
        stop_scraper: Arc::new(AtomicBool::new(false)),
        scraper: None,
    };
    let ready = dir.join(format!("ready-{round}-{arm:?}"));
    let _ = fs::remove_file(&ready);
    let netns = ["--netns", &bed.client, "--netns", &bed.server];
    match arm {
        Arm::Baseline => {}
        Arm::EventsJson | Arm::EventsText | Arm::EventsJsonAllTcp => {
            let out = dir.join(format!("events-{round}-{arm:?}.txt"));
            let mut cmd = Command::new(bin);
            cmd.arg("events");
            if arm != Arm::EventsText {
                cmd.arg("--json");
            }
            if arm == Arm::EventsJsonAllTcp {
                cmd.arg("--all-tcp");
            }
            let t0 = Instant::now();
            // Held by `r` at once: an error (Ctrl-C) while it starts must not leave it running.
            r.children.push(
                cmd.args(netns)
                    .arg("--ready-file")
                    .arg(&ready)
                    .stdout(fs::File::create(&out)?)
                    .stderr(Stdio::piped())
                    .spawn()?,
            );
            wait_file(&ready, r.children.last_mut().expect("just pushed"))?;
            r.attach_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            r.outputs.push(out);
        }
        Arm::Live => {
            // `script` gives it a terminal; the shell sets its size and becomes the view.
            let cmd = format!(
                "stty cols 160 rows 50; exec {} live --netns {} --netns {}",
                bin.display(),
                bed.client,
                bed.server
            );
            let t0 = Instant::now();
            r.children.push(
                Command::new("script")
                    .args(["-qfec", &cmd, "/dev/null"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?,
            );
            let c = r.children.last_mut().expect("just pushed");
            // The view asks the terminal where its cursor is (ESC [6n) and `script` is no
            // terminal emulator: the answer a terminal would give waits in the input.
            if let Some(i) = c.stdin.as_mut() {
                i.write_all(b"\x1b[1;1R")?;
            }
            let pid = attached_child(c)?;
            r.attach_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            r.pids.push(pid);
        }
        Arm::Exporter => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let listen = format!("127.0.0.1:{port}");
            let t0 = Instant::now();
            r.children.push(
                Command::new(bin)
                    .args(["exporter", "--listen", &listen])
                    .args(netns)
                    .arg("--ready-file")
                    .arg(&ready)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?,
            );
            wait_file(&ready, r.children.last_mut().expect("just pushed"))?;
            r.attach_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            let stop = r.stop_scraper.clone();
            r.scraper = Some(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = TcpStream::connect(&listen) {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                    }
                    thread::sleep(Duration::from_secs(1));
                }
            }));
        }
        Arm::Bpftrace => {
            let script = dir.join("state-changes.bt");
            fs::write(&script, BPFTRACE_SCRIPT)?;
            let out = dir.join(format!("bpftrace-{round}.txt"));
            let t0 = Instant::now();
            r.children.push(
                Command::new("bpftrace")
                    .arg(&script)
                    .args(netns_ids.map(|n| n.to_string()))
                    .stdout(fs::File::create(&out)?)
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("bpftrace (scripts/setup.sh installs it)")?,
            );
            // bpftrace has no ready signal: attached once it holds its program and has said
            // so ("Attaching 1 probe..." is printed just before the attach).
            wait_ready(
                r.children.last_mut().expect("just pushed"),
                "bpftrace",
                |c| {
                    let attached = !prog_stats(c.id()).is_empty()
                        && fs::read_to_string(&out)?.contains("Attaching");
                    Ok(attached.then_some(()))
                },
            )?;
            r.attach_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            thread::sleep(Duration::from_millis(100));
            r.outputs.push(out);
        }
        Arm::IpMonitor => {
            for ns in [&bed.client, &bed.server] {
                let out = dir.join(format!("monitor-{round}-{ns}.txt"));
                let c = Command::new("ip")
                    .args(["-n", ns, "mptcp", "monitor"])
                    .stdout(fs::File::create(&out)?)
                    .stderr(Stdio::piped())
                    .spawn()?;
                r.children.push(c);
                r.outputs.push(out);
            }
            // `ip mptcp monitor` has no ready signal.
            thread::sleep(Duration::from_millis(300));
        }
    }
    if r.pids.is_empty() {
        r.pids = r.children.iter().map(Child::id).collect();
    }
    Ok(r)
}

/// The program `script` runs, once it holds eBPF programs: its pid.
fn attached_child(script: &mut Child) -> Result<u32> {
    wait_ready(script, "the live view", |s| {
        let children =
            fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.id())).unwrap_or_default();
        Ok(children
            .split_whitespace()
            .find_map(|p| p.parse().ok())
            .filter(|pid| !prog_stats(*pid).is_empty()))
    })
}

/// `(run_time_ns, run_cnt)` of each eBPF program a process holds, by program id (from
/// /proc/PID/fdinfo; counted while `kernel.bpf_stats_enabled` is 1).
fn prog_stats(pid: u32) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return m;
    };
    for e in dir.flatten() {
        let info = fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(id), Some(t), Some(n)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            m.insert(id as u32, (t, n));
        }
    }
    m
}

/// Kernel ns per state change between two [`prog_stats`]: every program's time, over the
/// runs of the busiest (the state-change programs run on every change).
fn kernel_ns(
    before: &std::collections::BTreeMap<u32, (u64, u64)>,
    after: &std::collections::BTreeMap<u32, (u64, u64)>,
) -> Option<f64> {
    let mut time = 0;
    let mut runs = 0;
    for (id, (t, n)) in after {
        let (t0, n0) = before.get(id).copied().unwrap_or((0, 0));
        time += t - t0;
        runs = runs.max(n - n0);
    }
    (runs > 0).then(|| time as f64 / runs as f64)
}

/// Restores `kernel.bpf_stats_enabled` when the bench ends, however it ends.
struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> BpfStats {
        let old = fs::read_to_string(Self::PATH).ok();
        if fs::write(Self::PATH, "1").is_err() {
            eprintln!(
                "(cannot enable {}: no kernel time per state change)",
                Self::PATH
            );
        }
        BpfStats(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(Self::PATH, old.trim());
        }
    }
}

/// The client namespace's MPJoinSynAckRx: joins the kernel saw answered.
fn joins_counted(bed: &TestBed) -> u64 {
    let path = PathBuf::from(format!("/run/netns/{}", bed.client));
    mptcp_user::sys::netstat::read(&path)
        .ok()
        .and_then(|c| c.get("MPJoinSynAckRx").copied())
        .unwrap_or(0)
}

/// One bulk transfer of [`BULK_BYTES`] from the client over both paths: MiB/s.
fn bulk(bed: &TestBed) -> Result<f64> {
    let addr: SocketAddr = format!("{}:{PORT}", testbed::RED_SERVER_V4).parse()?;
    let plan = peer::Send {
        bytes: BULK_BYTES,
        warmup: Duration::from_millis(100),
        spread: Duration::ZERO,
    };
    let t0 = Instant::now();
    testbed::in_netns(&bed.client, move || peer::send(addr, Proto::Mptcp, plan))??;
    Ok(BULK_BYTES as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64())
}

/// How long a churn connection may wait on its peer before it counts as failed. Without it,
/// one stalled connection held its worker (and the round) for ever: a quick run once stopped
/// in a bpftrace round, every process idle; the cause was not found.
const STALL: Duration = Duration::from_secs(10);

/// The server for `proto`: acceptor threads in the server namespace that read to EOF, answer
/// and close.
fn serve(bed: &TestBed, threads: u32, proto: Proto) -> Result<()> {
    let addr = server_addr(proto)?;
    let listener = Arc::new(testbed::in_netns(&bed.server, move || {
        peer::listen(addr, proto)
    })??);
    for _ in 0..threads {
        let l = listener.clone();
        thread::spawn(move || {
            let mut buf = [0u8; PAYLOAD];
            while let Ok((mut c, _)) = l.accept() {
                // A stalled connection must not hold an acceptor for ever (see `churn`).
                let _ = c.set_read_timeout(Some(STALL));
                let _ = c.set_write_timeout(Some(STALL));
                let mut got = 0;
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let _ = c.write_all(&buf[..got.min(PAYLOAD)]);
            }
        });
    }
    Ok(())
}

/// Where the server listens for `proto`: MPTCP on [`PORT`], plain TCP on the next port.
fn server_addr(proto: Proto) -> Result<SocketAddr> {
    let port = if proto == Proto::Mptcp {
        PORT
    } else {
        PORT + 1
    };
    Ok(format!("{}:{port}", testbed::RED_SERVER_V4).parse()?)
}

/// Runs the churn of `proto` connections for `secs` at `rate` conn/s (0: flat out) from
/// `workers` threads in the client namespace: (connections made, failed).
fn churn(bed: &TestBed, secs: u64, rate: u32, workers: u32, proto: Proto) -> Result<(u64, u64)> {
    let addr = server_addr(proto)?;
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for w in 0..workers {
        let (made, failed) = (made.clone(), failed.clone());
        handles.push(testbed::spawn_in_netns(&bed.client, move || {
            let payload = [7u8; PAYLOAD];
            let mut buf = [0u8; PAYLOAD];
            let every = (rate > 0).then(|| Duration::from_secs_f64(workers as f64 / rate as f64));
            let mut next =
                start + every.map_or(Duration::ZERO, |e| e.mul_f64(w as f64 / workers as f64));
            while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
                if let Some(e) = every {
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    next += e;
                }
                let ok = (|| -> std::io::Result<()> {
                    let mut s = peer::connect(addr, proto)?;
                    s.set_read_timeout(Some(STALL))?;
                    s.set_write_timeout(Some(STALL))?;
                    s.write_all(&payload)?;
                    s.shutdown(Shutdown::Write)?;
                    while s.read(&mut buf)? > 0 {}
                    Ok(())
                })();
                match ok {
                    Ok(()) => made.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })?);
    }
    for h in handles {
        let _ = h.join();
    }
    Ok((made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
}

/// What an `events` output showed of the client side.
struct Shown {
    /// `conn_created` lines.
    created: u64,
    /// Join `subflow_established` lines (bpftrace cannot tell a join from another subflow).
    joins: Option<u64>,
    /// The loss its summary gave.
    lost: Option<u64>,
}

fn count_output(arm: Arm, proto: Proto, out: &Path, stderr: &str, client_ns: u32) -> Shown {
    let text = fs::read_to_string(out).unwrap_or_default();
    if arm == Arm::Bpftrace {
        // A client's connect: its socket (the MPTCP one, or the plain TCP one) going from
        // CLOSE (7) to SYN_SENT (2) in the client namespace.
        let connect = format!(
            "netns={client_ns} proto={} ",
            if proto == Proto::Mptcp { 262 } else { 6 }
        );
        let created = text
            .lines()
            .filter(|l| l.contains(&connect) && l.ends_with(" 7->2"))
            .count() as u64;
        // bpftrace's own loss report: "Lost N events".
        let lost = text
            .lines()
            .chain(stderr.lines())
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Lost ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        return Shown {
            created,
            joins: None,
            lost: Some(lost),
        };
    }
    let json = arm != Arm::EventsText;
    let ns = format!("netns={client_ns}");
    let client = |l: &&str| {
        if json {
            l.contains("\"side\":\"client\"") || l.contains(&format!("\"netns\":{client_ns},"))
        } else {
            l.contains(&ns)
        }
    };
    let (mut created, mut joins) = (0, 0);
    for l in text.lines().filter(client) {
        if json {
            if l.contains("\"event\":\"conn_created\"") && l.contains("\"side\":\"client\"") {
                created += 1;
            } else if l.contains("\"event\":\"subflow_established\"") && l.contains("\"join\":true")
            {
                joins += 1;
            }
        } else if l.contains("conn_created") && l.contains(" client ") {
            created += 1;
        } else if l.contains("subflow_established") && l.contains(" join") {
            joins += 1;
        }
    }
    // The summary: `mptcp-trace: N events shown, M lost (ring buffer …)`.
    let lost = stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "lost")
        .and_then(|w| w[0].parse().ok());
    Shown {
        created,
        joins: Some(joins),
        lost,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let uid = fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    ensure!(
        uid,
        "cargo xtask bench needs root (namespaces, eBPF): sudo cargo xtask bench"
    );
    ensure!(
        args.rounds > 0 && args.seconds > 0,
        "--rounds and --seconds must be at least 1"
    );
    // Ctrl-C stops the bench at its next step, so that its guards run: the test bed's
    // namespaces, `bpf_stats_enabled` and a tracefs it mounted are undone (the default action
    // left all three behind). A handler also gives the arms SIGINT's default action when they
    // exec, where an ignored SIGINT (a background shell's) would be inherited: `ip mptcp
    // monitor` would then never stop, and the bench would wait for ever. The arms are stopped
    // with SIGINT (as Ctrl-C: ours print their loss summary).
    // SAFETY: the handler only stores to an atomic; installed before any thread is started.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let root = workspace_root();
    let bin = match &args.bin {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?,
        None => {
            eprintln!("==> cargo build --release -p mptcp-user");
            let st = cargo()
                .args(["build", "--release", "-p", "mptcp-user"])
                .current_dir(&root)
                .status()?;
            ensure!(st.success(), "release build failed");
            root.join("target/release/mptcp-trace")
        }
    };
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    if args.only != Some(Part::Upgrade) {
        churn_part(&args, &bin, &dir, &out)?;
    }
    if args.only != Some(Part::Churn) {
        check_interrupted()?;
        upgrade::run(&args, &bin, &dir, &out)?;
    }
    Ok(())
}

/// Replaces the text between `begin` and `end` (both included) in `path` with `md`, or
/// appends `md` when the file has no such section.
fn replace_section(path: &Path, begin: &str, end: &str, md: &str) -> Result<()> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{md}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{md}\n", old.trim_end()),
    };
    fs::write(path, new)?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

/// The churn part: the test bed, the phases, the bulk transfers; `churn.json` in `dir` and the
/// churn section of `out`.
fn churn_part(args: &BenchArgs, bin: &Path, dir: &Path, out: &Path) -> Result<()> {
    let bed = TestBed::create(&format!("bench{}", std::process::id()))
        .context("building the test bed")?;
    let client_ns = TestBed::netns_inode(&bed.client)?;
    // Tens of thousands of connections from one address within TIME_WAIT: reuse its ports and
    // widen the range, or connect() soon fails with EADDRNOTAVAIL.
    testbed::sysctl(&bed.client, "net.ipv4.tcp_tw_reuse", "1")?;
    testbed::sysctl(&bed.client, "net.ipv4.ip_local_port_range", "1024 65535")?;
    serve(&bed, args.workers.max(4), Proto::Mptcp)?;
    serve(&bed, args.workers.max(4), Proto::Tcp)?;
    let _stats = BpfStats::enable();
    let _tracefs = TraceFs::ensure()?;
    let (rounds, seconds) = if args.quick {
        (2, 2)
    } else {
        (args.rounds, args.seconds)
    };
    // The target rate (CPU and memory at a known load), then the machine's maximum (the
    // throughput ratio and loss when it matters).
    let rates: Vec<u32> = if args.rate == 0 {
        vec![0]
    } else {
        vec![args.rate, 0]
    };
    let mut phases = Vec::new();
    // Plain TCP churn at the maximum last: the early exit of MPTCP-only tracing, and
    // `--all-tcp`.
    let plan = rates
        .iter()
        .map(|&r| (r, Proto::Mptcp))
        .chain([(0, Proto::Tcp)]);
    for (rate, proto) in plan {
        eprintln!(
            "==> {} churn at {}",
            if proto == Proto::Mptcp {
                "MPTCP"
            } else {
                "plain TCP"
            },
            if rate > 0 {
                format!("{rate} conn/s")
            } else {
                "the maximum".into()
            }
        );
        let arms: Vec<Arm> = if proto == Proto::Mptcp {
            &Arm::MPTCP[..]
        } else {
            &Arm::TCP[..]
        }
        .iter()
        .copied()
        .filter(|a| args.selects(*a))
        .collect();
        let results = churn_phase(
            bin,
            &bed,
            dir,
            &ChurnPlan {
                rounds,
                seconds,
                rate,
                workers: args.workers,
                proto,
                arms: &arms,
            },
            client_ns,
        )?;
        phases.push(Phase {
            rate,
            proto,
            results,
        });
    }
    eprintln!("==> bulk transfers");
    let mut bulks: Vec<(Arm, Vec<f64>)> = Arm::MPTCP
        .iter()
        .filter(|a| args.selects(**a))
        .map(|a| (*a, Vec::new()))
        .collect();
    for round in 0..rounds {
        for (arm, v) in &mut bulks {
            check_interrupted()?;
            let running = start(*arm, bin, &bed, dir, 1000 + round)?;
            let mib_s = bulk(&bed)?;
            eprintln!("round {round} {:<40} {mib_s:>8.0} MiB/s", arm.name());
            v.push(mib_s);
            let outputs = running.outputs.clone();
            drop(running.stop());
            for o in outputs {
                let _ = fs::remove_file(o);
            }
        }
    }
    drop(bed);
    let json = dir.join("churn.json");
    fs::write(
        &json,
        serde_json::to_string_pretty(&to_json(&phases, &bulks))?,
    )?;
    eprintln!("==> wrote {}", json.display());
    let md = report(args, rounds, seconds, &phases, &bulks)?;
    replace_section(out, BEGIN, END, &md)
}

/// The rounds of every arm at one churn rate.
struct Phase {
    /// Target connections/s; 0: the maximum.
    rate: u32,
    proto: Proto,
    results: Vec<(Arm, Vec<Sample>)>,
}

/// What one phase runs.
struct ChurnPlan<'a> {
    rounds: usize,
    seconds: u64,
    /// Target connections/s; 0: flat out.
    rate: u32,
    workers: u32,
    proto: Proto,
    arms: &'a [Arm],
}

/// Interleaved rounds of the plan's arms.
fn churn_phase(
    bin: &Path,
    bed: &TestBed,
    dir: &Path,
    plan: &ChurnPlan,
    client_ns: u32,
) -> Result<Vec<(Arm, Vec<Sample>)>> {
    let hz = clock_ticks_per_s();
    let mut results: Vec<(Arm, Vec<Sample>)> = plan.arms.iter().map(|a| (*a, Vec::new())).collect();
    for round in 0..plan.rounds {
        for (arm, samples) in &mut results {
            check_interrupted()?;
            let running = start(*arm, bin, bed, dir, round)?;
            let pids = running.pids.clone();
            let before: u64 = pids.iter().map(|p| usage(*p).0).sum();
            let progs_before = pids.first().map(|p| prog_stats(*p)).unwrap_or_default();
            let joins_before = joins_counted(bed);
            let t0 = Instant::now();
            let (made, failed) = churn(bed, plan.seconds, plan.rate, plan.workers, plan.proto)?;
            let wall = t0.elapsed().as_secs_f64();
            let after: Vec<(u64, u64, u64)> = pids.iter().map(|p| usage(*p)).collect();
            let progs_after = pids.first().map(|p| prog_stats(*p)).unwrap_or_default();
            let joins_expected = joins_counted(bed) - joins_before;
            let cpu = after
                .iter()
                .map(|u| u.0)
                .sum::<u64>()
                .saturating_sub(before);
            let rss = after.iter().map(|u| u.1).sum();
            let rss_end = after.iter().map(|u| u.2).sum();
            // Let the tracer write out what is still in its window.
            thread::sleep(Duration::from_millis(300));
            let outputs = running.outputs.clone();
            let attach_ms = running.attach_ms;
            let stderr = running.stop();
            let (shown, lost, joins_shown) = if arm.traces() {
                let c = count_output(
                    *arm,
                    plan.proto,
                    &outputs[0],
                    stderr.first().map_or("", String::as_str),
                    client_ns,
                );
                (Some(c.created), c.lost, c.joins)
            } else {
                (None, None, None)
            };
            let s = Sample {
                conns_per_s: made as f64 / wall,
                made,
                failed,
                cpu_pct: cpu as f64 / hz / wall * 100.0,
                rss_kib: rss,
                rss_end_kib: rss_end,
                shown,
                lost,
                joins_shown,
                joins_expected,
                attach_ms,
                kernel_ns: if arm.has_programs() {
                    kernel_ns(&progs_before, &progs_after)
                } else {
                    None
                },
            };
            eprintln!(
                "round {round} {:<40} {:>8.0} conn/s  cpu {:>5.1}%  rss {:>6} KiB  shown {:?}/{} joins {:?}/{} lost {:?} kernel {:?} ns attach {:?} ms",
                arm.name(),
                s.conns_per_s,
                s.cpu_pct,
                s.rss_kib,
                s.shown,
                s.made,
                s.joins_shown,
                s.joins_expected,
                s.lost,
                s.kernel_ns.map(|n| n.round()),
                s.attach_ms.map(|n| n.round()),
            );
            if let Some(summary) = stderr
                .iter()
                .flat_map(|e| e.lines())
                .find(|l| l.contains(" lost ("))
            {
                eprintln!("        {summary}");
            }
            samples.push(s);
            for o in outputs {
                let _ = fs::remove_file(o);
            }
        }
    }
    Ok(results)
}

fn to_json(phases: &[Phase], bulks: &[(Arm, Vec<f64>)]) -> serde_json::Value {
    use serde_json::json;
    json!({
        "churn": phases.iter().map(|p| json!({
            "rate": p.rate,
            "protocol": if p.proto == Proto::Mptcp { "mptcp" } else { "tcp" },
            "arms": p.results.iter().map(|(arm, v)| json!({
                "arm": arm.key(),
                "rounds": v.iter().map(|s| json!({
                    "conns_per_s": s.conns_per_s,
                    "made": s.made,
                    "failed": s.failed,
                    "cpu_pct": s.cpu_pct,
                    "rss_kib": s.rss_kib,
                    "rss_end_kib": s.rss_end_kib,
                    "shown": s.shown,
                    "lost": s.lost,
                    "joins_shown": s.joins_shown,
                    "joins_expected": s.joins_expected,
                    "attach_ms": s.attach_ms,
                    "kernel_ns_per_state_change": s.kernel_ns,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "bulk_mib_s": bulks.iter().map(|(arm, v)| json!({"arm": arm.key(), "rounds": v})).collect::<Vec<_>>(),
    })
}

/// What the tables say about where they were measured.
struct Machine {
    cpu_model: String,
    cores: usize,
    kernel: String,
    /// `YYYY-MM-DD HH:MM UTC`.
    date: String,
}

impl Machine {
    fn this() -> Result<Machine> {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "?".into());
        let cores = thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?;
        let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
        Ok(Machine {
            cpu_model,
            cores,
            kernel,
            date,
        })
    }
}

fn report(
    args: &BenchArgs,
    rounds: usize,
    seconds: u64,
    phases: &[Phase],
    bulks: &[(Arm, Vec<f64>)],
) -> Result<String> {
    let Machine {
        cpu_model,
        cores,
        kernel,
        date,
    } = Machine::this()?;
    let mut o = String::new();
    use std::fmt::Write as _;
    writeln!(o, "{BEGIN}")?;
    writeln!(
        o,
        "## Churn: what tracing costs the traffic it watches (`cargo xtask bench`)\n"
    )?;
    writeln!(
        o,
        "Measured by `sudo cargo xtask bench{}` ({rounds} rounds of {seconds} s per arm and \
         phase, {} client threads) on {date}: {cores} cores ({cpu_model}), Linux {kernel}. The \
         seed's test bed; the client threads open short MPTCP connections (connect, {PAYLOAD} B \
         each way, close; each gets a join from the client's second address), then plain TCP \
         connections (the same exchange, no MPTCP socket anywhere); the arms take turns, round \
         by round. Machine-readable: `target/bench/churn.json`.\n",
        if args.quick {
            " --quick".to_string()
        } else {
            format!(
                " --rounds {} --seconds {} --rate {} --workers {}",
                args.rounds, args.seconds, args.rate, args.workers
            )
        },
        args.workers,
    )?;
    writeln!(
        o,
        "Columns: connections/s (median, min–max) and its ratio to the baseline of the same \
         phase; the arm's CPU (user + system over the churn, % of one core: for `ip mptcp \
         monitor` both processes); its RSS: the peak (VmHWM, start-up included) and what it \
         held when the churn ended (VmRSS); **kernel**: the arm's eBPF programs' time per \
         state change (`run_time_ns` / `run_cnt` with `kernel.bpf_stats_enabled`, all its \
         programs over the state-change program's runs; ours, or bpftrace's one program); \
         **attach**: from exec to attached (the ready file; for `live` its first program held; \
         for bpftrace its program held and \"Attaching\" printed); **shown / made**: client-side \
         connections printed (`conn_created`; bpftrace: the client socket's CLOSE → SYN_SENT) \
         against connections the generator completed; **joins**: client-side join \
         `subflow_established` printed against the client namespace's MPJoinSynAckRx (the \
         kernel's count of answered joins; bpftrace cannot tell a join from another subflow); \
         **lost**: what the arm reported lost (ours: every cause — ring buffer, maps, skipped \
         program runs, netlink; bpftrace: its \"Lost N events\").\n"
    )?;
    for p in phases {
        let base = median(p.results[0].1.iter().map(|s| s.conns_per_s).collect());
        writeln!(
            o,
            "### {}\n",
            match (p.proto, p.rate) {
                (Proto::Mptcp, 0) => "MPTCP at the machine's maximum churn".to_string(),
                (Proto::Mptcp, r) => format!("MPTCP at a target of {r} connections/s"),
                _ => "Plain TCP at the machine's maximum churn (no MPTCP anywhere)".to_string(),
            }
        )?;
        writeln!(
            o,
            "| arm | connections/s | ratio | CPU % of a core | RSS peak / held | kernel ns / state change | attach | shown / made | joins shown / counted | lost |"
        )?;
        writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for (arm, v) in &p.results {
            let rates: Vec<f64> = v.iter().map(|s| s.conns_per_s).collect();
            let (lo, hi) = spread(&rates);
            let m = median(rates);
            let dash = || "—".to_string();
            let cpu = median(v.iter().map(|s| s.cpu_pct).collect());
            let rss = v.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            let held = v.iter().map(|s| s.rss_end_kib).max().unwrap_or(0);
            let kns: Vec<f64> = v.iter().filter_map(|s| s.kernel_ns).collect();
            let att: Vec<f64> = v.iter().filter_map(|s| s.attach_ms).collect();
            let shown: u64 = v.iter().filter_map(|s| s.shown).sum();
            let made: u64 = v.iter().map(|s| s.made).sum();
            let joins: u64 = v.iter().filter_map(|s| s.joins_shown).sum();
            let counted: u64 = v.iter().map(|s| s.joins_expected).sum();
            let lost: Option<u64> = v.iter().map(|s| s.lost).sum();
            let baseline = *arm == Arm::Baseline;
            writeln!(
                o,
                "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                arm.name(),
                if base > 0.0 { m / base } else { 0.0 },
                if baseline {
                    dash()
                } else {
                    format!("{cpu:.1}")
                },
                if baseline {
                    dash()
                } else {
                    format!(
                        "{:.1} / {:.1} MiB",
                        rss as f64 / 1024.0,
                        held as f64 / 1024.0
                    )
                },
                if kns.is_empty() {
                    dash()
                } else {
                    format!("{:.0}", median(kns))
                },
                if att.is_empty() {
                    dash()
                } else {
                    format!("{:.0} ms", median(att))
                },
                if arm.traces() {
                    format!("{shown} / {made}")
                } else {
                    dash()
                },
                if arm.traces() && *arm != Arm::Bpftrace && p.proto == Proto::Mptcp {
                    format!("{joins} / {counted}")
                } else {
                    dash()
                },
                lost.map_or_else(dash, |l| l.to_string()),
            )?;
        }
        let failed: u64 = p
            .results
            .iter()
            .flat_map(|(_, v)| v)
            .map(|s| s.failed)
            .sum();
        writeln!(o, "\nFailed connects in this phase: {failed}.\n")?;
    }
    writeln!(o, "### Bulk transfer\n")?;
    writeln!(
        o,
        "One {} MiB MPTCP transfer over both paths per arm and round.\n",
        BULK_BYTES >> 20
    )?;
    writeln!(o, "| arm | MiB/s, median (min–max) | ratio |")?;
    writeln!(o, "|---|---:|---:|")?;
    let base = median(bulks[0].1.clone());
    for (arm, v) in bulks {
        let (lo, hi) = spread(v);
        let m = median(v.clone());
        writeln!(
            o,
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {:.2} |",
            arm.name(),
            if base > 0.0 { m / base } else { 0.0 }
        )?;
    }
    writeln!(o, "{END}")?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_between_its_markers_or_appended() {
        let path = std::env::temp_dir().join(format!("xtask-bench-{}.md", std::process::id()));
        fs::write(
            &path,
            "# B\n\nA <!-- s:begin -->old<!-- s:end --> Z\n<!-- t:begin -->\n",
        )
        .unwrap();
        replace_section(&path, "<!-- s:begin -->", "<!-- s:end -->", "NEW").unwrap();
        // The other section's lone begin marker is no section: appended after it.
        replace_section(&path, "<!-- t:begin -->", "<!-- t:end -->", "T").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(text, "# B\n\nA NEW Z\n<!-- t:begin -->\nT\n");
    }
}
