//! `cargo xtask bench` (root; never part of `cargo xtask test`): what tracing costs the traffic
//! it watches, measured side by side in one run. In the seed's test bed, a churn generator
//! (short MPTCP connections — connect, 1 KiB each way, close — from worker threads in the
//! client namespace, at a target rate or as fast as the machine goes) runs for a few seconds
//! per round, with one arm attached: nothing (the baseline), `events --json`, `events` (text),
//! the exporter (scraped every second), `ip mptcp monitor` in both namespaces. Rounds are
//! interleaved (A/B/A/B…), and each arm reports the median and spread of: connections/s and
//! its ratio to the baseline of the same run, the arm's CPU (user + system, % of one core) and
//! peak RSS, and for the tracer arms the connections it showed against those the generator
//! made, and what it reported lost. The results replace the churn section of BENCHMARKS.md.

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
    /// Write the results here instead of BENCHMARKS.md (the churn section is replaced).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

const PORT: u16 = 5201;
const PAYLOAD: usize = 1024;
const BEGIN: &str = "<!-- bench:churn:begin -->";
const END: &str = "<!-- bench:churn:end -->";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Baseline,
    EventsJson,
    EventsText,
    Exporter,
    IpMonitor,
}

impl Arm {
    const ALL: [Arm; 5] = [
        Arm::Baseline,
        Arm::EventsJson,
        Arm::EventsText,
        Arm::Exporter,
        Arm::IpMonitor,
    ];

    fn name(self) -> &'static str {
        match self {
            Arm::Baseline => "no tracer (baseline)",
            Arm::EventsJson => "`events --json` > file",
            Arm::EventsText => "`events` (text) > file",
            Arm::Exporter => "`exporter`, scraped every 1 s",
            Arm::IpMonitor => "`ip mptcp monitor` in both namespaces",
        }
    }

    fn traces(self) -> bool {
        matches!(self, Arm::EventsJson | Arm::EventsText)
    }
}

/// One round of one arm.
#[derive(Clone, Debug, Default)]
struct Sample {
    conns_per_s: f64,
    made: u64,
    failed: u64,
    cpu_pct: f64,
    rss_kib: u64,
    /// Client-side connections the arm showed (`conn_created` in the client namespace).
    shown: Option<u64>,
    lost: Option<u64>,
}

/// CPU time (user + system) of a process, in clock ticks, and its peak RSS in KiB.
fn usage(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hwm = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, hwm)
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
        for c in &mut self.children {
            // SIGINT, as Ctrl-C: the tracer prints its loss summary.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
            if let Some(mut e) = c.stderr.take() {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                stderr.push(s);
            }
        }
        stderr
    }
}

fn wait_file(p: &Path, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        if let Some(st) = child.try_wait()? {
            bail!("the arm exited before it was ready: {st}");
        }
        ensure!(Instant::now() < deadline, "the arm was not ready in 60 s");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start(arm: Arm, bin: &Path, bed: &TestBed, dir: &Path, round: usize) -> Result<Running> {
    let mut r = Running {
        children: Vec::new(),
        outputs: Vec::new(),
        stop_scraper: Arc::new(AtomicBool::new(false)),
        scraper: None,
    };
    let ready = dir.join(format!("ready-{round}-{arm:?}"));
    let _ = fs::remove_file(&ready);
    let netns = ["--netns", &bed.client, "--netns", &bed.server];
    match arm {
        Arm::Baseline => {}
        Arm::EventsJson | Arm::EventsText => {
            let out = dir.join(format!("events-{round}-{arm:?}.txt"));
            let mut cmd = Command::new(bin);
            cmd.arg("events");
            if arm == Arm::EventsJson {
                cmd.arg("--json");
            }
            let mut c = cmd
                .args(netns)
                .arg("--ready-file")
                .arg(&ready)
                .stdout(fs::File::create(&out)?)
                .stderr(Stdio::piped())
                .spawn()?;
            wait_file(&ready, &mut c)?;
            r.children.push(c);
            r.outputs.push(out);
        }
        Arm::Exporter => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let listen = format!("127.0.0.1:{port}");
            let mut c = Command::new(bin)
                .args(["exporter", "--listen", &listen])
                .args(netns)
                .arg("--ready-file")
                .arg(&ready)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            wait_file(&ready, &mut c)?;
            r.children.push(c);
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
    Ok(r)
}

/// The server: acceptor threads in the server namespace that read to EOF and close.
fn serve(bed: &TestBed, threads: u32) -> Result<()> {
    let addr: SocketAddr = format!("{}:{PORT}", testbed::RED_SERVER_V4).parse()?;
    let listener = Arc::new(testbed::in_netns(&bed.server, move || {
        peer::listen(addr, Proto::Mptcp)
    })??);
    for _ in 0..threads {
        let l = listener.clone();
        thread::spawn(move || {
            let mut buf = [0u8; PAYLOAD];
            while let Ok((mut c, _)) = l.accept() {
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

/// Runs the churn for `secs` at `rate` conn/s (0: flat out) from `workers` threads in the client
/// namespace: (connections made, failed).
fn churn(bed: &TestBed, secs: u64, rate: u32, workers: u32) -> Result<(u64, u64)> {
    let addr: SocketAddr = format!("{}:{PORT}", testbed::RED_SERVER_V4).parse()?;
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
            while Instant::now() < end {
                if let Some(e) = every {
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                    next += e;
                }
                let ok = (|| -> std::io::Result<()> {
                    let mut s = peer::connect(addr, Proto::Mptcp)?;
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

/// Client-side `conn_created` lines in an `events` output, and the loss its summary gave.
fn shown_and_lost(out: &Path, stderr: &str, json: bool, client_ns: u32) -> (u64, Option<u64>) {
    let text = fs::read_to_string(out).unwrap_or_default();
    let ns = format!("netns={client_ns}");
    let shown = text
        .lines()
        .filter(|l| {
            if json {
                l.contains("\"event\":\"conn_created\"") && l.contains("\"side\":\"client\"")
            } else {
                l.contains("conn_created") && l.contains(" client ") && l.contains(&ns)
            }
        })
        .count() as u64;
    // The summary: `mptcp-trace: N events shown, M lost (ring buffer …)`.
    let lost = stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "lost")
        .and_then(|w| w[0].parse().ok());
    (shown, lost)
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
    let root = workspace_root();
    eprintln!("==> cargo build --release -p mptcp-user");
    let st = cargo()
        .args(["build", "--release", "-p", "mptcp-user"])
        .current_dir(&root)
        .status()?;
    ensure!(st.success(), "release build failed");
    let bin = root.join("target/release/mptcp-trace");
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let bed = TestBed::create(&format!("bench{}", std::process::id()))
        .context("building the test bed")?;
    let client_ns = TestBed::netns_inode(&bed.client)?;
    // Tens of thousands of connections from one address within TIME_WAIT: reuse its ports and
    // widen the range, or connect() soon fails with EADDRNOTAVAIL.
    testbed::sysctl(&bed.client, "net.ipv4.tcp_tw_reuse", "1")?;
    testbed::sysctl(&bed.client, "net.ipv4.ip_local_port_range", "1024 65535")?;
    serve(&bed, args.workers.max(4))?;
    let hz = clock_ticks_per_s();
    let mut results: Vec<(Arm, Vec<Sample>)> = Arm::ALL.iter().map(|a| (*a, Vec::new())).collect();
    for round in 0..args.rounds {
        for (arm, samples) in &mut results {
            let running = start(*arm, &bin, &bed, &dir, round)?;
            let pids: Vec<u32> = running.children.iter().map(Child::id).collect();
            let before: u64 = pids.iter().map(|p| usage(*p).0).sum();
            let t0 = Instant::now();
            let (made, failed) = churn(&bed, args.seconds, args.rate, args.workers)?;
            let wall = t0.elapsed().as_secs_f64();
            let after: Vec<(u64, u64)> = pids.iter().map(|p| usage(*p)).collect();
            let cpu = after
                .iter()
                .map(|u| u.0)
                .sum::<u64>()
                .saturating_sub(before);
            let rss = after.iter().map(|u| u.1).sum();
            // Let the tracer write out what is still in its window.
            thread::sleep(Duration::from_millis(300));
            let outputs = running.outputs.clone();
            let stderr = running.stop();
            let (shown, lost) = if arm.traces() {
                let (s, l) = shown_and_lost(
                    &outputs[0],
                    stderr.first().map_or("", String::as_str),
                    *arm == Arm::EventsJson,
                    client_ns,
                );
                (Some(s), l)
            } else {
                (None, None)
            };
            let s = Sample {
                conns_per_s: made as f64 / wall,
                made,
                failed,
                cpu_pct: cpu as f64 / hz / wall * 100.0,
                rss_kib: rss,
                shown,
                lost,
            };
            eprintln!(
                "round {round} {:<40} {:>8.0} conn/s  cpu {:>5.1}%  rss {:>6} KiB  shown {:?}/{} lost {:?} failed {}",
                arm.name(),
                s.conns_per_s,
                s.cpu_pct,
                s.rss_kib,
                s.shown,
                s.made,
                s.lost,
                s.failed
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
    drop(bed);
    let md = report(&args, &results)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    let old = fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{md}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{}\n{md}\n", old.trim_end()),
    };
    fs::write(&path, new)?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

fn report(args: &BenchArgs, results: &[(Arm, Vec<Sample>)]) -> Result<String> {
    let base = median(
        results[0]
            .1
            .iter()
            .map(|s| s.conns_per_s)
            .collect::<Vec<_>>(),
    );
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
    let mut o = String::new();
    use std::fmt::Write as _;
    writeln!(o, "{BEGIN}")?;
    writeln!(
        o,
        "## Churn: what tracing costs the traffic it watches (`cargo xtask bench`)\n"
    )?;
    writeln!(
        o,
        "Measured by `sudo cargo xtask bench --rounds {} --seconds {} --rate {} --workers {}` on \
         {date}: {cores} cores ({cpu_model}), Linux {kernel}. The seed's test bed; {} client \
         threads open short MPTCP connections (connect, {PAYLOAD} B each way, close; each gets \
         a join from the client's second address) {}; the arms take turns, round by round. CPU \
         is the arm's processes' user + system time over the churn, in % of one core; RSS their \
         peak. \"Shown\" counts the client-side `conn_created` the arm printed against the \
         connections the generator completed.\n",
        args.rounds,
        args.seconds,
        args.rate,
        args.workers,
        args.workers,
        if args.rate > 0 {
            format!("at a target of {} connections/s", args.rate)
        } else {
            "as fast as they can".to_string()
        },
    )?;
    writeln!(
        o,
        "| arm | connections/s, median (min–max) | ratio to baseline | CPU % of a core | peak RSS | shown / made | lost |"
    )?;
    writeln!(o, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (arm, v) in results {
        let rates: Vec<f64> = v.iter().map(|s| s.conns_per_s).collect();
        let (lo, hi) = spread(&rates);
        let m = median(rates);
        let cpu = median(v.iter().map(|s| s.cpu_pct).collect());
        let rss = v.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let shown: u64 = v.iter().filter_map(|s| s.shown).sum();
        let made: u64 = v.iter().map(|s| s.made).sum();
        let lost: Option<u64> = v.iter().map(|s| s.lost).sum();
        writeln!(
            o,
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {:.2} | {} | {} | {} | {} |",
            arm.name(),
            if base > 0.0 { m / base } else { 0.0 },
            if *arm == Arm::Baseline {
                "—".to_string()
            } else {
                format!("{cpu:.1}")
            },
            if *arm == Arm::Baseline {
                "—".to_string()
            } else {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            },
            if arm.traces() {
                format!("{shown} / {made}")
            } else {
                "—".to_string()
            },
            lost.map_or("—".to_string(), |l| l.to_string()),
        )?;
    }
    let failed: u64 = results.iter().flat_map(|(_, v)| v).map(|s| s.failed).sum();
    writeln!(o, "\nFailed connects over the whole run: {failed}.")?;
    writeln!(o, "{END}")?;
    Ok(o)
}
