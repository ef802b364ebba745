//! Human-readable, column-aligned event lines for `mptcp-trace events`.

use std::{fmt::Write, net::IpAddr};

use crate::event::{Data, Event, Side, Subflow, UpgradeOutcome};

pub const HEADER: &str =
    "TIME            EVENT                TOKEN     LOCAL                  REMOTE                 DETAILS";

/// Writes `addr:port` (`[addr]:port` for IPv6), `addr`, or `-`.
fn endpoint(d: &mut String, addr: Option<IpAddr>, port: Option<u16>) {
    let _ = match (addr, port) {
        (Some(IpAddr::V6(a)), Some(p)) => write!(d, "[{a}]:{p}"),
        (Some(a), Some(p)) => write!(d, "{a}:{p}"),
        (Some(a), None) => write!(d, "{a}"),
        _ => write!(d, "-"),
    };
}

/// Pads what was written to `d` since `start` with spaces to `width` characters, then adds
/// the column separator (what `{:<width} ` does, without a `String` per column).
fn pad(d: &mut String, start: usize, width: usize) {
    let n = d[start..].chars().count();
    d.extend(std::iter::repeat_n(' ', width.saturating_sub(n) + 1));
}

/// `HH:MM:SS.micros` (UTC) out of the RFC 3339 stamp.
fn clock(time: &str) -> &str {
    time.get(11..26).unwrap_or(time)
}

/// A byte count for people, in IEC units (powers of 1024: `KiB`, `MiB`, `GiB`, `TiB`) with
/// one decimal, or exact below 1 KiB (`900B`). The one convention of every human-facing output
/// (text events, the live view, the demo's summary); the JSON carries exact byte counts.
pub fn size(n: u64) -> String {
    Size(n).to_string()
}

/// [`size`] as a `Display`, for writing into a line without a `String` of its own.
pub struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n}B");
        }
        let mut v = n as f64 / 1024.0;
        let mut unit = 0;
        // Rounded to one decimal, a value under the next unit could print as 1024.0.
        while v >= 1023.95 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1}{}", UNITS[unit])
    }
}

/// A kernel-provided string (command name, interface name) made safe for a terminal: control
/// characters and backslashes are written as `\xNN`, so a process cannot clear the screen,
/// forge lines (LF) or overwrite fields (CR) through its name.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn subflow_details(d: &mut String, sf: &Subflow) {
    let _ = write!(
        d,
        "dev={} ids=",
        printable(sf.ifname.as_deref().unwrap_or("?"))
    );
    let _ = match sf.local_id {
        Some(i) => write!(d, "{i}"),
        None => write!(d, "?"),
    };
    let _ = write!(
        d,
        "→{} {}",
        sf.remote_id,
        if sf.join { "join " } else { "initial " },
    );
    if sf.backup {
        d.push_str("backup ");
    }
    if sf.peer_backup {
        d.push_str("peer_backup ");
    }
}

/// `error=… reset_reason=… reset_sent_reason=…`, each only when known.
fn cause_details(d: &mut String, c: &crate::event::Cause) {
    for (k, v) in [
        ("error", &c.error),
        ("reset_reason", &c.reset_reason),
        ("reset_sent_reason", &c.reset_sent_reason),
    ] {
        if let Some(v) = v {
            let _ = write!(d, "{k}={v} ");
        }
    }
}

/// One line, without a trailing newline.
pub fn line(e: &Event) -> String {
    let mut l = String::new();
    line_into(&mut l, e);
    l
}

/// Appends [`line`] to `d`: the writer reuses one buffer for every line.
pub fn line_into(d: &mut String, e: &Event) {
    let start = d.len();
    d.push_str(clock(&e.time));
    pad(d, start, 15);
    let start = d.len();
    d.push_str(e.kind().as_str());
    pad(d, start, 20);
    let start = d.len();
    match e.token() {
        Some(t) => {
            let _ = write!(d, "{t}");
        }
        None => d.push('-'),
    }
    pad(d, start, 9);
    let start = d.len();
    match &e.data {
        Data::Lost(_) => {}
        Data::SocketUpgraded(u) => d.push_str(u.family.as_str()),
        Data::AddrAnnounced(_) | Data::AddrRemoved(_) => d.push('-'),
        _ => match e.tuple() {
            Some(t) => endpoint(d, Some(t.saddr), Some(t.sport)),
            None => d.push('-'),
        },
    }
    pad(d, start, 22);
    let start = d.len();
    match &e.data {
        Data::Lost(_) => {}
        Data::SocketUpgraded(_) => d.push('-'),
        Data::AddrAnnounced(a) | Data::AddrRemoved(a) => endpoint(d, a.addr, a.port),
        _ => match e.tuple() {
            Some(t) => endpoint(d, Some(t.daddr), Some(t.dport)),
            None => d.push('-'),
        },
    }
    pad(d, start, 22);
    let details = d.len();
    match &e.data {
        Data::ConnCreated(c) => {
            let _ = write!(d, "{} ", c.side.as_str());
            if c.conn.protocol.is_some() {
                d.push_str("tcp ");
            }
        }
        Data::ConnFallback(c) => {
            let _ = write!(d, "reason={} ", c.reason);
        }
        Data::ConnClosed(c) => {
            if let Some(ns) = c.duration_ns {
                let _ = write!(d, "duration={:.3}s ", ns as f64 / 1e9);
            }
            let _ = write!(d, "subflows={} ", c.subflows_total);
        }
        Data::ConnExisting(c) => {
            if let Some(Side::Server) = c.side {
                d.push_str("server ");
            }
            let _ = write!(d, "subflows={} ", c.subflows);
            if c.fallback {
                d.push_str("fallback ");
            }
        }
        Data::SubflowEstablished(c) => {
            subflow_details(d, &c.subflow);
            if c.existing {
                d.push_str("existing ");
            }
        }
        Data::SubflowClosed(c) => {
            subflow_details(d, &c.subflow);
            let _ = write!(d, "reason={} ", c.reason);
            cause_details(d, &c.cause);
            let _ = write!(
                d,
                "sent={} acked={} recv={} retrans={} rtt={}us ",
                Size(c.bytes_sent),
                Size(c.bytes_acked),
                Size(c.bytes_received),
                c.retrans,
                c.srtt_us,
            );
        }
        Data::SubflowFailed(c) => {
            subflow_details(d, &c.subflow);
            let _ = write!(d, "reason={} ", c.reason);
            cause_details(d, &c.cause);
            let _ = write!(d, "retrans={} ", c.retrans);
        }
        Data::AddrAnnounced(a) | Data::AddrRemoved(a) => {
            let _ = write!(d, "remote_id={} ", a.remote_id);
        }
        Data::ConnDiagnosis(c) => {
            let _ = write!(
                d,
                "cause={} detail=\"{}\" evidence=\"{}\" ",
                c.cause,
                printable(&c.detail),
                printable(&c.evidence.join("; "))
            );
        }
        Data::SubflowStats(c) => {
            subflow_details(d, &c.subflow);
            // The deltas first (what happened in this interval), then the totals.
            let _ = write!(
                d,
                "interval={:.3}s sent=+{} acked=+{} recv=+{} retrans=+{} total_sent={} total_acked={} total_recv={} total_retrans={} rtt={}us cwnd={} ",
                c.interval_ns as f64 / 1e9,
                Size(c.bytes_sent_delta),
                Size(c.bytes_acked_delta),
                Size(c.bytes_received_delta),
                c.retrans_delta,
                Size(c.bytes_sent),
                Size(c.bytes_acked),
                Size(c.bytes_received),
                c.retrans,
                c.srtt_us,
                c.cwnd,
            );
            if let Some(p) = c.pacing_rate {
                let _ = write!(d, "pacing={}/s ", Size(p));
            }
        }
        Data::Lost(l) => {
            let _ = write!(
                d,
                "count={} ring_buffer={} map_full={} stale_entry={} netlink={} ",
                l.count, l.ring_buffer, l.map_full, l.stale_entry, l.netlink
            );
            if let Some(r) = l.recursion_misses {
                let _ = write!(d, "recursion_misses={r} ");
            }
        }
        Data::SocketUpgraded(u) => {
            let _ = write!(d, "{} method={} ", u.outcome.as_str(), u.method.as_str());
            if let Some(r) = &u.reason {
                let _ = write!(d, "reason={r} ");
                if r == "ENOPROTOOPT" && u.outcome == UpgradeOutcome::KeptTcp {
                    d.push_str("(net.mptcp.enabled=0 in its namespace) ");
                }
            }
            let _ = write!(d, "pid={} comm={} ", u.pid, printable(&u.comm));
            if let Some(cg) = u.cgroup {
                let _ = write!(d, "cgroup={cg} ");
            }
        }
        Data::ConnEstablished(c) => {
            if let Some(t) = c.conn.peer_token {
                let _ = write!(d, "peer_token={t} ");
            }
            if c.peer_deny_join_id0 == Some(true) {
                d.push_str("peer_deny_join_id0 ");
            }
        }
    }
    if let Some(c) = e.conn() {
        if let Some(pid) = c.pid {
            let _ = write!(
                d,
                "pid={pid} comm={} ",
                printable(c.comm.as_deref().unwrap_or("?"))
            );
        }
        if let Some(ns) = c.netns {
            let _ = write!(d, "netns={ns}");
        }
    }
    // Trailing spaces of the details go, not the columns' padding (a line without details
    // ends with its separator, as it always did).
    let kept = d[details..].trim_end().len();
    d.truncate(details + kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{tests::sample, to_event, Clock},
        event::Family,
        upgrade::seccomp::Method,
    };
    use mptcp_common::EventKind;

    #[test]
    fn subflow_lines_are_aligned_with_the_header() {
        let e = to_event(&sample(EventKind::SubflowClosed), &Clock::fixed(0)).unwrap();
        let l = line(&e);
        assert_eq!(
            l,
            "00:00:02.000000 subflow_closed       0a0b0c0d  192.168.0.2:48726      10.0.0.1:4321          \
             dev=blue-client ids=1→0 join reason=closed sent=1000B acked=900B recv=10B retrans=1 rtt=250us \
             pid=42 comm=client netns=4026531840"
        );
        assert_eq!(l.find("subflow_closed"), HEADER.find("EVENT"));
        assert_eq!(l.find("192.168"), HEADER.find("LOCAL"));
        assert_eq!(l.find("dev="), HEADER.find("DETAILS"));
    }

    #[test]
    fn socket_upgraded_lines_say_the_outcome_and_why() {
        use crate::upgrade::seccomp::{Outcome, Upgraded};
        let mut u = Upgraded {
            ts_ns: 2_000_000_000,
            pid: 42,
            tid: 43,
            comm: "nc".into(),
            cgroup_id: 9,
            family: Family::Ipv6,
            nonblock: false,
            cloexec: true,
            method: Method::Seccomp,
            outcome: Outcome::Upgraded,
        };
        let e = crate::decode::seccomp_upgraded(&u, &Clock::fixed(0));
        let l = line(&e);
        assert_eq!(
            l,
            "00:00:02.000000 socket_upgraded      -         ipv6                   -                      \
             upgraded method=seccomp pid=42 comm=nc cgroup=9"
        );
        assert_eq!(l.find("upgraded method"), HEADER.find("DETAILS"));
        u.outcome = Outcome::KeptTcp {
            errno: libc::ENOPROTOOPT,
        };
        let l = line(&crate::decode::seccomp_upgraded(&u, &Clock::fixed(0)));
        assert!(
            l.contains("kept_tcp method=seccomp reason=ENOPROTOOPT (net.mptcp.enabled=0 in its namespace) pid=42"),
            "{l}"
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut d = String::new();
        endpoint(&mut d, Some("fe80::1".parse().unwrap()), Some(80));
        assert_eq!(d, "[fe80::1]:80");
    }

    #[test]
    fn sizes_are_iec() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(1024), "1.0KiB");
        assert_eq!(size(2_759_000), "2.6MiB");
        assert_eq!(size(20 << 20), "20.0MiB");
        assert_eq!(size((1 << 20) - 1), "1.0MiB");
        assert_eq!(size(5 << 30), "5.0GiB");
    }

    #[test]
    fn control_characters_in_names_cannot_reach_the_terminal() {
        let evil = "\x1b[2J\x1b[31mX\rY\nFA";
        assert_eq!(printable(evil), "\\x1b[2J\\x1b[31mX\\x0dY\\x0aFA");
        assert_eq!(printable("mptcp-peer"), "mptcp-peer");
        assert_eq!(
            printable("a\\b"),
            "a\\x5cb",
            "the escape itself cannot be forged"
        );
        let mut e = to_event(&sample(EventKind::ConnCreated), &Clock::fixed(0)).unwrap();
        e.conn_mut().unwrap().comm = Some(evil.into());
        let l = line(&e);
        assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
    }

    #[test]
    fn a_stats_record_is_one_line_deltas_first() {
        let json = r#"{"v":1,"time":"2026-12-06T06:11:07.314573481Z","ts_ns":16441609373116,"event":"subflow_stats","token":"c3c00218","peer_token":"a436ea2c","netns":4026532174,"pid":2005,"comm":"mptcp-trace","family":"ipv4","saddr":"192.168.0.2","sport":34675,"daddr":"10.0.0.1","dport":4321,"ifindex":3,"ifname":"blue-client","local_id":1,"remote_id":0,"backup":false,"peer_backup":false,"join":true,"interval_ns":999543109,"bytes_sent_delta":2645089,"bytes_acked_delta":2645089,"bytes_received_delta":0,"bytes_sent":2645089,"bytes_acked":2645090,"bytes_received":0,"retrans_delta":0,"retrans":0,"srtt_us":1902,"cwnd":38,"pacing_rate":52016432}"#;
        let e: Event = serde_json::from_str(json).unwrap();
        assert_eq!(
            line(&e),
            "06:11:07.314573 subflow_stats        c3c00218  192.168.0.2:34675      10.0.0.1:4321          \
             dev=blue-client ids=1→0 join interval=1.000s sent=+2.5MiB acked=+2.5MiB recv=+0B retrans=+0 \
             total_sent=2.5MiB total_acked=2.5MiB total_recv=0B total_retrans=0 rtt=1902us cwnd=38 \
             pacing=49.6MiB/s pid=2005 comm=mptcp-trace netns=4026532174"
        );
    }
}
