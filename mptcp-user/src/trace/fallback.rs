//! Fallback after the handshake. A connection established over MPTCP can still fall back to
//! plain TCP while it has a single subflow: a DSS checksum fails (a middlebox changed the
//! payload) or the peer's data loses its mappings, and the two ends switch to an "infinite
//! mapping" (RFC 8684 §3.7). The kernel records it only in the MPTCP socket's flags — no
//! tracepoint, no netlink event — and the bit's number is not in BTF, so the programs cannot
//! read it on every kernel. `sock_diag` reports it in `mptcp_info` (`MPTCP_INFO_FLAG_FALLBACK`,
//! `ss -Mi`'s `fallback`), a stable interface.
//!
//! So while a connection can still fall back — established over MPTCP with a token, no
//! `conn_fallback` yet, no subflow joined (with two subflows errors reset a subflow instead) —
//! its namespace's MPTCP sockets are dumped every [`PERIOD`], and the first dump that shows
//! the flag yields its `conn_fallback` with reason `mid_connection`, stamped then: up to one
//! period after the fact. A fallback in the last period before the close is not seen (the
//! socket is gone). Nothing is polled while no connection can fall back.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use netlink_packet_sock_diag::inet::StateFlags;

use crate::{
    decode::Clock,
    event::{Conn, ConnFallback, Data, Event, Tuple},
    live::diag::Poller,
    sys::sockdiag::{self, IPPROTO_MPTCP, MPTCP_INFO_FLAG_FALLBACK},
};

/// How often the namespaces of the connections that may fall back are dumped.
pub const PERIOD: Duration = Duration::from_secs(1);

/// `conn_fallback`'s reason for a fallback seen after the handshake.
pub const MID_CONNECTION: &str = "mid_connection";

#[derive(Default)]
pub struct FallbackWatch {
    /// (netns, token) → what the connection's events said about it.
    candidates: HashMap<(u32, u32), (Conn, Tuple)>,
    /// The sock_diag sockets of the namespaces with candidates.
    poller: Poller,
    last_poll_ns: u64,
}

impl FallbackWatch {
    /// Follows an event leaving the pipeline.
    pub fn observe(&mut self, e: &Event) {
        let (Some(conn), Some(tuple)) = (e.conn(), e.tuple()) else {
            return;
        };
        let (Some(ns), Some(token)) = (conn.netns, conn.token) else {
            return;
        };
        let key = (ns, token.0);
        match &e.data {
            Data::ConnEstablished(_) if conn.protocol.is_none() => {
                self.candidates.insert(key, (conn.clone(), tuple.clone()));
            }
            // Open before the tracer started, on MPTCP and one subflow.
            Data::ConnExisting(c) if !c.fallback && c.subflows <= 1 => {
                self.candidates.insert(key, (conn.clone(), tuple.clone()));
            }
            Data::SubflowEstablished(s) if s.subflow.join => {
                self.candidates.remove(&key);
            }
            Data::ConnFallback(_) | Data::ConnClosed(_) => {
                self.candidates.remove(&key);
            }
            _ => {}
        }
    }

    /// Dumps, at most once a [`PERIOD`], the namespaces of the connections that may fall back,
    /// and hands out a `conn_fallback` for each that did.
    pub fn poll(&mut self, now_ns: u64, clock: &Clock, out: &mut impl FnMut(Event)) {
        if self.candidates.is_empty() {
            // Closes the sockets.
            self.poller.reach(&[]).for_each(drop);
            return;
        }
        if now_ns.saturating_sub(self.last_poll_ns) < PERIOD.as_nanos() as u64 {
            return;
        }
        self.last_poll_ns = now_ns;
        let mut namespaces: Vec<u32> = self.candidates.keys().map(|(ns, _)| *ns).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let states = StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT;
        let mut fell_back = Vec::new();
        let mut present = HashSet::new();
        let mut reached = HashSet::new();
        let mut dumped = HashSet::new();
        for (ns, d) in self.poller.reach(&namespaces) {
            reached.insert(ns);
            let socks = match d.sockets(IPPROTO_MPTCP, states.clone()) {
                Ok(v) => v,
                Err(e) => {
                    log::debug!("sock_diag dump of netns {ns}: {e}");
                    continue;
                }
            };
            dumped.insert(ns);
            for s in socks {
                let Some(info) = s.info.as_deref().and_then(sockdiag::parse_mptcp_info) else {
                    continue;
                };
                present.insert((ns, info.token));
                if info.flags & MPTCP_INFO_FLAG_FALLBACK != 0 {
                    fell_back.push((ns, info.token));
                }
            }
        }
        // A namespace that cannot be reached (gone) has nothing left to watch.
        self.candidates.retain(|(ns, _), _| reached.contains(ns));
        // A connection whose socket is gone can no longer fall back (its close may have been
        // lost, and counted): it is not polled for ever.
        self.candidates
            .retain(|key, _| !dumped.contains(&key.0) || present.contains(key));
        for key in fell_back {
            if let Some((conn, tuple)) = self.candidates.remove(&key) {
                out(Event::new(
                    now_ns,
                    clock.rfc3339(now_ns),
                    Data::ConnFallback(ConnFallback {
                        conn,
                        tuple,
                        reason: MID_CONNECTION.to_string(),
                    }),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnClosed, ConnEstablished, Family, Subflow, SubflowEstablished, Token};

    fn conn(token: u32) -> Conn {
        Conn {
            token: Some(Token(token)),
            netns: Some(7),
            ..Conn::default()
        }
    }

    fn tuple() -> Tuple {
        Tuple {
            family: Family::Ipv4,
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            daddr: "10.0.0.1".parse().unwrap(),
            dport: 4419,
        }
    }

    fn established(token: u32) -> Event {
        Event::new(
            1,
            String::new(),
            Data::ConnEstablished(ConnEstablished {
                conn: conn(token),
                tuple: tuple(),
                peer_deny_join_id0: None,
            }),
        )
    }

    #[test]
    fn only_connections_that_can_still_fall_back_are_watched() {
        let mut w = FallbackWatch::default();
        for t in [1, 2, 3, 4] {
            w.observe(&established(t));
        }
        // A join: with two subflows errors reset a subflow instead.
        w.observe(&Event::new(
            2,
            String::new(),
            Data::SubflowEstablished(SubflowEstablished {
                conn: conn(1),
                tuple: tuple(),
                subflow: Subflow {
                    ifindex: None,
                    ifname: None,
                    local_id: Some(1),
                    remote_id: 0,
                    backup: false,
                    peer_backup: false,
                    join: true,
                },
                existing: false,
            }),
        ));
        // Fell back at the handshake, or closed.
        w.observe(&Event::new(
            2,
            String::new(),
            Data::ConnFallback(ConnFallback {
                conn: conn(2),
                tuple: tuple(),
                reason: "mp_capable_not_negotiated".into(),
            }),
        ));
        w.observe(&Event::new(
            2,
            String::new(),
            Data::ConnClosed(ConnClosed {
                conn: conn(3),
                tuple: tuple(),
                duration_ns: None,
                subflows_total: 1,
            }),
        ));
        // Plain TCP (`--all-tcp`) never speaks MPTCP.
        let mut plain = established(5);
        if let Data::ConnEstablished(c) = &mut plain.data {
            c.conn.protocol = Some(crate::event::Protocol::Tcp);
        }
        w.observe(&plain);
        assert_eq!(w.candidates.keys().collect::<Vec<_>>(), [&(7, 4)]);
    }
}
