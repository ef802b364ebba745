//! Merges the two sources of events — the ring buffer (stamped by the kernel) and the
//! path-manager netlink messages (stamped when read) — in time order: every event waits
//! [`WINDOW_NS`] before it is released, and events are released by timestamp. Ring-buffer
//! records of one connection arrive in order already; the window lets an address event read a
//! little late take its place among them.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::event::Event;

/// How long an event waits for earlier ones (documented in the README).
pub const WINDOW_NS: u64 = 20_000_000;

struct Item(u64, u64, Event);

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

#[derive(Default)]
pub struct Reorder {
    heap: BinaryHeap<Reverse<Item>>,
    seq: u64,
    /// The newest timestamp released: later events never go out before it.
    released: u64,
}

impl Reorder {
    pub fn push(&mut self, e: Event) {
        self.seq += 1;
        // An event older than what was already released goes out next, in arrival order.
        let ts = e.ts_ns.max(self.released);
        self.heap.push(Reverse(Item(ts, self.seq, e)));
    }

    /// Events stamped before `ts` go out after those already handed out directly (the start-up
    /// snapshot's, stamped `ts`), as if `ts` had been released.
    pub fn floor(&mut self, ts: u64) {
        self.released = self.released.max(ts);
    }

    /// Releases every event older than `now - WINDOW_NS` (all of them with `now == u64::MAX`).
    pub fn release(&mut self, now: u64, out: &mut impl FnMut(Event)) {
        let limit = now.saturating_sub(WINDOW_NS);
        while self.heap.peek().is_some_and(|Reverse(i)| i.0 <= limit) {
            let Reverse(Item(ts, _, e)) = self.heap.pop().expect("peeked");
            self.released = self.released.max(ts);
            out(e);
        }
    }

    /// When the oldest held event is due (monotonic ns), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(i)| i.0 + WINDOW_NS)
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{lost, Clock};
    use crate::event::Lost;

    fn at(ts: u64) -> Event {
        let mut e = lost(Lost::default(), &Clock::fixed(0));
        e.ts_ns = ts;
        e
    }

    #[test]
    fn releases_in_time_order_after_the_window() {
        let mut r = Reorder::default();
        r.push(at(3_000_000_000));
        r.push(at(1_000_000_000));
        let mut out = Vec::new();
        r.release(1_000_000_000 + WINDOW_NS - 1, &mut |e| out.push(e.ts_ns));
        assert!(out.is_empty(), "still in the window");
        r.release(u64::MAX, &mut |e| out.push(e.ts_ns));
        assert_eq!(out, [1_000_000_000, 3_000_000_000]);
        // A straggler older than what went out keeps the output monotonic.
        r.push(at(5));
        assert_eq!(r.next_due(), Some(3_000_000_000 + WINDOW_NS));
    }
}
