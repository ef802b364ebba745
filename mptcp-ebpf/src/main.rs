//! mptcp-trace kernel programs: MPTCP connection and subflow lifecycle from tracepoints.
//!
//! `inet_sock_set_state` fires for the MPTCP socket itself (`sk_protocol == IPPROTO_MPTCP`) and
//! for each of its TCP subflows (`tcp_sock.is_mptcp`). Per connection we keep the owning process
//! (recorded in process context when the socket connects or its listener was created) so that
//! subflows created later by kworkers or in softirq are attributed to the right program — the
//! same pattern as bcc's tcplife, keyed by the MPTCP socket's address.
#![no_std]
#![no_main]

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
    counter, flags, tcp_state, Config, EventKind, RawEvent, IPPROTO_MPTCP, IPPROTO_TCP,
    TASK_COMM_LEN,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter_tgid: 0,
    filter_netns: 0,
};

macro_rules! config {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&CONFIG.$name) }
    };
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

/// One live MPTCP connection, keyed by the MPTCP socket's address.
#[repr(C)]
#[derive(Clone, Copy)]
struct Conn {
    owner: Owner,
    start_ns: u64,
    subflows: u32,
    /// `flags::SERVER`, `flags::OWNER_KNOWN`.
    flags: u8,
    /// Outside the kernel-side filter: report nothing about it.
    filtered: u8,
    _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ListenKey {
    netns: u32,
    port: u32,
}

#[map]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(65536, 0);

/// MPTCP listeners by (netns, port): whoever listens owns the connections it accepts.
#[map]
static LISTENERS: HashMap<ListenKey, Owner> = HashMap::with_max_entries(4096, 0);

/// RSTs seen on subflows (`flags::RST_*`), reported and forgotten when the subflow closes.
#[map]
static RESETS: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

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
struct Subject {
    kind: EventKind,
    conn: u64,
    sk: u64,
    token: u32,
    netns: u32,
    oldstate: u8,
    newstate: u8,
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
    kernel::tuple(if s.sk != 0 { s.sk } else { s.conn }, ev);
    fill(ev);
    slot.submit(0);
}

/// A state change of the MPTCP socket itself.
fn on_msk(msk: u64, old: u8, new: u8) {
    let netns = kernel::netns(msk);
    if new == tcp_state::LISTEN {
        let key = ListenKey {
            netns,
            port: read_or_zero(msk, off!(skc_num)) as u32,
        };
        let _ = LISTENERS.insert(&key, &current_owner(), 0);
        return;
    }
    if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let key = ListenKey {
            netns,
            port: read_or_zero(msk, off!(skc_num)) as u32,
        };
        let _ = LISTENERS.remove(&key);
        return;
    }
    let filter_netns = config!(filter_netns);
    let subject = |kind| Subject {
        kind,
        conn: msk,
        sk: 0,
        token: kernel::token(msk, 0),
        netns,
        oldstate: old,
        newstate: new,
    };

    let created_client = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    let created_server = old == tcp_state::LISTEN && new == tcp_state::ESTABLISHED;
    if created_client || created_server {
        let (owner, fl) = if created_client {
            (Some(current_owner()), 0)
        } else {
            let key = ListenKey {
                netns,
                port: read_or_zero(msk, off!(skc_num)) as u32,
            };
            (
                unsafe { LISTENERS.get(&key) }.copied(),
                flags::SERVER,
            )
        };
        let filter_tgid = config!(filter_tgid);
        let filtered = (filter_netns != 0 && netns != filter_netns)
            || (filter_tgid != 0 && owner.map(|o| o.tgid) != Some(filter_tgid));
        let conn = Conn {
            owner: owner.unwrap_or(Owner {
                cgroup_id: 0,
                tgid: 0,
                _pad: 0,
                comm: [0; TASK_COMM_LEN],
            }),
            start_ns: unsafe { bpf_ktime_get_ns() },
            subflows: 0,
            flags: fl | if owner.is_some() { flags::OWNER_KNOWN } else { 0 },
            filtered: filtered as u8,
            _pad: [0; 2],
        };
        if CONNS.insert(&msk, &conn, 0).is_err() {
            bump(counter::LOST);
        }
        if filtered {
            bump(counter::FILTERED);
            return;
        }
        // A connecting client's MPTCP socket has no addresses yet: its conn_created is sent
        // when the connect resolves (below), stamped with this moment.
        if created_server {
            emit(&subject(EventKind::ConnCreated), Some(&conn), |_| {});
            emit(&subject(EventKind::ConnEstablished), Some(&conn), |_| {});
        }
        return;
    }

    let conn = unsafe { CONNS.get(&msk) };
    if !visible(conn, netns, filter_netns) {
        if new == tcp_state::CLOSE {
            let _ = CONNS.remove(&msk);
        }
        return;
    }
    if old == tcp_state::SYN_SENT {
        if let Some(c) = conn {
            emit(&subject(EventKind::ConnCreated), Some(c), |ev| ev.ts_ns = c.start_ns);
        }
    }
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        emit(&subject(EventKind::ConnEstablished), conn, |_| {});
        // By the time the MPTCP socket is established the first subflow has processed the
        // SYN/ACK, so its `mp_capable` says whether the peer spoke MPTCP.
        let first = read_or_zero(msk, off!(msk_first));
        let ctx = kernel::subflow_ctx(first);
        if ctx != 0 && off!(sf_mp_capable).is_present() && read_or_zero(ctx, off!(sf_mp_capable)) == 0
        {
            emit(&subject(EventKind::ConnFallback), conn, |_| {});
        }
    } else if new == tcp_state::CLOSE && old != tcp_state::CLOSE {
        emit(&subject(EventKind::ConnClosed), conn, |_| {});
        let _ = CONNS.remove(&msk);
    }
}

/// Whether events about a connection pass the kernel-side filters. Connections that predate
/// the tracer have no entry: they are shown unless a process filter is set.
#[inline(always)]
fn visible(conn: Option<&Conn>, netns: u32, filter_netns: u32) -> bool {
    if filter_netns != 0 && netns != filter_netns {
        bump(counter::FILTERED);
        return false;
    }
    let visible = match conn {
        Some(c) => c.filtered == 0,
        None => config!(filter_tgid) == 0,
    };
    if !visible {
        bump(counter::FILTERED);
    }
    visible
}

/// A state change of one TCP subflow of an MPTCP connection.
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
    // SAFETY: the entry is only removed when its MPTCP socket closes, after its subflows.
    let conn = conn_ptr.map(|p| unsafe { &*p });
    if !visible(conn, netns, config!(filter_netns)) {
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
        token: kernel::token(msk, ctx),
        netns,
        oldstate: old,
        newstate: new,
    };
    if established {
        if let Some(p) = conn_ptr {
            unsafe { (*p).subflows += 1 };
        }
    }
    // On the client, `mp_join` is only set after the SYN_SENT→ESTABLISHED transition, but
    // `request_join` is set when the join subflow is created; on the server `mp_join` is set.
    let join = read_or_zero(ctx, off!(sf_request_join)) | read_or_zero(ctx, off!(sf_mp_join));
    let backup = read_or_zero(ctx, off!(sf_backup));
    let rst = if closed {
        let r = unsafe { RESETS.get(&sk) }.copied().unwrap_or(0);
        let _ = RESETS.remove(&sk);
        r
    } else {
        0
    };
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
        ev.subflows += established as u32;
        if closed {
            ev.flags |= rst;
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
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg::<u64>(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    let proto = read_or_zero(sk, off!(sk_protocol)) as u16;
    if proto == IPPROTO_MPTCP {
        on_msk(sk, old, new);
    } else if proto == IPPROTO_TCP {
        on_subflow(sk, old, new);
    }
    Ok(())
}

/// Remembers an RST on an MPTCP subflow until the subflow closes.
fn mark_reset(ctx: &BtfTracePointContext, bit: u8) {
    let sk = ctx.arg::<u64>(0);
    if kernel::subflow_ctx(sk) == 0 {
        return;
    }
    let prev = unsafe { RESETS.get(&sk) }.copied().unwrap_or(0);
    if RESETS.insert(&sk, &(prev | bit), 0).is_err() {
        warn!(ctx, "RESETS map full: a subflow's reset is not reported");
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
