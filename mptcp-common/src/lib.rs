//! Types that cross the kernel↔user boundary, defined once for both sides.
//!
//! Everything here is `#[repr(C)]`, has no implicit padding (so no kernel stack bytes leak into
//! records), and is plain data. The `user` feature adds `aya::Pod` so userspace can put these
//! types into maps and globals.
#![no_std]

pub const TASK_COMM_LEN: usize = 16;
pub const IFNAMSIZ: usize = 16;

/// `IPPROTO_MPTCP`: the protocol number of an MPTCP socket (`sk_protocol`).
pub const IPPROTO_MPTCP: u16 = 262;
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Where one member of a kernel struct lives, as resolved from the running kernel's BTF.
///
/// `size` is how many bytes the program reads at `offset` (1, 2, 4 or 8); `0` means the member
/// does not exist on this kernel and whatever depends on it is disabled. For bitfields the value
/// is `(raw >> shift) & ((1 << bits) - 1)`; for whole members `bits == size * 8` and `shift == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u8,
    pub shift: u8,
    pub bits: u8,
    /// 1 when the member is a signed integer (sign-extend after masking).
    pub signed: u8,
}

impl Field {
    pub const ABSENT: Field = Field {
        offset: 0,
        size: 0,
        shift: 0,
        bits: 0,
        signed: 0,
    };

    pub const fn is_present(&self) -> bool {
        self.size != 0
    }

    /// Extracts this member's value from the `size` bytes read at `offset` (little endian,
    /// zero-extended into a `u64`).
    #[inline(always)]
    pub const fn extract(&self, raw: u64) -> u64 {
        let bits = self.bits as u32;
        let v = if bits >= 64 {
            raw
        } else {
            (raw >> self.shift) & ((1u64 << bits) - 1)
        };
        if self.signed != 0 && bits > 0 && bits < 64 && (v >> (bits - 1)) & 1 == 1 {
            v | (u64::MAX << bits)
        } else {
            v
        }
    }
}

/// Every kernel struct member the programs read, resolved by the loader from
/// `/sys/kernel/btf/vmlinux` and handed to the programs as the read-only global `OFFSETS`.
/// Pointers are followed with `bpf_probe_read_kernel`, never dereferenced directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // struct sock_common (through struct sock)
    pub skc_family: Field,
    pub skc_daddr: Field,
    pub skc_rcv_saddr: Field,
    pub skc_dport: Field,
    pub skc_num: Field,
    pub skc_v6_daddr: Field,
    pub skc_v6_rcv_saddr: Field,
    pub skc_net: Field,
    pub skc_bound_dev_if: Field,
    // struct sock
    pub sk_protocol: Field,
    pub sk_err: Field,
    pub sk_dst_cache: Field,
    // struct net → ns.inum
    pub net_ns_inum: Field,
    // struct dst_entry → dev, struct net_device
    pub dst_dev: Field,
    pub netdev_ifindex: Field,
    pub netdev_name: Field,
    // struct inet_connection_sock
    pub icsk_ulp_data: Field,
    // struct tcp_sock
    pub tcp_is_mptcp: Field,
    pub tcp_bytes_sent: Field,
    pub tcp_bytes_acked: Field,
    pub tcp_bytes_received: Field,
    pub tcp_total_retrans: Field,
    pub tcp_srtt_us: Field,
    // struct mptcp_subflow_context
    pub sf_conn: Field,
    pub sf_token: Field,
    pub sf_request_join: Field,
    pub sf_mp_capable: Field,
    pub sf_mp_join: Field,
    pub sf_backup: Field,
    pub sf_local_id: Field,
    pub sf_remote_id: Field,
    pub sf_reset_seen: Field,
    pub sf_reset_reason: Field,
    /// This side asked for backup priority (`MPTCP_SUBFLOW_FLAG_BKUP_LOC` in sock_diag);
    /// `backup` is the peer's request (`BKUP_REM`).
    pub sf_request_bkup: Field,
    // struct mptcp_sock
    pub msk_token: Field,
    pub msk_first: Field,
    /// The peer's key: its token is the top 32 bits of SHA-256(key), computed in userspace.
    pub msk_remote_key: Field,
    /// `mptcp_sock.pm.remote_deny_join_id0`.
    pub msk_deny_join_id0: Field,
    /// Not a member: present (`size` 4) when the `tcp_send_reset` tracepoint has the
    /// `enum sk_rst_reason` argument (Linux ≥ 6.10), which is then `offset`'s argument index.
    /// Taken from the tracepoint's BTF prototype, so the program never reads an argument the
    /// kernel does not pass (the verifier would refuse it).
    pub rst_reason_arg: Field,
}

/// How many values one selector flag holds (`--pid A --pid B`, `--comm`, `--netns`).
pub const MAX_PIDS: usize = 8;
pub const MAX_COMMS: usize = 8;
pub const MAX_NETNS: usize = 8;

/// Bits of [`Scope::flags`]. `ALL` selects every process; otherwise a process is selected when
/// it matches every criterion whose bit is set (any of the pids, any of the names). No bit set:
/// nothing is selected, so a zeroed scope never upgrades or shows anything by accident.
pub mod scope {
    pub const ALL: u32 = 1 << 0;
    /// The process's cgroup is `cgroup_id` or below it (`cgroup_level` deep).
    pub const CGROUP: u32 = 1 << 1;
    /// The process's `comm` is one of `comms[..n_comms]`.
    pub const COMM: u32 = 1 << 2;
    /// The process id (tgid) is one of `pids[..n_pids]`.
    pub const PID: u32 = 1 << 3;
    /// The process's real uid is `uid`.
    pub const UID: u32 = 1 << 4;
}

/// Which processes: the one selector both kernel programs apply to the process that owns a
/// socket. The upgrade matches the caller of `socket()`; the tracer matches the connection's
/// owner (the process that connected, or the one that created the listener), once, when the
/// connection is created, so a verdict can never be inherited by a reused socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// [`scope`] bits.
    pub flags: u32,
    /// Depth of `cgroup_id` below the cgroup2 root (the root is level 0).
    pub cgroup_level: u32,
    /// cgroup v2 id (the directory's inode number).
    pub cgroup_id: u64,
    pub uid: u32,
    pub n_pids: u32,
    pub pids: [u32; MAX_PIDS],
    pub n_comms: u32,
    pub _pad: u32,
    /// NUL-padded command names (at most 15 bytes each, as in `/proc/PID/comm`).
    pub comms: [[u8; TASK_COMM_LEN]; MAX_COMMS],
}

impl Scope {
    /// Nothing selected.
    pub const NONE: Scope = Scope {
        flags: 0,
        cgroup_level: 0,
        cgroup_id: 0,
        uid: 0,
        n_pids: 0,
        pids: [0; MAX_PIDS],
        n_comms: 0,
        _pad: 0,
        comms: [[0; TASK_COMM_LEN]; MAX_COMMS],
    };
    /// Every process.
    pub const ALL: Scope = Scope {
        flags: scope::ALL,
        ..Scope::NONE
    };
}

impl Default for Scope {
    fn default() -> Self {
        Scope::ALL
    }
}

/// The process a [`Scope`] is matched against: the caller of `socket()` for the upgrade, a
/// connection's owner for the tracer. Plain data, filled by the programs from helpers
/// (`bpf_get_current_*`) and by the unit tests by hand.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `bpf_get_current_cgroup_id()`: the process's own cgroup v2 id.
    pub cgroup_id: u64,
    /// `bpf_get_current_ancestor_cgroup_id(scope.cgroup_level)`: the id of the process's
    /// cgroup ancestor at the scope's cgroup depth (its own cgroup when that is the depth; 0
    /// when the process is not that deep, or when the scope has no [`scope::CGROUP`]: the
    /// helper is called only then, so the tracer loads on kernels without it for tracing).
    pub ancestor_cgroup_id: u64,
    /// Process id (tgid).
    pub tgid: u32,
    /// Real uid (`bpf_get_current_uid_gid() as u32`).
    pub uid: u32,
    /// NUL-padded command name (`bpf_get_current_comm`).
    pub comm: [u8; TASK_COMM_LEN],
}

impl Owner {
    /// No process known (a listener that predates the tracer).
    pub const UNKNOWN: Owner = Owner {
        cgroup_id: 0,
        ancestor_cgroup_id: 0,
        tgid: 0,
        uid: 0,
        comm: [0; TASK_COMM_LEN],
    };
}

/// A command name as two words: comparing two NUL-padded names is two compares, no byte loop
/// (cheap for the verifier, identical to a 16-byte `memcmp`).
#[inline(always)]
const fn comm_words(c: &[u8; TASK_COMM_LEN]) -> (u64, u64) {
    (
        u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        u64::from_ne_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]),
    )
}

impl Scope {
    /// Whether the process `o` is in this scope: [`scope::ALL`] selects everything, no bit
    /// selects nothing, otherwise every criterion whose bit is set must match (the pid any of
    /// `pids[..n_pids]`, the name any of `comms[..n_comms]`, compared as NUL-padded 16-byte
    /// names). The one definition both kernel programs and userspace use; loops are bounded
    /// by the array sizes, so the verifier sees them end.
    #[inline(always)]
    pub fn selects(&self, o: &Owner) -> bool {
        let f = self.flags;
        if f & scope::ALL != 0 {
            return true;
        }
        if f == 0 {
            return false;
        }
        if f & scope::PID != 0 {
            let n = self.n_pids as usize;
            let mut hit = false;
            let mut i = 0;
            while i < MAX_PIDS {
                if i >= n {
                    break;
                }
                if self.pids[i] == o.tgid {
                    hit = true;
                    break;
                }
                i += 1;
            }
            if !hit {
                return false;
            }
        }
        if f & scope::UID != 0 && o.uid != self.uid {
            return false;
        }
        // The ancestor at the scope cgroup's depth is the scope cgroup itself exactly when the
        // process is in it or below it.
        if f & scope::CGROUP != 0 && o.ancestor_cgroup_id != self.cgroup_id {
            return false;
        }
        if f & scope::COMM != 0 {
            let n = self.n_comms as usize;
            let have = comm_words(&o.comm);
            let mut hit = false;
            let mut i = 0;
            while i < MAX_COMMS {
                if i >= n {
                    break;
                }
                let want = comm_words(&self.comms[i]);
                if want.0 == have.0 && want.1 == have.1 {
                    hit = true;
                    break;
                }
                i += 1;
            }
            if !hit {
                return false;
            }
        }
        true
    }
}

/// The tracer's kernel-side selection, handed to the programs as the read-only global
/// `CONFIG`: everything that can be decided in the kernel is, so that unrelated traffic costs
/// neither ring-buffer space nor userspace CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Whose connections (their owner).
    pub scope: Scope,
    /// Only sockets in one of these network namespaces (inode numbers); 0 entries: any.
    pub n_netns: u32,
    pub netns: [u32; MAX_NETNS],
    /// 1: also report plain TCP connections (`--all-tcp`).
    pub all_tcp: u32,
    /// 1: the rescue program is loaded beside the main state-change program (a preemptible
    /// kernel), and the main program skips a change the rescue program already took.
    pub rescue: u32,
    /// Explicit padding to the struct's 8-byte alignment (no uninitialised bytes): always 0.
    pub _pad: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scope: Scope::ALL,
            n_netns: 0,
            netns: [0; MAX_NETNS],
            all_tcp: 0,
            rescue: 0,
            _pad: 0,
        }
    }
}

/// A connection that was open before the tracer started, as userspace's snapshot (sock_diag)
/// found it: the key of the `EXISTING` map, whose value is the connection's [`Owner`] (from the
/// socket-inode → process mapping, what `ss -p` does). The programs have no entry in `CONNS` for
/// such a connection; they find its owner here by namespace and token, so its later events
/// carry the owner and are selected like any other connection's. Userspace removes the entry
/// once the connection's close has been reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExistingKey {
    pub netns: u32,
    pub token: u32,
}

/// A listener that was open before the tracer started: the key of the `LISTENERS` map (its
/// value is the listener's [`Owner`]); userspace seeds it from the snapshot so that the
/// connections such a listener accepts have an owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u32,
}

/// What a [`RawEvent`] reports. Numbers are part of the kernel↔user contract.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ConnCreated = 1,
    ConnEstablished = 2,
    ConnFallback = 3,
    ConnClosed = 4,
    SubflowEstablished = 5,
    SubflowClosed = 6,
    /// A subflow closed without ever reaching ESTABLISHED (a refused or timed-out connect or
    /// join).
    SubflowFailed = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ConnCreated,
            2 => Self::ConnEstablished,
            3 => Self::ConnFallback,
            4 => Self::ConnClosed,
            5 => Self::SubflowEstablished,
            6 => Self::SubflowClosed,
            7 => Self::SubflowFailed,
            _ => return None,
        })
    }
}

/// Bits of [`RawEvent::flags`].
pub mod flags {
    /// The subflow was created by MP_JOIN (not the initial subflow).
    pub const JOIN: u8 = 1 << 0;
    /// The subflow is a backup path.
    pub const BACKUP: u8 = 1 << 1;
    /// The connection was accepted by a listener (server side).
    pub const SERVER: u8 = 1 << 2;
    /// A TCP RST was received on the subflow.
    pub const RST_RECEIVED: u8 = 1 << 3;
    /// A TCP RST was sent on the subflow.
    pub const RST_SENT: u8 = 1 << 4;
    /// `pid`/`comm`/`cgroup_id` name the process that owns the MPTCP socket.
    pub const OWNER_KNOWN: u8 = 1 << 5;
    /// The peer sent MP_TCPRST: `reset_reason` holds its reason code.
    pub const MPTCP_RESET: u8 = 1 << 6;
    /// A plain TCP connection, reported because of `--all-tcp`: `conn` is its socket.
    pub const PLAIN_TCP: u8 = 1 << 7;
}

/// Bits of [`RawEvent::xflags`] (`flags` is full).
pub mod xflags {
    /// The peer asked for backup priority on this subflow.
    pub const PEER_BACKUP: u8 = 1 << 0;
    /// This host sent a reset on the subflow and `rst_sent_reason` holds the kernel's
    /// `enum sk_rst_reason` value (Linux ≥ 6.10).
    pub const RST_SENT_REASON: u8 = 1 << 1;
    /// On a client's `ConnEstablished`: this kernel records whether the peer's MP_CAPABLE
    /// forbids joins to its initial address (`mptcp_pm_data.remote_deny_join_id0`), and
    /// [`PEER_DENY_JOIN_ID0`] holds the answer.
    pub const DENY_JOIN_ID0_KNOWN: u8 = 1 << 2;
    /// The peer set the C flag ("deny join id 0", RFC 8684 §3.1): no subflow may join its
    /// initial address and port.
    pub const PEER_DENY_JOIN_ID0: u8 = 1 << 3;
}

/// One ring-buffer record. Which fields are meaningful depends on `kind`; unused ones are zero.
/// Addresses are in network byte order as the kernel stores them (IPv4 in the first 4 bytes);
/// ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Address of the MPTCP socket: identifies the connection for the lifetime of the socket.
    pub conn: u64,
    /// Address of the subflow's TCP socket (subflow events only).
    pub sk: u64,
    /// When the connection was created (monotonic ns), 0 when it predates the tracer.
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub kind: u32,
    pub pid: u32,
    pub token: u32,
    pub netns: u32,
    pub ifindex: u32,
    pub retrans: u32,
    pub srtt_us: u32,
    pub subflows: u32,
    /// `sk_err` at close: the errno that ended the subflow, 0 for none.
    pub sk_err: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub local_id: i16,
    pub remote_id: u8,
    pub flags: u8,
    /// MP_TCPRST reason code (RFC 8684 §3.6), valid with `flags::MPTCP_RESET`.
    pub reset_reason: u8,
    pub oldstate: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
    pub ifname: [u8; IFNAMSIZ],
    pub newstate: u8,
    /// [`xflags`] bits.
    pub xflags: u8,
    /// `enum sk_rst_reason` of the last reset this host sent, with `xflags::RST_SENT_REASON`
    /// (names come from the kernel's BTF: values differ between kernels).
    pub rst_sent_reason: u16,
    pub _pad: u32,
    /// The peer's MPTCP key (`mptcp_sock.remote_key`), 0 when not known (yet): userspace
    /// turns it into the peer's token and never shows the key itself.
    pub peer_key: u64,
}

/// Index of the per-CPU counters in the `COUNTERS` map. Every way an event can go missing in
/// the kernel has its own counter, so a gap in the stream is always accounted for.
pub mod counter {
    /// Ring-buffer reservations that failed: events lost.
    pub const LOST: u32 = 0;
    /// Connections (or subflows) the programs could not track because their map was full:
    /// their later events are missing.
    pub const MAP_FULL: u32 = 1;
    /// A tracked connection (or subflow) whose entry was still in its map when a new socket
    /// at the same kernel address started: the old one's close was never seen, so its
    /// `conn_closed` (or `subflow_closed`) is missing. Should stay 0; it exists so that any
    /// path the programs do not know about still shows up as loss instead of a silent leak.
    pub const STALE: u32 = 2;
    /// State changes the rescue program handled because the kernel skipped the main program's
    /// run for them (it was already running on that CPU): not lost. Userspace takes them off
    /// the main program's `recursion_misses`. Not a loss counter, so not in [`NAMES`].
    pub const RESCUED: u32 = 3;
    pub const COUNT: u32 = 4;
    /// How userspace names each loss counter in the `lost` breakdown (NDJSON field names).
    pub const NAMES: [&str; 3] = ["ring_buffer", "map_full", "stale_entry"];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `repr(C)` plain data without padding or pointers.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::upgrade::Policy {}
    unsafe impl aya::Pod for super::upgrade::UpgradeRecord {}
    unsafe impl aya::Pod for super::Scope {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ExistingKey {}
    unsafe impl aya::Pod for super::ListenKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_event_has_no_implicit_padding() {
        // Sum of field sizes == struct size: any gap would be uninitialised memory.
        assert_eq!(
            core::mem::size_of::<RawEvent>(),
            8 * 8 + 9 * 4 + 4 * 2 + 4 + 16 * 4 + 8 + 8
        );
        assert_eq!(core::mem::size_of::<RawEvent>() % 8, 0);
    }

    #[test]
    fn selector_types_have_no_implicit_padding() {
        use upgrade::Policy;
        let scope = 4 * 2 + 8 + 4 * 2 + 4 * MAX_PIDS + 4 * 2 + TASK_COMM_LEN * MAX_COMMS;
        assert_eq!(core::mem::size_of::<Scope>(), scope);
        assert_eq!(core::mem::size_of::<Policy>(), scope + 8);
        assert_eq!(
            core::mem::size_of::<Config>(),
            scope + 4 + 4 * MAX_NETNS + 4 + 4 + 4
        );
        assert_eq!(core::mem::size_of::<Config>() % 8, 0);
    }

    fn name(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut out = [0; TASK_COMM_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn curl() -> Owner {
        Owner {
            cgroup_id: 900,
            ancestor_cgroup_id: 77,
            tgid: 4242,
            uid: 1000,
            comm: name("curl"),
        }
    }

    #[test]
    fn owner_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Owner>(), 8 * 2 + 4 * 2 + TASK_COMM_LEN);
    }

    #[test]
    fn all_selects_everything_and_nothing_selects_nothing() {
        assert!(Scope::ALL.selects(&curl()));
        assert!(Scope::ALL.selects(&Owner::UNKNOWN));
        assert!(!Scope::NONE.selects(&curl()));
        // ALL wins over any other bit.
        let s = Scope {
            flags: scope::ALL | scope::UID,
            uid: 1,
            ..Scope::NONE
        };
        assert!(s.selects(&curl()));
    }

    #[test]
    fn pid_matches_any_of_the_listed_pids_only() {
        let mut s = Scope {
            flags: scope::PID,
            n_pids: 2,
            ..Scope::NONE
        };
        s.pids[0] = 1;
        s.pids[1] = 4242;
        assert!(s.selects(&curl()));
        s.n_pids = 1;
        assert!(!s.selects(&curl()), "pids past n_pids are ignored");
        // Zero pids listed: nothing matches, not even tgid 0.
        s.n_pids = 0;
        assert!(!s.selects(&Owner::UNKNOWN));
        // A count larger than the array is bounded by it.
        s.n_pids = 1000;
        s.pids = [4242; MAX_PIDS];
        assert!(s.selects(&curl()));
    }

    #[test]
    fn comm_is_compared_as_a_whole_nul_padded_name() {
        let mut s = Scope {
            flags: scope::COMM,
            n_comms: 2,
            ..Scope::NONE
        };
        s.comms[0] = name("wget");
        s.comms[1] = name("curl");
        assert!(s.selects(&curl()));
        for other in ["cur", "curl2", "Curl", "wge"] {
            let o = Owner {
                comm: name(other),
                ..curl()
            };
            assert!(!s.selects(&o), "{other}");
        }
        // 15 bytes, the longest name the kernel keeps.
        s.comms[1] = name("fifteen-bytes-x");
        let long = Owner {
            comm: name("fifteen-bytes-x"),
            ..curl()
        };
        assert!(s.selects(&long));
        s.n_comms = 1;
        assert!(!s.selects(&long), "names past n_comms are ignored");
    }

    #[test]
    fn cgroup_matches_through_the_ancestor_id() {
        let s = Scope {
            flags: scope::CGROUP,
            cgroup_id: 77,
            cgroup_level: 2,
            ..Scope::NONE
        };
        assert!(s.selects(&curl()));
        let elsewhere = Owner {
            ancestor_cgroup_id: 78,
            ..curl()
        };
        assert!(!s.selects(&elsewhere));
        // The process's own cgroup id does not count: only the ancestor at the level does.
        let own = Owner {
            cgroup_id: 77,
            ancestor_cgroup_id: 0,
            ..curl()
        };
        assert!(!s.selects(&own));
    }

    #[test]
    fn every_set_criterion_must_match() {
        let mut s = Scope {
            flags: scope::UID | scope::COMM | scope::PID | scope::CGROUP,
            uid: 1000,
            n_pids: 1,
            n_comms: 1,
            cgroup_id: 77,
            ..Scope::NONE
        };
        s.pids[0] = 4242;
        s.comms[0] = name("curl");
        assert!(s.selects(&curl()));
        for o in [
            Owner { uid: 0, ..curl() },
            Owner { tgid: 1, ..curl() },
            Owner {
                comm: name("ncat"),
                ..curl()
            },
            Owner {
                ancestor_cgroup_id: 1,
                ..curl()
            },
        ] {
            assert!(!s.selects(&o), "{o:?}");
        }
        // An unknown owner never matches a restricted scope.
        assert!(!s.selects(&Owner::UNKNOWN));
        let uid0 = Scope {
            flags: scope::UID,
            uid: 0,
            ..Scope::NONE
        };
        assert!(uid0.selects(&Owner::UNKNOWN), "uid 0 is a real uid");
    }

    #[test]
    fn upgrade_matches_only_tcp_stream_sockets() {
        use upgrade::is_tcp_socket;
        const SOCK_DGRAM: i32 = 2;
        const SOCK_NONBLOCK: i32 = 0o4000;
        const SOCK_CLOEXEC: i32 = 0o2000000;
        const AF_UNIX: i32 = 1;
        assert!(is_tcp_socket(2, 1, 0));
        assert!(is_tcp_socket(10, 1, 6));
        assert!(is_tcp_socket(2, 1 | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        assert!(!is_tcp_socket(2, SOCK_DGRAM, 0));
        assert!(!is_tcp_socket(AF_UNIX, 1, 0));
        assert!(!is_tcp_socket(2, 1, 262));
        assert!(!is_tcp_socket(2, 1, 17));
    }

    #[test]
    fn field_extracts_bitfields_and_signed_values() {
        let bit = Field {
            offset: 0,
            size: 1,
            shift: 3,
            bits: 1,
            signed: 0,
        };
        assert_eq!(bit.extract(0b1000), 1);
        assert_eq!(bit.extract(0b0111), 0);
        let nibble = Field {
            offset: 0,
            size: 1,
            shift: 2,
            bits: 4,
            signed: 0,
        };
        assert_eq!(nibble.extract(0b11_0101), 0b1101);
        let s16 = Field {
            offset: 0,
            size: 2,
            shift: 0,
            bits: 16,
            signed: 1,
        };
        assert_eq!(s16.extract(0xffff) as i64, -1);
        assert_eq!(s16.extract(7), 7);
        let whole = Field {
            offset: 0,
            size: 8,
            shift: 0,
            bits: 64,
            signed: 0,
        };
        assert_eq!(whole.extract(u64::MAX), u64::MAX);
    }
}

/// The TCP→MPTCP upgrade (`fmod_ret/update_socket_protocol`): its policy and counters.
///
/// The loader writes one [`upgrade::Policy`] into the program's `UPGRADE_POLICY` array map (so a
/// pinned upgrade's scope can be read back by `upgrade --status`); the program counts into the
/// per-CPU array `UPGRADE_COUNTERS`, indexed by [`upgrade::counter`].
pub mod upgrade {
    /// The upgrade's scope, read by the program on every `socket()`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Policy {
        pub scope: super::Scope,
        /// 1: count what would be upgraded, change nothing.
        pub count_only: u32,
        /// 1: write an [`UpgradeRecord`] for each in-scope TCP socket to `UPGRADE_EVENTS`.
        /// Only set while a reader drains that ring (`run --trace`, `upgrade --events`): a
        /// pinned upgrade without one would fill it and count every later socket as lost.
        pub events: u32,
    }

    impl Policy {
        /// Nothing in scope.
        pub const NONE: Policy = Policy {
            scope: super::Scope::NONE,
            count_only: 0,
            events: 0,
        };
    }

    /// Index of the per-CPU counters in `UPGRADE_COUNTERS`.
    pub mod counter {
        /// TCP sockets created with `socket()`: AF_INET/AF_INET6, SOCK_STREAM, protocol 0 or
        /// IPPROTO_TCP.
        pub const SEEN: u32 = 0;
        /// Of those, the ones whose creator is in scope.
        pub const IN_SCOPE: u32 = 1;
        /// Of those, the ones turned into MPTCP (0 in count-only mode).
        pub const UPGRADED: u32 = 2;
        /// Records that did not fit in `UPGRADE_EVENTS` (the reader was too slow).
        pub const LOST: u32 = 3;
        pub const COUNT: u32 = 4;
    }

    /// [`UpgradeRecord::flags`].
    pub mod record {
        /// The caller asked for SOCK_NONBLOCK.
        pub const NONBLOCK: u16 = 1;
        /// The caller asked for SOCK_CLOEXEC.
        pub const CLOEXEC: u16 = 2;
        /// `--count-only`: the socket stayed TCP.
        pub const COUNT_ONLY: u16 = 4;
    }

    /// `SOCK_NONBLOCK` / `SOCK_CLOEXEC` as `socket()`'s type carries them (x86, arm64).
    pub const SOCK_NONBLOCK: i32 = 0o4000;
    pub const SOCK_CLOEXEC: i32 = 0o2000000;

    /// One in-scope TCP `socket()` the upgrade program saw, in `UPGRADE_EVENTS`: becomes a
    /// `socket_upgraded` event.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct UpgradeRecord {
        /// CLOCK_MONOTONIC nanoseconds.
        pub ts_ns: u64,
        /// The caller's cgroup v2 id.
        pub cgroup_id: u64,
        /// The caller's process (thread group) id.
        pub tgid: u32,
        /// AF_INET or AF_INET6.
        pub family: u16,
        /// [`record`] bits.
        pub flags: u16,
        pub comm: [u8; super::TASK_COMM_LEN],
    }

    /// `SOCK_STREAM`; `socket()` callers may OR `SOCK_NONBLOCK`/`SOCK_CLOEXEC` into the type,
    /// so compare `type & SOCK_TYPE_MASK`.
    pub const SOCK_STREAM: i32 = 1;
    pub const SOCK_TYPE_MASK: i32 = 0xf;

    /// Whether `socket(family, type, protocol)` asks for a TCP socket the upgrade may turn into
    /// MPTCP. Shared by the program and the unit tests.
    #[inline(always)]
    pub const fn is_tcp_socket(family: i32, ty: i32, protocol: i32) -> bool {
        (family == super::AF_INET as i32 || family == super::AF_INET6 as i32)
            && ty & SOCK_TYPE_MASK == SOCK_STREAM
            && (protocol == 0 || protocol == super::IPPROTO_TCP as i32)
    }
}
