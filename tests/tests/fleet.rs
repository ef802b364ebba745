//! `stats` and `exporter`: exact counts for a known traffic pattern in the seed's test bed, a
//! real Prometheus (Debian's `prometheus`) scraping the exporter every second and its HTTP API
//! agreeing with the kernel's MPTcpExt counters, the shipped scrape config and alerting rules
//! checked by `promtool`, and bad input refused. Host only for the Prometheus part (the guests
//! have no Prometheus): see `HOST_ONLY` in xtask/src/vm.rs.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    joins::{add_join_endpoint, bed_without_join, connected, server_addr},
    mptcp_ext, mptcp_trace_bin, peer, require_root, tag, testbed, Background, ChildGuard,
};
use peer::Proto;

const WAIT: Duration = Duration::from_secs(60);

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// Waits until the client's join shows in the kernel's counters.
fn wait_counter(netns: &str, name: &str, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    while mptcp_ext(netns).get(name).copied().unwrap_or(0) < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The traffic pattern: one connection whose join is refused (its listener is gone when the
/// client's endpoint appears), then `joined` connections that each get a join, then one to a
/// plain TCP server (a fallback); all closed at the end.
fn traffic(bed: &testbed::TestBed, joined: u16, port: u16) {
    let (c, s, l) = connected(bed, server_addr(false, port), Proto::Mptcp);
    drop(l);
    let failed_before = mptcp_ext(&bed.client)
        .get("MPJoinSynTx")
        .copied()
        .unwrap_or(0);
    add_join_endpoint(bed, false, &["subflow"]);
    wait_counter(&bed.client, "MPJoinSynTx", failed_before + 1);
    let mut open = vec![(c, s)];
    for i in 0..joined {
        let before = mptcp_ext(&bed.client)
            .get("MPJoinSynAckRx")
            .copied()
            .unwrap_or(0);
        let (c, s, _l) = connected(bed, server_addr(false, port + 1 + i), Proto::Mptcp);
        wait_counter(&bed.client, "MPJoinSynAckRx", before + 1);
        open.push((c, s));
    }
    let (c, s, _l) = connected(bed, server_addr(false, port + 100), Proto::Tcp);
    open.push((c, s));
    drop(open);
}

/// `stats --json`'s last line that satisfies `pred`, waiting for it.
fn stats_line(
    bg: &Background,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = bg
            .stdout
            .snapshot()
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pred(v))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed {what}:\n{}",
            bg.stdout.snapshot().join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn row<'a>(v: &'a serde_json::Value, group: &str, name: &str) -> &'a serde_json::Value {
    v[group]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {group} {name}: {v}"))
}

#[test]
fn stats_counts_a_known_traffic_pattern_exactly() {
    require_root();
    let (bed, _, _) = bed_without_join("fstats");
    let before = mptcp_ext(&bed.client);
    let mut bg = Background::start(&[
        "stats",
        "--json",
        "--interval",
        "0.2",
        "--netns",
        &bed.client,
        "--netns",
        &bed.server,
    ]);
    const JOINED: u16 = 4;
    traffic(&bed, JOINED, 4601);
    let v = stats_line(&bg, "every connection closed", |v| {
        v["total"]["closed"].as_u64() == Some(2 * (JOINED as u64 + 1) + 1)
    });
    let status = bg.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let after = mptcp_ext(&bed.client);
    let n = JOINED as u64;
    // The client: the refused-join connection, the joined ones, the fallback.
    let c = row(&v, "netns", &bed.client);
    assert_eq!(c["opened"], n + 2, "{v}");
    assert_eq!(c["established"], n + 2, "{v}");
    assert_eq!(c["closed"], n + 2, "{v}");
    assert_eq!(c["joined"], n, "{v}");
    assert_eq!(c["fallbacks"], 1, "{v}");
    assert_eq!(c["subflows_failed"], 1, "{v}");
    // The server: the MPTCP connections only (the plain TCP server has none).
    let s = row(&v, "netns", &bed.server);
    assert_eq!(s["opened"], n + 1, "{v}");
    assert_eq!(s["joined"], n, "{v}");
    assert_eq!(s["fallbacks"], 0, "{v}");
    assert_eq!(
        v["reasons"]["fallback"]["mp_capable_not_negotiated"], 1,
        "{v}"
    );
    assert_eq!(v["reasons"]["subflow_failed"]["ECONNREFUSED"], 1, "{v}");
    assert_eq!(v["lost"]["count"], 0, "{v}");
    // The kernel's own counters for the same run.
    assert_eq!(delta(&before, &after, "MPCapableSYNACKRX"), n + 1);
    assert_eq!(delta(&before, &after, "MPJoinSynAckRx"), n);
    assert_eq!(delta(&before, &after, "MPCapableFallbackSYNACK"), 1);
    // The text form of the same counters.
    let out = Command::new(mptcp_trace_bin())
        .args(["stats", "--duration", "1", "--netns", &bed.client])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("total ")) && text.contains("opened"),
        "{text}"
    );
}

#[test]
fn stats_and_exporter_refuse_bad_values_with_one_line_and_status_2() {
    require_root();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    for args in [
        vec!["stats", "--interval", "0"],
        vec!["stats", "--interval", "soon"],
        vec!["stats", "--top", "0"],
        vec!["exporter", "--listen", "localhost"],
        vec!["exporter", "--listen", "300.1.1.1:80"],
        vec!["exporter", "--listen", busy_addr.as_str()],
    ] {
        let out = Command::new(mptcp_trace_bin())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "{url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One instant query against Prometheus' HTTP API: the single result's value, if any.
fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-G"])
        .arg(format!("http://{prom}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={q}"))
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(name)
}

#[test]
fn prometheus_scrapes_the_exporter_and_agrees_with_the_kernels_counters() {
    require_root();
    // The shipped scrape config and alerting rules are valid.
    for (what, file) in [
        ("config", "prometheus.yml"),
        ("rules", "mptcp-trace.rules.yml"),
    ] {
        let out = Command::new("promtool")
            .args(["check", what])
            .arg(contrib(file))
            .output()
            .expect("promtool (Debian's prometheus, installed by scripts/setup.sh)");
        assert!(out.status.success(), "{file}: {out:?}");
    }

    let (bed, _, _) = bed_without_join("fprom");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut exporter = Background::start(&[
        "exporter",
        "--listen",
        &listen,
        "--netns",
        &bed.client,
        "--netns",
        &bed.server,
    ]);
    assert_eq!(
        http_get(&format!("http://{listen}/")),
        "mptcp-trace exporter: Prometheus metrics at /metrics\n"
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(tag("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mptcp-trace\n    \
             static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (installed by scripts/setup.sh)"),
    );

    let before = mptcp_ext(&bed.client);
    const JOINED: u16 = 3;
    traffic(&bed, JOINED, 4701);
    // Every connection closed on both ends before the counters are compared.
    let closed = 2.0 * (JOINED as f64 + 1.0) + 1.0;
    let deadline = Instant::now() + WAIT;
    while query(prom, "sum(mptcp_connections_closed_total)") != Some(closed) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {closed} closes: {:?}; log: {}",
            query(prom, "sum(mptcp_connections_closed_total)"),
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(500));
    }
    let after = mptcp_ext(&bed.client);
    let c = &bed.client;
    for (promql, counter) in [
        (
            format!("sum(mptcp_connections_established_total{{netns=\"{c}\"}})"),
            "MPCapableSYNACKRX",
        ),
        (
            format!("sum(mptcp_subflows_joined_total{{netns=\"{c}\"}})"),
            "MPJoinSynAckRx",
        ),
        (
            format!("sum(mptcp_fallbacks_total{{netns=\"{c}\"}})"),
            "MPCapableFallbackSYNACK",
        ),
    ] {
        let k = delta(&before, &after, counter);
        assert!(k > 0, "{counter} did not move");
        // The fallback connection was established too (as plain TCP).
        let expected = if counter == "MPCapableSYNACKRX" {
            k + delta(&before, &after, "MPCapableFallbackSYNACK")
        } else {
            k
        };
        assert_eq!(
            query(prom, &promql),
            Some(expected as f64),
            "{promql} vs {counter}"
        );
    }
    assert_eq!(
        query(
            prom,
            &format!("sum(mptcp_subflows_failed_total{{netns=\"{c}\",reason=\"ECONNREFUSED\"}})")
        ),
        Some(1.0)
    );
    assert_eq!(query(prom, "up{job=\"mptcp-trace\"}"), Some(1.0));
    assert_eq!(query(prom, "sum(mptcp_trace_events_lost_total)"), Some(0.0));
    // Histograms: one duration per closed MPTCP connection end.
    assert_eq!(
        query(prom, "sum(mptcp_connection_duration_seconds_count)"),
        Some(closed)
    );

    // SIGTERM: the programs detach and the port closes.
    let status = exporter.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the port is still open"
    );
}
