//! What the running kernel supports, as every command tells it, checked against the kernel
//! itself. It runs on every kernel of the VM matrix, and it is the only suite a guest without
//! MPTCP runs (Debian 11's 5.10 is built with `# CONFIG_MPTCP is not set`): there each command
//! must refuse with the one sentence that names the missing feature and leave nothing behind;
//! on a kernel with MPTCP the same commands must start.
//!
//! The oracle is the kernel's answer to `socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`:
//! `EPROTONOSUPPORT` when the protocol does not exist, a socket when it does.

use std::process::{Command, Output};

use integration_tests::{mptcp_trace_bin, prog_ids_held_by_any_process, require_root};
use mptcp_user::sys::mptcp::MISSING;

/// The kernel's own answer: can an MPTCP socket be made here?
fn kernel_makes_mptcp_sockets() -> bool {
    const IPPROTO_MPTCP: i32 = 262;
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if fd >= 0 {
        // SAFETY: fd was just returned by socket(2).
        unsafe { libc::close(fd) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPROTONOSUPPORT),
        "socket(IPPROTO_MPTCP) failed otherwise than a missing protocol: {err}"
    );
    false
}

fn mptcp_trace(args: &[&str]) -> Output {
    Command::new(mptcp_trace_bin())
        .args(args)
        .output()
        .expect("run mptcp-trace")
}

/// `doctor --json`'s host check `name`.
fn host_check(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name && c["scope"] == "host")
        .unwrap_or_else(|| panic!("no host check {name}: {report}"))
        .clone()
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// On a kernel without MPTCP: exactly the one refusal line and `status`; nothing attached.
fn assert_refused(args: &[&str], status: i32) {
    let before = prog_ids_held_by_any_process();
    let out = mptcp_trace(args);
    assert_eq!(
        stderr_lines(&out),
        vec![format!("mptcp-trace: {MISSING}")],
        "mptcp-trace {args:?} on a kernel without MPTCP"
    );
    assert_eq!(out.status.code(), Some(status), "mptcp-trace {args:?}");
    assert!(
        out.stdout.is_empty(),
        "mptcp-trace {args:?} printed {out:?}"
    );
    let after = prog_ids_held_by_any_process();
    assert!(
        after.is_subset(&before),
        "mptcp-trace {args:?} left programs behind: {:?}",
        after.difference(&before)
    );
}

#[test]
fn kernel_support_tracing_starts_or_names_the_missing_mptcp() {
    require_root();
    if kernel_makes_mptcp_sockets() {
        let out = mptcp_trace(&["events", "--duration", "1"]);
        assert!(
            out.status.success(),
            "events on a kernel with MPTCP: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(MISSING), "{err}");
        assert!(err.contains("lost"), "the exit summary is printed: {err}");
    } else {
        for args in [
            &["events", "--duration", "1"][..],
            &["events", "--json", "--duration", "1"],
            &["stats", "--duration", "1"],
            &["demo", "--json", "--duration", "1"],
        ] {
            assert_refused(args, 2);
        }
    }
}

#[test]
fn kernel_support_the_upgrade_and_run_name_the_missing_mptcp() {
    require_root();
    if kernel_makes_mptcp_sockets() {
        // `run` works on every kernel with MPTCP (seccomp where the hook is missing).
        // (The upgrade's own suite covers what `upgrade` does with MPTCP.)
        let out = mptcp_trace(&["run", "--", "true"]);
        assert!(out.status.success(), "run -- true: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(MISSING));
    } else {
        assert_refused(&["upgrade", "--all"], 2);
        assert_refused(&["upgrade", "--comm", "curl", "--pin"], 2);
        // `run` follows env(1): 125 is its own failure; CMD never ran.
        let marker =
            std::env::temp_dir().join(format!("kernel-support-ran-{}", std::process::id()));
        let touch = format!("touch {}", marker.display());
        assert_refused(&["run", "--", "sh", "-c", &touch], 125);
        assert!(
            !marker.exists(),
            "run started its command on a kernel without MPTCP"
        );
    }
}

#[test]
fn kernel_support_doctor_says_whether_the_kernel_has_mptcp() {
    require_root();
    let out = mptcp_trace(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {out:?}"));
    let check = host_check(&report, "mptcp");
    if kernel_makes_mptcp_sockets() {
        assert_eq!(check["status"], "ok", "{check}");
    } else {
        assert_eq!(check["status"], "fail", "{check}");
        let detail = check["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("CONFIG_MPTCP"), "{check}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "doctor exits 1 when a check fails"
        );
    }
}

/// What this kernel supports, in the words of the tool's own outputs, as one line the VM
/// runner collects into the matrix's table (`MPTCP-TRACE-SUPPORT key=value;…`): tracing, the
/// fields the tracer had to leave empty, the upgrade's two methods, and the fallback causes the
/// kernel counts (the diagnosis names a fallback's cause from them). Each value is checked
/// against the kernel where the kernel can say it.
#[test]
fn kernel_support_prints_what_this_kernel_supports() {
    require_root();
    let mptcp = kernel_makes_mptcp_sockets();
    // -v: the loader says which programs it attached.
    let trace = mptcp_trace(&["-v", "events", "--duration", "1"]);
    let lacks: Vec<String> = stderr_lines(&trace)
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once("this kernel lacks ")?;
            Some(
                rest.trim_end_matches(": that field stays empty")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(trace.status.success(), mptcp, "events: {trace:?}");
    let tracing = if mptcp { "yes" } else { "no (no MPTCP)" };
    // The rescue program is loaded where the kernel is preemptible. Oracle: the preemption
    // model in force, which debugfs names (the guests mount it; a host may not).
    let rescued = stderr_lines(&trace)
        .iter()
        .any(|l| l.contains("attached inet_sock_set_state_rescue"));
    let model = std::fs::read_to_string("/sys/kernel/debug/sched/preempt")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .find_map(|w| Some(w.strip_prefix('(')?.strip_suffix(')')?.to_string()))
        });
    if let (true, Some(m)) = (mptcp, &model) {
        assert_eq!(
            rescued,
            matches!(m.as_str(), "full" | "lazy" | "rt"),
            "preemption {m}: {trace:?}"
        );
    }
    let rescue = match (mptcp, rescued, &model) {
        (false, ..) => "-".to_string(),
        (true, r, Some(m)) => format!("{} (preemption {m})", if r { "yes" } else { "no" }),
        (true, r, None) => (if r { "yes" } else { "no" }).to_string(),
    };

    // A field is there unless the tracer said it had to leave it empty.
    let field = |lacked: &str| match (mptcp, lacks.iter().any(|l| l.contains(lacked))) {
        (false, _) => "-",
        (true, true) => "no",
        (true, false) => "yes",
    };
    // `reset_sent_reason` comes from tcp_send_reset's `enum sk_rst_reason` argument.
    let sent_reason = field("reset_sent_reason");
    let received_reason = field("MP_TCPRST reasons");

    let doctor = mptcp_trace(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor --json");
    let host = |name: &str| host_check(&report, name);
    // The oracle for the hook: the kernel's own symbol table.
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    let has_hook = kallsyms
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("update_socket_protocol"));
    let kernel = host("kernel");
    assert_eq!(
        kernel["detail"]
            .as_str()
            .unwrap()
            .contains("has the upgrade hook"),
        has_hook,
        "{kernel}"
    );
    let upgrade = host("upgrade");
    let bpf = if upgrade["status"] == "ok" {
        "yes".to_string()
    } else if !has_hook {
        "no (no hook)".to_string()
    } else {
        // Its first sentence: what refused it.
        let detail = upgrade["detail"].as_str().unwrap_or_default();
        format!("no ({})", detail.split(". ").next().unwrap_or(detail))
    };
    let seccomp = if mptcp {
        let run = mptcp_trace(&["run", "--method", "seccomp", "--", "true"]);
        assert!(run.status.success(), "run --method seccomp: {run:?}");
        "yes"
    } else {
        "no (no MPTCP)"
    };
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let fallback_counters: Vec<&str> = netstat
        .lines()
        .find(|l| l.starts_with("MPTcpExt:"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter(|n| n.contains("Fallback") || *n == "InfiniteMapTx")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        fallback_counters.is_empty(),
        !mptcp,
        "{fallback_counters:?}"
    );

    println!(
        "MPTCP-TRACE-SUPPORT kernel={};tracing={tracing};rescue program={rescue};\
         reset reason received={received_reason};\
         reset reason sent={sent_reason};fallback causes counted={};upgrade bpf={bpf};\
         upgrade seccomp (run)={seccomp};fields left empty={}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim(),
        fallback_counters.len(),
        if lacks.is_empty() {
            "none".to_string()
        } else {
            lacks.join(", ")
        }
    );
}
