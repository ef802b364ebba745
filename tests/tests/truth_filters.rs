//! Issue 10, items 4, 6, 7 and 9, on the seed's test bed against the kernel's own view in the
//! same run (`ip mptcp monitor`, `ss`): a dual-stack listener's IPv4 clients are IPv4, an
//! ADD_ADDR is printed before the join it caused, the connection filters match any subflow and
//! repeat (the bare command takes them), and a `--netns` that cannot be used says why.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::FromRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    bed_announcing_blue, closed_in, events_in, mptcp_ext, mptcp_trace_bin, peer, require_root, run,
    server, tag, testbed, Event, Family, Kind, Monitor, PmEvent, Tmux, Tracer,
};
use peer::{Proto, Send};
use testbed::TestBed;

/// Upper bound for events to show up: generous for the VM matrix (qemu without KVM).
const WAIT: Duration = Duration::from_secs(60);

/// Long enough for the MP_JOIN subflows to join and carry part of it.
const PLAN: Send = Send {
    bytes: 4 << 20,
    warmup: Duration::from_millis(800),
    spread: Duration::from_millis(800),
};

/// An MPTCP client transfer in the client namespace, on its own thread.
fn client(bed: &TestBed, addr: SocketAddr, plan: Send) -> thread::JoinHandle<u64> {
    let ns = bed.client.clone();
    thread::spawn(move || {
        testbed::in_netns(&ns, move || peer::send(addr, Proto::Mptcp, plan))
            .unwrap()
            .expect("client transfer")
    })
}

/// An MPTCP listener on `[::]:port` that also accepts IPv4 (IPV6_V6ONLY=0, set explicitly:
/// `net.ipv6.bindv6only` could say otherwise).
fn dual_stack_listener(port: u16) -> io::Result<TcpListener> {
    let cvt = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain socket calls on a descriptor this function owns; on success it moves into
    // the TcpListener, on failure it is closed through that same owner.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            peer::IPPROTO_MPTCP,
        ))?;
        let listener = TcpListener::from_raw_fd(fd);
        let off: libc::c_int = 0;
        cvt(libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &off as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        cvt(libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ))?;
        cvt(libc::listen(fd, 16))?;
        Ok(listener)
    }
}

/// `ss -tnH state established` in a namespace: (local, peer) address strings of its TCP
/// sockets (MPTCP subflows included), as the kernel reports them.
fn ss_established(netns: &str) -> Vec<(String, String)> {
    run(
        "ip",
        &["netns", "exec", netns, "ss", "-tnH", "state", "established"],
    )
    .lines()
    .filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter).
        (f.len() >= 4).then(|| (f[2].to_string(), f[3].to_string()))
    })
    .collect()
}

/// An address as `ip mptcp monitor` prints it, as the event would carry it.
fn canonical(a: &str) -> IpAddr {
    a.parse::<IpAddr>().unwrap().to_canonical()
}

/// Item 4: an IPv4 client of an `[::]` listener is an IPv4 connection on the server too:
/// family ipv4 and plain IPv4 addresses on every event, both subflows; `-4` shows it, `-6`
/// does not — although the kernel's own tools show the server's sockets as v4-mapped IPv6.
#[test]
fn dual_stack_listener_reports_ipv4_clients_as_ipv4() {
    require_root();
    let bed = TestBed::create(&tag("dual")).unwrap();
    let sns = TestBed::netns_inode(&bed.server).unwrap();
    let mon = Monitor::start(&bed.server);
    let v4 = Tracer::start(&["--netns", &bed.server, "-4"]);
    let v6 = Tracer::start(&["--netns", &bed.server, "-6"]);
    let port = 4340;
    let listener = testbed::in_netns(&bed.server, move || dual_stack_listener(port))
        .unwrap()
        .expect("dual-stack listener in the server netns");
    let srv = thread::spawn(move || peer::serve(&listener, 1));
    let addr = SocketAddr::new(testbed::RED_SERVER_V4.parse().unwrap(), port);
    let plan = Send {
        bytes: 4 << 20,
        warmup: Duration::from_millis(800),
        spread: Duration::from_secs(3),
    };
    let cli = client(&bed, addr, plan);
    // While the transfer runs: the server's sockets, as the kernel shows them.
    let deadline = Instant::now() + WAIT;
    let sockets = loop {
        let s = ss_established(&bed.server);
        if s.iter()
            .any(|(_, p)| p.starts_with(&format!("[::ffff:{}]", testbed::BLUE_CLIENT_V4)))
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no join subflow from the blue address on the server: {s:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(cli.join().unwrap(), plan.bytes);
    assert_eq!(srv.join().unwrap().unwrap(), [plan.bytes]);
    v4.wait_for("conn_closed in the server netns", WAIT, closed_in(sns, 1));
    // -6 has had the same events to judge (both tracers read the same kernel events).
    thread::sleep(Duration::from_millis(500));
    let run4 = v4.stop();
    let run6 = v6.stop();
    let pm = mon.stop();
    assert!(run4.status.success(), "{}", run4.stderr);
    assert!(run6.status.success(), "{}", run6.stderr);

    // The oracle: the kernel's sockets are IPv6 with v4-mapped addresses, both subflows.
    let mapped: Vec<&(String, String)> = sockets
        .iter()
        .filter(|(l, _)| l.starts_with("[::ffff:"))
        .collect();
    assert!(mapped.len() >= 2, "initial and join subflow: {sockets:?}");

    let ev = events_in(&run4.events, sns);
    let kinds: Vec<Kind> = ev.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        integration_tests::TWO_SUBFLOWS,
        "-4 shows the whole connection: {ev:#?}"
    );
    for e in &ev {
        assert_eq!(e.family, Some(Family::Ipv4), "{e:?}");
        for a in [e.saddr, e.daddr].into_iter().flatten() {
            assert!(a.is_ipv4(), "a plain IPv4 address: {e:?}");
        }
    }
    let server_ip: IpAddr = testbed::RED_SERVER_V4.parse().unwrap();
    let blue: IpAddr = testbed::BLUE_CLIENT_V4.parse().unwrap();
    assert_eq!((ev[0].saddr, ev[0].sport), (Some(server_ip), Some(port)));
    let joins: Vec<&Event> = ev
        .iter()
        .filter(|e| e.event == Kind::SubflowEstablished && e.join == Some(true))
        .collect();
    assert_eq!(joins.len(), 1, "{ev:#?}");
    assert_eq!(joins[0].daddr, Some(blue));
    // Each subflow the tracer reports is one the kernel has, under its v4-mapped name.
    for e in ev.iter().filter(|e| e.event == Kind::SubflowEstablished) {
        let local = format!("[::ffff:{}]:{}", e.saddr.unwrap(), e.sport.unwrap());
        let peer = format!("[::ffff:{}]:{}", e.daddr.unwrap(), e.dport.unwrap());
        assert!(
            sockets.contains(&(local.clone(), peer.clone())),
            "{local} {peer} not in ss: {sockets:?}"
        );
    }
    // And the kernel's monitor agrees on the join, address for address.
    let token = ev[0].token.clone().unwrap();
    let sf: Vec<&PmEvent> = pm
        .iter()
        .filter(|p| p.kind == "SF_ESTABLISHED" && p.get("token") == Some(&token))
        .collect();
    assert_eq!(sf.len(), 1, "{pm:?}");
    assert_eq!(canonical(sf[0].daddr().unwrap()), blue);
    assert_eq!(
        sf[0].get("dport"),
        Some(&*joins[0].dport.unwrap().to_string())
    );

    assert!(
        events_in(&run6.events, sns).is_empty(),
        "-6 shows an IPv4 connection: {:#?}",
        run6.events
    );
}

/// Item 6: the peer's ADD_ADDR comes before the join it causes, as the kernel's monitor prints
/// it, although the netlink message is read (and stamped) after the ring buffer delivered the
/// join.
#[test]
fn an_announcement_is_printed_before_the_join_it_caused() {
    require_root();
    let bed = bed_announcing_blue("ann");
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let sns = TestBed::netns_inode(&bed.server).unwrap();
    let mon = Monitor::start(&bed.client);
    let tracer = Tracer::start(&["--netns", &bed.client, "--netns", &bed.server]);
    let addr: SocketAddr = "10.0.0.1:4341".parse().unwrap();
    // On every address: the join to the announced one is accepted (not ECONNREFUSED).
    let srv = server(&bed, "0.0.0.0:4341".parse().unwrap(), Proto::Mptcp, 1);
    // The client holds its connection open until the kernel has joined the announced address:
    // the server announces only once the connection is fully established, and under emulation
    // (the 6.1 guest beside another) a fixed warm-up ended the connection before the ADD_ADDR
    // arrived, so the scenario under test never happened.
    assert_eq!(announced_connection(&bed, addr, &mon, 1), 4097);
    srv.join().unwrap().unwrap();
    tracer.wait_for("conn_closed on both ends", WAIT, |ev| {
        closed_in(cns, 1)(ev) && closed_in(sns, 1)(ev)
    });
    let run = tracer.stop();
    let pm = mon.stop();
    assert!(run.status.success(), "{}", run.stderr);

    // The oracle: the kernel announced id 5, then a join towards it was established.
    let pos = |pred: &dyn Fn(&PmEvent) -> bool| pm.iter().position(pred);
    let k_ann = pos(&|p| p.kind == "ANNOUNCED" && p.get("remid") == Some("5"));
    let k_join = pos(&|p| p.kind == "SF_ESTABLISHED" && p.get("remid") == Some("5"));
    assert!(
        matches!((k_ann, k_join), (Some(a), Some(j)) if a < j),
        "the kernel: ANNOUNCED then SF_ESTABLISHED remid=5: {pm:#?}"
    );

    let ev = events_in(&run.events, cns);
    let ann = ev
        .iter()
        .position(|e| e.event == Kind::AddrAnnounced && e.remote_id == Some(5))
        .unwrap_or_else(|| panic!("no addr_announced: {ev:#?}"));
    let joins: Vec<usize> = (0..ev.len())
        .filter(|&i| ev[i].join == Some(true) && ev[i].remote_id == Some(5))
        .collect();
    assert!(!joins.is_empty(), "no join towards id 5: {ev:#?}");
    assert!(
        joins.iter().all(|&j| ann < j),
        "addr_announced after its join: {ev:#?}"
    );
    assert_eq!(ev[ann].addr, Some(testbed::BLUE_SERVER_V4.parse().unwrap()));
    assert_eq!(ev[ann].token, ev[joins[0]].token);
    assert_eq!(
        ev[ann].token.as_deref(),
        pm[k_ann.unwrap()].get("token"),
        "the kernel's token"
    );
    // Time order holds throughout.
    assert!(
        run.events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "ts_ns goes back: {:#?}",
        run.events
    );
}

/// A reader late by more than a connection's whole life finds the connection's records in the
/// ring buffer and its ADD_ADDR in the netlink socket, both at once. Read in the wrong order,
/// the announcement was about a connection already forgotten and was dropped (the sid guest,
/// loaded). Here the tracer is stopped (SIGSTOP) while each connection is announced an address,
/// joins it and closes, then resumed: every announcement is printed, before its join and its
/// close. Three rounds: either source could be read first.
#[test]
fn an_announcement_read_after_its_connection_closed_is_still_printed() {
    require_root();
    const ROUNDS: usize = 3;
    let bed = bed_announcing_blue("late");
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let mon = Monitor::start(&bed.client);
    let tracer = Tracer::start(&["--netns", &bed.client, "--netns", &bed.server]);
    let addr: SocketAddr = "10.0.0.1:4342".parse().unwrap();
    let srv = server(&bed, "0.0.0.0:4342".parse().unwrap(), Proto::Mptcp, ROUNDS);
    for round in 1..=ROUNDS {
        tracer.freeze();
        assert_eq!(announced_connection(&bed, addr, &mon, round), 4097);
        tracer.thaw();
        tracer.wait_for("the client's conn_closed", WAIT, closed_in(cns, round));
    }
    assert_eq!(srv.join().unwrap().unwrap().len(), ROUNDS);
    let run = tracer.stop();
    let pm = mon.stop();
    assert!(run.status.success(), "{}", run.stderr);

    let tokens: Vec<&str> = pm
        .iter()
        .filter(|p| p.kind == "ANNOUNCED" && p.get("remid") == Some("5"))
        .filter_map(|p| p.get("token"))
        .collect();
    assert_eq!(tokens.len(), ROUNDS, "the kernel's announcements: {pm:#?}");
    let ev = events_in(&run.events, cns);
    for token in tokens {
        let of = |pred: &dyn Fn(&Event) -> bool| {
            (0..ev.len())
                .filter(|&i| ev[i].token.as_deref() == Some(token) && pred(&ev[i]))
                .collect::<Vec<usize>>()
        };
        let ann = of(&|e| e.event == Kind::AddrAnnounced && e.remote_id == Some(5));
        let joins = of(&|e| e.join == Some(true) && e.remote_id == Some(5));
        let closed = of(&|e| e.event == Kind::ConnClosed);
        assert_eq!(ann.len(), 1, "token {token}: addr_announced once: {ev:#?}");
        assert!(!joins.is_empty(), "token {token}: no join to id 5: {ev:#?}");
        assert_eq!(closed.len(), 1, "token {token}: conn_closed once: {ev:#?}");
        assert!(
            joins.iter().chain(&closed).all(|&j| ann[0] < j),
            "token {token}: addr_announced after its join or close: {ev:#?}"
        );
        assert_eq!(
            ev[ann[0]].addr,
            Some(testbed::BLUE_SERVER_V4.parse().unwrap())
        );
    }
    assert!(
        run.events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
        "ts_ns goes back: {:#?}",
        run.events
    );
}

/// Waits (up to [`WAIT`]) until the kernel's monitor has shown `n` events of `kind` (with
/// `remid`, if given).
fn monitor_count(bed: &TestBed, mon: &Monitor, kind: &str, remid: Option<&str>, n: usize) {
    let deadline = Instant::now() + WAIT;
    while mon
        .events()
        .iter()
        .filter(|p| p.kind == kind && (remid.is_none() || p.get("remid") == remid))
        .count()
        < n
    {
        if Instant::now() >= deadline {
            // What the kernel did instead, for the next reader of a failure: its monitor's
            // events and both ends' non-zero MPTcpExt counters (AddAddr, EchoAdd, AddAddrDrop,
            // MPJoinSynTx, …).
            let counters = |ns: &str| {
                let mut c: Vec<_> = mptcp_ext(ns).into_iter().filter(|(_, v)| *v > 0).collect();
                c.sort();
                c
            };
            panic!(
                "the kernel's monitor: fewer than {n} {kind} remid={remid:?} in {WAIT:?}\n\
                 monitor: {:#?}\nclient MPTcpExt: {:?}\nserver MPTcpExt: {:?}",
                mon.events(),
                counters(&bed.client),
                counters(&bed.server)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One MPTCP client connection to `addr` that the server's ADD_ADDR (id 5) reaches: it sends a
/// byte (the connection is then fully established, and the server announces), stays open until
/// the kernel's monitor shows the `n`-th join to id 5 and its close, and returns the server's
/// byte count (4097).
fn announced_connection(bed: &TestBed, addr: SocketAddr, mon: &Monitor, n: usize) -> u64 {
    let ns = bed.client.clone();
    let (go, hold) = std::sync::mpsc::channel::<()>();
    let cl = thread::spawn(move || {
        testbed::in_netns(&ns, move || -> io::Result<u64> {
            let mut conn = peer::connect(addr, Proto::Mptcp)?;
            conn.write_all(&[0x5a])?;
            let _ = hold.recv_timeout(WAIT);
            conn.write_all(&[0x5a; 4096])?;
            peer::finish(&mut conn)
        })
        .unwrap()
        .expect("client transfer")
    });
    monitor_count(bed, mon, "SF_ESTABLISHED", Some("5"), n);
    go.send(()).unwrap();
    let acked = cl.join().unwrap();
    monitor_count(bed, mon, "CLOSED", None, n);
    acked
}

/// An address event about a connection the tracer does not trace (the kernel programs left it
/// out: another process's) is not shown, and is counted in the summary once the ring buffer
/// has been read past it.
#[test]
fn an_announcement_about_an_untraced_connection_is_counted_not_shown() {
    require_root();
    let bed = bed_announcing_blue("untr");
    let mon = Monitor::start(&bed.client);
    // Only init's connections: the test's own are left out in the kernel.
    let tracer = Tracer::start(&["--pid", "1", "--netns", &bed.client, "--netns", &bed.server]);
    let addr: SocketAddr = "10.0.0.1:4343".parse().unwrap();
    let srv = server(&bed, "0.0.0.0:4343".parse().unwrap(), Proto::Mptcp, 1);
    assert_eq!(announced_connection(&bed, addr, &mon, 1), 4097);
    srv.join().unwrap().unwrap();
    let run = tracer.stop();
    let pm = mon.stop();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        pm.iter()
            .any(|p| p.kind == "ANNOUNCED" && p.get("remid") == Some("5")),
        "the kernel announced nothing: {pm:#?}"
    );
    // Nothing about a connection. A `lost` record may come: it counts program runs the kernel
    // skipped on any socket (rehearsal 16, the 6.12 guest: 2), not something shown.
    let shown: Vec<_> = run
        .events
        .iter()
        .filter(|e| e.event != Kind::Lost)
        .collect();
    assert!(shown.is_empty(), "{shown:#?}");
    assert!(
        run.stderr
            .contains(", 1 path-manager messages for unknown connections dropped"),
        "{}",
        run.stderr
    );
}

/// The connections (by local token) each namespace shows, for the connections in `events`.
/// `a` less each element of `b` (once each), in `a`'s order.
fn minus<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut b = b.to_vec();
    a.iter()
        .filter(|x| match b.iter().position(|y| y == *x) {
            Some(i) => {
                b.remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

fn tokens(events: &[Event]) -> HashSet<(u32, String)> {
    events
        .iter()
        .filter_map(|e| Some((e.netns?, e.token.clone()?)))
        .collect()
}

/// Item 7: `--addr` on an address only a join uses shows the whole connection; `--port`
/// repeats (any of the values), and so does `--netns`. Checked against an unfiltered tracer
/// and the kernel's monitor in the same run.
#[test]
fn addr_on_the_join_address_and_repeated_ports_select_whole_connections() {
    require_root();
    let bed = TestBed::create(&tag("sel")).unwrap();
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let sns = TestBed::netns_inode(&bed.server).unwrap();
    let mon = Monitor::start(&bed.client);
    let all = Tracer::start(&["--netns", &bed.client, "--netns", &bed.server]);
    let by_addr = Tracer::start(&["--addr", testbed::BLUE_CLIENT_V4]);
    let by_port = Tracer::start(&["--port", "4351", "--port", "4352"]);

    // Three MPTCP connections over the red path, each joined from the blue address, and one
    // to a plain TCP server (fallback: no join, the blue address never used).
    let at = |p: u16| SocketAddr::new(testbed::RED_SERVER_V4.parse().unwrap(), p);
    let servers: Vec<_> = [4351, 4352, 4353]
        .into_iter()
        .map(|p| server(&bed, at(p), Proto::Mptcp, 1))
        .chain([server(&bed, at(4354), Proto::Tcp, 1)])
        .collect();
    let clients: Vec<_> = [4351, 4352, 4353, 4354]
        .into_iter()
        .map(|p| client(&bed, at(p), PLAN))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), PLAN.bytes);
    }
    for s in servers {
        s.join().unwrap().unwrap();
    }
    // Three MPTCP connections close on both ends, the fallback one on the client.
    all.wait_for("every close", WAIT, |ev| {
        closed_in(cns, 4)(ev) && closed_in(sns, 3)(ev)
    });
    by_addr.wait_for("the joined connections' closes", WAIT, |ev| {
        closed_in(cns, 3)(ev) && closed_in(sns, 3)(ev)
    });
    by_port.wait_for("4351 and 4352 closed", WAIT, |ev| {
        closed_in(cns, 2)(ev) && closed_in(sns, 2)(ev)
    });
    thread::sleep(Duration::from_millis(500));
    let all = all.stop();
    let by_addr = by_addr.stop();
    let by_port = by_port.stop();
    let pm = mon.stop();
    for r in [&all, &by_addr, &by_port] {
        assert!(r.status.success(), "{}", r.stderr);
    }
    let ours = |ev: &[Event]| -> Vec<Event> {
        ev.iter()
            .filter(|e| e.netns == Some(cns) || e.netns == Some(sns))
            .cloned()
            .collect()
    };
    let (all_ev, addr_ev, port_ev) = (
        ours(&all.events),
        ours(&by_addr.events),
        ours(&by_port.events),
    );

    // The unfiltered run: each connection by its port, from its conn_created.
    let mut port_of: HashMap<(u32, String), u16> = HashMap::new();
    for e in all_ev.iter().filter(|e| e.event == Kind::ConnCreated) {
        let p = if e.netns == Some(cns) {
            e.dport
        } else {
            e.sport
        };
        port_of.insert((e.netns.unwrap(), e.token.clone().unwrap()), p.unwrap());
    }
    assert_eq!(
        port_of.len(),
        7,
        "4 client ends, 3 server ends: {all_ev:#?}"
    );
    let with_ports = |ports: &[u16]| -> HashSet<(u32, String)> {
        port_of
            .iter()
            .filter(|(_, p)| ports.contains(p))
            .map(|(k, _)| k.clone())
            .collect()
    };

    // --addr: the joined connections only, and each whole: the same events as unfiltered.
    let blue: IpAddr = testbed::BLUE_CLIENT_V4.parse().unwrap();
    assert_eq!(tokens(&addr_ev), with_ports(&[4351, 4352, 4353]));
    let (lost_all, lost_addr) = (
        integration_tests::lost_count(&all.events),
        integration_tests::lost_count(&by_addr.events),
    );
    for key in tokens(&addr_ev) {
        // (Each tracer stamps with its own programs: kinds and ports, not times, compare.)
        let of = |ev: &[Event]| -> Vec<(Kind, Option<u16>, Option<u16>)> {
            ev.iter()
                .filter(|e| (e.netns, e.token.as_ref()) == (Some(key.0), Some(&key.1)))
                .map(|e| (e.event, e.sport, e.dport))
                .collect()
        };
        let (shown, unfiltered) = (of(&addr_ev), of(&all_ev));
        let whole = integration_tests::TWO_SUBFLOWS;
        let context = format!(
            "{key:?}\n--addr: {shown:?}\nunfiltered: {unfiltered:?}\n--addr tracer: {}\n\
             unfiltered tracer: {}",
            by_addr.stderr, all.stderr
        );
        if lost_all == 0 && lost_addr == 0 {
            assert_eq!(shown, unfiltered, "whole: {context}");
        } else {
            // A run the kernel skipped for one tracer takes events from it alone, and changes
            // how it reads the ones after: the sid guest, two tracers at once on its
            // preemptible kernel. The unfiltered one missed a join's subflow_established and
            // showed its close without a port and a diagnosis saying it lost events; --addr
            // missed an initial subflow's establishment and showed 3 events fewer and 2 read
            // otherwise (a conn_created without its port, a subflow_failed). Both counted the
            // skip and said so. What differs stays within a few events per loss.
            let missed = minus(&shown, &unfiltered);
            let instead = minus(&unfiltered, &shown);
            let bound = 3 * (lost_all + lost_addr);
            assert!(
                missed.len() <= bound && instead.len() <= bound,
                "unfiltered misses {missed:?} and shows {instead:?} instead: {context}"
            );
            for d in all_ev.iter().filter(|e| {
                e.event == Kind::ConnDiagnosis
                    && (e.netns, e.token.as_ref()) == (Some(key.0), Some(&key.1))
            }) {
                let detail = &d.diagnosis().expect("a conn_diagnosis").detail;
                assert!(
                    detail.starts_with("this tracer lost "),
                    "a diagnosis of a joined connection that is not about the tracer's \
                     loss: {detail}: {context}"
                );
            }
        }
        let kinds: Vec<Kind> = shown.iter().map(|k| k.0).collect();
        if lost_addr == 0 {
            assert_eq!(kinds, whole, "{context}");
        } else {
            assert!(minus(&whole, &kinds).len() <= 3 * lost_addr, "{context}");
        }
        // The address is not the connection's own: only its join uses it.
        let created = addr_ev
            .iter()
            .find(|e| e.event == Kind::ConnCreated && e.token.as_ref() == Some(&key.1))
            .unwrap();
        assert!(created.saddr != Some(blue) && created.daddr != Some(blue));
    }
    // The kernel's monitor: each client-side connection shown joined from the blue address.
    for (ns, token) in tokens(&addr_ev).into_iter().filter(|k| k.0 == cns) {
        assert!(
            pm.iter().any(|p| p.kind == "SF_ESTABLISHED"
                && p.get("token") == Some(&token)
                && p.saddr() == Some(testbed::BLUE_CLIENT_V4)),
            "{ns} {token}: no join from {blue} in {pm:#?}"
        );
    }

    // --port A --port B: exactly those connections, both ends, whole.
    assert_eq!(tokens(&port_ev), with_ports(&[4351, 4352]));
    let selected = |ev: &[Event]| -> Vec<(Kind, u32, String, u64)> {
        ev.iter()
            .filter(|e| {
                with_ports(&[4351, 4352]).contains(&(e.netns.unwrap(), e.token.clone().unwrap()))
            })
            .map(|e| (e.event, e.netns.unwrap(), e.token.clone().unwrap(), e.ts_ns))
            .collect()
    };
    // Each event the --port tracer shows is one the unfiltered tracer shows, and all of them
    // are, but for what it reported lost: two tracers at once on the sid guest's preemptible
    // kernel made the kernel skip 8 runs of one (22 and 26 of 28 shown in two rehearsals, each
    // time with those skips counted and printed). On failure, both tracers' events of those
    // connections and their summaries.
    let kinds = |ev: &[Event]| -> Vec<(Kind, u32, String)> {
        selected(ev)
            .into_iter()
            .map(|(k, ns, t, _)| (k, ns, t))
            .collect()
    };
    // What the unfiltered tracer shows, less each event --port shows too (once each).
    let (all_kinds, port_kinds) = (kinds(&all_ev), kinds(&port_ev));
    let left = minus(&all_kinds, &port_kinds);
    let extra = minus(&port_kinds, &all_kinds);
    let context = format!(
        "--port: {:?}\nunfiltered: {:?}\n--port tracer: {}\nunfiltered tracer: {}",
        selected(&port_ev),
        selected(&all_ev),
        by_port.stderr,
        all.stderr
    );
    let (lost_all, lost_port) = (
        integration_tests::lost_count(&all.events),
        integration_tests::lost_count(&by_port.events),
    );
    assert!(
        extra.len() <= lost_all,
        "--port shows {extra:?} beyond the unfiltered tracer (its reported loss aside): {context}"
    );
    assert!(
        left.len() <= lost_port,
        "--port misses {left:?} with {lost_port} reported lost: {context}"
    );
}

/// Item 7: the bare command takes selectors and is the live view on a terminal: with
/// `--netns C --port P` it shows the connection to P and not the one to Q.
#[test]
fn the_bare_command_is_the_live_view_with_selectors() {
    require_root();
    let bed = TestBed::create(&tag("bare")).unwrap();
    let session = format!("mptcp-bare-{}", std::process::id());
    let cmd = format!(
        "{} --netns {} --port 4361; echo EXITED rc=$?; sleep 60",
        mptcp_trace_bin().display(),
        bed.client
    );
    // The tmux server goes with the test, whatever happens.
    let tmux = Tmux::start(&session, &cmd);
    let wait = |what: &str, timeout: Duration, pred: &dyn Fn(&str) -> bool| -> String {
        let (ok, s) = tmux.wait_for(timeout, pred);
        assert!(ok, "{what}:\n{s}");
        s
    };
    // The verifier is slow in a qemu guest: the start is waited for generously.
    wait(
        "the live view did not start",
        Duration::from_secs(120),
        &|s| s.contains("mptcp-trace  connections"),
    );

    let at = |p: u16| SocketAddr::new(testbed::RED_SERVER_V4.parse().unwrap(), p);
    let slow = Send {
        bytes: 4 << 20,
        warmup: Duration::from_millis(500),
        spread: Duration::from_secs(8),
    };
    let other_srv = server(&bed, at(4362), Proto::Mptcp, 1);
    // The connection to 4362 starts first: had it matched, it would be on screen first.
    let other = client(&bed, at(4362), slow);
    thread::sleep(Duration::from_secs(1));
    let srv = server(&bed, at(4361), Proto::Mptcp, 1);
    let wanted = client(&bed, at(4361), slow);
    // An endpoint with that port, not any text that starts so: the join's local port was
    // once 43625, and ":4362" matched it (the sid guest).
    let port = |s: &str, p: u16| {
        let end = format!(":{p}");
        s.split_whitespace().any(|w| w.ends_with(&end))
    };
    let s = wait("the connection to 4361 is not shown", WAIT, &|s| {
        port(s, 4361)
    });
    assert!(!port(&s, 4362), "--port 4361 shows 4362:\n{s}");

    tmux.keys("q");
    let s = wait("q did not end the view", WAIT, &|s| {
        s.contains("EXITED rc=")
    });
    assert!(s.contains("EXITED rc=0"), "{s}");
    assert_eq!(wanted.join().unwrap(), slow.bytes);
    assert_eq!(other.join().unwrap(), slow.bytes);
    srv.join().unwrap().unwrap();
    other_srv.join().unwrap().unwrap();
}

/// Item 9: a `--netns` that cannot be used is refused with one line that says why, status 2,
/// before anything is loaded (`-v` would print the loading), for `events` and the bare command.
#[test]
fn unusable_netns_values_say_why() {
    require_root();
    let check = |setpriv: bool, args: &[&str], want: &[&str]| {
        let mut c = if setpriv {
            // An ordinary user: uid/gid 65534, no groups, no capabilities.
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(mptcp_trace_bin());
            c
        } else {
            Command::new(mptcp_trace_bin())
        };
        let out = c.arg("-v").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: {err:?} lacks {w:?}");
        }
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    // An inode no namespace has.
    let missing = "123";
    assert!(!mptcp_user::sys::netns::all().contains_key(&123));
    for args in [&["events", "--netns", missing][..], &["--netns", missing]] {
        check(
            false,
            args,
            &["--netns 123: no network namespace with inode 123", "lsns"],
        );
    }
    // Another user's (root's) namespace file, for an ordinary user.
    for args in [
        &["events", "--netns", "/proc/1/ns/net"][..],
        &["--netns", "/proc/1/ns/net"],
    ] {
        check(
            true,
            args,
            &[
                "--netns /proc/1/ns/net: cannot open /proc/1/ns/net: permission denied",
                "CAP_SYS_PTRACE",
            ],
        );
    }
    check(
        false,
        &["events", "--netns", "/proc/999999999/ns/net"],
        &["/proc/999999999/ns/net: no such file"],
    );
}
