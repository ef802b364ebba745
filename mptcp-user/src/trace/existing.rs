//! Connections that were open before the tracer started. The programs never saw them created,
//! so at start, right after the programs are attached, a snapshot (sock_diag, in every network
//! namespace in the selection) reports each one once — `conn_existing`, then one
//! `subflow_established` record with `existing: true` per open subflow — and this stage makes
//! their later kernel events complete and in order:
//!
//! - the owner (pid, comm, cgroup) comes from the socket-inode → process mapping (what `ss -p`
//!   does); it is also written to the programs' `EXISTING` map, so that the kernel reports and
//!   selects the connection's events by it, and listeners that predate the tracer are seeded
//!   into `LISTENERS`, so that the connections they accept later have an owner;
//! - the kernel reports such a connection's `conn_closed` when its MPTCP socket closes, which
//!   is before its subflows close: it is held until every subflow known open (the snapshot's
//!   and the joins seen since) has closed, at most [`HOLD_NS`], and released stamped at the
//!   last subflow's close, with `subflows_total` = subflows open at the snapshot + joined since;
//! - a pre-existing subflow's `subflow_closed` has local port 0 (the kernel released the port
//!   before the programs could read it): the snapshot's port is filled in, found by (netns,
//!   token, local address, remote address, remote port);
//! - the events carry the snapshot's identity of the connection and subflows, so the live view
//!   attaches them to the entries the snapshot created;
//! - the userspace selector (`--port`, `--addr`, `--token`, `-4`/`-6`) judges the connection
//!   once, on the snapshot's records; its later events follow that verdict.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use log::{debug, warn};
use mptcp_common::{scope, ExistingKey, ListenKey, Owner};
use netlink_packet_sock_diag::inet::StateFlags;

use crate::{
    decode::Clock,
    event::{
        Conn, ConnExisting, Data, Event, Family, Ids, Side, Subflow, SubflowEstablished, Token,
        Tuple,
    },
    select::Selector,
    sys::{
        netns,
        sockdiag::{self, subflow_attr as sf, DiagSock, NetnsDiag, IPPROTO_MPTCP},
        sockowner::{self, Process},
    },
};

use super::filter::ConnMatcher;

/// How long a pre-existing connection's `conn_closed` waits for its subflows' closes
/// (documented in the README).
pub const HOLD_NS: u64 = 1_000_000_000;

/// `TCP_LISTEN`.
const LISTEN: u8 = 10;

/// An address and port.
type Endpoint = (IpAddr, u16);

/// A subflow the snapshot found open.
struct SnapSubflow {
    local: Endpoint,
    remote: Endpoint,
    /// Its identity in events (the socket's cookie: never a kernel address).
    id: u64,
    open: bool,
}

/// What the stage keeps per pre-existing connection, by (netns, token).
struct Known {
    /// The snapshot's identity of the connection (the MPTCP socket's cookie).
    id: u64,
    pid: Option<u32>,
    comm: Option<String>,
    cgroup: Option<u64>,
    /// The selector's verdict on the snapshot's records.
    selected: bool,
    subflows: Vec<SnapSubflow>,
    /// Joins seen since the snapshot that have not closed (kernel subflow identities).
    joins_open: HashSet<u64>,
    /// Subflows open at the snapshot + joined since.
    total: u32,
    /// A `conn_closed` waiting for the subflows, and until when (monotonic ns).
    held: Option<(Event, u64)>,
}

impl Known {
    fn all_closed(&self) -> bool {
        self.joins_open.is_empty() && self.subflows.iter().all(|s| !s.open)
    }
}

/// Where an event goes after this stage.
pub enum Route {
    /// Not a pre-existing connection's: the ordinary path (owners, selector, reorder).
    Normal(Box<Event>),
    /// A selected pre-existing connection's (already judged): straight to reorder.
    Judged(Vec<Event>),
    /// Held, or of a pre-existing connection the selector did not match.
    Nothing,
}

/// The stage: the snapshot's connections, and the programs' maps it keeps in step.
#[derive(Default)]
pub struct Existing {
    conns: HashMap<(u32, u32), Known>,
    existing_map: Option<BpfHashMap<MapData, ExistingKey, Owner>>,
    /// Events dropped because their pre-existing connection did not match the selector.
    pub filtered: u64,
}

/// What the snapshot produced: its events (in output order) and the stage that follows up.
pub struct Snapshot {
    pub events: Vec<Event>,
    pub stage: Existing,
}

/// One namespace's sockets, as the snapshot reads them.
struct NsSockets {
    netns: u32,
    mptcp: Vec<DiagSock>,
    tcp: Vec<DiagSock>,
    tcp_listeners: Vec<DiagSock>,
}

fn dump_netns(netns: u32, path: &std::path::Path, all_tcp: bool) -> std::io::Result<NsSockets> {
    let mut d = NetnsDiag::open(path)?;
    // Every MPTCP socket (listeners included); the subflows: TCP sockets past the handshake.
    let mptcp = d.sockets(IPPROTO_MPTCP, StateFlags::all())?;
    let open = StateFlags::all()
        - StateFlags::LISTEN
        - StateFlags::TIME_WAIT
        - StateFlags::SYN_SENT
        - StateFlags::SYN_RECV
        - StateFlags::CLOSE;
    let tcp = d.sockets(
        netlink_packet_sock_diag::constants::IPPROTO_TCP as u32,
        open,
    )?;
    let tcp_listeners = if all_tcp {
        d.sockets(
            netlink_packet_sock_diag::constants::IPPROTO_TCP as u32,
            StateFlags::LISTEN,
        )?
    } else {
        Vec::new()
    };
    Ok(NsSockets {
        netns,
        mptcp,
        tcp,
        tcp_listeners,
    })
}

/// Takes the snapshot: run right after the programs are attached, so that whatever happens
/// from then on is in the ring buffer and nothing falls between the two. `t0` stamps its
/// events. Namespaces that cannot be read are skipped with a warning.
pub fn snapshot(
    sel: &Selector,
    clock: &Clock,
    t0: u64,
    mut existing_map: Option<BpfHashMap<MapData, ExistingKey, Owner>>,
    mut listeners_map: Option<BpfHashMap<MapData, ListenKey, Owner>>,
) -> Snapshot {
    let config = sel.config();
    let wanted = sel.netns_inodes();
    let mut spaces: Vec<(u32, std::path::PathBuf)> = netns::all()
        .into_iter()
        .filter(|(ino, _)| wanted.is_empty() || wanted.contains(ino))
        .collect();
    spaces.sort();
    let mut dumps = Vec::new();
    for (ino, path) in &spaces {
        match dump_netns(*ino, path, config.all_tcp != 0) {
            Ok(d) => dumps.push(d),
            Err(e) => warn!("cannot list the open connections of netns {ino}: {e}"),
        }
    }
    let holders = sockowner::socket_holders();
    let mut procs: HashMap<u32, Option<Process>> = HashMap::new();
    let mut process_of = |inode: u32| -> Option<Process> {
        let pid = *holders.get(&inode)?;
        procs
            .entry(pid)
            .or_insert_with(|| Process::read(pid))
            .clone()
    };
    let matcher = ConnMatcher::new(sel.conn.clone());
    let time = clock.rfc3339(t0);
    let mut out = Snapshot {
        events: Vec::new(),
        stage: Existing::default(),
    };
    for ns in &dumps {
        let listen_ports: HashSet<u16> = ns
            .mptcp
            .iter()
            .filter(|s| s.state == LISTEN)
            .map(|s| s.local.1)
            .collect();
        // Listeners that predate the tracer own what they accept from now on.
        for l in ns
            .mptcp
            .iter()
            .chain(&ns.tcp_listeners)
            .filter(|s| s.state == LISTEN)
        {
            let (Some(p), Some(m)) = (process_of(l.inode), listeners_map.as_mut()) else {
                continue;
            };
            let key = ListenKey {
                netns: ns.netns,
                port: l.local.1 as u32,
            };
            // BPF_NOEXIST: a listener the programs saw created since they were attached wins.
            if let Err(e) = m.insert(key, p.owner(&config.scope), 1) {
                debug!("LISTENERS entry for port {}: {e}", l.local.1);
            }
        }
        let mut subflows: HashMap<u32, Vec<&DiagSock>> = HashMap::new();
        for s in &ns.tcp {
            if let Some(u) = &s.ulp {
                subflows.entry(u.token).or_default().push(s);
            }
        }
        for m in ns.mptcp.iter().filter(|s| s.state != LISTEN) {
            let Some(info) = m.info.as_deref().and_then(sockdiag::parse_mptcp_info) else {
                continue;
            };
            if info.token == 0 {
                continue;
            }
            let proc_ = process_of(m.inode);
            let owner = proc_.as_ref().map(|p| p.owner(&config.scope));
            // The programs' rule for a connection: its owner in scope; one without a known
            // owner only when everything is selected.
            let in_scope = match &owner {
                Some(o) => config.scope.selects(o),
                None => config.scope.flags & scope::ALL != 0,
            };
            if let (Some(o), Some(map)) = (&owner, existing_map.as_mut()) {
                let key = ExistingKey {
                    netns: ns.netns,
                    token: info.token,
                };
                if let Err(e) = map.insert(key, o, 0) {
                    warn!(
                        "cannot record the owner of connection {}: {e}",
                        Token(info.token)
                    );
                }
            }
            let mut sfs = subflows.remove(&info.token).unwrap_or_default();
            // The initial subflow first, then by local port, so the records are stable.
            sfs.sort_by_key(|s| {
                let initial = s
                    .ulp
                    .as_ref()
                    .is_some_and(|u| u.flags & (sf::MCAP_LOC | sf::MCAP_REM) != 0);
                (!initial, s.local, s.remote)
            });
            let conn = Conn {
                token: Some(Token(info.token)),
                // sock_diag does not show the peer's key.
                peer_token: None,
                netns: Some(ns.netns),
                pid: proc_.as_ref().map(|p| p.pid),
                comm: proc_.as_ref().map(|p| p.comm.clone()),
                protocol: None,
                ids: Ids {
                    conn: m.cookie,
                    subflow: 0,
                    cgroup: proc_.as_ref().and_then(|p| p.cgroup_id),
                },
            };
            let (local, remote) = sfs
                .first()
                .map_or((m.local, m.remote), |s| (s.local, s.remote));
            let tuple = |local: (IpAddr, u16), remote: (IpAddr, u16)| Tuple {
                family: Family::of(local.0),
                saddr: local.0,
                sport: local.1,
                daddr: remote.0,
                dport: remote.1,
            };
            let mut events = vec![Event::new(
                t0,
                time.clone(),
                Data::ConnExisting(ConnExisting {
                    conn: conn.clone(),
                    tuple: tuple(local, remote),
                    side: listen_ports.contains(&local.1).then_some(Side::Server),
                    subflows: sfs.len() as u32,
                    fallback: info.flags & sockdiag::MPTCP_INFO_FLAG_FALLBACK != 0,
                    add_addr_signal: info.add_addr_signal,
                    add_addr_accepted: info.add_addr_accepted,
                    subflows_max: info.subflows_max,
                }),
            )];
            for s in &sfs {
                let u = s.ulp.clone().unwrap_or_default();
                events.push(Event::new(
                    t0,
                    time.clone(),
                    Data::SubflowEstablished(SubflowEstablished {
                        conn: Conn {
                            ids: Ids {
                                subflow: s.cookie,
                                ..conn.ids
                            },
                            ..conn.clone()
                        },
                        tuple: tuple(s.local, s.remote),
                        subflow: Subflow {
                            ifindex: None,
                            ifname: None,
                            local_id: Some(u.local_id),
                            remote_id: u.remote_id,
                            backup: u.flags & sf::BKUP_LOC != 0,
                            peer_backup: u.flags & sf::BKUP_REM != 0,
                            join: u.flags & (sf::JOIN_LOC | sf::JOIN_REM) != 0,
                        },
                        existing: true,
                    }),
                ));
            }
            let selected = in_scope && matcher.matches_all(&events);
            out.stage.conns.insert(
                (ns.netns, info.token),
                Known {
                    id: m.cookie,
                    pid: conn.pid,
                    comm: conn.comm.clone(),
                    cgroup: conn.ids.cgroup,
                    selected,
                    subflows: sfs
                        .iter()
                        .map(|s| SnapSubflow {
                            local: s.local,
                            remote: s.remote,
                            id: s.cookie,
                            open: true,
                        })
                        .collect(),
                    joins_open: HashSet::new(),
                    total: sfs.len() as u32,
                    held: None,
                },
            );
            if selected {
                out.events.extend(events);
            }
        }
    }
    out.stage.existing_map = existing_map;
    out
}

impl Existing {
    /// Routes one event (from the ring buffer or the path manager).
    pub fn route(&mut self, mut e: Event, now: u64) -> Route {
        let (Some(ns), Some(token)) = (e.netns(), e.token()) else {
            return Route::Normal(Box::new(e));
        };
        let Some(k) = self.conns.get_mut(&(ns, token.0)) else {
            return Route::Normal(Box::new(e));
        };
        if let Some(c) = e.conn_mut() {
            // Untracked by the programs: this is the snapshot's connection.
            c.ids.conn = k.id;
            if c.pid.is_none() && k.pid.is_some() {
                c.pid = k.pid;
                c.comm.clone_from(&k.comm);
                c.ids.cgroup = k.cgroup;
            }
        }
        let mut out = Vec::new();
        // Whether the connection's close goes out with this event (it is forgotten then).
        let mut done = false;
        match &mut e.data {
            Data::SubflowEstablished(_) => {
                k.joins_open.insert(e.ids().subflow);
                k.total += 1;
                out.push(e);
            }
            Data::SubflowClosed(d) => {
                let t = &mut d.tuple;
                let join = k.joins_open.remove(&d.conn.ids.subflow);
                let snap = k.subflows.iter_mut().find(|s| {
                    s.open
                        && s.local.0 == t.saddr
                        && s.remote == (t.daddr, t.dport)
                        && (t.sport == 0 || t.sport == s.local.1)
                });
                if let (false, Some(s)) = (join, snap) {
                    s.open = false;
                    t.sport = s.local.1;
                    d.conn.ids.subflow = s.id;
                }
                let (ts, time) = (e.ts_ns, e.time.clone());
                out.push(e);
                if k.all_closed() {
                    if let Some((mut closed, _)) = k.held.take() {
                        // Released at the last subflow's close, after it.
                        if ts > closed.ts_ns {
                            closed.ts_ns = ts;
                            closed.time = time;
                        }
                        out.push(closed);
                        done = true;
                    }
                }
            }
            Data::ConnClosed(d) => {
                d.subflows_total = k.total;
                if !k.all_closed() {
                    k.held = Some((e, now + HOLD_NS));
                    return Route::Nothing;
                }
                out.push(e);
                done = true;
            }
            _ => out.push(e),
        }
        let selected = k.selected;
        if done {
            self.forget(ns, token.0);
        }
        if selected {
            Route::Judged(out)
        } else {
            self.filtered += out.len() as u64;
            Route::Nothing
        }
    }

    /// The connection's close was released: the programs' entry goes too.
    fn forget(&mut self, ns: u32, token: u32) {
        self.conns.remove(&(ns, token));
        if let Some(m) = self.existing_map.as_mut() {
            // Absent when the owner was unknown.
            let _ = m.remove(&ExistingKey { netns: ns, token });
        }
    }

    /// Releases the held closes whose subflows did not all close within [`HOLD_NS`] (all of
    /// them with `now == u64::MAX`).
    pub fn expire(&mut self, now: u64, out: &mut impl FnMut(Event)) {
        let due: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, k)| k.held.as_ref().is_some_and(|(_, until)| *until <= now))
            .map(|(key, _)| *key)
            .collect();
        for (ns, token) in due {
            let k = self.conns.get_mut(&(ns, token)).expect("listed");
            let (closed, _) = k.held.take().expect("held");
            let selected = k.selected;
            self.forget(ns, token);
            if selected {
                out(closed);
            } else {
                self.filtered += 1;
            }
        }
    }

    /// When the oldest held close is due (monotonic ns), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.conns
            .values()
            .filter_map(|k| k.held.as_ref().map(|(_, until)| *until))
            .min()
    }

    #[cfg(test)]
    fn with(netns: u32, token: u32, subflows: &[(Endpoint, Endpoint)]) -> Existing {
        let mut s = Existing::default();
        s.conns.insert(
            (netns, token),
            Known {
                id: 7,
                pid: Some(42),
                comm: Some("holder".into()),
                cgroup: None,
                selected: true,
                subflows: subflows
                    .iter()
                    .enumerate()
                    .map(|(i, (l, r))| SnapSubflow {
                        local: *l,
                        remote: *r,
                        id: 100 + i as u64,
                        open: true,
                    })
                    .collect(),
                joins_open: HashSet::new(),
                total: subflows.len() as u32,
                held: None,
            },
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{tests::bytes, tests::sample, to_event, Clock};
    use crate::event::Kind;
    use mptcp_common::EventKind;
    use std::net::Ipv4Addr;

    fn v4(a: [u8; 4], p: u16) -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::from(a)), p)
    }

    fn kernel_event(
        kind: EventKind,
        ts: u64,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> Event {
        let clock = Clock::fixed(0);
        let mut e = to_event(&crate::decode::raw(&bytes(&sample(kind))).unwrap(), &clock).unwrap();
        e.ts_ns = ts;
        if let Some(c) = e.conn_mut() {
            c.token = Some(Token(5));
            c.netns = Some(1);
            c.pid = None;
            c.comm = None;
            c.ids.conn = 0xffff_8880_0000_1000;
            c.ids.subflow = 0xffff_8880_0000_2000 + ts;
        }
        let t = match &mut e.data {
            Data::SubflowClosed(d) => &mut d.tuple,
            Data::ConnClosed(d) => &mut d.tuple,
            Data::SubflowEstablished(d) => &mut d.tuple,
            _ => unreachable!(),
        };
        (t.saddr, t.sport, t.daddr, t.dport) = (local.0, local.1, remote.0, remote.1);
        e
    }

    fn judged(r: Route) -> Vec<Event> {
        match r {
            Route::Judged(v) => v,
            Route::Normal(_) => panic!("not judged"),
            Route::Nothing => Vec::new(),
        }
    }

    #[test]
    fn an_early_close_waits_for_the_subflows_and_ports_are_filled_in() {
        let (a, b) = (v4([10, 0, 0, 2], 40000), v4([10, 0, 0, 1], 80));
        let (c, d) = (v4([192, 168, 0, 2], 40001), v4([10, 0, 0, 1], 80));
        let mut s = Existing::with(1, 5, &[(a, b), (c, d)]);
        let closed = kernel_event(EventKind::ConnClosed, 10, (a.0, 0), b);
        assert!(judged(s.route(closed, 10)).is_empty(), "held");
        assert_eq!(s.next_due(), Some(10 + HOLD_NS));
        let first = judged(s.route(kernel_event(EventKind::SubflowClosed, 20, (c.0, 0), d), 20));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].tuple().unwrap().sport, 40001);
        assert_eq!(first[0].ids().subflow, 101);
        assert_eq!((first[0].pid(), first[0].ids().conn), (Some(42), 7));
        let last = judged(s.route(kernel_event(EventKind::SubflowClosed, 30, (a.0, 0), b), 30));
        let kinds: Vec<_> = last.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, [Kind::SubflowClosed, Kind::ConnClosed]);
        assert_eq!(last[0].tuple().unwrap().sport, 40000);
        assert_eq!(last[1].ts_ns, 30, "stamped at the last subflow's close");
        let Data::ConnClosed(cc) = &last[1].data else {
            unreachable!()
        };
        assert_eq!(cc.subflows_total, 2);
        assert!(s.conns.is_empty() && s.next_due().is_none());
    }

    #[test]
    fn joins_since_the_snapshot_count_and_a_close_is_held_at_most_the_bound() {
        let (a, b) = (v4([10, 0, 0, 2], 40000), v4([10, 0, 0, 1], 80));
        let j = v4([192, 168, 0, 2], 40005);
        let mut s = Existing::with(1, 5, &[(a, b)]);
        let join = kernel_event(EventKind::SubflowEstablished, 5, j, b);
        assert_eq!(judged(s.route(join, 5)).len(), 1);
        let _ = s.route(kernel_event(EventKind::SubflowClosed, 6, (a.0, 0), b), 6);
        assert!(judged(s.route(kernel_event(EventKind::ConnClosed, 7, a, b), 7)).is_empty());
        let mut out = Vec::new();
        s.expire(7 + HOLD_NS - 1, &mut |e| out.push(e));
        assert!(out.is_empty());
        s.expire(7 + HOLD_NS, &mut |e| out.push(e));
        let Data::ConnClosed(cc) = &out[0].data else {
            unreachable!()
        };
        assert_eq!(cc.subflows_total, 2, "one at the snapshot + one join");
        assert!(s.conns.is_empty());
    }

    #[test]
    fn other_connections_pass_and_unselected_ones_are_dropped() {
        let (a, b) = (v4([10, 0, 0, 2], 40000), v4([10, 0, 0, 1], 80));
        let mut s = Existing::with(1, 6, &[(a, b)]);
        assert!(matches!(
            s.route(kernel_event(EventKind::SubflowClosed, 1, a, b), 1),
            Route::Normal(_)
        ));
        let mut s = Existing::with(1, 5, &[(a, b)]);
        s.conns.values_mut().for_each(|k| k.selected = false);
        assert!(matches!(
            s.route(kernel_event(EventKind::SubflowClosed, 1, (a.0, 0), b), 1),
            Route::Nothing
        ));
        assert_eq!(s.filtered, 1);
    }
}
