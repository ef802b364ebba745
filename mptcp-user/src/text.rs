//! Human-readable, column-aligned event lines for `mptcp-trace events`.

use std::{fmt::Write, net::IpAddr};

use crate::event::{Event, Kind, Side};

pub const HEADER: &str =
    "TIME            EVENT                TOKEN     LOCAL                  REMOTE                 DETAILS";

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        _ => "-".into(),
    }
}

/// `HH:MM:SS.micros` (UTC) out of the RFC 3339 stamp.
fn clock(time: &str) -> &str {
    time.get(11..26).unwrap_or(time)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{}M", n >> 20),
        n if n >= 10 << 10 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// One line, without a trailing newline.
pub fn line(e: &Event) -> String {
    let mut details = String::new();
    let d = &mut details;
    match e.event {
        Kind::ConnCreated => {
            let side = match e.side {
                Some(Side::Server) => "server",
                _ => "client",
            };
            let _ = write!(d, "{side} ");
            if e.protocol.is_some() {
                d.push_str("tcp ");
            }
        }
        Kind::ConnFallback => {
            let _ = write!(d, "reason={} ", e.reason.as_deref().unwrap_or("?"));
        }
        Kind::ConnClosed => {
            if let Some(ns) = e.duration_ns {
                let _ = write!(d, "duration={:.3}s ", ns as f64 / 1e9);
            }
            let _ = write!(d, "subflows={} ", e.subflows_total.unwrap_or(0));
        }
        Kind::SubflowEstablished | Kind::SubflowClosed => {
            let _ = write!(
                d,
                "dev={} ids={}→{} {}",
                e.ifname.as_deref().unwrap_or("?"),
                e.local_id.unwrap_or(0),
                e.remote_id.unwrap_or(0),
                if e.join == Some(true) {
                    "join "
                } else {
                    "initial "
                },
            );
            if e.backup == Some(true) {
                d.push_str("backup ");
            }
            if e.event == Kind::SubflowClosed {
                let _ = write!(
                    d,
                    "reason={} sent={} acked={} recv={} retrans={} rtt={}us ",
                    e.reason.as_deref().unwrap_or("?"),
                    bytes(e.bytes_sent.unwrap_or(0)),
                    bytes(e.bytes_acked.unwrap_or(0)),
                    bytes(e.bytes_received.unwrap_or(0)),
                    e.retrans.unwrap_or(0),
                    e.srtt_us.unwrap_or(0),
                );
            }
        }
        Kind::AddrAnnounced | Kind::AddrRemoved => {
            let _ = write!(d, "remote_id={} ", e.remote_id.unwrap_or(0));
        }
        Kind::Lost => {
            let _ = write!(d, "count={} ", e.count.unwrap_or(0));
        }
        Kind::ConnEstablished => {}
    }
    if let Some(pid) = e.pid {
        let _ = write!(d, "pid={pid} comm={} ", e.comm.as_deref().unwrap_or("?"));
    }
    if let Some(ns) = e.netns {
        let _ = write!(d, "netns={ns}");
    }
    let (local, remote) = if e.event == Kind::Lost {
        (String::new(), String::new())
    } else if matches!(e.event, Kind::AddrAnnounced | Kind::AddrRemoved) {
        ("-".into(), endpoint(e.addr, e.port))
    } else {
        (endpoint(e.saddr, e.sport), endpoint(e.daddr, e.dport))
    };
    format!(
        "{:<15} {:<20} {:<9} {:<22} {:<22} {}",
        clock(&e.time),
        e.event.as_str(),
        e.token.as_deref().unwrap_or("-"),
        local,
        remote,
        details.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{tests::sample, to_event, Clock};
    use mptcp_common::EventKind;

    #[test]
    fn subflow_lines_are_aligned_with_the_header() {
        let e = to_event(&sample(EventKind::SubflowClosed), &Clock::fixed(0)).unwrap();
        let l = line(&e);
        assert_eq!(
            l,
            "00:00:02.000000 subflow_closed       0a0b0c0d  192.168.0.2:48726      10.0.0.1:4321          \
             dev=blue-client ids=1→0 join reason=closed sent=1000 acked=900 recv=10 retrans=1 rtt=250us \
             pid=42 comm=client netns=4026531840"
        );
        assert_eq!(l.find("subflow_closed"), HEADER.find("EVENT"));
        assert_eq!(l.find("192.168"), HEADER.find("LOCAL"));
        assert_eq!(l.find("dev="), HEADER.find("DETAILS"));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(
            endpoint(Some("fe80::1".parse().unwrap()), Some(80)),
            "[fe80::1]:80"
        );
        assert_eq!(bytes(20 << 20), "20M");
    }
}
