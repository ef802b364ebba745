//! Many hosts: `mptcp-trace stats` (counters since start, like `nstat`) and `mptcp-trace
//! exporter` (Prometheus `/metrics`), two more sinks of the one pipeline. What each event
//! counts for is decided once ([`observe`]); [`tally`] sums it for `stats`, [`exporter`] keeps
//! it as Prometheus metrics, [`http`] serves them.

pub mod exporter;
pub mod http;
pub mod observe;
pub mod tally;

/// The pinned upgrade's counters, when one is pinned and readable.
pub fn pinned_upgrade() -> Option<tally::UpgradeCounts> {
    let s = crate::upgrade::pinned_status().ok()??;
    Some(tally::UpgradeCounts {
        sockets_seen: s.counts.seen,
        sockets_in_scope: s.counts.in_scope,
        sockets_upgraded: s.counts.upgraded,
    })
}
