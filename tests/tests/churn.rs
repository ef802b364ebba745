//! No silent loss at the highest churn this machine makes: as many short MPTCP connections
//! (each with an MP_JOIN attempt racing its close) as the clients manage in a fixed time, with
//! `mptcp-trace events --json` attached. Then, per connection, `conn_created` and `conn_closed`
//! are both seen and every `subflow_established` has its `subflow_closed` — or the tracer's
//! loss counters (its `lost` events) account for every gap.
//!
//! Sized by time, not by count, so the same test runs in the VM matrix (TCG) with fewer
//! connections. `MPTCP_TRACE_CHURN_SECS` changes the duration (default 10 s).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsFd,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    mptcp_trace_bin, peer, require_root, tag, testbed, ChildGuard, Event, Kind,
};
use mptcp_user::upgrade::raw_bpf;
use peer::Proto;
use testbed::TestBed;

/// A connection incarnation: netns, token and the moment it started (`conn_created`'s
/// `ts_ns`, `conn_closed`'s `ts_ns - duration_ns`): tokens are reused over tens of thousands of
/// connections, the start time tells them apart.
type ConnKey = (u32, String, u64);
/// A subflow: netns, token, local and remote endpoint.
type SubflowKey = (
    u32,
    String,
    Option<IpAddr>,
    Option<u16>,
    Option<IpAddr>,
    Option<u16>,
);

/// Keys with their (opened, closed) counts that do not balance.
type Gaps<'a, K> = Vec<(&'a K, (u32, u32))>;

/// What the tracer reported, folded as the lines arrive (a few hundred thousand events would
/// not fit the tests' usual collect-every-line helper).
#[derive(Default)]
struct Tally {
    /// Per connection: (conn_created, conn_closed).
    conns: HashMap<ConnKey, (u32, u32)>,
    /// Per subflow: (subflow_established, subflow_closed).
    subflows: HashMap<SubflowKey, (u32, u32)>,
    /// Sum of the `lost` events' counts.
    lost: u64,
    events: u64,
}

impl Tally {
    fn add(&mut self, e: &Event, netns: &[u32]) {
        self.events += 1;
        if e.event == Kind::Lost {
            self.lost += e.count.unwrap_or(0);
            return;
        }
        let Some(ns) = e.netns.filter(|n| netns.contains(n)) else {
            return;
        };
        let token = e.token.clone().unwrap_or_default();
        match e.event {
            Kind::ConnCreated => self.conns.entry((ns, token, e.ts_ns)).or_default().0 += 1,
            Kind::ConnClosed => {
                // No duration: a connection the tracer did not see start (a gap, shown below).
                let start = e.ts_ns - e.duration_ns.unwrap_or(0);
                self.conns.entry((ns, token, start)).or_default().1 += 1;
            }
            Kind::SubflowEstablished | Kind::SubflowClosed => {
                let key = (ns, token, e.saddr, e.sport, e.daddr, e.dport);
                let s = self.subflows.entry(key).or_default();
                if e.event == Kind::SubflowEstablished {
                    s.0 += 1;
                } else {
                    s.1 += 1;
                }
            }
            _ => {}
        }
    }

    /// Connections with created ≠ 1 or closed ≠ 1, and subflows established but not closed
    /// (or closed twice).
    fn gaps(&self) -> (Gaps<'_, ConnKey>, Gaps<'_, SubflowKey>) {
        let conns = self
            .conns
            .iter()
            .filter(|(_, &(c, d))| c != 1 || d != 1)
            .map(|(k, &v)| (k, v))
            .collect();
        // A subflow that failed before ESTABLISHED reports only its close: not a gap.
        let subflows = self
            .subflows
            .iter()
            .filter(|(_, &(e, c))| e > c || (e > 0 && c > e))
            .map(|(k, &v)| (k, v))
            .collect();
        (conns, subflows)
    }

    fn settled(&self) -> bool {
        let (c, s) = self.gaps();
        c.is_empty() && s.is_empty()
    }
}

/// `mptcp-trace events --json --netns NS`, its lines folded into a shared [`Tally`].
struct Traced {
    child: ChildGuard,
    ready: std::path::PathBuf,
    reader: thread::JoinHandle<u64>,
    stderr: thread::JoinHandle<String>,
}

impl Traced {
    fn start(ns: &str, tally: Arc<Mutex<Tally>>, netns: [u32; 2]) -> Traced {
        let ready = std::env::temp_dir().join(format!("mptcp-trace-ready-{ns}"));
        let _ = std::fs::remove_file(&ready);
        let mut child = ChildGuard(
            Command::new(mptcp_trace_bin())
                .args(["events", "--json", "--netns", ns, "--ready-file"])
                .arg(&ready)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn mptcp-trace"),
        );
        let out = child.0.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            let mut lost = 0;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let e: Event = serde_json::from_str::<mptcp_user::event::Event>(&line)
                    .map(Event::from)
                    .unwrap_or_else(|err| panic!("bad NDJSON line {line:?}: {err}"));
                if e.event == Kind::Lost {
                    lost += e.count.unwrap_or(0);
                }
                tally.lock().unwrap().add(&e, &netns);
            }
            lost
        });
        let mut err = child.0.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        while !ready.exists() {
            if child.0.try_wait().unwrap().is_some() {
                panic!(
                    "mptcp-trace exited before it was ready:\n{}",
                    stderr.join().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "mptcp-trace not ready");
            thread::sleep(Duration::from_millis(20));
        }
        Traced {
            child,
            ready,
            reader,
            stderr,
        }
    }

    /// Entries in this tracer's connection, subflow and claim maps.
    fn map_fill(&self) -> Vec<(String, usize)> {
        let progs = prog_ids_of(self.child.0.id());
        let mut maps = std::collections::BTreeSet::new();
        for p in aya::programs::loaded_programs().filter_map(Result::ok) {
            if progs.contains(&p.id()) {
                maps.extend(p.map_ids().ok().flatten().unwrap_or_default());
            }
        }
        maps.into_iter()
            .filter_map(|id| {
                let info = aya::maps::MapInfo::from_id(id).ok()?;
                let name = info.name_as_str()?.to_string();
                if !["CONNS", "SUBFLOWS", "CLAIMS"].contains(&name.as_str()) {
                    return None;
                }
                let map = aya::maps::MapData::from_id(id).ok()?;
                let n = raw_bpf::count_keys(map.fd().as_fd(), info.key_size() as usize)
                    .expect("count map keys");
                Some((name, n))
            })
            .collect()
    }

    /// Program runs the kernel skipped for this tracer's programs (re-entry on one CPU): loss
    /// the ring-buffer counter cannot see (the pipeline reports it beside `lost`).
    fn recursion_misses(&self) -> u64 {
        let progs = prog_ids_of(self.child.0.id());
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| progs.contains(&p.id()))
            .map(|p| {
                let fd = p.fd().expect("open the tracer's program");
                raw_bpf::recursion_misses(fd.as_fd())
                    .expect("program info")
                    .unwrap_or(0)
            })
            .sum()
    }

    /// SIGINT (as Ctrl-C, so it prints its summary); returns its stderr and the sum of its
    /// `lost` events.
    fn stop(mut self) -> (String, u64) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGINT) };
        let status = self.child.0.wait().unwrap();
        let lost = self.reader.join().unwrap();
        let stderr = self.stderr.join().unwrap();
        let _ = std::fs::remove_file(&self.ready);
        assert!(status.success(), "tracer exit {status:?}:\n{stderr}");
        (stderr, lost)
    }
}

fn prog_ids_of(pid: u32) -> std::collections::HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Accepts on `threads` threads until `stop`: reads to EOF, answers with the byte count, closes.
fn serve(
    listener: TcpListener,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    listener.set_nonblocking(true).unwrap();
    let listener = Arc::new(listener);
    (0..threads)
        .map(|_| {
            let (l, stop) = (listener.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = match l.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut total = 0u64;
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = conn.write_all(&total.to_be_bytes());
                }
            })
        })
        .collect()
}

/// One short connection: connect, write, half-close, read the answer, close.
fn one_connection(addr: SocketAddr) -> std::io::Result<()> {
    let mut c = peer::connect(addr, Proto::Mptcp)?;
    c.write_all(&[0x5a; 1024])?;
    peer::finish(&mut c).map(drop)
}

#[test]
fn maximum_churn_loses_nothing_silently() {
    require_root();
    let secs: u64 = std::env::var("MPTCP_TRACE_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let bed = TestBed::create(&tag("churn")).unwrap();
    let netns = [
        TestBed::netns_inode(&bed.client).unwrap(),
        TestBed::netns_inode(&bed.server).unwrap(),
    ];

    // One tracer per end, each filtered in the kernel to its namespace: then its maps hold
    // only this test's connections, and must be empty once they are all gone.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tracers: Vec<Traced> = [&bed.client, &bed.server]
        .into_iter()
        .map(|ns| Traced::start(ns, tally.clone(), netns))
        .collect();

    // Tens of thousands of connections from one client address: reuse TIME_WAIT ports and
    // widen the port range, or connect() soon fails with EADDRNOTAVAIL.
    for (key, value) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
    ] {
        testbed::sysctl(&bed.client, key, value).unwrap();
    }
    let addr: SocketAddr = "10.0.0.1:4351".parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .expect("listen in the server netns");
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(listener, 4, stop.clone());
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..client_threads())
        .map(|_| {
            let (made, failed) = (made.clone(), failed.clone());
            testbed::spawn_in_netns(&bed.client, move || {
                while Instant::now() < until {
                    match one_connection(addr) {
                        Ok(()) => made.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
            .unwrap()
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let made = made.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    eprintln!("churn: {made} connections in {secs} s ({failed} failed)");
    assert!(made > 0, "no connection was made");

    // Let every close reach the tracer (subflows linger a little after the sockets close).
    let settle = Instant::now() + Duration::from_secs(30);
    while !tally.lock().unwrap().settled() && Instant::now() < settle {
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    // No leaked entry: every connection and subflow the programs tracked was closed and
    // forgotten (a leaked entry is a connection whose close was never reported).
    let leak_deadline = Instant::now() + Duration::from_secs(30);
    let leaks = loop {
        let leaks: Vec<(String, usize)> = tracers.iter().flat_map(Traced::map_fill).collect();
        if leaks.iter().all(|(_, n)| *n == 0) || Instant::now() > leak_deadline {
            break leaks;
        }
        thread::sleep(Duration::from_millis(500));
    };
    // Connections the kernel still holds (the oracle: ss) keep their entries, rightly.
    let open: Vec<String> = [&bed.client, &bed.server]
        .iter()
        .flat_map(|ns| integration_tests::mptcp_sockets_open(ns))
        .collect();
    let skipped: u64 = tracers.iter().map(Traced::recursion_misses).sum();
    let stderr: Vec<(String, u64)> = tracers.into_iter().map(Traced::stop).collect();
    // A close whose program run the kernel skipped leaves its socket's entry behind (and a
    // connection's CLAIMS entry) until the address is reused, where it counts as stale: such
    // a run is counted loss. A leak with no skipped run is a close never seen.
    // One skipped run is one socket's state change: at most one CONNS or SUBFLOWS entry; a
    // connection still open holds one CONNS entry and its subflows' (counted once: generous
    // only for connections the kernel has not closed).
    let leaked: u64 = leaks
        .iter()
        .filter(|(m, _)| m != "CLAIMS")
        .map(|(_, n)| *n as u64)
        .sum();
    assert!(
        leaked <= skipped + open.len() as u64,
        "entries left in the tracers' maps after every connection closed: {leaks:?}, with \
         {skipped} program runs skipped and the kernel holding {open:?}\n{stderr:?}"
    );

    let t = tally.lock().unwrap();
    let (conn_gaps, subflow_gaps) = t.gaps();
    let created: u64 = t.conns.values().map(|&(c, _)| c as u64).sum();
    let joins = t.subflows.len() as u64;
    eprintln!(
        "tracers: {} events, {created} conn_created, {joins} subflows, {} lost, {skipped} runs \
         skipped (recursion); gaps: {} connections, {} subflows\n{stderr:?}",
        t.events,
        t.lost,
        conn_gaps.len(),
        subflow_gaps.len()
    );
    // Both ends of every connection the clients completed were seen (and more: failed
    // connects are connections too).
    assert!(
        created + t.lost >= 2 * made,
        "{created} conn_created for {made} connections on two ends, {} lost",
        t.lost
    );
    // Every connection (and every subflow) with a gap needs at least one lost event to
    // account for it: a gap with nothing lost is silent loss.
    let gaps = (conn_gaps.len() + subflow_gaps.len()) as u64;
    assert!(
        gaps <= t.lost + skipped,
        "{gaps} gaps but only {} events reported lost and {skipped} program runs skipped \
         (silent loss)\nconnections: {:?}\nsubflows: {:?}",
        t.lost,
        &conn_gaps[..conn_gaps.len().min(20)],
        &subflow_gaps[..subflow_gaps.len().min(20)]
    );
    // Each tracer's summary agrees with its `lost` events.
    for (summary, lost) in &stderr {
        assert!(
            summary.contains(&format!(" {lost} lost")),
            "summary vs lost events ({lost}):\n{summary}"
        );
    }
}

/// Client threads: `MPTCP_TRACE_CHURN_THREADS`, default 3 — with the tracer and the servers
/// they saturate a 2-core machine; more only makes the tracer's reader lose the race.
fn client_threads() -> usize {
    std::env::var("MPTCP_TRACE_CHURN_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}
