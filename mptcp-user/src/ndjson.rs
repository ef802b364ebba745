//! The NDJSON writer of the event stream: one event, one line, byte for byte what
//! `serde_json::to_writer` makes of [`Event`] (the unit tests hold the two together for every
//! kind and every optional field).
//!
//! Why not serde_json here: the event's serde shape (an internally tagged enum with its shared
//! parts flattened in) goes through serde's map path, where every key is escaped and written
//! piece by piece. Measured on `events --json` at 1,000 MPTCP connections a second
//! (`perf record`, 15 s), serialization was 28 % of the tracer's CPU, 17 % of it escaping
//! strings of which most are our own constant keys. Here each key is one constant copy and only
//! values that can hold any byte (a command name, an interface name, a reason) are escaped:
//! 2.4–2.5× faster per event than serde_json (`ndjson_writer_cost` below: 516 against 207 ns
//! on the development VM). Reading NDJSON (captures, `why`, `report`) and the JSON schema stay
//! with serde.

use std::net::IpAddr;

use crate::event::{Addr, Cause, Conn, Data, Event, Protocol, Subflow, Token, Tuple};

/// Appends `e` as one JSON object (no newline) to `out`.
pub fn write(out: &mut Vec<u8>, e: &Event) {
    // Every object starts with `v`; every member after it with a comma (see [`k!`]).
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.v).as_bytes());
    let mut o = Obj { out };
    // Our own RFC 3339 text (digits, `-`, `:`, `.`, `T`, `Z`), checked, not escaped.
    o.plain(k!("time"), &e.time);
    o.uint(k!("ts_ns"), e.ts_ns);
    o.name(k!("event"), e.kind().as_str());
    match &e.data {
        Data::ConnCreated(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.name(k!("side"), d.side.as_str());
        }
        Data::ConnEstablished(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            if let Some(b) = d.peer_deny_join_id0 {
                o.bool(k!("peer_deny_join_id0"), b);
            }
        }
        Data::ConnFallback(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.str(k!("reason"), &d.reason);
        }
        Data::ConnClosed(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.opt_uint(k!("duration_ns"), d.duration_ns);
            o.uint(k!("subflows_total"), d.subflows_total.into());
        }
        Data::ConnExisting(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            if let Some(s) = d.side {
                o.name(k!("side"), s.as_str());
            }
            o.uint(k!("subflows"), d.subflows.into());
            o.bool(k!("fallback"), d.fallback);
            o.uint(k!("add_addr_signal"), d.add_addr_signal.into());
            o.uint(k!("add_addr_accepted"), d.add_addr_accepted.into());
            o.uint(k!("subflows_max"), d.subflows_max.into());
        }
        Data::SubflowEstablished(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.subflow(&d.subflow);
            if d.existing {
                o.bool(k!("existing"), true);
            }
        }
        Data::SubflowClosed(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.str(k!("reason"), &d.reason);
            o.cause(&d.cause);
            o.subflow(&d.subflow);
            o.uint(k!("bytes_sent"), d.bytes_sent);
            o.uint(k!("bytes_acked"), d.bytes_acked);
            o.uint(k!("bytes_received"), d.bytes_received);
            o.uint(k!("retrans"), d.retrans.into());
            o.uint(k!("srtt_us"), d.srtt_us.into());
        }
        Data::SubflowFailed(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.str(k!("reason"), &d.reason);
            o.cause(&d.cause);
            o.subflow(&d.subflow);
            o.uint(k!("retrans"), d.retrans.into());
        }
        Data::AddrAnnounced(d) | Data::AddrRemoved(d) => o.addr(d),
        Data::ConnDiagnosis(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.str(k!("cause"), &d.cause);
            o.str(k!("detail"), &d.detail);
            o.key(k!("evidence"));
            o.out.push(b'[');
            for (i, s) in d.evidence.iter().enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                escaped(o.out, s);
            }
            o.out.push(b']');
        }
        Data::SocketUpgraded(d) => {
            o.uint(k!("pid"), d.pid.into());
            o.str(k!("comm"), &d.comm);
            o.opt_uint(k!("cgroup"), d.cgroup);
            o.name(k!("family"), d.family.as_str());
            o.name(k!("method"), d.method.as_str());
            o.name(k!("outcome"), d.outcome.as_str());
            if let Some(r) = &d.reason {
                o.str(k!("reason"), r);
            }
            o.bool(k!("nonblock"), d.nonblock);
            o.bool(k!("cloexec"), d.cloexec);
        }
        Data::SubflowStats(d) => {
            o.conn(&d.conn);
            o.tuple(&d.tuple);
            o.subflow(&d.subflow);
            o.uint(k!("interval_ns"), d.interval_ns);
            o.uint(k!("bytes_sent_delta"), d.bytes_sent_delta);
            o.uint(k!("bytes_acked_delta"), d.bytes_acked_delta);
            o.uint(k!("bytes_received_delta"), d.bytes_received_delta);
            o.uint(k!("bytes_sent"), d.bytes_sent);
            o.uint(k!("bytes_acked"), d.bytes_acked);
            o.uint(k!("bytes_received"), d.bytes_received);
            o.uint(k!("retrans_delta"), d.retrans_delta.into());
            o.uint(k!("retrans"), d.retrans.into());
            o.uint(k!("srtt_us"), d.srtt_us.into());
            o.uint(k!("cwnd"), d.cwnd.into());
            o.opt_uint(k!("pacing_rate"), d.pacing_rate);
        }
        Data::Lost(d) => {
            o.uint(k!("count"), d.count);
            o.uint(k!("ring_buffer"), d.ring_buffer);
            o.uint(k!("map_full"), d.map_full);
            o.uint(k!("stale_entry"), d.stale_entry);
            o.opt_uint(k!("recursion_misses"), d.recursion_misses);
            o.uint(k!("netlink"), d.netlink);
        }
    }
    o.out.push(b'}');
}

/// `,"name":` — a member's key as one constant: every object begins with `v`, so every key
/// written after it takes a comma, and our keys are snake_case names that need no escape.
/// (Written as one constant copy instead of four pieces: the copies were most of this
/// writer's time.)
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}
use k;

/// An object being written, after its `v`.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
}

impl Obj<'_> {
    /// A key made by [`k!`].
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        self.out.extend_from_slice(key.as_bytes());
    }

    #[inline(always)]
    fn uint(&mut self, key: &'static str, v: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    #[inline(always)]
    fn opt_uint(&mut self, key: &'static str, v: Option<impl Into<u64>>) {
        if let Some(v) = v {
            self.uint(key, v.into());
        }
    }

    #[inline(always)]
    fn bool(&mut self, key: &'static str, v: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// A value that can hold anything (escaped).
    #[inline(always)]
    fn str(&mut self, key: &'static str, v: &str) {
        self.key(key);
        escaped(self.out, v);
    }

    /// A value we made ourselves that needs no escape; checked (escaped when it would).
    #[inline(always)]
    fn plain(&mut self, key: &'static str, v: &str) {
        if v.bytes().any(needs_escape) {
            return self.str(key, v);
        }
        self.name(key, v);
    }

    /// One of our names (an event kind, an enum's snake_case value, a token's hex digits),
    /// written as it is: no escape needed.
    #[inline(always)]
    fn name(&mut self, key: &'static str, v: &str) {
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    fn token(&mut self, key: &'static str, t: Token) {
        self.name(key, std::str::from_utf8(&t.hex()).expect("hex is ASCII"));
    }

    fn ip(&mut self, key: &'static str, a: IpAddr) {
        use std::io::Write;
        self.key(key);
        match a {
            // Dotted decimal by hand: through `fmt` it was a third of this writer's time.
            IpAddr::V4(v4) => {
                self.out.push(b'"');
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out
                        .extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
                }
                self.out.push(b'"');
            }
            // Display of an address is hex digits, colons and dots: nothing to escape.
            IpAddr::V6(_) => {
                let _ = write!(self.out, "\"{a}\"");
            }
        }
    }

    fn conn(&mut self, c: &Conn) {
        if let Some(t) = c.token {
            self.token(k!("token"), t);
        }
        if let Some(t) = c.peer_token {
            self.token(k!("peer_token"), t);
        }
        self.opt_uint(k!("netns"), c.netns);
        self.opt_uint(k!("pid"), c.pid);
        if let Some(comm) = &c.comm {
            self.str(k!("comm"), comm);
        }
        if let Some(p) = c.protocol {
            self.name(
                k!("protocol"),
                match p {
                    Protocol::Tcp => "tcp",
                },
            );
        }
    }

    fn tuple(&mut self, t: &Tuple) {
        self.name(k!("family"), t.family.as_str());
        self.ip(k!("saddr"), t.saddr);
        self.uint(k!("sport"), t.sport.into());
        self.ip(k!("daddr"), t.daddr);
        self.uint(k!("dport"), t.dport.into());
    }

    fn subflow(&mut self, s: &Subflow) {
        self.opt_uint(k!("ifindex"), s.ifindex);
        if let Some(n) = &s.ifname {
            self.str(k!("ifname"), n);
        }
        self.opt_uint(k!("local_id"), s.local_id);
        self.uint(k!("remote_id"), s.remote_id.into());
        self.bool(k!("backup"), s.backup);
        self.bool(k!("peer_backup"), s.peer_backup);
        self.bool(k!("join"), s.join);
    }

    fn cause(&mut self, c: &Cause) {
        for (key, v) in [
            (k!("error"), &c.error),
            (k!("reset_reason"), &c.reset_reason),
            (k!("reset_sent_reason"), &c.reset_sent_reason),
        ] {
            if let Some(v) = v {
                self.str(key, v);
            }
        }
    }

    fn addr(&mut self, a: &Addr) {
        self.conn(&a.conn);
        if let Some(f) = a.family {
            self.name(k!("family"), f.as_str());
        }
        self.uint(k!("remote_id"), a.remote_id.into());
        if let Some(ip) = a.addr {
            self.ip(k!("addr"), ip);
        }
        self.opt_uint(k!("port"), a.port);
    }
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, the control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else (UTF-8 included) as it is.
fn escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every value (a command, an interface, a reason) has nothing to escape.
    if !bytes.iter().copied().any(needs_escape) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\x08' => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\x0c' => b"\\f",
            b'\r' => b"\\r",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{tests::sample, to_event, Clock},
        event::*,
        upgrade::seccomp::Method,
    };
    use mptcp_common::EventKind;

    fn ours(e: &Event) -> String {
        let mut v = Vec::new();
        write(&mut v, e);
        String::from_utf8(v).unwrap()
    }

    fn assert_same(e: &Event) {
        assert_eq!(ours(e), serde_json::to_string(e).unwrap(), "{e:#?}");
    }

    const ODD: &str = "a\"b\\c\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f} é→😀 end";

    fn conn(full: bool) -> Conn {
        if !full {
            return Conn::default();
        }
        Conn {
            token: Some(Token(0x0a0b0c0d)),
            peer_token: Some(Token(0xffffffff)),
            netns: Some(4026531840),
            pid: Some(u32::MAX),
            comm: Some(ODD.into()),
            protocol: Some(Protocol::Tcp),
            ids: Ids::default(),
        }
    }

    fn tuple(v6: bool) -> Tuple {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse().unwrap(), "fe80::abcd:1".parse().unwrap())
        } else {
            (
                "10.0.0.1".parse().unwrap(),
                "192.168.255.254".parse().unwrap(),
            )
        };
        Tuple {
            family: Family::of(s),
            saddr: s,
            sport: 0,
            daddr: d,
            dport: 65535,
        }
    }

    fn subflow(full: bool) -> Subflow {
        Subflow {
            ifindex: full.then_some(7),
            ifname: full.then(|| ODD.to_string()),
            local_id: full.then_some(255),
            remote_id: 3,
            backup: full,
            peer_backup: !full,
            join: full,
        }
    }

    fn cause(full: bool) -> Cause {
        if !full {
            return Cause::default();
        }
        Cause {
            error: Some("ECONNREFUSED".into()),
            reset_reason: Some("prohibited".into()),
            reset_sent_reason: Some(ODD.into()),
        }
    }

    /// One event of every kind with its optional fields all set (`full`) or all absent.
    fn every_kind(full: bool) -> Vec<Data> {
        let (c, t) = (conn(full), tuple(full));
        vec![
            Data::ConnCreated(ConnCreated {
                conn: c.clone(),
                tuple: t.clone(),
                side: if full { Side::Server } else { Side::Client },
            }),
            Data::ConnEstablished(ConnEstablished {
                conn: c.clone(),
                tuple: t.clone(),
                peer_deny_join_id0: full.then_some(false),
            }),
            Data::ConnFallback(ConnFallback {
                conn: c.clone(),
                tuple: t.clone(),
                reason: "mid_connection".into(),
            }),
            Data::ConnClosed(ConnClosed {
                conn: c.clone(),
                tuple: t.clone(),
                duration_ns: full.then_some(u64::MAX),
                subflows_total: 2,
            }),
            Data::ConnExisting(ConnExisting {
                conn: c.clone(),
                tuple: t.clone(),
                side: full.then_some(Side::Server),
                subflows: 1,
                fallback: full,
                add_addr_signal: 1,
                add_addr_accepted: 0,
                subflows_max: 8,
            }),
            Data::SubflowEstablished(SubflowEstablished {
                conn: c.clone(),
                tuple: t.clone(),
                subflow: subflow(full),
                existing: full,
            }),
            Data::SubflowClosed(SubflowClosed {
                conn: c.clone(),
                tuple: t.clone(),
                reason: "mp_tcprst:administratively_prohibited".into(),
                cause: cause(full),
                subflow: subflow(full),
                bytes_sent: 1,
                bytes_acked: 0,
                bytes_received: u64::MAX,
                retrans: 4,
                srtt_us: 250,
            }),
            Data::SubflowFailed(SubflowFailed {
                conn: c.clone(),
                tuple: t.clone(),
                reason: "ETIMEDOUT".into(),
                cause: cause(full),
                subflow: subflow(full),
                retrans: 6,
            }),
            Data::AddrAnnounced(Addr {
                conn: c.clone(),
                family: full.then_some(Family::Ipv6),
                remote_id: 5,
                addr: full.then(|| "fd00:0:0:192::1".parse().unwrap()),
                port: full.then_some(4343),
            }),
            Data::AddrRemoved(Addr {
                conn: c.clone(),
                family: None,
                remote_id: 0,
                addr: None,
                port: None,
            }),
            Data::ConnDiagnosis(ConnDiagnosis {
                conn: c.clone(),
                tuple: t.clone(),
                cause: "subflow_limit".into(),
                detail: ODD.into(),
                evidence: if full {
                    vec!["one".into(), ODD.into(), String::new()]
                } else {
                    vec![]
                },
            }),
            Data::SocketUpgraded(SocketUpgraded {
                pid: 42,
                comm: ODD.into(),
                cgroup: full.then_some(9),
                family: Family::Ipv6,
                method: if full { Method::Seccomp } else { Method::Bpf },
                outcome: if full {
                    UpgradeOutcome::KeptTcp
                } else {
                    UpgradeOutcome::Counted
                },
                reason: full.then(|| "ENOPROTOOPT".into()),
                nonblock: full,
                cloexec: !full,
            }),
            Data::SubflowStats(SubflowStats {
                conn: c.clone(),
                tuple: t.clone(),
                subflow: subflow(full),
                interval_ns: 1_000_000_000,
                bytes_sent_delta: 1,
                bytes_acked_delta: 2,
                bytes_received_delta: 3,
                bytes_sent: 4,
                bytes_acked: 5,
                bytes_received: 6,
                retrans_delta: 7,
                retrans: 8,
                srtt_us: 9,
                cwnd: 10,
                pacing_rate: full.then_some(11),
            }),
            Data::Lost(Lost {
                count: 3,
                ring_buffer: 1,
                map_full: 0,
                stale_entry: 0,
                recursion_misses: full.then_some(2),
                netlink: 0,
            }),
        ]
    }

    #[test]
    fn every_kind_is_written_as_serde_json_writes_it() {
        let mut kinds = std::collections::HashSet::new();
        for full in [true, false] {
            for d in every_kind(full) {
                let e = Event::new(u64::MAX, "2026-12-07T22:00:00.123456789Z".into(), d);
                kinds.insert(e.kind());
                assert_same(&e);
            }
        }
        assert_eq!(kinds.len(), 14, "one of each kind");
        // A time that is not ours (a test's, a capture's) is escaped all the same.
        assert_same(&Event::new(1, ODD.into(), every_kind(false).remove(0)));
        // Also the other upgrade outcomes and methods.
        for (outcome, method) in [
            (UpgradeOutcome::Upgraded, Method::Bpf),
            (UpgradeOutcome::Failed, Method::Seccomp),
        ] {
            let mut d = every_kind(true).remove(11);
            if let Data::SocketUpgraded(u) = &mut d {
                (u.outcome, u.method) = (outcome, method);
            }
            assert_same(&Event::new(0, String::new(), d));
        }
    }

    #[test]
    fn decoded_records_are_written_as_serde_json_writes_them() {
        for kind in [
            EventKind::ConnCreated,
            EventKind::ConnEstablished,
            EventKind::ConnFallback,
            EventKind::ConnClosed,
            EventKind::SubflowEstablished,
            EventKind::SubflowClosed,
            EventKind::SubflowFailed,
        ] {
            assert_same(&to_event(&sample(kind), &Clock::fixed(0)).unwrap());
        }
    }

    #[test]
    fn every_control_character_is_escaped_as_serde_json_does() {
        let all: String = (0u8..=0x7f).map(char::from).collect();
        let mut v = Vec::new();
        escaped(&mut v, &all);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
    }

    /// What one event costs to write, this writer against serde_json, on the events a churn of
    /// short two-subflow connections produces (decoded from the kernel records' samples).
    /// `cargo test -p mptcp-user --release --lib ndjson_writer_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand (see BENCHMARKS.md)"]
    fn ndjson_writer_cost() {
        use std::time::Instant;
        let clock = Clock::fixed(1_796_688_000_000_000_000);
        let events: Vec<Event> = [
            EventKind::ConnCreated,
            EventKind::ConnEstablished,
            EventKind::SubflowEstablished,
            EventKind::SubflowEstablished,
            EventKind::SubflowClosed,
            EventKind::SubflowClosed,
            EventKind::ConnClosed,
        ]
        .into_iter()
        .map(|k| to_event(&sample(k), &clock).unwrap())
        .collect();
        // What is timed is the same output.
        events.iter().for_each(assert_same);
        const N: usize = 200_000;
        let mut buf = Vec::with_capacity(1024);
        let mut best = [f64::MAX; 2];
        for _ in 0..5 {
            for (which, b) in best.iter_mut().enumerate() {
                let t = Instant::now();
                for i in 0..N {
                    buf.clear();
                    let e = &events[i % events.len()];
                    if which == 0 {
                        serde_json::to_writer(&mut buf, e).unwrap();
                    } else {
                        write(&mut buf, e);
                    }
                    std::hint::black_box(&buf);
                }
                *b = b.min(t.elapsed().as_nanos() as f64 / N as f64);
            }
        }
        println!(
            "ns per event, best of 5 runs of {N}: serde_json {:.0}, ndjson::write {:.0} ({:.2}x)",
            best[0],
            best[1],
            best[0] / best[1]
        );
        assert!(best[0] > 0.0 && best[1] > 0.0);
    }
}
