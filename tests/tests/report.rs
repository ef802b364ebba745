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

use integration_tests::{mptcp_trace_bin, require_root, tag};

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
    // From the capture: subflows and bytes sent per token.
    let mut lanes: HashMap<String, usize> = HashMap::new();
    let mut sent: HashMap<String, u64> = HashMap::new();
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
    }
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
    for (t, n, b) in tokens
        .iter()
        .zip(attrs(&html, "<tr class=\"conn-row\"", "data-subflows"))
        .zip(attrs(&html, "<tr class=\"conn-row\"", "data-bytes-sent"))
        .map(|((t, n), b)| (t, n, b))
    {
        assert_eq!(n.parse::<usize>().unwrap(), lanes[t], "lanes of {t}");
        assert_eq!(b.parse::<u64>().unwrap(), sent[t], "bytes sent by {t}");
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
