//! `mptcp-trace demo`: the seed article's scenario in one command. Builds the two-path test bed
//! in network namespaces, loads the tracer, runs an MPTCP client and server over it (the client
//! waits about a second after connecting so the MP_JOIN subflow over the blue path exists
//! before data flows), shows the live view or streams NDJSON, and removes everything on the
//! way out (duration over, `q`, Ctrl-C, SIGTERM or an error), then prints what crossed each
//! path.
//!
//! The peers open plain TCP sockets and the eBPF upgrade (scoped to this process) makes them
//! MPTCP where the kernel allows it; elsewhere (Linux < 6.6, kernels that refuse BPF
//! trampolines) the demo opens native MPTCP sockets and says so.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashSet},
    io::{self, Write},
    net::SocketAddr,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};

use crate::{
    cli::DemoArgs,
    event::{Data, Event, Side},
    live::{self, State},
    output::{self, Printer},
    peer::{self, Proto},
    select::Selector,
    sys::{netns, signals::Stop},
    testbed::{self, TestBed},
    trace::Pipeline,
    upgrade::{Upgrade, UpgradeError},
};

const PORT: u16 = 4321;
/// Each path's rate limit (tbf on the client's veths), Mbit/s: both paths fill up, so the
/// scheduler uses both subflows, and the demo costs little CPU.
pub const PATH_MBIT: u64 = 50;
const WARMUP: Duration = Duration::from_secs(1);

/// Turns the demo's own plain TCP sockets into MPTCP with the eBPF upgrade, scoped to this
/// process, where the kernel allows it; elsewhere the demo opens native MPTCP sockets. Returns
/// the attached upgrade (kept until the end), the protocol the peers ask for, and what to tell
/// the user — truthfully.
fn try_upgrade() -> (Option<Upgrade>, Proto, String) {
    let policy = Selector::for_pid(std::process::id()).policy(false);
    match Upgrade::attach(policy) {
        Ok(u) => (
            Some(u),
            Proto::Tcp,
            "the demo's client and server open plain TCP sockets; the eBPF upgrade \
             (fmod_ret on update_socket_protocol, scoped to this process) turns them into MPTCP"
                .into(),
        ),
        Err(e) => {
            let why = match e {
                UpgradeError::HookMissing(_) => "it needs Linux ≥ 6.6",
                UpgradeError::TrampolinesRefused(_) => {
                    "this kernel refuses BPF trampolines (fmod_ret); `mptcp-trace upgrade` says why"
                }
                _ => "see `mptcp-trace upgrade --all --count-only`",
            };
            (
                None,
                Proto::Mptcp,
                format!(
                    "the TCP→MPTCP upgrade is not available ({why}); the demo opens native \
                     MPTCP sockets (IPPROTO_MPTCP) instead"
                ),
            )
        }
    }
}

/// One subflow in the summary.
#[derive(Clone, Debug, Default)]
struct PathBytes {
    path: String,
    from: String,
    to: String,
    bytes: Option<u64>,
}

/// A client connection's token and its subflows (by subflow id), in order of arrival.
type ClientConn = (Option<String>, Vec<(u64, PathBytes)>);

/// Client-side connections and their subflows' byte counts, from the events.
#[derive(Debug, Default)]
pub struct Summary {
    client_netns: u32,
    /// conn_id → (token, subflow_id → path)
    conns: BTreeMap<u64, ClientConn>,
    servers: HashSet<u64>,
}

impl Summary {
    fn new(client_netns: u32) -> Self {
        Summary {
            client_netns,
            ..Default::default()
        }
    }

    pub fn absorb(&mut self, e: &Event) {
        let Some(c) = e.conn() else {
            return;
        };
        let id = c.ids.conn;
        if c.netns != Some(self.client_netns) || self.servers.contains(&id) {
            return;
        }
        if let Data::ConnCreated(d) = &e.data {
            if d.side == Side::Server {
                self.servers.insert(id);
                return;
            }
        }
        let (token, subs) = self.conns.entry(id).or_default();
        if token.is_none() {
            *token = c.token.map(|t| t.to_string());
        }
        match &e.data {
            Data::SubflowEstablished(d) => {
                let ifname = d.subflow.ifname.clone().unwrap_or_else(|| "?".into());
                subs.retain(|(sid, _)| *sid != c.ids.subflow);
                subs.push((
                    c.ids.subflow,
                    PathBytes {
                        path: ifname.split('-').next().unwrap_or(&ifname).to_string(),
                        from: d.tuple.saddr.to_string(),
                        to: d.tuple.daddr.to_string(),
                        bytes: None,
                    },
                ));
            }
            Data::SubflowClosed(d) => {
                if let Some((_, p)) = subs.iter_mut().find(|(sid, _)| *sid == c.ids.subflow) {
                    p.bytes = Some(d.bytes_sent);
                }
            }
            _ => {}
        }
    }

    /// Fills subflows that were still open at exit from the live view's last sample.
    fn merge_live(&mut self, state: &State) {
        for c in state.conns.values() {
            let Some((_, subs)) = self.conns.get_mut(&c.key.1) else {
                continue;
            };
            for sf in &c.subflows {
                if let Some((_, p)) = subs.iter_mut().find(|(id, _)| *id == sf.id) {
                    if p.bytes.is_none() && sf.bytes_sent > 0 {
                        p.bytes = Some(sf.bytes_sent);
                    }
                }
            }
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.conns
            .values()
            .filter(|(_, subs)| !subs.is_empty())
            .map(|(token, subs)| {
                let paths: Vec<String> = subs
                    .iter()
                    .map(|(_, p)| {
                        format!(
                            "{} {}→{} {}",
                            p.path,
                            p.from,
                            p.to,
                            p.bytes.map_or(
                                "(no close counters: still open)".into(),
                                crate::text::size
                            )
                        )
                    })
                    .collect();
                format!(
                    "connection {}: {} subflow{} — {}",
                    token.as_deref().unwrap_or("????????"),
                    subs.len(),
                    if subs.len() == 1 { "" } else { "s" },
                    paths.join(", ")
                )
            })
            .collect()
    }
}

/// The server and client threads; stops the client's loop when dropped. The threads are not
/// joined (they may sit in blocking calls); the namespaces go with the [`TestBed`] and the
/// threads with the process.
struct Traffic {
    stop: Arc<AtomicBool>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_traffic(bed: &TestBed, proto: Proto, transfer: Duration, repeat: bool) -> Result<Traffic> {
    let addr: SocketAddr = format!("{}:{PORT}", testbed::RED_SERVER_V4).parse()?;
    let (ready_tx, ready_rx) = std_mpsc::channel();
    testbed::spawn_in_netns(&bed.server, move || -> io::Result<()> {
        let listener = peer::listen(addr, proto);
        let listener = match listener {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return Ok(());
            }
        };
        loop {
            let (conn, _) = listener.accept()?;
            std::thread::spawn(move || peer::serve_one(conn));
        }
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the demo server did not start")?
        .map_err(|e| anyhow!("demo server: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    // About 80% of what both paths carry in `transfer`, as fast as they take it.
    let capacity = 2.0 * PATH_MBIT as f64 * 1e6 / 8.0;
    let plan = peer::Send {
        bytes: (0.8 * capacity * transfer.as_secs_f64()) as u64,
        warmup: WARMUP,
        spread: Duration::ZERO,
    };
    testbed::spawn_in_netns(&bed.client, move || {
        while !st.load(Ordering::Relaxed) {
            if let Err(e) = peer::send(addr, proto, plan) {
                log::warn!("demo client: {e}");
            }
            if !repeat {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })?;
    Ok(Traffic { stop })
}

/// Limits each path of the bed to `mbit` Mbit/s in both directions (a `tbf` qdisc on the
/// four veth ends), so that a bulk transfer fills both paths.
pub fn shape_paths(bed: &TestBed, mbit: u64) -> Result<()> {
    let rate = format!("{mbit}mbit");
    for (ns, side) in [(&bed.client, "client"), (&bed.server, "server")] {
        for path in ["red", "blue"] {
            let dev = format!("{path}-{side}");
            let out = std::process::Command::new("tc")
                .args([
                    "-n", ns, "qdisc", "replace", "dev", &dev, "root", "tbf", "rate",
                ])
                .args([rate.as_str(), "burst", "64kb", "latency", "50ms"])
                .output()
                .context("cannot run `tc` (install iproute2)")?;
            if !out.status.success() {
                anyhow::bail!(
                    "tc qdisc on {dev} in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

/// Whether process `pid` is a running `mptcp-trace demo`: its pid alone could have been
/// reused by any process since the demo died, so its executable must be an mptcp-trace (this
/// very file, or one named so: another build or version) and its arguments must name `demo`.
fn is_running_demo(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        // Gone, or a kernel thread: no demo.
        return false;
    };
    let same_file = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    };
    let ours = same_file(&format!("/proc/{pid}/exe"), "/proc/self/exe")
        || exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("mptcp-trace"));
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    ours && args.split(|&b| b == 0).skip(1).any(|a| a == b"demo")
}

/// The namespaces of test beds whose demo is gone (killed with SIGKILL, say), by name: a
/// demo names them after its pid (`mptcp-client-demoPID`, `mptcp-server-demoPID`). `demo`
/// removes them before it starts; `doctor` reports them with the command that removes them.
pub fn stale_beds() -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(netns::NAMED_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<(String, u32)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("mptcp-client-demo")
                .or_else(|| name.strip_prefix("mptcp-server-demo"))
                .and_then(|p| p.parse::<u32>().ok())?;
            (!is_running_demo(pid)).then_some((name, pid))
        })
        .collect();
    v.sort();
    v
}

/// Removes the test beds of demos whose process is gone ([`stale_beds`]).
fn remove_stale_beds() {
    for (name, pid) in stale_beds() {
        log::warn!("removing {name}, left by demo {pid} (no longer running)");
        let _ = testbed::ip(&["netns", "del", &name]);
    }
}

pub async fn run(mut args: DemoArgs) -> Result<()> {
    // Checked before anything is made: a bad value leaves nothing behind.
    let stats = args
        .stats_interval
        .as_deref()
        .map(|v| crate::trace::stats::parse_interval("--stats-interval", v))
        .transpose()
        .map_err(crate::cli::BadValue)?;
    // From here on SIGINT/SIGTERM/SIGHUP are ours: no signal leaves the test bed behind.
    let mut stop = Stop::install()?;
    if !args.json {
        if let Some(why) = live::no_terminal() {
            eprintln!("mptcp-trace demo: {why}: streaming NDJSON (as with --json)");
            args.json = true;
        }
    }
    {
        use crate::sys::caps::{self, Cap};
        // Namespaces, qdiscs and the tracer: refuse before making anything.
        caps::require(
            &[Cap::SysAdmin, Cap::NetAdmin, Cap::Bpf, Cap::Perfmon],
            "the demo",
        )
        .map_err(crate::loader::LoadError::Privileges)?;
    }
    if !crate::sys::mptcp::in_kernel() {
        return Err(crate::loader::LoadError::NoMptcp.into());
    }
    remove_stale_beds();
    let (upgrade, proto, note) = try_upgrade();
    let tag = format!("demo{}", std::process::id());
    let bed = TestBed::create(&tag).context("building the test bed")?;
    shape_paths(&bed, PATH_MBIT)?;
    let client_ns = TestBed::netns_inode(&bed.client)?;
    let server_ns = TestBed::netns_inode(&bed.server)?;
    let sel = Selector {
        netns: vec![
            netns::Netns {
                inode: client_ns,
                path: netns::named(&bed.client),
            },
            netns::Netns {
                inode: server_ns,
                path: netns::named(&bed.server),
            },
        ],
        ..Selector::default()
    };
    let mut pipe = Pipeline::start(&sel)?;
    if let Some(period) = stats {
        pipe.stats_every(period);
    }
    let summary = Rc::new(RefCell::new(Summary::new(client_ns)));
    let sum = summary.clone();
    let absorb = move |e: &Event| sum.borrow_mut().absorb(e);
    if stop.arrived().await {
        return Ok(());
    }
    let result = if args.json {
        let duration = Duration::from_secs(args.duration.unwrap_or(10));
        // One connection that ends about a second before the duration, so its close counters
        // are in the stream.
        let transfer = duration
            .saturating_sub(WARMUP + Duration::from_millis(2000))
            .max(Duration::from_millis(500));
        eprintln!("mptcp-trace demo: {note}");
        eprintln!(
            "mptcp-trace demo: test bed {} / {}; client {}+{} → server {}:{PORT}",
            bed.client,
            bed.server,
            testbed::RED_CLIENT_V4,
            testbed::BLUE_CLIENT_V4,
            testbed::RED_SERVER_V4
        );
        let traffic = start_traffic(&bed, proto, transfer, false)?;
        let r = json_stream(pipe, absorb, duration, &mut stop).await;
        drop(traffic);
        r
    } else {
        let traffic = start_traffic(&bed, proto, Duration::from_secs(10), true)?;
        let r = live::run(
            pipe,
            absorb,
            live::Options {
                banner: Some(format!("demo ({} / {}): {note}", bed.client, bed.server)),
                duration: args.duration.map(Duration::from_secs),
            },
        )
        .await;
        drop(traffic);
        r.map(|(state, pipe)| {
            summary.borrow_mut().merge_live(&state);
            let (_, totals) = pipe.finish();
            if totals.lost.count > 0 {
                eprintln!("mptcp-trace demo: {}", totals.describe());
            }
        })
    };
    drop(bed);
    drop(upgrade);
    let lines = summary.borrow().lines();
    let mut out: Box<dyn Write> = if args.json {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    };
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    result
}

async fn json_stream(
    mut pipe: Pipeline,
    mut absorb: impl FnMut(&Event),
    duration: Duration,
    stop: &mut Stop,
) -> Result<()> {
    let mut out = Printer::new(io::stdout(), true);
    let until = async {
        tokio::select! {
            _ = stop.recv() => {}
            _ = tokio::time::sleep(duration) => {}
        }
    };
    let end = output::stream(&mut pipe, &mut out, until, &mut absorb).await?;
    let (rest, totals) = pipe.finish();
    if end == output::End::Stopped {
        output::finish(&mut out, &rest, &mut absorb)?;
    }
    eprintln!(
        "mptcp-trace demo: {} events shown, {}",
        out.printed,
        totals.describe()
    );
    Ok(())
}
