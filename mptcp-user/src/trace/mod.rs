//! The one event pipeline: load and attach the programs, drain the ring buffer, watch the
//! path manager's netlink events, give address events their connection's owner, apply the
//! userspace half of the selector, merge both sources in time order, and account for every
//! event that went missing. Every command that shows events — `events`, `live`, `demo`,
//! `run --trace`, `upgrade --events` — is a sink of one [`Pipeline`] in its own process.
//!
//! ```text
//! snapshot (at start) ──────────────────────────────────────────────────────▶ next() first
//! ring buffer ─▶ decode ─┐                     ┌──(pre-existing connections)──┐
//!                        ├─▶ existing ─▶ owners ─▶ selector (userspace part) ─▶ reorder ─▶ next()
//! netlink PM ────────────┤                        loss counters ──▶ `lost` events
//! upgrade feed ──────────┘ (socket_upgraded: `run`, `upgrade --events`)
//! ```
//!
//! The snapshot and the `existing` stage: connections open before the tracer started
//! ([`existing`]). `subflow_stats` records (`--stats-interval`): a timer here samples the open
//! subflows with `sock_diag` and pushes the records into the reorder stage ([`stats`]).

pub mod diagnosis;
pub mod existing;
pub mod fallback;
pub mod filter;
pub mod order;
pub mod owners;
pub mod pm;
pub mod stats;
pub mod why_file;

use std::{collections::VecDeque, io, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use log::warn;
use mptcp_common::counter;
use tokio::{
    io::unix::AsyncFd,
    time::{interval, interval_at, sleep, Instant, Interval, MissedTickBehavior},
};

use crate::{
    decode::{self, monotonic_ns, Clock},
    event::{Event, Kind, Lost},
    loader::{self, Counters, KernelLog, LoadError},
    select::Selector,
    upgrade::reports::SupervisorFeed,
};

use diagnosis::Diagnosis;
use existing::{Existing, Route};
use filter::ConnMatcher;
use order::Reorder;
use owners::Owners;
use pm::{PmAddr, PmStats, PmWatcher};
use stats::Stats;

/// How often loss counters are read and new namespaces looked for.
const TICK: Duration = Duration::from_millis(500);
/// The tracer wakes on this grid (CLOCK_MONOTONIC ns): held events are released at its points,
/// not each at its own moment, and after a read the ring buffer is left to fill until the next
/// point, so that a read and a release share one wake-up. Every event falls due at a different
/// time, and the kernel wakes a reader that keeps up for nearly every record: at 1,000
/// connections a second that was over a thousand wake-ups a second, the largest part of the
/// tracer's CPU. An event waits [`order::WINDOW_NS`] and at most this much more; at the
/// machine's maximum churn (about 300,000 records a second) 10 ms is about 600 KiB of the
/// 4 MiB ring.
const GRAIN_NS: u64 = 10_000_000;

/// The next point of the [`GRAIN_NS`] grid after `now`.
fn next_grain(now: u64) -> u64 {
    (now + 1).next_multiple_of(GRAIN_NS)
}
/// At most this many ring-buffer records are decoded per read. Under overload the kernel
/// writes as fast as the reader reads, and a read that went on until the ring was empty never
/// ended: everything it decoded stayed held until it did (hundreds of MiB at the machine's
/// maximum churn). After a full batch the decoded events go out before the next batch is read.
const RING_BATCH: usize = 4096;
/// When the pipeline stops, the ring buffer is read until empty, or until a record stamped
/// this long after the stop has been read (see `Pipeline::finish`).
const FINISH_GRACE_NS: u64 = 1_000_000;
/// At most this many path-manager messages wait for their connection's records (see
/// `Core::unowned`); beyond it the oldest is dropped as unknown.
const MAX_UNOWNED: usize = 4096;
/// Namespaces are rescanned every this many ticks.
const RESCAN_TICKS: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot watch the path manager's netlink events: {0}")]
    Netlink(#[source] io::Error),
    #[error("polling the ring buffer: {0}")]
    Ring(#[source] io::Error),
}

/// Loss and rejection totals since the pipeline started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub lost: Lost,
    pub pm: PmStats,
    /// Ring-buffer records that failed to decode (never reinterpreted).
    pub malformed: u64,
    /// Events of connections the userspace selector did not match.
    pub filtered: u64,
    /// Events held for a connection that had not matched yet, dropped because it held too many
    /// (see `filter::MAX_HELD`): missing from the output if the connection matched later.
    pub held_dropped: u64,
    /// State changes the kernel skipped the main program for and the rescue program handled
    /// (not lost; see `NESTING` in mptcp-ebpf).
    pub rescued: u64,
}

impl Totals {
    /// The exit summary's loss part: `0 lost (ring buffer 0, map full 0, skipped program runs
    /// 0, netlink overruns 0)`; every cause is named, also when it is zero.
    pub fn describe(&self) -> String {
        let l = &self.lost;
        let skipped = l
            .recursion_misses
            .map_or(crate::upgrade::raw_bpf::MISSES_UNKNOWN.to_string(), |n| {
                n.to_string()
            });
        let mut s = format!(
            "{} lost (ring buffer {}, map full {}, stale entries {}, skipped program runs {skipped}, netlink overruns {})",
            l.count, l.ring_buffer, l.map_full, l.stale_entry, l.netlink
        );
        if self.pm.forged > 0 {
            s += &format!(
                ", {} forged path-manager messages dropped (not sent by the kernel)",
                self.pm.forged
            );
        }
        if self.pm.unknown_token > 0 {
            s += &format!(
                ", {} path-manager messages for unknown connections dropped",
                self.pm.unknown_token
            );
        }
        if self.pm.unwatched > 0 {
            s += &format!(
                ", {} network namespaces not watched (limit {})",
                self.pm.unwatched, self.pm.limit
            );
        }
        if self.held_dropped > 0 {
            s += &format!(
                ", {} events held for a not-yet-matching connection dropped (over {} each)",
                self.held_dropped,
                filter::MAX_HELD
            );
        }
        if self.malformed > 0 {
            s += &format!(", {} malformed records dropped", self.malformed);
        }
        if self.rescued > 0 {
            s += &format!(
                ", {} state changes recovered from runs the kernel skipped",
                self.rescued
            );
        }
        s
    }
}

/// Where `socket_upgraded` events come from: the upgrade running beside the tracer.
pub enum UpgradeFeed {
    /// The seccomp supervisor's records (`run --method seccomp`). Nothing is lost on the way:
    /// the supervisor blocks on a full pipe.
    Seccomp(SupervisorFeed),
    /// The fmod_ret program's ring (`run --trace --method bpf`, `upgrade --events`).
    Bpf(Box<crate::upgrade::EventFeed>),
}

/// Everything but the ring buffer, so that records can be handled while the ring buffer's
/// readiness guard is held.
struct Core {
    tracer: loader::Attached,
    counters: Counters,
    pm: PmWatcher,
    clock: Clock,
    owners: Owners,
    existing: Existing,
    matcher: ConnMatcher,
    order: Reorder,
    diagnosis: Diagnosis,
    /// Where `mptcp-trace why` finds the recent diagnoses (removed when the pipeline ends).
    why: Option<why_file::WhyFile>,
    /// The last write of the `why` file failed (warned once, retried every tick).
    why_failing: bool,
    /// Events in their final order. Shared: the diagnosis keeps a connection's events until
    /// it closes, for `mptcp-trace why`.
    ready: VecDeque<Arc<Event>>,
    totals: Totals,
    reported: Lost,
    pm_buf: Vec<PmAddr>,
    /// When the path manager's sockets were last read (monotonic ns, taken before reading):
    /// every message the kernel sent before it has been read.
    pm_read_at: u64,
    /// Path-manager messages about a connection not known yet, with when they were read: its
    /// records may still be in the ring buffer (a batch not read yet, a record the kernel had
    /// not submitted). Judged again after each read of the ring buffer, and dropped as unknown
    /// once the ring buffer was read empty after them.
    unowned: VecDeque<(PmAddr, u64)>,
    /// The upgrade program's loss (its ring and its skipped runs), once its feed is attached.
    upgrade_loss: Option<crate::upgrade::LossReader>,
    /// The newest kernel stamp of a ring-buffer record read so far.
    newest_ring_ns: u64,
}

impl Core {
    fn record(&mut self, item: &[u8]) {
        match decode::decode(item, &self.clock) {
            Ok(e) => {
                self.newest_ring_ns = self.newest_ring_ns.max(e.ts_ns);
                self.event(e)
            }
            Err(err) => {
                self.totals.malformed += 1;
                warn!("dropped a malformed record: {err}");
            }
        }
    }

    fn event(&mut self, e: Event) {
        if let Some(ns) = e.netns() {
            if e.kind() == Kind::ConnCreated {
                // Traffic in a namespace the watcher does not know yet (created since the last
                // rescan): subscribe now, before its first announcement.
                self.pm.saw(ns);
            }
        }
        if e.kind() == Kind::ConnClosed && e.ts_ns >= self.pm_read_at {
            // The kernel sent this connection's address events before it closed, so they wait
            // in the netlink sockets now: read them while its token is still known (its owner
            // is forgotten at this close). A reader late by more than the connection's life
            // (the sid guest under load) had read the ring buffer to the close first, and
            // dropped the ADD_ADDR as being about an unknown connection.
            let closing = e.netns().zip(e.token()).map(|(ns, t)| (ns, t.0, e.ts_ns));
            self.drain_pm(closing);
        }
        let e = match self.existing.route(e, monotonic_ns()) {
            Route::Normal(e) => *e,
            Route::Judged(v) => {
                for e in v {
                    self.owners.observe(&e);
                    self.order.push(e);
                }
                return;
            }
            Route::Nothing => return,
        };
        self.owners.observe(&e);
        let order = &mut self.order;
        self.matcher.push(e, &mut |e| order.push_event(e));
    }

    fn drain_upgrade_ring(&mut self, rb: &mut RingBuf<MapData>) {
        while let Some(item) = rb.next() {
            match decode::upgrade_record(&item, &self.clock) {
                Ok(e) => self.event(e),
                Err(err) => {
                    self.totals.malformed += 1;
                    warn!("dropped a malformed upgrade record: {err}");
                }
            }
        }
    }

    /// Reads up to [`RING_BATCH`] records; true when the ring buffer was left empty.
    fn drain_ring(&mut self, rb: &mut RingBuf<MapData>) -> bool {
        let started = monotonic_ns();
        for _ in 0..RING_BATCH {
            let Some(item) = rb.next() else {
                self.settle_unowned(Some(started));
                return true;
            };
            self.record(&item);
        }
        self.settle_unowned(None);
        false
    }

    /// Passes on the held path-manager messages whose connection is known now. With
    /// `emptied_after`: the ring buffer was just read empty, so every record submitted before
    /// that time has been read, and a message read before it whose token is still unknown is
    /// about no connection the tracer will see (dropped, counted).
    fn settle_unowned(&mut self, emptied_after: Option<u64>) {
        if self.unowned.is_empty() {
            return;
        }
        for (a, read) in std::mem::take(&mut self.unowned) {
            if self.owners.knows(a.netns, a.token) {
                self.pm_event(&a, read, read);
            } else if emptied_after.is_some_and(|t| read < t) {
                self.pm.stats.unknown_token += 1;
            } else {
                self.unowned.push_back((a, read));
            }
        }
    }

    /// Every record the seccomp supervisor has written; false once it has ended.
    fn drain_feed(&mut self, feed: &mut SupervisorFeed) -> bool {
        let open = feed.drain(monotonic_ns(), &mut |u| {
            let e = decode::seccomp_upgraded(&u, &self.clock);
            self.event(e)
        });
        self.totals.malformed += feed.take_malformed();
        open.unwrap_or_else(|e| {
            warn!("reading the seccomp supervisor's records: {e}");
            false
        })
    }

    /// Reads the path manager's messages waiting now. `closing` (netns, token, stamp): a
    /// connection whose close is being handled, so its messages were sent before that stamp
    /// and are stamped no later than 1 ns before it.
    fn drain_pm(&mut self, closing: Option<(u32, u32, u64)>) {
        self.pm_read_at = monotonic_ns();
        self.pm_buf.clear();
        self.pm.drain(&mut self.pm_buf);
        let read = monotonic_ns();
        for a in std::mem::take(&mut self.pm_buf) {
            if !self.owners.knows(a.netns, a.token) {
                if self.unowned.len() == MAX_UNOWNED {
                    self.unowned.pop_front();
                    self.pm.stats.unknown_token += 1;
                }
                self.unowned.push_back((a, read));
                continue;
            }
            let ts = match closing {
                Some((ns, token, closed)) if (a.netns, a.token) == (ns, token) => {
                    read.min(closed.saturating_sub(1))
                }
                _ => read,
            };
            self.pm_event(&a, ts, read);
        }
    }

    /// One path-manager message about a known connection, stamped `ts`, read at `read`.
    fn pm_event(&mut self, a: &PmAddr, ts: u64, read: u64) {
        let mut e = decode::addr_event(a, ts, &self.clock);
        self.owners.enrich(&mut e);
        let e = match self.existing.route(e, read) {
            Route::Normal(e) => *e,
            Route::Judged(v) => {
                v.into_iter().for_each(|e| self.order.push(e));
                return;
            }
            Route::Nothing => return,
        };
        let order = &mut self.order;
        // Stamped late (netlink has no kernel time): an announcement goes before the joins
        // it caused, which the ring buffer delivered first (see `order`).
        self.matcher.push(e, &mut |e| order.push_event(e));
    }

    /// Releases what is due at `now`; with `hold`, nothing stamped from then on (see
    /// [`SupervisorFeed::hold`]).
    fn release(&mut self, now: u64, hold: Option<u64>) {
        let order = &mut self.order;
        self.existing.expire(now, &mut |e| order.push(e));
        let (ready, diagnosis) = (&mut self.ready, &mut self.diagnosis);
        let (tracer, counters, netlink) = (&self.tracer, &self.counters, self.pm.stats.overruns);
        self.order.release(now, hold, &mut |e| {
            if diagnosis.wants_lost(&e) {
                let (at, total) = lost_read(tracer, counters, netlink);
                diagnosis.set_lost(at, total);
            }
            diagnosis.pass(e, ready)
        });
        // Deadlines follow the real clock, also when `finish` releases everything at once.
        self.diagnosis.expire(monotonic_ns(), &mut self.ready, || {
            lost_read(tracer, counters, netlink)
        });
    }

    /// Rewrites the `why` file when a diagnosis was added since the last time.
    fn write_why(&mut self) {
        if let Some(w) = &self.why {
            if self.diagnosis.take_dirty() {
                if let Err(e) = w.write(self.diagnosis.recent()) {
                    // Said once; tried again on the next tick until it works.
                    if !self.why_failing {
                        warn!("cannot write {}: {e}", w.path().display());
                    }
                    self.why_failing = true;
                    self.diagnosis.set_dirty();
                } else {
                    self.why_failing = false;
                }
            }
        }
    }

    /// The loss totals now: the tracing programs' and the upgrade's.
    fn lost_now(&self) -> Lost {
        self.with_upgrade_loss(self.tracing_loss())
    }

    fn tracing_loss(&self) -> Lost {
        tracing_loss(&self.tracer, &self.counters, self.pm.stats.overruns)
    }

    /// `l`, the tracing loss, with the upgrade's added.
    fn with_upgrade_loss(&self, l: Lost) -> Lost {
        let (up_lost, up_misses) = self.upgrade_loss.as_ref().map_or((0, Some(0)), |f| f());
        let ring_buffer = l.ring_buffer + up_lost;
        // What was reported is never taken back (see `tracing_loss`).
        let recursion_misses = l
            .recursion_misses
            .map(|n| (n + up_misses.unwrap_or(0)).max(self.reported.recursion_misses.unwrap_or(0)));
        Lost {
            count: ring_buffer
                + l.map_full
                + l.stale_entry
                + recursion_misses.unwrap_or(0)
                + l.netlink,
            ring_buffer,
            recursion_misses,
            ..l
        }
    }

    /// Queues a `lost` event when anything went missing since the last one.
    fn report_loss(&mut self) {
        let l = self.tracing_loss();
        self.diagnosis.set_lost(monotonic_ns(), l.count);
        let now = self.with_upgrade_loss(l);
        if now.count > self.reported.count {
            let prev = &self.reported;
            let delta = Lost {
                count: now.count - prev.count,
                ring_buffer: now.ring_buffer - prev.ring_buffer,
                map_full: now.map_full - prev.map_full,
                stale_entry: now.stale_entry - prev.stale_entry,
                recursion_misses: now
                    .recursion_misses
                    .map(|n| n - prev.recursion_misses.unwrap_or(0)),
                netlink: now.netlink - prev.netlink,
            };
            self.ready
                .push_back(Arc::new(decode::lost(delta, &self.clock)));
        }
        self.reported = now;
    }
}

/// What the tracing programs and the path-manager watcher (`netlink` overruns) lost so far, read
/// from the kernel now: without the upgrade's loss, which is no connection's event.
fn tracing_loss(tracer: &loader::Attached, counters: &Counters, netlink: u64) -> Lost {
    let ring_buffer = counters.get(counter::LOST);
    let map_full = counters.get(counter::MAP_FULL);
    let stale_entry = counters.get(counter::STALE);
    // The main program's skipped runs that the rescue program handled are not lost. The
    // rescue program runs first on each state change (it is attached first) and counts before
    // the kernel counts the main program's miss, so between the two the difference reads one
    // low, never one high: no loss is reported that was not one.
    let rescued = counters.get(counter::RESCUED);
    let recursion_misses = tracer.recursion_misses().map(|n| n.saturating_sub(rescued));
    Lost {
        count: ring_buffer + map_full + stale_entry + recursion_misses.unwrap_or(0) + netlink,
        ring_buffer,
        map_full,
        stale_entry,
        recursion_misses,
        netlink,
    }
}

/// [`tracing_loss`]'s total, and when it was read (after): what [`Diagnosis::set_lost`] takes.
fn lost_read(tracer: &loader::Attached, counters: &Counters, netlink: u64) -> (u64, u64) {
    let total = tracing_loss(tracer, counters, netlink).count;
    (monotonic_ns(), total)
}

/// The attached tracer and everything downstream of it. Dropping it detaches the programs.
pub struct Pipeline {
    ring: AsyncFd<RingBuf<MapData>>,
    /// `socket_upgraded` records, once attached; `None` again when the feed ended.
    feed: Option<UpgradeFeed>,
    /// The upgrade program's ring, registered with the reactor (a `Bpf` feed).
    upgrade_ring: Option<AsyncFd<RingBuf<MapData>>>,
    log: KernelLog,
    tick: Interval,
    ticks: u64,
    /// Until when the ring buffer is left to fill after a read (see [`GRAIN_NS`]).
    ring_rest: Option<tokio::time::Instant>,
    core: Core,
    /// `--stats-interval`: the sampler and its timer; `None` (nothing polled) without it.
    stats: Option<(Stats, Interval)>,
    /// The connections that may still fall back, polled through sock_diag ([`fallback`]).
    fallback: fallback::FallbackWatch,
}

impl Pipeline {
    /// Loads and attaches the programs for `sel` and subscribes to the path manager's events.
    /// When it returns, tracing is live: nothing that happens from now on is missed.
    pub fn start(sel: &Selector) -> Result<Pipeline, TraceError> {
        let loader::Tracer {
            events,
            counters,
            logger,
            ebpf,
            degraded,
            programs,
            existing,
            listeners,
        } = loader::load(sel.config())?;
        let tracer = loader::Tracer::attached(ebpf, degraded, programs);
        // Right after attaching: whatever happens from now on is in the ring buffer, so nothing
        // falls between the snapshot and tracing. Its events are stamped before it starts.
        let clock = Clock::now();
        let t0 = monotonic_ns();
        let snap = existing::snapshot(sel, &clock, t0, Some(existing), Some(listeners));
        let pm = PmWatcher::new(sel.netns_inodes()).map_err(TraceError::Netlink)?;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
        let ring =
            unsafe { AsyncFd::register(events) }.map_err(|e| TraceError::Ring(e.into_parts().1))?;
        let log = KernelLog::register(logger).map_err(TraceError::Ring)?;
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut core = Core {
            tracer,
            counters,
            pm,
            clock,
            owners: Owners::default(),
            existing: snap.stage,
            matcher: ConnMatcher::new(sel.conn.clone()),
            order: Reorder::new(clock),
            diagnosis: Diagnosis::new(Box::new(diagnosis::Host::default()), clock),
            why: why_file::WhyFile::create()
                .map_err(|e| warn!("`mptcp-trace why` will not see this tracer: {e}"))
                .ok(),
            why_failing: false,
            ready: VecDeque::new(),
            totals: Totals::default(),
            reported: Lost::default(),
            pm_buf: Vec::new(),
            pm_read_at: 0,
            unowned: VecDeque::new(),
            upgrade_loss: None,
            newest_ring_ns: 0,
        };
        // What is lost from now on may be a connection's event (see `Diagnosis::set_lost`).
        let total = core.tracing_loss().count;
        core.diagnosis.set_lost(monotonic_ns(), total);
        // The snapshot goes out first; later events stamped before it follow it.
        for e in snap.events {
            core.owners.observe(&e);
            core.diagnosis.pass(Arc::new(e), &mut core.ready);
        }
        core.order.floor(t0);
        // Counter baselines from before anything traced can start: the tick's first sample
        // comes only once the caller polls, after it has said it is ready, and a connection
        // started at once had none older than itself. Its baseline was then read when its
        // first event was judged, a reorder window later, and a counter that grew meanwhile
        // went unseen (the sid guest's mid-connection fallback named InfiniteMapRx without
        // the DataCsumErr that caused it).
        let watched = core.pm.watched();
        core.diagnosis.sample(&watched, monotonic_ns());
        // Loss before the first event counts too, but only from now on.
        core.reported = core.lost_now();
        Ok(Pipeline {
            ring,
            feed: None,
            upgrade_ring: None,
            log,
            tick,
            ticks: 0,
            ring_rest: None,
            core,
            stats: None,
            fallback: fallback::FallbackWatch::default(),
        })
    }

    /// Adds the upgrade's `socket_upgraded` records to the events, in time order with the rest.
    /// Its loss counts in `lost` from now on.
    pub fn attach_upgrades(&mut self, feed: UpgradeFeed) -> io::Result<()> {
        match feed {
            UpgradeFeed::Seccomp(_) => self.feed = Some(feed),
            UpgradeFeed::Bpf(f) => {
                let crate::upgrade::FeedParts { ring, loss } = f.split();
                // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
                self.upgrade_ring =
                    Some(unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?);
                self.core.upgrade_loss = Some(loss);
                self.core.reported = self.core.lost_now();
            }
        }
        Ok(())
    }

    /// Adds a `subflow_stats` record per open subflow every `period` (see [`stats`]).
    pub fn stats_every(&mut self, period: Duration) {
        let mut timer = interval_at(Instant::now() + period, period);
        // A late sample is taken once, not in a burst: its deltas cover the longer interval.
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.stats = Some((Stats::new(period), timer));
    }

    /// What this kernel lacks (missing fields, programs), each with what is lost.
    pub fn degraded(&self) -> &[String] {
        &self.core.tracer.degraded
    }

    /// The next event, in time order. Cancel-safe: an event is never half-delivered, so the
    /// caller may race it against signals in a `select!`.
    pub async fn next(&mut self) -> io::Result<Arc<Event>> {
        loop {
            if let Some(e) = self.core.ready.pop_front() {
                if let Some((s, _)) = self.stats.as_mut() {
                    if !s.observe(&e) {
                        continue;
                    }
                }
                self.fallback.observe(&e);
                return Ok(e);
            }
            let hold = self.hold(monotonic_ns());
            let due = [
                self.core.order.next_due(hold),
                self.core.existing.next_due(),
                self.core.diagnosis.next_due(),
                hold.and_then(|_| self.seccomp_feed()?.hold_until()),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.next_multiple_of(GRAIN_NS));
            let wait = due.map(|d| Duration::from_nanos(d.saturating_sub(monotonic_ns())));
            let resting = self.ring_rest.is_some();
            let rest_until = self.ring_rest.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                guard = self.ring.readable_mut(), if !resting => {
                    let mut guard = guard?;
                    if self.core.drain_ring(guard.get_inner_mut()) {
                        guard.clear_ready();
                        let now = monotonic_ns();
                        self.ring_rest = Some(
                            tokio::time::Instant::now()
                                + Duration::from_nanos(next_grain(now) - now),
                        );
                    }
                    // Otherwise more is waiting: the readiness is kept, and the next batch is
                    // read once this one's released events have gone out.
                }
                _ = tokio::time::sleep_until(rest_until), if resting => self.ring_rest = None,
                r = self.core.pm.readable() => {
                    r?;
                    // The connection's own records were written before the kernel handled the
                    // option: read them first so the address event finds its owner.
                    self.core.drain_ring(self.ring.get_mut());
                    self.core.drain_pm(None);
                }
                r = seccomp_readable(&self.feed), if matches!(self.feed, Some(UpgradeFeed::Seccomp(_))) => r?,
                guard = upgrade_ring_ready(&mut self.upgrade_ring), if self.upgrade_ring.is_some() => {
                    let mut guard = guard?;
                    self.core.drain_upgrade_ring(guard.get_inner_mut());
                    guard.clear_ready();
                }
                r = self.log.forward() => r?,
                _ = self.tick.tick() => {
                    self.ticks += 1;
                    if self.ticks.is_multiple_of(RESCAN_TICKS) {
                        self.core.pm.rescan();
                    }
                    self.core.report_loss();
                    // Counter baselines taken before the connections they serve start.
                    let watched = self.core.pm.watched();
                    self.core.diagnosis.sample(&watched, monotonic_ns());
                    self.core.write_why();
                    let order = &mut self.core.order;
                    self.fallback
                        .poll(monotonic_ns(), &self.core.clock, &mut |e| order.push(e));
                }
                _ = stats_tick(&mut self.stats), if self.stats.is_some() => {
                    let (s, _) = self.stats.as_mut().expect("checked");
                    let order = &mut self.core.order;
                    s.sample(monotonic_ns(), &self.core.clock, &mut |e| order.push(e));
                }
                _ = sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {}
            }
            let now = monotonic_ns();
            self.drain_upgrades();
            let hold = self.hold(now);
            self.core.release(now, hold);
        }
    }

    /// Reads the upgrade's records waiting now, whatever woke the pipeline: a record written
    /// before an event happened is then read before that event is released (the upgrade
    /// program writes its record before `socket()` returns; the seccomp supervisor says it is
    /// answering before it answers: see [`crate::upgrade::reports`]).
    fn drain_upgrades(&mut self) {
        if let Some(r) = self.upgrade_ring.as_mut() {
            self.core.drain_upgrade_ring(r.get_mut());
        }
        if let Some(UpgradeFeed::Seccomp(f)) = self.feed.as_mut() {
            if !self.core.drain_feed(f) {
                // The supervisor exited: every record it wrote has been read.
                self.feed = None;
            }
        }
    }

    /// Events stamped from this time on wait for a record of the seccomp supervisor's.
    fn hold(&self, now: u64) -> Option<u64> {
        self.seccomp_feed().and_then(|f| f.hold(now))
    }

    fn seccomp_feed(&self) -> Option<&SupervisorFeed> {
        match &self.feed {
            Some(UpgradeFeed::Seccomp(f)) => Some(f),
            _ => None,
        }
    }

    /// How many tracing programs are attached.
    pub fn programs_attached(&self) -> usize {
        self.core.tracer.programs()
    }

    /// Loss and rejection totals so far.
    pub fn totals(&self) -> Totals {
        let mut t = self.core.totals.clone();
        t.lost = self.core.lost_now();
        t.pm = self.core.pm.stats;
        t.filtered = self.core.matcher.filtered + self.core.existing.filtered;
        t.held_dropped = self.core.matcher.overflowed;
        t.rescued = self.core.counters.get(counter::RESCUED);
        t
    }

    /// Stops: reads what is still waiting, releases every held event in order, reports the
    /// last loss, and returns those events with the totals. The programs are detached when the
    /// returned pipeline part is dropped, which happens here.
    pub fn finish(mut self) -> (Vec<Arc<Event>>, Totals) {
        self.drain_upgrades();
        // Everything written before the stop is read; under a flood that goes on, the records
        // written after it are not owed, and reading them could go on for ever. A program
        // stamps its record a few µs before it reserves it, so once one stamped 1 ms after the
        // stop has been read, none stamped before it is still waiting.
        let stop = monotonic_ns();
        while !self.core.drain_ring(self.ring.get_mut())
            && self.core.newest_ring_ns < stop + FINISH_GRACE_NS
        {}
        self.core.drain_pm(None);
        // Whatever is still unowned now never will be: the ring buffer was read to its end.
        self.core.settle_unowned(Some(u64::MAX));
        self.core.release(u64::MAX, None);
        self.core.report_loss();
        let totals = self.totals();
        let mut stats = self.stats.take();
        let events = self
            .core
            .ready
            .drain(..)
            .filter(|e| stats.as_mut().is_none_or(|(s, _)| s.observe(e)))
            .collect();
        (events, totals)
    }
}

/// Until the seccomp supervisor's pipe has something to read (pending without it; the
/// records are read before each release). Cancel-safe.
async fn seccomp_readable(feed: &Option<UpgradeFeed>) -> io::Result<()> {
    match feed {
        Some(UpgradeFeed::Seccomp(f)) => f.readable().await,
        // Read through `upgrade_ring` instead.
        Some(UpgradeFeed::Bpf(_)) | None => std::future::pending().await,
    }
}

/// The stats timer's next tick (pending without `--stats-interval`). Cancel-safe.
async fn stats_tick(stats: &mut Option<(Stats, Interval)>) {
    match stats {
        Some((_, timer)) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The upgrade ring's readiness (pending when there is none).
async fn upgrade_ring_ready(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_dropped_held_events_only_when_there_are_some() {
        let t = Totals {
            held_dropped: 3,
            ..Totals::default()
        };
        assert!(
            t.describe().contains(
                ", 3 events held for a not-yet-matching connection dropped (over 64 each)"
            ),
            "{}",
            t.describe()
        );
        assert!(!Totals::default().describe().contains("held"));
    }
}
