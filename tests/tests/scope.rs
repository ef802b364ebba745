//! One selector for tracing and upgrading: `events --comm A --comm B`, `events --uid U` and
//! `upgrade … --events` show exactly their scope's connections while an out-of-scope MPTCP
//! connection runs beside them. Owners differ per thread (a thread's name and credentials are
//! what the kernel records at connect), so one test process plays every owner.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    mptcp_trace_bin, parse_events, peer, require_root, tag, testbed, ChildGuard, Event, Kind, Lines,
};
use mptcp_user::sys::netns;
use peer::{Proto, Send};
use testbed::TestBed;

const WAIT: Duration = Duration::from_secs(60);

/// Connects once to `port` on the red server from a thread named `name` running as `uid`.
fn connect_as(bed: &TestBed, port: u16, name: &'static std::ffi::CStr, uid: u32) {
    connect_with(bed, port, name, uid, Proto::Mptcp)
}

/// [`connect_as`] with a chosen protocol: `Proto::Tcp` asks for a TCP socket, for the upgrade.
fn connect_with(bed: &TestBed, port: u16, name: &'static std::ffi::CStr, uid: u32, proto: Proto) {
    let addr: SocketAddr = format!("{}:{port}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    // A thread that stays in the namespace: once it dropped its credentials it could not
    // enter back.
    netns::spawn_in(&netns::named(&bed.client), move || {
        // SAFETY: naming this thread (≤ 15 bytes, NUL-terminated).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        if uid != 0 {
            // The raw system call changes this thread's credentials only.
            // SAFETY: plain syscall.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
            assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
        }
        peer::send(
            addr,
            proto,
            Send {
                bytes: 1000,
                warmup: Duration::ZERO,
                spread: Duration::ZERO,
            },
        )
        .unwrap();
    })
    .unwrap()
    .join()
    .unwrap();
}

fn servers(bed: &TestBed, ports: &[u16]) -> Vec<thread::JoinHandle<std::io::Result<Vec<u64>>>> {
    ports
        .iter()
        .map(|&p| {
            let addr: SocketAddr = format!("{}:{p}", testbed::RED_SERVER_V4).parse().unwrap();
            let l = testbed::in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
                .unwrap()
                .unwrap();
            thread::spawn(move || peer::serve(&l, 1))
        })
        .collect()
}

/// Starts `mptcp-trace ARGS --ready-file F`, waits for the file; `None` when it exited first
/// (with its status and stderr).
fn start(args: &[&str]) -> Result<(ChildGuard, Lines, std::path::PathBuf), (i32, String)> {
    let ready = std::env::temp_dir().join(format!("{}.ready", tag("scope")));
    let mut child = Command::new(mptcp_trace_bin())
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::default();
    lines.collect_from(child.stdout.take().unwrap());
    let start = Instant::now();
    while !ready.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return Err((st.code().unwrap_or(-1), err));
        }
        assert!(start.elapsed() < WAIT, "not ready");
        thread::sleep(Duration::from_millis(20));
    }
    Ok((ChildGuard(child), lines, ready))
}

fn stop(mut child: ChildGuard, lines: &Lines, ready: &std::path::Path) -> Vec<Event> {
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let st = child.0.wait().unwrap();
    let _ = std::fs::remove_file(ready);
    assert!(st.success(), "{st}");
    thread::sleep(Duration::from_millis(200));
    parse_events(
        &lines
            .snapshot()
            .into_iter()
            .filter(|l| l.starts_with('{'))
            .collect::<Vec<_>>(),
    )
}

/// The remote ports of the client-side connections the tracer showed.
fn client_ports(events: &[Event], client_ns: u32) -> Vec<u16> {
    let mut v: Vec<u16> = events
        .iter()
        .filter(|e| e.event == Kind::ConnCreated && e.netns == Some(client_ns))
        .filter_map(|e| e.dport)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn two_comms_select_their_connections_and_no_other() {
    require_root();
    let bed = TestBed::create(&tag("scope-comm")).unwrap();
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let (child, lines, ready) =
        start(&["events", "--json", "--comm", "scope-a", "--comm", "scope-b"]).unwrap();
    let srv = servers(&bed, &[5001, 5002, 5003]);
    connect_as(&bed, 5001, c"scope-a", 0);
    connect_as(&bed, 5002, c"scope-b", 0);
    connect_as(&bed, 5003, c"scope-other", 0);
    for s in srv {
        s.join().unwrap().unwrap();
    }
    let events = stop(child, &lines, &ready);
    assert_eq!(client_ports(&events, cns), [5001, 5002], "{events:#?}");
    assert!(events
        .iter()
        .filter(|e| e.netns == Some(cns))
        .all(|e| matches!(e.comm.as_deref(), Some("scope-a" | "scope-b"))));
}

#[test]
fn a_uid_selects_its_connections_and_no_other() {
    require_root();
    let bed = TestBed::create(&tag("scope-uid")).unwrap();
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let (child, lines, ready) = start(&["events", "--json", "--uid", "65534"]).unwrap();
    let srv = servers(&bed, &[5011, 5012]);
    connect_as(&bed, 5011, c"scope-nobody", 65534);
    connect_as(&bed, 5012, c"scope-root", 0);
    for s in srv {
        s.join().unwrap().unwrap();
    }
    let events = stop(child, &lines, &ready);
    assert_eq!(client_ports(&events, cns), [5011], "{events:#?}");
}

/// `upgrade --uid U --events` traces what it upgrades, where the upgrade attaches; elsewhere
/// it is refused with status 2 and says so.
#[test]
fn upgrade_events_trace_exactly_the_upgraded_scope() {
    require_root();
    let bed = TestBed::create(&tag("scope-up")).unwrap();
    let cns = TestBed::netns_inode(&bed.client).unwrap();
    let (child, lines, ready) = match start(&[
        "upgrade",
        "--uid",
        "65534",
        "--comm",
        "scope-nobody",
        "--events",
        "--json",
    ]) {
        Ok(r) => r,
        Err((code, err)) => {
            assert_eq!(code, 2, "{err}");
            assert!(
                err.contains("needs Linux ≥ 6.6") || err.contains("refused"),
                "not the upgrade's refusal: {err}"
            );
            return;
        }
    };
    let srv = servers(&bed, &[5021, 5022, 5023, 5024, 5025]);
    connect_as(&bed, 5021, c"scope-nobody", 65534);
    connect_as(&bed, 5022, c"scope-nobody", 0);
    connect_as(&bed, 5023, c"scope-other", 65534);
    // TCP sockets: the one in scope is upgraded (and reported), the other stays TCP.
    connect_with(&bed, 5024, c"scope-nobody", 65534, Proto::Tcp);
    connect_with(&bed, 5025, c"scope-other", 65534, Proto::Tcp);
    for s in srv {
        s.join().unwrap().unwrap();
    }
    let events = stop(child, &lines, &ready);
    assert_eq!(client_ports(&events, cns), [5021, 5024], "{events:#?}");
    // The upgrade reports the one TCP socket it upgraded, and only that one (the program's own
    // scope decided at socket()); the native MPTCP sockets are not the upgrade's.
    let ups: Vec<&Event> = events
        .iter()
        .filter(|e| e.event == Kind::SocketUpgraded)
        .collect();
    assert_eq!(ups.len(), 1, "{events:#?}");
    assert_eq!(ups[0].comm.as_deref(), Some("scope-nobody"), "{events:#?}");
}
