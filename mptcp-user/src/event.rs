//! The typed event: one enum, one variant per kind, with the parts kinds share (the connection,
//! its endpoints, the subflow) flattened in. It is what `--json` prints (schema version 1, see
//! the README), what the text output and the live view read, and what `mptcp-trace schema`
//! describes — per kind, with the fields each kind always carries marked required.
//!
//! Serialization order is the NDJSON order and is part of the contract: `v`, `time`, `ts_ns`,
//! `event`, the connection, the endpoints, then the kind's own fields. Fields are added, never
//! renamed; a field this kernel cannot know is absent, never guessed.

use std::{fmt, net::IpAddr};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::skip_serializing_none;

pub const SCHEMA_VERSION: u8 = 1;

/// The event kinds, as the `event` field names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ConnCreated,
    ConnEstablished,
    ConnFallback,
    ConnClosed,
    ConnExisting,
    SubflowEstablished,
    SubflowClosed,
    SubflowFailed,
    AddrAnnounced,
    AddrRemoved,
    ConnDiagnosis,
    SocketUpgraded,
    SubflowStats,
    Lost,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConnCreated => "conn_created",
            Kind::ConnEstablished => "conn_established",
            Kind::ConnFallback => "conn_fallback",
            Kind::ConnClosed => "conn_closed",
            Kind::ConnExisting => "conn_existing",
            Kind::SubflowEstablished => "subflow_established",
            Kind::SubflowClosed => "subflow_closed",
            Kind::SubflowFailed => "subflow_failed",
            Kind::AddrAnnounced => "addr_announced",
            Kind::AddrRemoved => "addr_removed",
            Kind::ConnDiagnosis => "conn_diagnosis",
            Kind::SocketUpgraded => "socket_upgraded",
            Kind::SubflowStats => "subflow_stats",
            Kind::Lost => "lost",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// The name `--json` and the text output give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A plain TCP connection (shown with `--all-tcp`).
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The name `--json` and the text output give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    pub fn of(a: IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// An MPTCP token: 32 bits, written as 8 lowercase hex digits (what `ip mptcp monitor` prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u32);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl Token {
    /// The 8 lowercase hex digits, without formatting machinery (the NDJSON writer's and
    /// serde's form).
    pub fn hex(self) -> [u8; 8] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 8];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((self.0 >> (28 - 4 * i)) & 0xf) as usize];
        }
        buf
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 8
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(serde::de::Error::custom(
                "a token is 8 lowercase hex digits",
            ));
        }
        u32::from_str_radix(&s, 16)
            .map(Token)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Token {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Token".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "An MPTCP token: 8 lowercase hex digits, as `ip mptcp monitor` prints it.",
            "type": "string",
            "pattern": "^[0-9a-f]{8}$"
        })
    }
}

fn ip_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "string",
        "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }]
    })
}

fn date_time_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "string", "format": "date-time" })
}

/// Kernel identities of the sockets an event is about: the connection's identity within one
/// run, used to group events before the token is known. Never serialized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Kernel address of the MPTCP socket (0 when not known).
    pub conn: u64,
    /// Kernel address of the subflow socket (subflow events).
    pub subflow: u64,
    /// Cgroup id (inode of the cgroup v2 directory) of the owning process.
    pub cgroup: Option<u64>,
}

/// What every event about a connection carries.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Conn {
    /// The connection's local token, as `ip mptcp monitor` prints it in this network namespace;
    /// absent for plain TCP connections.
    pub token: Option<Token>,
    /// The token the peer uses for this connection (the same connection's `token` in the
    /// peer's events): derived from the peer's key as the kernel does, once the keys were
    /// exchanged (from conn_established on); absent on subflow_closed/subflow_failed.
    pub peer_token: Option<Token>,
    /// Inode number of the network namespace (`ls -L -i /run/netns/NAME`, `lsns -t net`).
    pub netns: Option<u32>,
    /// Process that owns the MPTCP socket (also for subflows a kworker created).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `tcp` on the conn_* events of plain TCP connections (`--all-tcp`); absent for MPTCP.
    pub protocol: Option<Protocol>,
    #[serde(skip)]
    #[schemars(skip)]
    pub ids: Ids,
}

/// The endpoints of the socket the event is about (local side first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tuple {
    pub family: Family,
    #[schemars(schema_with = "ip_schema")]
    pub saddr: IpAddr,
    pub sport: u16,
    #[schemars(schema_with = "ip_schema")]
    pub daddr: IpAddr,
    pub dport: u16,
}

/// What the subflow events say about the subflow.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Subflow {
    /// Interface of the subflow's route.
    pub ifindex: Option<u32>,
    pub ifname: Option<String>,
    /// MPTCP address ids (`ip mptcp endpoint show` ids); absent while not assigned.
    pub local_id: Option<u8>,
    pub remote_id: u8,
    /// This side asked for backup priority on the subflow (`ss`: flag `b`).
    pub backup: bool,
    /// The peer asked for backup priority on the subflow (`ss`: flag `B`).
    pub peer_backup: bool,
    /// True for an MP_JOIN subflow, false for the initial one.
    pub join: bool,
}

/// Why a subflow ended, as data: each field only when there is evidence for it.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cause {
    /// The socket error that ended it (`sk_err`, what the kernel's SUB_CLOSED `error=` shows),
    /// as an errno name: `ECONNREFUSED`, `ETIMEDOUT`, `ECONNRESET`, …
    pub error: Option<String>,
    /// The reason the peer gave in MP_TCPRST: `unspec`, `mptcp`, `resource`, `prohibited`,
    /// `wq2big`, `badperf`, `middlebox`.
    pub reset_reason: Option<String>,
    /// Why this host sent a reset on it: the kernel's `enum sk_rst_reason` name without its
    /// `SK_RST_REASON_` prefix, lowercase (`not_specified`, `mptcp_rst_eprohibit`, …; Linux ≥
    /// 6.10, absent before).
    pub reset_sent_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnCreated {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// Whether this end connected or accepted.
    pub side: Side,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnEstablished {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// Client side: whether the peer forbids joins to its initial address and port (the C
    /// flag of its MP_CAPABLE, `deny_join_id0`). Absent on the server side and on kernels
    /// that do not record it.
    #[serde(default)]
    pub peer_deny_join_id0: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnFallback {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// Why the connection continues as plain TCP: `mp_capable_not_negotiated` (at the
    /// handshake the peer, or a middlebox, did not echo MP_CAPABLE) or `mid_connection` (it
    /// had been established over MPTCP and fell back later, e.g. to an infinite mapping after
    /// a DSS checksum failed; seen through sock_diag's fallback flag within a second, and
    /// stamped then).
    pub reason: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnClosed {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// Time since conn_created; absent when the connection predates the tracer.
    pub duration_ns: Option<u64>,
    /// Subflows established over the connection's life.
    pub subflows_total: u32,
}

/// `conn_existing`: a connection that was open when the tracer started, from its start-up
/// snapshot (sock_diag), reported once before any other event. Its open subflows follow as
/// `subflow_established` records with `existing: true`.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnExisting {
    #[serde(flatten)]
    pub conn: Conn,
    /// The initial subflow's endpoints (the first subflow found when it is gone).
    #[serde(flatten)]
    pub tuple: Tuple,
    /// `server` when an MPTCP listener in the namespace has the local port; absent when the
    /// snapshot has no evidence either way (never guessed).
    pub side: Option<Side>,
    /// Subflows open at the snapshot.
    pub subflows: u32,
    /// The connection continues as plain TCP (`mptcp_info` flag FALLBACK).
    pub fallback: bool,
    /// ADD_ADDRs this end announced, and the peer's it accepted (`mptcp_info`).
    pub add_addr_signal: u8,
    pub add_addr_accepted: u8,
    /// The path manager's subflow limit for this connection (`mptcp_info`).
    pub subflows_max: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubflowEstablished {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    #[serde(flatten)]
    pub subflow: Subflow,
    /// True on the records of `conn_existing`: the subflow was open when the tracer started
    /// (its establishment was not seen); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubflowClosed {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// `closed`, `rst_received`, `rst_sent`, `mp_tcprst:<reason>` (the peer's MP_TCPRST
    /// reason) or an errno name.
    pub reason: String,
    #[serde(flatten)]
    pub cause: Cause,
    #[serde(flatten)]
    pub subflow: Subflow,
    /// TCP counters of the subflow at close (`tcp_info` names).
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retrans: u32,
    /// Smoothed RTT in microseconds.
    pub srtt_us: u32,
}

/// `subflow_failed`: a subflow that closed without ever being established — a connect or an
/// MP_JOIN that was refused, reset or timed out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubflowFailed {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    /// As in subflow_closed: the most specific of `mp_tcprst:<reason>`, `rst_received`,
    /// `rst_sent`, an errno name, `closed`.
    pub reason: String,
    #[serde(flatten)]
    pub cause: Cause,
    #[serde(flatten)]
    pub subflow: Subflow,
    /// SYN retransmissions before it failed.
    pub retrans: u32,
}

/// `addr_announced` / `addr_removed`, from the kernel's MPTCP path-manager netlink events.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Addr {
    #[serde(flatten)]
    pub conn: Conn,
    /// The connection's family, when the connection is known.
    pub family: Option<Family>,
    /// The id the peer gave the address.
    pub remote_id: u8,
    /// addr_announced: the address and, when the peer gave one, its port.
    #[serde(default)]
    #[schemars(schema_with = "ip_schema")]
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

/// `conn_diagnosis`: why a connection has fewer subflows than its configuration allows, why a
/// join failed, or why it fell back to TCP — concluded by the diagnosis stage
/// (`trace::diagnosis`) from the evidence it names, never guessed. At most one per cause per
/// connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnDiagnosis {
    #[serde(flatten)]
    pub conn: Conn,
    /// The connection's initial subflow (a failed join's own endpoints are in `evidence`).
    #[serde(flatten)]
    pub tuple: Tuple,
    /// A stable snake_case identifier: `join_refused`, `join_timed_out`, `no_subflow_endpoint`,
    /// `subflow_limit`, `peer_refused_join`, `add_addr_ignored`, `fallback`, `join_auth_failed`,
    /// `endpoint_unusable`, `unknown` (see the README's "Why only one subflow?").
    pub cause: String,
    /// One sentence for a human, with the numbers.
    pub detail: String,
    /// What it was concluded from: events with their fields, the namespace's path-manager
    /// configuration, MPTcpExt counter deltas.
    pub evidence: Vec<String>,
}

/// What became of a TCP `socket()` call the upgrade saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeOutcome {
    /// The caller got an MPTCP socket.
    Upgraded,
    /// The caller got the plain TCP socket it asked for: `reason` says why.
    KeptTcp,
    /// `--count-only`: it would have been upgraded; it stayed TCP.
    Counted,
    /// The call failed with the errno in `reason`, as the kernel's own `socket()` would have
    /// (seccomp method: the MPTCP socket could not be installed in the caller, e.g. EMFILE).
    Failed,
}

impl UpgradeOutcome {
    /// The name `--json` and the text output give it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeOutcome::Upgraded => "upgraded",
            UpgradeOutcome::KeptTcp => "kept_tcp",
            UpgradeOutcome::Counted => "counted",
            UpgradeOutcome::Failed => "failed",
        }
    }
}

/// `socket_upgraded`: one TCP `socket()` call in the upgrade's scope. Not tied to a connection
/// (the socket has none yet): the connection events that follow carry the same pid.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SocketUpgraded {
    /// The calling process (thread group id).
    pub pid: u32,
    /// The calling thread's command name.
    pub comm: String,
    /// Cgroup v2 id (inode of the cgroup directory) of the caller; absent when unknown.
    pub cgroup: Option<u64>,
    /// The family the caller asked for.
    pub family: Family,
    /// `bpf` (fmod_ret on update_socket_protocol) or `seccomp` (user notification on socket()).
    pub method: crate::upgrade::seccomp::Method,
    pub outcome: UpgradeOutcome,
    /// kept_tcp and failed: the errno name of the cause (`ENOPROTOOPT`: `net.mptcp.enabled = 0`
    /// in the caller's network namespace; `EPROTONOSUPPORT`: no MPTCP in the kernel).
    pub reason: Option<String>,
    /// The caller asked for SOCK_NONBLOCK (kept on the MPTCP socket).
    pub nonblock: bool,
    /// The caller asked for SOCK_CLOEXEC (kept on the MPTCP socket).
    pub cloexec: bool,
}

/// `subflow_stats` (`--stats-interval`): an open subflow's TCP counters, read with sock_diag
/// (`tcp_info`, what `ss -ti` shows) every interval. The deltas count since the subflow's
/// previous record — the first since the subflow began (for a subflow open before the tracer
/// started, that includes what it carried before) — so a subflow's deltas add up to its totals.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubflowStats {
    #[serde(flatten)]
    pub conn: Conn,
    #[serde(flatten)]
    pub tuple: Tuple,
    #[serde(flatten)]
    pub subflow: Subflow,
    /// The time the deltas cover: since the previous record of this subflow, or since its
    /// subflow_established.
    pub interval_ns: u64,
    /// Bytes sent (retransmissions included), acknowledged by the peer, and received, since
    /// the previous record.
    pub bytes_sent_delta: u64,
    pub bytes_acked_delta: u64,
    pub bytes_received_delta: u64,
    /// The same counters since the subflow began (`tcp_info` names, as in subflow_closed).
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Retransmitted segments since the previous record, and in all (`tcpi_total_retrans`).
    pub retrans_delta: u32,
    pub retrans: u32,
    /// Smoothed RTT in microseconds.
    pub srtt_us: u32,
    /// Congestion window, in segments (`tcpi_snd_cwnd`).
    pub cwnd: u32,
    /// Pacing rate in bytes per second (`tcpi_pacing_rate`); absent when the socket is not
    /// paced (the kernel reports "unlimited").
    pub pacing_rate: Option<u64>,
}

/// Events that went missing since the previous `lost` event, by cause.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lost {
    /// Total of the causes below.
    pub count: u64,
    /// Ring-buffer reservations that failed (the reader was too slow).
    pub ring_buffer: u64,
    /// Connections or subflows the programs could not track (their map was full).
    pub map_full: u64,
    /// Entries whose close was never seen, replaced when the kernel reused their socket.
    #[serde(default)]
    pub stale_entry: u64,
    /// Program runs the kernel skipped because they would have re-entered on one CPU
    /// (`bpf_prog_info.recursion_misses`, Linux ≥ 5.12; absent where the kernel cannot tell).
    pub recursion_misses: Option<u64>,
    /// Path-manager netlink messages the kernel dropped because our socket was full.
    pub netlink: u64,
}

/// The kind-specific part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Data {
    /// An MPTCP socket started connecting, or a listener accepted an MP_CAPABLE SYN.
    ConnCreated(ConnCreated),
    /// The connection is established.
    ConnEstablished(ConnEstablished),
    /// The connection fell back to plain TCP.
    ConnFallback(ConnFallback),
    /// The MPTCP socket closed (after its subflows).
    ConnClosed(ConnClosed),
    /// A connection open when the tracer started (its start-up snapshot).
    ConnExisting(ConnExisting),
    /// The initial subflow or an MP_JOIN subflow reached ESTABLISHED.
    SubflowEstablished(SubflowEstablished),
    /// A subflow closed.
    SubflowClosed(SubflowClosed),
    /// A subflow closed without ever being established.
    SubflowFailed(SubflowFailed),
    /// The peer announced an address (ADD_ADDR).
    AddrAnnounced(Addr),
    /// The peer withdrew an address (RM_ADDR).
    AddrRemoved(Addr),
    /// Why the connection has fewer subflows than configured, a join failed, or it fell back.
    ConnDiagnosis(ConnDiagnosis),
    /// The upgrade saw a TCP `socket()` call in its scope and turned it into MPTCP (or says why
    /// not).
    SocketUpgraded(SocketUpgraded),
    /// An open subflow's counters, every `--stats-interval`.
    SubflowStats(SubflowStats),
    /// Events went missing; loss is never silent.
    Lost(Lost),
}

/// One event, schema version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Schema version: 1.
    #[schemars(range(min = 1, max = 1))]
    pub v: u8,
    /// Wall-clock time of the event, RFC 3339 with nanoseconds (UTC).
    #[schemars(schema_with = "date_time_schema")]
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds, as the kernel stamped the event.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub data: Data,
}

impl Event {
    pub fn new(ts_ns: u64, time: String, data: Data) -> Self {
        Event {
            v: SCHEMA_VERSION,
            time,
            ts_ns,
            data,
        }
    }

    pub fn kind(&self) -> Kind {
        match &self.data {
            Data::ConnCreated(_) => Kind::ConnCreated,
            Data::ConnEstablished(_) => Kind::ConnEstablished,
            Data::ConnFallback(_) => Kind::ConnFallback,
            Data::ConnClosed(_) => Kind::ConnClosed,
            Data::ConnExisting(_) => Kind::ConnExisting,
            Data::SubflowEstablished(_) => Kind::SubflowEstablished,
            Data::SubflowClosed(_) => Kind::SubflowClosed,
            Data::SubflowFailed(_) => Kind::SubflowFailed,
            Data::AddrAnnounced(_) => Kind::AddrAnnounced,
            Data::AddrRemoved(_) => Kind::AddrRemoved,
            Data::ConnDiagnosis(_) => Kind::ConnDiagnosis,
            Data::SocketUpgraded(_) => Kind::SocketUpgraded,
            Data::SubflowStats(_) => Kind::SubflowStats,
            Data::Lost(_) => Kind::Lost,
        }
    }

    /// The connection part (every kind but `lost` and `socket_upgraded`).
    pub fn conn(&self) -> Option<&Conn> {
        Some(match &self.data {
            Data::ConnCreated(d) => &d.conn,
            Data::ConnEstablished(d) => &d.conn,
            Data::ConnFallback(d) => &d.conn,
            Data::ConnClosed(d) => &d.conn,
            Data::ConnExisting(d) => &d.conn,
            Data::SubflowEstablished(d) => &d.conn,
            Data::SubflowClosed(d) => &d.conn,
            Data::SubflowFailed(d) => &d.conn,
            Data::AddrAnnounced(d) | Data::AddrRemoved(d) => &d.conn,
            Data::ConnDiagnosis(d) => &d.conn,
            Data::SubflowStats(d) => &d.conn,
            Data::Lost(_) | Data::SocketUpgraded(_) => return None,
        })
    }

    pub fn conn_mut(&mut self) -> Option<&mut Conn> {
        Some(match &mut self.data {
            Data::ConnCreated(d) => &mut d.conn,
            Data::ConnEstablished(d) => &mut d.conn,
            Data::ConnFallback(d) => &mut d.conn,
            Data::ConnClosed(d) => &mut d.conn,
            Data::ConnExisting(d) => &mut d.conn,
            Data::SubflowEstablished(d) => &mut d.conn,
            Data::SubflowClosed(d) => &mut d.conn,
            Data::SubflowFailed(d) => &mut d.conn,
            Data::AddrAnnounced(d) | Data::AddrRemoved(d) => &mut d.conn,
            Data::ConnDiagnosis(d) => &mut d.conn,
            Data::SubflowStats(d) => &mut d.conn,
            Data::Lost(_) | Data::SocketUpgraded(_) => return None,
        })
    }

    /// The endpoints of the socket the event is about (conn_* and subflow_*).
    pub fn tuple(&self) -> Option<&Tuple> {
        Some(match &self.data {
            Data::ConnCreated(d) => &d.tuple,
            Data::ConnEstablished(d) => &d.tuple,
            Data::ConnFallback(d) => &d.tuple,
            Data::ConnClosed(d) => &d.tuple,
            Data::ConnExisting(d) => &d.tuple,
            Data::SubflowEstablished(d) => &d.tuple,
            Data::SubflowClosed(d) => &d.tuple,
            Data::SubflowFailed(d) => &d.tuple,
            Data::ConnDiagnosis(d) => &d.tuple,
            Data::SubflowStats(d) => &d.tuple,
            _ => return None,
        })
    }

    /// The subflow part (subflow_*).
    pub fn subflow(&self) -> Option<&Subflow> {
        match &self.data {
            Data::SubflowEstablished(d) => Some(&d.subflow),
            Data::SubflowClosed(d) => Some(&d.subflow),
            Data::SubflowFailed(d) => Some(&d.subflow),
            Data::SubflowStats(d) => Some(&d.subflow),
            _ => None,
        }
    }

    pub fn token(&self) -> Option<Token> {
        self.conn()?.token
    }

    pub fn netns(&self) -> Option<u32> {
        self.conn()?.netns
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.data {
            Data::SocketUpgraded(u) => Some(u.pid),
            _ => self.conn()?.pid,
        }
    }

    pub fn comm(&self) -> Option<&str> {
        match &self.data {
            Data::SocketUpgraded(u) => Some(&u.comm),
            _ => self.conn()?.comm.as_deref(),
        }
    }

    pub fn ids(&self) -> Ids {
        self.conn().map(|c| c.ids).unwrap_or_default()
    }

    /// The family of the socket or connection the event is about.
    pub fn family(&self) -> Option<Family> {
        match &self.data {
            Data::AddrAnnounced(d) | Data::AddrRemoved(d) => d.family,
            Data::SocketUpgraded(u) => Some(u.family),
            _ => self.tuple().map(|t| t.family),
        }
    }
}

/// The JSON schema (draft 2020-12) of one NDJSON line: a `oneOf` over the kinds, each with the
/// fields it always carries required. Options are plain optional properties (never `null`).
pub fn json_schema() -> serde_json::Value {
    use schemars::transform::RecursiveTransform;
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    // Absent fields are left out, never `null`: take `null` out of every optional field.
    settings
        .transforms
        .push(Box::new(RecursiveTransform(|s: &mut Schema| {
            if let Some(serde_json::Value::Array(types)) = s.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types[0].clone();
                    s.insert("type".into(), t);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(serde_json::Value::Array(alts)) = s.get_mut(key) {
                    alts.retain(|a| a.get("type").and_then(|t| t.as_str()) != Some("null"));
                    if alts.len() == 1 && key == "anyOf" {
                        let only = alts.remove(0);
                        s.remove(key);
                        if let serde_json::Value::Object(m) = only {
                            for (k, v) in m {
                                s.insert(k, v);
                            }
                        }
                    }
                }
            }
        })));
    let schema = settings.into_generator().into_root_schema_for::<Event>();
    serde_json::to_value(schema).expect("schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_as_eight_hex_digits() {
        assert_eq!(
            serde_json::to_string(&Token(0x5c0089f8)).unwrap(),
            "\"5c0089f8\""
        );
        assert_eq!(serde_json::to_string(&Token(1)).unwrap(), "\"00000001\"");
        assert_eq!(
            serde_json::from_str::<Token>("\"00abcdef\"").unwrap(),
            Token(0xabcdef)
        );
        for bad in ["\"ABCDEF00\"", "\"nothex!!\"", "\"123\"", "\"+0000001\""] {
            assert!(serde_json::from_str::<Token>(bad).is_err(), "{bad}");
        }
    }
}
