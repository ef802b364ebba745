//! The TCP→MPTCP upgrade: `fmod_ret` on `update_socket_protocol` (Linux ≥ 6.6).
//!
//! `__sys_socket()` asks `update_socket_protocol(family, type, protocol)` — a `__weak noinline`
//! function that returns `protocol` and is registered for `fmod_ret` by net/mptcp/bpf.c — which
//! protocol to create. An `fmod_ret` program runs before it: a non-zero return value becomes the
//! function's result and the function is skipped; 0 lets the function run, so the caller gets
//! `protocol` unchanged. We return `IPPROTO_MPTCP` for TCP sockets whose creator is in scope and
//! 0 for everything else (the kernel selftest `progs/mptcpify.c` returns `protocol`, which is
//! the same thing).
//!
//! This is a separate object from the tracer because aya 0.14 can neither load nor parse
//! `fmod_ret` programs. aya-obj 0.3 rejects a `fmod_ret/` section, so the ELF section is named
//! `fentry/update_socket_protocol` — only for aya-obj's parser; the kernel never sees section
//! names. `mptcp-user/src/upgrade/raw_bpf.rs` loads it with `expected_attach_type =
//! BPF_MODIFY_RETURN`. Do not load this object as an fentry program: its return value matters.
#![no_std]
#![no_main]
// BPF has atomic add (BPF_XADD) but the target does not expose `AtomicU64::fetch_add`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use mptcp_common::{
    scope,
    upgrade::{counter, is_tcp_socket, record, Policy, UpgradeRecord, SOCK_CLOEXEC, SOCK_NONBLOCK},
    Owner, Scope, IPPROTO_MPTCP, TASK_COMM_LEN,
};

/// Written by the loader before attaching (one entry).
#[map]
static UPGRADE_POLICY: Array<Policy> = Array::with_max_entries(1, 0);

#[map]
static UPGRADE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// One [`UpgradeRecord`] per in-scope TCP socket while `Policy::events` is set (a reader
/// drains it); 256 KiB is over 6000 records between two reads.
#[map]
static UPGRADE_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = UPGRADE_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: the slot lives as long as the map. Atomic because a preemptible kernel may
        // run two socket() calls on one CPU interleaved (tracing programs only disable
        // migration).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                c, 1,
            )
        };
    }
}

/// The caller of `socket()`, with only the fields the scope looks at filled in (the others
/// stay 0): a comm copy or a cgroup walk is paid for only when the scope asks for it.
#[inline(always)]
fn caller(s: &Scope) -> Owner {
    let f = s.flags;
    let mut o = Owner::UNKNOWN;
    if f & scope::PID != 0 {
        o.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    }
    if f & scope::UID != 0 {
        o.uid = bpf_get_current_uid_gid() as u32;
    }
    if f & scope::CGROUP != 0 {
        // SAFETY: plain helper call (allowed for tracing programs since Linux 5.14; the upgrade
        // needs ≥ 6.6 anyway).
        o.ancestor_cgroup_id = unsafe { bpf_get_current_ancestor_cgroup_id(s.cgroup_level as i32) };
    }
    if f & scope::COMM != 0 {
        o.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }
    o
}

/// Whether the current task is in the policy's scope (`Scope::selects`, shared with the tracer).
#[inline(always)]
fn in_scope(p: &Policy) -> bool {
    let s = &p.scope;
    if s.flags & scope::ALL != 0 {
        return true;
    }
    s.selects(&caller(s))
}

/// Reports one in-scope socket; a full ring counts it as lost, never silently.
#[inline(always)]
fn report(family: i32, ty: i32, count_only: bool) {
    let Some(mut slot) = UPGRADE_EVENTS.reserve::<UpgradeRecord>(0) else {
        bump(counter::LOST);
        return;
    };
    let mut flags = 0;
    if ty & SOCK_NONBLOCK != 0 {
        flags |= record::NONBLOCK;
    }
    if ty & SOCK_CLOEXEC != 0 {
        flags |= record::CLOEXEC;
    }
    if count_only {
        flags |= record::COUNT_ONLY;
    }
    // SAFETY: plain helper calls; the slot is ours until submit and every field is written.
    unsafe {
        slot.as_mut_ptr().write(UpgradeRecord {
            ts_ns: bpf_ktime_get_ns(),
            cgroup_id: bpf_get_current_cgroup_id(),
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            family: family as u16,
            flags,
            comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        });
    }
    slot.submit(0);
}

/// What `update_socket_protocol` should return: `IPPROTO_MPTCP`, or 0 to leave the socket.
#[inline(always)]
fn decide(family: i32, ty: i32, protocol: i32) -> i32 {
    if !is_tcp_socket(family, ty, protocol) {
        return 0;
    }
    bump(counter::SEEN);
    let Some(p) = UPGRADE_POLICY.get(0) else {
        return 0;
    };
    if !in_scope(p) {
        return 0;
    }
    bump(counter::IN_SCOPE);
    if p.events != 0 {
        report(family, ty, p.count_only != 0);
    }
    if p.count_only != 0 {
        return 0;
    }
    bump(counter::UPGRADED);
    IPPROTO_MPTCP as i32
}

/// `int update_socket_protocol(int family, int type, int protocol)`; the context is the
/// arguments as an array of u64.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/update_socket_protocol")]
pub fn mptcp_upgrade(ctx: *mut c_void) -> i32 {
    let args = ctx as *const u64;
    // SAFETY: the verifier allows reading the traced function's arguments from the context.
    let (family, ty, protocol) =
        unsafe { (*args as i32, *args.add(1) as i32, *args.add(2) as i32) };
    decide(family, ty, protocol)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
