//! ADD_ADDR / RM_ADDR from the kernel's MPTCP path-manager netlink events — the source `ip mptcp
//! monitor` reads. No tracepoint sees these options, so they come from generic netlink: one
//! socket per network namespace (the events are per namespace), each opened on a thread that
//! entered that namespace. Namespaces are found under /run/netns and /proc/*/ns/net, at start
//! and again whenever [`PmWatcher::rescan`] is called; a namespace that disappeared has its
//! socket closed, so the watcher does not keep dead namespaces alive.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use log::debug;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
        GenlCtrl, GenlCtrlCmd,
    },
    GenlMessage,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use tokio::sync::mpsc::UnboundedSender;

const FAMILY: &str = "mptcp_pm";
const GROUP: &str = "mptcp_pm_events";

/// `enum mptcp_event_type` (include/uapi/linux/mptcp_pm.h).
const MPTCP_EVENT_ANNOUNCED: u8 = 6;
const MPTCP_EVENT_REMOVED: u8 = 7;

/// `MPTCP_ATTR_*` of the events.
const ATTR_TOKEN: u16 = 1;
const ATTR_REM_ID: u16 = 4;
const ATTR_DADDR4: u16 = 7;
const ATTR_DADDR6: u16 = 8;
const ATTR_DPORT: u16 = 10;

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

/// Opens a socket subscribed to the MPTCP events of the namespace this thread is in.
fn subscribe() -> std::io::Result<(Socket, u16)> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let (family, group) = resolve(&socket)?;
    socket.add_membership(group)?;
    // Wake up regularly to notice that the watcher stopped or the namespace went away.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok((socket, family))
}

fn listen(
    netns: u32,
    family: u16,
    socket: Socket,
    stop: Arc<AtomicBool>,
    tx: UnboundedSender<PmAddr>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                debug!("netns {netns}: MPTCP events socket: {e}");
                return;
            }
        };
        let mut off = 0;
        // One datagram may hold several messages: nlmsghdr (16 bytes), genlmsghdr (4), attrs.
        while off + 20 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 20 || off + len > n {
                break;
            }
            if ty == family {
                let cmd = buf[off + 16];
                if let Some(ev) = parse_event(cmd, &buf[off + 20..off + len], netns) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// Watches the MPTCP events of every network namespace on the host.
pub struct PmWatcher {
    tx: UnboundedSender<PmAddr>,
    watched: HashMap<u32, Arc<AtomicBool>>,
    /// Only this namespace (the --netns filter), or all.
    only: Option<u32>,
}

impl PmWatcher {
    pub fn new(tx: UnboundedSender<PmAddr>, only: Option<u32>) -> Self {
        let mut w = PmWatcher {
            tx,
            watched: HashMap::new(),
            only,
        };
        w.rescan();
        // Subscriptions happen on their threads: give them a moment before the caller reports
        // ready, so traffic started right after does not miss its first announcements. (Only
        // here: later rescans run on the event loop and must not block it.)
        std::thread::sleep(Duration::from_millis(20));
        w
    }

    /// Namespace files by inode: named namespaces first, then every process's.
    fn namespaces() -> HashMap<u32, PathBuf> {
        let mut found = HashMap::new();
        let named = fs::read_dir("/run/netns").into_iter().flatten().flatten();
        let procs = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            });
        for path in named
            .map(|e| e.path())
            .chain(procs.map(|e| e.path().join("ns/net")))
        {
            if let Ok(m) = fs::metadata(&path) {
                found.entry(m.ino() as u32).or_insert(path);
            }
        }
        found
    }

    /// Subscribes to namespaces that appeared and drops those that are gone.
    pub fn rescan(&mut self) {
        let current = Self::namespaces();
        let gone: Vec<u32> = self
            .watched
            .keys()
            .filter(|ns| !current.contains_key(ns))
            .copied()
            .collect();
        for ns in gone {
            if let Some(stop) = self.watched.remove(&ns) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let fresh: HashSet<u32> = current
            .keys()
            .filter(|ns| !self.watched.contains_key(ns) && self.only.is_none_or(|o| o == **ns))
            .copied()
            .collect();
        for ns in fresh {
            let stop = Arc::new(AtomicBool::new(false));
            self.watched.insert(ns, stop.clone());
            let path = current[&ns].clone();
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let Ok(file) = fs::File::open(&path) else {
                    return;
                };
                // SAFETY: setns on this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    debug!(
                        "setns {}: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                drop(file);
                match subscribe() {
                    Ok((socket, family)) => listen(ns, family, socket, stop, tx),
                    Err(e) => debug!("netns {ns}: no MPTCP events: {e}"),
                }
            });
        }
    }
}

impl Drop for PmWatcher {
    fn drop(&mut self) {
        for stop in self.watched.values() {
            stop.store(true, Ordering::Relaxed);
        }
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
}

/// Who owns each live connection, learned from the kernel events, so that address events
/// (which carry only a token) get the pid/comm and the filter verdict of their connection.
#[derive(Default)]
pub struct Owners {
    by_token: HashMap<(u32, String), crate::event::Event>,
}

impl Owners {
    pub fn observe(&mut self, e: &crate::event::Event) {
        let (Some(ns), Some(token)) = (e.netns, e.token.clone()) else {
            return;
        };
        if e.event == crate::event::Kind::ConnClosed {
            self.by_token.remove(&(ns, token));
        } else {
            self.by_token
                .entry((ns, token))
                .or_insert_with(|| e.clone());
        }
    }

    pub fn enrich(&self, e: &mut crate::event::Event) {
        let (Some(ns), Some(token)) = (e.netns, e.token.clone()) else {
            return;
        };
        if let Some(c) = self.by_token.get(&(ns, token)) {
            e.pid = c.pid;
            e.comm = c.comm.clone();
            e.cgroup_id = c.cgroup_id;
            e.conn_id = c.conn_id;
            e.family = c.family;
        }
    }
}
