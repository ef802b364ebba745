//! `stats`' counters since start: the [`Observation`] counts per owner, summed per network
//! namespace and per command, and the reasons behind fallbacks, failed and closed subflows and
//! resets — printed like `nstat`/`vmstat` every interval, or as one JSON object per interval.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;

use super::observe::{Count, Observation, What, Who};

/// One owner's (or a sum's) counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub opened: u64,
    pub established: u64,
    pub closed: u64,
    pub existing: u64,
    pub fallbacks: u64,
    pub joined: u64,
    pub subflows_failed: u64,
    pub subflows_closed: u64,
    pub resets_received: u64,
    pub resets_sent: u64,
    pub add_addr: u64,
    pub rm_addr: u64,
}

impl Counters {
    fn add(&mut self, c: &Count) {
        let slot = match c {
            Count::Opened => &mut self.opened,
            Count::Established => &mut self.established,
            Count::Closed => &mut self.closed,
            Count::Existing => &mut self.existing,
            Count::Fallback(_) => &mut self.fallbacks,
            Count::Joined => &mut self.joined,
            Count::SubflowFailed(_) => &mut self.subflows_failed,
            Count::SubflowClosed(_) => &mut self.subflows_closed,
            Count::ResetReceived(_) => &mut self.resets_received,
            Count::ResetSent(_) => &mut self.resets_sent,
            Count::AddrAnnounced => &mut self.add_addr,
            Count::AddrRemoved => &mut self.rm_addr,
        };
        *slot += 1;
    }

    fn merge(&mut self, o: &Counters) {
        self.opened += o.opened;
        self.established += o.established;
        self.closed += o.closed;
        self.existing += o.existing;
        self.fallbacks += o.fallbacks;
        self.joined += o.joined;
        self.subflows_failed += o.subflows_failed;
        self.subflows_closed += o.subflows_closed;
        self.resets_received += o.resets_received;
        self.resets_sent += o.resets_sent;
        self.add_addr += o.add_addr;
        self.rm_addr += o.rm_addr;
    }

    /// Activity, for the top-N order.
    fn activity(&self) -> u64 {
        self.opened + self.existing + self.joined + self.subflows_failed + self.fallbacks
    }

    fn cells(&self) -> [u64; 12] {
        [
            self.opened,
            self.established,
            self.closed,
            self.existing,
            self.fallbacks,
            self.joined,
            self.subflows_failed,
            self.subflows_closed,
            self.resets_received,
            self.resets_sent,
            self.add_addr,
            self.rm_addr,
        ]
    }
}

const HEADS: [&str; 12] = [
    "opened",
    "estab",
    "closed",
    "existing",
    "fallback",
    "joined",
    "sf_fail",
    "sf_closed",
    "rst_rx",
    "rst_tx",
    "add_addr",
    "rm_addr",
];

/// Counters since start.
#[derive(Default)]
pub struct Tally {
    by_who: BTreeMap<Who, Counters>,
    /// (kind, reason) → count, for the counters that have a reason.
    reasons: BTreeMap<(&'static str, String), u64>,
}

/// A group's row in the JSON.
#[derive(Serialize)]
pub struct Row {
    pub name: String,
    #[serde(flatten)]
    pub counters: Counters,
}

/// What `stats --json` prints each interval.
#[derive(Serialize)]
pub struct Snapshot {
    /// RFC 3339 wall-clock time of the snapshot.
    pub time: String,
    pub uptime_s: f64,
    pub total: Counters,
    /// Per network namespace, most active first (at most `top`).
    pub netns: Vec<Row>,
    /// Per command, most active first (at most `top`).
    pub comm: Vec<Row>,
    /// kind → reason → count (`fallback`, `subflow_failed`, `subflow_closed`,
    /// `reset_received`, `reset_sent`).
    pub reasons: BTreeMap<String, BTreeMap<String, u64>>,
    pub lost: crate::event::Lost,
    /// The pinned upgrade's counters, when one is pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeCounts>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct UpgradeCounts {
    pub sockets_seen: u64,
    pub sockets_in_scope: u64,
    pub sockets_upgraded: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Observation) {
        let What::Count(c) = &o.what else { return };
        self.by_who.entry(o.who.clone()).or_default().add(c);
        if let (kind, Some(r)) = c.name_and_reason() {
            *self.reasons.entry((kind, r.to_string())).or_default() += 1;
        }
    }

    fn grouped(&self, key: impl Fn(&Who) -> String, top: usize) -> Vec<Row> {
        let mut m: BTreeMap<String, Counters> = BTreeMap::new();
        for (w, c) in &self.by_who {
            m.entry(key(w)).or_default().merge(c);
        }
        let mut v: Vec<Row> = m
            .into_iter()
            .map(|(name, counters)| Row { name, counters })
            .collect();
        v.sort_by(|a, b| {
            b.counters
                .activity()
                .cmp(&a.counters.activity())
                .then(a.name.cmp(&b.name))
        });
        v.truncate(top);
        v
    }

    pub fn snapshot(
        &self,
        time: String,
        uptime_s: f64,
        top: usize,
        lost: crate::event::Lost,
        upgrade: Option<UpgradeCounts>,
    ) -> Snapshot {
        let mut total = Counters::default();
        for c in self.by_who.values() {
            total.merge(c);
        }
        let mut reasons: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((kind, r), n) in &self.reasons {
            reasons
                .entry((*kind).to_string())
                .or_default()
                .insert(r.clone(), *n);
        }
        Snapshot {
            time,
            uptime_s,
            total,
            netns: self.grouped(|w| w.netns.clone(), top),
            comm: self.grouped(|w| w.comm.clone(), top),
            reasons,
            lost,
            upgrade,
        }
    }
}

impl Snapshot {
    /// The text form: a table (total, then namespaces and commands), the reasons, the loss.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{}  since start {:.1}s",
            self.time.get(..19).unwrap_or(&self.time),
            self.uptime_s
        );
        let rows: Vec<(String, &Counters)> = std::iter::once(("total".to_string(), &self.total))
            .chain(
                self.netns
                    .iter()
                    .map(|r| (format!("netns {}", r.name), &r.counters)),
            )
            .chain(
                self.comm
                    .iter()
                    .map(|r| (format!("comm {}", r.name), &r.counters)),
            )
            .collect();
        let label_w = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(5);
        let mut widths: Vec<usize> = HEADS.iter().map(|h| h.len()).collect();
        for (_, c) in &rows {
            for (w, v) in widths.iter_mut().zip(c.cells()) {
                *w = (*w).max(v.to_string().len());
            }
        }
        let _ = write!(o, "{:label_w$}", "");
        for (h, w) in HEADS.iter().zip(&widths) {
            let _ = write!(o, " {h:>w$}");
        }
        o.push('\n');
        for (name, c) in &rows {
            let _ = write!(o, "{name:label_w$}");
            for (v, w) in c.cells().iter().zip(&widths) {
                let _ = write!(o, " {v:>w$}");
            }
            o.push('\n');
        }
        for (kind, m) in &self.reasons {
            let parts: Vec<String> = m.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = writeln!(o, "{kind}: {}", parts.join(", "));
        }
        if let Some(u) = &self.upgrade {
            let _ = writeln!(
                o,
                "pinned upgrade: TCP sockets seen {}, in scope {}, upgraded {}",
                u.sockets_seen, u.sockets_in_scope, u.sockets_upgraded
            );
        }
        let l = &self.lost;
        let _ = writeln!(
            o,
            "lost {} (ring buffer {}, map full {}, stale entries {}, skipped program runs {}, netlink overruns {})",
            l.count,
            l.ring_buffer,
            l.map_full,
            l.stale_entry,
            l.recursion_misses
                .map_or(crate::upgrade::raw_bpf::MISSES_UNKNOWN.into(), |n| n.to_string()),
            l.netlink
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(netns: &str, comm: &str, c: Count) -> Observation {
        Observation {
            who: Who {
                netns: netns.into(),
                comm: comm.into(),
                cgroup: "/".into(),
            },
            what: What::Count(c),
        }
    }

    #[test]
    fn counts_sum_per_namespace_and_command_with_reasons() {
        let mut t = Tally::default();
        for o in [
            obs("a", "curl", Count::Opened),
            obs("a", "curl", Count::Opened),
            obs("a", "wget", Count::Opened),
            obs("b", "curl", Count::Joined),
            obs(
                "a",
                "curl",
                Count::Fallback("mp_capable_not_negotiated".into()),
            ),
            obs("a", "curl", Count::SubflowFailed("ECONNREFUSED".into())),
        ] {
            t.add(&o);
        }
        let s = t.snapshot(
            "2026-12-06T00:00:00Z".into(),
            1.0,
            10,
            Default::default(),
            None,
        );
        assert_eq!(s.total.opened, 3);
        assert_eq!(s.total.joined, 1);
        assert_eq!(s.netns[0].name, "a");
        assert_eq!(s.netns[0].counters.opened, 3);
        assert_eq!(s.comm[0].name, "curl");
        assert_eq!(s.comm[0].counters.opened, 2);
        assert_eq!(s.reasons["subflow_failed"]["ECONNREFUSED"], 1);
        let text = s.text();
        assert!(
            text.contains("fallback: mp_capable_not_negotiated 1"),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("netns a ")), "{text}");
        // Top 1: only the most active of each.
        let s = t.snapshot(String::new(), 1.0, 1, Default::default(), None);
        assert_eq!((s.netns.len(), s.comm.len()), (1, 1));
    }
}
