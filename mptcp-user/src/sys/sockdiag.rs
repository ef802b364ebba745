//! `sock_diag` (NETLINK_INET_DIAG, what `ss` reads), shared by the live view's counters and the
//! tracer's start-up snapshot: dumps of one network namespace's TCP sockets with `tcp_info`
//! (INET_DIAG_INFO) and, for MPTCP subflows, their ULP info (INET_DIAG_ULP_INFO →
//! INET_ULP_INFO_MPTCP), and of its MPTCP sockets with `mptcp_info`.
//!
//! A netlink socket belongs to the namespace it was created in, whichever thread later uses
//! it: [`NetnsDiag::open`] creates it once after entering the namespace (and entering back),
//! and every dump after that is a `send` and a few `recv`s from the caller's thread.

use std::{io, net::IpAddr, path::Path};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// `IPPROTO_MPTCP`: does not fit the request's 8-bit protocol field (see [`NetnsDiag::dump_raw`]).
pub const IPPROTO_MPTCP: u32 = 262;
/// `INET_DIAG_REQ_PROTOCOL` (enum inet_diag_req_attrs): the protocol as a u32 attribute.
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
/// `INET_DIAG_ULP_INFO` (enum inet_diag_attr): nested; `INET_ULP_INFO_MPTCP` inside it.
const INET_DIAG_ULP_INFO: u16 = 19;
const INET_ULP_INFO_MPTCP: u16 = 3;
/// `NLA_TYPE_MASK`: attribute types without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One TCP socket's counters, as `tcp_info` has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// TCP state (`TCP_ESTABLISHED` = 1 ...).
    pub state: u8,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Pacing rate, bytes per second; `None` when the kernel reports it unlimited (`~0`).
    pub pacing_rate: Option<u64>,
}

impl SockInfo {
    pub fn state_name(&self) -> &'static str {
        match self.state {
            1 => "estab",
            2 => "syn-sent",
            3 => "syn-recv",
            4 => "fin-wait-1",
            5 => "fin-wait-2",
            6 => "time-wait",
            7 => "close",
            8 => "close-wait",
            9 => "last-ack",
            10 => "listen",
            11 => "closing",
            _ => "?",
        }
    }
}

/// Field offsets in `struct tcp_info` (include/uapi/linux/tcp.h; the layout only grows).
mod tcp_info {
    pub const STATE: usize = 0;
    pub const RTT: usize = 68;
    pub const SND_CWND: usize = 80;
    pub const TOTAL_RETRANS: usize = 100;
    pub const PACING_RATE: usize = 104;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
    /// Added in Linux 4.19; older kernels report a shorter struct and no bytes_sent.
    pub const BYTES_SENT: usize = 200;
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads the fields we show out of a raw `tcp_info`. `None` when it is too short to hold the
/// byte counters (kernels before 4.1).
pub fn parse_tcp_info(b: &[u8], local: (IpAddr, u16), remote: (IpAddr, u16)) -> Option<SockInfo> {
    let bytes_acked = u64_at(b, tcp_info::BYTES_ACKED)?;
    Some(SockInfo {
        local,
        remote,
        state: *b.get(tcp_info::STATE)?,
        bytes_sent: u64_at(b, tcp_info::BYTES_SENT).unwrap_or(bytes_acked),
        bytes_acked,
        bytes_received: u64_at(b, tcp_info::BYTES_RECEIVED)?,
        total_retrans: u32_at(b, tcp_info::TOTAL_RETRANS)?,
        rtt_us: u32_at(b, tcp_info::RTT)?,
        snd_cwnd: u32_at(b, tcp_info::SND_CWND)?,
        pacing_rate: u64_at(b, tcp_info::PACING_RATE).filter(|&r| r != u64::MAX),
    })
}

/// What `struct mptcp_info` (include/uapi/linux/mptcp.h) says about an MPTCP socket. The
/// struct only grows; the fields read here are in its first version (Linux 5.9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MptcpInfo {
    /// Subflows open now besides the initial one (`mptcpi_subflows`).
    pub subflows: u8,
    pub add_addr_signal: u8,
    pub add_addr_accepted: u8,
    pub subflows_max: u8,
    /// `mptcpi_flags`.
    pub flags: u32,
    /// The local token (`msk->token`), as `ip mptcp monitor` prints it.
    pub token: u32,
}

/// `MPTCP_INFO_FLAG_FALLBACK`: the connection continues as plain TCP.
pub const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;

pub fn parse_mptcp_info(b: &[u8]) -> Option<MptcpInfo> {
    Some(MptcpInfo {
        subflows: *b.first()?,
        add_addr_signal: *b.get(1)?,
        add_addr_accepted: *b.get(2)?,
        subflows_max: *b.get(3)?,
        flags: u32_at(b, 8)?,
        token: u32_at(b, 12)?,
    })
}

/// `enum mptcp_subflow_attrs` and the `MPTCP_SUBFLOW_FLAG_*` bits (include/uapi/linux/mptcp.h).
pub mod subflow_attr {
    pub const TOKEN_LOC: u16 = 2;
    pub const FLAGS: u16 = 8;
    pub const ID_REM: u16 = 9;
    pub const ID_LOC: u16 = 10;

    pub const MCAP_REM: u32 = 1 << 0;
    pub const MCAP_LOC: u32 = 1 << 1;
    pub const JOIN_REM: u32 = 1 << 2;
    pub const JOIN_LOC: u32 = 1 << 3;
    pub const BKUP_REM: u32 = 1 << 4;
    pub const BKUP_LOC: u32 = 1 << 5;
}

/// A subflow's MPTCP ULP info (`subflow_get_info()` in net/mptcp/diag.c).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubflowUlp {
    /// The connection's local token.
    pub token: u32,
    /// `MPTCP_SUBFLOW_FLAG_*` bits.
    pub flags: u32,
    pub local_id: u8,
    pub remote_id: u8,
}

/// Attributes in a netlink attribute stream: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = b.get(4..len.max(4))?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// Parses the payload of INET_DIAG_ULP_INFO; `None` when the ULP is not MPTCP.
pub fn parse_subflow_ulp(ulp: &[u8]) -> Option<SubflowUlp> {
    let (_, mptcp) = attrs(ulp).find(|(k, _)| *k == INET_ULP_INFO_MPTCP)?;
    let mut s = SubflowUlp::default();
    for (k, v) in attrs(mptcp) {
        match k {
            subflow_attr::TOKEN_LOC => s.token = u32_at(v, 0)?,
            subflow_attr::FLAGS => s.flags = u32_at(v, 0)?,
            subflow_attr::ID_LOC => s.local_id = *v.first()?,
            subflow_attr::ID_REM => s.remote_id = *v.first()?,
            _ => {}
        }
    }
    Some(s)
}

/// One socket of a dump, with what the snapshot reads of it.
#[derive(Clone, Debug)]
pub struct DiagSock {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
    /// Inode of the socket (`socket:[INODE]` in /proc/PID/fd); 0 for sockets without a file.
    pub inode: u32,
    /// `sock_gen_cookie()`: unique per socket for the life of the host.
    pub cookie: u64,
    /// INET_DIAG_INFO: `tcp_info` of a TCP socket, `mptcp_info` of an MPTCP socket.
    pub info: Option<Vec<u8>>,
    /// The MPTCP ULP info of a subflow.
    pub ulp: Option<SubflowUlp>,
}

impl DiagSock {
    fn from_response(r: &InetResponse) -> Self {
        let id = &r.header.socket_id;
        let mut s = DiagSock {
            local: (unmap(id.source_address), id.source_port),
            remote: (unmap(id.destination_address), id.destination_port),
            state: r.header.state,
            inode: r.header.inode,
            cookie: u64::from_ne_bytes(id.cookie),
            info: None,
            ulp: None,
        };
        for nla in &r.nlas {
            match nla {
                Nla::TcpInfo(raw) => s.info = Some(raw.clone()),
                Nla::Other(a) if a.kind() & NLA_TYPE_MASK == INET_DIAG_ULP_INFO => {
                    let mut v = vec![0; a.value_len()];
                    a.emit_value(&mut v);
                    s.ulp = parse_subflow_ulp(&v);
                }
                _ => {}
            }
        }
        s
    }
}

/// An IPv4 address an IPv6 socket carries as `::ffff:a.b.c.d` is the IPv4 address.
fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// A sock_diag socket created inside one network namespace.
pub struct NetnsDiag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NetnsDiag {
    /// A socket in the namespace of the current thread.
    pub fn here() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(NetnsDiag {
            sock,
            seq: 0,
            buf: vec![0; 64 << 10],
        })
    }

    /// A socket in the namespace that `ns_file` (/run/netns/NAME, /proc/PID/ns/net) names.
    pub fn open(ns_file: &Path) -> io::Result<Self> {
        crate::sys::netns::run_in(ns_file, Self::here)?
    }

    /// Every TCP socket of the namespace that is not listening or in TIME_WAIT.
    pub fn dump(&mut self) -> io::Result<Vec<SockInfo>> {
        let states = StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT;
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_raw(family, IPPROTO_TCP as u32, states.clone(), |r| {
                let id = &r.header.socket_id;
                let local = (id.source_address, id.source_port);
                let remote = (id.destination_address, id.destination_port);
                out.extend(r.nlas.iter().find_map(|nla| match nla {
                    Nla::TcpInfo(raw) => parse_tcp_info(raw, local, remote),
                    _ => None,
                }));
            })?;
        }
        Ok(out)
    }

    /// The sockets of `protocol` (`IPPROTO_TCP`, [`IPPROTO_MPTCP`]) in `states`, both families,
    /// with their INET_DIAG_INFO and ULP info.
    pub fn sockets(&mut self, protocol: u32, states: StateFlags) -> io::Result<Vec<DiagSock>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_raw(family, protocol, states.clone(), |r| {
                out.push(DiagSock::from_response(r))
            })?;
        }
        Ok(out)
    }

    /// One dump request and its answers. The crate's request has an 8-bit protocol field and no
    /// attributes, so for a protocol above 255 (MPTCP: 262) the request is the crate's, with
    /// the INET_DIAG_REQ_PROTOCOL attribute appended by hand — the kernel takes the protocol
    /// from that attribute when it is present (inet_diag_get_protocol(); `ss -M` does the same).
    fn dump_raw(
        &mut self,
        family: u8,
        protocol: u32,
        states: StateFlags,
        mut each: impl FnMut(&InetResponse),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        hdr.sequence_number = self.seq;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut packet = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: u8::try_from(protocol).unwrap_or(IPPROTO_TCP),
                extensions: ExtensionFlags::INFO,
                states,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        if protocol > u8::MAX as u32 {
            req.extend_from_slice(&8u16.to_ne_bytes());
            req.extend_from_slice(&INET_DIAG_REQ_PROTOCOL.to_ne_bytes());
            req.extend_from_slice(&protocol.to_ne_bytes());
            let len = req.len() as u32;
            req[0..4].copy_from_slice(&len.to_ne_bytes());
        }
        self.sock.send(&req, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(&r),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return Err(io::Error::other(format!("sock_diag: {e:?}")))
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_tcp_info_fields_at_their_offsets() {
        let mut b = vec![0u8; 232];
        b[0] = 1;
        b[68..72].copy_from_slice(&1500u32.to_ne_bytes());
        b[100..104].copy_from_slice(&7u32.to_ne_bytes());
        b[120..128].copy_from_slice(&1000u64.to_ne_bytes());
        b[128..136].copy_from_slice(&2000u64.to_ne_bytes());
        b[200..208].copy_from_slice(&3000u64.to_ne_bytes());
        b[80..84].copy_from_slice(&42u32.to_ne_bytes());
        b[104..112].copy_from_slice(&5_000_000u64.to_ne_bytes());
        let a = (IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
        let s = parse_tcp_info(&b, a, a).unwrap();
        assert_eq!((s.snd_cwnd, s.pacing_rate), (42, Some(5_000_000)));
        assert_eq!(
            (
                s.state,
                s.rtt_us,
                s.total_retrans,
                s.bytes_acked,
                s.bytes_received,
                s.bytes_sent
            ),
            (1, 1500, 7, 1000, 2000, 3000)
        );
        // An old kernel's shorter struct: bytes_sent falls back to bytes_acked.
        let s = parse_tcp_info(&b[..192], a, a).unwrap();
        assert_eq!(s.bytes_sent, 1000);
        assert!(parse_tcp_info(&b[..100], a, a).is_none());
        // "Unlimited" (no pacing) is absent, not 2^64-1 bytes per second.
        b[104..112].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert_eq!(parse_tcp_info(&b, a, a).unwrap().pacing_rate, None);
    }

    /// Needs root? No: sock_diag dumps of one's own namespace work unprivileged.
    #[test]
    fn dump_sees_a_loopback_connection_with_counters() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1u8; 10_000]).unwrap();
        let mut buf = vec![0u8; 10_000];
        s.read_exact(&mut buf).unwrap();
        let local = (addr.ip(), c.local_addr().unwrap().port());
        let socks = NetnsDiag::here().unwrap().dump().unwrap();
        let me = socks
            .iter()
            .find(|s| s.local == local && s.remote == (addr.ip(), addr.port()))
            .expect("our client socket in the dump");
        assert_eq!(me.state_name(), "estab");
        assert!(me.bytes_sent >= 10_000, "{me:?}");
        assert!(me.bytes_acked >= 10_000 || me.bytes_sent >= 10_000);
    }

    #[test]
    fn parses_mptcp_info_and_subflow_ulp_info() {
        let mut b = vec![0u8; 48];
        b[0] = 1;
        b[1] = 2;
        b[3] = 8;
        b[8..12].copy_from_slice(&MPTCP_INFO_FLAG_FALLBACK.to_ne_bytes());
        b[12..16].copy_from_slice(&0x5c00_89f8u32.to_ne_bytes());
        let i = parse_mptcp_info(&b).unwrap();
        assert_eq!((i.subflows, i.add_addr_signal, i.subflows_max), (1, 2, 8));
        assert_eq!((i.flags, i.token), (1, 0x5c00_89f8));
        assert!(parse_mptcp_info(&b[..12]).is_none());

        // INET_DIAG_ULP_INFO { NAME "mptcp", MPTCP { TOKEN_LOC, FLAGS, ID_REM, ID_LOC } }.
        fn nla(kind: u16, v: &[u8]) -> Vec<u8> {
            let mut out = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(v);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        }
        let inner = [
            nla(subflow_attr::TOKEN_LOC, &7u32.to_ne_bytes()),
            nla(
                subflow_attr::FLAGS,
                &(subflow_attr::JOIN_LOC | subflow_attr::BKUP_REM).to_ne_bytes(),
            ),
            nla(subflow_attr::ID_REM, &[3]),
            nla(subflow_attr::ID_LOC, &[1]),
        ]
        .concat();
        let ulp = [
            nla(1, b"mptcp\0"),
            nla(INET_ULP_INFO_MPTCP | 0x8000, &inner),
        ]
        .concat();
        let s = parse_subflow_ulp(&ulp).unwrap();
        assert_eq!(
            s,
            SubflowUlp {
                token: 7,
                flags: subflow_attr::JOIN_LOC | subflow_attr::BKUP_REM,
                local_id: 1,
                remote_id: 3
            }
        );
        assert!(parse_subflow_ulp(&nla(1, b"tls\0")).is_none());
    }
}

/// The cost of one poll: `cargo test -p mptcp-user --release --lib sock_diag_poll_cost --
/// --ignored --nocapture` (numbers in BENCHMARKS.md). Not a timed test: it only prints.
#[cfg(test)]
mod bench {
    use super::*;

    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer; the clock exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    #[ignore = "benchmark: run with --ignored --nocapture"]
    fn sock_diag_poll_cost() {
        let rl = libc::rlimit {
            rlim_cur: 65536,
            rlim_max: 65536,
        };
        // SAFETY: plain syscall with a valid pointer (may fail without privileges).
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut keep = Vec::new();
        let mut diag = NetnsDiag::here().unwrap();
        println!("| established TCP sockets in the netns | CPU per poll (user+sys, this thread) | wall per poll |");
        println!("|---:|---:|---:|");
        for target in [10usize, 100, 1000, 5000] {
            while keep.len() < target {
                let c = std::net::TcpStream::connect(addr).unwrap();
                let (s, _) = l.accept().unwrap();
                keep.push((c, s));
            }
            let base = diag.dump().unwrap().len();
            let rounds = 50u32;
            let (cpu0, wall0) = (thread_cpu_ns(), std::time::Instant::now());
            for _ in 0..rounds {
                std::hint::black_box(diag.dump().unwrap());
            }
            let cpu = (thread_cpu_ns() - cpu0) / rounds as u64;
            let wall = wall0.elapsed() / rounds;
            println!(
                "| {base} | {:.1} µs | {:.1} µs |",
                cpu as f64 / 1e3,
                wall.as_nanos() as f64 / 1e3
            );
        }
    }
}
