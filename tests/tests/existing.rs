//! Connections open before the tracer starts: the start-up snapshot reports each once
//! (`conn_existing`, then its subflows as `subflow_established` with `existing: true`), with
//! the owner from the socket-inode → process mapping, and their close is complete and in
//! order. Oracles: `ip mptcp monitor` (tokens), `ss -tn` in each namespace (subflow ports), the
//! pids of the processes the test spawned (owners).

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    mptcp_peer_bin, mptcp_trace_bin, require_root, run, tag, testbed, ChildGuard, Event, Kind,
    Monitor, Side, Tmux, Tracer,
};
use mptcp_user::event::Data;
use testbed::TestBed;

/// Upper bound for events to show up: generous for the VM matrix (qemu without KVM).
const WAIT: Duration = Duration::from_secs(90);
const PORT: u16 = 10_600;

/// 60 connections on the host; fewer in the VM matrix's slow qemu guests.
fn connections() -> usize {
    if std::env::var_os("MPTCP_TRACE_VM").is_some() {
        12
    } else {
        60
    }
}

/// The server (accepts `n`, holds each until the client closes) and the client (opens `n`,
/// holds them until told), each a process of its own in its namespace.
struct Peers {
    server: ChildGuard,
    client: ChildGuard,
    client_in: ChildStdin,
    /// Kept open so that their last line does not fail on a closed pipe.
    _out: [BufReader<ChildStdout>; 2],
}

impl Peers {
    fn start(bed: &TestBed, n: usize) -> Peers {
        let addr = format!("{}:{PORT}", testbed::RED_SERVER_V4);
        let spawn = |ns: &str, verb: &str| {
            let mut c = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(mptcp_peer_bin())
                .args([verb, &addr, &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn mptcp-peer");
            let mut first = String::new();
            let mut out = BufReader::new(c.stdout.take().unwrap());
            out.read_line(&mut first).unwrap();
            (c, first, out)
        };
        let (server, said, server_out) = spawn(&bed.server, "serve");
        assert_eq!(said.trim(), "listening");
        let (mut client, said, client_out) = spawn(&bed.client, "hold");
        assert_eq!(said.trim(), "ready");
        let client_in = client.stdin.take().unwrap();
        Peers {
            _out: [server_out, client_out],
            server: ChildGuard(server),
            client: ChildGuard(client),
            client_in,
        }
    }

    /// Tells the client to close its connections.
    fn close(&mut self) {
        writeln!(self.client_in, "go").unwrap();
    }
}

/// (local, remote) of the established TCP sockets of `ns` with the test's port on either end:
/// the subflows, as `ss` lists them.
fn ss_subflows(ns: &str) -> BTreeSet<(String, String)> {
    run(
        "ip",
        &["netns", "exec", ns, "ss", "-tnH", "state", "established"],
    )
    .lines()
    .filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // `ADDR%DEV:PORT` for a socket bound to a device (the join's): the address and port.
        let strip = |a: &str| match a.split_once('%') {
            Some((addr, rest)) => format!("{addr}:{}", rest.rsplit_once(':').unwrap().1),
            None => a.to_string(),
        };
        let (local, remote) = (strip(f.get(2)?), strip(f.get(3)?));
        (local.ends_with(&format!(":{PORT}")) || remote.ends_with(&format!(":{PORT}")))
            .then_some((local, remote))
    })
    .collect()
}

/// Waits until every one of the `n` connections has two established subflows in both
/// namespaces (the join is the path manager's, shortly after the connection).
fn wait_for_joins(bed: &TestBed, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (c, s) = (
            ss_subflows(&bed.client).len(),
            ss_subflows(&bed.server).len(),
        );
        if c == 2 * n && s == 2 * n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {} subflows on each side, ss shows {c} (client) and {s} (server)",
            2 * n
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn tuple(e: &Event) -> (String, String) {
    (
        format!("{}:{}", e.saddr.unwrap(), e.sport.unwrap()),
        format!("{}:{}", e.daddr.unwrap(), e.dport.unwrap()),
    )
}

/// A process's comm, from /proc.
fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

fn existing_flag(e: &Event) -> bool {
    matches!(&e.raw, Some(mptcp_user::event::Event { data: Data::SubflowEstablished(d), .. }) if d.existing)
}

/// Checks one namespace's snapshot: `n` conn_existing with the oracle's tokens and the owner,
/// each followed by its two existing subflows whose ends are what `ss` lists. Returns the
/// subflow ports by token.
fn check_snapshot(
    events: &[Event],
    netns: u32,
    n: usize,
    tokens: &BTreeSet<String>,
    (owner, owner_comm): (u32, &str),
    side: Option<Side>,
    ss: &BTreeSet<(String, String)>,
) -> HashMap<String, BTreeSet<(String, String)>> {
    let mine: Vec<&Event> = events.iter().filter(|e| e.netns == Some(netns)).collect();
    let mut by_token: HashMap<String, BTreeSet<(String, String)>> = HashMap::new();
    let mut i = 0;
    while i < mine.len() && mine[i].event == Kind::ConnExisting {
        let c = mine[i];
        let token = c.token.clone().expect("token");
        assert_eq!(c.pid, Some(owner), "owner of {token}: {c:?}");
        assert_eq!(
            c.comm.as_deref(),
            Some(owner_comm),
            "owner of {token}: {c:?}"
        );
        assert_eq!(c.side, side, "{c:?}");
        let Some(mptcp_user::event::Event {
            data: Data::ConnExisting(d),
            ..
        }) = &c.raw
        else {
            unreachable!()
        };
        assert_eq!((d.subflows, d.fallback), (2, false), "{c:?}");
        let subs = &mine[i + 1..i + 3];
        for s in subs {
            assert!(
                s.event == Kind::SubflowEstablished && existing_flag(s),
                "conn_existing {token} is followed by its existing subflows, not {s:?}"
            );
            assert_eq!(s.token.as_ref(), Some(&token));
            assert_eq!(s.pid, Some(owner));
            assert_eq!(s.comm.as_deref(), Some(owner_comm), "{s:?}");
        }
        assert_eq!(
            tuple(c),
            tuple(subs[0]),
            "the tuple is the initial subflow's"
        );
        assert_eq!(
            subs.iter().map(|s| s.join.unwrap()).collect::<Vec<_>>(),
            [false, true]
        );
        let ends: BTreeSet<_> = subs.iter().map(|s| tuple(s)).collect();
        assert!(
            by_token.insert(token.clone(), ends).is_none(),
            "{token} twice"
        );
        i += 3;
    }
    assert_eq!(by_token.len(), n, "conn_existing in netns {netns}");
    let seen: BTreeSet<String> = by_token.keys().cloned().collect();
    assert_eq!(
        &seen, tokens,
        "tokens equal the monitor's ESTABLISHED tokens"
    );
    let all: BTreeSet<_> = by_token.values().flatten().cloned().collect();
    assert_eq!(&all, ss, "subflow ends equal ss -tn's");
    by_token
}

/// After the close: every connection's subflow_closed records (with their real ports) come
/// before its conn_closed, which counts both subflows.
fn check_close(events: &[Event], netns: u32, ends: &HashMap<String, BTreeSet<(String, String)>>) {
    for (token, want) in ends {
        let of: Vec<&Event> = events
            .iter()
            .filter(|e| e.netns == Some(netns) && e.token.as_ref() == Some(token))
            .filter(|e| matches!(e.event, Kind::SubflowClosed | Kind::ConnClosed))
            .collect();
        let kinds: Vec<Kind> = of.iter().map(|e| e.event).collect();
        assert_eq!(
            kinds,
            [Kind::SubflowClosed, Kind::SubflowClosed, Kind::ConnClosed],
            "{token} in netns {netns}: {of:#?}"
        );
        let closed: BTreeSet<_> = of[..2].iter().map(|e| tuple(e)).collect();
        assert_eq!(&closed, want, "{token}: subflow_closed with the real ports");
        assert_eq!(of[2].subflows_total, Some(2), "{:?}", of[2]);
        assert!(of[2].ts_ns >= of[1].ts_ns);
    }
}

#[test]
fn existing_connections_are_reported_once_with_owners_and_close_in_order() {
    require_root();
    let n = connections();
    let bed = TestBed::create(&tag("existing")).expect("test bed");
    let (cns, sns) = (
        TestBed::netns_inode(&bed.client).unwrap(),
        TestBed::netns_inode(&bed.server).unwrap(),
    );
    let (mon_c, mon_s) = (Monitor::start(&bed.client), Monitor::start(&bed.server));
    let mut peers = Peers::start(&bed, n);
    wait_for_joins(&bed, n);
    // A listener of its own process, also older than the tracer, that accepts one
    // connection only after the tracer started.
    let late_addr: std::net::SocketAddr = format!("{}:{}", testbed::RED_SERVER_V4, PORT + 1)
        .parse()
        .unwrap();
    let mut late = Command::new("ip")
        .args(["netns", "exec", &bed.server])
        .arg(mptcp_peer_bin())
        .args(["serve", &late_addr.to_string(), "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mptcp-peer");
    let mut late_out = BufReader::new(late.stdout.take().unwrap());
    let mut said = String::new();
    late_out.read_line(&mut said).unwrap();
    assert_eq!(said.trim(), "listening");
    let late = ChildGuard(late);
    let established = |m: &Monitor| -> BTreeSet<String> {
        m.events()
            .iter()
            .filter(|e| e.kind == "ESTABLISHED")
            .filter_map(|e| e.get("token").map(str::to_string))
            .collect()
    };
    let (tok_c, tok_s) = (established(&mon_c), established(&mon_s));
    assert_eq!((tok_c.len(), tok_s.len()), (n, n), "monitor ESTABLISHED");
    let (ss_c, ss_s) = (ss_subflows(&bed.client), ss_subflows(&bed.server));

    // Only now the tracer: everything above predates it.
    let tracer = Tracer::start(&[]);
    tracer.wait_for("the snapshot", WAIT, |ev| {
        ev.iter()
            .filter(|e| e.event == Kind::SubflowEstablished && existing_flag(e))
            .filter(|e| e.netns == Some(cns) || e.netns == Some(sns))
            .count()
            >= 4 * n
    });
    let (client_pid, server_pid) = (peers.client.0.id(), peers.server.0.id());
    let ev = tracer.events();
    // The owners' comm as the kernel names those processes.
    let (client_comm, server_comm) = (comm_of(client_pid), comm_of(server_pid));
    let ends_c = check_snapshot(&ev, cns, n, &tok_c, (client_pid, &client_comm), None, &ss_c);
    let ends_s = check_snapshot(
        &ev,
        sns,
        n,
        &tok_s,
        (server_pid, &server_comm),
        Some(Side::Server),
        &ss_s,
    );
    // The snapshot goes out first: nothing of these namespaces before it.
    for ns in [cns, sns] {
        let first = ev.iter().position(|e| e.netns == Some(ns)).unwrap();
        assert_eq!(ev[first].event, Kind::ConnExisting);
    }

    // The older listener accepts a new connection: the server's events of it carry the
    // listener process's pid and comm (its process is the only one holding that listener).
    let (late_pid, late_comm) = (late.0.id(), comm_of(late.0.id()));
    let mut conn = testbed::in_netns(&bed.client, move || {
        mptcp_user::peer::connect(late_addr, mptcp_user::peer::Proto::Mptcp)
    })
    .unwrap()
    .unwrap();
    conn.write_all(&[7u8; 1000]).unwrap();
    drop(conn);
    let late_closed = |ev: &[Event]| {
        ev.iter().any(|e| {
            e.netns == Some(sns) && e.event == Kind::ConnClosed && e.sport == Some(PORT + 1)
        })
    };
    tracer.wait_for("the late connection's close", WAIT, late_closed);
    let ev = tracer.events();
    let late_token = ev
        .iter()
        .find(|e| e.netns == Some(sns) && e.event == Kind::ConnCreated && e.sport == Some(PORT + 1))
        .and_then(|e| e.token.clone())
        .expect("the server's conn_created of the late connection");
    let late_events: Vec<&Event> = ev
        .iter()
        .filter(|e| e.netns == Some(sns) && e.token.as_ref() == Some(&late_token))
        .collect();
    assert!(late_events.len() >= 3, "{late_events:#?}");
    for e in &late_events {
        assert_eq!(e.pid, Some(late_pid), "{e:?}");
        assert_eq!(e.comm.as_deref(), Some(late_comm.as_str()), "{e:?}");
    }
    let mut late = late;
    assert!(late.0.wait().unwrap().success());

    peers.close();
    let closed = |ns: u32| {
        move |ev: &[Event]| {
            ev.iter()
                .filter(|e| e.netns == Some(ns) && e.event == Kind::ConnClosed)
                .count()
                >= n
        }
    };
    tracer.wait_for("the client's closes", WAIT, closed(cns));
    tracer.wait_for("the server's closes", WAIT, closed(sns));
    // The held closes are released within their bound, and the reorder window passes.
    thread::sleep(Duration::from_millis(1500));
    let out = tracer.stop();
    check_close(&out.events, cns, &ends_c);
    check_close(&out.events, sns, &ends_s);
    // The later events carry the owner too (the EXISTING map / the stage).
    for e in out.events.iter().filter(|e| {
        e.netns == Some(cns) && e.token.as_ref().is_some_and(|t| ends_c.contains_key(t))
    }) {
        assert_eq!(e.pid, Some(client_pid), "{e:?}");
        assert_eq!(e.comm.as_deref(), Some(client_comm.as_str()), "{e:?}");
    }
    // A skipped program run (the kernel's recursion guard, seen in the one-CPU VM guests) is a
    // counted loss the checks above would have caught had it removed one of these connections'
    // events; every other cause must be zero.
    let lost = out.events.iter().filter_map(|e| e.lost.as_ref());
    let uncounted: u64 = lost
        .map(|l| l.count - l.recursion_misses.unwrap_or(0))
        .sum();
    assert_eq!(uncounted, 0, "{}", out.stderr);
    let _ = peers.client.0.wait();
    let _ = peers.server.0.wait();
    drop((mon_c.stop(), mon_s.stop()));
}

#[test]
fn existing_connections_are_counted_and_shown_by_the_live_view() {
    require_root();
    let n = connections();
    let bed = TestBed::create(&tag("existing-live")).expect("test bed");
    let mut peers = Peers::start(&bed, n);
    wait_for_joins(&bed, n);
    let session = format!("mptcp-existing-{}", std::process::id());
    let tmux = Tmux::start(
        &session,
        &format!(
            "{} live --netns {}; echo EXITED rc=$?; sleep 60",
            mptcp_trace_bin().display(),
            bed.client
        ),
    );
    let want = format!("connections {n} open · subflows {}", 2 * n);
    let (ok, screen) = tmux.wait_for(WAIT, |s| s.contains(&want));
    assert!(ok, "expected {want:?}:\n{screen}");
    // Each row shows its addresses, never `? → ?`.
    assert!(!screen.contains("? → ?"), "{screen}");
    assert!(
        screen.contains(&format!("{}:{PORT}", testbed::RED_SERVER_V4)),
        "{screen}"
    );
    tmux.keys("q");
    let (ok, screen) = tmux.wait_for(WAIT, |s| s.contains("EXITED rc=0"));
    assert!(ok, "{screen}");
    peers.close();
    let _ = peers.client.0.wait();
    let _ = peers.server.0.wait();
}
