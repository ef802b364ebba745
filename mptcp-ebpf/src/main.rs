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

mod kernel;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use kernel::{off, read_or_zero};
use mptcp_common::{
    counter, flags, tcp_state, Config, EventKind, RawEvent, Scope, IPPROTO_MPTCP, IPPROTO_TCP,
    MAX_NETNS, TASK_COMM_LEN,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    scope: Scope::ALL,
    n_netns: 0,
    netns: [0; MAX_NETNS],
    all_tcp: 0,
};

macro_rules! config {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&CONFIG.$name) }
    };
}

// Interim bridge to the shared Scope: one pid and one namespace (the kernel branch replaces
// this with the full scope match).
macro_rules! filter_tgid {
    () => {{
        let s = unsafe { core::ptr::read_volatile(&CONFIG.scope) };
        if s.flags & mptcp_common::scope::PID != 0 {
            s.pids[0]
        } else {
            0
        }
    }};
}
macro_rules! filter_netns {
    () => {{
        if config!(n_netns) > 0 {
            unsafe { core::ptr::read_volatile(&CONFIG.netns[0]) }
        } else {
            0
        }
    }};
}

/// 4 MiB: room for ~22k records, so a burst of a few thousand connections is not lost while
/// userspace is descheduled.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The process that owns a socket.
#[repr(C)]
#[derive(Clone, Copy)]
struct Owner {
    cgroup_id: u64,
    tgid: u32,
    _pad: u32,
    comm: [u8; TASK_COMM_LEN],
}

const NO_OWNER: Owner = Owner {
    cgroup_id: 0,
    tgid: 0,
    _pad: 0,
    comm: [0; TASK_COMM_LEN],
};

/// One live MPTCP connection, keyed by the MPTCP socket's address.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    owner: Owner,
    start_ns: u64,
    /// Subflows established and not yet closed (updated atomically: subflows of one
    /// connection may close on different CPUs; 64-bit because BPF's atomics are).
    live: u64,
    /// Non-zero once the MPTCP socket reached CLOSE; conn_closed waits for the last live
    /// subflow so that it is the connection's last event. Set with an atomic add, like `live`
    /// is changed: each side writes with a locked instruction (a full barrier) before it reads
    /// the other's field, so the socket's CLOSE and its last subflow's CLOSE, racing on two
    /// CPUs, cannot both miss each other.
    closing: u64,
    /// Subflows established so far.
    subflows: u32,
    /// `flags::SERVER`, `flags::OWNER_KNOWN`.
    flags: u8,
    /// Outside the kernel-side filter: report nothing about it.
    filtered: u8,
    /// conn_created/conn_established were sent. They wait for the first subflow, because the
    /// MPTCP socket has no addresses yet when it starts connecting or is cloned by a listener.
    announced: u8,
    _pad0: u8,
    /// Local port once established: a plain TCP socket has released it when CLOSE fires.
    sport: u16,
    _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ListenKey {
    netns: u32,
    port: u32,
}

/// What is remembered per subflow between its transitions.
#[repr(C)]
#[derive(Clone, Copy)]
struct Subflow {
    /// `flags::RST_*` seen on it.
    rst: u8,
    /// Counted in its connection's `live`.
    live: u8,
    /// Local port at ESTABLISHED: the kernel has already released it when CLOSE fires.
    sport: u16,
    _pad: u32,
}

#[map]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(65536, 0);

/// MPTCP listeners by (netns, port): whoever listens owns the connections it accepts.
#[map]
static LISTENERS: HashMap<ListenKey, Owner> = HashMap::with_max_entries(4096, 0);

#[map]
static SUBFLOWS: HashMap<u64, Subflow> = HashMap::with_max_entries(131072, 0);

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

fn current_owner() -> Owner {
    Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
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
            ev.start_ns = c.start_ns;
            ev.cgroup_id = c.owner.cgroup_id;
            ev.pid = c.owner.tgid;
            ev.comm = c.owner.comm;
            ev.subflows = c.subflows;
            ev.flags = c.flags;
        }
        None => {
            ev.start_ns = 0;
            ev.cgroup_id = 0;
            ev.pid = 0;
            ev.comm = [0; TASK_COMM_LEN];
            ev.subflows = 0;
            ev.flags = 0;
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
    ev._pad = [0; 7];
    kernel::tuple(s.addr_from, ev);
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
    let key = listen_key(sk, netns);
    if new == tcp_state::LISTEN {
        let _ = LISTENERS.insert(&key, &current_owner(), 0);
        true
    } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let _ = LISTENERS.remove(&key);
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
    let netns = kernel::netns(msk);
    if track_listener(msk, netns, old, new) {
        return;
    }
    let filter_netns = filter_netns!();
    let subject = Subject {
        kind: EventKind::ConnEstablished,
        conn: msk,
        sk: 0,
        addr_from: msk,
        token: kernel::token(msk, 0),
        netns,
        oldstate: old,
        newstate: new,
    };

    let client = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    let server = old == tcp_state::LISTEN && new == tcp_state::ESTABLISHED;
    if client || server {
        // A client connects in its own context; a server's connection is cloned in softirq and
        // belongs to whoever created the listener.
        let owner = if client {
            Some(current_owner())
        } else {
            unsafe { LISTENERS.get(&listen_key(msk, netns)) }.copied()
        };
        let filter_tgid = filter_tgid!();
        let filtered = (filter_netns != 0 && netns != filter_netns)
            || (filter_tgid != 0 && owner.map(|o| o.tgid) != Some(filter_tgid));
        let conn = Conn {
            owner: owner.unwrap_or(NO_OWNER),
            start_ns: unsafe { bpf_ktime_get_ns() },
            subflows: 0,
            live: 0,
            flags: if server { flags::SERVER } else { 0 }
                | if owner.is_some() {
                    flags::OWNER_KNOWN
                } else {
                    0
                },
            filtered: filtered as u8,
            announced: 0,
            closing: 0,
            _pad0: 0,
            sport: 0,
            _pad: [0; 6],
        };
        if CONNS.insert(&msk, &conn, 0).is_err() {
            bump(counter::MAP_FULL);
        }
        return;
    }

    let conn_ptr = CONNS.get_ptr_mut(&msk);
    // SAFETY: map values stay valid for the whole program run (RCU).
    let conn = conn_ptr.map(|p| unsafe { &mut *p });
    if !visible(conn.as_deref(), netns, filter_netns) {
        if new == tcp_state::CLOSE {
            let _ = CONNS.remove(&msk);
        }
        return;
    }
    if old == tcp_state::SYN_SENT && (new == tcp_state::ESTABLISHED || new == tcp_state::CLOSE) {
        if let Some(c) = conn_ptr {
            announce(&subject, unsafe { &mut *c }, new == tcp_state::ESTABLISHED);
        }
    }
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        // By the time the MPTCP socket is established the first subflow has processed the
        // SYN/ACK, so its `mp_capable` says whether the peer spoke MPTCP.
        let first = read_or_zero(msk, off!(msk_first));
        let ctx = kernel::subflow_ctx(first);
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
    } else if new == tcp_state::CLOSE && old != tcp_state::CLOSE {
        match conn_ptr {
            Some(c) => {
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

/// Sends conn_created (stamped with the moment the connection started) and, when
/// `established`, conn_established, once per connection.
#[inline(always)]
fn announce(s: &Subject, c: &mut Conn, established: bool) {
    if c.announced != 0 {
        return;
    }
    c.announced = 1;
    let start = c.start_ns;
    let s = Subject { sk: 0, ..*s };
    emit(&s.with(EventKind::ConnCreated), Some(c), |ev| {
        ev.ts_ns = start
    });
    if established {
        emit(&s.with(EventKind::ConnEstablished), Some(c), |_| {});
    }
}

/// `*dst += v` as one BPF_XADD; the result is not read, which keeps it valid on every BPF ISA
/// version (fetching atomics need v3).
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
fn live_subflows(c: &Conn) -> u64 {
    unsafe { core::ptr::read_volatile(&c.live) }
}

/// Sends conn_closed once: whoever removes the entry (the MPTCP socket's CLOSE or its last
/// subflow's, possibly on two CPUs at once) reports it.
#[inline(always)]
fn close_conn(s: &Subject, c: &Conn) {
    let copy = *c;
    if CONNS.remove(&s.conn).is_ok() {
        let subject = Subject {
            kind: EventKind::ConnClosed,
            sk: 0,
            addr_from: s.conn,
            ..*s
        };
        emit(&subject, Some(&copy), |ev| {
            if ev.sport == 0 {
                ev.sport = copy.sport;
            }
        });
    }
}

/// Whether events about a connection pass the kernel-side filters. Connections that predate
/// the tracer have no entry: they are shown unless a process filter is set.
#[inline(always)]
fn visible(conn: Option<&Conn>, netns: u32, filter_netns: u32) -> bool {
    if filter_netns != 0 && netns != filter_netns {
        return false;
    }
    let visible = match conn {
        Some(c) => c.filtered == 0,
        None => filter_tgid!() == 0,
    };
    if !visible {}
    visible
}

/// A state change of one TCP subflow of an MPTCP connection.
// Not inlined: each handler gets its own stack frame, so the deepest call chain stays
// within the verifier's 512-byte combined limit (6.12 counts it strictly).
#[inline(never)]
fn on_subflow(sk: u64, old: u8, new: u8) {
    let established =
        new == tcp_state::ESTABLISHED && (old == tcp_state::SYN_SENT || old == tcp_state::SYN_RECV);
    // A listener's subflow closing is not a subflow of any connection.
    let closed = new == tcp_state::CLOSE && old != tcp_state::CLOSE && old != tcp_state::LISTEN;
    if !established && !closed {
        return;
    }
    let ctx = kernel::subflow_ctx(sk);
    let msk = read_or_zero(ctx, off!(sf_conn));
    if ctx == 0 || msk == 0 {
        return;
    }
    let netns = kernel::netns(sk);
    let conn_ptr = CONNS.get_ptr_mut(&msk);
    // SAFETY: map values stay valid for the whole program run (RCU).
    let conn = conn_ptr.map(|p| unsafe { &*p });
    if !visible(conn, netns, filter_netns!()) {
        if closed {
            let _ = SUBFLOWS.remove(&sk);
        }
        return;
    }
    let subject = Subject {
        kind: if established {
            EventKind::SubflowEstablished
        } else {
            EventKind::SubflowClosed
        },
        conn: msk,
        sk,
        addr_from: sk,
        token: kernel::token(msk, ctx),
        netns,
        oldstate: old,
        newstate: new,
    };
    // On the client, `mp_join` is only set after the SYN_SENT→ESTABLISHED transition, but
    // `request_join` is set when the join subflow is created; on the server `mp_join` is set.
    let join = read_or_zero(ctx, off!(sf_request_join)) | read_or_zero(ctx, off!(sf_mp_join));
    let backup = read_or_zero(ctx, off!(sf_backup));

    let mut state = Subflow {
        rst: 0,
        live: 0,
        sport: 0,
        _pad: 0,
    };
    if established {
        if let Some(c) = conn_ptr {
            let c = unsafe { &mut *c };
            // The first subflow carries the connection's addresses.
            announce(&subject.with(EventKind::ConnCreated), c, true);
            c.subflows += 1;
            atomic_add(&mut c.live, 1);
            state.live = 1;
        }
        state.sport = read_or_zero(sk, off!(skc_num)) as u16;
        let prev_rst = unsafe { SUBFLOWS.get(&sk) }.map(|s| s.rst).unwrap_or(0);
        state.rst = prev_rst;
        let _ = SUBFLOWS.insert(&sk, &state, 0);
    } else if let Some(s) = unsafe { SUBFLOWS.get(&sk) } {
        state = *s;
        let _ = SUBFLOWS.remove(&sk);
    }

    let conn = conn_ptr.map(|p| unsafe { &*p });
    emit(&subject, conn, |ev| {
        ev.ifindex = kernel::device(sk, &mut ev.ifname);
        ev.local_id = read_or_zero(ctx, off!(sf_local_id)) as i16;
        ev.remote_id = read_or_zero(ctx, off!(sf_remote_id)) as u8;
        if join != 0 {
            ev.flags |= flags::JOIN;
        }
        if backup != 0 {
            ev.flags |= flags::BACKUP;
        }
        if closed {
            if ev.sport == 0 {
                ev.sport = state.sport;
            }
            ev.flags |= state.rst;
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
            let c = unsafe { &mut *c };
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

/// A plain TCP socket's state change (`--all-tcp`): the same lifecycle as an MPTCP
/// connection — owner recorded at connect or from its listener, created/established when the
/// handshake completes, closed at CLOSE — keyed by the socket itself.
// Not inlined: each handler gets its own stack frame, so the deepest call chain stays
// within the verifier's 512-byte combined limit (6.12 counts it strictly).
#[inline(never)]
fn on_plain_tcp(sk: u64, old: u8, new: u8) {
    let netns = kernel::netns(sk);
    if track_listener(sk, netns, old, new) {
        return;
    }
    let filter_netns = filter_netns!();
    if filter_netns != 0 && netns != filter_netns {
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
    };
    let server = old == tcp_state::SYN_RECV && new == tcp_state::ESTABLISHED;
    if (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT) || server {
        let owner = if server {
            unsafe { LISTENERS.get(&listen_key(sk, netns)) }.copied()
        } else {
            Some(current_owner())
        };
        let filter_tgid = filter_tgid!();
        let conn = Conn {
            owner: owner.unwrap_or(NO_OWNER),
            start_ns: unsafe { bpf_ktime_get_ns() },
            live: 0,
            subflows: 0,
            flags: flags::PLAIN_TCP
                | if server { flags::SERVER } else { 0 }
                | if owner.is_some() {
                    flags::OWNER_KNOWN
                } else {
                    0
                },
            filtered: (filter_tgid != 0 && owner.map(|o| o.tgid) != Some(filter_tgid)) as u8,
            announced: 0,
            closing: 0,
            _pad0: 0,
            sport: 0,
            _pad: [0; 6],
        };
        if CONNS.insert(&sk, &conn, 0).is_err() {
            bump(counter::MAP_FULL);
        }
        if !server {
            return;
        }
    }
    let Some(c) = CONNS.get_ptr_mut(&sk) else {
        return;
    };
    // SAFETY: map values stay valid for the whole program run (RCU).
    let c = unsafe { &mut *c };
    if c.filtered != 0 {
        if new == tcp_state::CLOSE {
            let _ = CONNS.remove(&sk);
        }
        return;
    }
    if new == tcp_state::ESTABLISHED {
        c.sport = read_or_zero(sk, off!(skc_num)) as u16;
        announce(&subject, c, true);
    } else if new == tcp_state::CLOSE && old != tcp_state::CLOSE {
        if c.announced == 0 {
            // A connect that failed: report it all the same.
            announce(&subject, c, false);
        }
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
        if kernel::subflow_ctx(sk) != 0 {
            on_subflow(sk, old, new);
        } else if config!(all_tcp) != 0 {
            // Read-only config: with --all-tcp off the verifier drops this branch.
            on_plain_tcp(sk, old, new);
        }
    }
    Ok(())
}

/// Remembers an RST on an MPTCP subflow until the subflow closes.
fn mark_reset(ctx: &BtfTracePointContext, bit: u8) {
    let sk = ctx.arg::<u64>(0);
    if kernel::subflow_ctx(sk) == 0 {
        return;
    }
    let mut state = unsafe { SUBFLOWS.get(&sk) }.copied().unwrap_or(Subflow {
        rst: 0,
        live: 0,
        sport: 0,
        _pad: 0,
    });
    state.rst |= bit;
    if SUBFLOWS.insert(&sk, &state, 0).is_err() {
        warn!(ctx, "SUBFLOWS map full: a subflow's reset is not reported");
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_inet_sock_set_state(&ctx);
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
