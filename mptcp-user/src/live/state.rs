//! The live view's model: connections and their subflows, built from tracer events and
//! refreshed by `sock_diag` samples. Pure: no I/O, no clock of its own (time comes with each
//! [`Update`]), so every transition is a unit test.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::event::{Data, Event, Kind, Lost, Side, UpgradeOutcome};

use super::diag::SockInfo;

/// How long closed connections and subflows stay visible (dimmed).
pub const LINGER_NS: u64 = 5_000_000_000;
/// At most this many closed connections linger; beyond it the oldest closed goes at once. At
/// the machine's maximum churn 5 s of closed connections were 165,000 entries (380 MiB), far
/// more than any terminal shows; the header's counts do not depend on them.
pub const MAX_LINGERING: usize = 1000;
/// The window of the header's "last minute" counts.
pub const WINDOW_NS: u64 = 60_000_000_000;
/// A rate older than this (no fresh sample) is shown as zero.
const RATE_STALE_NS: u64 = 3_000_000_000;

/// What the collector sends to the state.
#[derive(Clone, Debug)]
pub enum Update {
    /// A decoded, filtered tracer event (shared with the pipeline's diagnosis).
    Event(Arc<Event>),
    /// One `sock_diag` dump of a network namespace, taken at `at_ns` (CLOCK_MONOTONIC).
    Diag {
        netns: u32,
        at_ns: u64,
        socks: Vec<SockInfo>,
    },
    /// Time passes (CLOCK_MONOTONIC ns): ages, lingering, windows.
    Tick(u64),
}

/// An address and port.
pub type Endpoint = (IpAddr, u16);

/// Identity of a connection within one run: network namespace, kernel socket address, and how
/// many connections used that address before it (the kernel reuses a closed socket's memory
/// at once, so the address alone would merge a new connection into the old one).
pub type ConnKey = (u32, u64, u64);

/// An address the peer announced (ADD_ADDR) or withdrew (RM_ADDR).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAddr {
    pub announced: bool,
    pub remote_id: u8,
    pub addr: Option<(IpAddr, Option<u16>)>,
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Established,
    Closed,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conn {
    pub key: ConnKey,
    pub token: Option<String>,
    pub netns: u32,
    pub side: Option<Side>,
    /// Client and server ends, whichever end this socket is.
    pub client: Option<(IpAddr, u16)>,
    pub server: Option<(IpAddr, u16)>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub created_ns: u64,
    pub state: ConnState,
    /// `Some(reason)` once the connection fell back to plain TCP.
    pub fallback: Option<String>,
    /// A subflow closed by a reset (reason as in `subflow_closed`).
    pub reset: Option<String>,
    /// Subflows that never came up (`subflow_failed`).
    pub failed: u32,
    /// Open before the tracer started (`conn_existing`): its beginning was not seen.
    pub existing: bool,
    pub closed_ns: Option<u64>,
    pub subflows: Vec<Subflow>,
    /// ADD_ADDR / RM_ADDR seen for this connection, oldest first (at most [`MAX_PEER_ADDRS`]).
    pub peer_addrs: Vec<PeerAddr>,
    /// `conn_diagnosis` of the connection, as (cause, detail), oldest first (one per cause).
    pub diagnoses: Vec<(String, String)>,
    /// Order of arrival, for the default sort.
    pub seq: u64,
    /// Time of the newest sample recorded in the subflows' [`Subflow::shares`].
    shares_ns: u64,
}

/// Address events kept per connection.
pub const MAX_PEER_ADDRS: usize = 8;

#[derive(Clone, Debug, PartialEq)]
pub struct Subflow {
    pub id: u64,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub ifname: Option<String>,
    pub local_id: Option<i32>,
    pub remote_id: Option<u8>,
    /// This side asked for backup priority (`ss` flag `b`).
    pub backup: bool,
    /// The peer asked for backup priority (`ss` flag `B`).
    pub peer_backup: bool,
    pub join: bool,
    /// TCP state name from the last `sock_diag` sample, or `estab` / `closed` / `reset` /
    /// `failed`.
    pub state: String,
    pub closed_ns: Option<u64>,
    /// Close reason (`closed`, `rst_sent`, ...).
    pub reason: Option<String>,
    /// Why it ended, when that is more than a plain close: the reason and the event's cause
    /// fields, as the text events write them (`rst_sent reset_sent_reason=…`).
    pub cause: Option<String>,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retrans: u32,
    pub srtt_us: Option<u32>,
    /// Bytes per second over the last two samples.
    pub tx_rate: f64,
    pub rx_rate: f64,
    /// (time, bytes_sent, bytes_received) of the last sample the rates came from.
    last_sample: Option<(u64, u64, u64)>,
    /// Its share of the connection's throughput at each of the last [`SHARES`] samples, in
    /// eighths (0–8), oldest first: the SHARE column's sparkline.
    pub shares: std::collections::VecDeque<u8>,
}

/// Samples kept per subflow for its share sparkline.
pub const SHARES: usize = 5;

impl Subflow {
    /// A subflow as its establishment shows it, before any sample.
    fn opened(
        id: u64,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        sf: &crate::event::Subflow,
        join: bool,
    ) -> Subflow {
        Subflow {
            id,
            local,
            remote,
            ifname: sf.ifname.clone(),
            local_id: sf.local_id.map(i32::from),
            remote_id: Some(sf.remote_id),
            backup: sf.backup,
            peer_backup: sf.peer_backup,
            join,
            state: "estab".into(),
            closed_ns: None,
            reason: None,
            cause: None,
            bytes_sent: 0,
            bytes_acked: 0,
            bytes_received: 0,
            retrans: 0,
            srtt_us: None,
            tx_rate: 0.0,
            rx_rate: 0.0,
            last_sample: None,
            shares: std::collections::VecDeque::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.closed_ns.is_none()
    }

    pub fn rate(&self) -> f64 {
        self.tx_rate + self.rx_rate
    }

    /// `red` out of `red-client`: the path name of the seed's test bed, else the interface.
    pub fn path_name(&self) -> &str {
        let name = self.ifname.as_deref().unwrap_or("?");
        name.split('-').next().unwrap_or(name)
    }
}

impl Conn {
    /// Adds the open subflows' shares of the throughput when a sample came since the last
    /// time (the samples of one round share a time; a subflow's rates stand until its next).
    fn record_shares(&mut self) {
        let newest = self
            .subflows
            .iter()
            .filter(|s| s.is_open())
            .filter_map(|s| s.last_sample.map(|(t, _, _)| t))
            .max()
            .unwrap_or(0);
        if newest <= self.shares_ns {
            return;
        }
        self.shares_ns = newest;
        let total: f64 = self
            .subflows
            .iter()
            .filter(|s| s.is_open())
            .map(Subflow::rate)
            .sum();
        for sf in self.subflows.iter_mut().filter(|s| s.is_open()) {
            let eighths = if total > 0.0 {
                (sf.rate() / total * 8.0).round() as u8
            } else {
                0
            };
            if sf.shares.len() == SHARES {
                sf.shares.pop_front();
            }
            sf.shares.push_back(eighths.min(8));
        }
    }

    pub fn is_open(&self) -> bool {
        self.closed_ns.is_none()
    }

    pub fn rate(&self) -> f64 {
        self.subflows.iter().map(Subflow::rate).sum()
    }

    /// Text the `/` filter searches: token, addresses, comm.
    pub fn haystack(&self) -> String {
        let mut s = String::new();
        s += self.token.as_deref().unwrap_or("");
        s += " ";
        s += self.comm.as_deref().unwrap_or("");
        for (a, p) in self.client.iter().chain(self.server.iter()) {
            s += &format!(" {a}:{p}");
        }
        for sf in &self.subflows {
            s += &format!(
                " {}:{} {}:{}",
                sf.local.0, sf.local.1, sf.remote.0, sf.remote.1
            );
        }
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Oldest first (order of arrival).
    #[default]
    Age,
    /// Highest throughput first.
    Throughput,
    Token,
}

impl SortBy {
    pub fn next(self) -> Self {
        match self {
            SortBy::Age => SortBy::Throughput,
            SortBy::Throughput => SortBy::Token,
            SortBy::Token => SortBy::Age,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Age => "age",
            SortBy::Throughput => "throughput",
            SortBy::Token => "token",
        }
    }
}

/// What the user chose: selection, folds, filter, sort, pause, help. Changed by keys only.
#[derive(Clone, Debug, Default)]
pub struct Ui {
    /// Selected connection (by key, so it survives re-sorting).
    pub selected: Option<ConnKey>,
    pub folded: std::collections::HashSet<ConnKey>,
    pub filter: String,
    /// True while the `/` prompt is open.
    pub editing_filter: bool,
    pub sort: SortBy,
    pub paused: bool,
    pub help: bool,
    /// A line shown above the footer (e.g. the demo's note).
    pub banner: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct State {
    pub now_ns: u64,
    pub conns: BTreeMap<ConnKey, Conn>,
    /// The current connection on each (namespace, socket address): its generation.
    current: HashMap<(u32, u64), u64>,
    /// Events that went missing since the tracer started, by cause.
    pub lost: Lost,
    /// While paused: the view shown (the state itself keeps absorbing updates).
    pub frozen: Option<Box<State>>,
    /// Sockets the TCP→MPTCP upgrade changed (`socket_upgraded` events with outcome upgraded).
    /// Stays `None` (and is not shown) until the first one.
    pub upgraded: Option<u64>,
    joins: VecDeque<u64>,
    fallbacks: VecDeque<u64>,
    /// Closed connections in the order they closed (some may be gone already).
    closed: VecDeque<ConnKey>,
    seq: u64,
    pub ui: Ui,
}

impl State {
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Event(e) => self.event(&e),
            Update::Diag {
                netns,
                at_ns,
                socks,
            } => self.diag(netns, at_ns, &socks),
            Update::Tick(now) => self.tick(now),
        }
    }

    /// Joins in the last minute.
    pub fn joins_last_minute(&self) -> usize {
        self.joins.len()
    }

    pub fn fallbacks_last_minute(&self) -> usize {
        self.fallbacks.len()
    }

    /// Connections seen since the view started (open, lingering or gone).
    pub fn seen(&self) -> u64 {
        self.seq
    }

    pub fn open_conns(&self) -> usize {
        self.conns.values().filter(|c| c.is_open()).count()
    }

    pub fn open_subflows(&self) -> usize {
        self.conns
            .values()
            .flat_map(|c| c.subflows.iter())
            .filter(|s| s.is_open())
            .count()
    }

    /// Namespaces with open subflows: where `sock_diag` should look.
    pub fn live_netns(&self) -> std::collections::BTreeSet<u32> {
        self.conns
            .values()
            .filter(|c| c.subflows.iter().any(Subflow::is_open))
            .map(|c| c.netns)
            .collect()
    }

    /// Connections in display order, after the `/` filter.
    pub fn visible(&self) -> Vec<&Conn> {
        let needle = self.ui.filter.to_lowercase();
        let mut v: Vec<&Conn> = self
            .conns
            .values()
            .filter(|c| needle.is_empty() || c.haystack().to_lowercase().contains(&needle))
            .collect();
        match self.ui.sort {
            SortBy::Age => v.sort_by_key(|c| c.seq),
            SortBy::Throughput => v.sort_by(|a, b| b.rate().total_cmp(&a.rate())),
            SortBy::Token => v.sort_by(|a, b| a.token.cmp(&b.token).then(a.seq.cmp(&b.seq))),
        }
        v
    }

    /// Moves the selection by `delta` connections in display order.
    pub fn move_selection(&mut self, delta: isize) {
        let keys: Vec<ConnKey> = self.visible().iter().map(|c| c.key).collect();
        if keys.is_empty() {
            self.ui.selected = None;
            return;
        }
        let cur = self
            .ui
            .selected
            .and_then(|k| keys.iter().position(|&x| x == k));
        let idx = match cur {
            None => 0,
            Some(i) => (i as isize + delta).clamp(0, keys.len() as isize - 1) as usize,
        };
        self.ui.selected = Some(keys[idx]);
    }

    pub fn toggle_fold(&mut self) {
        if let Some(k) = self.ui.selected {
            if !self.ui.folded.remove(&k) {
                self.ui.folded.insert(k);
            }
        }
    }

    /// A copy of the state to show while paused.
    pub fn snapshot(&self) -> State {
        State {
            frozen: None,
            ..self.clone()
        }
    }

    /// The entry of the connection `e` is about; a conn_created on a socket address that had a
    /// connection before starts a new entry (the old one lingers, closed).
    fn conn_mut(&mut self, e: &Event) -> &mut Conn {
        let c = e.conn().expect("only connection events reach here");
        let addr = (c.netns.unwrap_or(0), c.ids.conn);
        let gen = self.current.entry(addr).or_insert(0);
        if e.kind() == Kind::ConnCreated
            && self.conns.get(&(addr.0, addr.1, *gen)).is_some_and(|old| {
                old.state == ConnState::Closed || old.token != c.token.map(|t| t.to_string())
            })
        {
            *gen += 1;
        }
        let key = (addr.0, addr.1, *gen);
        let seq = &mut self.seq;
        self.conns.entry(key).or_insert_with(|| {
            *seq += 1;
            Conn {
                key,
                token: None,
                netns: key.0,
                side: None,
                client: None,
                server: None,
                pid: None,
                comm: None,
                created_ns: e.ts_ns,
                state: ConnState::Connecting,
                fallback: None,
                reset: None,
                failed: 0,
                existing: false,
                closed_ns: None,
                subflows: Vec::new(),
                peer_addrs: Vec::new(),
                diagnoses: Vec::new(),
                seq: *seq,
                shares_ns: 0,
            }
        })
    }

    fn event(&mut self, e: &Event) {
        self.now_ns = self.now_ns.max(e.ts_ns);
        if let Data::Lost(l) = &e.data {
            self.lost.count += l.count;
            self.lost.ring_buffer += l.ring_buffer;
            self.lost.map_full += l.map_full;
            self.lost.stale_entry += l.stale_entry;
            self.lost.netlink += l.netlink;
            if let Some(r) = l.recursion_misses {
                *self.lost.recursion_misses.get_or_insert(0) += r;
            }
            return;
        }
        if let Data::SocketUpgraded(u) = &e.data {
            if u.outcome == UpgradeOutcome::Upgraded {
                *self.upgraded.get_or_insert(0) += 1;
            }
            return;
        }
        if matches!(e.data, Data::AddrAnnounced(_) | Data::AddrRemoved(_)) && e.ids().conn == 0 {
            // An address event of a connection the view does not show.
            return;
        }
        if e.kind() == Kind::SubflowStats {
            let addr = (e.netns().unwrap_or(0), e.ids().conn);
            if !self
                .current
                .get(&addr)
                .is_some_and(|&g| self.conns.contains_key(&(addr.0, addr.1, g)))
            {
                // Counters of a connection the view does not show.
                return;
            }
        }
        let c = self.conn_mut(e);
        let conn = e.conn().expect("not lost");
        if c.token.is_none() {
            c.token = conn.token.map(|t| t.to_string());
        }
        if conn.pid.is_some() && c.pid.is_none() {
            c.pid = conn.pid;
            c.comm.clone_from(&conn.comm);
        }
        let ends = e.tuple().map(|t| ((t.saddr, t.sport), (t.daddr, t.dport)));
        match &e.data {
            Data::ConnCreated(d) => {
                c.created_ns = e.ts_ns;
                c.side = Some(d.side);
                let (local, remote) = ends.expect("conn events have endpoints");
                (c.client, c.server) = match d.side {
                    Side::Server => (Some(remote), Some(local)),
                    Side::Client => (Some(local), Some(remote)),
                };
            }
            Data::ConnExisting(d) => {
                // Open before the tracer started: its subflows follow as existing records.
                c.side = d.side;
                c.state = ConnState::Established;
                c.existing = true;
                if let Some(reason) = d.fallback.then(|| "fallback".to_string()) {
                    c.fallback = Some(reason);
                }
                let (local, remote) = ends.expect("conn events have endpoints");
                (c.client, c.server) = match d.side {
                    Some(Side::Server) => (Some(remote), Some(local)),
                    // The side is unknown: shown local → remote.
                    _ => (Some(local), Some(remote)),
                };
            }
            Data::ConnEstablished(_) => {
                if c.state == ConnState::Connecting {
                    c.state = ConnState::Established;
                }
            }
            Data::ConnFallback(d) => {
                c.fallback = Some(d.reason.clone());
                self.fallbacks.push_back(e.ts_ns);
            }
            Data::ConnClosed(_) => {
                c.state = ConnState::Closed;
                c.closed_ns = Some(e.ts_ns);
                for sf in c.subflows.iter_mut().filter(|s| s.is_open()) {
                    sf.closed_ns = Some(e.ts_ns);
                    sf.state = "closed".into();
                }
                let key = c.key;
                self.closed.push_back(key);
                while self.closed.len() > MAX_LINGERING {
                    let old = self.closed.pop_front().expect("longer than the cap");
                    if self.conns.get(&old).is_some_and(|c| c.closed_ns.is_some()) {
                        self.conns.remove(&old);
                    }
                }
            }
            Data::SubflowEstablished(d) => {
                if c.state == ConnState::Connecting {
                    c.state = ConnState::Established;
                }
                let (local, remote) = ends.expect("subflow events have endpoints");
                let join = d.subflow.join || !c.subflows.is_empty();
                if c.client.is_none() {
                    (c.client, c.server) = match c.side {
                        Some(Side::Server) => (Some(remote), Some(local)),
                        _ => (Some(local), Some(remote)),
                    };
                }
                let sf = Subflow::opened(conn.ids.subflow, local, remote, &d.subflow, join);
                match c.subflows.iter_mut().find(|s| s.id == conn.ids.subflow) {
                    Some(old) => *old = sf,
                    None => c.subflows.push(sf),
                }
                // An existing subflow joined before the tracer started.
                if join && !d.existing {
                    self.joins.push_back(e.ts_ns);
                }
            }
            Data::SubflowClosed(d) => {
                let idx = c.subflows.iter().position(|s| s.id == conn.ids.subflow);
                let Some(sf) = idx.map(|i| &mut c.subflows[i]) else {
                    return;
                };
                let reset = d.reason.starts_with("rst") || d.reason.starts_with("mp_tcprst");
                sf.closed_ns = Some(e.ts_ns);
                sf.state = if reset { "reset" } else { "closed" }.into();
                sf.reason = Some(d.reason.clone());
                sf.cause = cause(&d.reason, &d.cause);
                // The flags may have changed since the subflow came up (MP_PRIO).
                sf.backup = d.subflow.backup;
                sf.peer_backup = d.subflow.peer_backup;
                // The close carries the final counters: they win over the last sample.
                sf.bytes_sent = d.bytes_sent;
                sf.bytes_acked = d.bytes_acked;
                sf.bytes_received = d.bytes_received;
                sf.retrans = d.retrans;
                sf.srtt_us = Some(d.srtt_us);
                sf.tx_rate = 0.0;
                sf.rx_rate = 0.0;
                if reset {
                    c.reset = Some(d.reason.clone());
                }
            }
            Data::SubflowFailed(d) => {
                // Shown under its connection, closed, with why: a join that never came up.
                let (local, remote) = ends.expect("subflow events have endpoints");
                let sf = Subflow {
                    state: "failed".into(),
                    closed_ns: Some(e.ts_ns),
                    reason: Some(d.reason.clone()),
                    cause: cause(&d.reason, &d.cause).or_else(|| Some(d.reason.clone())),
                    retrans: d.retrans,
                    ..Subflow::opened(conn.ids.subflow, local, remote, &d.subflow, d.subflow.join)
                };
                c.failed += 1;
                c.subflows.push(sf);
            }
            Data::AddrAnnounced(a) | Data::AddrRemoved(a) => {
                if c.peer_addrs.len() == MAX_PEER_ADDRS {
                    c.peer_addrs.remove(0);
                }
                c.peer_addrs.push(PeerAddr {
                    announced: matches!(e.data, Data::AddrAnnounced(_)),
                    remote_id: a.remote_id,
                    addr: a.addr.map(|ad| (ad, a.port)),
                    at_ns: e.ts_ns,
                });
            }
            Data::ConnDiagnosis(d) => {
                if !c.diagnoses.iter().any(|(cause, _)| *cause == d.cause) {
                    c.diagnoses.push((d.cause.clone(), d.detail.clone()));
                }
            }
            Data::SubflowStats(d) => {
                // A capture's sample (`live --replay`): the same as a sock_diag sample.
                let Some(sf) = c.subflows.iter_mut().find(|s| s.id == conn.ids.subflow) else {
                    return;
                };
                if !sf.is_open() {
                    return;
                }
                if d.interval_ns > 0 {
                    let dt = d.interval_ns as f64 / 1e9;
                    sf.tx_rate = d.bytes_sent_delta as f64 / dt;
                    sf.rx_rate = d.bytes_received_delta as f64 / dt;
                }
                sf.last_sample = Some((e.ts_ns, d.bytes_sent, d.bytes_received));
                sf.bytes_sent = d.bytes_sent;
                sf.bytes_acked = d.bytes_acked;
                sf.bytes_received = d.bytes_received;
                sf.retrans = d.retrans;
                sf.srtt_us = Some(d.srtt_us);
            }
            Data::Lost(_) | Data::SocketUpgraded(_) => {}
        }
    }

    fn diag(&mut self, netns: u32, at_ns: u64, socks: &[SockInfo]) {
        self.now_ns = self.now_ns.max(at_ns);
        let index: HashMap<(Endpoint, Endpoint), &SockInfo> = socks
            .iter()
            .map(|s| ((canon(s.local), canon(s.remote)), s))
            .collect();
        for c in self.conns.values_mut().filter(|c| c.netns == netns) {
            for sf in c.subflows.iter_mut().filter(|s| s.is_open()) {
                let Some(s) = index.get(&(canon(sf.local), canon(sf.remote))) else {
                    continue;
                };
                if let Some((t0, sent0, recv0)) = sf.last_sample {
                    if at_ns > t0 {
                        let dt = (at_ns - t0) as f64 / 1e9;
                        sf.tx_rate = s.bytes_sent.saturating_sub(sent0) as f64 / dt;
                        sf.rx_rate = s.bytes_received.saturating_sub(recv0) as f64 / dt;
                    }
                }
                sf.last_sample = Some((at_ns, s.bytes_sent, s.bytes_received));
                sf.bytes_sent = s.bytes_sent;
                sf.bytes_acked = s.bytes_acked;
                sf.bytes_received = s.bytes_received;
                sf.retrans = s.total_retrans;
                sf.srtt_us = Some(s.rtt_us);
                sf.state = s.state_name().into();
            }
        }
    }

    fn tick(&mut self, now: u64) {
        self.now_ns = self.now_ns.max(now);
        let now = self.now_ns;
        let old = now.saturating_sub(WINDOW_NS);
        while self.joins.front().is_some_and(|&t| t < old) {
            self.joins.pop_front();
        }
        while self.fallbacks.front().is_some_and(|&t| t < old) {
            self.fallbacks.pop_front();
        }
        let gone = |t: Option<u64>| t.is_some_and(|t| now.saturating_sub(t) > LINGER_NS);
        self.conns.retain(|_, c| !gone(c.closed_ns));
        let conns = &self.conns;
        self.closed.retain(|k| conns.contains_key(k));
        for c in self.conns.values_mut() {
            c.subflows.retain(|s| !gone(s.closed_ns));
            c.record_shares();
            for sf in &mut c.subflows {
                if sf.is_open()
                    && sf
                        .last_sample
                        .is_some_and(|(t, _, _)| now.saturating_sub(t) > RATE_STALE_NS)
                {
                    sf.tx_rate = 0.0;
                    sf.rx_rate = 0.0;
                }
            }
        }
        if let Some(k) = self.ui.selected {
            if !self.conns.contains_key(&k) {
                self.ui.selected = None;
            }
        }
        self.ui.folded.retain(|k| self.conns.contains_key(k));
        let conns = &self.conns;
        self.current
            .retain(|&(ns, a), gen| conns.contains_key(&(ns, a, *gen)));
    }
}

/// The cause line of a subflow that ended: `None` for a plain close without cause fields.
fn cause(reason: &str, c: &crate::event::Cause) -> Option<String> {
    let mut s = reason.to_string();
    for (k, v) in [
        ("error", &c.error),
        ("reset_reason", &c.reset_reason),
        ("reset_sent_reason", &c.reset_sent_reason),
    ] {
        if let Some(v) = v {
            s += &format!(" {k}={v}");
        }
    }
    (s != "closed").then_some(s)
}

/// IPv4-mapped IPv6 addresses compare as IPv4 (sock_diag reports dual-stack sockets as v6).
fn canon((a, p): (IpAddr, u16)) -> (IpAddr, u16) {
    (a.to_canonical(), p)
}
