//! Ring-buffer records → typed events. Records are checked, never trusted: a record of the wrong
//! size or an unknown kind is rejected with an error instead of being reinterpreted.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use mptcp_common::{flags, xflags, EventKind, RawEvent, AF_INET, AF_INET6};

use crate::event::{
    Addr, Cause, Conn, ConnClosed, ConnCreated, ConnEstablished, ConnFallback, Data, Event, Family,
    Ids, Lost, Protocol, Side, SocketUpgraded, Subflow, SubflowClosed, SubflowEstablished,
    SubflowFailed, Token, Tuple, UpgradeOutcome,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("ring-buffer record of unknown kind {0}")]
    Kind(u32),
    #[error("ring-buffer record of unknown address family {0}")]
    Family(u16),
}

/// Converts the kernel's CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime − monotonic, in nanoseconds, sampled once at start.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// A clock whose monotonic zero is the Unix epoch (tests).
    pub fn fixed(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn rfc3339(&self, ts_ns: u64) -> String {
        let ns = (ts_ns as i128 + self.offset_ns).max(0) as u128;
        let t = UNIX_EPOCH + Duration::from_nanos(ns as u64);
        humantime::format_rfc3339_nanos(t).to_string()
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads a record as the kernel wrote it.
pub fn raw(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let expected = std::mem::size_of::<RawEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length matches and RawEvent is plain data valid for any bit pattern;
    // read_unaligned because ring-buffer records are only 8-byte aligned by convention.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const RawEvent) })
}

pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    to_event(&raw(bytes)?, clock)
}

fn cstr(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    (end > 0).then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn addr(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            // An IPv6 socket talking IPv4 keeps v4-mapped addresses: show them as IPv4.
            Some(
                v6.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6)),
            )
        }
        _ => None,
    }
}

/// RFC 8684 §3.6 MP_TCPRST reason codes, with iproute2-like names.
pub fn mptcp_reset_reason(code: u8) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "mptcp_error",
        2 => "lack_of_resources",
        3 => "administratively_prohibited",
        4 => "too_much_outstanding_data",
        5 => "unacceptable_performance",
        6 => "middlebox_interference",
        _ => "unknown",
    }
}

/// MP_TCPRST reason codes (RFC 8684 §3.6) by the kernel's `MPTCP_RST_E*` names, short.
pub fn mptcp_reset_short(code: u8) -> String {
    match code {
        0 => "unspec".into(),
        1 => "mptcp".into(),
        2 => "resource".into(),
        3 => "prohibited".into(),
        4 => "wq2big".into(),
        5 => "badperf".into(),
        6 => "middlebox".into(),
        n => format!("code_{n}"),
    }
}

/// The peer's token: the most significant 32 bits of SHA-256 over its key in network order
/// (`mptcp_crypto_key_sha()`).
pub fn token_of_key(key: u64) -> Token {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.to_be_bytes());
    Token(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// What a subflow's end is known to be caused by, each part only from its evidence.
fn cause(r: &RawEvent) -> Cause {
    Cause {
        error: (r.sk_err != 0).then(|| errno_name(r.sk_err)),
        reset_reason: (r.flags & flags::MPTCP_RESET != 0)
            .then(|| mptcp_reset_short(r.reset_reason)),
        reset_sent_reason: (r.xflags & xflags::RST_SENT_REASON != 0).then(|| {
            crate::offsets::rst_reason_name(r.rst_sent_reason)
                .unwrap_or_else(|| format!("value_{}", r.rst_sent_reason))
        }),
    }
}

fn errno_name(e: u32) -> String {
    crate::sys::errno::name(e as i32).unwrap_or_else(|| format!("errno_{e}"))
}

/// Why a subflow closed, most specific first.
fn close_reason(r: &RawEvent) -> String {
    if r.flags & flags::MPTCP_RESET != 0 {
        format!("mp_tcprst:{}", mptcp_reset_reason(r.reset_reason))
    } else if r.flags & flags::RST_RECEIVED != 0 {
        "rst_received".into()
    } else if r.flags & flags::RST_SENT != 0 {
        "rst_sent".into()
    } else if r.sk_err != 0 {
        errno_name(r.sk_err)
    } else {
        "closed".into()
    }
}

pub fn to_event(r: &RawEvent, clock: &Clock) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u32(r.kind).ok_or(DecodeError::Kind(r.kind))?;
    let (saddr, daddr) = (addr(r.family, &r.saddr), addr(r.family, &r.daddr));
    let (Some(saddr), Some(daddr)) = (saddr, daddr) else {
        return Err(DecodeError::Family(r.family));
    };
    // A v4-mapped pair is an IPv4 connection on a dual-stack socket.
    let tuple = Tuple {
        family: Family::of(saddr),
        saddr,
        sport: r.sport,
        daddr,
        dport: r.dport,
    };
    let owner_known = r.flags & flags::OWNER_KNOWN != 0;
    let conn = Conn {
        token: (r.token != 0).then_some(Token(r.token)),
        peer_token: (r.peer_key != 0).then(|| token_of_key(r.peer_key)),
        netns: (r.netns != 0).then_some(r.netns),
        pid: owner_known.then_some(r.pid),
        comm: if owner_known { cstr(&r.comm) } else { None },
        protocol: (r.flags & flags::PLAIN_TCP != 0).then_some(Protocol::Tcp),
        ids: Ids {
            conn: r.conn,
            subflow: r.sk,
            cgroup: owner_known.then_some(r.cgroup_id),
        },
    };
    let subflow = || Subflow {
        ifindex: (r.ifindex != 0).then_some(r.ifindex),
        ifname: cstr(&r.ifname),
        local_id: u8::try_from(r.local_id).ok(),
        remote_id: r.remote_id,
        backup: r.flags & flags::BACKUP != 0,
        peer_backup: r.xflags & xflags::PEER_BACKUP != 0,
        join: r.flags & flags::JOIN != 0,
    };
    let data = match kind {
        EventKind::ConnCreated => Data::ConnCreated(ConnCreated {
            conn,
            tuple,
            side: if r.flags & flags::SERVER != 0 {
                Side::Server
            } else {
                Side::Client
            },
        }),
        EventKind::ConnEstablished => Data::ConnEstablished(ConnEstablished {
            conn,
            tuple,
            peer_deny_join_id0: (r.xflags & xflags::DENY_JOIN_ID0_KNOWN != 0)
                .then_some(r.xflags & xflags::PEER_DENY_JOIN_ID0 != 0),
        }),
        EventKind::ConnFallback => Data::ConnFallback(ConnFallback {
            conn,
            tuple,
            reason: "mp_capable_not_negotiated".into(),
        }),
        EventKind::ConnClosed => Data::ConnClosed(ConnClosed {
            conn,
            tuple,
            duration_ns: (r.start_ns != 0).then(|| r.ts_ns.saturating_sub(r.start_ns)),
            subflows_total: r.subflows,
        }),
        EventKind::SubflowEstablished => Data::SubflowEstablished(SubflowEstablished {
            conn,
            tuple,
            subflow: subflow(),
            existing: false,
        }),
        EventKind::SubflowClosed => Data::SubflowClosed(SubflowClosed {
            conn,
            tuple,
            reason: close_reason(r),
            cause: cause(r),
            subflow: subflow(),
            bytes_sent: r.bytes_sent,
            bytes_acked: r.bytes_acked,
            bytes_received: r.bytes_received,
            retrans: r.retrans,
            srtt_us: r.srtt_us,
        }),
        EventKind::SubflowFailed => Data::SubflowFailed(SubflowFailed {
            conn,
            tuple,
            reason: close_reason(r),
            cause: cause(r),
            subflow: subflow(),
            retrans: r.retrans,
        }),
    };
    Ok(Event::new(r.ts_ns, clock.rfc3339(r.ts_ns), data))
}

/// `addr_announced`/`addr_removed` from a path-manager netlink event stamped `ts_ns`.
pub fn addr_event(a: &crate::trace::pm::PmAddr, ts_ns: u64, clock: &Clock) -> Event {
    let addr = Addr {
        conn: Conn {
            token: Some(Token(a.token)),
            netns: Some(a.netns),
            ..Conn::default()
        },
        family: None,
        remote_id: a.remote_id,
        addr: a.addr.map(|a| a.to_canonical()),
        port: a.port.filter(|&p| p != 0),
    };
    let data = if a.announced {
        Data::AddrAnnounced(addr)
    } else {
        Data::AddrRemoved(addr)
    };
    Event::new(ts_ns, clock.rfc3339(ts_ns), data)
}

/// `socket_upgraded` from one record of the upgrade program's ring (method bpf).
pub fn upgrade_record(bytes: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    use mptcp_common::upgrade::{record, UpgradeRecord};
    let expected = std::mem::size_of::<UpgradeRecord>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length matches and UpgradeRecord is plain data valid for any bit pattern.
    let r = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const UpgradeRecord) };
    let family = match r.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        f => return Err(DecodeError::Family(f)),
    };
    let data = Data::SocketUpgraded(SocketUpgraded {
        pid: r.tgid,
        comm: cstr(&r.comm).unwrap_or_default(),
        cgroup: Some(r.cgroup_id).filter(|&c| c != 0),
        family,
        method: crate::upgrade::seccomp::Method::Bpf,
        outcome: if r.flags & record::COUNT_ONLY != 0 {
            UpgradeOutcome::Counted
        } else {
            UpgradeOutcome::Upgraded
        },
        reason: None,
        nonblock: r.flags & record::NONBLOCK != 0,
        cloexec: r.flags & record::CLOEXEC != 0,
    });
    Ok(Event::new(r.ts_ns, clock.rfc3339(r.ts_ns), data))
}

/// `socket_upgraded` from one record of the seccomp supervisor.
pub fn seccomp_upgraded(u: &crate::upgrade::seccomp::Upgraded, clock: &Clock) -> Event {
    use crate::upgrade::seccomp::Outcome;
    let (outcome, errno) = match u.outcome {
        Outcome::Upgraded => (UpgradeOutcome::Upgraded, None),
        Outcome::Counted => (UpgradeOutcome::Counted, None),
        Outcome::KeptTcp { errno } => (UpgradeOutcome::KeptTcp, Some(errno)),
        Outcome::Failed { errno } => (UpgradeOutcome::Failed, Some(errno)),
    };
    let data = Data::SocketUpgraded(SocketUpgraded {
        pid: u.pid,
        comm: u.comm.clone(),
        cgroup: Some(u.cgroup_id).filter(|&c| c != 0),
        family: u.family,
        method: u.method,
        outcome,
        reason: errno.map(crate::upgrade::seccomp::errno_name),
        nonblock: u.nonblock,
        cloexec: u.cloexec,
    });
    Event::new(u.ts_ns, clock.rfc3339(u.ts_ns), data)
}

/// The `lost` event, made in userspace from the kernel's loss counters.
pub fn lost(l: Lost, clock: &Clock) -> Event {
    let ts = monotonic_ns();
    Event::new(ts, clock.rfc3339(ts), Data::Lost(l))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn upgrade_records_decode_and_bad_ones_are_rejected() {
        use mptcp_common::upgrade::{record, UpgradeRecord};
        let mut r = UpgradeRecord {
            ts_ns: 2_000_000_000,
            cgroup_id: 77,
            tgid: 42,
            family: AF_INET6,
            flags: record::NONBLOCK | record::COUNT_ONLY,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let bytes = |r: &UpgradeRecord| {
            // SAFETY: plain data.
            unsafe {
                std::slice::from_raw_parts(
                    r as *const UpgradeRecord as *const u8,
                    std::mem::size_of::<UpgradeRecord>(),
                )
            }
            .to_vec()
        };
        let e = upgrade_record(&bytes(&r), &Clock::fixed(0)).unwrap();
        let Data::SocketUpgraded(u) = &e.data else {
            panic!("{e:?}")
        };
        assert_eq!(
            (u.pid, u.comm.as_str(), u.cgroup, u.family),
            (42, "curl", Some(77), Family::Ipv6)
        );
        assert_eq!(u.method, crate::upgrade::seccomp::Method::Bpf);
        assert_eq!(u.outcome, UpgradeOutcome::Counted);
        assert!(u.nonblock && !u.cloexec && u.reason.is_none());
        assert_eq!(e.ts_ns, 2_000_000_000);
        assert!(e.conn().is_none());
        r.flags = record::CLOEXEC;
        let e = upgrade_record(&bytes(&r), &Clock::fixed(0)).unwrap();
        assert!(
            matches!(&e.data, Data::SocketUpgraded(u) if u.outcome == UpgradeOutcome::Upgraded && u.cloexec)
        );
        let b = bytes(&r);
        assert!(matches!(
            upgrade_record(&b[..b.len() - 1], &Clock::fixed(0)),
            Err(DecodeError::Size { .. })
        ));
        r.family = 1;
        assert_eq!(
            upgrade_record(&bytes(&r), &Clock::fixed(0)).unwrap_err(),
            DecodeError::Family(1)
        );
    }
    use crate::event::Kind;
    use mptcp_common::EventKind;

    pub(crate) fn sample(kind: EventKind) -> RawEvent {
        RawEvent {
            ts_ns: 2_000_000_000,
            conn: 0xffff_8881_0000_1000,
            sk: 0xffff_8881_0000_2000,
            start_ns: 1_000_000_000,
            cgroup_id: 7,
            bytes_sent: 1000,
            bytes_acked: 900,
            bytes_received: 10,
            kind: kind as u32,
            pid: 42,
            token: 0x0a0b0c0d,
            netns: 4026531840,
            ifindex: 3,
            retrans: 1,
            srtt_us: 250,
            subflows: 2,
            sk_err: 0,
            family: AF_INET,
            sport: 48726,
            dport: 4321,
            local_id: 1,
            remote_id: 0,
            flags: flags::OWNER_KNOWN | flags::JOIN,
            reset_reason: 0,
            oldstate: 2,
            saddr: [192, 168, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"client\0\0\0\0\0\0\0\0\0\0",
            ifname: *b"blue-client\0\0\0\0\0",
            newstate: 1,
            xflags: 0,
            rst_sent_reason: 0,
            _pad: 0,
            peer_key: 0,
        }
    }

    pub(crate) fn bytes(r: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is plain data without padding.
        unsafe {
            std::slice::from_raw_parts(r as *const _ as *const u8, std::mem::size_of::<RawEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_join_subflow() {
        let e = decode(
            &bytes(&sample(EventKind::SubflowEstablished)),
            &Clock::fixed(0),
        )
        .unwrap();
        assert_eq!(e.kind(), Kind::SubflowEstablished);
        assert_eq!(e.token(), Some(Token(0x0a0b0c0d)));
        let t = e.tuple().unwrap();
        assert_eq!(t.saddr, "192.168.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.daddr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((t.sport, t.dport), (48726, 4321));
        let sf = e.subflow().unwrap();
        assert_eq!(sf.ifname.as_deref(), Some("blue-client"));
        assert!(sf.join);
        assert_eq!(sf.local_id, Some(1));
        assert_eq!(e.comm(), Some("client"));
        assert_eq!(e.time, "1970-01-01T00:00:02.000000000Z");
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            !json.contains("bytes_sent"),
            "counters only on close: {json}"
        );
    }

    #[test]
    fn rejects_truncated_and_oversized_records() {
        let b = bytes(&sample(EventKind::ConnCreated));
        let expected = b.len();
        assert_eq!(
            decode(&b[..expected - 1], &Clock::fixed(0)),
            Err(DecodeError::Size {
                got: expected - 1,
                expected
            })
        );
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            decode(&long, &Clock::fixed(0)),
            Err(DecodeError::Size { .. })
        ));
        assert!(matches!(
            decode(&[], &Clock::fixed(0)),
            Err(DecodeError::Size { .. })
        ));
    }

    #[test]
    fn rejects_unknown_kinds() {
        let mut r = sample(EventKind::ConnCreated);
        r.kind = 99;
        assert_eq!(
            decode(&bytes(&r), &Clock::fixed(0)),
            Err(DecodeError::Kind(99))
        );
    }

    #[test]
    fn close_reasons_prefer_the_most_specific() {
        let mut r = sample(EventKind::SubflowClosed);
        let reason = |r: &RawEvent| match to_event(r, &Clock::fixed(0)).unwrap().data {
            Data::SubflowClosed(d) => d.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&r), "closed");
        r.sk_err = libc::ECONNRESET as u32;
        assert_eq!(reason(&r), "ECONNRESET");
        r.flags |= flags::RST_SENT;
        assert_eq!(reason(&r), "rst_sent");
        r.flags |= flags::RST_RECEIVED;
        assert_eq!(reason(&r), "rst_received");
        r.flags |= flags::MPTCP_RESET;
        r.reset_reason = 3;
        assert_eq!(reason(&r), "mp_tcprst:administratively_prohibited");
    }

    #[test]
    fn unknown_owner_leaves_pid_out() {
        let mut r = sample(EventKind::ConnClosed);
        r.flags = 0;
        let e = to_event(&r, &Clock::fixed(0)).unwrap();
        assert_eq!(e.pid(), None);
        assert_eq!(e.comm(), None);
        let Data::ConnClosed(d) = &e.data else {
            panic!("{e:?}")
        };
        assert_eq!(d.duration_ns, Some(1_000_000_000));
        assert_eq!(d.subflows_total, 2);
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("\"pid\""), "{json}");
        assert!(json.starts_with("{\"v\":1,\"time\":"), "{json}");
    }

    #[test]
    fn the_peer_token_is_sha256_of_the_key_as_the_kernel_computes_it() {
        // python3: hashlib.sha256((0x0102030405060708).to_bytes(8, 'big')).hexdigest()[:8]
        assert_eq!(token_of_key(0x0102_0304_0506_0708), Token(0x6684_0dda));
        let mut r = sample(EventKind::ConnEstablished);
        assert_eq!(
            to_event(&r, &Clock::fixed(0))
                .unwrap()
                .conn()
                .unwrap()
                .peer_token,
            None
        );
        r.peer_key = 0x0102_0304_0506_0708;
        let e = to_event(&r, &Clock::fixed(0)).unwrap();
        assert_eq!(e.conn().unwrap().peer_token, Some(Token(0x6684_0dda)));
    }

    #[test]
    fn a_failed_subflow_says_why_from_each_piece_of_evidence() {
        let mut r = sample(EventKind::SubflowFailed);
        r.sk_err = libc::ECONNREFUSED as u32;
        r.flags |= flags::RST_RECEIVED | flags::MPTCP_RESET;
        r.reset_reason = 3;
        let e = to_event(&r, &Clock::fixed(0)).unwrap();
        let Data::SubflowFailed(f) = &e.data else {
            panic!("{e:?}")
        };
        assert_eq!(f.reason, "mp_tcprst:administratively_prohibited");
        assert_eq!(f.cause.error.as_deref(), Some("ECONNREFUSED"));
        assert_eq!(f.cause.reset_reason.as_deref(), Some("prohibited"));
        assert_eq!(f.cause.reset_sent_reason, None, "no reset was sent");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"event\":\"subflow_failed\""), "{json}");
        assert!(
            !json.contains("reset_sent_reason"),
            "absent, not null: {json}"
        );
    }

    #[test]
    fn v4_mapped_ipv6_addresses_print_as_ipv4() {
        let mut r = sample(EventKind::ConnCreated);
        r.family = AF_INET6;
        r.saddr = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
        r.daddr = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets();
        let e = to_event(&r, &Clock::fixed(0)).unwrap();
        let t = e.tuple().unwrap();
        assert_eq!(t.saddr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.daddr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            t.family,
            Family::Ipv4,
            "a dual-stack socket talking IPv4 is IPv4"
        );
        let Data::ConnCreated(d) = &e.data else {
            panic!("{e:?}")
        };
        assert_eq!(d.side, Side::Client);
    }
}
