//! Live per-subflow counters from `sock_diag` (NETLINK_INET_DIAG, what `ss -ti` reads): one
//! dump of the TCP sockets of a network namespace, with `tcp_info` (INET_DIAG_INFO) for each.
//! MPTCP subflows are TCP sockets, so they are in the dump; the state matches them to the
//! traced subflows by 4-tuple.
//!
//! A netlink socket belongs to the namespace it was created in, whichever thread later uses
//! it: [`NetnsDiag::open`] creates it once after entering the namespace (and entering back),
//! and every poll after that is two `send`s and a few `recv`s from the caller's thread.

use std::{collections::HashMap, io, net::IpAddr, path::Path};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

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
    pub const TOTAL_RETRANS: usize = 100;
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
    })
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
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump_family(family, &mut out)?;
        }
        Ok(out)
    }

    fn dump_family(&mut self, family: u8, out: &mut Vec<SockInfo>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        hdr.sequence_number = self.seq;
        let states = StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut packet = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.sock.send(&req, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let id = &r.header.socket_id;
                        let local = (id.source_address, id.source_port);
                        let remote = (id.destination_address, id.destination_port);
                        let info = r.nlas.iter().find_map(|nla| match nla {
                            Nla::TcpInfo(raw) => parse_tcp_info(raw, local, remote),
                            _ => None,
                        });
                        out.extend(info);
                    }
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

/// One sock_diag socket per namespace, opened on demand.
#[derive(Default)]
pub struct Poller {
    socks: HashMap<u32, NetnsDiag>,
}

impl Poller {
    /// Dumps each namespace in `netns`; namespaces that cannot be reached are skipped (and
    /// logged at debug level).
    pub fn poll(&mut self, netns: &[u32]) -> Vec<(u32, Vec<SockInfo>)> {
        let missing: Vec<u32> = netns
            .iter()
            .copied()
            .filter(|n| !self.socks.contains_key(n))
            .collect();
        if !missing.is_empty() {
            let files = crate::sys::netns::all();
            for n in missing {
                match files.get(&n).map(|p| NetnsDiag::open(p)) {
                    Some(Ok(d)) => {
                        self.socks.insert(n, d);
                    }
                    Some(Err(e)) => log::debug!("sock_diag in netns {n}: {e}"),
                    None => log::debug!("no file names netns {n}: no live counters there"),
                }
            }
        }
        self.socks.retain(|n, _| netns.contains(n));
        let mut out = Vec::new();
        for (&n, d) in self.socks.iter_mut() {
            match d.dump() {
                Ok(v) => out.push((n, v)),
                Err(e) => log::debug!("sock_diag dump of netns {n}: {e}"),
            }
        }
        out
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
        let a = (IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
        let s = parse_tcp_info(&b, a, a).unwrap();
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
