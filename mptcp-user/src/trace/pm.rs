//! ADD_ADDR / RM_ADDR from the kernel's MPTCP path-manager netlink events — the source `ip mptcp
//! monitor` reads. No tracepoint sees these options, so they come from generic netlink: one
//! socket per network namespace (the events are per namespace), created on the calling thread
//! after entering that namespace and entering back, and all of them watched through one epoll
//! set that the async runtime polls: no thread per namespace. Namespaces are subscribed when
//! the watcher starts (the subscription is complete when `add_membership` returns), when
//! [`PmWatcher::rescan`] finds new ones, and when the tracer reports traffic in one it does not
//! watch yet; at most [`MAX_WATCHED`], the rest counted.
//!
//! Only the kernel's messages count: generic-netlink multicast from the kernel has sender port
//! id 0, while any user with its own user and network namespace may broadcast on the same group
//! there. Messages from another sender are counted as forged and dropped.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use log::{debug, warn};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
        GenlCtrl, GenlCtrlCmd,
    },
    GenlMessage,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use crate::sys::netns;

/// At most this many namespaces are watched at once: an unprivileged user can create network
/// namespaces by the thousand, and each watched one costs a socket.
pub const MAX_WATCHED: usize = 1024;

const FAMILY: &str = "mptcp_pm";
const GROUP: &str = "mptcp_pm_events";

/// `enum mptcp_event_type` (include/uapi/linux/mptcp_pm.h).
pub const MPTCP_EVENT_ANNOUNCED: u8 = 6;
pub const MPTCP_EVENT_REMOVED: u8 = 7;

/// `MPTCP_ATTR_*` of the events.
pub const ATTR_TOKEN: u16 = 1;
pub const ATTR_REM_ID: u16 = 4;
pub const ATTR_DADDR4: u16 = 7;
const ATTR_DADDR6: u16 = 8;
pub const ATTR_DPORT: u16 = 10;

/// An address the peer announced or withdrew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PmAddr {
    pub announced: bool,
    pub netns: u32,
    pub token: u32,
    pub remote_id: u8,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

/// Parses one generic-netlink message of the MPTCP family: `None` for other event types.
pub fn parse_event(cmd: u8, attrs: &[u8], netns: u32) -> Option<PmAddr> {
    let announced = match cmd {
        MPTCP_EVENT_ANNOUNCED => true,
        MPTCP_EVENT_REMOVED => false,
        _ => return None,
    };
    let mut ev = PmAddr {
        announced,
        netns,
        token: 0,
        remote_id: 0,
        addr: None,
        port: None,
    };
    for nla in NlasIterator::new(attrs).flatten() {
        let v = nla.value();
        match nla.kind() & 0x3fff {
            ATTR_TOKEN if v.len() >= 4 => ev.token = u32::from_ne_bytes(v[..4].try_into().ok()?),
            ATTR_REM_ID if !v.is_empty() => ev.remote_id = v[0],
            ATTR_DADDR4 if v.len() >= 4 => {
                ev.addr = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])))
            }
            ATTR_DADDR6 if v.len() >= 16 => {
                let b: [u8; 16] = v[..16].try_into().ok()?;
                ev.addr = Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            // Ports travel in network byte order.
            ATTR_DPORT if v.len() >= 2 => ev.port = Some(u16::from_be_bytes([v[0], v[1]])),
            _ => {}
        }
    }
    (ev.token != 0).then_some(ev)
}

/// Resolves the family id and the events group id of `mptcp_pm` in the socket's namespace.
fn resolve(socket: &Socket) -> std::io::Result<(u16, u32)> {
    let mut msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.to_owned())],
    });
    msg.finalize();
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = NLM_F_REQUEST;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let not_found = || std::io::Error::other("no mptcp_pm generic netlink family");
    let msg = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&reply)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let NetlinkPayload::InnerMessage(genl) = msg.payload else {
        return Err(not_found());
    };
    let mut family = None;
    let mut group = None;
    for attr in genl.payload.nlas {
        match attr {
            GenlCtrlAttrs::FamilyId(id) => family = Some(id),
            GenlCtrlAttrs::McastGroups(groups) => {
                for g in groups {
                    let name = g.iter().find_map(|a| match a {
                        McastGrpAttrs::Name(n) => Some(n.clone()),
                        _ => None,
                    });
                    let id = g.iter().find_map(|a| match a {
                        McastGrpAttrs::Id(i) => Some(*i),
                        _ => None,
                    });
                    if name.as_deref() == Some(GROUP) {
                        group = id;
                    }
                }
            }
            _ => {}
        }
    }
    Ok((family.ok_or_else(not_found)?, group.ok_or_else(not_found)?))
}

/// The `mptcp_pm` family id and its events group id, as this thread's namespace resolves them
/// (for tests that play a forger).
pub fn family_and_group() -> io::Result<(u16, u32)> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_rcvtimeo(&socket, Duration::from_secs(2));
    resolve(&socket)
}

/// Opens a socket subscribed to the MPTCP events of the namespace this thread is in.
fn subscribe() -> io::Result<(Socket, u16)> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // The family lookup is one request and one answer; do not wait forever for it.
    set_rcvtimeo(&socket, Duration::from_secs(2));
    let (family, group) = resolve(&socket)?;
    keep_address_events(&socket)?;
    socket.add_membership(group)?;
    socket.set_non_blocking(true)?;
    Ok((socket, family))
}

/// Receive buffer of a subscribed socket: room for thousands of address events between two
/// drains (the default, ~200 KiB, holds a few hundred).
const RCVBUF: libc::c_int = 4 << 20;

/// Keeps only ADD_ADDR / RM_ADDR events in the socket's receive queue, and gives it room.
///
/// The events group carries every MPTCP event of the namespace — created, established, each
/// subflow, closed: about six per connection. Queued unread while the ring buffer is drained,
/// they filled the default receive buffer under churn (200 connections in a slow guest), the
/// kernel dropped messages (ENOBUFS), and the tracer had to report a loss that may only have
/// been of messages it ignores. A classic BPF socket filter on the generic-netlink command drops
/// those in the kernel, before they are queued; what passes is what we read, so an overrun is a
/// real loss. Forged messages (any sender) of these two commands still pass and are counted.
fn keep_address_events(socket: &Socket) -> io::Result<()> {
    use libc::{sock_filter, BPF_ABS, BPF_B, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET};
    let op = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // nlmsghdr is 16 bytes; genlmsghdr's first byte is the command.
    const CMD_OFFSET: u32 = 16;
    let mut code = [
        op(BPF_LD | BPF_B | BPF_ABS, CMD_OFFSET, 0, 0),
        op(
            BPF_JMP | BPF_JEQ | BPF_K,
            MPTCP_EVENT_ANNOUNCED.into(),
            2,
            0,
        ),
        op(BPF_JMP | BPF_JEQ | BPF_K, MPTCP_EVENT_REMOVED.into(), 1, 0),
        op(BPF_RET | BPF_K, 0, 0, 0),
        op(BPF_RET | BPF_K, u32::MAX, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    setsockopt(socket, libc::SO_ATTACH_FILTER, &prog)?;
    // SO_RCVBUFFORCE passes net.core.rmem_max (we have CAP_NET_ADMIN); SO_RCVBUF is the
    // best a process without it gets.
    setsockopt(socket, libc::SO_RCVBUFFORCE, &RCVBUF)
        .or_else(|_| setsockopt(socket, libc::SO_RCVBUF, &RCVBUF))
}

fn setsockopt<T>(socket: &Socket, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: valid fd; `value` is a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_rcvtimeo(socket: &Socket, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // Best effort: without it the one-answer lookup could wait longer, never wrongly.
    let _ = setsockopt(socket, libc::SO_RCVTIMEO, &tv);
}

/// An epoll instance: readable (for the async runtime) whenever one of its sockets is.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd, socket fd and event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The tokens of the sockets that are readable now (does not wait).
    fn ready(&self, out: &mut Vec<u64>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: valid fd and buffer of `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.0.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    0,
                )
            };
            if n <= 0 {
                return;
            }
            out.extend(events[..n as usize].iter().map(|e| e.u64));
            if (n as usize) < events.len() {
                return;
            }
        }
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// One watched namespace.
struct Watched {
    socket: Socket,
    family: u16,
}

/// What the watcher rejected or could not cover, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmStats {
    /// Messages on the MPTCP events group that the kernel did not send (sender port id ≠ 0).
    pub forged: u64,
    /// Kernel messages about a token the tracer had not seen once the ring buffer was read past
    /// them (no connection it knows: not traced, or its records lost).
    pub unknown_token: u64,
    /// Messages the kernel dropped because a socket's receive buffer was full (ENOBUFS).
    pub overruns: u64,
    /// How many namespaces may be watched at once: [`MAX_WATCHED`], or half the soft
    /// RLIMIT_NOFILE when that is lower, so that the sockets never starve the process of
    /// descriptors.
    pub limit: u64,
    /// Namespaces not watched because `limit` were watched already (or descriptors ran out).
    pub unwatched: u64,
}

/// [`MAX_WATCHED`], or half the soft RLIMIT_NOFILE when that is lower (at least 16).
fn watch_limit() -> usize {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return MAX_WATCHED;
    }
    MAX_WATCHED.min((rlim.rlim_cur / 2).max(16) as usize)
}

/// Watches the MPTCP events of the network namespaces on the host.
pub struct PmWatcher {
    epoll: AsyncFd<Epoll>,
    watched: HashMap<u32, Watched>,
    /// Namespaces that could not be subscribed (no MPTCP there, gone): not retried.
    failed: HashSet<u32>,
    /// Only these namespaces (the --netns selector), or all.
    only: Vec<u32>,
    buf: Vec<u8>,
    ready: Vec<u64>,
    pub stats: PmStats,
}

impl PmWatcher {
    /// The namespaces subscribed to.
    pub fn watched(&self) -> Vec<u32> {
        self.watched.keys().copied().collect()
    }

    /// Subscribes to every namespace there is now (or only those in `only`). When this returns,
    /// the subscriptions are in place: nothing the kernel sends from now on is missed.
    pub fn new(only: Vec<u32>) -> io::Result<Self> {
        let mut w = PmWatcher {
            // SAFETY: the Epoll owns its fd for as long as the AsyncFd holds it.
            epoll: unsafe { AsyncFd::register(Epoll::new()?) }.map_err(|e| e.into_parts().1)?,
            watched: HashMap::new(),
            failed: HashSet::new(),
            only,
            buf: vec![0u8; 32 << 10],
            ready: Vec::new(),
            stats: PmStats {
                limit: watch_limit() as u64,
                ..PmStats::default()
            },
        };
        w.rescan();
        Ok(w)
    }

    /// Subscribes to namespaces that appeared and drops those that are gone.
    pub fn rescan(&mut self) {
        let current = netns::all();
        let gone: Vec<u32> = self
            .watched
            .keys()
            .filter(|ns| !current.contains_key(ns))
            .copied()
            .collect();
        for ns in gone {
            if let Some(w) = self.watched.remove(&ns) {
                let _ = self
                    .epoll
                    .get_ref()
                    .ctl(libc::EPOLL_CTL_DEL, w.socket.as_raw_fd(), 0);
            }
        }
        self.failed.retain(|ns| current.contains_key(ns));
        for (ns, path) in current {
            self.watch(ns, &path);
        }
    }

    /// Subscribes to one namespace, unless it is watched, filtered out, failed before, or the
    /// cap is reached.
    pub fn watch(&mut self, ns: u32, path: &Path) {
        if self.watched.contains_key(&ns)
            || self.failed.contains(&ns)
            || (!self.only.is_empty() && !self.only.contains(&ns))
        {
            return;
        }
        if self.watched.len() as u64 >= self.stats.limit {
            self.stats.unwatched += 1;
            self.failed.insert(ns);
            if self.stats.unwatched == 1 {
                warn!(
                    "watching {} network namespaces already: address events of others are not reported",
                    self.stats.limit
                );
            }
            return;
        }
        match netns::run_in(path, subscribe).and_then(|r| r) {
            Ok((socket, family)) => {
                if let Err(e) =
                    self.epoll
                        .get_ref()
                        .ctl(libc::EPOLL_CTL_ADD, socket.as_raw_fd(), ns as u64)
                {
                    debug!("netns {ns}: epoll: {e}");
                    return;
                }
                self.watched.insert(ns, Watched { socket, family });
            }
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // Out of descriptors, not a namespace without MPTCP: its address events
                    // are missed, and that is counted.
                    self.stats.unwatched += 1;
                    warn!("netns {ns}: not watched: {e}");
                } else {
                    debug!("netns {ns}: no MPTCP events: {e}");
                }
                self.failed.insert(ns);
            }
        }
    }

    /// Subscribes to a namespace the tracer saw traffic in, if it is not watched yet.
    pub fn saw(&mut self, ns: u32) {
        if self.watched.contains_key(&ns) || self.failed.contains(&ns) {
            return;
        }
        if let Some(path) = netns::all().remove(&ns) {
            self.watch(ns, &path);
        }
    }

    /// Waits until a watched socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.epoll.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every message waiting now, from every socket, into `out`.
    pub fn drain(&mut self, out: &mut Vec<PmAddr>) {
        self.ready.clear();
        self.epoll.get_ref().ready(&mut self.ready);
        let ready = std::mem::take(&mut self.ready);
        for &token in &ready {
            let ns = token as u32;
            let Some(w) = self.watched.get(&ns) else {
                continue;
            };
            loop {
                let (n, from) = match w.socket.recv_from(&mut &mut self.buf[..], 0) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // The kernel dropped messages for this socket; how many is unknown.
                        self.stats.overruns += 1;
                        continue;
                    }
                    Err(e) => {
                        debug!("netns {ns}: MPTCP events socket: {e}");
                        break;
                    }
                };
                if from.port_number() != 0 {
                    self.stats.forged += 1;
                    continue;
                }
                out.extend(parse_datagram(&self.buf[..n], w.family, ns));
            }
        }
        self.ready = ready;
    }
}

/// The MPTCP address events in one datagram (it may hold several messages: nlmsghdr (16
/// bytes), genlmsghdr (4), attributes).
pub fn parse_datagram(buf: &[u8], family: u16, netns: u32) -> Vec<PmAddr> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 20 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < 20 || off + len > buf.len() {
            break;
        }
        if ty == family {
            let cmd = buf[off + 16];
            out.extend(parse_event(cmd, &buf[off + 20..off + len], netns));
        }
        off += (len + 3) & !3;
    }
    out
}

impl AsFd for PmWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.get_ref().0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_an_announcement() {
        let mut attrs = nla(ATTR_TOKEN, &0x4e9baa70u32.to_ne_bytes());
        attrs.extend(nla(ATTR_REM_ID, &[5]));
        attrs.extend(nla(ATTR_DADDR4, &[192, 168, 0, 1]));
        attrs.extend(nla(ATTR_DPORT, &4321u16.to_be_bytes()));
        let ev = parse_event(MPTCP_EVENT_ANNOUNCED, &attrs, 7).unwrap();
        assert_eq!(
            ev,
            PmAddr {
                announced: true,
                netns: 7,
                token: 0x4e9baa70,
                remote_id: 5,
                addr: Some("192.168.0.1".parse().unwrap()),
                port: Some(4321),
            }
        );
    }

    #[test]
    fn parses_a_removal_and_ignores_other_events() {
        let mut attrs = nla(ATTR_TOKEN, &1u32.to_ne_bytes());
        attrs.extend(nla(ATTR_REM_ID, &[2]));
        let ev = parse_event(MPTCP_EVENT_REMOVED, &attrs, 1).unwrap();
        assert!(!ev.announced);
        assert_eq!((ev.remote_id, ev.addr), (2, None));
        assert!(
            parse_event(1, &attrs, 1).is_none(),
            "CREATED is not an address event"
        );
        assert!(
            parse_event(MPTCP_EVENT_REMOVED, &[1, 2], 1).is_none(),
            "truncated"
        );
    }

    #[test]
    fn resolves_the_family_in_this_namespace() {
        let (socket, family) = subscribe().expect("mptcp_pm family (CONFIG_MPTCP)");
        assert!(family > 0);
        drop(socket);
    }

    #[test]
    fn a_datagram_may_hold_several_messages() {
        let mut attrs = nla(ATTR_TOKEN, &7u32.to_ne_bytes());
        attrs.extend(nla(ATTR_REM_ID, &[1]));
        let mut msg = Vec::new();
        let len = 20 + attrs.len();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&33u16.to_ne_bytes()); // family id
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[MPTCP_EVENT_REMOVED, 1, 0, 0]);
        msg.extend_from_slice(&attrs);
        let two = [msg.clone(), msg].concat();
        assert_eq!(parse_datagram(&two, 33, 5).len(), 2);
        assert!(parse_datagram(&two, 34, 5).is_empty(), "another family");
        assert!(parse_datagram(&two[..30], 33, 5).is_empty(), "truncated");
    }
}
