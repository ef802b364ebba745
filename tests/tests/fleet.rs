//! `stats` and `exporter`: exact counts for a known traffic pattern in the seed's test bed, a
//! real Prometheus (Debian's `prometheus`) scraping the exporter every second and its HTTP API
//! agreeing with the kernel's MPTcpExt counters, the shipped scrape config and alerting rules
//! checked by `promtool` (and the rules' unit tests run by `promtool test rules`), and bad
//! input refused. Host only for the Prometheus part (the guests
//! have no Prometheus): see `HOST_ONLY` in xtask/src/vm.rs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    joins::{add_join_endpoint, bed_without_join, connected, server_addr},
    loaded_program_ids, mptcp_ext, mptcp_trace_bin, peer, prog_ids_held_by, require_root, tag,
    testbed, Background, ChildGuard,
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

/// Names the calling thread `name` (at most 15 bytes): the threads it starts afterwards — the
/// test bed's clients, listeners and servers — inherit the name, so the `comm` the tracer
/// records for the test's connections is known. The name as the kernel reads it back.
fn name_this_thread(name: &std::ffi::CStr) -> String {
    // SAFETY: PR_SET_NAME with a NUL-terminated string names the calling thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(comm.trim_end().as_bytes(), name.to_bytes());
    comm.trim_end().to_string()
}

/// This process's cgroup v2 path, from /proc/self/cgroup (its `0::` line).
fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 hierarchy")
        .to_string()
}

/// The `Tcp:` counters of /proc/net/snmp in the named namespace (`AttemptFails`, …).
fn tcp_snmp(netns: &str) -> HashMap<String, u64> {
    integration_tests::proc_counters(netns, "/proc/net/snmp", "Tcp:")
}

/// The kernel's counters of both namespaces of the bed.
struct Kernel {
    client: HashMap<String, u64>,
    server: HashMap<String, u64>,
    client_tcp: HashMap<String, u64>,
}

impl Kernel {
    fn read(bed: &testbed::TestBed) -> Kernel {
        Kernel {
            client: mptcp_ext(&bed.client),
            server: mptcp_ext(&bed.server),
            client_tcp: tcp_snmp(&bed.client),
        }
    }
}

/// The refused join of [`traffic`] as the kernels counted it. No MPTcpExt counter names a join
/// answered by a RST (`MPJoinRejected` counts joins a listener's path manager refused; with the
/// listener gone the SYN never reaches MPTCP on the server): the client sent one join SYN more
/// than it received SYN/ACKs for, the server received and rejected no join beyond the answered
/// ones, and TCP counted one failed connection attempt (a RST in SYN-SENT) in the client's
/// namespace — the only one: every other connection of the pattern succeeds.
fn assert_one_refused_join(before: &Kernel, after: &Kernel, joined: u64) {
    let c = |n| delta(&before.client, &after.client, n);
    let s = |n| delta(&before.server, &after.server, n);
    assert_eq!(c("MPJoinSynTx"), joined + 1, "client join SYNs sent");
    assert_eq!(c("MPJoinSynAckRx"), joined, "client join SYN/ACKs received");
    assert_eq!(s("MPJoinSynRx"), joined, "server join SYNs received");
    assert_eq!(s("MPJoinRejected"), 0, "server joins rejected");
    assert_eq!(
        delta(&before.client_tcp, &after.client_tcp, "AttemptFails"),
        1,
        "client TCP AttemptFails"
    );
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
    let comm = name_this_thread(c"fleet-stats");
    let (bed, _, _) = bed_without_join("fstats");
    let before = mptcp_ext(&bed.client);
    let kernel_before = Kernel::read(&bed);
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
    assert_one_refused_join(&kernel_before, &Kernel::read(&bed), n);
    // Every connection is the test's own (the namespaces are): one command, the name this
    // thread gave itself, with the total of both namespaces.
    let comms = v["comm"].as_array().unwrap();
    assert_eq!(comms.len(), 1, "{v}");
    let by_comm = row(&v, "comm", &comm);
    assert_eq!(by_comm["opened"], 2 * n + 3, "{v}");
    assert_eq!(by_comm["closed"], 2 * (n + 1) + 1, "{v}");
    assert_eq!(by_comm["joined"], 2 * n, "{v}");
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

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a `/metrics` body (label values without `"`, `\` or newlines, as ours
/// are; a test fails on any other).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{l}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{l}"));
                    assert!(!body.contains('\\'), "escaped label value: {l}");
                    let labels = body
                        .split("\",")
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("{l}"));
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            (name.to_string(), labels, value)
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// How many of the programs `ids` the kernel lists as tracing programs (`tp_btf`, fentry, …).
fn tracing_programs(ids: &HashSet<u32>) -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            ids.contains(&p.id()) && p.program_type() == aya::programs::ProgramType::Tracing.into()
        })
        .count()
}

/// Waits (the kernel frees a program in deferred work) until none of `ids` is loaded.
fn assert_programs_gone(ids: &HashSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = loaded_program_ids().intersection(ids).copied().collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded after the exporter exited"
        );
        thread::sleep(Duration::from_millis(100));
    }
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
    // The alerting rules' unit tests: each alert fires for the service over its threshold
    // once the condition held for its `for:`, and for no other (a test that expected
    // nothing would pass on rules that never fire: the file expects both alerts too).
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(contrib("mptcp-trace.rules.test.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SUCCESS"),
        "promtool test rules: {out:?}"
    );

    let comm = name_this_thread(c"fleet-prom");
    let cgroup = own_cgroup();
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
    let kernel_before = Kernel::read(&bed);
    let started = Instant::now();
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

    let n = JOINED as u64;
    let kernel_after = Kernel::read(&bed);
    assert_one_refused_join(&kernel_before, &kernel_after, n);

    // The exporter's own /metrics, read directly.
    let body = http_get(&format!("http://{listen}/metrics"));
    let m = samples(&body);
    // Every per-owner series is the test's: its namespaces, the name this thread gave itself
    // (inherited by the threads that opened and accepted the connections) and this process'
    // cgroup as /proc/self/cgroup names it.
    let owned: Vec<&Sample> = m
        .iter()
        .filter(|(_, l, _)| l.contains_key("comm"))
        .collect();
    assert!(!owned.is_empty(), "{body}");
    for (name, l, _) in &owned {
        assert_eq!(l["comm"], comm, "{name} {l:?}");
        assert_eq!(l["cgroup"], cgroup, "{name} {l:?}");
        assert!(
            l["netns"] == bed.client || l["netns"] == bed.server,
            "{name} {l:?}"
        );
    }
    let opened = 2 * n + 3;
    assert_eq!(
        query(
            prom,
            &format!("sum(mptcp_connections_opened_total{{comm=\"{comm}\",cgroup=\"{cgroup}\"}})")
        ),
        Some(opened as f64)
    );
    // Programs attached: the tracing programs the exporter process holds, and no others.
    let held = prog_ids_held_by(exporter.pid());
    let tracing = tracing_programs(&held);
    assert!(
        tracing > 0,
        "the exporter holds no tracing program: {held:?}"
    );
    assert_eq!(tracing, held.len(), "{held:?}");
    assert_eq!(
        total(&m, "mptcp_trace_programs_attached", &[]),
        tracing as f64
    );
    assert_eq!(
        query(prom, "mptcp_trace_programs_attached"),
        Some(tracing as f64)
    );
    // Histograms. The answered joins as the kernels counted them: client SYN/ACKs, server
    // third ACKs (one per joined connection end; the refused join is no subflow of either).
    let client_joins = delta(
        &kernel_before.client,
        &kernel_after.client,
        "MPJoinSynAckRx",
    );
    let server_joins = delta(&kernel_before.server, &kernel_after.server, "MPJoinAckRx");
    let first_joins = client_joins + server_joins;
    assert_eq!(first_joins, 2 * n);
    // Subflows per connection: one observation per closed connection end, each with its
    // first subflow plus its answered join.
    assert_eq!(
        total(&m, "mptcp_subflows_per_connection_count", &[]),
        closed
    );
    assert_eq!(
        total(&m, "mptcp_subflows_per_connection_sum", &[]),
        closed + first_joins as f64
    );
    // Time to the first join: one per joined connection end, each shorter than the test.
    assert_eq!(
        total(&m, "mptcp_first_join_seconds_count", &[]),
        first_joins as f64
    );
    let join_time = total(&m, "mptcp_first_join_seconds_sum", &[]);
    assert!(
        join_time > 0.0 && join_time < first_joins as f64 * started.elapsed().as_secs_f64(),
        "{join_time}"
    );
    // Bytes per subflow: one observation per closed subflow, and at least what the test
    // exchanged (1000 bytes each way on every connection: 2000 sent + received at each MPTCP
    // connection end, the fallback's client end included).
    assert_eq!(
        total(&m, "mptcp_subflow_bytes_count", &[]),
        total(&m, "mptcp_subflows_closed_total", &[])
    );
    let bytes = total(&m, "mptcp_subflow_bytes_sum", &[]);
    assert!(bytes >= 2000.0 * closed, "{bytes} bytes for {closed} ends");
    // By interface, as the bed routes them: every first subflow over red (the client's n + 2
    // connection ends, the server's n + 1), every join over blue; the data went over red,
    // before the joins.
    let count = |ifname| total(&m, "mptcp_subflow_bytes_count", &[("ifname", ifname)]);
    let sum = |ifname| total(&m, "mptcp_subflow_bytes_sum", &[("ifname", ifname)]);
    assert_eq!(count("red-client"), (n + 2) as f64, "{body}");
    assert_eq!(count("red-server"), (n + 1) as f64, "{body}");
    assert_eq!(count("blue-client"), client_joins as f64, "{body}");
    assert_eq!(count("blue-server"), server_joins as f64, "{body}");
    assert!(sum("red-client") >= 2000.0 * (n + 2) as f64, "{body}");
    assert!(sum("red-server") >= 2000.0 * (n + 1) as f64, "{body}");
    for (name, l, _) in m
        .iter()
        .filter(|(n, _, _)| n.starts_with("mptcp_subflow_bytes"))
    {
        let ifname = l.get("ifname").map(String::as_str);
        assert!(
            matches!(
                ifname,
                Some("red-client" | "red-server" | "blue-client" | "blue-server")
            ),
            "{name} {l:?}"
        );
    }

    // SIGTERM: the programs detach and the port closes.
    let status = exporter.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the port is still open"
    );
    assert_programs_gone(&held);
}

#[test]
fn the_exporter_stopped_with_sigint_exits_0_closes_its_port_and_unloads_its_programs() {
    require_root();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut exporter = Background::start(&["exporter", "--listen", &listen]);
    let held = prog_ids_held_by(exporter.pid());
    let tracing = tracing_programs(&held);
    assert!(
        tracing > 0,
        "the exporter holds no tracing program: {held:?}"
    );
    assert!(loaded_program_ids().is_superset(&held));
    let m = samples(&http_get(&format!("http://{listen}/metrics")));
    assert_eq!(
        total(&m, "mptcp_trace_programs_attached", &[]),
        tracing as f64
    );
    let status = exporter.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the port is still open"
    );
    assert_programs_gone(&held);
}
