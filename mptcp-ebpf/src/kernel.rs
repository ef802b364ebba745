//! Reading kernel structs. Every access goes through an offset the loader resolved from the
//! running kernel's BTF (`OFFSETS`) and `bpf_probe_read_kernel`; nothing here knows a layout.

use aya_ebpf::helpers::{bpf_probe_read_kernel_buf, generated};
use mptcp_common::{Field, Offsets, RawEvent, AF_INET, AF_INET6, IFNAMSIZ};

/// Filled in by the loader before the program is loaded (read-only data, so the verifier sees
/// the values as constants and prunes branches for members this kernel lacks).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = Offsets {
    skc_family: Field::ABSENT,
    skc_daddr: Field::ABSENT,
    skc_rcv_saddr: Field::ABSENT,
    skc_dport: Field::ABSENT,
    skc_num: Field::ABSENT,
    skc_v6_daddr: Field::ABSENT,
    skc_v6_rcv_saddr: Field::ABSENT,
    skc_net: Field::ABSENT,
    skc_bound_dev_if: Field::ABSENT,
    sk_protocol: Field::ABSENT,
    sk_err: Field::ABSENT,
    sk_dst_cache: Field::ABSENT,
    net_ns_inum: Field::ABSENT,
    dst_dev: Field::ABSENT,
    netdev_ifindex: Field::ABSENT,
    netdev_name: Field::ABSENT,
    icsk_ulp_data: Field::ABSENT,
    tcp_is_mptcp: Field::ABSENT,
    tcp_bytes_sent: Field::ABSENT,
    tcp_bytes_acked: Field::ABSENT,
    tcp_bytes_received: Field::ABSENT,
    tcp_total_retrans: Field::ABSENT,
    tcp_srtt_us: Field::ABSENT,
    sf_conn: Field::ABSENT,
    sf_token: Field::ABSENT,
    sf_request_join: Field::ABSENT,
    sf_mp_capable: Field::ABSENT,
    sf_mp_join: Field::ABSENT,
    sf_backup: Field::ABSENT,
    sf_local_id: Field::ABSENT,
    sf_remote_id: Field::ABSENT,
    sf_reset_seen: Field::ABSENT,
    sf_reset_reason: Field::ABSENT,
    sf_request_bkup: Field::ABSENT,
    msk_token: Field::ABSENT,
    msk_first: Field::ABSENT,
    msk_remote_key: Field::ABSENT,
    msk_deny_join_id0: Field::ABSENT,
    rst_reason_arg: Field::ABSENT,
};

/// Reads one member's descriptor; volatile so the compiler does not fold the zero defaults.
macro_rules! off {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&$crate::kernel::OFFSETS.$name) }
    };
}
pub(crate) use off;

/// Reads the member `f` of the object at `base`: 0 for a member absent on this kernel (a
/// read-only constant, so the verifier drops the read), a null `base` or a read that faults.
///
/// Branch-free on purpose: the helper's result is not looked at (it clears the destination
/// when it fails, and a null base is an address it refuses), so each read adds no path for
/// the verifier to explore. Older verifiers (6.1) explore every path of every read in a
/// handler and give up at a million instructions.
#[inline(always)]
pub fn read_or_zero(base: u64, f: Field) -> u64 {
    if f.size == 0 {
        return 0;
    }
    let p = base.wrapping_add(f.offset as u64);
    let mut raw: u64 = 0;
    let size = if f.size > 8 { 8 } else { f.size as u32 };
    // SAFETY: the helper copes with any address; `size` bytes fit in `raw` (little endian,
    // so the member lands in its low bytes).
    unsafe {
        generated::bpf_probe_read_kernel(
            (&mut raw as *mut u64).cast(),
            size,
            p as *const core::ffi::c_void,
        )
    };
    f.extract(raw)
}

/// Copies `dst.len()` bytes of the member `f` (an array: addresses, names).
#[inline(always)]
pub fn read_bytes(base: u64, f: Field, dst: &mut [u8]) {
    if base == 0 || f.size == 0 {
        return;
    }
    let p = base.wrapping_add(f.offset as u64) as *const u8;
    // SAFETY: as above; on a fault the destination is zeroed by the helper.
    let _ = unsafe { bpf_probe_read_kernel_buf(p, dst) };
}

/// Writes the socket's endpoints, as `sock_common` keeps them, into the event.
#[inline(always)]
pub fn tuple(sk: u64, ev: &mut RawEvent) {
    let family = read_or_zero(sk, off!(skc_family)) as u16;
    ev.family = family;
    ev.sport = read_or_zero(sk, off!(skc_num)) as u16;
    ev.dport = u16::from_be(read_or_zero(sk, off!(skc_dport)) as u16);
    ev.saddr = [0; 16];
    ev.daddr = [0; 16];
    if family == AF_INET {
        // The kernel stores IPv4 addresses in network order; keep the bytes as they are.
        let s = read_or_zero(sk, off!(skc_rcv_saddr)) as u32;
        let d = read_or_zero(sk, off!(skc_daddr)) as u32;
        ev.saddr[..4].copy_from_slice(&s.to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&d.to_ne_bytes());
    } else if family == AF_INET6 {
        read_bytes(sk, off!(skc_v6_rcv_saddr), &mut ev.saddr);
        read_bytes(sk, off!(skc_v6_daddr), &mut ev.daddr);
    }
}

/// Inode number of the socket's network namespace (what `ip netns identify`/`lsns` show).
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    let net = read_or_zero(sk, off!(skc_net));
    read_or_zero(net, off!(net_ns_inum)) as u32
}

/// The device the socket's cached route leaves through, falling back to the bound device.
#[inline(always)]
pub fn device(sk: u64, name: &mut [u8; IFNAMSIZ]) -> u32 {
    let dst = read_or_zero(sk, off!(sk_dst_cache));
    let dev = read_or_zero(dst, off!(dst_dev));
    if dev != 0 {
        read_bytes(dev, off!(netdev_name), name);
        return read_or_zero(dev, off!(netdev_ifindex)) as u32;
    }
    read_or_zero(sk, off!(skc_bound_dev_if)) as u32
}

/// The MPTCP subflow context of a TCP socket, or 0 when the socket is not an MPTCP subflow.
#[inline(always)]
pub fn subflow_ctx(sk: u64) -> u64 {
    if read_or_zero(sk, off!(tcp_is_mptcp)) == 0 {
        return 0;
    }
    read_or_zero(sk, off!(icsk_ulp_data))
}

/// The connection's local token: the MPTCP socket's, else the subflow context's copy (on the
/// server the MPTCP socket's token is still 0 at some early transitions).
#[inline(always)]
pub fn token(msk: u64, ctx: u64) -> u32 {
    let t = read_or_zero(msk, off!(msk_token)) as u32;
    if t != 0 {
        return t;
    }
    read_or_zero(ctx, off!(sf_token)) as u32
}
