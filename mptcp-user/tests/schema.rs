//! The NDJSON schema: frozen by a golden file (a change must be deliberate: regenerate with
//! `MPTCP_TRACE_BLESS=1 cargo test -p mptcp-user --test schema`), strict enough to reject junk,
//! and matched by every line the tool writes.

use mptcp_user::event::json_schema;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema.golden.json");

fn validator() -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&json_schema())
        .expect("the schema compiles")
}

#[test]
fn the_schema_is_frozen() {
    let now = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("MPTCP_TRACE_BLESS").is_some() {
        std::fs::write(GOLDEN, &now).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden schema file");
    assert_eq!(
        now, golden,
        "the NDJSON schema changed: fields are added, never renamed; if this change is deliberate, \
         regenerate with MPTCP_TRACE_BLESS=1 cargo test -p mptcp-user --test schema"
    );
}

#[test]
fn junk_lines_fail_validation() {
    let v = validator();
    for junk in [
        // The issue's line: bad time, bad address, negative id, bad token, missing fields.
        r#"{"v":1,"time":"x","ts_ns":0,"event":"subflow_established","saddr":"not-an-ip","local_id":-5,"token":"nothex!!"}"#,
        // Each defect alone, on an otherwise valid line.
        r#"{"v":1,"time":"x","ts_ns":1,"event":"conn_established","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"conn_established","token":"5C0089F8","family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"conn_established","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.300","sport":1,"daddr":"10.0.0.1","dport":2}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"conn_established","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.2","sport":70000,"daddr":"10.0.0.1","dport":2}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"conn_established","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1"}"#,
        r#"{"v":2,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"lost","count":1,"ring_buffer":1,"map_full":0,"netlink":0}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"no_such_kind"}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"conn_created","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2}"#,
        r#"{"v":1,"time":"2026-11-25T09:30:24.112652209Z","ts_ns":1,"event":"subflow_established","token":"5c0089f8","family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2,"local_id":-5,"remote_id":0,"backup":false,"join":false}"#,
        // subflow_stats: without the interval its deltas cover; with a negative delta.
        r#"{"v":1,"time":"2026-12-06T06:11:07.314573481Z","ts_ns":1,"event":"subflow_stats","token":"c3c00218","netns":1,"family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2,"remote_id":0,"backup":false,"peer_backup":false,"join":false,"bytes_sent_delta":1,"bytes_acked_delta":1,"bytes_received_delta":0,"bytes_sent":1,"bytes_acked":1,"bytes_received":0,"retrans_delta":0,"retrans":0,"srtt_us":1,"cwnd":10}"#,
        r#"{"v":1,"time":"2026-12-06T06:11:07.314573481Z","ts_ns":1,"event":"subflow_stats","token":"c3c00218","netns":1,"family":"ipv4","saddr":"10.0.0.2","sport":1,"daddr":"10.0.0.1","dport":2,"remote_id":0,"backup":false,"peer_backup":false,"join":false,"interval_ns":5,"bytes_sent_delta":-1,"bytes_acked_delta":1,"bytes_received_delta":0,"bytes_sent":1,"bytes_acked":1,"bytes_received":0,"retrans_delta":0,"retrans":0,"srtt_us":1,"cwnd":10}"#,
        // socket_upgraded: no method, an unknown method, an unknown outcome, a negative pid.
        r#"{"v":1,"time":"2026-12-06T02:01:41.523191139Z","ts_ns":1,"event":"socket_upgraded","pid":2,"comm":"nc","family":"ipv4","outcome":"upgraded","nonblock":false,"cloexec":false}"#,
        r#"{"v":1,"time":"2026-12-06T02:01:41.523191139Z","ts_ns":1,"event":"socket_upgraded","pid":2,"comm":"nc","family":"ipv4","method":"ld_preload","outcome":"upgraded","nonblock":false,"cloexec":false}"#,
        r#"{"v":1,"time":"2026-12-06T02:01:41.523191139Z","ts_ns":1,"event":"socket_upgraded","pid":2,"comm":"nc","family":"ipv4","method":"bpf","outcome":"maybe","nonblock":false,"cloexec":false}"#,
        r#"{"v":1,"time":"2026-12-06T02:01:41.523191139Z","ts_ns":1,"event":"socket_upgraded","pid":-2,"comm":"nc","family":"ipv4","method":"bpf","outcome":"upgraded","nonblock":false,"cloexec":false}"#,
    ] {
        let value: serde_json::Value = serde_json::from_str(junk).unwrap();
        assert!(!v.is_valid(&value), "accepted: {junk}");
    }
}

#[test]
fn the_readmes_lines_are_valid() {
    let v = validator();
    // Every NDJSON line the README shows, as it is there: the examples are real output and
    // must stay valid (and byte-identical when read back) as the schema grows.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("{\"v\":1,"))
        .collect();
    assert!(lines.len() >= 10, "the README's examples: {lines:?}");
    for good in lines {
        let value: serde_json::Value = serde_json::from_str(good).unwrap();
        if let Err(e) = v.validate(&value) {
            panic!("rejected {good}: {e}");
        }
        // And the type reads it back to the same bytes: the NDJSON is byte-compatible.
        let e: mptcp_user::event::Event = serde_json::from_str(good).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), good);
    }
}
