//! Smoke tests that prove the tracer end to end on whatever kernel runs them: the programs load
//! and attach, and one real two-path MPTCP transfer in the test bed shows up as events. They
//! run on the host with the rest of the suite and inside every `cargo xtask vm-test` guest,
//! where they are the first sign of a kernel the programs do not fit.
//!
//! Needs root. Time limits are generous: the guests run without KVM.

use std::{net::SocketAddr, process::Command, time::Duration, time::Instant};

use integration_tests::{mptcp_trace_bin as tracer_bin, require_root, Tracer};
use mptcp_user::{
    event::Kind,
    peer::{self, Proto},
    testbed::{self, TestBed},
};

const EVENTS_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn tracer_loads_attaches_and_exits_after_duration() {
    require_root();
    let start = Instant::now();
    let out = Command::new(tracer_bin())
        .args(["events", "--json", "--duration", "5"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer_bin().display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "mptcp-trace events --json --duration 5: {}, {:?}",
        out.status,
        start.elapsed()
    );
    if !stderr.is_empty() {
        eprintln!("stderr:\n{stderr}");
    }
    assert!(out.status.success(), "mptcp-trace failed:\n{stderr}");
}

#[test]
fn traces_a_two_path_transfer_in_the_test_bed() {
    require_root();
    let tag = format!("vmsmoke-{}", std::process::id());
    let bed = TestBed::create(&tag).expect("test bed");
    let netns = TestBed::netns_inode(&bed.client).unwrap();
    let tracer = Tracer::start(&["--netns", &bed.client]);

    let addr: SocketAddr = format!("{}:4321", testbed::RED_SERVER_V4).parse().unwrap();
    let listener = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .expect("listen");
    let server = testbed::spawn_in_netns(&bed.server, move || peer::serve(&listener, 1)).unwrap();
    let plan = peer::Send {
        bytes: 1 << 20,
        warmup: Duration::from_millis(1500),
        spread: Duration::ZERO,
    };
    let acked = testbed::in_netns(&bed.client, move || peer::send(addr, Proto::Mptcp, plan))
        .unwrap()
        .expect("client transfer");
    assert_eq!(acked, 1 << 20);
    let served = server.join().unwrap().expect("server");
    assert_eq!(served, vec![1 << 20]);

    tracer.wait_for("conn_closed", EVENTS_TIMEOUT, |ev| {
        ev.iter().any(|e| e.event == Kind::ConnClosed)
    });
    let run = tracer.stop();
    // A preemptible kernel (sid's) may skip a program run for any socket of the machine, and
    // that is reported (a `lost` event, no namespace of its own): anything else lost fails.
    run.assert_only_skipped_runs();
    let events: Vec<_> = run
        .events
        .into_iter()
        .filter(|e| e.event != Kind::Lost)
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    eprintln!("events: {kinds:?}");
    for kind in [
        Kind::ConnCreated,
        Kind::ConnEstablished,
        Kind::SubflowEstablished,
        Kind::SubflowClosed,
        Kind::ConnClosed,
    ] {
        assert!(
            events.iter().any(|e| e.event == kind),
            "no {} event in {kinds:?}",
            kind.as_str()
        );
    }
    assert!(
        events.iter().all(|e| e.netns == Some(netns)),
        "an event outside the client namespace ({netns}): {events:?}"
    );
    let subflows = events
        .iter()
        .filter(|e| e.event == Kind::SubflowEstablished)
        .count();
    assert_eq!(
        subflows, 2,
        "expected the initial and the blue MP_JOIN subflow: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event == Kind::SubflowEstablished && e.join == Some(true)),
        "no MP_JOIN subflow: {events:?}"
    );
}
