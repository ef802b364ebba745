//! `mptcp-trace doctor` against the seed's test bed on the real kernel: a healthy bed is all ✓
//! in both namespaces; each classic misconfiguration gives its ✗ (or documented ⚠) with a fix
//! command, and running that command turns the check ✓ again. Host checks are compared with
//! what this host really is. Root only; these tests never skip.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use integration_tests::{mptcp_trace_bin, require_root, run_fix, tag};
use mptcp_user::{
    doctor::{host, Check, Report, Scope, Status},
    peer::{self, Proto},
    testbed::{self, in_netns, TestBed},
    upgrade::UpgradeError,
};

const PORT: u16 = 4390;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn doctor(args: &[&str]) -> Out {
    let out = Command::new(mptcp_trace_bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run mptcp-trace doctor");
    Out {
        code: out.status.code().expect("doctor killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ns_args(bed: &TestBed) -> Vec<String> {
    vec![
        "--netns".into(),
        bed.client.clone(),
        "--netns".into(),
        bed.server.clone(),
    ]
}

/// `doctor --json` on the bed's namespaces.
fn report(bed: &TestBed) -> (i32, Report) {
    let mut args = ns_args(bed);
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = doctor(&args);
    assert!(
        out.stderr.is_empty(),
        "doctor wrote to stderr: {}",
        out.stderr
    );
    let r: Report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not a report ({e}):\n{}", out.stdout));
    (out.code, r)
}

fn in_ns<'a>(r: &'a Report, ns: &str) -> Vec<&'a Check> {
    r.checks
        .iter()
        .filter(|c| c.netns.as_ref().and_then(|n| n.name.as_deref()) == Some(ns))
        .collect()
}

fn find(r: &Report, ns: &str, name: &str) -> Option<Check> {
    in_ns(r, ns).into_iter().find(|c| c.name == name).cloned()
}

fn get(bed: &TestBed, ns: &str, name: &str) -> Check {
    let (code, r) = report(bed);
    let c = find(&r, ns, name).unwrap_or_else(|| panic!("no check {name} in {ns}: {r:#?}"));
    // Exit status: 1 exactly when some check failed.
    assert_eq!(
        code,
        (r.summary.fail > 0) as i32,
        "exit status vs {:?}",
        r.summary
    );
    c
}

/// Asserts `name` in `ns` has `status` and a fix, runs the fix, and waits for the check to be
/// ✓ (or gone, with `gone`).
fn fix_and_recheck(bed: &TestBed, ns: &str, name: &str, status: Status, gone: bool) -> Check {
    let c = get(bed, ns, name);
    assert_eq!(c.status, status, "{name}: {c:#?}");
    let fix = c
        .fix
        .clone()
        .unwrap_or_else(|| panic!("{name} has no fix: {c:#?}"));
    eprintln!("{name}: {} {}\n  fix: {fix}", c.status.symbol(), c.detail);
    run_fix(&fix);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = report(bed);
        match find(&r, ns, name) {
            None if gone => break,
            Some(after) if !gone && after.status == Status::Ok => break,
            after => assert!(
                Instant::now() < deadline,
                "after `{fix}`, {name} is {after:#?}"
            ),
        }
        thread::sleep(Duration::from_millis(200));
    }
    c
}

/// A listener in the server namespace (so that it accepts connections, as a server does).
fn listen(bed: &TestBed) -> TcpListener {
    let addr: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap();
    in_netns(&bed.server, move || peer::listen(addr, Proto::Mptcp))
        .unwrap()
        .expect("listen in the server namespace")
}

/// An open connection from the client to the server's red address (so that the client
/// namespace opens connections, as a client does).
fn connect(bed: &TestBed) -> TcpStream {
    let addr: SocketAddr = format!("{}:{PORT}", testbed::RED_SERVER_V4)
        .parse()
        .unwrap();
    in_netns(&bed.client, move || peer::connect(addr, Proto::Mptcp))
        .unwrap()
        .expect("connect from the client namespace")
}

fn bed(name: &str) -> TestBed {
    require_root();
    TestBed::create(&tag(name)).expect("test bed")
}

#[test]
fn doctor_a_healthy_bed_is_all_ok_and_the_host_checks_tell_the_truth() {
    let bed = bed("dr-ok");
    let _listener = listen(&bed);
    let (code, r) = report(&bed);
    for ns in [&bed.client, &bed.server] {
        let checks = in_ns(&r, ns);
        assert!(checks.len() >= 7, "{ns}: {checks:#?}");
        for c in checks {
            assert_eq!(c.status, Status::Ok, "{ns}: {c:#?}");
            assert_eq!(c.scope, Scope::Netns);
            assert!(c.fix.is_none(), "{c:#?}");
        }
    }
    let endpoint = find(&r, &bed.client, "endpoint:1").expect("the blue endpoint");
    assert!(
        endpoint.detail.contains("192.168.0.2")
            && endpoint
                .detail
                .contains("route 192.168.0.0/24 dev blue-client"),
        "{}",
        endpoint.detail
    );

    // Host checks, against what this host is.
    let host_check = |name: &str| {
        r.checks
            .iter()
            .find(|c| c.scope == Scope::Host && c.name == name)
            .unwrap_or_else(|| panic!("no host check {name}"))
            .clone()
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(host_check("kernel").detail.contains(release.trim()));
    assert_eq!(host_check("btf").status, Status::Ok);
    assert_eq!(host_check("mptcp").status, Status::Ok);
    assert_eq!(host_check("capabilities").status, Status::Ok, "root");
    let upgrade = host_check("upgrade");
    // The oracle: what `mptcp-trace upgrade` meets here (attach with an empty scope).
    match host::try_upgrade() {
        Ok(()) => assert_eq!(upgrade.status, Status::Ok, "{upgrade:#?}"),
        Err(UpgradeError::TrampolinesRefused(_)) => {
            assert_eq!(upgrade.status, Status::Fail);
            assert!(upgrade.detail.contains("EPERM"), "{}", upgrade.detail);
            assert!(
                upgrade.detail.contains("verifier log"),
                "{}",
                upgrade.detail
            );
            let lockdown = host::security().lockdown;
            if matches!(lockdown.as_deref(), None | Some("none" | "integrity")) {
                assert!(
                    upgrade.detail.contains("not the cause"),
                    "lockdown {lockdown:?} must not be blamed: {}",
                    upgrade.detail
                );
            }
        }
        Err(UpgradeError::HookMissing(_)) => {
            assert_eq!(upgrade.status, Status::Fail);
            assert!(upgrade
                .detail
                .contains("update_socket_protocol (added in 6.6)"));
        }
        Err(e) => {
            assert_eq!(upgrade.status, Status::Fail, "{e}: {upgrade:#?}");
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bpffs = host::mounts_of(&mountinfo, "bpf")
        .iter()
        .any(|m| m == "/sys/fs/bpf");
    let c = host_check("bpffs");
    assert_eq!(c.status == Status::Ok, bpffs, "{c:#?}");
    if !bpffs {
        assert_eq!(c.fix.as_deref(), Some("mount -t bpf bpf /sys/fs/bpf"));
    }
    let cgroup2 = !host::mounts_of(&mountinfo, "cgroup2").is_empty();
    assert_eq!(host_check("cgroup2").status == Status::Ok, cgroup2);
    assert_eq!(code, (r.summary.fail > 0) as i32);

    // The text form says the same, check by check.
    let args = ns_args(&bed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = doctor(&args);
    assert_eq!(text.code, code);
    let lines: Vec<(String, String)> = text
        .stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (sym, rest) = l.split_once(' ')?;
            ["✓", "⚠", "✗"].contains(&sym).then(|| {
                (
                    sym.to_string(),
                    rest.split(": ").next().unwrap_or("").to_string(),
                )
            })
        })
        .collect();
    let json: Vec<(String, String)> = r
        .checks
        .iter()
        .map(|c| (c.status.symbol().to_string(), c.name.clone()))
        .collect();
    assert_eq!(lines, json, "text:\n{}", text.stdout);
    eprintln!("{}", text.stdout);
}

#[test]
fn doctor_mptcp_disabled() {
    let bed = bed("dr-off");
    run_fix(&format!(
        "ip netns exec {} sysctl -q -w net.mptcp.enabled=0",
        bed.client
    ));
    let c = fix_and_recheck(&bed, &bed.client, "mptcp_enabled", Status::Fail, false);
    assert!(c.detail.contains("net.mptcp.enabled = 0"), "{}", c.detail);
}

#[test]
fn doctor_subflows_limit_zero_with_endpoints() {
    let bed = bed("dr-lim");
    testbed::ip(&["-n", &bed.client, "mptcp", "limits", "set", "subflow", "0"]).unwrap();
    let c = fix_and_recheck(&bed, &bed.client, "subflows_limit", Status::Fail, false);
    assert!(
        c.detail.contains("subflows 0 with 1 endpoint"),
        "{}",
        c.detail
    );
}

#[test]
fn doctor_add_addr_accepted_zero() {
    let bed = bed("dr-aa");
    let args = ["mptcp", "limits", "set", "add_addr_accepted", "0"];
    testbed::ip(&[&["-n", bed.client.as_str()][..], &args].concat()).unwrap();
    // No peer announced anything yet: a warning.
    fix_and_recheck(&bed, &bed.client, "add_addr_accepted", Status::Warn, false);
}

/// `add_addr_accepted 0` while peers do announce: the server signals its blue address and a
/// connection comes in; the client ignored the ADD_ADDR, a failure. Oracle: the client's
/// MPTcpExt AddAddr (ADD_ADDRs received), which the check names.
#[test]
fn doctor_add_addr_accepted_zero_while_peers_announce() {
    let bed = bed("dr-aa-sig");
    let args = ["mptcp", "limits", "set", "add_addr_accepted", "0"];
    testbed::ip(&[&["-n", bed.client.as_str()][..], &args].concat()).unwrap();
    testbed::add_endpoint(&bed.server, testbed::BLUE_SERVER_V4, None, 7, &["signal"]).unwrap();
    let _listener = listen(&bed);
    let _conn = connect(&bed);
    let received = || {
        integration_tests::mptcp_ext(&bed.client)
            .get("AddAddr")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while received() == 0 {
        assert!(
            Instant::now() < deadline,
            "the server's ADD_ADDR never arrived"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let n = received();
    let c = fix_and_recheck(&bed, &bed.client, "add_addr_accepted", Status::Fail, false);
    assert!(
        c.detail.contains(&format!("MPTcpExt AddAddr {n}")),
        "{}",
        c.detail
    );
}

#[test]
fn doctor_no_subflow_endpoint_on_the_client() {
    let bed = bed("dr-nosf");
    testbed::ip(&["-n", &bed.client, "mptcp", "endpoint", "delete", "id", "1"]).unwrap();
    // Nothing tells the role yet: a warning.
    let c = get(&bed, &bed.client, "subflow_endpoint");
    assert_eq!(c.status, Status::Warn, "{c:#?}");
    // An open connection and no listener: a client, a failure.
    let _listener = listen(&bed);
    let _conn = connect(&bed);
    let c = fix_and_recheck(&bed, &bed.client, "subflow_endpoint", Status::Fail, false);
    assert_eq!(
        c.fix.as_deref(),
        Some(
            format!(
                "ip -n {} mptcp endpoint add 192.168.0.2 dev blue-client subflow",
                bed.client
            )
            .as_str()
        )
    );
    // The server, listening, needs none.
    assert_eq!(
        get(&bed, &bed.server, "subflow_endpoint").status,
        Status::Ok
    );
}

#[test]
fn doctor_endpoint_on_a_down_interface() {
    let bed = bed("dr-down");
    testbed::ip(&["-n", &bed.client, "link", "set", "blue-client", "down"]).unwrap();
    let c = fix_and_recheck(&bed, &bed.client, "endpoint:1", Status::Fail, false);
    assert!(c.detail.contains("blue-client is down"), "{}", c.detail);
}

#[test]
fn doctor_endpoint_address_on_no_interface() {
    let bed = bed("dr-noaddr");
    testbed::add_endpoint(&bed.client, "192.168.0.99", None, 5, &["subflow"]).unwrap();
    let c = fix_and_recheck(&bed, &bed.client, "endpoint:5", Status::Fail, true);
    assert!(c.detail.contains("on no interface"), "{}", c.detail);
}

#[test]
fn doctor_signal_endpoint_on_the_client() {
    let bed = bed("dr-sig");
    // The blue address announced (`signal`) instead of used (`subflow`).
    testbed::ip(&["-n", &bed.client, "mptcp", "endpoint", "delete", "id", "1"]).unwrap();
    testbed::add_endpoint(
        &bed.client,
        testbed::BLUE_CLIENT_V4,
        Some("blue-client"),
        1,
        &["signal"],
    )
    .unwrap();
    // No socket tells the role: a warning with the same fix.
    let c = get(&bed, &bed.client, "signal_endpoints");
    assert_eq!(c.status, Status::Warn, "{c:#?}");
    assert!(c.detail.contains("cannot tell"), "{}", c.detail);
    let _listener = listen(&bed);
    let _conn = connect(&bed);
    fix_and_recheck(&bed, &bed.client, "signal_endpoints", Status::Fail, false);
    let ep = get(&bed, &bed.client, "endpoint:1");
    assert!(ep.detail.contains("192.168.0.2 subflow"), "{ep:#?}");
    assert_eq!(
        get(&bed, &bed.client, "subflow_endpoint").status,
        Status::Ok
    );
}

#[test]
fn doctor_an_unknown_netns_is_bad_input() {
    require_root();
    let out = doctor(&["--netns", "mptcp-no-such-namespace"]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--netns mptcp-no-such-namespace"),
        "{}",
        out.stderr
    );
}
