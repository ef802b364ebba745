//! The userspace part of the selector: addresses, ports, tokens and the family, matched against
//! every event of a connection. A connection matches when each of those filters is satisfied
//! by one of its events (a join subflow may carry the address asked for), so events of a
//! connection that has not matched yet are held back and released, in order, the moment it
//! does; a connection that closes without matching is dropped with its held events. The
//! verdict is kept per connection (network namespace + kernel socket address) only while the
//! connection lives: a new connection on a reused socket address starts afresh, because the
//! kernel starts it with conn_created, which clears whatever its key held (the previous
//! connection's close may have been lost), and the verdict is forgotten at conn_closed.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use crate::{
    event::{Data, Event, Kind},
    select::ConnFilter,
};

/// At most this many events are held for one connection that has not matched yet; later ones
/// replace the oldest held (counted).
pub const MAX_HELD: usize = 64;

const TOKEN: u8 = 1 << 0;
const PORT: u8 = 1 << 1;
const ADDR: u8 = 1 << 2;
const FAMILY: u8 = 1 << 3;

enum State {
    Matched,
    Pending { seen: u8, held: VecDeque<Event> },
}

pub struct ConnMatcher {
    f: ConnFilter,
    need: u8,
    conns: HashMap<(u32, u64), State>,
    /// Events not shown because their connection never matched.
    pub filtered: u64,
    /// Held events dropped because a connection held more than [`MAX_HELD`].
    pub overflowed: u64,
}

impl ConnMatcher {
    pub fn new(f: ConnFilter) -> Self {
        let mut need = 0;
        if !f.tokens.is_empty() {
            need |= TOKEN;
        }
        if !f.ports.is_empty() {
            need |= PORT;
        }
        if !f.addrs.is_empty() {
            need |= ADDR;
        }
        if f.family.is_some() {
            need |= FAMILY;
        }
        ConnMatcher {
            f,
            need,
            conns: HashMap::new(),
            filtered: 0,
            overflowed: 0,
        }
    }

    /// Which filters this one event satisfies.
    fn satisfied(&self, e: &Event) -> u8 {
        let mut s = 0;
        if e.token().is_some_and(|t| self.f.tokens.contains(&t.0)) {
            s |= TOKEN;
        }
        if e.family().is_some_and(|f| Some(f) == self.f.family) {
            s |= FAMILY;
        }
        let (addrs, ports): ([Option<IpAddr>; 2], [Option<u16>; 2]) = match (&e.data, e.tuple()) {
            (_, Some(t)) => (
                [Some(t.saddr), Some(t.daddr)],
                [Some(t.sport), Some(t.dport)],
            ),
            (Data::AddrAnnounced(a) | Data::AddrRemoved(a), None) => {
                ([a.addr, None], [a.port, None])
            }
            _ => ([None, None], [None, None]),
        };
        if addrs.iter().flatten().any(|a| self.f.addrs.contains(a)) {
            s |= ADDR;
        }
        if ports.iter().flatten().any(|p| self.f.ports.contains(p)) {
            s |= PORT;
        }
        s
    }

    /// Whether a connection whose events so far are `events` matches (the verdict for the
    /// connections of the start-up snapshot, which are judged as a whole at once).
    pub fn matches_all(&self, events: &[Event]) -> bool {
        let seen = events.iter().fold(0, |s, e| s | self.satisfied(e));
        seen & self.need == self.need
    }

    /// Passes `e` (and, when it completes a match, the events held before it) to `out`.
    pub fn push(&mut self, e: Event, out: &mut impl FnMut(Event)) {
        // socket_upgraded was scoped at socket() (the upgrade's own policy), and it has no
        // connection to judge it by.
        if self.need == 0 || matches!(e.kind(), Kind::Lost | Kind::SocketUpgraded) {
            return out(e);
        }
        let key = match e.conn() {
            Some(c) if c.ids.conn != 0 => (c.netns.unwrap_or(0), c.ids.conn),
            // Not tied to a connection we saw: judged alone.
            _ => {
                if self.satisfied(&e) & self.need == self.need {
                    out(e);
                } else {
                    self.filtered += 1;
                }
                return;
            }
        };
        let closing = e.kind() == Kind::ConnClosed;
        if e.kind() == Kind::ConnCreated {
            // A new connection: whatever is kept under its key belongs to an earlier one at
            // the same socket address whose close was lost (counted as lost where it was
            // lost). Its verdict must not decide this one, nor its held events be released
            // with it.
            if let Some(State::Pending { held, .. }) = self.conns.remove(&key) {
                self.filtered += held.len() as u64;
            }
        }
        let sat = self.satisfied(&e);
        let need = self.need;
        let state = self.conns.entry(key).or_insert_with(|| State::Pending {
            seen: 0,
            held: VecDeque::new(),
        });
        match state {
            State::Matched => out(e),
            State::Pending { seen, held } => {
                *seen |= sat;
                if *seen & need == need {
                    for h in held.drain(..) {
                        out(h);
                    }
                    out(e);
                    *state = State::Matched;
                } else if closing {
                    self.filtered += held.len() as u64 + 1;
                } else {
                    if held.len() == MAX_HELD {
                        held.pop_front();
                        self.overflowed += 1;
                    }
                    held.push_back(e);
                }
            }
        }
        if closing {
            self.conns.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::{tests::sample, to_event, Clock},
        event::{Family, Token},
    };
    use mptcp_common::EventKind;

    fn ev(kind: EventKind, conn: u64, saddr: [u8; 4]) -> Event {
        let mut r = sample(kind);
        r.conn = conn;
        r.saddr[..4].copy_from_slice(&saddr);
        to_event(&r, &Clock::fixed(0)).unwrap()
    }

    fn run(m: &mut ConnMatcher, evs: Vec<Event>) -> Vec<Kind> {
        let mut out = Vec::new();
        for e in evs {
            m.push(e, &mut |e| out.push(e.kind()));
        }
        out
    }

    #[test]
    fn an_address_used_only_by_a_join_selects_the_whole_connection() {
        let mut m = ConnMatcher::new(ConnFilter {
            addrs: vec!["192.168.0.2".parse().unwrap()],
            ..ConnFilter::default()
        });
        let shown = run(
            &mut m,
            vec![
                ev(EventKind::ConnCreated, 1, [10, 0, 0, 2]),
                ev(EventKind::SubflowEstablished, 1, [10, 0, 0, 2]),
                ev(EventKind::SubflowEstablished, 1, [192, 168, 0, 2]),
                ev(EventKind::ConnClosed, 1, [10, 0, 0, 2]),
                // Another connection that never uses the address.
                ev(EventKind::ConnCreated, 2, [10, 0, 0, 2]),
                ev(EventKind::ConnClosed, 2, [10, 0, 0, 2]),
            ],
        );
        assert_eq!(
            shown,
            [
                Kind::ConnCreated,
                Kind::SubflowEstablished,
                Kind::SubflowEstablished,
                Kind::ConnClosed
            ]
        );
        assert_eq!(m.filtered, 2);
        assert!(m.conns.is_empty(), "verdicts forgotten at close");
    }

    #[test]
    fn a_reused_socket_address_is_judged_again() {
        let mut m = ConnMatcher::new(ConnFilter {
            tokens: vec![0x0a0b0c0d],
            ..ConnFilter::default()
        });
        let mut other = ev(EventKind::ConnCreated, 7, [10, 0, 0, 2]);
        other.conn_mut().unwrap().token = Some(Token(1));
        let mut other_close = ev(EventKind::ConnClosed, 7, [10, 0, 0, 2]);
        other_close.conn_mut().unwrap().token = Some(Token(1));
        let shown = run(
            &mut m,
            vec![
                ev(EventKind::ConnCreated, 7, [10, 0, 0, 2]),
                ev(EventKind::ConnClosed, 7, [10, 0, 0, 2]),
                other,
                other_close,
            ],
        );
        assert_eq!(shown, [Kind::ConnCreated, Kind::ConnClosed]);
    }

    /// The close of the first connection at address 7 was lost: neither its verdict
    /// (matched) nor, in the second case, its held events may reach the next connection there.
    #[test]
    fn a_conn_created_forgets_a_connection_whose_close_was_lost() {
        let token = |kind, t| {
            let mut e = ev(kind, 7, [10, 0, 0, 2]);
            e.conn_mut().unwrap().token = Some(Token(t));
            e
        };
        let mut m = ConnMatcher::new(ConnFilter {
            tokens: vec![0x0a0b0c0d],
            ..ConnFilter::default()
        });
        let shown = run(
            &mut m,
            vec![
                token(EventKind::ConnCreated, 0x0a0b0c0d),
                // No conn_closed: lost.
                token(EventKind::ConnCreated, 1),
                token(EventKind::ConnClosed, 1),
            ],
        );
        assert_eq!(shown, [Kind::ConnCreated], "the old verdict was reused");
        assert!(m.conns.is_empty());

        let mut m = ConnMatcher::new(ConnFilter {
            tokens: vec![0x0a0b0c0d],
            ..ConnFilter::default()
        });
        let shown = run(
            &mut m,
            vec![
                token(EventKind::ConnCreated, 1),
                token(EventKind::SubflowEstablished, 1),
                // No conn_closed: lost. The next connection matches.
                token(EventKind::ConnCreated, 0x0a0b0c0d),
                token(EventKind::ConnClosed, 0x0a0b0c0d),
            ],
        );
        assert_eq!(
            shown,
            [Kind::ConnCreated, Kind::ConnClosed],
            "held events of the old connection were released with the new one"
        );
        assert_eq!(m.filtered, 2);
    }

    #[test]
    fn family_and_port_together() {
        let mut m = ConnMatcher::new(ConnFilter {
            ports: vec![4321],
            family: Some(Family::Ipv6),
            ..ConnFilter::default()
        });
        let shown = run(&mut m, vec![ev(EventKind::ConnCreated, 1, [10, 0, 0, 2])]);
        assert!(shown.is_empty(), "IPv4: held, never matches");
    }

    #[test]
    fn held_events_beyond_the_limit_are_counted() {
        let mut m = ConnMatcher::new(ConnFilter {
            addrs: vec!["192.168.0.2".parse().unwrap()],
            ..ConnFilter::default()
        });
        let mut evs: Vec<Event> = (0..MAX_HELD + 5)
            .map(|_| ev(EventKind::SubflowEstablished, 1, [10, 0, 0, 2]))
            .collect();
        evs.push(ev(EventKind::SubflowEstablished, 1, [192, 168, 0, 2]));
        let shown = run(&mut m, evs);
        assert_eq!(shown.len(), MAX_HELD + 1, "the newest held, then the match");
        assert_eq!(m.overflowed, 5);
    }
}
