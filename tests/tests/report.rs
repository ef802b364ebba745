//! `mptcp-trace report`: a fresh capture of the demo (`demo --json --stats-interval`) made into
//! a page, the page's structure checked against the capture (one lane per subflow, each
//! connection's totals equal to its subflow_closed counters), rendered by headless Chromium
//! (its DOM holds the same lanes, and its screenshot is kept under the test's output), and bad
//! input refused with one line and status 2. Host only (the guests have no browser): the
//! page is userspace work on a capture, the same on every kernel.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use integration_tests::{
    abort_on_close, closed_in,
    joins::{bed_without_join, connected, server_addr},
    mptcp_trace_bin,
    peer::Proto,
    require_root, tag, testbed, Event, Kind, Tracer,
};

/// Upper bound for events to show up.
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where this test keeps what it made (the screenshot among them).
fn output_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn report(args: &[&str]) -> Output {
    Command::new(mptcp_trace_bin())
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

/// The values of `attr` on the elements whose opening tag starts with `open`, in order.
fn attrs(html: &str, open: &str, attr: &str) -> Vec<String> {
    html.match_indices(open)
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            let at = tag
                .find(&format!(" {attr}=\""))
                .unwrap_or_else(|| panic!("{attr} missing in {tag}"));
            let v = &tag[at + attr.len() + 3..];
            v[..v.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Each connection's section of the page: its token and its HTML.
fn sections(html: &str) -> Vec<(String, &str)> {
    let open = "<section class=\"conn\"";
    html.match_indices(open)
        .map(|(i, _)| {
            let sec = &html[i..i + html[i..].find("</section>").unwrap()];
            (attrs(sec, open, "data-token").remove(0), sec)
        })
        .collect()
}

/// Headless Chromium on `page`: its serialized DOM, and a screenshot at `png`.
fn chromium(page: &Path, png: &Path) -> String {
    let url = format!("file://{}", page.display());
    let base = [
        "--headless",
        // Root in a test: Chromium's sandbox refuses to run as root.
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1100,1500",
    ];
    let shot = Command::new("chromium")
        .args(base)
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .expect("chromium (installed by scripts/setup.sh)");
    assert!(shot.status.success(), "{shot:?}");
    let dom = Command::new("chromium")
        .args(base)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(dom.status.success(), "{dom:?}");
    String::from_utf8(dom.stdout).unwrap()
}

#[test]
fn a_demo_capture_becomes_a_page_chromium_renders_with_a_lane_per_subflow_and_its_totals() {
    require_root();
    let dir = output_dir();
    let name = tag("report");
    let capture = dir.join(format!("{name}.ndjson"));
    let demo = Command::new(mptcp_trace_bin())
        .args([
            "demo",
            "--json",
            "--duration",
            "5",
            "--stats-interval",
            "0.5",
        ])
        .stdout(std::fs::File::create(&capture).unwrap())
        .output()
        .unwrap();
    assert!(demo.status.success(), "{demo:?}");
    let text = std::fs::read_to_string(&capture).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| {
        events
            .iter()
            .filter(move |e| e["event"] == kind)
            .collect::<Vec<_>>()
    };
    assert!(!of("subflow_stats").is_empty(), "the demo recorded samples");
    // From the capture: subflows, bytes sent and received per token.
    let mut lanes: HashMap<String, usize> = HashMap::new();
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut received: HashMap<String, u64> = HashMap::new();
    for e in of("subflow_established")
        .iter()
        .chain(&of("subflow_failed"))
    {
        *lanes
            .entry(e["token"].as_str().unwrap().into())
            .or_default() += 1;
    }
    for e in of("subflow_closed") {
        *sent.entry(e["token"].as_str().unwrap().into()).or_default() +=
            e["bytes_sent"].as_u64().unwrap();
        *received
            .entry(e["token"].as_str().unwrap().into())
            .or_default() += e["bytes_received"].as_u64().unwrap();
    }
    let closed_received: u64 = of("subflow_closed")
        .iter()
        .map(|e| e["bytes_received"].as_u64().unwrap())
        .sum();
    assert!(
        closed_received > 1 << 20,
        "the demo moved data: {closed_received}"
    );
    assert_eq!(
        of("conn_created").len(),
        2,
        "the demo's connection, both ends"
    );

    let page = dir.join(format!("{name}.html"));
    let out = report(&[capture.to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(2 connections, 4 subflows,"), "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    let tokens = attrs(&html, "<tr class=\"conn-row\"", "data-token");
    assert_eq!(tokens.len(), 2, "one summary row per connection");
    let row = |attr: &str| attrs(&html, "<tr class=\"conn-row\"", attr);
    for (((t, n), b), r) in tokens
        .iter()
        .zip(row("data-subflows"))
        .zip(row("data-bytes-sent"))
        .zip(row("data-bytes-received"))
    {
        assert_eq!(n.parse::<usize>().unwrap(), lanes[t], "lanes of {t}");
        assert_eq!(b.parse::<u64>().unwrap(), sent[t], "bytes sent by {t}");
        assert_eq!(
            r.parse::<u64>().unwrap(),
            received[t],
            "bytes received by {t}"
        );
    }
    // Received over all connections: the capture's subflow_closed bytes_received, summed.
    assert_eq!(
        row("data-bytes-received")
            .iter()
            .map(|r| r.parse::<u64>().unwrap())
            .sum::<u64>(),
        closed_received
    );
    // The lanes of each connection carry the same totals as its row.
    for (t, sec) in sections(&html) {
        let lane = |attr: &str| -> u64 {
            attrs(sec, "<g class=\"lane\"", attr)
                .iter()
                .map(|v| v.parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(lane("data-bytes-sent"), sent[&t], "lanes of {t}");
        assert_eq!(lane("data-bytes-received"), received[&t], "lanes of {t}");
        // The throughput bands stack to the connection's totals: every byte of its subflows,
        // sent or received, in one band (the samples, and the bytes after the last at each
        // subflow's close).
        let bands = attrs(sec, "<path class=\"band\"", "data-bytes");
        assert_eq!(bands.len(), lanes[&t], "one band per subflow of {t}");
        let stacked: u64 = bands.iter().map(|b| b.parse::<u64>().unwrap()).sum();
        assert_eq!(stacked, sent[&t] + received[&t], "bands of {t}");
    }
    let lane_count = lanes.values().sum::<usize>();
    assert_eq!(html.matches("<g class=\"lane\"").count(), lane_count);
    assert_eq!(html.matches("<svg class=\"throughput\"").count(), 2);
    assert_eq!(html.matches("<svg class=\"rtt\"").count(), 2);
    // Self-contained: no script, stylesheet or image to fetch.
    for needle in ["<script", "<link", "<img", "@import", "https://"] {
        assert!(!html.contains(needle), "{needle}");
    }

    let png = dir.join("report.png");
    let _ = std::fs::remove_file(&png);
    let dom = chromium(&page, &png);
    assert_eq!(
        dom.matches("<g class=\"lane\"").count(),
        lane_count,
        "{dom}"
    );
    assert_eq!(dom.matches("class=\"band\"").count(), lane_count);
    let shot = std::fs::metadata(&png).unwrap().len();
    assert!(shot > 20_000, "a screenshot with content: {shot} bytes");
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn bad_captures_and_outputs_are_one_line_and_status_2() {
    require_root();
    let dir = output_dir();
    let name = tag("report-bad");
    let junk = dir.join(format!("{name}.ndjson"));
    std::fs::write(&junk, "{\"v\":1,\"event\":\"nope\"}\n").unwrap();
    let empty = dir.join(format!("{name}-empty.ndjson"));
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.join(format!("{name}-missing.ndjson"));
    let good = dir.join(format!("{name}-good.ndjson"));
    std::fs::write(&good, include_str!("../data/demo-capture.ndjson")).unwrap();
    let nowhere = dir.join("no-such-dir").join("x.html");
    for (args, says) in [
        (vec![junk.to_str().unwrap()], "line 1: not an event"),
        (vec![empty.to_str().unwrap()], "no events in it"),
        (vec![missing.to_str().unwrap()], "cannot read the capture"),
        (
            vec![good.to_str().unwrap(), "-o", nowhere.to_str().unwrap()],
            "cannot write",
        ),
        (
            vec![good.to_str().unwrap(), "-o", good.to_str().unwrap()],
            "would overwrite its capture",
        ),
    ] {
        let out = report(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!nowhere.exists());
    }
    // The capture the last refusal named is untouched.
    assert_eq!(
        std::fs::read_to_string(&good).unwrap(),
        include_str!("../data/demo-capture.ndjson")
    );
    // Standard input in, standard output out.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} report - -o - < {}",
            mptcp_trace_bin().display(),
            good.display()
        ))
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    let html = String::from_utf8(piped.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<g class=\"lane\"").count(), 4);
}

/// A real capture with what goes wrong, made in the seed's test bed (client namespace only):
/// an MPTCP connection whose server announces its blue address (ADD_ADDR; the join towards it
/// finds no listener there and fails) and which the client then aborts (a reset on its
/// subflow), and a connection to a plain TCP server (fallback). The page marks each: a
/// diamond per ADD_ADDR, a cross per failed join, a red square per reset, a fallback line,
/// and a block per diagnosis, as many as the capture has of each, in the connection's own
/// section; Chromium renders the same marks.
#[test]
fn a_capture_with_resets_fallback_add_addr_and_diagnoses_marks_each_on_the_page() {
    require_root();
    let (bed, cns, _) = bed_without_join("rcause");
    // The server announces its blue address; its listener stays on the red one only.
    testbed::add_endpoint(
        &bed.server,
        testbed::BLUE_SERVER_V4,
        Some("blue-server"),
        21,
        &["signal"],
    )
    .unwrap();
    let tracer = Tracer::start(&["--netns", &bed.client]);
    let (mptcp_client, mptcp_server, _l1) = connected(&bed, server_addr(false, 4421), Proto::Mptcp);
    let (tcp_client, tcp_server, _l2) = connected(&bed, server_addr(false, 4422), Proto::Tcp);
    tracer.wait_for(
        "the ADD_ADDR, the fallback and a diagnosis of each",
        WAIT,
        |ev| {
            let has = |k: Kind| ev.iter().any(|e| e.netns == Some(cns) && e.event == k);
            let diagnosed = ev
                .iter()
                .filter(|e| e.netns == Some(cns) && e.event == Kind::ConnDiagnosis)
                .filter_map(|e| e.token.clone())
                .collect::<std::collections::HashSet<_>>();
            has(Kind::AddrAnnounced) && has(Kind::ConnFallback) && diagnosed.len() == 2
        },
    );
    abort_on_close(&mptcp_client);
    drop((mptcp_client, tcp_client));
    drop((mptcp_server, tcp_server));
    tracer.wait_for("both connections closed", WAIT, closed_in(cns, 2));
    let run = tracer.stop();
    assert!(run.status.success(), "{}", run.stderr);

    let dir = output_dir();
    let name = tag("report-causes");
    let capture = dir.join(format!("{name}.ndjson"));
    let text: String = run
        .events
        .iter()
        .map(|e| serde_json::to_string(e.raw.as_ref().unwrap()).unwrap() + "\n")
        .collect();
    std::fs::write(&capture, text).unwrap();
    let ev = |token: &str, kind: Kind| -> Vec<&Event> {
        run.events
            .iter()
            .filter(|e| e.token.as_deref() == Some(token) && e.event == kind)
            .collect()
    };
    let tokens: Vec<String> = run
        .events
        .iter()
        .filter(|e| e.event == Kind::ConnCreated)
        .map(|e| e.token.clone().unwrap())
        .collect();
    assert_eq!(tokens.len(), 2, "{}", run.stderr);

    let page = dir.join(format!("{name}.html"));
    let out = report(&[capture.to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    let secs = sections(&html);
    assert_eq!(
        secs.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        tokens
    );
    let (mut resets, mut fallbacks, mut announces, mut diags) = (0, 0, 0, 0);
    for (t, sec) in &secs {
        let announced = ev(t, Kind::AddrAnnounced).len();
        assert_eq!(
            sec.matches("<path class=\"announce\"").count(),
            announced,
            "{t}"
        );
        assert_eq!(
            sec.matches("class=\"mark failed\"").count(),
            ev(t, Kind::SubflowFailed).len(),
            "{t}"
        );
        let reset = ev(t, Kind::SubflowClosed)
            .iter()
            .filter(|e| e.reason.as_deref() != Some("closed"))
            .count();
        assert_eq!(sec.matches("class=\"mark reset\"").count(), reset, "{t}");
        let fell = ev(t, Kind::ConnFallback);
        assert_eq!(
            sec.matches("<line class=\"fallback\"").count(),
            fell.len(),
            "{t}"
        );
        for f in &fell {
            let why = f.reason.as_deref().unwrap();
            assert!(sec.contains(&format!(": {why}</title>")), "{t}: {why}");
        }
        let d = ev(t, Kind::ConnDiagnosis);
        assert_eq!(sec.matches("<div class=\"diag\">").count(), d.len(), "{t}");
        for e in &d {
            let cause = e.cause.as_deref().unwrap();
            assert!(
                sec.contains(&format!("<div class=\"diag\"><b>{cause}</b>: ")),
                "{t}: {cause}"
            );
            // And in its summary row.
            let row = &html[html.find(&format!("data-token=\"{t}\"")).unwrap()..];
            let row = &row[..row.find("</tr>").unwrap()];
            assert!(row.contains(cause), "{row}");
        }
        (resets, fallbacks, announces, diags) = (
            resets + reset,
            fallbacks + fell.len(),
            announces + announced,
            diags + d.len(),
        );
    }
    // Each kind of mark was made for real: the abort reset the MPTCP connection's subflow,
    // the plain TCP server made the other fall back, the server announced its address, and
    // each connection got a diagnosis (the failed join, the fallback).
    assert!(resets >= 1, "{html}");
    assert_eq!(fallbacks, 1);
    assert!(announces >= 1);
    assert_eq!(
        diags,
        run.events
            .iter()
            .filter(|e| e.event == Kind::ConnDiagnosis)
            .count()
    );
    assert!(diags >= 2);
    let fallback_diag = run
        .events
        .iter()
        .any(|e| e.event == Kind::ConnDiagnosis && e.cause.as_deref() == Some("fallback"));
    assert!(fallback_diag, "{}", run.stderr);

    let png = dir.join("report-causes.png");
    let _ = std::fs::remove_file(&png);
    let dom = chromium(&page, &png);
    for (needle, n) in [
        ("class=\"mark reset\"", resets),
        ("class=\"fallback\"", fallbacks),
        ("class=\"announce\"", announces),
        ("class=\"diag\"", diags),
    ] {
        assert_eq!(dom.matches(needle).count(), n, "{needle} in the DOM");
    }
    assert!(std::fs::metadata(&png).unwrap().len() > 20_000);
    eprintln!("screenshot: {}", png.display());
}
