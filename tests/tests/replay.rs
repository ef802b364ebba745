//! `live --replay`: a real capture (tests/data/demo-capture.ndjson, written by `events --json
//! --stats-interval 1` during `demo`) played in tmux, by an unprivileged user: no eBPF, no root.

use std::{process::Command, time::Duration};

use integration_tests::{mptcp_trace_bin, require_root, tag, Tmux};

/// The capture, built into the test binary: the VM guests have the binaries, not the source
/// tree.
const CAPTURE_TEXT: &str = include_str!("../data/demo-capture.ndjson");

/// The capture written to a file of this test's own, readable by everyone (the replay runs
/// as nobody).
fn capture(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("{name}.ndjson"));
    std::fs::write(&path, CAPTURE_TEXT).unwrap();
    path.display().to_string()
}

/// `setpriv` to user nobody, without capabilities: what the replay must run as. By its full
/// path: a busybox shell (the guests') would run its own applet, which lacks these options.
fn as_nobody() -> String {
    let setpriv = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("setpriv"))
        .find(|p| p.is_file())
        .expect("setpriv (util-linux) in PATH");
    format!(
        "{} --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all",
        setpriv.display()
    )
}

#[test]
fn a_capture_replays_on_screen_without_privileges() {
    // Root only to drop to nobody (and tmux's own needs); the replay itself runs unprivileged.
    require_root();
    let name = tag("replay");
    let cap = capture(&name);
    let cmd = format!(
        "{} {} live --replay {cap} --speed 0; echo EXIT=$?; sleep 60",
        as_nobody(),
        mptcp_trace_bin().display()
    );
    let t = Tmux::start(&name, &cmd);
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| {
        s.contains("c3c00218") && s.contains("a436ea2c") && s.contains("ended at")
    });
    assert!(ok, "the capture's connections are not on screen:\n{screen}");
    // Its two connections and four subflows, with the close's figures (13.8 MiB on red).
    for needle in [
        "red-client",
        "blue-client",
        "red-server",
        "blue-server",
        "13.8MiB",
    ] {
        assert!(screen.contains(needle), "{needle}:\n{screen}");
    }
    assert!(screen.contains("30 events"), "{screen}");
    // The final screen stays until q, then the terminal is given back.
    std::thread::sleep(Duration::from_millis(600));
    assert!(t.capture().contains("c3c00218"), "{}", t.capture());
    t.keys("q");
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| s.contains("EXIT=0"));
    assert!(ok, "q did not end the replay:\n{screen}");
    assert_eq!(t.display("#{alternate_on}"), "0");
}

#[test]
fn a_capture_plays_at_its_pace() {
    require_root();
    let name = tag("replay-pace");
    let cap = capture(&name);
    // The capture spans 3.7 s: at ×1 it is still playing after a second.
    let cmd = format!(
        "{} live --replay {cap}; sleep 60",
        mptcp_trace_bin().display()
    );
    let t = Tmux::start(&name, &cmd);
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| s.contains(" of 30 events"));
    assert!(ok, "{screen}");
    let (ok, screen) = t.wait_for(Duration::from_secs(15), |s| s.contains("ended at 3.7 s"));
    assert!(ok, "{screen}");
    t.keys("q");
}

#[test]
fn a_bad_capture_is_one_line_and_status_2() {
    let dir = std::env::temp_dir().join(tag("badcap"));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.ndjson");
    std::fs::write(&junk, "{\"v\":1,\"event\":\"nope\"}\n").unwrap();
    let empty = dir.join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.join("missing.ndjson");
    let cap = capture(&tag("badcap-good"));
    for (args, says) in [
        (vec!["--replay", junk.to_str().unwrap()], "line 1:"),
        (vec!["--replay", empty.to_str().unwrap()], "no events"),
        (vec!["--replay", missing.to_str().unwrap()], "cannot read"),
        (vec!["--replay", cap.as_str(), "--speed", "fast"], "--speed"),
        (vec!["--replay", cap.as_str(), "--speed", "-2"], "--speed"),
        (vec!["--replay", cap.as_str(), "--port", "80"], "selectors"),
        (vec!["--speed", "2"], "--replay only"),
    ] {
        let out = Command::new(mptcp_trace_bin())
            .arg("live")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The terminal going away (an ssh session dropped; here `tmux kill-server`) ends the view:
/// it used to wait forever for its key reader, stuck in a read on the dead tty, spinning and
/// — for `live` — keeping its programs attached.
#[test]
fn a_hung_up_terminal_ends_the_view() {
    require_root();
    let name = tag("replay-hup");
    let pid_file = std::env::temp_dir().join(format!("{name}.pid"));
    let cap = capture(&name);
    let cmd = format!(
        "echo $$ > {}; exec {} live --replay {cap} --speed 0",
        pid_file.display(),
        mptcp_trace_bin().display()
    );
    let t = Tmux::start(&name, &cmd);
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| s.contains("ended at"));
    assert!(ok, "{screen}");
    let pid = integration_tests::take_pid_file(&pid_file);
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    drop(t);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = proc_dir.exists();
    if left {
        // Leave nothing behind, then fail.
        // SAFETY: plain kill of the pid this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(!left, "the view outlived its terminal");
}
