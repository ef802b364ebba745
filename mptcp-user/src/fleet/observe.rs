//! What an event counts for, decided once for `stats` and the exporter: every event becomes
//! zero or more [`Observation`]s — a counter to add one to, or a value for a histogram — under
//! the label set [`Who`] of its connection's owner (network namespace, command, cgroup).
//!
//! Label values are bounded: at most [`MAX_WHO`] distinct owners and [`MAX_IFACES`] interface
//! names are told apart; the rest are counted under `other`, so that a host running thousands
//! of short-lived commands or containers cannot grow the exporter without limit.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::event::{Data, Event};

/// Distinct (netns, comm, cgroup) label sets told apart; past it, `other`.
pub const MAX_WHO: usize = 100;
/// Distinct interface names told apart; past it, `other`.
pub const MAX_IFACES: usize = 32;
/// The label value everything past a cap is counted under.
pub const OTHER: &str = "other";

/// Whose activity a counter counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Who {
    /// The namespace's name under /run/netns, else its inode number.
    pub netns: String,
    /// The owner's command name (`?` when the tracer does not know the owner).
    pub comm: String,
    /// The owner's cgroup v2 path (`/system.slice/nginx.service`), `?` when not known.
    pub cgroup: String,
}

impl Who {
    pub fn other() -> Who {
        Who {
            netns: OTHER.into(),
            comm: OTHER.into(),
            cgroup: OTHER.into(),
        }
    }
}

/// A counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Count {
    /// conn_created.
    Opened,
    /// conn_established.
    Established,
    /// conn_closed.
    Closed,
    /// conn_existing: open when the tracer started.
    Existing,
    /// conn_fallback, by reason.
    Fallback(String),
    /// An MP_JOIN subflow established.
    Joined,
    /// subflow_failed, by errno name (else its reason).
    SubflowFailed(String),
    /// subflow_closed, by reason.
    SubflowClosed(String),
    /// A reset received on a subflow, by the peer's MP_TCPRST reason (`none`: a plain RST).
    ResetReceived(String),
    /// A reset this host sent on a subflow, by the kernel's `sk_rst_reason` (`unreported`
    /// on kernels that do not pass it).
    ResetSent(String),
    AddrAnnounced,
    AddrRemoved,
}

impl Count {
    /// The metric's short name and its reason label, if it has one.
    pub fn name_and_reason(&self) -> (&'static str, Option<&str>) {
        match self {
            Count::Opened => ("opened", None),
            Count::Established => ("established", None),
            Count::Closed => ("closed", None),
            Count::Existing => ("existing", None),
            Count::Fallback(r) => ("fallback", Some(r)),
            Count::Joined => ("joined", None),
            Count::SubflowFailed(r) => ("subflow_failed", Some(r)),
            Count::SubflowClosed(r) => ("subflow_closed", Some(r)),
            Count::ResetReceived(r) => ("reset_received", Some(r)),
            Count::ResetSent(r) => ("reset_sent", Some(r)),
            Count::AddrAnnounced => ("add_addr", None),
            Count::AddrRemoved => ("rm_addr", None),
        }
    }
}

/// A value for a histogram.
#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    /// A closed connection's life, seconds (from conn_created).
    Duration(f64),
    /// From conn_established to the first join, seconds.
    FirstJoin(f64),
    /// Subflows a closed connection had.
    Subflows(f64),
    /// Bytes a closed subflow carried (sent + received), by interface.
    SubflowBytes { ifname: String, bytes: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum What {
    Count(Count),
    Measure(Measure),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub who: Who,
    pub what: What,
}

/// How often names are looked up again when one is not known.
const RESCAN: Duration = Duration::from_secs(2);

/// Turns namespace inodes and cgroup ids into names, caching them.
#[derive(Default)]
struct Names {
    netns: HashMap<u32, String>,
    netns_scanned: Option<Instant>,
    cgroups: HashMap<u64, String>,
    cgroups_scanned: Option<Instant>,
}

impl Names {
    fn netns(&mut self, inode: Option<u32>) -> String {
        let Some(inode) = inode else {
            return "?".into();
        };
        if !self.netns.contains_key(&inode)
            && self.netns_scanned.is_none_or(|t| t.elapsed() >= RESCAN)
        {
            self.netns_scanned = Some(Instant::now());
            for (ino, path) in crate::sys::netns::all() {
                if let Some(n) = path
                    .strip_prefix(crate::sys::netns::NAMED_DIR)
                    .ok()
                    .and_then(|p| p.to_str())
                {
                    self.netns.insert(ino, n.to_string());
                }
            }
        }
        self.netns
            .get(&inode)
            .cloned()
            .unwrap_or_else(|| inode.to_string())
    }

    fn cgroup(&mut self, id: Option<u64>) -> String {
        let Some(id) = id else {
            return "?".into();
        };
        if !self.cgroups.contains_key(&id)
            && self.cgroups_scanned.is_none_or(|t| t.elapsed() >= RESCAN)
        {
            self.cgroups_scanned = Some(Instant::now());
            walk_cgroups(&mut self.cgroups);
        }
        self.cgroups
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id {id}"))
    }
}

/// Every cgroup v2 directory by id (its inode), as a path below the hierarchy's root (the
/// cgroup2 mount, wherever it is).
fn walk_cgroups(out: &mut HashMap<u64, String>) {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = crate::sys::cgroup::mount() else {
        return;
    };
    for dir in crate::sys::cgroup::dirs(&root) {
        if let Ok(m) = std::fs::metadata(&dir) {
            let rel = dir.strip_prefix(&root).unwrap_or(&dir);
            out.insert(m.ino(), format!("/{}", rel.display()));
        }
    }
}

/// Turns events into observations.
#[derive(Default)]
pub struct Observer {
    names: Names,
    /// Owners told apart so far (at most [`MAX_WHO`]).
    whos: HashSet<Who>,
    ifaces: HashSet<String>,
    /// conn_established time of connections without a join yet, by connection.
    waiting_join: HashMap<u64, u64>,
}

impl Observer {
    /// The label set of `e`'s owner, `other` past the cap.
    fn who(&mut self, e: &Event) -> Who {
        let (comm, cgroup) = match &e.data {
            Data::SocketUpgraded(u) => (Some(u.comm.clone()), u.cgroup),
            _ => (e.comm().map(str::to_string), e.ids().cgroup),
        };
        let who = Who {
            netns: self.names.netns(e.netns()),
            comm: comm.map_or("?".into(), |c| crate::text::printable(&c).into_owned()),
            cgroup: self.names.cgroup(cgroup),
        };
        if self.whos.contains(&who) {
            return who;
        }
        if self.whos.len() < MAX_WHO {
            self.whos.insert(who.clone());
            return who;
        }
        Who::other()
    }

    fn iface(&mut self, name: Option<&str>) -> String {
        let name = crate::text::printable(name.unwrap_or("?")).into_owned();
        if self.ifaces.contains(&name) || self.ifaces.len() < MAX_IFACES {
            self.ifaces.insert(name.clone());
            name
        } else {
            OTHER.into()
        }
    }

    /// The observations `e` makes, appended to `out`.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Observation>) {
        let mut whats = Vec::new();
        let key = e.ids().conn;
        match &e.data {
            Data::ConnCreated(_) => whats.push(What::Count(Count::Opened)),
            Data::ConnEstablished(_) => {
                whats.push(What::Count(Count::Established));
                if key != 0 {
                    self.waiting_join.insert(key, e.ts_ns);
                }
            }
            Data::ConnExisting(_) => whats.push(What::Count(Count::Existing)),
            Data::ConnFallback(f) => {
                whats.push(What::Count(Count::Fallback(f.reason.clone())));
                self.waiting_join.remove(&key);
            }
            Data::ConnClosed(c) => {
                whats.push(What::Count(Count::Closed));
                if let Some(d) = c.duration_ns {
                    whats.push(What::Measure(Measure::Duration(d as f64 / 1e9)));
                }
                whats.push(What::Measure(Measure::Subflows(c.subflows_total as f64)));
                self.waiting_join.remove(&key);
            }
            Data::SubflowEstablished(s) if s.subflow.join && !s.existing => {
                whats.push(What::Count(Count::Joined));
                if let Some(t) = self.waiting_join.remove(&key) {
                    whats.push(What::Measure(Measure::FirstJoin(
                        e.ts_ns.saturating_sub(t) as f64 / 1e9,
                    )));
                }
            }
            Data::SubflowFailed(f) => {
                whats.push(What::Count(Count::SubflowFailed(
                    f.cause.error.clone().unwrap_or_else(|| f.reason.clone()),
                )));
                whats.extend(resets(&f.reason, &f.cause));
            }
            Data::SubflowClosed(c) => {
                whats.push(What::Count(Count::SubflowClosed(c.reason.clone())));
                whats.extend(resets(&c.reason, &c.cause));
                let ifname = self.iface(c.subflow.ifname.as_deref());
                whats.push(What::Measure(Measure::SubflowBytes {
                    ifname,
                    bytes: (c.bytes_sent + c.bytes_received) as f64,
                }));
            }
            Data::AddrAnnounced(_) => whats.push(What::Count(Count::AddrAnnounced)),
            Data::AddrRemoved(_) => whats.push(What::Count(Count::AddrRemoved)),
            _ => {}
        }
        if whats.is_empty() {
            return;
        }
        // Bounded: connections whose establishment was seen but whose close was lost.
        if self.waiting_join.len() > 100_000 {
            self.waiting_join.clear();
        }
        let who = self.who(e);
        out.extend(whats.into_iter().map(|what| Observation {
            who: who.clone(),
            what,
        }));
    }
}

/// The resets a subflow's end shows: received (the peer's MP_TCPRST reason, `none` for a
/// plain RST) or sent (the kernel's reason, `unreported` where it does not pass one).
fn resets(reason: &str, cause: &crate::event::Cause) -> Option<What> {
    if reason == "rst_received" || reason.starts_with("mp_tcprst") {
        Some(What::Count(Count::ResetReceived(
            cause.reset_reason.clone().unwrap_or_else(|| "none".into()),
        )))
    } else if reason == "rst_sent" {
        Some(What::Count(Count::ResetSent(
            cause
                .reset_sent_reason
                .clone()
                .unwrap_or_else(|| "unreported".into()),
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<Event> {
        crate::capture::read(
            include_str!("../../../tests/data/demo-capture.ndjson").as_bytes(),
            "capture",
        )
        .unwrap()
    }

    #[test]
    fn the_demo_capture_counts_two_connections_two_joins_and_four_closes() {
        let mut o = Observer::default();
        let mut out = Vec::new();
        for e in events() {
            o.observe(&e, &mut out);
        }
        let count = |c: Count| {
            out.iter()
                .filter(|ob| ob.what == What::Count(c.clone()))
                .count()
        };
        assert_eq!(count(Count::Opened), 2);
        assert_eq!(count(Count::Established), 2);
        assert_eq!(count(Count::Joined), 2);
        assert_eq!(count(Count::Closed), 2);
        assert_eq!(count(Count::SubflowClosed("closed".into())), 4);
        // The capture has no kernel addresses (ids.conn 0): no first-join timing from it.
        assert!(out
            .iter()
            .any(|ob| matches!(ob.what, What::Measure(Measure::Subflows(n)) if n == 2.0)));
        assert!(out.iter().all(|ob| ob.who.comm == "mptcp-trace"));
    }

    #[test]
    fn owners_past_the_cap_are_other() {
        let mut o = Observer::default();
        let first = events().remove(0);
        let mut out = Vec::new();
        for i in 0..MAX_WHO + 5 {
            let mut e = first.clone();
            if let Some(c) = e.conn_mut() {
                c.comm = Some(format!("c{i}"));
            }
            o.observe(&e, &mut out);
        }
        assert_eq!(out.len(), MAX_WHO + 5);
        assert_eq!(out.iter().filter(|ob| ob.who == Who::other()).count(), 5);
    }

    #[test]
    fn resets_are_told_by_direction_and_reason() {
        let c = crate::event::Cause {
            reset_reason: Some("prohibited".into()),
            ..Default::default()
        };
        assert_eq!(
            resets("mp_tcprst:prohibited", &c),
            Some(What::Count(Count::ResetReceived("prohibited".into())))
        );
        assert_eq!(
            resets("rst_received", &Default::default()),
            Some(What::Count(Count::ResetReceived("none".into())))
        );
        assert_eq!(
            resets("rst_sent", &Default::default()),
            Some(What::Count(Count::ResetSent("unreported".into())))
        );
        assert_eq!(resets("closed", &Default::default()), None);
    }
}
