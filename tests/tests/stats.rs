//! `events --stats-interval`: `subflow_stats` records of a two-subflow transfer of a known size,
//! checked against the kernel's own figures at close (`subflow_closed`, read by the programs
//! from the socket, not by sock_diag) and against the bytes the peers moved.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{
    closed_in, mptcp_trace_bin, peer, require_root, server, tag, testbed, ChildGuard, Event, Kind,
    Tracer,
};
use mptcp_user::event::{Data, SubflowStats};
use peer::{Proto, Send};
use testbed::TestBed;

const WAIT: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_millis(200);

/// Long enough for several intervals with both subflows carrying data.
const PLAN: Send = Send {
    bytes: 8 << 20,
    warmup: Duration::from_millis(800),
    spread: Duration::from_millis(1600),
};

type Ends = (std::net::IpAddr, u16, std::net::IpAddr, u16);

fn ends(e: &Event) -> Ends {
    (
        e.saddr.unwrap(),
        e.sport.unwrap(),
        e.daddr.unwrap(),
        e.dport.unwrap(),
    )
}

fn stats(e: &Event) -> &SubflowStats {
    match &e.raw.as_ref().unwrap().data {
        Data::SubflowStats(s) => s,
        other => panic!("not subflow_stats: {other:?}"),
    }
}

/// Checks one namespace's records against its subflows' closes; returns how many subflows had
/// records.
fn check_netns(events: &[Event], netns: u32) -> usize {
    let mine: Vec<&Event> = events.iter().filter(|e| e.netns == Some(netns)).collect();
    let closes: HashMap<Ends, &Event> = mine
        .iter()
        .filter(|e| e.event == Kind::SubflowClosed)
        .map(|e| (ends(e), *e))
        .collect();
    assert_eq!(closes.len(), 2, "two subflows closed in {netns}");
    // The most a connection moved in one interval (sent + received over its subflows, by
    // sample: the records of one sample share their stamp).
    let mut per_sample: BTreeMap<u64, u64> = BTreeMap::new();
    for e in mine.iter().filter(|e| e.event == Kind::SubflowStats) {
        let s = stats(e);
        *per_sample.entry(e.ts_ns).or_default() += s.bytes_sent_delta + s.bytes_received_delta;
    }
    let max_interval = per_sample.values().copied().max().unwrap_or(0);
    let mut with_records = 0;
    for (t, close) in &closes {
        let recs: Vec<&Event> = mine
            .iter()
            .filter(|e| e.event == Kind::SubflowStats && ends(e) == *t)
            .copied()
            .collect();
        assert!(!recs.is_empty(), "no subflow_stats for {t:?} in {netns}");
        with_records += 1;
        let s0 = stats(recs[0]);
        assert_eq!(s0.subflow.join, close.join.unwrap(), "{t:?}");
        assert_eq!(s0.subflow.ifname, close.ifname, "{t:?}");
        assert_eq!(recs[0].token, close.token, "{t:?}");
        let (mut sent, mut acked, mut recv, mut retrans) = (0, 0, 0, 0);
        let mut prev_ts = 0;
        for r in &recs {
            let s = stats(r);
            assert!(r.ts_ns > prev_ts && r.ts_ns < close.ts_ns, "{t:?}: {r:?}");
            prev_ts = r.ts_ns;
            assert!(s.interval_ns > 0, "{t:?}: {s:?}");
            sent += s.bytes_sent_delta;
            acked += s.bytes_acked_delta;
            recv += s.bytes_received_delta;
            retrans += s.retrans_delta;
            // The deltas so far add up to the totals of each record.
            assert_eq!(
                (sent, acked, recv, retrans),
                (s.bytes_sent, s.bytes_acked, s.bytes_received, s.retrans),
                "{t:?}: {s:?}"
            );
            assert!(s.srtt_us > 0 && s.cwnd > 0, "{t:?}: {s:?}");
        }
        let last = stats(recs.last().unwrap());
        let (c_sent, c_acked, c_recv) = (
            close.bytes_sent.unwrap(),
            close.bytes_acked.unwrap(),
            close.bytes_received.unwrap(),
        );
        assert!(
            sent <= c_sent && acked <= c_acked && recv <= c_recv,
            "{t:?}: deltas ({sent}, {acked}, {recv}) over the close's ({c_sent}, {c_acked}, {c_recv})"
        );
        // The last record is at most an interval before the close (and a busy machine's
        // late tick), and what came after it is at most what the connection moved in its
        // busiest interval (twice that: a late tick covers a longer interval).
        let gap = close.ts_ns - recs.last().unwrap().ts_ns;
        assert!(
            gap <= (INTERVAL + Duration::from_secs(1)).as_nanos() as u64,
            "{t:?}: last record {gap} ns before the close"
        );
        let after = (c_sent - last.bytes_sent) + (c_recv - last.bytes_received);
        assert!(
            after <= 2 * max_interval + 1024,
            "{t:?}: {after} bytes after the last record, busiest interval {max_interval}"
        );
    }
    with_records
}

#[test]
fn subflow_stats_add_up_to_the_bytes_at_close() {
    require_root();
    let bed = TestBed::create(&tag("stats")).unwrap();
    let (cns, sns) = (
        TestBed::netns_inode(&bed.client).unwrap(),
        TestBed::netns_inode(&bed.server).unwrap(),
    );
    let interval = format!("{}", INTERVAL.as_secs_f64());
    let tracer = Tracer::start(&["--stats-interval", &interval]);
    // The same in text mode, for the client's namespace: a line per record.
    let dir = std::env::temp_dir().join(tag("stats-text"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, text_out) = (dir.join("ready"), dir.join("out"));
    let mut text = ChildGuard(
        Command::new(mptcp_trace_bin())
            .args([
                "events",
                "--stats-interval",
                &interval,
                "--netns",
                &bed.client,
            ])
            .arg("--ready-file")
            .arg(&ready)
            .stdout(std::fs::File::create(&text_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < WAIT, "text tracer not ready");
        thread::sleep(Duration::from_millis(20));
    }
    let addr: SocketAddr = "10.0.0.1:4321".parse().unwrap();
    let srv = server(&bed, addr, Proto::Mptcp, 1);
    let acked = testbed::in_netns(&bed.client, move || peer::send(addr, Proto::Mptcp, PLAN))
        .unwrap()
        .expect("client transfer");
    let received = srv.join().unwrap().unwrap()[0];
    assert_eq!((acked, received), (PLAN.bytes, PLAN.bytes));
    tracer.wait_for("conn_closed on both ends", WAIT, |ev| {
        closed_in(cns, 1)(ev) && closed_in(sns, 1)(ev)
    });
    thread::sleep(Duration::from_millis(300));
    let run = tracer.stop();
    assert!(run.status.success(), "{}", run.stderr);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(text.0.id() as i32, libc::SIGINT) };
    assert!(text.0.wait().unwrap().success());
    let lines = std::fs::read_to_string(&text_out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let client_locals: Vec<String> = run
        .events
        .iter()
        .filter(|e| e.netns == Some(cns) && e.event == Kind::SubflowClosed)
        .map(|e| format!("{}:{}", e.saddr.unwrap(), e.sport.unwrap()))
        .collect();
    for local in &client_locals {
        let mine: Vec<&str> = lines
            .lines()
            .filter(|l| l.contains(" subflow_stats ") && l.contains(&format!(" {local} ")))
            .collect();
        assert!(mine.len() >= 2, "text records of {local}:\n{lines}");
        for l in mine {
            for field in [
                "interval=",
                "sent=+",
                "recv=+",
                "total_sent=",
                "rtt=",
                "cwnd=",
            ] {
                assert!(l.contains(field), "{field} missing: {l}");
            }
        }
    }
    assert_eq!(check_netns(&run.events, cns), 2);
    assert_eq!(check_netns(&run.events, sns), 2);
    // The client's subflows together sent the transfer (and the server's received it): the
    // close figures the records led up to are the real ones.
    let total = |ns: u32, f: fn(&Event) -> u64| -> u64 {
        run.events
            .iter()
            .filter(|e| e.netns == Some(ns) && e.event == Kind::SubflowClosed)
            .map(f)
            .sum()
    };
    assert!(total(cns, |e| e.bytes_acked.unwrap()) >= PLAN.bytes);
    assert!(total(sns, |e| e.bytes_received.unwrap()) >= PLAN.bytes);
    // No record after its subflow's close, none after its connection's.
    for e in run.events.iter().filter(|e| e.event == Kind::SubflowStats) {
        let closed = run
            .events
            .iter()
            .position(|c| c.event == Kind::ConnClosed && c.netns == e.netns && c.token == e.token);
        let me = run.events.iter().position(|x| x == e).unwrap();
        assert!(closed.is_none_or(|c| me < c), "{e:?} after conn_closed");
    }
}

#[test]
fn a_bad_stats_interval_is_one_line_and_status_2() {
    require_root();
    for bad in ["0", "garbage", "-1", "0.001"] {
        let out = Command::new(mptcp_trace_bin())
            .args(["-v", "events", "--json", "--stats-interval", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("mptcp-trace: --stats-interval"), "{err}");
        // -v: had anything been attached, its debug lines would be here.
        assert!(!err.contains("attached"), "{bad}: {err}");
        assert!(out.stdout.is_empty(), "{bad}");
    }
}
