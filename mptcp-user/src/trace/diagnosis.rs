//! The diagnosis stage: a cause for every connection that ends up with fewer subflows than its
//! configuration allows, every failed join and every fallback, emitted as `conn_diagnosis`
//! right after the event it was concluded from. Causes come from evidence only: the failure's
//! own fields (errno, the peer's MP_TCPRST reason), the namespace's path-manager configuration
//! (read with doctor's reader, judged with doctor's endpoint check) and MPTcpExt counter
//! deltas since the connection started. When the evidence does not single out a cause, the
//! cause is `unknown` and the evidence says what was seen.
//!
//! When: a failed join and a fallback at once; a client connection still on its first subflow
//! [`DEADLINE_NS`] after it was established (the in-kernel path manager opens its joins as
//! soon as the connection is fully established, well within that); and at close. At most one
//! diagnosis per cause per connection.
//!
//! The stage also keeps the events of the last [`MAX_RECENT`] diagnosed connections, which
//! the pipeline writes for `mptcp-trace why` (see `why_file`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    decode::Clock,
    doctor::{self, netns::Facts},
    event::{Conn, ConnDiagnosis, Data, Event, Kind, Side, SubflowFailed, Tuple},
    pm_config::flag,
    sys::netstat::{self, MptcpExt},
};

/// How long a client connection may stay on its first subflow after conn_established before
/// its configuration is judged.
pub const DEADLINE_NS: u64 = 1_000_000_000;
/// The deadline is judged this much later, once the reorder stage released every event stamped
/// before it.
const SETTLE_NS: u64 = 4 * super::order::WINDOW_NS;
/// Diagnosed connections whose events are kept for `why`.
pub const MAX_RECENT: usize = 1000;
/// Events kept per connection for `why`.
const MAX_LOG: usize = 64;
/// Counters are sampled on the pipeline's tick; a namespace not sampled for this long is
/// read when a connection starts there.
const SAMPLE_STALE_NS: u64 = 2_000_000_000;
/// Counter samples kept per namespace at most (one a second: a reader stopped longer than
/// this loses its connections' baselines, and says nothing of counters rather than too much).
const MAX_SAMPLES: usize = 8;
/// Events are judged in time order give or take this much (the reorder window, generously).
const SAMPLE_MARGIN_NS: u64 = 1_000_000_000;
/// A failed join's SYN left at most this long before its failure was seen (a reset answers
/// at once; a timeout is not a token failure).
const JOIN_SYN_MARGIN_NS: u64 = 10_000_000;

/// What the stage reads about a namespace. A trait so that the judgement is unit-tested
/// without root or namespaces.
pub trait Env {
    /// The namespace's name under /run/netns, else `inode N`.
    fn name(&mut self, netns: u32) -> String;
    /// Doctor's facts of the namespace (path manager, limits, endpoints, interfaces, routes);
    /// its TCP sockets may be left out (see [`Env::sockets`]).
    fn facts(&mut self, netns: u32) -> Option<Arc<Facts>>;
    /// The namespace's TCP sockets (dear to read on a busy host: asked for only to find where
    /// the other end of a failed connection lives).
    fn sockets(&mut self, netns: u32) -> Option<Vec<doctor::net::TcpSock>> {
        self.facts(netns)?.net.as_ref().ok().map(|n| n.tcp.clone())
    }
    /// Its MPTcpExt counters, read at or after `fresh_after` (CLOCK_MONOTONIC ns): a value
    /// read earlier may be reused only when it is that recent.
    fn counters(&mut self, netns: u32, fresh_after: u64) -> Option<MptcpExt>;
    /// The namespaces on this host with `addr` on one of their interfaces: where the other
    /// end of a connection that stays on this host lives. `fresh`: look for namespaces
    /// created since the last look (at most every [`ADDRESSES_MIN_AGE`]).
    fn holders(&mut self, addr: IpAddr, fresh: bool) -> Vec<u32>;
    /// The kernel's route lookup from `src` to `dst` in the namespace (`ip route get DST from
    /// SRC`, policy rules included); `None` when it cannot be asked.
    fn route(&mut self, netns: u32, dst: IpAddr, src: IpAddr) -> Option<std::io::Result<()>> {
        let _ = (netns, dst, src);
        None
    }
}

/// How long a namespace's facts (path-manager configuration, interfaces, routes) and
/// current counters are reused: a burst of connections judged together costs one read per
/// namespace, not one per connection.
const FACTS_TTL: Duration = Duration::from_secs(1);
/// How long the map of every namespace's addresses is reused: it is read only for a fallback
/// or a failed join with no peer in view, one setns per namespace.
const ADDRESSES_TTL: Duration = Duration::from_secs(5);
/// New namespaces are looked for at most this often (a fallback to a host that is not on
/// this machine finds no holder each time).
const ADDRESSES_MIN_AGE: Duration = Duration::from_secs(1);
const COUNTERS_TTL_NS: u64 = 50_000_000;
/// A join reset this soon after it came up, before it carried a byte, was taken back by the
/// peer (newer kernels check their limits at the third ACK, an RTT later). One that lived
/// longer and carried nothing (a backup path, say) was reset for another reason — the whole
/// connection aborted (MP_FASTCLOSE), typically — and is no join failure.
const JOIN_TAKEN_BACK_NS: u64 = 1_000_000_000;
/// An abort resets every subflow of a connection together; a join reset within this much of
/// its initial subflow's reset is part of it, not a refused join.
const ABORT_GRACE_NS: u64 = 200_000_000;

/// The real host: namespaces entered by their files.
#[derive(Default)]
pub struct Host {
    paths: HashMap<u32, PathBuf>,
    /// Shared, not copied, with every judgement that asks within [`FACTS_TTL`].
    facts: HashMap<u32, (Instant, Option<Arc<Facts>>)>,
    sockets: HashMap<u32, (Instant, Option<Vec<doctor::net::TcpSock>>)>,
    /// When (CLOCK_MONOTONIC ns) each namespace's counters were last read, and them.
    counters: HashMap<u32, (u64, MptcpExt)>,
    addresses: Option<AddressMap>,
    /// Route lookups (netns, dst, src), reused for [`FACTS_TTL`] like the routes in the facts:
    /// every client connection closed before it joined asks it, and at 1,000 connections a
    /// second a lookup each (two threads, a setns and a netlink socket) was most of the
    /// tracer's system calls.
    routes: HashMap<(u32, IpAddr, IpAddr), (Instant, Option<RouteAnswer>)>,
}

/// A route lookup's outcome, kept: the error's number (or, without one, its text).
type RouteAnswer = Result<(), (Option<i32>, String)>;

/// Every namespace's addresses: address → the namespaces holding it.
struct AddressMap {
    /// When it was started from scratch (`None`: not yet).
    built: Option<Instant>,
    /// When new namespaces were last looked for.
    checked: Instant,
    by_addr: HashMap<IpAddr, Vec<u32>>,
    read: HashSet<u32>,
}

impl Default for AddressMap {
    fn default() -> Self {
        AddressMap {
            built: None,
            checked: Instant::now(),
            by_addr: HashMap::new(),
            read: HashSet::new(),
        }
    }
}

impl AddressMap {
    /// Reads the addresses of the namespaces in `paths` not read yet.
    fn add_new(&mut self, paths: &HashMap<u32, PathBuf>) {
        let new: Vec<(u32, &PathBuf)> = paths
            .iter()
            .filter(|(&ns, _)| self.read.insert(ns))
            .map(|(&ns, p)| (ns, p))
            .collect();
        if !new.is_empty() {
            // On one short-lived thread for all of them: the pipeline's thread never changes
            // namespace, and a thread per namespace would cost hundreds when many appear.
            let read = std::thread::scope(|s| {
                s.spawn(|| {
                    new.iter()
                        .map(|&(ns, p)| (ns, crate::sys::netns::run_in(p, doctor::net::addresses)))
                        .collect::<Vec<_>>()
                })
                .join()
            });
            for (ns, addrs) in read.into_iter().flatten() {
                for a in addrs.into_iter().flatten().flatten() {
                    self.by_addr.entry(a.addr).or_default().push(ns);
                }
            }
        }
        self.built.get_or_insert_with(Instant::now);
        self.checked = Instant::now();
    }
}

impl Host {
    fn path(&mut self, netns: u32) -> Option<PathBuf> {
        // Namespace inodes are reused as soon as one is freed: a cached file must still open
        // this very namespace, else the names are looked up again.
        let current = self.paths.get(&netns).is_some_and(|p| {
            std::fs::metadata(p)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == u64::from(netns))
        });
        if !current {
            self.paths = crate::sys::netns::all();
        }
        self.paths.get(&netns).cloned()
    }
}

impl Env for Host {
    fn name(&mut self, netns: u32) -> String {
        match self.path(netns) {
            Some(p) if p.starts_with("/run/netns") => {
                p.file_name().map_or(format!("inode {netns}"), |n| {
                    n.to_string_lossy().into_owned()
                })
            }
            _ => format!("inode {netns}"),
        }
    }

    fn facts(&mut self, netns: u32) -> Option<Arc<Facts>> {
        if let Some((at, f)) = self.facts.get(&netns) {
            if at.elapsed() < FACTS_TTL {
                return f.clone();
            }
        }
        let p = self.path(netns)?;
        // On a short-lived thread: the pipeline's thread never changes namespace.
        let f = std::thread::scope(|s| {
            s.spawn(|| Facts::read_with(&p, Facts::here_without_sockets).ok())
                .join()
                .ok()?
        })
        .map(Arc::new);
        self.facts.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
        self.facts.insert(netns, (Instant::now(), f.clone()));
        f
    }

    fn sockets(&mut self, netns: u32) -> Option<Vec<doctor::net::TcpSock>> {
        if let Some((at, v)) = self.sockets.get(&netns) {
            if at.elapsed() < FACTS_TTL {
                return v.clone();
            }
        }
        let p = self.path(netns)?;
        // On a short-lived thread: the pipeline's thread never changes namespace.
        let v = std::thread::scope(|s| {
            s.spawn(|| crate::sys::netns::run_in(&p, doctor::net::tcp_sockets).ok())
                .join()
                .ok()?
        });
        self.sockets.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
        self.sockets.insert(netns, (Instant::now(), v.clone()));
        v
    }

    fn counters(&mut self, netns: u32, fresh_after: u64) -> Option<MptcpExt> {
        if let Some((at, c)) = self.counters.get(&netns) {
            if *at >= fresh_after {
                return Some(c.clone());
            }
        }
        let now = crate::decode::monotonic_ns();
        let p = self.path(netns)?;
        let c = netstat::read(&p).ok()?;
        self.counters
            .retain(|_, (at, _)| now - *at < COUNTERS_TTL_NS);
        self.counters.insert(netns, (now, c.clone()));
        Some(c)
    }

    fn route(&mut self, netns: u32, dst: IpAddr, src: IpAddr) -> Option<std::io::Result<()>> {
        let again = |a: &RouteAnswer| {
            a.clone().map_err(|(code, text)| {
                code.map_or_else(
                    || std::io::Error::other(text),
                    std::io::Error::from_raw_os_error,
                )
            })
        };
        if let Some((at, a)) = self.routes.get(&(netns, dst, src)) {
            if at.elapsed() < FACTS_TTL {
                return a.as_ref().map(again);
            }
        }
        let p = self.path(netns)?;
        // On a short-lived thread: the pipeline's thread never changes namespace.
        let answer: Option<RouteAnswer> = std::thread::scope(|s| {
            s.spawn(|| crate::sys::netns::run_in(&p, || doctor::net::route_get(dst, src)).ok())
                .join()
                .ok()?
        })
        .map(|r| r.map_err(|e| (e.raw_os_error(), e.to_string())));
        self.routes.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
        self.routes
            .insert((netns, dst, src), (Instant::now(), answer.clone()));
        answer.as_ref().map(again)
    }

    fn holders(&mut self, addr: IpAddr, fresh: bool) -> Vec<u32> {
        let map = self.addresses.get_or_insert_with(AddressMap::default);
        if map.built.is_none_or(|at| at.elapsed() >= ADDRESSES_TTL) {
            // Addresses change: everything is read again now and then.
            *map = AddressMap::default();
        }
        if map.built.is_none() || (fresh && map.checked.elapsed() >= ADDRESSES_MIN_AGE) {
            // Namespaces come and go: only the new ones are read.
            self.paths = crate::sys::netns::all();
            let map = self.addresses.as_mut().expect("inserted above");
            map.add_new(&self.paths);
        }
        let map = self.addresses.as_ref().expect("inserted above");
        map.by_addr
            .get(&addr)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|ns| self.paths.contains_key(ns))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the stage knows about one connection.
#[derive(Default)]
struct Track {
    conn: Conn,
    tuple: Option<Tuple>,
    side: Option<Side>,
    established_ns: Option<u64>,
    deadline_done: bool,
    /// An ADD_ADDR that came after the deadline: its own deadline counts from it (the path
    /// manager gets the same time to take it up).
    late_announce_ns: Option<u64>,
    fallback: bool,
    /// The peer forbids joins to its initial address (its MP_CAPABLE's C flag).
    peer_deny_join_id0: bool,
    /// Subflows established, the initial one included; joins among them.
    subflows: u32,
    joins: u32,
    joins_failed: u32,
    /// Remote ids the joins went to (established or failed).
    join_remote_ids: HashSet<u8>,
    /// When each established join (by local port) came up.
    join_up_ns: HashMap<u16, u64>,
    /// Joins reset right after their handshake, judged once [`ABORT_GRACE_NS`] has passed
    /// without the initial subflow being reset too (see [`Diagnosis::pass`]).
    pending_resets: Vec<(u64, crate::event::SubflowClosed)>,
    /// When the initial subflow was reset.
    initial_reset_ns: Option<u64>,
    /// The peer's ADD_ADDRs: remote id and address.
    announced: Vec<(u8, Option<IpAddr>)>,
    causes: Vec<String>,
    baseline: Option<Arc<MptcpExt>>,
    /// The tracer's loss total read before it started (see [`Diagnosis::set_lost`]): a
    /// judgement that rests on an event not having come is not made once the total grew.
    lost_base: u64,
    /// Its events, shared with the pipeline (most connections end with no diagnosis, and the
    /// log is then dropped: sharing costs a count, a copy would cost the event).
    log: Vec<Arc<Event>>,
}

impl Track {
    /// The peer's announcements not joined (nor tried).
    fn unjoined(&self) -> Vec<(u8, Option<IpAddr>)> {
        self.announced
            .iter()
            .filter(|(id, _)| !self.join_remote_ids.contains(id))
            .cloned()
            .collect()
    }

    /// Nothing to judge on its configuration: not a client still on one subflow of MPTCP, or
    /// one that joined (or tried to) and left no announcement aside.
    fn settled_by_joins(&self) -> bool {
        self.side != Some(Side::Client)
            || self.fallback
            || self.subflows == 0
            || (self.joins > 0 || self.joins_failed > 0)
                && self
                    .announced
                    .iter()
                    .all(|(id, _)| self.join_remote_ids.contains(id))
    }
}

pub struct Diagnosis {
    env: Box<dyn Env + Send>,
    clock: Clock,
    tracks: HashMap<u64, Track>,
    /// Per namespace: its recent counter samples (time, counters), older first. A
    /// connection's baseline is the newest one taken before it started: a connection's events
    /// are handled a reorder window after they happened, when its first join may have counted
    /// already.
    samples: HashMap<u32, Vec<(u64, Arc<MptcpExt>)>>,
    recent: VecDeque<Vec<Arc<Event>>>,
    /// Set when a diagnosis was added since [`Diagnosis::take_dirty`].
    dirty: bool,
    last_ts: u64,
    /// The time of the event (or deadline) being judged: counters are read after it.
    judged_ts: u64,
    /// Per namespace: its name, looked up with the facts it goes with (see
    /// [`Diagnosis::facts_name`]).
    names: HashMap<u32, (Arc<Facts>, String)>,
    /// Doctor's checks of the `subflow` endpoints usable beside a first subflow's source
    /// address, per (netns, that address), made from the facts they go with.
    checks: HashMap<(u32, IpAddr), (Arc<Facts>, EndpointChecks)>,
    /// The tracer's loss total (events dropped or program runs skipped, of any connection) as
    /// read at various times: (monotonic ns after the read, total), older first; see
    /// [`Diagnosis::set_lost`].
    lost_reads: Vec<(u64, u64)>,
}

/// Doctor's checks of some `subflow` endpoints, shared between the cache and a judgement.
type EndpointChecks = Arc<Vec<doctor::Check>>;

/// Entries of [`Diagnosis::names`] and [`Diagnosis::checks`] kept at most (a cache: emptied
/// when full, refilled on the next judgements).
const MAX_CACHED: usize = 256;

/// `cache`'s value for `key` when it was made from these very `facts`, else made by `make` and
/// kept with them (the cache is emptied when [`MAX_CACHED`] entries are reached).
fn per_snapshot<K: std::hash::Hash + Eq, V: Clone>(
    cache: &mut HashMap<K, (Arc<Facts>, V)>,
    key: K,
    facts: &Arc<Facts>,
    make: impl FnOnce() -> V,
) -> V {
    if let Some((f, v)) = cache.get(&key) {
        if Arc::ptr_eq(f, facts) {
            return v.clone();
        }
    }
    let v = make();
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
    cache.insert(key, (facts.clone(), v.clone()));
    v
}

/// A diagnosis before it becomes an event.
struct Found {
    cause: &'static str,
    detail: String,
    evidence: Vec<String>,
}

fn found(cause: &'static str, detail: String, evidence: Vec<String>) -> Found {
    Found {
        cause,
        detail,
        evidence,
    }
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

fn delta_evidence(d: &[(String, u64)], ns: &str) -> Vec<String> {
    d.iter()
        .map(|(n, v)| format!("MPTcpExt {n} +{v} in netns {ns}"))
        .collect()
}

/// How doctor names the namespace (its fix commands use `ip -n NAME`).
fn nsref(name: &str, inode: u32) -> doctor::NetnsRef {
    doctor::NetnsRef {
        name: Some(name.to_string()),
        inode,
        pid: None,
        current: false,
        path: PathBuf::new(),
    }
}

fn is_auth_counter(n: &str) -> bool {
    matches!(
        n,
        "MPJoinSynAckHMacFailure" | "MPJoinAckHMacFailure" | "MPJoinNoTokenFound"
    )
}

impl Diagnosis {
    pub fn new(env: Box<dyn Env + Send>, clock: Clock) -> Diagnosis {
        Diagnosis {
            env,
            clock,
            tracks: HashMap::new(),
            samples: HashMap::new(),
            recent: VecDeque::new(),
            dirty: false,
            last_ts: 0,
            judged_ts: 0,
            names: HashMap::new(),
            checks: HashMap::new(),
            lost_reads: Vec::new(),
        }
    }

    /// The tracer's loss total `total` — every event dropped and every program run skipped so
    /// far, of any connection — as read by `at` (monotonic ns taken after the read). The
    /// pipeline tells it on each tick, and reads it fresh before a judgement that rests on an
    /// absence ([`Diagnosis::wants_lost`]): a skipped run is counted at once, reported only on
    /// the next tick. A connection's base is the newest read from before its first event: a
    /// reader that fell behind reads the loss that came after a connection started before it
    /// handles the connection's first event.
    pub fn set_lost(&mut self, at: u64, total: u64) {
        let i = self.lost_reads.partition_point(|(t, _)| *t <= at);
        // Never taken back: a read lower than an earlier one (the rescue program's count can
        // read one ahead of the kernel's misses) is raised to it.
        let total = self.lost_reads[..i]
            .last()
            .map_or(total, |&(_, before)| total.max(before));
        self.lost_reads.insert(i, (at, total));
        // Kept: every read a connection still to be seen may need (see `keep_sample`).
        let judged = self.last_ts.saturating_sub(SAMPLE_MARGIN_NS);
        let needed = self
            .lost_reads
            .iter()
            .rposition(|(t, _)| *t <= judged)
            .unwrap_or(0);
        self.lost_reads.drain(..needed);
        if self.lost_reads.len() > MAX_SAMPLES {
            self.lost_reads.drain(..self.lost_reads.len() - MAX_SAMPLES);
        }
    }

    /// The newest loss total read.
    fn lost_now(&self) -> u64 {
        self.lost_reads.last().map_or(0, |&(_, n)| n)
    }

    /// Whether passing `e` may judge a connection from events that did not come: the caller
    /// then reads the loss total fresh first (as [`Diagnosis::expire`] does itself).
    pub fn wants_lost(&self, e: &Event) -> bool {
        e.kind() == Kind::ConnClosed
            && self
                .tracks
                .get(&e.ids().conn)
                .is_some_and(|t| !t.settled_by_joins())
    }

    /// The connection's track, made on its first event (at `ts`) with the newest loss total
    /// read before it (none read so far counts as 0).
    fn track(&mut self, key: u64, ts: u64) -> &mut Track {
        let reads = &self.lost_reads;
        self.tracks.entry(key).or_insert_with(|| Track {
            lost_base: reads
                .iter()
                .rev()
                .find(|(at, _)| *at <= ts)
                .map_or(0, |&(_, n)| n),
            ..Track::default()
        })
    }

    /// Passes `e` on to `out`, followed by the diagnoses it allows.
    pub fn pass(&mut self, e: Arc<Event>, out: &mut VecDeque<Arc<Event>>) {
        self.last_ts = self.last_ts.max(e.ts_ns);
        self.judged_ts = e.ts_ns;
        let key = e.ids().conn;
        if key == 0 || e.conn().is_some_and(|c| c.protocol.is_some()) {
            out.push_back(e);
            return;
        }
        let mut found = Vec::new();
        let mut closed = false;
        match &e.data {
            Data::ConnCreated(d) => {
                let baseline = d.conn.netns.and_then(|ns| self.baseline(ns, e.ts_ns));
                let t = self.track(key, e.ts_ns);
                t.side = Some(d.side);
                t.tuple = Some(d.tuple.clone());
                t.baseline = baseline;
            }
            Data::ConnExisting(d) => {
                let baseline = d.conn.netns.and_then(|ns| self.baseline(ns, e.ts_ns));
                let t = self.track(key, e.ts_ns);
                t.side = d.side;
                t.tuple = Some(d.tuple.clone());
                t.fallback = d.fallback;
                // Its establishment was not seen: judged a deadline after the snapshot.
                t.established_ns = Some(e.ts_ns);
                t.baseline = baseline;
            }
            Data::ConnEstablished(d) => {
                let t = self.track(key, e.ts_ns);
                t.established_ns.get_or_insert(e.ts_ns);
                t.tuple.get_or_insert_with(|| d.tuple.clone());
                t.peer_deny_join_id0 |= d.peer_deny_join_id0 == Some(true);
            }
            Data::SubflowEstablished(d) => {
                let t = self.track(key, e.ts_ns);
                t.subflows += 1;
                if d.subflow.join {
                    t.joins += 1;
                    t.join_remote_ids.insert(d.subflow.remote_id);
                    t.join_up_ns.insert(d.tuple.sport, e.ts_ns);
                }
            }
            Data::SubflowFailed(d) if d.subflow.join => {
                let t = self.track(key, e.ts_ns);
                t.joins_failed += 1;
                t.join_remote_ids.insert(d.subflow.remote_id);
                found.push(self.failed_join(key, d));
            }
            Data::SubflowClosed(d)
                if d.subflow.join
                    && d.bytes_received == 0
                    && d.bytes_sent == 0
                    && (d.reason.starts_with("rst") || d.reason.starts_with("mp_tcprst"))
                    && self.tracks.get(&key).is_none_or(|t| {
                        t.join_up_ns
                            .get(&d.tuple.sport)
                            .is_none_or(|up| e.ts_ns.saturating_sub(*up) < JOIN_TAKEN_BACK_NS)
                    }) =>
            {
                // A join reset right after its handshake, before it carried anything: the
                // peer took it back (newer kernels check their limits at the third ACK) —
                // unless the whole connection is being reset (an abort, MP_FASTCLOSE, resets
                // every subflow at once): judged when the initial subflow had the time to say.
                let t = self.track(key, e.ts_ns);
                let aborted = t
                    .initial_reset_ns
                    .is_some_and(|at| e.ts_ns.saturating_sub(at) <= ABORT_GRACE_NS);
                if !aborted {
                    t.pending_resets.push((e.ts_ns, d.clone()));
                }
            }
            Data::SubflowClosed(d)
                if !d.subflow.join
                    && (d.reason.starts_with("rst") || d.reason.starts_with("mp_tcprst")) =>
            {
                let t = self.track(key, e.ts_ns);
                t.initial_reset_ns = Some(e.ts_ns);
                t.pending_resets
                    .retain(|(at, _)| e.ts_ns.saturating_sub(*at) > ABORT_GRACE_NS);
            }
            Data::ConnFallback(d) => {
                let t = self.track(key, e.ts_ns);
                if t.fallback {
                    // A connection falls back once; this one does not go out (nor into the
                    // `why` log). The once-a-second sock_diag poll can see the fallback flag
                    // of a connection that fell back at its handshake while that
                    // `conn_fallback` was still in the reorder window or the ring buffer (a
                    // loaded reader: the 6.1 and sid guests printed `mid_connection` right
                    // after `mp_capable_not_negotiated`).
                    return;
                }
                t.fallback = true;
                found.push(self.fallback(key, &d.reason, e.ts_ns));
            }
            Data::AddrAnnounced(a) => {
                let t = self.track(key, e.ts_ns);
                t.announced.push((a.remote_id, a.addr));
                if t.deadline_done {
                    t.late_announce_ns.get_or_insert(e.ts_ns);
                }
            }
            Data::ConnClosed(_) => closed = true,
            _ => {}
        }
        let t = self.track(key, e.ts_ns);
        if let Some(c) = e.conn() {
            // The latest connection part: the token and peer token arrive on later events.
            // In place: the comm is copied only when it changes (this runs for every event).
            let k = &mut t.conn;
            k.token = c.token.or(k.token);
            k.peer_token = c.peer_token.or(k.peer_token);
            k.netns = c.netns.or(k.netns);
            k.pid = c.pid.or(k.pid);
            if c.comm.is_some() && c.comm != k.comm {
                k.comm = c.comm.clone();
            }
            k.protocol = None;
            k.ids = crate::event::Ids {
                subflow: 0,
                ..c.ids
            };
        }
        let ts = e.ts_ns;
        if t.log.len() < MAX_LOG && !matches!(e.data, Data::AddrRemoved(_)) {
            t.log.push(e.clone());
        }
        out.push_back(e);
        if closed {
            // Its subflows are all closed by now: the resets still pending were not an abort.
            for (_, d) in
                std::mem::take(&mut self.tracks.get_mut(&key).expect("tracked").pending_resets)
            {
                found.push(self.reset_join(key, &d));
            }
            if self.tracks[&key].established_ns.is_some() && !self.tracks[&key].deadline_done {
                // Closed before its deadline: judged now, but only on what the configuration
                // forbids (a join may simply not have had the time).
                found.extend(self.judge_config(key, false));
            } else if self.tracks[&key].established_ns.is_some() {
                found.extend(self.judge_config(key, true));
            }
        }
        for f in found {
            self.emit(key, ts, f, out);
        }
        if closed {
            let t = self.tracks.remove(&key).expect("tracked above");
            if !t.causes.is_empty() {
                if self.recent.len() == MAX_RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(t.log);
                self.dirty = true;
            }
        }
    }

    /// Judges the connections whose deadline passed by `now`.
    /// `lost` reads the loss total fresh, and says when (see [`Diagnosis::set_lost`]): called
    /// once when a connection's configuration is to be judged.
    pub fn expire(
        &mut self,
        now: u64,
        out: &mut VecDeque<Arc<Event>>,
        lost: impl FnOnce() -> (u64, u64),
    ) {
        let due: Vec<u64> = self
            .tracks
            .iter()
            .filter(|(_, t)| {
                !t.deadline_done
                    && t.established_ns
                        .is_some_and(|e| e + DEADLINE_NS + SETTLE_NS <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        let late: Vec<(u64, u64)> = self
            .tracks
            .iter()
            .filter_map(|(k, t)| {
                let at = t.late_announce_ns?;
                (at + DEADLINE_NS + SETTLE_NS <= now).then_some((*k, at))
            })
            .collect();
        if due
            .iter()
            .chain(late.iter().map(|(k, _)| k))
            .any(|k| !self.tracks[k].settled_by_joins())
        {
            let (at, total) = lost();
            self.set_lost(at, total);
        }
        for key in due {
            let t = self.tracks.get_mut(&key).expect("listed");
            t.deadline_done = true;
            let ts = (t.established_ns.unwrap_or(0) + DEADLINE_NS).max(self.last_ts);
            self.judged_ts = ts;
            for f in self.judge_config(key, false) {
                self.emit(key, ts, f, out);
            }
            self.last_ts = self.last_ts.max(ts);
        }
        for (key, at) in late {
            self.tracks.get_mut(&key).expect("listed").late_announce_ns = None;
            let ts = (at + DEADLINE_NS).max(self.last_ts);
            self.judged_ts = ts;
            for f in self.judge_config(key, false) {
                self.emit(key, ts, f, out);
            }
            self.last_ts = self.last_ts.max(ts);
        }
        let resets: Vec<(u64, u64, crate::event::SubflowClosed)> = self
            .tracks
            .iter_mut()
            .flat_map(|(k, t)| {
                let (due, keep) = std::mem::take(&mut t.pending_resets)
                    .into_iter()
                    .partition(|(at, _)| at + ABORT_GRACE_NS + SETTLE_NS <= now);
                t.pending_resets = keep;
                due.into_iter()
                    .map(|(at, d): (u64, _)| (*k, at, d))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, at, d) in resets {
            let ts = (at + ABORT_GRACE_NS).max(self.last_ts);
            self.judged_ts = ts;
            let f = self.reset_join(key, &d);
            self.emit(key, ts, f, out);
            self.last_ts = self.last_ts.max(ts);
        }
    }

    /// When [`Diagnosis::expire`] has work next.
    pub fn next_due(&self) -> Option<u64> {
        let deadlines = self
            .tracks
            .values()
            .filter_map(|t| match t.deadline_done {
                false => t.established_ns,
                true => t.late_announce_ns,
            })
            .map(|e| e + DEADLINE_NS + SETTLE_NS);
        let resets = self
            .tracks
            .values()
            .flat_map(|t| t.pending_resets.iter())
            .map(|(at, _)| at + ABORT_GRACE_NS + SETTLE_NS);
        deadlines.chain(resets).min()
    }

    /// Whether a diagnosis was added since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Asks for the diagnoses to be written again (the last write failed).
    pub fn set_dirty(&mut self) {
        self.dirty = true;
    }

    /// The events of the last diagnosed connections, at most [`MAX_RECENT`]: the open ones
    /// first, then the latest closed ones.
    pub fn recent(&self) -> impl Iterator<Item = &Event> {
        let open: Vec<&Vec<Arc<Event>>> = self
            .tracks
            .values()
            .filter(|t| !t.causes.is_empty())
            .map(|t| &t.log)
            .take(MAX_RECENT)
            .collect();
        let closed = MAX_RECENT - open.len();
        let skip = self.recent.len().saturating_sub(closed);
        open.into_iter()
            .chain(self.recent.iter().skip(skip))
            .flatten()
            .map(|e| &**e)
    }

    fn emit(&mut self, key: u64, ts: u64, f: Found, out: &mut VecDeque<Arc<Event>>) {
        let t = self.tracks.get_mut(&key).expect("tracked");
        // One diagnosis per cause; and `unknown` only while nothing is known: a later look that
        // finds no evidence (at close, the namespace may be gone) does not undo an earlier one
        // that found some.
        if t.causes
            .iter()
            .any(|c| c == f.cause || f.cause == "unknown")
        {
            return;
        }
        let Some(tuple) = t.tuple.clone() else {
            return;
        };
        t.causes.push(f.cause.to_string());
        let e = Event::new(
            ts,
            self.clock.rfc3339(ts),
            Data::ConnDiagnosis(ConnDiagnosis {
                conn: t.conn.clone(),
                tuple,
                cause: f.cause.to_string(),
                detail: f.detail,
                evidence: f.evidence,
            }),
        );
        let e = Arc::new(e);
        if t.log.len() < MAX_LOG {
            t.log.push(e.clone());
        }
        self.dirty = true;
        out.push_back(e);
    }

    /// Samples the counters of `namespaces` (the pipeline's tick, with the namespaces it
    /// watches), kept while events still to come may need them (`keep_sample`).
    pub fn sample(&mut self, namespaces: &[u32], now: u64) {
        self.samples.retain(|ns, _| namespaces.contains(ns));
        for &ns in namespaces {
            if let Some(c) = self.env.counters(ns, now.saturating_sub(COUNTERS_TTL_NS)) {
                // Stamped when its read is over, not when the round began: a tracer stopped
                // between two namespaces (SIGSTOP, a loaded guest) reads the later ones after
                // connections that started meanwhile, and such a sample, stamped before them,
                // was their baseline with their own counters already in it (the 6.12 guest's
                // read-late fallback named no DataCsumErr on the server).
                let at = crate::decode::monotonic_ns().max(now);
                self.keep_sample(ns, at, Arc::new(c));
            }
        }
    }

    /// Keeps a sample of `netns` (in time order) and drops those no event still to come can
    /// use: every sample older than the newest one taken before the events judged so far (less
    /// a reorder margin). Keeping only the last two lost the baseline of a tracer stopped
    /// in the middle of a round (the 6.1 guest's read-late fallback named no DataCsumErr on
    /// the server): that round's late read and the tick after the stop both came after the
    /// connection, and pushed out the one sample from before it.
    fn keep_sample(&mut self, netns: u32, at: u64, c: Arc<MptcpExt>) {
        let v = self.samples.entry(netns).or_default();
        let i = v.partition_point(|(t, _)| *t <= at);
        v.insert(i, (at, c));
        let judged = self.last_ts.saturating_sub(SAMPLE_MARGIN_NS);
        let needed = v.iter().rposition(|(t, _)| *t <= judged).unwrap_or(0);
        v.drain(..needed);
        if v.len() > MAX_SAMPLES {
            v.drain(..v.len() - MAX_SAMPLES);
        }
    }

    /// The counters of `netns` before `ts`: the newest sample taken before it, else (no recent
    /// sample) read now.
    fn baseline(&mut self, netns: u32, ts: u64) -> Option<Arc<MptcpExt>> {
        if let Some(v) = self.samples.get(&netns) {
            if let Some((_, c)) = v
                .iter()
                .rev()
                .find(|(at, _)| *at <= ts && ts - at < SAMPLE_STALE_NS)
            {
                return Some(c.clone());
            }
        }
        // Kept as a sample: the connections that follow in the same burst reuse it.
        let c = Arc::new(self.env.counters(netns, 0)?);
        self.keep_sample(netns, ts, c.clone());
        Some(c)
    }

    /// The counters of the connection's namespace that grew since it started.
    fn deltas(&mut self, key: u64, pick: impl Fn(&str) -> bool) -> (String, Vec<(String, u64)>) {
        let t = &self.tracks[&key];
        let (Some(ns), Some(before)) = (t.conn.netns, t.baseline.clone()) else {
            return (String::new(), Vec::new());
        };
        let name = self.env.name(ns);
        // Read after the event being judged: an earlier read cannot hold what it caused.
        let Some(now) = self.env.counters(ns, self.judged_ts) else {
            return (name, Vec::new());
        };
        (name, netstat::deltas(&before, &now, pick))
    }

    /// The connection on the other end, when this tracer sees it too (its token is our peer
    /// token): its key.
    fn peer_of(&self, key: u64) -> Option<u64> {
        let pt = self.tracks[&key].conn.peer_token?;
        self.tracks
            .iter()
            .find(|(k, t)| **k != key && t.conn.token == Some(pt))
            .map(|(k, _)| *k)
    }

    /// The namespace on this host where the other end at `addr` lives, seen from the
    /// connection `key`: its own when it holds the address (or for loopback), else the one
    /// other namespace holding it whose TCP sockets `has` (containers often share addresses;
    /// none when still several match: which one answered is not known).
    fn netns_of(
        &mut self,
        key: u64,
        addr: IpAddr,
        has: impl Fn(&doctor::net::TcpSock) -> bool,
    ) -> Option<u32> {
        let own = self.tracks[&key].conn.netns?;
        if addr.is_loopback() {
            return Some(own);
        }
        // The cached map first; a namespace created since is found by a fresh read.
        for fresh in [false, true] {
            let v = self.env.holders(addr, fresh);
            if v.contains(&own) {
                return Some(own);
            }
            let v: Vec<u32> = v
                .into_iter()
                .filter(|&ns| self.env.sockets(ns).is_some_and(|v| v.iter().any(&has)))
                .collect();
            if let [one] = v.as_slice() {
                return Some(*one);
            }
        }
        None
    }

    /// How much `netns` counted MPJoinNoTokenFound around the event being judged (since its
    /// newest counter sample from before it): a join that reached a namespace which does not
    /// know the connection's token. (netns name, count).
    fn token_unknown_in(&mut self, netns: u32) -> Option<(String, u64)> {
        // The join's SYN left a moment before its failure was seen.
        let before_ts = self.judged_ts.saturating_sub(JOIN_SYN_MARGIN_NS);
        let before = self
            .samples
            .get(&netns)?
            .iter()
            .rev()
            .find(|(at, _)| *at <= before_ts)
            .map(|(_, c)| c.clone())?;
        let now = self.env.counters(netns, self.judged_ts)?;
        let d = netstat::deltas(&before, &now, |n| n == "MPJoinNoTokenFound");
        let (_, n) = d.first()?;
        Some((self.env.name(netns), *n))
    }

    /// A failed join that went to another namespace of this host which did not know the
    /// connection's token (e.g. behind a load balancer): the diagnosis, with `evidence`.
    fn join_to_a_stranger(
        &mut self,
        key: u64,
        f: &SubflowFailed,
        what: &str,
        evidence: &mut Vec<String>,
    ) -> Option<Found> {
        let port = f.tuple.dport;
        let ns = self.netns_of(key, f.tuple.daddr, |t| {
            t.state == doctor::net::TCP_LISTEN && t.local_port == port
        })?;
        if Some(ns) == self.peer_of(key).and_then(|p| self.tracks[&p].conn.netns) {
            return None;
        }
        let (name, n) = self.token_unknown_in(ns)?;
        evidence.push(format!(
            "MPTcpExt MPJoinNoTokenFound +{n} in netns {name}, which holds {}",
            f.tuple.daddr
        ));
        Some(found(
            "join_auth_failed",
            format!(
                "{what} was reset by netns {name}, which holds {} but does not know the \
                 connection's token (MPJoinNoTokenFound +{n} there): the join reached another \
                 host than the connection's (a load balancer or an announced address that is \
                 not the peer's)",
                f.tuple.daddr
            ),
            evidence.clone(),
        ))
    }

    fn failed_join(&mut self, key: u64, f: &SubflowFailed) -> Found {
        let what = format!(
            "the join from {} to {}",
            endpoint(f.tuple.saddr, f.tuple.sport),
            endpoint(f.tuple.daddr, f.tuple.dport)
        );
        let mut seen = format!("subflow_failed sport={} reason={}", f.tuple.sport, f.reason);
        if let Some(e) = &f.cause.error {
            seen += &format!(" error={e}");
        }
        if let Some(r) = &f.cause.reset_reason {
            seen += &format!(" reset_reason={r}");
        }
        let mut evidence = vec![seen];
        // The peer's own counters, when it is traced here too.
        let peer = self
            .peer_of(key)
            .map(|p| self.deltas(p, |n| n.starts_with("MPJoin")));
        if let Some((ns, d)) = &peer {
            evidence.extend(delta_evidence(d, ns));
        }
        let peer_has = |name: &str| {
            peer.as_ref()
                .and_then(|(_, d)| d.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
        };
        match (f.cause.reset_reason.as_deref(), f.cause.error.as_deref()) {
            (Some("prohibited"), _) => {
                let limit = match peer_has("MPJoinRejected") {
                    Some(n) => format!(
                        " (the peer's namespace rejected {n} join(s) since the connection started)"
                    ),
                    None => String::new(),
                };
                found(
                    "peer_refused_join",
                    format!(
                        "the peer refused {what} with MP_TCPRST prohibited: its path manager \
                         accepts no more subflows on this connection (its `limits subflows` is \
                         reached){limit}"
                    ),
                    evidence,
                )
            }
            (Some(r), _) => match self.join_to_a_stranger(key, f, &what, &mut evidence) {
                Some(d) => d,
                None => found(
                    "unknown",
                    format!("the peer reset {what} with MP_TCPRST reason {r}"),
                    evidence,
                ),
            },
            (None, Some("ECONNREFUSED")) => match (
                peer_has("MPJoinNoTokenFound"),
                peer_has("MPJoinRejected"),
            ) {
                // The peer's limit, answered with a plain reset at the SYN.
                (_, Some(n)) => found(
                    "peer_refused_join",
                    format!(
                        "the peer refused {what} with a reset: its path manager accepts no more \
                         subflows on this connection (its `limits subflows` is reached; \
                         MPJoinRejected +{n} there)"
                    ),
                    evidence,
                ),
                (Some(n), None) => found(
                    "join_auth_failed",
                    format!(
                        "{what} was reset: the peer did not know the connection's token \
                         (MPJoinNoTokenFound +{n} there)"
                    ),
                    evidence,
                ),
                (None, None) => match self.peer_of(key).and_then(|p| self.peer_limit_reached(p)) {
                    Some((detail, ev)) => {
                        evidence.extend(ev);
                        found(
                            "peer_refused_join",
                            format!("the peer refused {what} with a reset: {detail}"),
                            evidence,
                        )
                    }
                    None => match self.join_to_a_stranger(key, f, &what, &mut evidence) {
                        Some(d) => d,
                        None => found(
                    "join_refused",
                    format!(
                        "{what} was refused with a reset (ECONNREFUSED): nothing listens on \
                         port {} of {} any more (the listener is gone)",
                        f.tuple.dport, f.tuple.daddr
                    ),
                    evidence,
                ),
                    },
                },
            },
            (None, Some("ETIMEDOUT")) => found(
                "join_timed_out",
                format!(
                    "{what} got no answer after {} SYN retransmission(s) (ETIMEDOUT): the path \
                     is black-holed",
                    f.retrans
                ),
                evidence,
            ),
            (None, Some(err @ ("ENETUNREACH" | "EHOSTUNREACH" | "EADDRNOTAVAIL" | "ENODEV"))) => {
                match self.endpoint_verdict(key, f.tuple.saddr) {
                    Some((detail, ev)) => {
                        evidence.push(ev);
                        found(
                            "endpoint_unusable",
                            format!("{what} could not leave ({err}): {detail}"),
                            evidence,
                        )
                    }
                    None => found(
                        "unknown",
                        format!("{what} failed ({err}); the endpoint's interface and route look usable now"),
                        evidence,
                    ),
                }
            }
            _ => {
                let (ns, d) = self.deltas(key, is_auth_counter);
                let auth = !d.is_empty();
                evidence.extend(delta_evidence(&d, &ns));
                if auth {
                    found(
                        "join_auth_failed",
                        format!(
                            "{what} failed its HMAC or token check (inferred from the MPTcpExt \
                             counters of netns {ns})"
                        ),
                        evidence,
                    )
                } else {
                    found(
                        "unknown",
                        format!("{what} failed ({}); no evidence of why", f.reason),
                        evidence,
                    )
                }
            }
        }
    }

    /// Doctor's verdict on the endpoint with address `addr` in the connection's namespace,
    /// when it fails: (detail, evidence).
    fn endpoint_verdict(&mut self, key: u64, addr: IpAddr) -> Option<(String, String)> {
        let ns = self.tracks[&key].conn.netns?;
        let name = self.env.name(ns);
        let facts = self.env.facts(ns)?;
        let (Ok(pm), Ok(net)) = (&facts.pm, &facts.net) else {
            return None;
        };
        let e = pm.endpoints.iter().find(|e| e.addr == Some(addr))?;
        let c = doctor::netns::endpoint_check(&nsref(&name, ns), e, net);
        (c.status == doctor::Status::Fail).then(|| {
            (
                c.detail.clone(),
                format!("{} in netns {name}: {}", c.name, c.detail),
            )
        })
    }

    /// Whether the in-kernel path manager of the peer (the connection `peer` this tracer
    /// sees too) allows no more subflows on it: its `limits subflows` against the joins its
    /// end has. (detail, evidence) when it is reached.
    fn peer_limit_reached(&mut self, peer: u64) -> Option<(String, Vec<String>)> {
        let t = &self.tracks[&peer];
        let (ns, joins) = (t.conn.netns?, t.joins);
        let name = self.env.name(ns);
        let facts = self.env.facts(ns)?;
        if facts.path_manager.as_ref().is_some_and(|p| p.userspace) {
            return None;
        }
        let limit = facts.pm.as_ref().ok()?.limits.subflows;
        (joins >= limit).then(|| {
            (
                format!(
                    "the peer's `limits subflows` is {limit} in netns {name}, used by {joins} \
                     join(s): its path manager accepts no more subflows on this connection"
                ),
                vec![
                    format!("limits subflows {limit} in netns {name} (the peer)"),
                    format!("{joins} join(s) established on the peer's end"),
                ],
            )
        })
    }

    fn reset_join(&mut self, key: u64, d: &crate::event::SubflowClosed) -> Found {
        let what = format!(
            "the join from {} to {}",
            endpoint(d.tuple.saddr, d.tuple.sport),
            endpoint(d.tuple.daddr, d.tuple.dport)
        );
        let mut seen = format!(
            "subflow_closed join sport={} reason={} bytes_sent=0 bytes_received=0",
            d.tuple.sport, d.reason
        );
        if let Some(r) = &d.cause.reset_reason {
            seen += &format!(" reset_reason={r}");
        }
        let mut evidence = vec![seen];
        if d.reason == "rst_sent" {
            // This host reset it, not the peer: the answer it got failed its checks, which
            // only this namespace's counters can tell.
            let (ns, auth) = self.deltas(key, is_auth_counter);
            evidence.extend(delta_evidence(&auth, &ns));
            return if auth.is_empty() {
                found(
                    "unknown",
                    format!("this host reset {what} right after its handshake; no evidence of why"),
                    evidence,
                )
            } else {
                found(
                    "join_auth_failed",
                    format!(
                        "this host reset {what} right after its handshake: the peer's MP_JOIN \
                         failed its HMAC check (a middlebox changed it, or the join reached \
                         another host; inferred from the MPTcpExt counters of netns {ns})"
                    ),
                    evidence,
                )
            };
        }
        let peer = self
            .peer_of(key)
            .map(|p| self.deltas(p, |n| n.starts_with("MPJoin")));
        let rejected = peer.as_ref().and_then(|(ns, d)| {
            evidence.extend(delta_evidence(d, ns));
            d.iter()
                .find(|(n, _)| n == "MPJoinRejected")
                .map(|(_, v)| (ns.clone(), *v))
        });
        // Without a reason or a counter (Linux 6.1 refuses such a join in
        // `mptcp_finish_join` and counts nothing), the peer's own configuration: its limit
        // and the joins its end of the connection already has.
        let limit = match (d.cause.reset_reason.as_deref(), &rejected) {
            (Some("prohibited"), _) | (_, Some(_)) => None,
            _ => self.peer_of(key).and_then(|p| self.peer_limit_reached(p)),
        };
        if let Some((detail, ev)) = limit {
            evidence.extend(ev);
            return found(
                "peer_refused_join",
                format!("the peer reset {what} right after its handshake: {detail}"),
                evidence,
            );
        }
        match (d.cause.reset_reason.as_deref(), &rejected) {
            (Some("prohibited"), _) | (_, Some(_)) => found(
                "peer_refused_join",
                format!(
                    "the peer reset {what} right after its handshake{}: its path manager \
                     accepts no more subflows on this connection (its `limits subflows` is \
                     reached){}",
                    if d.cause.reset_reason.is_some() {
                        " with MP_TCPRST prohibited"
                    } else {
                        ""
                    },
                    rejected.as_ref().map_or(String::new(), |(ns, n)| format!(
                        " — netns {ns} counted {n} rejected join(s) (MPJoinRejected)"
                    ))
                ),
                evidence,
            ),
            _ => found(
                "unknown",
                format!(
                    "the peer reset {what} right after its handshake ({}); no evidence of why",
                    d.reason
                ),
                evidence,
            ),
        }
    }

    fn fallback(&mut self, key: u64, reason: &str, ts: u64) -> Found {
        let t = &self.tracks[&key];
        // At the handshake (the peer did not echo MP_CAPABLE), or mid-connection.
        let after = match t.established_ns {
            _ if reason == "mp_capable_not_negotiated" => " at its handshake".to_string(),
            Some(e) => format!(
                " {:.3} s after it was established",
                ts.saturating_sub(e) as f64 / 1e9
            ),
            None => String::new(),
        };
        let mut evidence = vec![format!("conn_fallback reason={reason}")];
        let (ns, d) = self.deltas(key, |n| {
            n.contains("Fallback")
                || n.contains("InfiniteMap")
                || n.contains("DSSCorruption")
                || n.starts_with("MPFail")
                || n == "DataCsumErr"
        });
        evidence.extend(delta_evidence(&d, &ns));
        if reason == "mp_capable_not_negotiated" {
            if let Some((name, ev)) = self.peer_mptcp_disabled(key) {
                evidence.push(ev);
                return found(
                    "mptcp_disabled",
                    format!(
                        "the connection fell back to plain TCP at its handshake: the server's \
                         namespace {name} on this host has net.mptcp.enabled = 0, so nothing \
                         there accepts MPTCP"
                    ),
                    evidence,
                );
            }
        }
        if reason == crate::trace::fallback::MID_CONNECTION {
            // What the counters that grew say happened, most telling first.
            let grew = |name: &str| d.iter().any(|(n, _)| n == name);
            let why = if grew("DataCsumErr") {
                ": a DSS checksum failed here (DataCsumErr), so something on the path changed \
                 the payload, and with one subflow both ends went on with an infinite mapping"
            } else if grew("InfiniteMapRx") {
                ": the peer switched to an infinite mapping (InfiniteMapRx)"
            } else if grew("MPFailRx") {
                ": the peer reported MP_FAIL (a DSS checksum failed there)"
            } else {
                ""
            };
            return found(
                "fallback",
                format!(
                    "the connection fell back to plain TCP mid-connection (seen{after}, by \
                     sock_diag's fallback flag, read once a second){why}: one subflow, no MPTCP \
                     from then on"
                ),
                evidence,
            );
        }
        found(
            "fallback",
            format!(
                "the connection fell back to plain TCP{after} ({reason}): one subflow, no MPTCP"
            ),
            evidence,
        )
    }

    /// A client's server is in a namespace of this host where MPTCP is disabled: (its name,
    /// evidence).
    fn peer_mptcp_disabled(&mut self, key: u64) -> Option<(String, String)> {
        let t = &self.tracks[&key];
        if t.side != Some(Side::Client) {
            return None;
        }
        let tuple = t.tuple.clone()?;
        let daddr = tuple.daddr;
        // The server's end of this very connection.
        let ns = self.netns_of(key, daddr, |t| {
            t.state != doctor::net::TCP_LISTEN
                && t.local_port == tuple.dport
                && t.remote_port == tuple.sport
        })?;
        let facts = self.env.facts(ns)?;
        if facts.enabled.as_deref() != Ok("0") {
            return None;
        }
        let name = self.env.name(ns);
        let ev = format!("net.mptcp.enabled = 0 in netns {name}, which holds {daddr}");
        Some((name, ev))
    }

    /// The name of namespace `ns` as of `facts`: looked up once per facts snapshot (about once
    /// a second, see `FACTS_TTL`), not once per connection judged. A namespace whose inode was
    /// reused since is described wrongly by both until the facts are read again.
    fn facts_name(&mut self, ns: u32, facts: &Arc<Facts>) -> String {
        per_snapshot(&mut self.names, ns, facts, || self.env.name(ns))
    }

    /// Doctor's checks of the endpoints usable beside `saddr` in `ns`, made by `make` once per
    /// facts snapshot: the connections that close before they join (half of them at a
    /// thousand a second) would otherwise each describe every endpoint and route again.
    fn endpoint_checks(
        &mut self,
        ns: u32,
        facts: &Arc<Facts>,
        saddr: IpAddr,
        make: impl FnOnce() -> Vec<doctor::Check>,
    ) -> EndpointChecks {
        per_snapshot(&mut self.checks, (ns, saddr), facts, || Arc::new(make()))
    }

    /// The diagnosis of a connection whose one subflow may not be all it had: `lost` events
    /// (of any connection) went missing since it started, and a join or an announcement of
    /// its own may be among them. The namespace's join and announcement counters go with it:
    /// they say whether the kernel joined anything meanwhile, not which connection did.
    fn lost_events(&mut self, key: u64, lost: u64) -> Found {
        let (subflows, joins) = (self.tracks[&key].subflows, self.tracks[&key].joins);
        let (ns, d) = self.deltas(key, |n| {
            n.starts_with("MPJoin") || n.starts_with("AddAddr") || n == "EchoAdd"
        });
        let mut evidence = vec![
            format!("{subflows} subflow(s) seen, {joins} of them join(s)"),
            format!("{lost} event(s) lost by this tracer since the connection started"),
        ];
        evidence.extend(delta_evidence(&d, &ns));
        found(
            "unknown",
            format!(
                "this tracer lost {lost} event(s) while the connection was open (program runs \
                 the kernel skipped or a full ring buffer: see the `lost` records); its joins or \
                 the peer's announcements may be among them, so why it shows {subflows} \
                 subflow(s) is not concluded"
            ),
            evidence,
        )
    }

    /// Judges a client connection's configuration against the subflows it got. `at_close`
    /// also says `unknown` when the configuration allowed a join that never came.
    fn judge_config(&mut self, key: u64, at_close: bool) -> Vec<Found> {
        let t = &self.tracks[&key];
        let (Some(ns), Some(tuple)) = (t.conn.netns, t.tuple.clone()) else {
            return Vec::new();
        };
        if t.settled_by_joins() {
            // It joined, or tried to, and left no announcement aside: the configuration let
            // it (most connections; decided before anything is read).
            return Vec::new();
        }
        let (joins, joins_failed) = (t.joins, t.joins_failed);
        let unjoined = t.unjoined();
        // Events lost since it started may be its joins or announcements: what rests on their
        // absence is then not concluded (see [`Diagnosis::lost_events`]).
        let lost = self.lost_now().saturating_sub(t.lost_base);
        // Announcements the path manager took up (a join went to them).
        let accepted = t
            .announced
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| t.join_remote_ids.contains(id))
            .collect::<HashSet<u8>>()
            .len() as u32;
        let Some(facts) = self.env.facts(ns) else {
            return Vec::new();
        };
        let name = self.facts_name(ns, &facts);
        if facts.path_manager.as_ref().is_some_and(|p| p.userspace) {
            // A userspace daemon decides: its configuration is not ours to judge.
            return Vec::new();
        }
        let Ok(pm) = &facts.pm else {
            return Vec::new();
        };
        let limits = pm.limits;
        let mut v = Vec::new();
        for (id, addr) in &unjoined {
            let what = match addr {
                Some(a) => format!("{a} (id {id})"),
                None => format!("id {id}"),
            };
            let seen = format!(
                "addr_announced remote_id={id}{}",
                addr.map_or(String::new(), |a| format!(" addr={a}"))
            );
            if limits.add_addr_accepted == 0 {
                let (_, d) = self.deltas(key, |n| n == "AddAddrDrop");
                let mut evidence = vec![
                    seen,
                    format!("limits add_addr_accepted 0 in netns {name}"),
                    "no join towards that remote id".to_string(),
                ];
                evidence.extend(delta_evidence(&d, &name));
                v.push(found(
                    "add_addr_ignored",
                    format!(
                        "the peer announced {what} but `add_addr_accepted` is 0 in netns {name}: \
                         the announcement was ignored, no subflow was opened to it"
                    ),
                    evidence,
                ));
            } else if lost > 0 {
                // Whether a join went to it, and how many did, is not known.
                if !v.iter().any(|f: &Found| f.cause == "unknown") {
                    v.push(self.lost_events(key, lost));
                }
            } else if accepted >= limits.add_addr_accepted {
                let (_, d) = self.deltas(key, |n| n == "AddAddrDrop");
                let mut evidence = vec![
                    seen,
                    format!(
                        "limits add_addr_accepted {} in netns {name}",
                        limits.add_addr_accepted
                    ),
                    format!("{accepted} announced address(es) joined"),
                ];
                evidence.extend(delta_evidence(&d, &name));
                v.push(found(
                    "add_addr_ignored",
                    format!(
                        "the peer announced {what} but `add_addr_accepted` is {} in netns \
                         {name}, used up by {accepted} announcement(s) already joined: the \
                         announcement was ignored",
                        limits.add_addr_accepted
                    ),
                    evidence,
                ));
            } else if joins >= limits.subflows {
                v.push(found(
                    "subflow_limit",
                    format!(
                        "the peer announced {what} but `limits subflows` is {} in netns {name}, \
                         used by {joins} join(s)",
                        limits.subflows
                    ),
                    vec![
                        seen,
                        format!("limits subflows {} in netns {name}", limits.subflows),
                        format!("{joins} join(s) established"),
                    ],
                ));
            }
        }
        if joins > 0 || joins_failed > 0 || !unjoined.is_empty() {
            return v;
        }
        // No join at all: was there anything to join from?
        let family = tuple.family;
        let subflow_eps: Vec<_> = pm
            .endpoints
            .iter()
            .filter(|e| e.has(flag::SUBFLOW))
            .collect();
        let usable: Vec<_> = subflow_eps
            .iter()
            .filter(|e| {
                e.addr
                    .is_some_and(|a| crate::event::Family::of(a) == family && a != tuple.saddr)
            })
            .collect();
        if usable.is_empty() {
            let have = if subflow_eps.is_empty() {
                format!("no endpoint with flag subflow in netns {name}")
            } else {
                format!(
                    "subflow endpoint(s) {} in netns {name}, none a second {} address",
                    subflow_eps
                        .iter()
                        .map(|e| e.addr.map_or(format!("id {}", e.id), |a| a.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    match family {
                        crate::event::Family::Ipv4 => "IPv4",
                        crate::event::Family::Ipv6 => "IPv6",
                    }
                )
            };
            v.push(found(
                "no_subflow_endpoint",
                format!(
                    "this client has no `subflow` endpoint to open a second subflow from \
                     ({have}; the first subflow is from {})",
                    tuple.saddr
                ),
                vec![format!("1 subflow, no join attempted"), have],
            ));
        }
        if limits.subflows == 0 {
            v.push(found(
                "subflow_limit",
                format!(
                    "`limits subflows` is 0 in netns {name}: the path manager opens no \
                     additional subflow"
                ),
                vec![
                    "1 subflow, no join attempted".to_string(),
                    format!("limits subflows 0 in netns {name}"),
                ],
            ));
        }
        if !v.is_empty() {
            return v;
        }
        // Endpoints and limits allow a join, and the peer announced no other address: the
        // only address to join is its initial one, which it may forbid.
        if self.tracks[&key].peer_deny_join_id0 && lost == 0 {
            let to = endpoint(tuple.daddr, tuple.dport);
            v.push(found(
                "deny_join_id0",
                format!(
                    "the peer forbids joins to its initial address {to} (its MP_CAPABLE set the \
                     C flag: deny_join_id0, e.g. net.mptcp.allow_join_initial_addr_port = 0 \
                     there) and announced no other address, so no subflow can join"
                ),
                vec![
                    "conn_established peer_deny_join_id0=true".to_string(),
                    "1 subflow, no join attempted, no addr_announced".to_string(),
                    format!(
                        "{} usable subflow endpoint(s) and limits subflows {} in netns {name}",
                        usable.len(),
                        limits.subflows
                    ),
                ],
            ));
            return v;
        }
        // Endpoints and limits allow a join: can its address be used?
        if let Ok(net) = &facts.net {
            let checks = self.endpoint_checks(ns, &facts, tuple.saddr, || {
                let nsref = nsref(&name, ns);
                usable
                    .iter()
                    .map(|e| doctor::netns::endpoint_check(&nsref, e, net))
                    .collect()
            });
            if !checks.is_empty() && checks.iter().all(|c| c.status == doctor::Status::Fail) {
                v.push(found(
                    "endpoint_unusable",
                    format!(
                        "no `subflow` endpoint can be used: {}",
                        checks
                            .iter()
                            .map(|c| c.detail.clone())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    checks
                        .iter()
                        .map(|c| format!("{} in netns {name}: {}", c.name, c.detail))
                        .collect(),
                ));
                return v;
            }
        }
        // Doctor's checks see interfaces and routes, not policy rules nor the route to this
        // peer: ask the kernel for the very lookup a join from each endpoint makes.
        let unroutable: Vec<(IpAddr, std::io::Error)> = usable
            .iter()
            .filter_map(|e| {
                let from = e.addr?;
                self.env
                    .route(ns, tuple.daddr, from)?
                    .err()
                    .map(|err| (from, err))
            })
            .collect();
        if !usable.is_empty() && unroutable.len() == usable.len() {
            let said = |err: &std::io::Error| {
                err.raw_os_error()
                    .map_or(err.to_string(), crate::doctor::probe::errno_name)
            };
            v.push(found(
                "endpoint_unusable",
                format!(
                    "no `subflow` endpoint has a route to the peer {}: {}",
                    tuple.daddr,
                    unroutable
                        .iter()
                        .map(|(from, err)| format!("from {from}, {}", said(err)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                unroutable
                    .iter()
                    .map(|(from, err)| {
                        format!(
                            "ip route get {} from {from} in netns {name}: {}",
                            tuple.daddr,
                            said(err)
                        )
                    })
                    // Corroboration where the kernel counts it (Linux ≥ 6.10): the join's
                    // connect() failed before any packet left.
                    .chain({
                        let (dns, d) = self.deltas(key, |n| n == "MPJoinSynTxConnectErr");
                        delta_evidence(&d, &dns)
                    })
                    .collect(),
            ));
            return v;
        }
        if lost > 0 {
            // Its configuration allows a join, and none was seen, nor any announcement: either
            // may have been lost.
            if at_close || self.tracks[&key].peer_deny_join_id0 {
                v.push(self.lost_events(key, lost));
            }
            return v;
        }
        if at_close {
            let (dns, d) = self.deltas(key, |n| n.starts_with("MPJoin") || is_auth_counter(n));
            let auth: Vec<_> = d
                .iter()
                .filter(|(n, _)| is_auth_counter(n))
                .cloned()
                .collect();
            let mut evidence = vec![
                "1 subflow, no join seen".to_string(),
                format!(
                    "limits subflows {} in netns {name}, {} usable subflow endpoint(s)",
                    limits.subflows,
                    usable.len()
                ),
            ];
            evidence.extend(delta_evidence(&d, &dns));
            if auth.is_empty() {
                v.push(found(
                    "unknown",
                    format!(
                        "the configuration of netns {name} allows a join, none was seen and no \
                         counter says why"
                    ),
                    evidence,
                ));
            } else {
                v.push(found(
                    "join_auth_failed",
                    format!(
                        "no join came up; inferred from the MPTcpExt counters of netns {dns} \
                         (HMAC or token failure), not from this connection's own events"
                    ),
                    evidence,
                ));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        ConnClosed, ConnCreated, ConnEstablished, Family, Ids, SubflowEstablished, Token,
    };

    const NS: u32 = 4026532174;
    const CONN: u64 = 0xffff_0001;

    /// A namespace with fixed facts and counters that tests can move.
    struct Fake {
        facts: Facts,
        counters: std::sync::Arc<std::sync::Mutex<MptcpExt>>,
    }

    impl Env for Fake {
        fn name(&mut self, _: u32) -> String {
            "mptcp-client".into()
        }
        fn facts(&mut self, _: u32) -> Option<Arc<Facts>> {
            Some(Arc::new(self.facts.clone()))
        }
        fn counters(&mut self, _: u32, _: u64) -> Option<MptcpExt> {
            Some(self.counters.lock().unwrap().clone())
        }
        fn holders(&mut self, _: IpAddr, _: bool) -> Vec<u32> {
            // Every address is the one namespace's.
            vec![NS]
        }
    }

    fn stage(facts: Facts) -> Diagnosis {
        Diagnosis::new(
            Box::new(Fake {
                facts,
                counters: Default::default(),
            }),
            Clock::fixed(0),
        )
    }

    fn conn() -> Conn {
        Conn {
            token: Some(Token(1)),
            netns: Some(NS),
            ids: Ids {
                conn: CONN,
                ..Ids::default()
            },
            ..Conn::default()
        }
    }

    fn tuple(saddr: &str) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            saddr: saddr.parse().unwrap(),
            sport: 40000,
            daddr: "10.0.0.1".parse().unwrap(),
            dport: 4321,
        }
    }

    fn subflow(join: bool) -> crate::event::Subflow {
        crate::event::Subflow {
            ifindex: None,
            ifname: None,
            local_id: Some(u8::from(join)),
            remote_id: 0,
            backup: false,
            peer_backup: false,
            join,
        }
    }

    fn ev(ts: u64, data: Data) -> Event {
        Event::new(ts, String::new(), data)
    }

    /// A client connection established at 1 s with its first subflow, and `joins` joins.
    fn client_conn(joins: usize) -> Vec<Event> {
        let mut v = vec![
            ev(
                1_000_000_000,
                Data::ConnCreated(ConnCreated {
                    conn: conn(),
                    tuple: tuple("10.0.0.2"),
                    side: Side::Client,
                }),
            ),
            ev(
                1_000_000_001,
                Data::ConnEstablished(ConnEstablished {
                    conn: conn(),
                    tuple: tuple("10.0.0.2"),
                    peer_deny_join_id0: Some(false),
                }),
            ),
            ev(
                1_000_000_002,
                Data::SubflowEstablished(SubflowEstablished {
                    conn: conn(),
                    tuple: tuple("10.0.0.2"),
                    subflow: subflow(false),
                    existing: false,
                }),
            ),
        ];
        for i in 0..joins {
            v.push(ev(
                1_000_100_000 + i as u64,
                Data::SubflowEstablished(SubflowEstablished {
                    conn: conn(),
                    tuple: tuple("192.168.0.2"),
                    subflow: subflow(true),
                    existing: false,
                }),
            ));
        }
        v
    }

    fn close(ts: u64) -> Event {
        ev(
            ts,
            Data::ConnClosed(ConnClosed {
                conn: conn(),
                tuple: tuple("10.0.0.2"),
                duration_ns: None,
                subflows_total: 1,
            }),
        )
    }

    /// The causes `events` lead to, with the deadline judged at `now`.
    fn causes(d: &mut Diagnosis, events: Vec<Event>, now: u64) -> Vec<String> {
        let mut out = VecDeque::new();
        for e in events {
            d.pass(Arc::new(e), &mut out);
        }
        d.expire(now, &mut out, || (now, 0));
        out.iter()
            .filter_map(|e| match &e.data {
                Data::ConnDiagnosis(c) => Some(c.cause.clone()),
                _ => None,
            })
            .collect()
    }

    const LATE: u64 = 3_000_000_000;

    /// A subflow reset at `ts` with `reason`, before it carried a byte.
    fn reset(ts: u64, join: bool, reason: &str) -> Event {
        ev(
            ts,
            Data::SubflowClosed(crate::event::SubflowClosed {
                conn: conn(),
                tuple: tuple(if join { "192.168.0.2" } else { "10.0.0.2" }),
                reason: reason.into(),
                cause: Default::default(),
                subflow: subflow(join),
                bytes_sent: 0,
                bytes_acked: 0,
                bytes_received: 0,
                retrans: 0,
                srtt_us: 0,
            }),
        )
    }

    /// Counters whose reads after the first stall (a tracer stopped in the middle of a sample)
    /// while the namespace's DataCsumErr grows.
    struct Stalling {
        reads: u32,
    }

    impl Env for Stalling {
        fn name(&mut self, _: u32) -> String {
            "mptcp-server".into()
        }
        fn facts(&mut self, _: u32) -> Option<Arc<Facts>> {
            None
        }
        fn counters(&mut self, _: u32, _: u64) -> Option<MptcpExt> {
            self.reads += 1;
            let mut c = MptcpExt::new();
            if self.reads > 1 {
                std::thread::sleep(Duration::from_millis(2));
                c.insert("DataCsumErr".into(), 1);
            }
            Some(c)
        }
        fn holders(&mut self, _: IpAddr, _: bool) -> Vec<u32> {
            vec![NS]
        }
    }

    /// A sample whose read ended after a connection started is not that connection's
    /// baseline, though its round began before: the counters it holds may already count what
    /// the connection caused.
    #[test]
    fn a_sample_read_after_the_connection_started_is_not_its_baseline() {
        use crate::decode::monotonic_ns;
        let mut d = Diagnosis::new(Box::new(Stalling { reads: 0 }), Clock::fixed(0));
        d.sample(&[NS], monotonic_ns());
        let round = monotonic_ns();
        let started = round + 1;
        // The round begins before the connection starts; its read ends after the checksum
        // failure was counted.
        d.sample(&[NS], round);
        assert!(fallback_evidence(&mut d, started)
            .iter()
            .any(|e| e == "MPTcpExt DataCsumErr +1 in netns mptcp-server"));
    }

    /// The one sample from before a connection stays its baseline when the samples after it
    /// come before its events are judged: a round whose read ended after the tracer was
    /// stopped, and the tick after it went on.
    #[test]
    fn the_sample_from_before_a_stopped_reader_stays_the_baseline() {
        use crate::decode::monotonic_ns;
        let mut d = Diagnosis::new(Box::new(Stalling { reads: 0 }), Clock::fixed(0));
        d.sample(&[NS], monotonic_ns());
        let started = monotonic_ns();
        // Both read after the checksum failure was counted.
        d.sample(&[NS], started + 1);
        d.sample(&[NS], monotonic_ns());
        assert_eq!(
            fallback_evidence(&mut d, started),
            [
                "conn_fallback reason=mid_connection",
                "MPTcpExt DataCsumErr +1 in netns mptcp-server"
            ]
        );
    }

    /// A connection falls back once: the `mid_connection` a poll found for a connection whose
    /// handshake fallback had not left the pipeline yet goes neither out nor into its log.
    #[test]
    fn a_second_fallback_of_one_connection_does_not_go_out() {
        let mut d = Diagnosis::new(Box::new(Stalling { reads: 0 }), Clock::fixed(0));
        let fallback = |ts, reason: &str| {
            Arc::new(ev(
                ts,
                Data::ConnFallback(crate::event::ConnFallback {
                    conn: conn(),
                    tuple: tuple("10.0.0.1"),
                    reason: reason.into(),
                }),
            ))
        };
        let mut out = VecDeque::new();
        let created = Data::ConnCreated(ConnCreated {
            conn: conn(),
            tuple: tuple("10.0.0.1"),
            side: Side::Server,
        });
        d.pass(Arc::new(ev(500, created)), &mut out);
        d.pass(fallback(1_000, "mp_capable_not_negotiated"), &mut out);
        d.pass(
            fallback(2_000, crate::trace::fallback::MID_CONNECTION),
            &mut out,
        );
        let kinds: Vec<_> = out.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                crate::event::Kind::ConnCreated,
                crate::event::Kind::ConnFallback,
                crate::event::Kind::ConnDiagnosis
            ],
            "{out:#?}"
        );
        assert_eq!(
            d.tracks.values().map(|t| t.log.len()).sum::<usize>(),
            3,
            "the log holds the first fallback and its diagnosis"
        );
    }

    /// A server connection started at `started` that fell back mid-connection 1 ms later: its
    /// diagnosis's evidence.
    fn fallback_evidence(d: &mut Diagnosis, started: u64) -> Vec<String> {
        let mut out = VecDeque::new();
        d.pass(
            Arc::new(ev(
                started,
                Data::ConnCreated(ConnCreated {
                    conn: conn(),
                    tuple: tuple("10.0.0.1"),
                    side: Side::Server,
                }),
            )),
            &mut out,
        );
        d.pass(
            Arc::new(ev(
                started + 1_000_000,
                Data::ConnFallback(crate::event::ConnFallback {
                    conn: conn(),
                    tuple: tuple("10.0.0.1"),
                    reason: crate::trace::fallback::MID_CONNECTION.into(),
                }),
            )),
            &mut out,
        );
        out.iter()
            .find_map(|e| match &e.data {
                Data::ConnDiagnosis(c) => Some(c.evidence.clone()),
                _ => None,
            })
            .expect("a fallback diagnosis")
    }

    #[test]
    fn a_join_reset_is_judged_after_the_grace_unless_the_initial_subflow_is_reset_too() {
        // Alone: judged once the grace has passed, stamped then (before the 1 s deadline).
        let mut d = stage(crate::doctor::netns::tests::client());
        let mut out = VecDeque::new();
        for e in client_conn(1) {
            d.pass(Arc::new(e), &mut out);
        }
        d.pass(
            Arc::new(reset(1_000_200_000, true, "rst_received")),
            &mut out,
        );
        let due = d.next_due().unwrap();
        assert_eq!(due, 1_000_200_000 + ABORT_GRACE_NS + SETTLE_NS);
        d.expire(due - 1, &mut out, || (due - 1, 0));
        assert!(!out
            .iter()
            .any(|e| e.kind() == crate::event::Kind::ConnDiagnosis));
        d.expire(due, &mut out, || (due, 0));
        let diag: Vec<_> = out
            .iter()
            .filter(|e| e.kind() == crate::event::Kind::ConnDiagnosis)
            .collect();
        assert_eq!(diag.len(), 1, "{diag:?}");
        assert_eq!(diag[0].ts_ns, 1_000_200_000 + ABORT_GRACE_NS);
        // With the initial subflow reset too (an abort), before or after it: nothing.
        for initial_first in [false, true] {
            let mut d = stage(crate::doctor::netns::tests::client());
            let mut evs = client_conn(1);
            let (a, b) = (
                reset(1_000_200_000, true, "rst_received"),
                reset(1_000_200_500, false, "rst_received"),
            );
            if initial_first {
                evs.extend([b, a]);
            } else {
                evs.extend([a, b]);
            }
            evs.push(close(1_000_300_000));
            assert_eq!(causes(&mut d, evs, LATE), Vec::<String>::new());
        }
    }

    #[test]
    fn a_healthy_two_path_client_gets_no_diagnosis_at_the_deadline_or_at_close() {
        let mut d = stage(crate::doctor::netns::tests::client());
        let mut evs = client_conn(1);
        evs.push(close(2_500_000_000));
        assert_eq!(causes(&mut d, evs, LATE), Vec::<String>::new());
    }

    #[test]
    fn no_subflow_endpoint_and_a_zero_limit_are_both_named() {
        let mut f = crate::doctor::netns::tests::client();
        let pm = f.pm.as_mut().unwrap();
        pm.endpoints.clear();
        pm.limits.subflows = 0;
        let mut d = stage(f);
        assert_eq!(
            causes(&mut d, client_conn(0), LATE),
            ["no_subflow_endpoint", "subflow_limit"]
        );
    }

    #[test]
    fn an_endpoint_on_the_first_subflows_address_is_no_second_path() {
        let mut f = crate::doctor::netns::tests::client();
        f.pm.as_mut().unwrap().endpoints[0].addr = Some("10.0.0.2".parse().unwrap());
        let mut d = stage(f);
        assert_eq!(
            causes(&mut d, client_conn(0), LATE),
            ["no_subflow_endpoint"]
        );
    }

    #[test]
    fn before_the_deadline_nothing_is_judged_and_a_short_connection_only_on_what_is_forbidden() {
        // Endpoint and limits allow a join: a connection closed after 0.5 s is not blamed.
        let mut d = stage(crate::doctor::netns::tests::client());
        let mut evs = client_conn(0);
        evs.push(close(1_500_000_000));
        assert_eq!(causes(&mut d, evs, 1_600_000_000), Vec::<String>::new());
        // Without any endpoint, the same short connection is.
        let mut f = crate::doctor::netns::tests::client();
        f.pm.as_mut().unwrap().endpoints.clear();
        let mut d = stage(f);
        let mut evs = client_conn(0);
        evs.push(close(1_500_000_000));
        assert_eq!(causes(&mut d, evs, 1_600_000_000), ["no_subflow_endpoint"]);
    }

    #[test]
    fn a_userspace_path_manager_is_not_judged() {
        let mut f = crate::doctor::netns::tests::client();
        f.path_manager.as_mut().unwrap().userspace = true;
        f.pm.as_mut().unwrap().endpoints.clear();
        let mut d = stage(f);
        assert_eq!(causes(&mut d, client_conn(0), LATE), Vec::<String>::new());
    }

    #[test]
    fn a_down_endpoint_interface_is_endpoint_unusable_with_doctors_words() {
        let mut f = crate::doctor::netns::tests::client();
        f.net.as_mut().unwrap().links[2].flags = 0;
        let mut d = stage(f);
        let mut out = VecDeque::new();
        for e in client_conn(0) {
            d.pass(Arc::new(e), &mut out);
        }
        d.expire(LATE, &mut out, || (LATE, 0));
        let Some(Data::ConnDiagnosis(c)) = out.back().map(|e| &e.data) else {
            panic!("{out:?}")
        };
        assert_eq!(c.cause, "endpoint_unusable");
        assert!(c.detail.contains("blue-client is down"), "{c:?}");
        // Once per cause: the close adds nothing.
        assert_eq!(
            causes(&mut d, vec![close(LATE + 1)], LATE + 2),
            Vec::<String>::new()
        );
        // And the closed connection is kept for `why`.
        assert!(d.take_dirty());
        assert!(d
            .recent()
            .any(|e| matches!(&e.data, Data::ConnDiagnosis(c) if c.cause == "endpoint_unusable")));
    }

    #[test]
    fn a_peer_that_denies_joins_to_its_initial_address_is_named_only_when_nothing_else_was_announced(
    ) {
        let deny = |mut evs: Vec<Event>| {
            if let Data::ConnEstablished(c) = &mut evs[1].data {
                c.peer_deny_join_id0 = Some(true);
            }
            evs
        };
        let mut d = stage(crate::doctor::netns::tests::client());
        assert_eq!(
            causes(&mut d, deny(client_conn(0)), LATE),
            ["deny_join_id0"]
        );
        // Joined anyway (to another address): nothing to explain.
        let mut d = stage(crate::doctor::netns::tests::client());
        assert_eq!(
            causes(&mut d, deny(client_conn(1)), LATE),
            Vec::<String>::new()
        );
        // A missing endpoint is this side's cause, whatever the peer allows.
        let mut f = crate::doctor::netns::tests::client();
        f.pm.as_mut().unwrap().endpoints.clear();
        let mut d = stage(f);
        assert_eq!(
            causes(&mut d, deny(client_conn(0)), LATE),
            ["no_subflow_endpoint"]
        );
    }

    /// The diagnoses of `client_conn(joins)` (the peer denying joins to its initial address
    /// with `deny`), with the tracer's loss total read `before` it starts, when its deadline is
    /// judged (`deadline`), when its close is (`closing`); and with `late`, read after it
    /// started but before its first event is handled (a reader that fell behind).
    fn judged_with_loss(
        joins: usize,
        deny: bool,
        (before, deadline, closing): (u64, u64, u64),
        late: Option<u64>,
    ) -> Vec<ConnDiagnosis> {
        let mut d = stage(crate::doctor::netns::tests::client());
        let mut out = VecDeque::new();
        d.set_lost(0, before);
        if let Some(n) = late {
            d.set_lost(1_500_000_000, n);
        }
        let mut evs = client_conn(joins);
        if let Data::ConnEstablished(c) = &mut evs[1].data {
            c.peer_deny_join_id0 = Some(deny);
        }
        for e in evs {
            d.pass(Arc::new(e), &mut out);
        }
        d.expire(LATE, &mut out, || (LATE, deadline));
        d.set_lost(LATE + 1, closing);
        let close = Arc::new(close(LATE + 1));
        assert_eq!(d.wants_lost(&close), joins == 0);
        d.pass(close, &mut out);
        out.iter()
            .filter_map(|e| match &e.data {
                Data::ConnDiagnosis(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// A client that stayed on one subflow while the tracer lost events (skipped program runs
    /// on the sid guest took a join's `subflow_established`) is not said to have had no join:
    /// its diagnosis says what was lost. A loss before it started does not count.
    #[test]
    fn a_loss_while_the_connection_was_open_is_said_instead_of_what_did_not_come() {
        let no_counter = "allows a join, none was seen and no counter says why";
        for before in [0, 3] {
            let v = judged_with_loss(0, false, (before, before, before), None);
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].cause, "unknown");
            assert!(v[0].detail.contains(no_counter), "{}", v[0].detail);
        }
        // Lost after the deadline, before the close: at close.
        let v = judged_with_loss(0, false, (3, 3, 5), None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].cause, "unknown");
        assert!(
            v[0].detail
                .starts_with("this tracer lost 2 event(s) while the connection was open"),
            "{}",
            v[0].detail
        );
        assert_eq!(
            v[0].evidence[..2],
            [
                "1 subflow(s) seen, 0 of them join(s)",
                "2 event(s) lost by this tracer since the connection started"
            ]
        );
        // The peer's deny_join_id0 is named only when nothing was lost: its announcement of
        // another address may have been.
        assert_eq!(
            judged_with_loss(0, true, (0, 0, 0), None)
                .iter()
                .map(|c| c.cause.as_str())
                .collect::<Vec<_>>(),
            ["deny_join_id0"]
        );
        let v = judged_with_loss(0, true, (0, 1, 1), None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.starts_with("this tracer lost 1 event(s)"));
        // A read made after it started, before its events were handled (the reader was
        // behind), is not its base: the loss it holds may be this connection's.
        let v = judged_with_loss(0, false, (0, 7, 7), Some(7));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.starts_with("this tracer lost 7 event(s)"));
        // A joined client is not judged, loss or not.
        assert!(judged_with_loss(1, false, (0, 4, 9), None).is_empty());
    }

    #[test]
    fn a_fallback_to_a_namespace_without_mptcp_names_it() {
        let fell_back = || {
            let mut evs = client_conn(0);
            evs.push(ev(
                1_000_000_003,
                Data::ConnFallback(crate::event::ConnFallback {
                    conn: conn(),
                    tuple: tuple("10.0.0.2"),
                    reason: "mp_capable_not_negotiated".into(),
                }),
            ));
            evs
        };
        let mut f = crate::doctor::netns::tests::client();
        f.enabled = Ok("0".into());
        let mut d = stage(f);
        assert_eq!(causes(&mut d, fell_back(), LATE), ["mptcp_disabled"]);
        let mut d = stage(crate::doctor::netns::tests::client());
        assert_eq!(causes(&mut d, fell_back(), LATE), ["fallback"]);
    }

    #[test]
    fn an_announcement_past_add_addr_accepted_is_ignored_and_one_past_subflows_is_the_limit() {
        // The peer announces ids 1 and 2; the client joins id 1 only.
        let announced = || {
            let mut evs = client_conn(0);
            for (id, a) in [(1, "192.168.0.1"), (2, "192.168.0.11")] {
                evs.push(ev(
                    1_000_050_000 + u64::from(id),
                    Data::AddrAnnounced(crate::event::Addr {
                        conn: conn(),
                        family: Some(Family::Ipv4),
                        remote_id: id,
                        addr: Some(a.parse().unwrap()),
                        port: None,
                    }),
                ));
            }
            evs.push(ev(
                1_000_100_000,
                Data::SubflowEstablished(SubflowEstablished {
                    conn: conn(),
                    tuple: tuple("192.168.0.2"),
                    subflow: crate::event::Subflow {
                        remote_id: 1,
                        ..subflow(true)
                    },
                    existing: false,
                }),
            ));
            evs
        };
        let with_limits = |subflows, add_addr_accepted| {
            let mut f = crate::doctor::netns::tests::client();
            f.pm.as_mut().unwrap().limits = crate::pm_config::Limits {
                subflows,
                add_addr_accepted,
            };
            stage(f)
        };
        assert_eq!(
            causes(&mut with_limits(2, 1), announced(), LATE),
            ["add_addr_ignored"]
        );
        assert_eq!(
            causes(&mut with_limits(1, 2), announced(), LATE),
            ["subflow_limit"]
        );
        assert_eq!(
            causes(&mut with_limits(2, 2), announced(), LATE),
            Vec::<String>::new()
        );

        // The second announcement comes after the deadline: judged a deadline after it.
        let mut d = with_limits(2, 1);
        let mut evs = announced();
        let second = evs.remove(evs.len() - 2);
        assert!(matches!(second.data, Data::AddrAnnounced(_)));
        assert_eq!(causes(&mut d, evs, LATE), Vec::<String>::new());
        let at = LATE + 1_000;
        let late = Event {
            ts_ns: at,
            ..second
        };
        assert_eq!(causes(&mut d, vec![late.clone()], at), Vec::<String>::new());
        assert_eq!(d.next_due(), Some(at + DEADLINE_NS + SETTLE_NS));
        assert_eq!(
            causes(&mut d, vec![], at + DEADLINE_NS + SETTLE_NS),
            ["add_addr_ignored"]
        );
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn the_server_side_is_not_judged_on_its_endpoints() {
        let mut f = crate::doctor::netns::tests::client();
        f.pm.as_mut().unwrap().endpoints.clear();
        let mut d = stage(f);
        let mut evs = client_conn(0);
        if let Data::ConnCreated(c) = &mut evs[0].data {
            c.side = Side::Server;
        }
        assert_eq!(causes(&mut d, evs, LATE), Vec::<String>::new());
    }
}
