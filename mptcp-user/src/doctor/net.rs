//! What a namespace's network looks like, read on a thread inside it: interfaces, addresses and
//! routes over rtnetlink (`RTM_GETLINK`/`RTM_GETADDR`/`RTM_GETROUTE` dumps, what `ip link`,
//! `ip addr` and `ip route show table all` print) and the TCP sockets of
//! `/proc/thread-self/net/tcp{,6}`, from which the namespace's role (accepts or opens
//! connections) is judged.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_sys::protocols::NETLINK_ROUTE;

use crate::pm_config::{attrs, nla, request};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
/// `IFF_LOWER_UP`: the carrier is there.
const IFF_LOWER_UP: u32 = 0x10000;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;
const RTN_UNICAST: u8 = 1;
const RT_TABLE_LOCAL: u32 = 255;
/// `RTNH_F_DEAD` | `RTNH_F_LINKDOWN`.
const RTNH_F_DOWN: u32 = 0x1 | 0x10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
    pub fn has_carrier(&self) -> bool {
        self.flags & IFF_LOWER_UP != 0
    }
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `IFA_F_*`.
    pub flags: u32,
}

impl Addr {
    /// An address a second path can start from: not loopback or link-local, DAD done.
    pub fn is_usable(&self) -> bool {
        let ok = match self.addr {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
            IpAddr::V6(a) => {
                !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
            }
        };
        ok && self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0
    }

    /// The prefix the address sits in, as `ip route` writes it (`192.168.0.0/24`).
    pub fn network(&self) -> String {
        let p = self.prefix_len as u32;
        let net = match self.addr {
            IpAddr::V4(a) => {
                let mask = if p == 0 {
                    0
                } else {
                    u32::MAX << (32 - p.min(32))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if p == 0 {
                    0
                } else {
                    u128::MAX << (128 - p.min(128))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        format!("{net}/{p}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub family: u8,
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub table: u32,
    /// Output interfaces (several for a multipath route) that are not dead or link-down.
    pub oifs: Vec<u32>,
}

impl Route {
    pub fn describe(&self, links: &[Link]) -> String {
        let dst = match self.dst {
            Some(d) => format!("{d}/{}", self.dst_len),
            None => "default".into(),
        };
        let devs: Vec<String> = self.oifs.iter().map(|i| link_name(links, *i)).collect();
        let table = if self.table == 254 {
            String::new()
        } else {
            format!(" table {}", self.table)
        };
        format!("{dst} dev {}{table}", devs.join(","))
    }
}

pub fn link_name(links: &[Link], index: u32) -> String {
    links
        .iter()
        .find(|l| l.index == index)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("ifindex {index}"))
}

/// A TCP socket of `/proc/net/tcp{,6}`: local port and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSock {
    pub local_port: u16,
    pub remote_port: u16,
    /// `TCP_*` state (1 established, 10 listen).
    pub state: u8,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_LISTEN: u8 = 10;

/// Everything about a namespace's network `doctor` looks at.
#[derive(Clone, Debug, Default)]
pub struct NetState {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub tcp: Vec<TcpSock>,
}

fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

impl NetState {
    /// Reads it all in this thread's namespace.
    pub fn read() -> io::Result<NetState> {
        let mut s = NetState::read_without_sockets()?;
        s.tcp = tcp_sockets();
        Ok(s)
    }

    /// Everything but the TCP sockets: reading those walks the whole established hash table
    /// (shared by every namespace, often 262,144 buckets) and formats every socket, TIME_WAIT
    /// included — a cost worth paying for `doctor`, not on every judgement of the tracer.
    pub fn read_without_sockets() -> io::Result<NetState> {
        Ok(NetState {
            links: dump(RTM_GETLINK, RTM_NEWLINK, &[0u8; 16])?
                .iter()
                .filter_map(|p| parse_link(p))
                .collect(),
            addrs: addresses()?,
            routes: dump(RTM_GETROUTE, RTM_NEWROUTE, &[0u8; 12])?
                .iter()
                .filter_map(|p| parse_route(p))
                .collect(),
            tcp: Vec::new(),
        })
    }

    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// Interfaces holding `ip`.
    pub fn holders(&self, ip: &IpAddr) -> Vec<&Addr> {
        self.addrs.iter().filter(|a| a.addr == *ip).collect()
    }

    /// Usable unicast routes of `ip`'s family out of interface `index` (the local table, which
    /// only says the address is ours, does not count).
    pub fn routes_via(&self, index: u32, ip: &IpAddr) -> Vec<&Route> {
        self.routes
            .iter()
            .filter(|r| {
                r.family == family_of(ip) && r.table != RT_TABLE_LOCAL && r.oifs.contains(&index)
            })
            .collect()
    }

    /// Listening TCP (and MPTCP: their first subflow listens as TCP) ports.
    pub fn listening_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .tcp
            .iter()
            .filter(|s| s.state == TCP_LISTEN)
            .map(|s| s.local_port)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Connections this namespace opened: connecting or established sockets whose local port
    /// is not one it listens on (accepted sockets share their listener's port).
    pub fn outgoing(&self) -> usize {
        let listening = self.listening_ports();
        self.tcp
            .iter()
            .filter(|s| matches!(s.state, TCP_ESTABLISHED | TCP_SYN_SENT))
            .filter(|s| !listening.contains(&s.local_port))
            .count()
    }
}

/// The kernel's own answer to `ip route get DST from SRC` in this thread's namespace: the
/// lookup a join from `src` makes, policy rules included (which the route table alone does not
/// show). `Ok` when there is a route; else the error the kernel gives (ENETUNREACH, …).
pub fn route_get(dst: IpAddr, src: IpAddr) -> io::Result<()> {
    let bits = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
    let octets = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut payload = vec![0u8; 12];
    payload[0] = family_of(&dst);
    payload[1] = bits(&dst);
    payload[2] = bits(&src);
    for (kind, ip) in [(RTA_DST, &dst), (RTA_SRC, &src)] {
        payload.extend(nla(kind, &octets(ip)));
    }
    request(NETLINK_ROUTE, RTM_GETROUTE, false, &payload).map(|_| ())
}

/// The addresses of this thread's namespace (what `ip addr` lists).
pub fn addresses() -> io::Result<Vec<Addr>> {
    Ok(dump(RTM_GETADDR, RTM_NEWADDR, &[0u8; 8])?
        .iter()
        .filter_map(|p| parse_addr(p))
        .collect())
}

fn dump(get: u16, new: u16, header: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    Ok(request(NETLINK_ROUTE, get, true, header)?
        .into_iter()
        .filter(|r| r.ty == new)
        .map(|r| r.payload)
        .collect())
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn ip_of(family: u8, v: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET if v.len() >= 4 => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        libc::AF_INET6 if v.len() >= 16 => {
            let b: [u8; 16] = v[..16].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// `struct ifinfomsg` (16 bytes) + attributes.
pub fn parse_link(p: &[u8]) -> Option<Link> {
    let index = u32_at(p, 4)?;
    let flags = u32_at(p, 8)?;
    let name = attrs(p.get(16..)?)
        .into_iter()
        .find(|(k, _)| *k == IFLA_IFNAME)
        .map(|(_, v)| {
            String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
        })?;
    Some(Link { index, name, flags })
}

/// `struct ifaddrmsg` (8 bytes) + attributes.
pub fn parse_addr(p: &[u8]) -> Option<Addr> {
    let (family, prefix_len) = (*p.first()?, *p.get(1)?);
    let mut flags = *p.get(2)? as u32;
    let index = u32_at(p, 4)?;
    let (mut local, mut address) = (None, None);
    for (kind, v) in attrs(p.get(8..)?) {
        match kind {
            IFA_LOCAL => local = ip_of(family, &v),
            IFA_ADDRESS => address = ip_of(family, &v),
            IFA_FLAGS => flags = u32_at(&v, 0).unwrap_or(flags),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on point-to-point).
    Some(Addr {
        index,
        addr: local.or(address)?,
        prefix_len,
        flags,
    })
}

/// `struct rtmsg` (12 bytes) + attributes; `None` for anything but a unicast route.
pub fn parse_route(p: &[u8]) -> Option<Route> {
    let (family, dst_len) = (*p.first()?, *p.get(1)?);
    let mut table = *p.get(4)? as u32;
    let rtype = *p.get(7)?;
    let flags = u32_at(p, 8)?;
    if rtype != RTN_UNICAST {
        return None;
    }
    let mut r = Route {
        family,
        dst: None,
        dst_len,
        table,
        oifs: Vec::new(),
    };
    for (kind, v) in attrs(p.get(12..)?) {
        match kind {
            RTA_DST => r.dst = ip_of(family, &v),
            RTA_OIF if flags & RTNH_F_DOWN == 0 => r.oifs.extend(u32_at(&v, 0)),
            RTA_TABLE => table = u32_at(&v, 0).unwrap_or(table),
            RTA_MULTIPATH => {
                // struct rtnexthop { len: u16, flags: u8, hops: u8, ifindex: i32 } + attrs
                let mut off = 0;
                while off + 8 <= v.len() {
                    let len = u16::from_ne_bytes([v[off], v[off + 1]]) as usize;
                    let nh_flags = v[off + 2] as u32;
                    if nh_flags & RTNH_F_DOWN == 0 {
                        r.oifs.extend(u32_at(&v, off + 4));
                    }
                    if len < 8 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
            }
            _ => {}
        }
    }
    r.table = table;
    Some(r)
}

/// The TCP sockets of this thread's namespace (IPv4 and IPv6).
pub fn tcp_sockets() -> Vec<TcpSock> {
    let mut v = Vec::new();
    for f in ["tcp", "tcp6"] {
        // thread-self, not self: /proc/self/net is the namespace of the main thread.
        if let Ok(text) = fs::read_to_string(format!("/proc/thread-self/net/{f}")) {
            v.extend(parse_proc_tcp(&text));
        }
    }
    v
}

/// The sockets of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn parse_proc_tcp(text: &str) -> Vec<TcpSock> {
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSock {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_a_link() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&3u32.to_ne_bytes());
        p[8..12].copy_from_slice(&(IFF_UP | IFF_LOWER_UP).to_ne_bytes());
        p.extend(nla(IFLA_IFNAME, b"blue-client\0"));
        let l = parse_link(&p).unwrap();
        assert_eq!((l.index, l.name.as_str()), (3, "blue-client"));
        assert!(l.is_up() && l.has_carrier() && !l.is_loopback());
    }

    #[test]
    fn parses_addresses_and_their_prefix() {
        let mut p = vec![libc::AF_INET as u8, 24, 0, 0];
        p.extend_from_slice(&4u32.to_ne_bytes());
        p.extend(nla(IFA_ADDRESS, &[192, 168, 0, 2]));
        p.extend(nla(IFA_LOCAL, &[192, 168, 0, 2]));
        let a = parse_addr(&p).unwrap();
        assert_eq!(a.addr, "192.168.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.network(), "192.168.0.0/24");
        assert!(a.is_usable());
        let mut p = vec![libc::AF_INET6 as u8, 64, 0, 0];
        p.extend_from_slice(&4u32.to_ne_bytes());
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        p.extend(nla(IFA_ADDRESS, &ll.octets()));
        let a = parse_addr(&p).unwrap();
        assert!(!a.is_usable(), "link-local");
        let v6 = Addr {
            index: 1,
            addr: "fd00:0:0:192::2".parse().unwrap(),
            prefix_len: 64,
            flags: IFA_F_TENTATIVE,
        };
        assert_eq!(v6.network(), "fd00:0:0:192::/64");
        assert!(!v6.is_usable(), "tentative");
    }

    #[test]
    fn parses_routes_and_skips_dead_nexthops() {
        let mut p = vec![libc::AF_INET as u8, 24, 0, 0, 254, 2, 253, RTN_UNICAST];
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend(nla(RTA_DST, &[192, 168, 0, 0]));
        p.extend(nla(RTA_TABLE, &254u32.to_ne_bytes()));
        p.extend(nla(RTA_OIF, &4u32.to_ne_bytes()));
        let r = parse_route(&p).unwrap();
        assert_eq!(r.oifs, [4]);
        let links = [Link {
            index: 4,
            name: "blue-client".into(),
            flags: IFF_UP,
        }];
        assert_eq!(r.describe(&links), "192.168.0.0/24 dev blue-client");
        // The same route with RTNH_F_LINKDOWN: no usable output interface.
        p[8..12].copy_from_slice(&0x10u32.to_ne_bytes());
        assert!(parse_route(&p).unwrap().oifs.is_empty());
        // A local route is not a unicast one.
        p[7] = 2;
        assert!(parse_route(&p).is_none());
    }

    #[test]
    fn parses_proc_net_tcp_and_judges_the_role() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:10E1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100000A:10E1 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0200000A:C351 0100000A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
        let tcp = parse_proc_tcp(text);
        assert_eq!(tcp.len(), 3);
        assert_eq!((tcp[0].local_port, tcp[0].state), (4321, TCP_LISTEN));
        let s = NetState {
            tcp,
            ..Default::default()
        };
        assert_eq!(s.listening_ports(), [4321]);
        assert_eq!(
            s.outgoing(),
            1,
            "the accepted socket on 4321 is not outgoing"
        );
    }
}
