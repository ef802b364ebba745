//! Merges the two sources of events — the ring buffer (stamped by the kernel) and the
//! path-manager netlink messages (stamped when read) — in time order: every event waits
//! [`WINDOW_NS`] before it is released, and events are released by timestamp. Ring-buffer
//! records of one connection arrive in order already; the window lets an address event read a
//! little late take its place among them.
//!
//! Netlink messages carry no kernel time, and the socket cannot be asked for one:
//! `netlink_recvmsg` (net/netlink/af_netlink.c) passes only the sender's credentials and, on
//! request, `NETLINK_PKTINFO`/the nsid — never `SO_TIMESTAMP*` (tried: with `SO_TIMESTAMPNS`
//! set, a multicast message comes with no control message). The read time is later than when
//! the kernel sent the message, and the ring buffer is drained first, so a join that an
//! ADD_ADDR caused can carry an earlier stamp than the announcement. Where the order is certain
//! it is restored from evidence, not time: see [`Reorder::push_event`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use crate::{
    decode::Clock,
    event::{Data, Event, Side, Token},
};

/// How long an event waits for earlier ones (documented in the README).
pub const WINDOW_NS: u64 = 20_000_000;

/// How long a client's first subflow_established may wait for its connection's
/// conn_established (sent just after it, from the MPTCP socket's own transition) when the
/// reader is later than [`WINDOW_NS`] (a loaded machine, a slow VM).
pub const ESTABLISHED_WAIT_NS: u64 = 1_000_000_000;

/// When an event is released: by time, then by arrival; an event slotted before another
/// (see [`Reorder::push_before`]) takes that one's time and arrival and comes before it,
/// in its own arrival order (`slot`: an arrival number; `u64::MAX` for an event placed by its
/// own time, which sorts after every event slotted before it).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    ts: u64,
    seq: u64,
    slot: u64,
}

/// Which connection a subflow event belongs to: network namespace and kernel socket identity.
type ConnId = (Option<u32>, u64);

/// Held events in release order, with indexes of the events that others must precede, so
/// that placing an event costs a few map lookups, not a scan of everything held (at maximum
/// churn thousands of events are held at any moment).
pub struct Reorder {
    /// Behind a pointer: a B-tree node shifts its values on every insert and remove, and an
    /// `Event` is a few hundred bytes (the moves were a sixth of the tracer's CPU at 1,000
    /// conn/s). An `Arc`, allocated once here: it is how the event goes on, shared between
    /// the output and the diagnosis' log.
    held: BTreeMap<Key, Arc<Event>>,
    seq: u64,
    /// The newest timestamp released: later events never go out before it.
    released: u64,
    /// Writes `time` again when an event is stamped anew, so the two never disagree.
    clock: Clock,
    /// Held subflow_established records placed by their own time, per connection.
    established: HashMap<ConnId, BTreeSet<Key>>,
    /// Held join subflow events placed by their own time, per connection and remote id.
    joins: HashMap<Towards, BTreeSet<Key>>,
    /// Held announcements, per connection and announced id.
    announcements: HashMap<Towards, BTreeSet<Key>>,
    /// Client MPTCP connections created and not yet established: their first
    /// subflow_established is not released before their conn_established (at most
    /// [`ESTABLISHED_WAIT_NS`]), so the two go out in order however late the reader is.
    awaiting: HashSet<ConnId>,
    /// Client MPTCP connections open (created, not closed).
    clients: HashSet<ConnId>,
    /// Announcements seen, per connection and id, until the connection closes. A client's
    /// join towards a remote id other than 0 follows the peer's ADD_ADDR of that id (the path
    /// manager learns the address from it): until it is seen, such a join is held (at most
    /// [`ESTABLISHED_WAIT_NS`]), so a netlink message read late still goes before it.
    announced_ids: HashSet<Towards>,
}

#[cfg(test)]
impl Default for Reorder {
    /// With the clock the tests' events are made with.
    fn default() -> Self {
        Reorder::new(Clock::fixed(0))
    }
}

fn index_add<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<Key>>, k: K, key: Key) {
    m.entry(k).or_default().insert(key);
}

fn index_remove<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<Key>>, k: K, key: &Key) {
    if let Some(set) = m.get_mut(&k) {
        set.remove(key);
        if set.is_empty() {
            m.remove(&k);
        }
    }
}

/// The connection of a subflow_established record.
fn established_of(e: &Event) -> Option<ConnId> {
    matches!(e.data, Data::SubflowEstablished(_)).then(|| (e.netns(), e.ids().conn))
}

impl Reorder {
    pub fn new(clock: Clock) -> Self {
        Reorder {
            held: BTreeMap::new(),
            seq: 0,
            released: 0,
            clock,
            established: HashMap::new(),
            joins: HashMap::new(),
            announcements: HashMap::new(),
            awaiting: HashSet::new(),
            clients: HashSet::new(),
            announced_ids: HashSet::new(),
        }
    }

    fn insert(&mut self, key: Key, e: Event) {
        if key.slot == u64::MAX {
            if let Some(c) = established_of(&e) {
                index_add(&mut self.established, c, key);
            }
            if let Some(t) = join_towards(&e) {
                index_add(&mut self.joins, t, key);
            }
        }
        if let Some(t) = announced(&e) {
            index_add(&mut self.announcements, t, key);
        }
        self.held.insert(key, Arc::new(e));
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Event>> {
        let e = self.held.remove(key)?;
        if let Some(c) = established_of(&e) {
            index_remove(&mut self.established, c, key);
        }
        if let Some(t) = join_towards(&e) {
            index_remove(&mut self.joins, t, key);
        }
        if let Some(t) = announced(&e) {
            index_remove(&mut self.announcements, t, key);
        }
        Some(e)
    }

    pub fn push(&mut self, mut e: Event) {
        self.seq += 1;
        // An event older than what was already released goes out next, in arrival order,
        // stamped anew with that time so that `ts_ns` never goes back: a record read more than
        // the window late, or one written while the later programs were still being attached,
        // before the start-up snapshot's stamp (see `floor`).
        if e.ts_ns < self.released {
            e.ts_ns = self.released;
            e.time = self.clock.rfc3339(e.ts_ns);
        }
        let key = Key {
            ts: e.ts_ns,
            seq: self.seq,
            slot: u64::MAX,
        };
        self.insert(key, e);
    }

    /// Adds an event from either source: an `addr_announced` goes before the joins it caused
    /// (see [`announced`]), a client's `conn_established` before its first subflow (see
    /// [`established_precedes`]), every other event by its time.
    pub fn push_event(&mut self, e: Event) {
        match &e.data {
            Data::ConnCreated(c) if c.side == Side::Client && c.conn.protocol.is_none() => {
                self.awaiting.insert((c.conn.netns, c.conn.ids.conn));
                self.clients.insert((c.conn.netns, c.conn.ids.conn));
            }
            Data::ConnEstablished(c) => {
                self.awaiting.remove(&(c.conn.netns, c.conn.ids.conn));
            }
            Data::ConnClosed(c) => {
                self.awaiting.remove(&(c.conn.netns, c.conn.ids.conn));
                self.clients.remove(&(c.conn.netns, c.conn.ids.conn));
                if let (Some(ns), Some(tok)) = (c.conn.netns, c.conn.token) {
                    self.announced_ids.retain(|&(n, t, _)| (n, t) != (ns, tok));
                }
            }
            _ => {}
        }
        if let Some(t) = announced(&e) {
            self.announced_ids.insert(t);
            let target = self.joins.get(&t).and_then(|s| s.first()).copied();
            return self.push_before(e, target);
        }
        if let Some(c) = established_precedes(&e) {
            let target = self.established.get(&c).and_then(|s| s.first()).copied();
            return self.push_before(e, target);
        }
        let Some(t) = join_towards(&e) else {
            return self.push(e);
        };
        // The other way round: the ring-buffer record of a join can be read after its
        // announcement was (the record is written when the handler ends, the announcement's
        // stamp is its read time), with an earlier stamp. Held announcements of that
        // connection and id are placed again, before it.
        let Some(keys) = self.announcements.get(&t).cloned() else {
            return self.push(e);
        };
        let moved: Vec<Arc<Event>> = keys.iter().filter_map(|k| self.remove(k)).collect();
        self.push(e);
        for a in moved {
            // Held, so not shared yet: taken back without a copy.
            self.push_event(Arc::unwrap_or_clone(a));
        }
    }

    /// Adds `e` so that it is released before `target` (a held event placed by its own time)
    /// when its own stamp would put it after that one; it is then stamped 1 ns before that
    /// event — or at the same time when an event released before it already has that time, so
    /// `ts_ns` never goes back. An event early enough already, or without a target, goes by its
    /// own stamp. Released events cannot be overtaken: the order is repaired only within the
    /// window.
    fn push_before(&mut self, mut e: Event, target: Option<Key>) {
        let Some(target) = target else {
            return self.push(e);
        };
        if e.ts_ns.max(self.released) < target.ts {
            return self.push(e);
        }
        self.seq += 1;
        let key = Key {
            slot: self.seq,
            ..target
        };
        let before = self.held.range(..key).next_back().map_or(0, |(k, _)| k.ts);
        e.ts_ns = target.ts.saturating_sub(1).max(before).max(self.released);
        e.time = self.clock.rfc3339(e.ts_ns);
        self.insert(key, e);
    }

    /// Events stamped before `ts` go out after those already handed out directly (the start-up
    /// snapshot's, stamped `ts`), as if `ts` had been released.
    pub fn floor(&mut self, ts: u64) {
        self.released = self.released.max(ts);
    }

    /// Releases every event older than `now - WINDOW_NS` (all of them with `now == u64::MAX`),
    /// but none stamped `hold` or later: an event from then on may still be on its way (a
    /// `socket_upgraded` of the seccomp supervisor's, see [`crate::upgrade::reports`]).
    pub fn release(&mut self, now: u64, hold: Option<u64>, out: &mut impl FnMut(Arc<Event>)) {
        let mut limit = now.saturating_sub(WINDOW_NS);
        if let Some(h) = hold {
            limit = limit.min(h.saturating_sub(1));
        }
        while let Some((&key, first)) = self.held.first_key_value() {
            if key.ts > limit {
                break;
            }
            if let Some(c) = established_of(first).filter(|c| self.awaiting.contains(c)) {
                // Its conn_established is still on its way: wait for it, boundedly.
                if now != u64::MAX && now.saturating_sub(key.ts) < ESTABLISHED_WAIT_NS {
                    break;
                }
                self.awaiting.remove(&c);
            }
            if let Some(t) = self.unannounced_join(first) {
                // The announcement that caused it is still on its way: wait, boundedly.
                if now != u64::MAX && now.saturating_sub(key.ts) < ESTABLISHED_WAIT_NS {
                    break;
                }
                self.announced_ids.insert(t);
            }
            let e = self.remove(&key).expect("first key is held");
            self.released = self.released.max(key.ts);
            out(e);
        }
    }

    /// When the oldest held event is due (monotonic ns), if any; none while it is held back
    /// by `hold` (see [`Reorder::release`]).
    pub fn next_due(&self, hold: Option<u64>) -> Option<u64> {
        let (k, e) = self.held.first_key_value()?;
        if hold.is_some_and(|h| k.ts >= h) {
            return None;
        }
        let waits = established_of(e).is_some_and(|c| self.awaiting.contains(&c))
            || self.unannounced_join(e).is_some();
        Some(
            k.ts + if waits {
                ESTABLISHED_WAIT_NS
            } else {
                WINDOW_NS
            },
        )
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A client's join (its first event: established or failed) towards a remote id other
    /// than 0 whose announcement has not been seen: the connection and id.
    fn unannounced_join(&self, e: &Event) -> Option<Towards> {
        if !matches!(e.data, Data::SubflowEstablished(_) | Data::SubflowFailed(_)) {
            return None;
        }
        let t = join_towards(e).filter(|t| t.2 != 0)?;
        (self.clients.contains(&(e.netns(), e.ids().conn)) && !self.announced_ids.contains(&t))
            .then_some(t)
    }
}

/// For a client's `conn_established`, the events it must precede: its connection's
/// subflow_established records. The kernel programs send a client's conn_established when
/// the MPTCP socket becomes established, the moment the peer's key is known (for
/// `peer_token`), which is just after its first subflow's ESTABLISHED was reported.
fn established_precedes(e: &Event) -> Option<ConnId> {
    let Data::ConnEstablished(c) = &e.data else {
        return None;
    };
    (c.conn.ids.conn != 0).then_some((c.conn.netns, c.conn.ids.conn))
}

/// An announcement and the joins it caused share this: the connection (network namespace,
/// token) and the peer's address id.
type Towards = (u32, Token, u8);

/// For an `addr_announced`: the connection and the address id it announced. The peer's
/// ADD_ADDR of address id R reached this host before any join it opened towards remote id R on
/// that connection (the path manager learns the address from it), whatever the stamps say:
/// kernel-agnostic, it relies on the protocol, not on timing.
fn announced(e: &Event) -> Option<Towards> {
    let Data::AddrAnnounced(a) = &e.data else {
        return None;
    };
    Some((a.conn.netns?, a.conn.token?, a.remote_id))
}

/// For a join subflow event (any subflow kind with `join`): its connection and remote id.
fn join_towards(e: &Event) -> Option<Towards> {
    let s = e.subflow().filter(|s| s.join)?;
    Some((e.netns()?, e.token()?, s.remote_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{addr_event, lost, tests::sample, to_event, Clock};
    use crate::event::{Kind, Lost};
    use crate::trace::pm::PmAddr;
    use mptcp_common::EventKind;

    const NETNS: u32 = 4026531840;
    const TOKEN: u32 = 0x0a0b0c0d;

    fn at(ts: u64) -> Event {
        let mut e = lost(Lost::default(), &Clock::fixed(0));
        e.ts_ns = ts;
        e
    }

    #[test]
    fn a_clients_conn_established_goes_before_its_first_subflow() {
        // The kernel sends a client's conn_established from the MPTCP socket's ESTABLISHED,
        // just after its first subflow's subflow_established.
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::ConnCreated, 1_000, 0, false));
        r.push_event(ring(EventKind::SubflowEstablished, 1_001, 0, false));
        r.push_event(ring(EventKind::ConnEstablished, 1_005, 0, false));
        let mut other = sample(EventKind::ConnEstablished);
        other.conn += 8;
        other.ts_ns = 1_006;
        r.push_event(to_event(&other, &Clock::fixed(0)).unwrap());
        let out = drain(&mut r);
        let kinds: Vec<Kind> = out.iter().map(|o| o.0).collect();
        assert_eq!(
            kinds,
            [
                Kind::ConnCreated,
                Kind::ConnEstablished,
                Kind::SubflowEstablished,
                Kind::ConnEstablished
            ],
            "{out:?}"
        );
        let ts: Vec<u64> = out.iter().map(|o| o.1).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        assert_eq!(ts[3], 1_006, "another connection's keeps its time");
        // `time` is written again with the new stamp.
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::SubflowEstablished, 5_000_000, 0, false));
        r.push_event(ring(EventKind::ConnEstablished, 9_000_000, 0, false));
        let mut times = Vec::new();
        r.release(u64::MAX, None, &mut |e| {
            times.push((e.ts_ns, e.time.clone()))
        });
        assert_eq!(times[0].0, 4_999_999);
        assert_eq!(times[0].1, Clock::fixed(0).rfc3339(4_999_999));
    }

    #[test]
    fn a_late_conn_established_still_goes_before_its_first_subflow() {
        // The reader fell behind by more than the window between the two records.
        let mut r = Reorder::default();
        let mut created = sample(EventKind::ConnCreated);
        created.flags &= !mptcp_common::flags::SERVER;
        created.ts_ns = 1_000_000;
        r.push_event(to_event(&created, &Clock::fixed(0)).unwrap());
        r.push_event(ring(EventKind::SubflowEstablished, 1_000_100, 0, false));
        let mut out = Vec::new();
        r.release(1_000_100 + 5 * WINDOW_NS, None, &mut |e| out.push(e.kind()));
        assert_eq!(
            out,
            [Kind::ConnCreated],
            "the subflow waits for its conn_established"
        );
        r.push_event(ring(EventKind::ConnEstablished, 1_000_200, 0, false));
        r.release(1_000_200 + 5 * WINDOW_NS, None, &mut |e| out.push(e.kind()));
        assert_eq!(
            out,
            [
                Kind::ConnCreated,
                Kind::ConnEstablished,
                Kind::SubflowEstablished
            ]
        );
        // Without it, the wait is bounded.
        let mut r = Reorder::default();
        r.push_event(to_event(&created, &Clock::fixed(0)).unwrap());
        r.push_event(ring(EventKind::SubflowEstablished, 1_000_100, 0, false));
        let mut n = 0;
        r.release(1_000_100 + ESTABLISHED_WAIT_NS, None, &mut |_| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn a_clients_join_waits_for_the_announcement_read_later_than_the_window() {
        let mut r = Reorder::default();
        let mut created = sample(EventKind::ConnCreated);
        created.flags &= !mptcp_common::flags::SERVER;
        created.ts_ns = 1_000_000;
        r.push_event(to_event(&created, &Clock::fixed(0)).unwrap());
        r.push_event(ring(EventKind::ConnEstablished, 1_000_100, 0, false));
        r.push_event(ring(EventKind::SubflowEstablished, 1_000_200, 0, false));
        r.push_event(ring(EventKind::SubflowEstablished, 2_000_000, 5, true));
        let mut out = Vec::new();
        // A slow machine: the netlink message is read 35 ms after the join.
        r.release(2_000_000 + 30_000_000, None, &mut |e| out.push(e.kind()));
        assert_eq!(
            out,
            [
                Kind::ConnCreated,
                Kind::ConnEstablished,
                Kind::SubflowEstablished
            ],
            "the join waits for its announcement"
        );
        r.push_event(announced(2_000_000 + 35_000_000, TOKEN, 5));
        let rest = drain(&mut r);
        assert_eq!(
            rest.iter().map(|(k, _, id)| (*k, *id)).collect::<Vec<_>>(),
            [
                (Kind::AddrAnnounced, Some(5)),
                (Kind::SubflowEstablished, Some(5))
            ]
        );
        // Never announced (the message was lost): the wait is bounded.
        r.push_event(ring(EventKind::SubflowEstablished, 3_000_000, 6, true));
        let mut n = 0;
        r.release(3_000_000 + 5 * WINDOW_NS, None, &mut |_| n += 1);
        assert_eq!(n, 0);
        r.release(3_000_000 + ESTABLISHED_WAIT_NS, None, &mut |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn releases_in_time_order_after_the_window() {
        let mut r = Reorder::default();
        r.push(at(3_000_000_000));
        r.push(at(1_000_000_000));
        let mut out = Vec::new();
        r.release(1_000_000_000 + WINDOW_NS - 1, None, &mut |e| {
            out.push(e.ts_ns)
        });
        assert!(out.is_empty(), "still in the window");
        r.release(u64::MAX, None, &mut |e| out.push(e.ts_ns));
        assert_eq!(out, [1_000_000_000, 3_000_000_000]);
        // A straggler older than what went out keeps the output monotonic: it goes out next,
        // stamped with the newest time released.
        r.push(at(5));
        assert_eq!(r.next_due(None), Some(3_000_000_000 + WINDOW_NS));
        r.release(u64::MAX, None, &mut |e| out.push(e.ts_ns));
        assert_eq!(out, [1_000_000_000, 3_000_000_000, 3_000_000_000]);
    }

    #[test]
    fn a_hold_keeps_back_only_the_events_from_its_time_on() {
        let mut r = Reorder::default();
        r.push(at(1_000));
        r.push(at(2_000));
        let late = 2_000 + 10 * WINDOW_NS;
        let mut out = Vec::new();
        // A socket_upgraded stamped 1_500 may still come: the event at 2_000 waits for it.
        r.release(late, Some(1_500), &mut |e| out.push(e.ts_ns));
        assert_eq!(out, [1_000]);
        assert_eq!(r.next_due(Some(1_500)), None, "no wake-up for a held event");
        assert_eq!(r.next_due(None), Some(2_000 + WINDOW_NS));
        r.push(at(1_500));
        r.release(late, None, &mut |e| out.push(e.ts_ns));
        assert_eq!(
            out,
            [1_000, 1_500, 2_000],
            "in time order, nothing restamped"
        );
    }

    /// A ring-buffer event of the sample connection (netns [`NETNS`], token [`TOKEN`]).
    fn ring(kind: EventKind, ts: u64, remote_id: u8, join: bool) -> Event {
        let mut r = sample(kind);
        r.ts_ns = ts;
        r.remote_id = remote_id;
        if !join {
            r.flags &= !mptcp_common::flags::JOIN;
        }
        to_event(&r, &Clock::fixed(0)).unwrap()
    }

    /// `addr_announced` of remote id `id`, stamped `ts` (when it was read).
    fn announced(ts: u64, token: u32, id: u8) -> Event {
        let a = PmAddr {
            announced: true,
            netns: NETNS,
            token,
            remote_id: id,
            addr: Some("192.168.0.1".parse().unwrap()),
            port: None,
        };
        addr_event(&a, ts, &Clock::fixed(0))
    }

    fn drain(r: &mut Reorder) -> Vec<(Kind, u64, Option<u8>)> {
        let mut out = Vec::new();
        r.release(u64::MAX, None, &mut |e| {
            let id = match &e.data {
                Data::AddrAnnounced(a) => Some(a.remote_id),
                _ => e.subflow().map(|s| s.remote_id),
            };
            out.push((e.kind(), e.ts_ns, id))
        });
        out
    }

    #[test]
    fn an_announcement_read_late_goes_before_the_join_it_caused() {
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::ConnEstablished, 100, 0, false));
        r.push_event(ring(EventKind::SubflowEstablished, 120, 0, false));
        // A join towards the endpoint the client had (remote id 0): not caused by it.
        r.push_event(ring(EventKind::SubflowEstablished, 150, 0, true));
        r.push_event(ring(EventKind::SubflowEstablished, 200, 5, true));
        r.push_event(ring(EventKind::SubflowClosed, 250, 5, true));
        // Read after the ring buffer was drained: stamped later than the join.
        r.push_event(announced(300, TOKEN, 5));
        assert_eq!(
            drain(&mut r),
            [
                (Kind::ConnEstablished, 100, None),
                (Kind::SubflowEstablished, 120, Some(0)),
                (Kind::SubflowEstablished, 150, Some(0)),
                (Kind::AddrAnnounced, 199, Some(5)),
                (Kind::SubflowEstablished, 200, Some(5)),
                (Kind::SubflowClosed, 250, Some(5)),
            ]
        );
    }

    #[test]
    fn an_announcement_of_another_connection_or_id_keeps_its_time() {
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::SubflowEstablished, 200, 5, true));
        r.push_event(announced(300, TOKEN + 1, 5));
        r.push_event(announced(310, TOKEN, 6));
        // Early enough already: untouched.
        r.push_event(announced(190, TOKEN, 5));
        assert_eq!(
            drain(&mut r),
            [
                (Kind::AddrAnnounced, 190, Some(5)),
                (Kind::SubflowEstablished, 200, Some(5)),
                (Kind::AddrAnnounced, 300, Some(5)),
                (Kind::AddrAnnounced, 310, Some(6)),
            ]
        );
    }

    #[test]
    fn announcements_slotted_before_one_join_keep_their_order_and_time_never_goes_back() {
        let mut r = Reorder::default();
        // Another event at the join's very time, pushed before it.
        r.push_event(ring(EventKind::SubflowEstablished, 200, 0, false));
        r.push_event(ring(EventKind::SubflowEstablished, 200, 5, true));
        r.push_event(announced(300, TOKEN, 5));
        r.push_event(announced(301, TOKEN, 5));
        let out = drain(&mut r);
        assert_eq!(
            out,
            [
                (Kind::SubflowEstablished, 200, Some(0)),
                (Kind::AddrAnnounced, 200, Some(5)),
                (Kind::AddrAnnounced, 200, Some(5)),
                (Kind::SubflowEstablished, 200, Some(5)),
            ]
        );
    }

    #[test]
    fn a_join_already_released_is_not_overtaken() {
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::SubflowEstablished, 200, 5, true));
        let mut out = Vec::new();
        r.release(200 + WINDOW_NS, None, &mut |e| out.push(e.kind()));
        assert_eq!(out, [Kind::SubflowEstablished]);
        r.push_event(announced(300, TOKEN, 5));
        assert_eq!(drain(&mut r), [(Kind::AddrAnnounced, 300, Some(5))]);
    }

    /// The join's record was read after the announcement (its handler wrote it late), with an
    /// earlier stamp: seen in the 6.12 guest.
    #[test]
    fn a_join_read_after_its_announcement_still_comes_after_it() {
        let mut r = Reorder::default();
        r.push_event(ring(EventKind::ConnEstablished, 100, 0, false));
        r.push_event(announced(300, TOKEN, 5));
        r.push_event(announced(310, TOKEN, 6));
        r.push_event(ring(EventKind::SubflowEstablished, 200, 5, true));
        assert_eq!(
            drain(&mut r),
            [
                (Kind::ConnEstablished, 100, None),
                (Kind::AddrAnnounced, 199, Some(5)),
                (Kind::SubflowEstablished, 200, Some(5)),
                (Kind::AddrAnnounced, 310, Some(6)),
            ]
        );
    }
}
