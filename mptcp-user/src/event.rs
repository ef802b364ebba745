//! The typed event: what `--json` prints (schema version 1, see the README), what the text
//! output and the live view read. Built from a raw ring-buffer record by [`crate::decode`].
//!
//! Fields are added, never renamed. Each is optional so that one struct serves every kind;
//! which kinds carry which fields is documented on the field and in the README.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

pub const SCHEMA_VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An MPTCP socket started connecting, or a listener accepted an MP_CAPABLE SYN.
    ConnCreated,
    /// The connection is established.
    ConnEstablished,
    /// The connection fell back to plain TCP.
    ConnFallback,
    /// The MPTCP socket closed.
    ConnClosed,
    /// The initial subflow or an MP_JOIN subflow reached ESTABLISHED.
    SubflowEstablished,
    /// A subflow closed.
    SubflowClosed,
    /// The peer announced an address (ADD_ADDR), from the kernel's MPTCP netlink events.
    AddrAnnounced,
    /// The peer withdrew an address (RM_ADDR), from the kernel's MPTCP netlink events.
    AddrRemoved,
    /// Events were dropped because the ring buffer was full.
    Lost,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConnCreated => "conn_created",
            Kind::ConnEstablished => "conn_established",
            Kind::ConnFallback => "conn_fallback",
            Kind::ConnClosed => "conn_closed",
            Kind::SubflowEstablished => "subflow_established",
            Kind::SubflowClosed => "subflow_closed",
            Kind::AddrAnnounced => "addr_announced",
            Kind::AddrRemoved => "addr_removed",
            Kind::Lost => "lost",
        }
    }

    pub fn is_subflow(self) -> bool {
        matches!(self, Kind::SubflowEstablished | Kind::SubflowClosed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A plain TCP connection (shown with `--all-tcp`).
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One event, schema version 1.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Schema version: 1.
    pub v: u8,
    /// Wall-clock time of the event, RFC 3339 with nanoseconds (UTC).
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds, as the kernel stamped the event.
    pub ts_ns: u64,
    pub event: Kind,
    /// The connection's local token, 8 lowercase hex digits, as `ip mptcp monitor` prints it in
    /// this network namespace.
    pub token: Option<String>,
    /// Inode number of the network namespace (`ls -L -i /run/netns/NAME`, `lsns -t net`).
    pub netns: Option<u32>,
    /// Process that owns the MPTCP socket (also for subflows a kworker created). Absent when the
    /// connection predates the tracer.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `tcp` on the conn_* events of plain TCP connections (`--all-tcp`); absent for MPTCP.
    pub protocol: Option<Protocol>,
    /// `ipv4` or `ipv6`.
    pub family: Option<Family>,
    /// Local address of the socket the event is about.
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// conn_created: whether this end connected or accepted.
    pub side: Option<Side>,
    /// conn_fallback: why; subflow_closed: `closed`, `rst_received`, `rst_sent`,
    /// `mp_tcprst:<reason>` (the peer's MP_TCPRST reason) or an errno name.
    pub reason: Option<String>,
    /// conn_closed: time since conn_created.
    pub duration_ns: Option<u64>,
    /// conn_closed: subflows established over the connection's life.
    pub subflows_total: Option<u32>,
    /// subflow_*: interface of the subflow's route.
    pub ifindex: Option<u32>,
    pub ifname: Option<String>,
    /// subflow_*: MPTCP address ids (`ip mptcp endpoint show` ids); addr_*: the id the peer
    /// gave the address.
    pub local_id: Option<i32>,
    pub remote_id: Option<u8>,
    /// addr_announced: the address the peer announced (and its port, when it gave one).
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub backup: Option<bool>,
    /// subflow_*: true for an MP_JOIN subflow, false for the initial one.
    pub join: Option<bool>,
    /// subflow_closed: TCP counters of the subflow (`tcp_info` names).
    pub bytes_sent: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
    pub retrans: Option<u32>,
    /// subflow_closed: smoothed RTT in microseconds.
    pub srtt_us: Option<u32>,
    /// lost: how many events were dropped since the previous `lost` event.
    pub count: Option<u64>,
    /// Cgroup id (inode of the cgroup v2 directory) of the owning process.
    #[serde(skip)]
    #[schemars(skip)]
    pub cgroup_id: Option<u64>,
    /// Kernel address of the MPTCP socket: the connection's identity within one run. Not part of
    /// the schema; used to group subflows before the token is known.
    #[serde(skip)]
    #[schemars(skip)]
    pub conn_id: u64,
    /// Kernel address of the subflow socket (subflow events), likewise internal.
    #[serde(skip)]
    #[schemars(skip)]
    pub subflow_id: u64,
}

impl Event {
    /// An event with only the common fields set.
    pub fn new(event: Kind, ts_ns: u64, time: String) -> Self {
        Event {
            v: SCHEMA_VERSION,
            time,
            ts_ns,
            event,
            token: None,
            netns: None,
            pid: None,
            comm: None,
            protocol: None,
            family: None,
            saddr: None,
            sport: None,
            daddr: None,
            dport: None,
            side: None,
            reason: None,
            duration_ns: None,
            subflows_total: None,
            ifindex: None,
            ifname: None,
            local_id: None,
            remote_id: None,
            addr: None,
            port: None,
            backup: None,
            join: None,
            bytes_sent: None,
            bytes_acked: None,
            bytes_received: None,
            retrans: None,
            srtt_us: None,
            count: None,
            cgroup_id: None,
            conn_id: 0,
            subflow_id: 0,
        }
    }
}

/// The JSON schema of one NDJSON line.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Event)).expect("schema serializes")
}
