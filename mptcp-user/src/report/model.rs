//! What a report shows, built from a capture's events alone: connections in the order they
//! started, each with its subflows as lanes (from established or failed to closed), their
//! `subflow_stats` samples (and, for a sampled subflow that closed, one more at its close with
//! the bytes since the last: the samples add up to its totals), the connection's fallback,
//! announcements and diagnoses.
//!
//! A connection is its namespace and token (plain TCP: its endpoints); a conn_created after
//! that connection's conn_closed starts a new one (tokens are reused). A subflow is its
//! endpoints within the connection. A capture that starts mid-connection still shows it, from
//! its first line.

use std::{collections::HashMap, net::IpAddr};

use crate::event::{Data, Event, Side, Token, Tuple};

/// How a lane ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still open at the end of the capture.
    Open,
    /// subflow_closed with this reason (`closed`, `rst_received`, …).
    Closed(String),
    /// subflow_failed: never established; the reason.
    Failed(String),
}

impl End {
    /// A reset or a failure, which the timeline marks in red.
    pub fn is_bad(&self) -> bool {
        match self {
            End::Open => false,
            End::Closed(r) => r != "closed",
            End::Failed(_) => true,
        }
    }

    pub fn label(&self) -> String {
        match self {
            End::Open => "open".into(),
            End::Closed(r) => r.clone(),
            End::Failed(r) => format!("failed: {r}"),
        }
    }
}

/// One `subflow_stats` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub sent: u64,
    pub received: u64,
    pub srtt_us: u32,
}

impl Sample {
    /// Bytes per second, both directions, over the record's interval.
    pub fn rate(&self) -> f64 {
        (self.sent + self.received) as f64 * 1e9 / self.interval_ns.max(1) as f64
    }
}

/// One subflow.
#[derive(Clone, Debug)]
pub struct Lane {
    pub tuple: Tuple,
    pub ifname: Option<String>,
    pub join: bool,
    pub backup: bool,
    pub peer_backup: bool,
    /// Open when the tracer started (from its snapshot).
    pub existing: bool,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub end: End,
    /// At close (else the last sample's totals).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub srtt_us: Option<u32>,
    pub samples: Vec<Sample>,
}

/// One connection.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub token: Option<Token>,
    pub peer_token: Option<Token>,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub side: Option<Side>,
    /// The initial subflow's endpoints.
    pub tuple: Option<Tuple>,
    /// Open when the tracer started.
    pub existing: bool,
    pub start_ns: u64,
    /// Wall-clock time of its first line.
    pub start_time: String,
    pub end_ns: Option<u64>,
    /// conn_fallback: when and why.
    pub fallback: Option<(u64, String)>,
    /// addr_announced: when, remote id, address.
    pub announced: Vec<(u64, u8, Option<IpAddr>)>,
    /// conn_diagnosis: cause and detail.
    pub diagnoses: Vec<(String, String)>,
    pub lanes: Vec<Lane>,
}

impl Connection {
    pub fn bytes_sent(&self) -> u64 {
        self.lanes.iter().map(|l| l.bytes_sent).sum()
    }

    pub fn bytes_received(&self) -> u64 {
        self.lanes.iter().map(|l| l.bytes_received).sum()
    }

    /// Lanes that were established (failed joins excluded).
    pub fn established(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| !matches!(l.end, End::Failed(_)))
            .count()
    }

    pub fn has_samples(&self) -> bool {
        self.lanes.iter().any(|l| !l.samples.is_empty())
    }
}

/// The whole capture.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub conns: Vec<Connection>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub first_time: String,
    pub events: usize,
    /// Events the tracer said it lost (`lost` records).
    pub lost: u64,
}

impl Lane {
    /// A lane for the subflow `sf` with endpoints `tuple`, from `start_ns`, still open.
    fn open(tuple: &Tuple, sf: &crate::event::Subflow, start_ns: u64) -> Lane {
        Lane {
            tuple: tuple.clone(),
            ifname: sf.ifname.clone(),
            join: sf.join,
            backup: sf.backup,
            peer_backup: sf.peer_backup,
            existing: false,
            start_ns,
            end_ns: None,
            end: End::Open,
            bytes_sent: 0,
            bytes_received: 0,
            srtt_us: None,
            samples: Vec::new(),
        }
    }
}

type ConnKey = (
    Option<u32>,
    Option<Token>,
    Option<(IpAddr, u16, IpAddr, u16)>,
);

fn ends(t: &Tuple) -> (IpAddr, u16, IpAddr, u16) {
    (
        t.saddr.to_canonical(),
        t.sport,
        t.daddr.to_canonical(),
        t.dport,
    )
}

impl Report {
    pub fn build(events: &[Event]) -> Report {
        let mut r = Report {
            first_ns: events.first().map_or(0, |e| e.ts_ns),
            first_time: events.first().map_or(String::new(), |e| e.time.clone()),
            events: events.len(),
            ..Report::default()
        };
        // The connection each key currently names (its index), and whether it closed.
        let mut open: HashMap<ConnKey, usize> = HashMap::new();
        for e in events {
            r.first_ns = r.first_ns.min(e.ts_ns);
            r.last_ns = r.last_ns.max(e.ts_ns);
            if let Data::Lost(l) = &e.data {
                r.lost += l.count;
                continue;
            }
            let Some(c) = e.conn() else { continue };
            let token = e.token();
            let key: ConnKey = (
                e.netns(),
                token,
                if token.is_none() {
                    e.tuple().map(ends)
                } else {
                    None
                },
            );
            let starts = matches!(e.data, Data::ConnCreated(_) | Data::ConnExisting(_));
            let idx = match open.get(&key) {
                Some(&i) if !(starts && r.conns[i].end_ns.is_some()) => i,
                _ => {
                    if matches!(e.data, Data::AddrAnnounced(_) | Data::AddrRemoved(_)) {
                        // An announcement for a connection the capture has no line of.
                        continue;
                    }
                    r.conns.push(Connection {
                        token,
                        start_ns: e.ts_ns,
                        start_time: e.time.clone(),
                        ..Connection::default()
                    });
                    open.insert(key, r.conns.len() - 1);
                    r.conns.len() - 1
                }
            };
            let conn = &mut r.conns[idx];
            conn.peer_token = conn.peer_token.or(c.peer_token);
            conn.netns = conn.netns.or(c.netns);
            conn.pid = conn.pid.or(c.pid);
            if conn.comm.is_none() {
                conn.comm = c.comm.clone();
            }
            apply(conn, e);
        }
        r
    }

    pub fn subflows(&self) -> usize {
        self.conns.iter().map(|c| c.lanes.len()).sum()
    }
}

fn lane_of<'a>(conn: &'a mut Connection, t: &Tuple) -> Option<&'a mut Lane> {
    let k = ends(t);
    // The latest lane with these endpoints (a port can be reused after a close).
    conn.lanes.iter_mut().rev().find(|l| ends(&l.tuple) == k)
}

fn apply(conn: &mut Connection, e: &Event) {
    let ts = e.ts_ns;
    match &e.data {
        Data::ConnCreated(d) => {
            conn.side = Some(d.side);
            conn.tuple = Some(d.tuple.clone());
        }
        Data::ConnExisting(d) => {
            conn.existing = true;
            conn.side = d.side;
            conn.tuple = Some(d.tuple.clone());
            if d.fallback {
                conn.fallback = Some((ts, "open as plain TCP at start".into()));
            }
        }
        Data::ConnEstablished(d) => {
            if conn.tuple.is_none() {
                conn.tuple = Some(d.tuple.clone());
            }
        }
        Data::ConnFallback(d) => conn.fallback = Some((ts, d.reason.clone())),
        Data::ConnClosed(_) => {
            conn.end_ns = Some(ts);
            for l in &mut conn.lanes {
                l.end_ns.get_or_insert(ts);
            }
        }
        Data::SubflowEstablished(d) => conn.lanes.push(Lane {
            existing: d.existing,
            ..Lane::open(&d.tuple, &d.subflow, ts)
        }),
        Data::SubflowFailed(d) => conn.lanes.push(Lane {
            end_ns: Some(ts),
            end: End::Failed(d.reason.clone()),
            ..Lane::open(&d.tuple, &d.subflow, ts)
        }),
        Data::SubflowClosed(d) => {
            if lane_of(conn, &d.tuple).is_none() {
                // Established before the capture began.
                let start = conn.start_ns;
                conn.lanes.push(Lane::open(&d.tuple, &d.subflow, start));
            }
            let l = lane_of(conn, &d.tuple).expect("pushed above");
            // The bytes moved between the last sample and the close, as one more sample at
            // the close: the samples then add up to the close counters (the lane's totals
            // are the last sample's until here).
            if let Some(last) = l.samples.last() {
                if l.end == End::Open && ts > last.ts_ns {
                    let tail = Sample {
                        ts_ns: ts,
                        interval_ns: ts - last.ts_ns,
                        sent: d.bytes_sent.saturating_sub(l.bytes_sent),
                        received: d.bytes_received.saturating_sub(l.bytes_received),
                        srtt_us: d.srtt_us,
                    };
                    l.samples.push(tail);
                }
            }
            l.end_ns = Some(ts);
            l.end = End::Closed(d.reason.clone());
            l.bytes_sent = d.bytes_sent;
            l.bytes_received = d.bytes_received;
            l.srtt_us = Some(d.srtt_us);
            if l.ifname.is_none() {
                l.ifname = d.subflow.ifname.clone();
            }
        }
        Data::SubflowStats(d) => {
            if let Some(l) = lane_of(conn, &d.tuple) {
                l.samples.push(Sample {
                    ts_ns: ts,
                    interval_ns: d.interval_ns,
                    sent: d.bytes_sent_delta,
                    received: d.bytes_received_delta,
                    srtt_us: d.srtt_us,
                });
                if l.end == End::Open {
                    l.bytes_sent = d.bytes_sent;
                    l.bytes_received = d.bytes_received;
                    l.srtt_us = Some(d.srtt_us);
                }
            }
        }
        Data::AddrAnnounced(a) => conn.announced.push((ts, a.remote_id, a.addr)),
        Data::ConnDiagnosis(d) => conn.diagnoses.push((d.cause.clone(), d.detail.clone())),
        Data::AddrRemoved(_) | Data::SocketUpgraded(_) | Data::Lost(_) => {}
    }
}
