//! mptcp-trace kernel programs: MPTCP connection and subflow lifecycle from tracepoints.
//!
//! `inet_sock_set_state` fires for the MPTCP socket itself (`sk_protocol == IPPROTO_MPTCP`) and
//! for each of its TCP subflows (`tcp_sock.is_mptcp`). Per connection we keep the owning process
//! (recorded in process context when the socket connects or its listener was created) so that
//! subflows created later by kworkers or in softirq are attributed to the right program — the
//! same pattern as bcc's tcplife, keyed by the MPTCP socket's address.
#![no_std]
#![no_main]
// BPF has atomic add (BPF_XADD) but the target does not expose `AtomicU64::fetch_add`.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// aya's map methods take `impl Borrow<K>`: a reference hands them the key where it already is,
// instead of one more copy on the 512-byte stack the verifier counts.
#![allow(clippy::needless_borrows_for_generic_args)]

mod kernel;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use kernel::{off, read_or_zero};
use mptcp_common::{
    counter, flags, scope, tcp_state, xflags, Config, EventKind, ExistingKey, ListenKey, Owner,
    RawEvent, Scope, IPPROTO_MPTCP, IPPROTO_TCP, MAX_NETNS, TASK_COMM_LEN,
};

/// The kernel-side selection (read-only data, set by the loader before load: the verifier sees
/// its values as constants and drops the branches they rule out).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    scope: Scope::ALL,
    n_netns: 0,
    netns: [0; MAX_NETNS],
    all_tcp: 0,
    rescue: 0,
    _pad: 0,
};

/// `CONFIG` through a pointer the compiler cannot see through, so it does not fold the
/// defaults above; the loads stay loads from the frozen map, which the verifier knows.
#[inline(always)]
fn config() -> &'static Config {
    let p: *const Config = &CONFIG;
    // SAFETY: reading back a pointer to a static.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// `-EEXIST`, what a `BPF_NOEXIST` insert of a present key returns.
const EEXIST: i32 = -17;

/// 4 MiB: room for ~22k records, so a burst of a few thousand connections is not lost while
/// userspace is descheduled.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// One live connection, keyed by the MPTCP socket's address (by the socket's own for plain
/// TCP). Only connections inside the kernel-side selection get one: nothing about the others
/// is kept or reported.
///
/// Who writes what (the SAFETY argument for every access below):
/// - `owner`, `start_ns`, `flags`: written once, by the insert, before any other program run
///   can find the entry; read-only afterwards.
/// - `live`, `closing`, `subflows`: written by several sockets' handlers, which may run on two
///   CPUs at once (subflows of one connection, and the MPTCP socket itself): only ever changed
///   with [`atomic_add`].
/// - `announced`, `created_ns`: written only by the program run that won the connection's
///   claim in `CLAIMS` (see [`announce`]), before it sends conn_created; everyone else only
///   reads them (`announced` as a hint).
/// - `sport`: plain TCP only, written by that socket's own transitions, which the kernel
///   serializes under the socket's lock.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    owner: Owner,
    start_ns: u64,
    /// When conn_created was sent (its `ts_ns`), 0 before: `duration_ns` counts from it.
    created_ns: u64,
    /// Subflows established and not yet closed (64-bit because BPF's atomics are).
    live: u64,
    /// Non-zero once the MPTCP socket reached CLOSE; conn_closed waits for the last live
    /// subflow so that it is the connection's last event. Each side writes with a locked
    /// instruction (a full barrier on x86) before it reads the other's field, so the socket's
    /// CLOSE and its last subflow's CLOSE, racing on two CPUs, cannot both miss each other.
    closing: u64,
    /// Subflows established so far.
    subflows: u64,
    /// `flags::SERVER`, `flags::OWNER_KNOWN`, `flags::PLAIN_TCP`.
    flags: u8,
    /// conn_created was sent (a hint: the claim in `CLAIMS` decides).
    announced: u8,
    /// Local port once established: a plain TCP socket has released it when CLOSE fires.
    sport: u16,
    _pad: u32,
}

/// What is remembered per subflow between its transitions, from its first one (the client's
/// CLOSE→SYN_SENT, the server's SYN_RECV→ESTABLISHED) to its CLOSE, so that a subflow whose
/// MPTCP context the kernel has already dropped (`mptcp_subflow_drop_ctx()` clears
/// `icsk_ulp_data` and `is_mptcp`) still closes, still gives back its `live` count and so
/// still lets its connection close.
///
/// Who writes what: `rst`, `rst_sport`, `rst_reason` and `rst_reason_known` only by
/// [`mark_reset`] (in place); every other field only by [`on_subflow`], whose runs for one
/// socket the kernel serializes (state changes happen under the socket's lock). Fields are
/// written in place once the entry exists, never by re-inserting the whole value, so neither
/// writer can undo the other's bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Subflow {
    /// The MPTCP socket (0: unknown).
    conn: u64,
    /// `start_ns` of the connection incarnation this subflow is counted in (`live`), 0 when
    /// it is not counted: a decrement goes only to that incarnation, never to a new
    /// connection that reuses the address.
    conn_start: u64,
    token: u32,
    /// Local port at ESTABLISHED: the kernel may have released it when CLOSE fires.
    sport: u16,
    /// `flags::RST_*` seen on it.
    rst: u8,
    /// Counted in its connection's `live`.
    live: u8,
    /// `flags::JOIN` / `flags::BACKUP` as seen at ESTABLISHED.
    flags: u8,
    /// Reached ESTABLISHED: a subflow that closes without is reported as failed.
    established: u8,
    /// Local port when a reset was sent or received: a connect that never got established has
    /// no other moment at which the port is sure to be known (the kernel releases it before
    /// the CLOSE transition is traced).
    rst_sport: u16,
    /// `enum sk_rst_reason` of the last reset sent, valid when `rst_reason_known` is 1.
    rst_reason: u16,
    rst_reason_known: u8,
    /// The peer asked for backup priority, as seen at ESTABLISHED.
    peer_backup: u8,
}

const NO_SUBFLOW: Subflow = Subflow {
    conn: 0,
    conn_start: 0,
    token: 0,
    sport: 0,
    rst: 0,
    live: 0,
    flags: 0,
    established: 0,
    rst_sport: 0,
    rst_reason: 0,
    rst_reason_known: 0,
    peer_backup: 0,
};

/// One connection incarnation: the claim key of [`announce`].
#[repr(C)]
#[derive(Clone, Copy)]
struct ClaimKey {
    conn: u64,
    start_ns: u64,
}

// Map sizes. Both ends of a local connection count, so 65,536 connections is 32,768 local
// MPTCP connections open at once; each has up to a few subflows (131,072). Preallocated (the
// default): a full map makes an insert fail, which is counted in `counter::MAP_FULL`, never
// silent. About 25 MB of kernel memory in all.

#[map]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(65536, 0);

/// Who announced each connection: a `BPF_NOEXIST` insert is the atomic claim that works on
/// every kernel (5.10 has no BPF_CMPXCHG); removed with the connection.
#[map]
static CLAIMS: HashMap<ClaimKey, u8> = HashMap::with_max_entries(65536, 0);

/// Listeners by (netns, port): whoever listens owns the connections it accepts.
#[map]
static LISTENERS: HashMap<ListenKey, Owner> = HashMap::with_max_entries(4096, 0);

#[map]
static SUBFLOWS: HashMap<u64, Subflow> = HashMap::with_max_entries(131072, 0);

/// Owners of the connections that were open before the tracer started, written by userspace
/// from its snapshot (see [`ExistingKey`]); read-only here.
#[map]
static EXISTING: HashMap<ExistingKey, Owner> = HashMap::with_max_entries(65536, 0);

/// `*dst += v` as one BPF_XADD; the result is not read, which keeps it valid on every BPF ISA
/// version (fetching atomics need v3, Linux 5.12).
#[inline(always)]
fn atomic_add(dst: &mut u64, v: u64) {
    // SAFETY: `dst` points into a map value, valid for the program run.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, v,
        )
    };
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: the slot lives as long as the map. Atomic although per-CPU: tracing programs
        // only disable migration, so another program run (a softirq, or another task on a
        // preemptible kernel) can interleave on this CPU.
        atomic_add(unsafe { &mut *c }, 1);
    }
}

/// The current task as a [`Owner`]. The ancestor cgroup id is asked for only when the scope
/// has `--cgroup`: `bpf_get_current_ancestor_cgroup_id` is allowed for tracing programs only
/// since Linux 5.14, and with the flag off (read-only config) the verifier never sees the call.
#[inline(always)]
fn current_owner() -> Owner {
    let s = &config().scope;
    Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        ancestor_cgroup_id: if s.flags & scope::CGROUP != 0 {
            // SAFETY: plain helper call.
            unsafe { bpf_get_current_ancestor_cgroup_id(s.cgroup_level as i32) }
        } else {
            0
        },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
    }
}

/// Whether the socket's network namespace is one of `--netns` (any when none is given).
#[inline(always)]
fn netns_selected(netns: u32) -> bool {
    let c = config();
    let n = c.n_netns as usize;
    if n == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_NETNS {
        if i >= n {
            break;
        }
        if c.netns[i] == netns {
            return true;
        }
        i += 1;
    }
    false
}

/// The kernel-side selection, decided once per connection when it is created. A connection
/// whose owner is unknown (its listener predates the tracer) is selected only by `ALL`.
#[inline(always)]
fn selected(owner: &Owner, known: bool, netns: u32) -> bool {
    if !netns_selected(netns) {
        return false;
    }
    let s = &config().scope;
    if known {
        s.selects(owner)
    } else {
        s.flags & scope::ALL != 0
    }
}

/// The owner userspace's snapshot found for a connection that predates the tracer (null when
/// it has none: the connection is new, or the snapshot did not see it).
#[inline(always)]
fn existing_owner(netns: u32, token: u32) -> *const Owner {
    match unsafe { EXISTING.get(&ExistingKey { netns, token }) } {
        Some(o) => o as *const Owner,
        None => core::ptr::null(),
    }
}

/// Whether an event of a connection without a `CONNS` entry is shown: one that predates the
/// tracer is selected by the owner the snapshot found; without one, only `ALL` selects it.
#[inline(always)]
fn untracked_selected(existing: *const Owner, netns: u32) -> bool {
    // SAFETY: null or a pointer to an `EXISTING` value, valid for the program run.
    match unsafe { existing.as_ref() } {
        Some(o) => selected(o, true, netns),
        None => selected(&Owner::UNKNOWN, false, netns),
    }
}

/// Who owns a connection being created: the current task for a client (it connects in its
/// own context), the listener's owner for a server (cloned in softirq); `false` when that
/// listener predates the tracer. A pair, not an `Option`: copying an `Option<Owner>` makes
/// LLVM copy the undefined payload of `None`, which the verifier refuses.
#[inline(always)]
fn creator(client: bool, sk: u64, netns: u32) -> (Owner, bool) {
    if client {
        return (current_owner(), true);
    }
    match unsafe { LISTENERS.get(&listen_key(sk, netns)) } {
        Some(o) => (*o, true),
        None => (Owner::UNKNOWN, false),
    }
}

/// Starts tracking a selected connection. An entry still present at this address is one whose
/// close was never seen: counted, and replaced.
#[inline(always)]
fn track(key: u64, conn: &Conn) {
    if let Some(old) = unsafe { CONNS.get(&key) } {
        bump(counter::STALE);
        let _ = CLAIMS.remove(&ClaimKey {
            conn: key,
            start_ns: old.start_ns,
        });
    }
    if CONNS.insert(&key, conn, 0).is_err() {
        bump(counter::MAP_FULL);
    }
}

#[inline(always)]
fn new_conn(owner: &Owner, known: bool, flags: u8) -> Conn {
    Conn {
        owner: *owner,
        start_ns: unsafe { bpf_ktime_get_ns() },
        created_ns: 0,
        live: 0,
        closing: 0,
        subflows: 0,
        flags: flags | if known { flags::OWNER_KNOWN } else { 0 },
        announced: 0,
        sport: 0,
        _pad: 0,
    }
}

/// What an event says about a socket, gathered before the ring buffer slot is reserved.
#[derive(Clone, Copy)]
struct Subject {
    kind: EventKind,
    conn: u64,
    /// The subflow, for subflow events.
    sk: u64,
    /// The socket whose endpoints the event carries.
    addr_from: u64,
    token: u32,
    netns: u32,
    oldstate: u8,
    newstate: u8,
    /// The owner the snapshot found for a connection that predates the tracer (an `EXISTING`
    /// value), null otherwise; used when the event has no tracked connection.
    existing: *const Owner,
}

impl Subject {
    fn with(&self, kind: EventKind) -> Subject {
        Subject { kind, ..*self }
    }
}

/// Reserves a record, fills the fields common to every event and lets `fill` add the rest.
/// A failed reservation is counted, never silent.
///
/// The record is written field by field straight into ring-buffer memory: building it on the
/// stack and copying it would cost 184 bytes of the 512-byte stack and a byte-wise memcpy loop
/// the verifier rejects. Every field is written, so no stale bytes reach userspace.
#[inline(always)]
fn emit(s: &Subject, conn: Option<&Conn>, fill: impl FnOnce(&mut RawEvent)) {
    let Some(mut slot) = EVENTS.reserve::<RawEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    // SAFETY: the slot is ours until submit; all fields are initialised below before use.
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.conn = s.conn;
    ev.sk = s.sk;
    ev.kind = s.kind as u32;
    ev.token = s.token;
    ev.netns = s.netns;
    match conn {
        Some(c) => {
            // The consumer's start: conn_created's stamp (`duration_ns` counts from it).
            ev.start_ns = unsafe { core::ptr::read_volatile(&c.created_ns) };
            ev.cgroup_id = c.owner.cgroup_id;
            ev.pid = c.owner.tgid;
            ev.comm = c.owner.comm;
            ev.subflows = c.subflows as u32;
            ev.flags = c.flags;
        }
        None => {
            ev.start_ns = 0;
            ev.subflows = 0;
            // SAFETY: a pointer to an `EXISTING` value, valid for the program run.
            match unsafe { s.existing.as_ref() } {
                Some(o) => {
                    ev.cgroup_id = o.cgroup_id;
                    ev.pid = o.tgid;
                    ev.comm = o.comm;
                    ev.flags = flags::OWNER_KNOWN;
                }
                None => {
                    ev.cgroup_id = 0;
                    ev.pid = 0;
                    ev.comm = [0; TASK_COMM_LEN];
                    ev.flags = 0;
                }
            }
        }
    }
    ev.bytes_sent = 0;
    ev.bytes_acked = 0;
    ev.bytes_received = 0;
    ev.ifindex = 0;
    ev.retrans = 0;
    ev.srtt_us = 0;
    ev.sk_err = 0;
    ev.local_id = 0;
    ev.remote_id = 0;
    ev.reset_reason = 0;
    ev.oldstate = s.oldstate;
    ev.newstate = s.newstate;
    ev.ifname = [0; 16];
    ev.xflags = 0;
    ev.rst_sent_reason = 0;
    ev._pad = 0;
    ev.peer_key = 0;
    kernel::tuple(s.addr_from, ev);
    // The peer's key, for the peer's token: on the connection-level events of an MPTCP
    // connection and on an established subflow (the MPTCP socket is alive at all of them; a
    // closing subflow's may already be gone). Zero until the key was exchanged.
    if !matches!(s.kind, EventKind::SubflowClosed | EventKind::SubflowFailed) {
        // Not for plain TCP (no MPTCP socket): its base is then 0, which reads as 0, without
        // a branch for the verifier to explore.
        let mptcp = 1 - ((ev.flags & flags::PLAIN_TCP) >> 7) as u64;
        ev.peer_key = read_or_zero(s.conn * mptcp, off!(msk_remote_key));
    }
    fill(ev);
    slot.submit(0);
}

/// A listener's identity: its namespace and local port (a server connection shares both).
#[inline(always)]
fn listen_key(sk: u64, netns: u32) -> ListenKey {
    ListenKey {
        netns,
        port: read_or_zero(sk, off!(skc_num)) as u32,
    }
}

/// Records who owns a listener (it owns the connections the listener accepts) and forgets it
/// when the listener closes. Returns whether the transition was a listener's.
#[inline(always)]
fn track_listener(sk: u64, netns: u32, old: u8, new: u8) -> bool {
    if new == tcp_state::LISTEN {
        if LISTENERS
            .insert(&listen_key(sk, netns), &current_owner(), 0)
            .is_err()
        {
            // Its connections will have no owner (and be outside any restricted scope).
            bump(counter::MAP_FULL);
        }
        true
    } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let _ = LISTENERS.remove(&listen_key(sk, netns));
        true
    } else {
        false
    }
}

/// A state change of the MPTCP socket itself.
// Not inlined: each handler gets its own stack frame, so the deepest call chain stays
// within the verifier's 512-byte combined limit (6.12 counts it strictly).
#[inline(never)]
fn on_msk(msk: u64, old: u8, new: u8) {
    let client = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    let server = old == tcp_state::LISTEN && new == tcp_state::ESTABLISHED;
    let established = old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED;
    let closed = new == tcp_state::CLOSE && old != tcp_state::CLOSE;
    // Half of an MPTCP socket's transitions (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK...)
    // report nothing: they leave before any read.
    if !(client || server || established || closed || new == tcp_state::LISTEN) {
        return;
    }
    let netns = kernel::netns(msk);
    if track_listener(msk, netns, old, new) {
        return;
    }
    if client || server {
        let (owner, known) = creator(client, msk, netns);
        if selected(&owner, known, netns) {
            track(
                msk,
                &new_conn(&owner, known, if server { flags::SERVER } else { 0 }),
            );
        }
        return;
    }

    let conn_ptr = CONNS.get_ptr_mut(&msk);
    let token = kernel::token(msk, 0);
    // No entry: outside the selection, or it predates the tracer (then the snapshot's owner
    // decides; without one it is shown only when everything is selected).
    let existing = match conn_ptr {
        Some(_) => core::ptr::null(),
        None => existing_owner(netns, token),
    };
    if conn_ptr.is_none() && !untracked_selected(existing, netns) {
        return;
    }
    let subject = Subject {
        kind: EventKind::ConnEstablished,
        conn: msk,
        sk: 0,
        addr_from: msk,
        token,
        netns,
        oldstate: old,
        newstate: new,
        existing,
    };
    if established {
        // By the time the MPTCP socket is established the first subflow has processed the
        // SYN/ACK, so its `mp_capable` says whether the peer spoke MPTCP.
        let first = read_or_zero(msk, off!(msk_first));
        let ctx = kernel::subflow_ctx(first);
        if let Some(c) = conn_ptr {
            // SAFETY: read-only use of a tracked entry.
            let c = unsafe { &*c };
            if c.flags & flags::SERVER == 0 {
                // A client's conn_established is sent here rather than at its first
                // subflow's ESTABLISHED, which comes just before: only now has the kernel
                // stored the peer's key (for `peer_token`). The first subflow carries the
                // addresses (the MPTCP socket may not have copied them yet). Userspace puts it
                // before that subflow's subflow_established (`trace::order`).
                let s = Subject {
                    addr_from: if first != 0 { first } else { msk },
                    ..subject
                };
                // Whether the peer forbids joins to its initial address: the in-kernel path
                // manager then opens no subflow towards it (the diagnosis needs to know).
                let deny = off!(msk_deny_join_id0);
                let known = if deny.is_present() {
                    xflags::DENY_JOIN_ID0_KNOWN
                } else {
                    0
                };
                let denied = (read_or_zero(msk, deny) != 0) as u8 * xflags::PEER_DENY_JOIN_ID0;
                emit(&s, Some(c), |ev| ev.xflags |= known | denied);
            }
        }
        if ctx != 0
            && off!(sf_mp_capable).is_present()
            && read_or_zero(ctx, off!(sf_mp_capable)) == 0
        {
            emit(
                &subject.with(EventKind::ConnFallback),
                conn_ptr.map(|c| unsafe { &*c }),
                |_| {},
            );
        }
    } else if closed {
        match conn_ptr {
            Some(c) => {
                // SAFETY: `closing`/`live` are only changed atomically (see `Conn`).
                let c = unsafe { &mut *c };
                atomic_add(&mut c.closing, 1);
                if live_subflows(c) == 0 {
                    close_conn(&subject, c);
                }
            }
            // Predates the tracer: nothing to wait for.
            None => emit(&subject.with(EventKind::ConnClosed), None, |_| {}),
        }
    }
}

/// Sends conn_created and, when `established` (servers and plain TCP; a client's comes from
/// its MPTCP socket, see `on_msk`), conn_established — exactly once per connection, whichever CPUs race: the
/// sender is the one program run whose `BPF_NOEXIST` insert of the connection's claim
/// succeeds (the hash map's bucket lock makes that atomic on every kernel). Called from the
/// initial subflow's handshake (never from a join: it carries the connection's addresses),
/// from a plain TCP socket's, and from [`close_conn`] for a connection that closed before any
/// subflow was established (a failed connect), so that conn_closed never comes alone.
#[inline(always)]
fn announce(s: &Subject, c: &mut Conn, established: bool) {
    announce_created(s, c, 0);
    if established {
        // Once per connection: its initial subflow (or plain TCP socket) is established once.
        let s = Subject { sk: 0, ..*s };
        emit(&s.with(EventKind::ConnEstablished), Some(c), |_| {});
    }
}

/// Sends conn_created once (see [`announce`]), with `sport` when the socket it reads the
/// endpoints from has already released its port (0: it has not).
#[inline(always)]
fn announce_created(s: &Subject, c: &mut Conn, sport: u16) {
    // SAFETY (read): `announced` is a hint written by the claimant only.
    if unsafe { core::ptr::read_volatile(&c.announced) } != 0 {
        return;
    }
    let key = ClaimKey {
        conn: s.conn,
        start_ns: c.start_ns,
    };
    match CLAIMS.insert(&key, &1, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => return,
        Err(_) => {
            // Full: conn_created is missing, and counted.
            bump(counter::MAP_FULL);
            return;
        }
    }
    // SAFETY (write): we won the claim; nobody else writes `announced` and `created_ns`.
    c.announced = 1;
    // Stamped now, not when the connect started: the outcome of the first handshake is what
    // completes it (the local port is chosen after the SYN_SENT transition is traced), and an
    // event stamped in the past would break the output's time order. conn_closed's
    // `duration_ns` counts from this stamp, so the two pair up exactly.
    let now = unsafe { bpf_ktime_get_ns() };
    c.created_ns = now;
    let s = Subject { sk: 0, ..*s };
    emit(&s.with(EventKind::ConnCreated), Some(c), |ev| {
        ev.ts_ns = now;
        ev.start_ns = now;
        if ev.sport == 0 {
            ev.sport = sport;
        }
    });
}

#[inline(always)]
fn live_subflows(c: &Conn) -> u64 {
    unsafe { core::ptr::read_volatile(&c.live) }
}

/// Sends conn_closed once: whoever removes the entry (the MPTCP socket's CLOSE or its last
/// subflow's, possibly on two CPUs at once) reports it.
#[inline(always)]
fn close_conn(s: &Subject, c: &mut Conn) {
    let subject = Subject {
        kind: EventKind::ConnClosed,
        sk: 0,
        addr_from: s.conn,
        ..*s
    };
    // A connection that never got a subflow established (a failed connect) is announced now.
    announce(&subject, c, false);
    // Copied before the remove: a removed entry may be reused by the next insert.
    let copy = *c;
    if CONNS.remove(&s.conn).is_ok() {
        let _ = CLAIMS.remove(&ClaimKey {
            conn: s.conn,
            start_ns: copy.start_ns,
        });
        emit(&subject, Some(&copy), |ev| {
            if ev.sport == 0 {
                ev.sport = copy.sport;
            }
        });
    }
}

/// The transitions of a subflow that are reported: (connecting, established, closed).
#[inline(always)]
fn subflow_steps(old: u8, new: u8) -> (bool, bool, bool) {
    let connecting = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    let established =
        new == tcp_state::ESTABLISHED && (old == tcp_state::SYN_SENT || old == tcp_state::SYN_RECV);
    // A listener's subflow closing is not a subflow of any connection.
    let closed = new == tcp_state::CLOSE && old != tcp_state::CLOSE && old != tcp_state::LISTEN;
    (connecting, established, closed)
}

#[inline(always)]
fn subflow_transition(old: u8, new: u8) -> bool {
    let (connecting, established, closed) = subflow_steps(old, new);
    connecting || established || closed
}

/// A state change of one TCP subflow of an MPTCP connection. `ctx` is its MPTCP context, or 0
/// when the kernel has already dropped it (then only a remembered subflow's CLOSE is handled).
// Not inlined: each handler gets its own stack frame, so the deepest call chain stays
// within the verifier's 512-byte combined limit (6.12 counts it strictly).
#[inline(never)]
fn on_subflow(sk: u64, ctx: u64, old: u8, new: u8) {
    let (connecting, established, closed) = subflow_steps(old, new);
    if !connecting && !established && !closed {
        return;
    }
    let state_ptr = SUBFLOWS.get_ptr_mut(&sk);
    // SAFETY: see `Subflow` for who writes it; a copy for reading.
    let known = state_ptr.map(|p| unsafe { *p });
    let mut msk = read_or_zero(ctx, off!(sf_conn));
    if msk == 0 {
        match known {
            Some(k) if k.conn != 0 => msk = k.conn,
            _ => return,
        }
    }
    let netns = kernel::netns(sk);
    let conn_ptr = CONNS.get_ptr_mut(&msk);
    let mut token = kernel::token(msk, ctx);
    if ctx == 0 || token == 0 {
        // The context is gone and the MPTCP socket may be too: the token seen before.
        token = known.map(|k| k.token).unwrap_or(token);
    }
    let existing = match conn_ptr {
        Some(_) => core::ptr::null(),
        None => existing_owner(netns, token),
    };
    if conn_ptr.is_none() && !untracked_selected(existing, netns) {
        if closed && known.is_some() {
            let _ = SUBFLOWS.remove(&sk);
        }
        return;
    }

    if connecting {
        // The client's subflows (initial and joins) are remembered from their first
        // transition, so a later CLOSE is recognised even without a context.
        if known.is_some_and(|k| k.live != 0) {
            bump(counter::STALE);
        }
        // The port, when the socket is bound already (joins bind their local address).
        let state = Subflow {
            conn: msk,
            token,
            sport: read_or_zero(sk, off!(skc_num)) as u16,
            ..NO_SUBFLOW
        };
        if SUBFLOWS.insert(&sk, &state, 0).is_err() {
            bump(counter::MAP_FULL);
        }
        return;
    }

    // On the client, `mp_join` is only set after the SYN_SENT→ESTABLISHED transition, but
    // `request_join` is set when the join subflow is created; on the server `mp_join` is set.
    let mut sf_flags = 0;
    if read_or_zero(ctx, off!(sf_request_join)) | read_or_zero(ctx, off!(sf_mp_join)) != 0 {
        sf_flags |= flags::JOIN;
    }
    // `request_bkup`: this side asked for backup priority; `backup`: the peer did (what
    // sock_diag reports as BKUP_LOC and BKUP_REM, `ss` as `b` and `B`).
    if read_or_zero(ctx, off!(sf_request_bkup)) != 0 {
        sf_flags |= flags::BACKUP;
    }
    let mut peer_backup = read_or_zero(ctx, off!(sf_backup)) as u8;
    let mut state = known.unwrap_or(NO_SUBFLOW);
    if ctx == 0 {
        sf_flags = state.flags;
        peer_backup = state.peer_backup;
    }
    // Closed without ever being established: a connect or join that failed. Only a subflow
    // seen from its start can tell (a server's subflows start at ESTABLISHED).
    let failed = closed && known.is_some() && state.established == 0;
    let subject = Subject {
        kind: if established {
            EventKind::SubflowEstablished
        } else if failed {
            EventKind::SubflowFailed
        } else {
            EventKind::SubflowClosed
        },
        conn: msk,
        sk,
        addr_from: sk,
        token,
        netns,
        oldstate: old,
        newstate: new,
        existing,
    };

    if established {
        if state.live != 0 {
            // A previous subflow at this address never closed (its CLOSE was missed).
            bump(counter::STALE);
        }
        state.live = 0;
        state.conn_start = 0;
        if let Some(c) = conn_ptr {
            // SAFETY: `live`/`subflows` are only changed atomically. Done first, right after
            // the lookup, so the window in which the connection could be closed (and its
            // entry reused) between our lookup and our write is a few instructions.
            let c = unsafe { &mut *c };
            atomic_add(&mut c.live, 1);
            atomic_add(&mut c.subflows, 1);
            state.live = 1;
            state.conn_start = c.start_ns;
        }
        state.conn = msk;
        state.token = token;
        state.flags = sf_flags;
        state.sport = read_or_zero(sk, off!(skc_num)) as u16;
        state.established = 1;
        state.peer_backup = peer_backup;
        let stored = match state_ptr {
            Some(p) => {
                // SAFETY: this socket's handler is the only writer of these fields (see
                // `Subflow`); `rst` is left to `mark_reset`.
                let p = unsafe { &mut *p };
                p.conn = state.conn;
                p.conn_start = state.conn_start;
                p.token = state.token;
                p.sport = state.sport;
                p.flags = state.flags;
                p.peer_backup = peer_backup;
                p.live = state.live;
                p.established = 1;
                true
            }
            None => SUBFLOWS.insert(&sk, &state, 0).is_ok(),
        };
        if !stored {
            bump(counter::MAP_FULL);
            if state.live != 0 {
                // Without an entry its CLOSE could not give the count back: don't count it.
                if let Some(c) = conn_ptr {
                    atomic_add(unsafe { &mut (*c).live }, u64::MAX);
                }
                state.live = 0;
            }
        }
        if sf_flags & flags::JOIN == 0 {
            if let Some(c) = conn_ptr {
                // SAFETY: see `Conn`; `announce` claims before it writes.
                let c = unsafe { &mut *c };
                // The first subflow carries the connection's addresses. A client's
                // conn_established comes from its MPTCP socket's ESTABLISHED (see `on_msk`).
                let server = c.flags & flags::SERVER != 0;
                announce(&subject.with(EventKind::ConnCreated), c, server);
            }
        }
    } else if known.is_some() {
        let _ = SUBFLOWS.remove(&sk);
        if failed && sf_flags & flags::JOIN == 0 {
            if let Some(c) = conn_ptr {
                // The connect failed: the connection is announced before its subflow's
                // failure, with the port the subflow had.
                announce_created(
                    &subject.with(EventKind::ConnCreated),
                    unsafe { &mut *c },
                    state.rst_sport,
                );
            }
        }
    }

    let conn = conn_ptr.map(|p| unsafe { &*p });
    emit(&subject, conn, |ev| {
        ev.ifindex = kernel::device(sk, &mut ev.ifname);
        ev.local_id = read_or_zero(ctx, off!(sf_local_id)) as i16;
        ev.remote_id = read_or_zero(ctx, off!(sf_remote_id)) as u8;
        ev.flags |= sf_flags;
        if peer_backup != 0 {
            ev.xflags |= xflags::PEER_BACKUP;
        }
        if closed {
            if ev.sport == 0 {
                ev.sport = if state.sport != 0 {
                    state.sport
                } else {
                    state.rst_sport
                };
            }
            ev.flags |= state.rst;
            if state.rst_reason_known != 0 {
                ev.xflags |= xflags::RST_SENT_REASON;
                ev.rst_sent_reason = state.rst_reason;
            }
            if read_or_zero(ctx, off!(sf_reset_seen)) != 0 {
                ev.flags |= flags::MPTCP_RESET;
                ev.reset_reason = read_or_zero(ctx, off!(sf_reset_reason)) as u8;
            }
            ev.sk_err = read_or_zero(sk, off!(sk_err)) as u32;
            ev.bytes_sent = read_or_zero(sk, off!(tcp_bytes_sent));
            ev.bytes_acked = read_or_zero(sk, off!(tcp_bytes_acked));
            ev.bytes_received = read_or_zero(sk, off!(tcp_bytes_received));
            ev.retrans = read_or_zero(sk, off!(tcp_total_retrans)) as u32;
            // The kernel keeps srtt scaled by 8.
            ev.srtt_us = (read_or_zero(sk, off!(tcp_srtt_us)) >> 3) as u32;
        }
    });

    if closed && state.live != 0 {
        if let Some(c) = conn_ptr {
            // SAFETY: `live`/`closing` are only changed atomically.
            let c = unsafe { &mut *c };
            // Only the incarnation it was counted in: a new connection at a reused address
            // must not lose a count it never got.
            if c.start_ns == state.conn_start {
                atomic_add(&mut c.live, u64::MAX);
                if unsafe { core::ptr::read_volatile(&c.closing) } != 0 && live_subflows(c) == 0 {
                    let s = Subject {
                        addr_from: msk,
                        ..subject
                    };
                    close_conn(&s, c);
                }
            }
        }
    }
}

/// A plain TCP socket's state change (`--all-tcp`): the same lifecycle as an MPTCP
/// connection — owner recorded at connect or from its listener, created/established when the
/// handshake completes, closed at CLOSE — keyed by the socket itself. All of one socket's
/// transitions are serialized by the kernel (socket lock), so its entry has one writer.
// Not inlined: each handler gets its own stack frame, so the deepest call chain stays
// within the verifier's 512-byte combined limit (6.12 counts it strictly).
#[inline(never)]
fn on_plain_tcp(sk: u64, old: u8, new: u8) {
    let netns = kernel::netns(sk);
    if track_listener(sk, netns, old, new) {
        return;
    }
    let subject = Subject {
        kind: EventKind::ConnEstablished,
        conn: sk,
        sk: 0,
        addr_from: sk,
        token: 0,
        netns,
        oldstate: old,
        newstate: new,
        existing: core::ptr::null(),
    };
    let server = old == tcp_state::SYN_RECV && new == tcp_state::ESTABLISHED;
    if (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT) || server {
        let (owner, known) = creator(!server, sk, netns);
        if !selected(&owner, known, netns) {
            return;
        }
        track(
            sk,
            &new_conn(
                &owner,
                known,
                flags::PLAIN_TCP | if server { flags::SERVER } else { 0 },
            ),
        );
        if !server {
            return;
        }
    }
    let Some(c) = CONNS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: this socket's transitions are the only writers (see above).
    let c = unsafe { &mut *c };
    if new == tcp_state::ESTABLISHED {
        c.sport = read_or_zero(sk, off!(skc_num)) as u16;
        announce(&subject, c, true);
    } else if new == tcp_state::CLOSE && old != tcp_state::CLOSE {
        // A connect that failed is announced by close_conn all the same.
        close_conn(&subject, c);
    }
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg::<u64>(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let proto = read_or_zero(sk, off!(sk_protocol)) as u16;
    if proto == IPPROTO_MPTCP {
        on_msk(sk, old, new);
    } else if proto == IPPROTO_TCP {
        // Only a connect, a handshake's end and a close concern a subflow (`on_subflow`);
        // without --all-tcp the other transitions of every TCP socket leave before its MPTCP
        // context is read.
        if config().all_tcp == 0 && !subflow_transition(old, new) {
            return Ok(());
        }
        let sf = kernel::subflow_ctx(sk);
        if sf != 0 {
            on_subflow(sk, sf, old, new);
        } else if new == tcp_state::CLOSE && SUBFLOWS.get_ptr(&sk).is_some() {
            // A subflow whose context the kernel dropped before its CLOSE.
            on_subflow(sk, 0, old, new);
        } else if config().all_tcp != 0 {
            // Read-only config: with --all-tcp off the verifier drops this branch.
            on_plain_tcp(sk, old, new);
        }
    }
    Ok(())
}

/// Remembers an RST on a tracked MPTCP subflow until the subflow closes. Only an entry that
/// exists is marked (from the subflow's first transition on): `tcp_send_reset` also fires for
/// request and time-wait sockets, which must not leave entries behind.
/// Also remembers the local port (a connect that fails never reaches the moment it is
/// otherwise recorded) and, for a reset sent, the kernel's reason when the tracepoint has it.
fn mark_reset(ctx: &BtfTracePointContext, bit: u8) {
    let sk = ctx.arg::<u64>(0);
    // `tcp_send_reset` may have no socket (the verifier knows it as nullable).
    if sk == 0 {
        return;
    }
    if let Some(p) = SUBFLOWS.get_ptr_mut(&sk) {
        // SAFETY: these fields have this one writer (see `Subflow`); byte and half-word
        // stores cannot tear the neighbouring fields. Two resets of one subflow at the same
        // instant may keep one bit.
        let p = unsafe { &mut *p };
        p.rst |= bit;
        let port = read_or_zero(sk, off!(skc_num)) as u16;
        if port != 0 {
            p.rst_sport = port;
        }
        // Read-only config: where the tracepoint has no reason argument the verifier never
        // sees this read. The index must be a constant (the verifier refuses a computed
        // context offset): the loader sets the field only when the prototype has the reason
        // third, as every kernel that has it does.
        if bit == flags::RST_SENT && off!(rst_reason_arg).is_present() {
            p.rst_reason = ctx.arg::<u32>(RST_REASON_ARG) as u16;
            p.rst_reason_known = 1;
        }
    }
}

/// `tcp_send_reset(sk, skb, reason)` (see `Offsets::rst_reason_arg`).
const RST_REASON_ARG: usize = 2;

/// The nesting state of the state-change handlers on each CPU. Slot 0: runs of the main
/// program in progress on this CPU (0 or 1 where the kernel has a recursion guard; deeper where
/// it lets a program nest). Slot `d` ≥ 1: which program took the state change at nesting depth
/// `d`, on a kernel that runs both there ([`TAKEN_BY_MAIN`], [`TAKEN_BY_RESCUE`]).
///
/// Why: a program runs with migration disabled, not preemption, so while the main program runs
/// on a CPU for one socket, another socket's state can change on that CPU: in a softirq (a
/// packet completing a handshake), or, on a kernel with full or lazy preemption (Debian's 7.x),
/// in any task that preempts it. The kernel then skips the nested run (`recursion_misses`).
/// Its guard is per program, so a second program on the same tracepoint does run:
/// [`inet_sock_set_state_rescue`] handles exactly the state changes the main program is
/// skipped for. Userspace loads it where the kernel is preemptible (`sys::preempt`).
#[map]
static NESTING: PerCpuArray<u32> = PerCpuArray::with_max_entries(NESTING_SLOTS, 0);
/// Depth counter + one mark per depth (task, softirq, hardirq, NMI).
const NESTING_SLOTS: u32 = 5;
const TAKEN_BY_MAIN: u32 = 1;
const TAKEN_BY_RESCUE: u32 = 2;

/// State changes the rescue program took, by socket: [`change_id`]. On a preemptible kernel
/// the main program run the rescue program thought would be skipped (another task's, preempted
/// on this CPU) can end between the two programs' turns; the main program then runs for the
/// same change, finds it here, and leaves it. An entry left by a change the main program was
/// skipped for goes at that socket's next change (or by LRU).
#[map]
static RESCUED_CHANGES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// One state change of one socket by one thread: the thread id, old and new state.
#[inline(always)]
fn change_id(ctx: &BtfTracePointContext) -> u64 {
    let tid = bpf_get_current_pid_tgid() as u32 as u64;
    let old = ctx.arg::<i32>(1) as u8 as u64;
    let new = ctx.arg::<i32>(2) as u8 as u64;
    (tid << 16) | (old << 8) | new
}

/// Takes back a rescue count: the main program ran for that state change after all (the
/// counter is read as a wrapping sum over CPUs).
#[inline(always)]
fn not_a_rescue() {
    if let Some(c) = COUNTERS.get_ptr_mut(counter::RESCUED) {
        // SAFETY: the slot lives as long as the map.
        atomic_add(unsafe { &mut *c }, u64::MAX);
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if config().rescue != 0 {
        let sk: u64 = ctx.arg::<u64>(0);
        // SAFETY: a copy of the value is taken before the entry is removed.
        if let Some(taken) = unsafe { RESCUED_CHANGES.get(&sk) }.copied() {
            let _ = RESCUED_CHANGES.remove(&sk);
            if taken == change_id(&ctx) {
                not_a_rescue();
                return 0;
            }
        }
    }
    let Some(depth) = NESTING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot. Plain loads and stores: only this program writes slot 0, and the
    // kernel's guard lets one run of it at a time on a CPU (where a kernel lets it nest, nested
    // runs finish before the run they interrupt resumes, and each puts back what it found).
    let d = unsafe { *depth };
    if d != 0 {
        // This kernel lets the main program nest: the rescue program runs for this state
        // change too, before us; if it took it, we don't.
        if let Some(mark) = NESTING.get_ptr_mut(d) {
            // SAFETY: as above.
            let mark = unsafe { &mut *mark };
            if *mark == TAKEN_BY_RESCUE {
                *mark = 0;
                not_a_rescue();
                return 0;
            }
            *mark = TAKEN_BY_MAIN;
        }
    }
    unsafe { *depth = d + 1 };
    let _ = try_inet_sock_set_state(&ctx);
    unsafe { *depth = d };
    0
}

/// Handles a state change only when it happens while the main program is running on this
/// CPU (see [`NESTING`]): where the kernel guards against recursion the main program is skipped
/// then, and this run is the only one. Anywhere else it returns at once. Attached before the
/// main program, so it runs first.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_rescue(ctx: BtfTracePointContext) -> i32 {
    let Some(depth) = NESTING.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see `inet_sock_set_state`).
    let d = unsafe { *depth };
    if d == 0 {
        return 0;
    }
    let Some(mark) = NESTING.get_ptr_mut(d) else {
        return 0;
    };
    // SAFETY: as above.
    let mark = unsafe { &mut *mark };
    if *mark == TAKEN_BY_MAIN {
        // A kernel without the guard: the main program ran first and took it.
        *mark = 0;
        return 0;
    }
    *mark = TAKEN_BY_RESCUE;
    bump(counter::RESCUED);
    let _ = try_inet_sock_set_state(&ctx);
    let sk: u64 = ctx.arg::<u64>(0);
    let _ = RESCUED_CHANGES.insert(&sk, &change_id(&ctx), 0);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    mark_reset(&ctx, flags::RST_SENT);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    mark_reset(&ctx, flags::RST_RECEIVED);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
