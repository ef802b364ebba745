//! The exporter's metrics: the [`Observation`]s of the pipeline's events as Prometheus
//! counters and histograms (the `prometheus-client` crate encodes them, in the Prometheus text
//! format or OpenMetrics), plus the tracer's own health: events lost by cause, skipped program
//! runs, programs attached, build info, and a pinned upgrade's socket counters.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use super::observe::{Measure, Observation, What, Who};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Owner {
    netns: String,
    comm: String,
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OwnerReason {
    netns: String,
    comm: String,
    cgroup: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Iface {
    ifname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

fn owner(w: &Who) -> Owner {
    Owner {
        netns: w.netns.clone(),
        comm: w.comm.clone(),
        cgroup: w.cgroup.clone(),
    }
}

fn owner_reason(w: &Who, reason: &str) -> OwnerReason {
    OwnerReason {
        netns: w.netns.clone(),
        comm: w.comm.clone(),
        cgroup: w.cgroup.clone(),
        reason: reason.to_string(),
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn small_counts() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0])
}

fn bytes() -> Histogram {
    // 1 KiB … 64 GiB.
    Histogram::new(exponential_buckets(1024.0, 4.0, 14))
}

/// Every metric the exporter serves.
pub struct Metrics {
    registry: Registry,
    by_owner: [(&'static str, Family<Owner, Counter>); 7],
    by_reason: [(&'static str, Family<OwnerReason, Counter>); 5],
    duration: Histograms<Owner>,
    first_join: Histograms<Owner>,
    subflows: Histograms<Owner>,
    subflow_bytes: Histograms<Iface>,
    lost: Family<Cause, Counter>,
    lost_seen: std::collections::HashMap<&'static str, u64>,
    skipped: Counter,
    skipped_seen: u64,
    programs: Gauge,
    upgrade: Family<Stage, Gauge>,
}

/// (observation name, metric name, help) of the counters by owner.
const OWNER_COUNTERS: [(&str, &str, &str); 7] = [
    (
        "opened",
        "connections_opened",
        "MPTCP connections created (conn_created)",
    ),
    (
        "established",
        "connections_established",
        "MPTCP connections established",
    ),
    ("closed", "connections_closed", "MPTCP connections closed"),
    (
        "existing",
        "connections_existing",
        "Connections open when the tracer started",
    ),
    ("joined", "subflows_joined", "MP_JOIN subflows established"),
    ("add_addr", "addr_announced", "ADD_ADDR received from peers"),
    ("rm_addr", "addr_removed", "RM_ADDR received from peers"),
];

/// The same for the counters with a reason.
const REASON_COUNTERS: [(&str, &str, &str); 5] = [
    (
        "fallback",
        "fallbacks",
        "Connections that fell back to TCP, by reason",
    ),
    (
        "subflow_failed",
        "subflows_failed",
        "Subflows that never got established, by errno",
    ),
    (
        "subflow_closed",
        "subflows_closed",
        "Subflows closed, by reason",
    ),
    (
        "reset_received",
        "resets_received",
        "Resets received on subflows, by MP_TCPRST reason (none: plain RST)",
    ),
    (
        "reset_sent",
        "resets_sent",
        "Resets sent on subflows, by the kernel's sk_rst_reason",
    ),
];

impl Metrics {
    pub fn new(programs: usize) -> Metrics {
        let mut registry = Registry::with_prefix("mptcp");
        let by_owner = OWNER_COUNTERS.map(|(key, name, help)| {
            let f = Family::<Owner, Counter>::default();
            registry.register(name, help, f.clone());
            (key, f)
        });
        let by_reason = REASON_COUNTERS.map(|(key, name, help)| {
            let f = Family::<OwnerReason, Counter>::default();
            registry.register(name, help, f.clone());
            (key, f)
        });
        let duration: Histograms<Owner> = Family::new_with_constructor(seconds);
        registry.register(
            "connection_duration_seconds",
            "Life of closed connections, from conn_created",
            duration.clone(),
        );
        let first_join: Histograms<Owner> = Family::new_with_constructor(seconds);
        registry.register(
            "first_join_seconds",
            "From conn_established to the connection's first established join",
            first_join.clone(),
        );
        let subflows: Histograms<Owner> = Family::new_with_constructor(small_counts);
        registry.register(
            "subflows_per_connection",
            "Subflows closed connections had",
            subflows.clone(),
        );
        let subflow_bytes: Histograms<Iface> = Family::new_with_constructor(bytes);
        registry.register(
            "subflow_bytes",
            "Bytes closed subflows carried (sent + received), by interface",
            subflow_bytes.clone(),
        );
        let trace = registry.sub_registry_with_prefix("trace");
        let lost = Family::<Cause, Counter>::default();
        trace.register(
            "events_lost",
            "Events the tracer lost, by cause",
            lost.clone(),
        );
        let skipped = Counter::default();
        trace.register(
            "skipped_program_runs",
            "Tracing program runs the kernel skipped (recursion misses, Linux >= 5.12)",
            skipped.clone(),
        );
        let programs_gauge = Gauge::default();
        programs_gauge.set(programs as i64);
        trace.register(
            "programs_attached",
            "Tracing programs attached",
            programs_gauge.clone(),
        );
        let build = Family::<Build, Gauge>::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        trace.register("build_info", "mptcp-trace's version", build);
        let upgrade = Family::<Stage, Gauge>::default();
        trace.register(
            "upgrade_sockets",
            "The pinned upgrade's TCP socket() counters (seen, in_scope, upgraded), when one is pinned",
            upgrade.clone(),
        );
        Metrics {
            registry,
            by_owner,
            by_reason,
            duration,
            first_join,
            subflows,
            subflow_bytes,
            lost,
            lost_seen: Default::default(),
            skipped,
            skipped_seen: 0,
            programs: programs_gauge,
            upgrade,
        }
    }

    pub fn add(&self, o: &Observation) {
        match &o.what {
            What::Count(c) => {
                let (key, reason) = c.name_and_reason();
                match reason {
                    None => {
                        if let Some((_, f)) = self.by_owner.iter().find(|(k, _)| *k == key) {
                            f.get_or_create(&owner(&o.who)).inc();
                        }
                    }
                    Some(r) => {
                        if let Some((_, f)) = self.by_reason.iter().find(|(k, _)| *k == key) {
                            f.get_or_create(&owner_reason(&o.who, r)).inc();
                        }
                    }
                }
            }
            What::Measure(m) => match m {
                Measure::Duration(s) => self.duration.get_or_create(&owner(&o.who)).observe(*s),
                Measure::FirstJoin(s) => self.first_join.get_or_create(&owner(&o.who)).observe(*s),
                Measure::Subflows(n) => self.subflows.get_or_create(&owner(&o.who)).observe(*n),
                Measure::SubflowBytes { ifname, bytes } => self
                    .subflow_bytes
                    .get_or_create(&Iface {
                        ifname: ifname.clone(),
                    })
                    .observe(*bytes),
            },
        }
    }

    /// Brings the health metrics to the pipeline's totals (cumulative values: the counters
    /// grow by the difference) and the pinned upgrade's counters.
    pub fn health(
        &mut self,
        lost: &crate::event::Lost,
        upgrade: Option<super::tally::UpgradeCounts>,
        programs: usize,
    ) {
        for (cause, now) in [
            ("ring_buffer", lost.ring_buffer),
            ("map_full", lost.map_full),
            ("stale_entry", lost.stale_entry),
            ("netlink", lost.netlink),
        ] {
            let seen = self.lost_seen.entry(cause).or_default();
            let c = self.lost.get_or_create(&Cause {
                cause: cause.into(),
            });
            c.inc_by(now.saturating_sub(*seen));
            *seen = (*seen).max(now);
        }
        if let Some(n) = lost.recursion_misses {
            self.skipped.inc_by(n.saturating_sub(self.skipped_seen));
            self.skipped_seen = self.skipped_seen.max(n);
        }
        self.programs.set(programs as i64);
        self.upgrade.clear();
        if let Some(u) = upgrade {
            for (stage, v) in [
                ("seen", u.sockets_seen),
                ("in_scope", u.sockets_in_scope),
                ("upgraded", u.sockets_upgraded),
            ] {
                self.upgrade
                    .get_or_create(&Stage {
                        stage: stage.into(),
                    })
                    .set(v as i64);
            }
        }
    }

    /// The body and its content type: OpenMetrics when the client's Accept header asks for
    /// it (Prometheus does), else the Prometheus text format (version 0.0.4).
    pub fn encode(&self, accept: &str) -> (String, &'static str) {
        let mut s = String::new();
        if accept.contains("application/openmetrics-text") {
            prometheus_client::encoding::text::encode(&mut s, &self.registry)
                .expect("writing to a String");
            (
                s,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)
                .expect("writing to a String");
            (
                s,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::observe::Observer;

    #[test]
    fn the_demo_capture_becomes_counters_and_histograms_in_both_formats() {
        let events = crate::capture::read(
            include_str!("../../../tests/data/demo-capture.ndjson").as_bytes(),
            "capture",
        )
        .unwrap();
        let mut m = Metrics::new(5);
        let mut obs = Observer::default();
        let mut out = Vec::new();
        for e in &events {
            obs.observe(e, &mut out);
        }
        for o in &out {
            m.add(o);
        }
        m.health(
            &crate::event::Lost {
                ring_buffer: 3,
                recursion_misses: Some(2),
                ..Default::default()
            },
            None,
            5,
        );
        let (text, ctype) = m.encode("*/*");
        assert!(ctype.starts_with("text/plain; version=0.0.4"));
        let line = |prefix: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
        };
        assert_eq!(line("mptcp_connections_opened_total{"), 2.0);
        assert_eq!(line("mptcp_subflows_joined_total{"), 2.0);
        assert_eq!(line("mptcp_subflows_closed_total{"), 4.0);
        assert_eq!(line("mptcp_subflows_per_connection_count{"), 2.0);
        assert_eq!(
            line("mptcp_trace_events_lost_total{cause=\"ring_buffer\"}"),
            3.0
        );
        assert_eq!(line("mptcp_trace_skipped_program_runs_total"), 2.0);
        assert_eq!(line("mptcp_trace_programs_attached"), 5.0);
        assert!(text.contains("mptcp_trace_build_info{version=\""), "{text}");
        // The same totals again do not count twice.
        m.health(
            &crate::event::Lost {
                ring_buffer: 3,
                ..Default::default()
            },
            None,
            5,
        );
        let (om, ctype) = m.encode("application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
        assert!(ctype.starts_with("application/openmetrics-text"));
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains("mptcp_trace_events_lost_total{cause=\"ring_buffer\"} 3\n"),
            "{om}"
        );
    }
}
