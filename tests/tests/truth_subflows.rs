//! What the tracer says about subflows that go wrong or are special, each checked against an
//! independent oracle in the same run: a refused connect (created → failed → closed, in
//! order), a join refused because the listener is gone and a join that times out (the real
//! port and errno, against `ip mptcp monitor`'s SF_CLOSED `sport=`/`error=`), resets sent with
//! the kernel's reason, backup priority on both sides (against `ss`'s `b`/`B` subflow flags) and
//! the peer's token (against the other end's own token).

use std::{net::SocketAddr, thread, time::Duration};

use integration_tests::{
    abort_on_close, events_in,
    joins::{add_join_endpoint, bed_without_join, black_hole_joins, connected, exchange},
    kernel_version, kinds, lost_count, mptcp_ext, peer, require_root, run, testbed, Event, Kind,
    Monitor, PmEvent, Tracer,
};
use peer::Proto;

/// Upper bound for events to show up: generous for the VM matrix (qemu without KVM).
const WAIT: Duration = Duration::from_secs(60);

/// Output order is time order, for every kind.
fn assert_monotonic(events: &[Event]) {
    for w in events.windows(2) {
        assert!(
            w[0].ts_ns <= w[1].ts_ns,
            "out of order:\n{:?}\n{:?}",
            w[0],
            w[1]
        );
    }
}

fn sf_closed(pm: &[PmEvent]) -> Vec<&PmEvent> {
    pm.iter().filter(|p| p.kind == "SF_CLOSED").collect()
}

#[test]
fn a_refused_connect_is_created_then_failed_then_closed_in_order() {
    require_root();
    let (bed, cns, _) = bed_without_join("refused");
    let tracer = Tracer::start(&[]);
    // Nothing listens on this port: the server's kernel answers the SYN with a RST.
    let addr: SocketAddr = "10.0.0.1:4391".parse().unwrap();
    let err = testbed::in_netns(&bed.client, move || peer::connect(addr, Proto::Mptcp))
        .unwrap()
        .expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    tracer.wait_for("the refused connection's close", WAIT, |ev| {
        ev.iter()
            .any(|e| e.netns == Some(cns) && e.event == Kind::ConnClosed)
    });
    let run = tracer.stop();
    assert!(run.status.success(), "{}", run.stderr);
    assert_monotonic(&run.events);
    let ev = events_in(&run.events, cns);
    assert_eq!(
        kinds(&ev),
        [Kind::ConnCreated, Kind::SubflowFailed, Kind::ConnClosed],
        "{ev:#?}"
    );
    let (created, failed) = (&ev[0], &ev[1]);
    assert_eq!(created.dport, Some(4391));
    assert_ne!(created.sport, Some(0), "the connect's port: {created:?}");
    assert_eq!(failed.sport, created.sport, "the same socket: {failed:?}");
    assert_eq!(failed.join, Some(false));
    assert_eq!(failed.error.as_deref(), Some("ECONNREFUSED"), "{failed:?}");
    assert_eq!(failed.reason.as_deref(), Some("rst_received"));
    assert_eq!(ev[2].subflows_total, Some(0));
    assert_eq!(lost_count(&run.events), 0);
}

#[test]
fn a_join_to_a_closed_listener_fails_with_its_port_and_econnrefused() {
    require_root();
    let (bed, cns, _) = bed_without_join("joinrefused");
    let mon = Monitor::start(&bed.client);
    let tracer = Tracer::start(&[]);
    let addr: SocketAddr = "10.0.0.1:4392".parse().unwrap();
    // `connected` closes the listener after the accept: the join's SYN finds no listener.
    let (mut client, mut server, listener) = connected(&bed, addr, Proto::Mptcp);
    drop(listener);
    add_join_endpoint(&bed, false, &["subflow"]);
    tracer.wait_for("the failed join", WAIT, |ev| {
        ev.iter()
            .any(|e| e.netns == Some(cns) && e.event == Kind::SubflowFailed)
    });
    // The connection carries on over its first subflow.
    exchange(&mut client, &mut server);
    drop((client, server));
    tracer.wait_for("the close", WAIT, |ev| {
        ev.iter()
            .any(|e| e.netns == Some(cns) && e.event == Kind::ConnClosed)
    });
    thread::sleep(Duration::from_millis(300));
    let run = tracer.stop();
    let pm = mon.stop();
    assert_monotonic(&run.events);
    let ev = events_in(&run.events, cns);
    let failed: Vec<&Event> = ev
        .iter()
        .filter(|e| e.event == Kind::SubflowFailed)
        .collect();
    assert_eq!(failed.len(), 1, "{ev:#?}");
    let f = failed[0];
    assert_eq!(f.join, Some(true));
    assert_eq!(f.error.as_deref(), Some("ECONNREFUSED"), "{f:?}");
    assert_eq!(f.saddr, Some(testbed::BLUE_CLIENT_V4.parse().unwrap()));
    // The kernel's own account of the same subflow.
    let closed = sf_closed(&pm);
    assert_eq!(closed.len(), 1, "{pm:#?}");
    assert_eq!(closed[0].get("error"), Some("111"), "{:?}", closed[0]);
    assert_eq!(
        closed[0].get("sport").and_then(|p| p.parse().ok()),
        f.sport,
        "the join's real local port: ours {f:?}, kernel {:?}",
        closed[0]
    );
    assert_eq!(closed[0].get("token"), f.token.as_deref());
    // Only the initial subflow was ever established, and it closes before its connection.
    let k = kinds(&ev);
    assert_eq!(k.first(), Some(&Kind::ConnCreated));
    assert_eq!(k.last(), Some(&Kind::ConnClosed));
    assert_eq!(ev.last().unwrap().subflows_total, Some(1));
    assert_eq!(lost_count(&run.events), 0);
}

#[test]
fn a_join_whose_path_is_black_holed_times_out_with_etimedout() {
    require_root();
    let (bed, cns, _) = bed_without_join("jointimeout");
    let mon = Monitor::start(&bed.client);
    let tracer = Tracer::start(&[]);
    let addr: SocketAddr = "10.0.0.1:4393".parse().unwrap();
    let (client, server, listener) = connected(&bed, addr, Proto::Mptcp);
    black_hole_joins(&bed, false);
    add_join_endpoint(&bed, false, &["subflow"]);
    tracer.wait_for("the timed-out join", WAIT, |ev| {
        ev.iter()
            .any(|e| e.netns == Some(cns) && e.event == Kind::SubflowFailed)
    });
    thread::sleep(Duration::from_millis(300));
    let run = tracer.stop();
    let pm = mon.stop();
    drop((client, server, listener));
    let ev = events_in(&run.events, cns);
    let f = ev
        .iter()
        .find(|e| e.event == Kind::SubflowFailed)
        .expect("subflow_failed");
    assert_eq!(f.join, Some(true), "{f:?}");
    assert_eq!(f.error.as_deref(), Some("ETIMEDOUT"), "{f:?}");
    assert_eq!(
        f.reason.as_deref(),
        Some("ETIMEDOUT"),
        "no reset was involved"
    );
    assert!(f.retrans.unwrap() >= 1, "the SYN was retransmitted: {f:?}");
    let closed = sf_closed(&pm);
    assert_eq!(closed.len(), 1, "{pm:#?}");
    assert_eq!(closed[0].get("error"), Some("110"), "{:?}", closed[0]);
    assert_eq!(
        closed[0].get("sport").and_then(|p| p.parse().ok()),
        f.sport,
        "ours {f:?}, kernel {:?}",
        closed[0]
    );
    assert_eq!(lost_count(&run.events), 0);
}

/// `ss -tinH` in a namespace: the MPTCP subflow flags (`flags:` of `tcp-ulp-mptcp`) of the
/// socket that has `addr` as one of its endpoints (printed `ADDR:PORT` or `ADDR%DEV:PORT`).
fn ss_subflow_flags(netns: &str, addr: &str) -> String {
    let out = run("ss", &["-N", netns, "-tinH", "state", "established"]);
    let is_addr = |w: &str| {
        w.strip_prefix(addr)
            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('%'))
    };
    // One socket is two lines: the addresses, then the details.
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.split_whitespace().any(is_addr) {
            let details = lines.get(i + 1).copied().unwrap_or_default();
            let flags = details
                .split_whitespace()
                .skip_while(|w| *w != "tcp-ulp-mptcp")
                .find_map(|w| w.strip_prefix("flags:"))
                .unwrap_or_else(|| panic!("no MPTCP flags for {addr}: {out}"));
            return flags.to_string();
        }
    }
    panic!("no socket with {addr} in {netns}: {out}");
}

#[test]
fn backup_is_reported_for_both_sides_and_the_peer_token_pairs_the_ends() {
    require_root();
    let (bed, cns, sns) = bed_without_join("backup");
    let tracer = Tracer::start(&[]);
    let addr: SocketAddr = "10.0.0.1:4394".parse().unwrap();
    let (mut client, mut server, listener) = connected(&bed, addr, Proto::Mptcp);
    drop(listener);
    // The client asks for backup priority on the join it opens from its blue address; the
    // listener is gone, but joins still reach the server: re-listen.
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .unwrap();
    add_join_endpoint(&bed, false, &["subflow", "backup"]);
    tracer.wait_for("the backup join on both ends", WAIT, |ev| {
        [cns, sns].iter().all(|ns| {
            ev.iter().any(|e| {
                e.netns == Some(*ns) && e.event == Kind::SubflowEstablished && e.join == Some(true)
            })
        })
    });
    // The oracle: the kernel's sock_diag flags of the join on each end (`b`: this side asked
    // for backup, `B`: the peer did).
    let client_flags = ss_subflow_flags(&bed.client, testbed::BLUE_CLIENT_V4);
    let server_join = ss_subflow_flags(&bed.server, testbed::BLUE_CLIENT_V4);
    exchange(&mut client, &mut server);
    // Oracles for the MP_TCPRST options the server receives with the client's resets: its
    // MPRstRx counter and the kernel's SF_CLOSED events (`reset_reason=N`, where reported).
    let mon_s = Monitor::start(&bed.server);
    let rst_rx = || mptcp_ext(&bed.server).get("MPRstRx").copied().unwrap_or(0);
    let rst_rx_before = rst_rx();
    // Abort: the client resets its subflows (with the kernel's reason where it tells one).
    abort_on_close(&client);
    drop(client);
    // The server's end takes the resets before it closes itself.
    thread::sleep(Duration::from_millis(300));
    let rst_rx_delta = rst_rx() - rst_rx_before;
    drop((server, listener));
    tracer.wait_for("both ends closed", WAIT, |ev| {
        [cns, sns].iter().all(|ns| {
            ev.iter()
                .any(|e| e.netns == Some(*ns) && e.event == Kind::ConnClosed)
        })
    });
    let run = tracer.stop();
    let pm_s = mon_s.stop();
    let server_ends: Vec<Event> = events_in(&run.events, sns)
        .into_iter()
        .filter(|e| e.event == Kind::SubflowClosed)
        .collect();
    // As many of the server's subflow ends name a received MP_TCPRST reason as it counted.
    assert_eq!(
        server_ends
            .iter()
            .filter(|e| e.reset_reason.is_some())
            .count() as u64,
        rst_rx_delta,
        "{server_ends:#?}"
    );
    // Where the kernel's SF_CLOSED tells the reason, ours is the same code by its short name.
    for sf in sf_closed(&pm_s) {
        let Some(code) = sf.get("reset_reason") else {
            continue;
        };
        let port: Option<u16> = sf.get("sport").and_then(|p| p.parse().ok());
        let ours = server_ends
            .iter()
            .find(|e| e.sport == port && e.dport == sf.get("dport").and_then(|p| p.parse().ok()))
            .unwrap_or_else(|| panic!("no subflow_closed for {sf:?}: {server_ends:#?}"));
        assert_eq!(
            ours.reset_reason.as_deref(),
            Some(mptcp_user::decode::mptcp_reset_short(code.parse().unwrap()).as_str()),
            "kernel {sf:?}, ours {ours:?}"
        );
    }
    let join_of = |ns: u32| -> Event {
        events_in(&run.events, ns)
            .into_iter()
            .find(|e| e.event == Kind::SubflowEstablished && e.join == Some(true))
            .unwrap()
    };
    let (cj, sj) = (join_of(cns), join_of(sns));
    assert_eq!(
        (cj.backup, cj.peer_backup),
        (
            Some(client_flags.contains('b')),
            Some(client_flags.contains('B'))
        ),
        "client join {cj:?} vs ss flags {client_flags}"
    );
    assert_eq!(
        (sj.backup, sj.peer_backup),
        (
            Some(server_join.contains('b')),
            Some(server_join.contains('B'))
        ),
        "server join {sj:?} vs ss flags {server_join}"
    );
    assert_eq!(cj.backup, Some(true), "the client asked for backup: {cj:?}");
    assert_eq!(sj.peer_backup, Some(true), "the server was asked: {sj:?}");

    // The peer token: each end's conn_established names the other end's token.
    let established = |ns: u32| -> Event {
        events_in(&run.events, ns)
            .into_iter()
            .find(|e| e.event == Kind::ConnEstablished)
            .unwrap()
    };
    let (ce, se) = (established(cns), established(sns));
    assert!(ce.token.is_some() && se.token.is_some());
    assert_eq!(ce.peer_token, se.token, "client {ce:?} server {se:?}");
    assert_eq!(se.peer_token, ce.token, "client {ce:?} server {se:?}");
    let closed = events_in(&run.events, cns)
        .into_iter()
        .find(|e| e.event == Kind::ConnClosed)
        .unwrap();
    assert_eq!(closed.peer_token, se.token);

    // The aborting client sent resets: with the kernel's reason where the tracepoint has one
    // (its names come from the kernel's BTF), absent where it has none.
    let has_reason = mptcp_user::offsets::rst_reason_arg(
        &btf_rs::Btf::from_file(mptcp_user::offsets::VMLINUX_BTF).unwrap(),
    )
    .is_some();
    let sent: Vec<Event> = events_in(&run.events, cns)
        .into_iter()
        .filter(|e| e.event == Kind::SubflowClosed && e.reason.as_deref() == Some("rst_sent"))
        .collect();
    assert!(!sent.is_empty(), "{:#?}", events_in(&run.events, cns));
    for e in &sent {
        match (&e.reset_sent_reason, has_reason) {
            // An abort (SO_LINGER 0) is the MPTCP fastclose: since the fix that makes
            // mptcp_do_fastclose() send each subflow's reset itself (in 6.18, backported to
            // some stable series), that reset's reason is SK_RST_REASON_TCP_ABORT_ON_CLOSE by
            // construction. Older kernels reset from tcp_close()'s paths with other reasons,
            // so there only a kernel name is required.
            (Some(r), true) if kernel_version() >= (6, 18) => {
                assert_eq!(r, "tcp_abort_on_close", "{e:?}")
            }
            (Some(r), true) => assert!(!r.is_empty() && !r.starts_with("value_"), "{e:?}"),
            (None, false) => {}
            other => panic!("reset_sent_reason {other:?} on this kernel: {e:?}"),
        }
    }
    assert_eq!(lost_count(&run.events), 0);
}
