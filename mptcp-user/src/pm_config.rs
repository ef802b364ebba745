//! The MPTCP path manager's configuration in the calling thread's network namespace, read from
//! the kernel over generic netlink (family `mptcp_pm`): the limits (`MPTCP_PM_CMD_GET_LIMITS`)
//! and the endpoints with their flags (`MPTCP_PM_CMD_GET_ADDR` dump) — what `ip mptcp limits
//! show` and `ip mptcp endpoint show` print. Also the small netlink request/dump helper that
//! `doctor` uses for rtnetlink.
//!
//! Call it on a thread that entered the namespace to inspect (see `testbed::in_netns`): a
//! netlink socket belongs to the namespace it was created in.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_core::NlasIterator;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

const FAMILY: &str = "mptcp_pm";
/// `MPTCP_PM_VER`.
const PM_VERSION: u8 = 1;

/// `MPTCP_PM_CMD_*` (include/uapi/linux/mptcp_pm.h).
const CMD_GET_ADDR: u8 = 3;
const CMD_GET_LIMITS: u8 = 6;

/// `MPTCP_PM_ATTR_*`.
const ATTR_ADDR: u16 = 1;
const ATTR_RCV_ADD_ADDRS: u16 = 2;
const ATTR_SUBFLOWS: u16 = 3;

/// `MPTCP_PM_ADDR_ATTR_*` (nested in `MPTCP_PM_ATTR_ADDR`).
const ADDR_ATTR_FAMILY: u16 = 1;
const ADDR_ATTR_ID: u16 = 2;
const ADDR_ATTR_ADDR4: u16 = 3;
const ADDR_ATTR_ADDR6: u16 = 4;
const ADDR_ATTR_PORT: u16 = 5;
const ADDR_ATTR_FLAGS: u16 = 6;
const ADDR_ATTR_IF_IDX: u16 = 7;

/// `MPTCP_PM_ADDR_FLAG_*`.
pub mod flag {
    pub const SIGNAL: u32 = 1 << 0;
    pub const SUBFLOW: u32 = 1 << 1;
    pub const BACKUP: u32 = 1 << 2;
    pub const FULLMESH: u32 = 1 << 3;
    pub const IMPLICIT: u32 = 1 << 4;
    pub const LAMINAR: u32 = 1 << 5;
}

/// Generic netlink's controller (`GENL_ID_CTRL`, `CTRL_CMD_GETFAMILY`, `CTRL_ATTR_*`).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLA_HDRLEN: usize = 4;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// `ip mptcp limits show`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `subflows`: extra subflows per connection, created or accepted.
    pub subflows: u32,
    /// `add_addr_accepted`: peer announcements acted upon per connection.
    pub add_addr_accepted: u32,
}

/// One line of `ip mptcp endpoint show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub id: u8,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    /// `MPTCP_PM_ADDR_FLAG_*` ([`flag`]).
    pub flags: u32,
    /// The `dev` of the endpoint, when it has one.
    pub ifindex: Option<u32>,
}

impl Endpoint {
    pub fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// The flags as `ip mptcp endpoint show` spells them.
    pub fn flag_names(&self) -> Vec<&'static str> {
        [
            (flag::SIGNAL, "signal"),
            (flag::SUBFLOW, "subflow"),
            (flag::BACKUP, "backup"),
            (flag::FULLMESH, "fullmesh"),
            (flag::IMPLICIT, "implicit"),
            (flag::LAMINAR, "laminar"),
        ]
        .into_iter()
        .filter(|(f, _)| self.has(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// Everything the in-kernel path manager is configured with in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PmConfig {
    pub limits: Limits,
    pub endpoints: Vec<Endpoint>,
}

/// One netlink message of a reply: its type and the bytes after the 16-byte header.
#[derive(Debug)]
pub struct Reply {
    pub ty: u16,
    pub payload: Vec<u8>,
}

/// Builds one netlink message.
fn message(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(payload);
    m
}

/// One attribute, padded to 4 bytes.
pub fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// Splits a datagram into messages. `Err` for an `NLMSG_ERROR` with a non-zero errno; `done`
/// becomes true at `NLMSG_DONE` or an acknowledgement.
fn split(buf: &[u8], out: &mut Vec<Reply>, done: &mut bool) -> io::Result<()> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_ERROR | NLMSG_DONE => {
                let errno = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if errno < 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                *done = true;
            }
            _ => out.push(Reply {
                ty,
                payload: payload.to_vec(),
            }),
        }
        off += (len + 3) & !3;
    }
    Ok(())
}

/// Sends one request on a fresh `protocol` socket of this thread's namespace and collects the
/// reply: every message of a dump (`dump`), else the first message.
pub fn request(protocol: isize, ty: u16, dump: bool, payload: &[u8]) -> io::Result<Vec<Reply>> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    socket.send(&message(ty, flags, payload), 0)?;
    let mut out = Vec::new();
    let mut done = false;
    while !done {
        let (buf, _) = socket.recv_from_full()?;
        split(&buf, &mut out, &mut done)?;
        if !dump && !out.is_empty() {
            break;
        }
    }
    Ok(out)
}

fn genl_header(cmd: u8, version: u8) -> Vec<u8> {
    vec![cmd, version, 0, 0]
}

/// The id of the `mptcp_pm` family in this namespace; `NotFound` when the kernel has no MPTCP.
pub fn family_id() -> io::Result<u16> {
    let mut payload = genl_header(CTRL_CMD_GETFAMILY, 1);
    let mut name = FAMILY.as_bytes().to_vec();
    name.push(0);
    payload.extend(nla(CTRL_ATTR_FAMILY_NAME, &name));
    let replies = request(NETLINK_GENERIC, GENL_ID_CTRL, false, &payload).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no mptcp_pm generic netlink family (kernel without CONFIG_MPTCP)",
            )
        } else {
            e
        }
    })?;
    replies
        .iter()
        .filter(|r| r.ty == GENL_ID_CTRL && r.payload.len() >= GENL_HDRLEN)
        .flat_map(|r| attrs(&r.payload[GENL_HDRLEN..]))
        .find_map(|(kind, v)| (kind == CTRL_ATTR_FAMILY_ID && v.len() >= 2).then(|| u16_ne(&v)))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no mptcp_pm family id"))
}

/// The attributes of a buffer as (kind without the nested/byte-order bits, value).
pub fn attrs(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(buf)
        .flatten()
        .map(|n| (n.kind() & 0x3fff, n.value().to_vec()))
        .collect()
}

fn u16_ne(v: &[u8]) -> u16 {
    u16::from_ne_bytes([v[0], v[1]])
}

fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Parses the attributes (after the genl header) of a `GET_LIMITS` reply.
pub fn parse_limits(buf: &[u8]) -> Limits {
    let mut l = Limits::default();
    for (kind, v) in attrs(buf) {
        match kind {
            ATTR_RCV_ADD_ADDRS => l.add_addr_accepted = u32_ne(&v).unwrap_or(0),
            ATTR_SUBFLOWS => l.subflows = u32_ne(&v).unwrap_or(0),
            _ => {}
        }
    }
    l
}

/// Parses the attributes (after the genl header) of one `GET_ADDR` dump message.
pub fn parse_endpoint(buf: &[u8]) -> Option<Endpoint> {
    let (_, nested) = attrs(buf).into_iter().find(|(k, _)| *k == ATTR_ADDR)?;
    let mut e = Endpoint {
        id: 0,
        addr: None,
        port: None,
        flags: 0,
        ifindex: None,
    };
    let mut have_id = false;
    for (kind, v) in attrs(&nested) {
        match kind {
            ADDR_ATTR_ID if !v.is_empty() => {
                e.id = v[0];
                have_id = true;
            }
            ADDR_ATTR_ADDR4 if v.len() >= 4 => {
                e.addr = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])))
            }
            ADDR_ATTR_ADDR6 if v.len() >= 16 => {
                let b: [u8; 16] = v[..16].try_into().ok()?;
                e.addr = Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            // The kernel puts the port in host order here (`ntohs` in mptcp_nl_fill_addr).
            ADDR_ATTR_PORT if v.len() >= 2 => e.port = Some(u16_ne(&v)).filter(|&p| p != 0),
            ADDR_ATTR_FLAGS => e.flags = u32_ne(&v).unwrap_or(0),
            ADDR_ATTR_IF_IDX => e.ifindex = u32_ne(&v).filter(|&i| i != 0),
            ADDR_ATTR_FAMILY => {}
            _ => {}
        }
    }
    have_id.then_some(e)
}

/// Reads limits and endpoints in this thread's namespace.
pub fn query() -> io::Result<PmConfig> {
    let family = family_id()?;
    let limits = request(
        NETLINK_GENERIC,
        family,
        false,
        &genl_header(CMD_GET_LIMITS, PM_VERSION),
    )?;
    let limits = limits
        .iter()
        .find(|r| r.ty == family && r.payload.len() >= GENL_HDRLEN)
        .map(|r| parse_limits(&r.payload[GENL_HDRLEN..]))
        .ok_or_else(|| io::Error::other("empty MPTCP_PM_CMD_GET_LIMITS reply"))?;
    let mut endpoints: Vec<Endpoint> = request(
        NETLINK_GENERIC,
        family,
        true,
        &genl_header(CMD_GET_ADDR, PM_VERSION),
    )?
    .iter()
    .filter(|r| r.ty == family && r.payload.len() >= GENL_HDRLEN)
    .filter_map(|r| parse_endpoint(&r.payload[GENL_HDRLEN..]))
    .collect();
    endpoints.sort_by_key(|e| e.id);
    Ok(PmConfig { limits, endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
        nla(kind | 0x8000, inner)
    }

    #[test]
    fn parses_limits() {
        let mut b = nla(ATTR_RCV_ADD_ADDRS, &2u32.to_ne_bytes());
        b.extend(nla(ATTR_SUBFLOWS, &8u32.to_ne_bytes()));
        assert_eq!(
            parse_limits(&b),
            Limits {
                subflows: 8,
                add_addr_accepted: 2
            }
        );
        assert_eq!(parse_limits(&[]), Limits::default());
    }

    #[test]
    fn parses_an_ipv4_subflow_endpoint_with_a_device() {
        let mut inner = nla(ADDR_ATTR_FAMILY, &(libc::AF_INET as u16).to_ne_bytes());
        inner.extend(nla(ADDR_ATTR_ID, &[1]));
        inner.extend(nla(ADDR_ATTR_ADDR4, &[192, 168, 0, 2]));
        inner.extend(nla(
            ADDR_ATTR_FLAGS,
            &(flag::SUBFLOW | flag::BACKUP).to_ne_bytes(),
        ));
        inner.extend(nla(ADDR_ATTR_IF_IDX, &7i32.to_ne_bytes()));
        let e = parse_endpoint(&nested(ATTR_ADDR, &inner)).unwrap();
        assert_eq!(
            e,
            Endpoint {
                id: 1,
                addr: Some("192.168.0.2".parse().unwrap()),
                port: None,
                flags: flag::SUBFLOW | flag::BACKUP,
                ifindex: Some(7),
            }
        );
        assert_eq!(e.flag_names(), ["subflow", "backup"]);
    }

    #[test]
    fn parses_an_ipv6_signal_endpoint_with_a_port() {
        let mut inner = nla(ADDR_ATTR_ID, &[4]);
        let v6: Ipv6Addr = "fd00:0:0:192::1".parse().unwrap();
        inner.extend(nla(ADDR_ATTR_ADDR6, &v6.octets()));
        inner.extend(nla(ADDR_ATTR_PORT, &8080u16.to_ne_bytes()));
        inner.extend(nla(ADDR_ATTR_FLAGS, &flag::SIGNAL.to_ne_bytes()));
        inner.extend(nla(ADDR_ATTR_IF_IDX, &0i32.to_ne_bytes()));
        let e = parse_endpoint(&nested(ATTR_ADDR, &inner)).unwrap();
        assert_eq!(e.addr, Some(IpAddr::V6(v6)));
        assert_eq!((e.port, e.ifindex), (Some(8080), None));
        assert_eq!(e.flag_names(), ["signal"]);
    }

    #[test]
    fn an_endpoint_without_an_id_is_not_one() {
        let inner = nla(ADDR_ATTR_ADDR4, &[10, 0, 0, 2]);
        assert!(parse_endpoint(&nested(ATTR_ADDR, &inner)).is_none());
        assert!(parse_endpoint(&[]).is_none());
    }

    #[test]
    fn splits_messages_and_reports_errors() {
        let mut buf = message(30, 2, &[1, 2, 3, 4]);
        buf.extend(message(NLMSG_DONE, 2, &0i32.to_ne_bytes()));
        let (mut out, mut done) = (Vec::new(), false);
        split(&buf, &mut out, &mut done).unwrap();
        assert!(done);
        assert_eq!((out.len(), out[0].ty), (1, 30));
        assert_eq!(out[0].payload, [1, 2, 3, 4]);
        let err = message(NLMSG_ERROR, 0, &(-libc::EPERM).to_ne_bytes());
        let e = split(&err, &mut out, &mut done).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    /// The real kernel, in the test's own namespace: limits and endpoints come back.
    #[test]
    fn queries_this_namespace() {
        let family = family_id().expect("mptcp_pm family (CONFIG_MPTCP)");
        assert!(family > GENL_ID_CTRL);
        query().expect("GET_LIMITS and GET_ADDR");
    }
}
