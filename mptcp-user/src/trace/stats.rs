//! `--stats-interval`: a `subflow_stats` record per open subflow every interval, from the
//! live view's `sock_diag` poller (one TCP dump with `tcp_info` per namespace that has open
//! subflows), matched to the traced subflows by 4-tuple as the live view's state does.
//!
//! The subflows it samples are those the pipeline has handed out (their `subflow_established`
//! passed the selector), so the records need no selector of their own; they go through the
//! reorder stage like every other event. A record released after its subflow's close (the
//! close was stamped earlier but still held) is dropped: the output never shows a subflow's
//! counters after its `subflow_closed`. Nothing exists, and nothing is polled, without the
//! option.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use crate::{
    decode::Clock,
    event::{Conn, Data, Event, Subflow, SubflowStats, Tuple},
    live::diag::{Poller, SockInfo},
};

/// The smallest interval accepted: each one is a netlink dump per namespace.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

type Endpoint = (IpAddr, u16);
/// (network namespace, local end, remote end), IPv4-mapped addresses as IPv4.
type Key = (u32, Endpoint, Endpoint);

/// An open subflow: what its records say about it, and its counters at the previous record.
struct Open {
    conn: Conn,
    tuple: Tuple,
    subflow: Subflow,
    /// When the previous record's sample was taken (its establishment before the first).
    at_ns: u64,
    sent: u64,
    acked: u64,
    received: u64,
    retrans: u32,
}

pub struct Stats {
    pub period: Duration,
    poller: Poller,
    open: HashMap<Key, Open>,
}

/// Parses `--stats-interval SECS`: seconds, fractions allowed, at least [`MIN_INTERVAL`].
/// `flag`'s value as a period: a number of seconds from 0.1 to 86400.
pub fn parse_interval(flag: &str, s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{flag} {s:?}: not a number of seconds (e.g. 1 or 0.5)"))?;
    if !secs.is_finite() || secs < MIN_INTERVAL.as_secs_f64() || secs > 86_400.0 {
        return Err(format!(
            "{flag} {s:?}: must be between {} and 86400 seconds",
            MIN_INTERVAL.as_secs_f64()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn key_of(netns: Option<u32>, t: &Tuple) -> Key {
    (
        netns.unwrap_or(0),
        (t.saddr.to_canonical(), t.sport),
        (t.daddr.to_canonical(), t.dport),
    )
}

impl Stats {
    pub fn new(period: Duration) -> Self {
        Stats {
            period,
            poller: Poller::default(),
            open: HashMap::new(),
        }
    }

    /// Follows an event leaving the pipeline. False for a `subflow_stats` record whose subflow
    /// is no longer open (drop it).
    pub fn observe(&mut self, e: &Event) -> bool {
        let ns = e.netns();
        match &e.data {
            Data::SubflowStats(s) => return self.open.contains_key(&key_of(ns, &s.tuple)),
            Data::SubflowEstablished(d) => {
                self.open.insert(
                    key_of(ns, &d.tuple),
                    Open {
                        conn: d.conn.clone(),
                        tuple: d.tuple.clone(),
                        subflow: d.subflow.clone(),
                        at_ns: e.ts_ns,
                        sent: 0,
                        acked: 0,
                        received: 0,
                        retrans: 0,
                    },
                );
            }
            Data::SubflowClosed(d) => {
                self.open.remove(&key_of(ns, &d.tuple));
            }
            Data::SubflowFailed(d) => {
                self.open.remove(&key_of(ns, &d.tuple));
            }
            Data::ConnClosed(d) => {
                let id = d.conn.ids.conn;
                let token = d.conn.token;
                self.open.retain(|k, o| {
                    !(k.0 == ns.unwrap_or(0)
                        && ((id != 0 && o.conn.ids.conn == id)
                            || (token.is_some() && o.conn.token == token)))
                });
            }
            _ => {}
        }
        // Later events of a connection may know more about it (its owner, the peer's token).
        if let Some(c) = e.conn() {
            if c.ids.conn != 0 {
                for o in self
                    .open
                    .values_mut()
                    .filter(|o| o.conn.ids.conn == c.ids.conn)
                {
                    if o.conn.pid.is_none() && c.pid.is_some() {
                        o.conn.pid = c.pid;
                        o.conn.comm.clone_from(&c.comm);
                    }
                    if o.conn.peer_token.is_none() {
                        o.conn.peer_token = c.peer_token;
                    }
                }
            }
        }
        true
    }

    /// Dumps the namespaces that have open subflows and makes a record for each subflow
    /// found, stamped `now_ns`.
    pub fn sample(&mut self, now_ns: u64, clock: &Clock, out: &mut impl FnMut(Event)) {
        let mut netns: Vec<u32> = self.open.keys().map(|k| k.0).collect();
        netns.sort_unstable();
        netns.dedup();
        if netns.is_empty() {
            return;
        }
        for (ns, socks) in self.poller.poll(&netns) {
            let index: HashMap<Key, &SockInfo> = socks
                .iter()
                .map(|s| {
                    let (l, r) = (s.local, s.remote);
                    (
                        (ns, (l.0.to_canonical(), l.1), (r.0.to_canonical(), r.1)),
                        s,
                    )
                })
                .collect();
            for (k, o) in self.open.iter_mut().filter(|(k, _)| k.0 == ns) {
                let Some(s) = index.get(k) else { continue };
                let rec = SubflowStats {
                    conn: o.conn.clone(),
                    tuple: o.tuple.clone(),
                    subflow: o.subflow.clone(),
                    interval_ns: now_ns.saturating_sub(o.at_ns),
                    bytes_sent_delta: s.bytes_sent.saturating_sub(o.sent),
                    bytes_acked_delta: s.bytes_acked.saturating_sub(o.acked),
                    bytes_received_delta: s.bytes_received.saturating_sub(o.received),
                    bytes_sent: s.bytes_sent,
                    bytes_acked: s.bytes_acked,
                    bytes_received: s.bytes_received,
                    retrans_delta: s.total_retrans.saturating_sub(o.retrans),
                    retrans: s.total_retrans,
                    srtt_us: s.rtt_us,
                    cwnd: s.snd_cwnd,
                    pacing_rate: s.pacing_rate,
                };
                o.at_ns = now_ns;
                o.sent = s.bytes_sent;
                o.acked = s.bytes_acked;
                o.received = s.bytes_received;
                o.retrans = s.total_retrans;
                out(Event::new(
                    now_ns,
                    clock.rfc3339(now_ns),
                    Data::SubflowStats(rec),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_positive_seconds() {
        assert_eq!(
            parse_interval("--stats-interval", "1"),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            parse_interval("--stats-interval", "0.5"),
            Ok(Duration::from_millis(500))
        );
        for bad in ["0", "-1", "x", "", "nan", "inf", "0.01", "1e9"] {
            assert!(parse_interval("--stats-interval", bad).is_err(), "{bad}");
        }
    }
}
