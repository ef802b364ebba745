//! Resolves every kernel struct member the programs read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE field relocations, so the loader does the relocation itself: it walks
//! `/sys/kernel/btf/vmlinux`, descending into anonymous unions and structs (as in
//! `struct mptcp_subflow_context`, whose fields sit inside an anonymous union of two identical
//! anonymous structs) and records bit offsets for bitfields. A member this kernel lacks is
//! reported, never guessed.

use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use mptcp_common::{Field, Offsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Btf {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("this kernel's BTF lacks {0}, which tracing MPTCP needs (is CONFIG_MPTCP enabled?)")]
    Required(String),
}

/// Whether the programs can work without a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Required,
    /// Missing means a field of the events stays empty; the string says which.
    Optional(&'static str),
}

type Slot = fn(&mut Offsets) -> &mut Field;

/// (struct, member path, where it goes, need). Paths name members through named nesting with
/// dots; anonymous members are searched automatically.
const MEMBERS: &[(&str, &str, Slot, Need)] = &[
    (
        "sock",
        "__sk_common.skc_family",
        |o| &mut o.skc_family,
        Need::Required,
    ),
    (
        "sock",
        "__sk_common.skc_daddr",
        |o| &mut o.skc_daddr,
        Need::Required,
    ),
    (
        "sock",
        "__sk_common.skc_rcv_saddr",
        |o| &mut o.skc_rcv_saddr,
        Need::Required,
    ),
    (
        "sock",
        "__sk_common.skc_dport",
        |o| &mut o.skc_dport,
        Need::Required,
    ),
    (
        "sock",
        "__sk_common.skc_num",
        |o| &mut o.skc_num,
        Need::Required,
    ),
    (
        "sock",
        "__sk_common.skc_v6_daddr",
        |o| &mut o.skc_v6_daddr,
        Need::Optional("IPv6 addresses"),
    ),
    (
        "sock",
        "__sk_common.skc_v6_rcv_saddr",
        |o| &mut o.skc_v6_rcv_saddr,
        Need::Optional("IPv6 addresses"),
    ),
    (
        "sock",
        "__sk_common.skc_net.net",
        |o| &mut o.skc_net,
        Need::Optional("netns"),
    ),
    (
        "sock",
        "__sk_common.skc_bound_dev_if",
        |o| &mut o.skc_bound_dev_if,
        Need::Optional("ifindex"),
    ),
    (
        "sock",
        "sk_protocol",
        |o| &mut o.sk_protocol,
        Need::Required,
    ),
    (
        "sock",
        "sk_err",
        |o| &mut o.sk_err,
        Need::Optional("errno of closed subflows"),
    ),
    (
        "sock",
        "sk_dst_cache",
        |o| &mut o.sk_dst_cache,
        Need::Optional("ifname"),
    ),
    (
        "net",
        "ns.inum",
        |o| &mut o.net_ns_inum,
        Need::Optional("netns"),
    ),
    (
        "dst_entry",
        "dev",
        |o| &mut o.dst_dev,
        Need::Optional("ifname"),
    ),
    (
        "net_device",
        "ifindex",
        |o| &mut o.netdev_ifindex,
        Need::Optional("ifindex"),
    ),
    (
        "net_device",
        "name",
        |o| &mut o.netdev_name,
        Need::Optional("ifname"),
    ),
    (
        "inet_connection_sock",
        "icsk_ulp_data",
        |o| &mut o.icsk_ulp_data,
        Need::Required,
    ),
    (
        "tcp_sock",
        "is_mptcp",
        |o| &mut o.tcp_is_mptcp,
        Need::Required,
    ),
    (
        "tcp_sock",
        "bytes_sent",
        |o| &mut o.tcp_bytes_sent,
        Need::Optional("bytes_sent"),
    ),
    (
        "tcp_sock",
        "bytes_acked",
        |o| &mut o.tcp_bytes_acked,
        Need::Optional("bytes_acked"),
    ),
    (
        "tcp_sock",
        "bytes_received",
        |o| &mut o.tcp_bytes_received,
        Need::Optional("bytes_received"),
    ),
    (
        "tcp_sock",
        "total_retrans",
        |o| &mut o.tcp_total_retrans,
        Need::Optional("retrans"),
    ),
    (
        "tcp_sock",
        "srtt_us",
        |o| &mut o.tcp_srtt_us,
        Need::Optional("srtt_us"),
    ),
    (
        "mptcp_subflow_context",
        "conn",
        |o| &mut o.sf_conn,
        Need::Required,
    ),
    (
        "mptcp_subflow_context",
        "token",
        |o| &mut o.sf_token,
        Need::Optional("early server tokens"),
    ),
    (
        "mptcp_subflow_context",
        "request_join",
        |o| &mut o.sf_request_join,
        Need::Optional("join flag (client)"),
    ),
    (
        "mptcp_subflow_context",
        "mp_capable",
        |o| &mut o.sf_mp_capable,
        Need::Optional("conn_fallback"),
    ),
    (
        "mptcp_subflow_context",
        "mp_join",
        |o| &mut o.sf_mp_join,
        Need::Optional("join flag (server)"),
    ),
    (
        "mptcp_subflow_context",
        "backup",
        |o| &mut o.sf_backup,
        Need::Optional("backup flag"),
    ),
    (
        "mptcp_subflow_context",
        "local_id",
        |o| &mut o.sf_local_id,
        Need::Optional("local_id"),
    ),
    (
        "mptcp_subflow_context",
        "remote_id",
        |o| &mut o.sf_remote_id,
        Need::Optional("remote_id"),
    ),
    (
        "mptcp_subflow_context",
        "reset_seen",
        |o| &mut o.sf_reset_seen,
        Need::Optional("MP_TCPRST reasons"),
    ),
    (
        "mptcp_subflow_context",
        "reset_reason",
        |o| &mut o.sf_reset_reason,
        Need::Optional("MP_TCPRST reasons"),
    ),
    (
        "mptcp_subflow_context",
        "request_bkup",
        |o| &mut o.sf_request_bkup,
        Need::Optional("backup flag"),
    ),
    ("mptcp_sock", "token", |o| &mut o.msk_token, Need::Required),
    (
        "mptcp_sock",
        "remote_key",
        |o| &mut o.msk_remote_key,
        Need::Optional("peer_token"),
    ),
    (
        "mptcp_sock",
        "pm.remote_deny_join_id0",
        |o| &mut o.msk_deny_join_id0,
        Need::Optional("peer_deny_join_id0"),
    ),
    (
        "mptcp_sock",
        "first",
        |o| &mut o.msk_first,
        Need::Optional("conn_fallback"),
    ),
];

/// Offsets for the programs, plus what this kernel lacks.
#[derive(Debug)]
pub struct Resolved {
    pub offsets: Offsets,
    /// `struct.member (what is lost)` for each optional member that is absent.
    pub missing: Vec<String>,
}

/// The kernel's BTF at `path`, read lazily ([`open_lazily`]); the error names the path.
pub fn open(path: &Path) -> Result<Btf, OffsetError> {
    open_lazily(path).map_err(|source| OffsetError::Btf {
        path: path.display().to_string(),
        source,
    })
}

/// The kernel's BTF with types parsed on demand. A few dozen lookups need only a few types;
/// parsing every type (tens of thousands, a name string each) cost more than the verifier at
/// each start. sysfs BTF can be mapped only since Linux 6.16: before, its bytes are copied into
/// a memfd, which can.
pub fn open_lazily(path: &Path) -> Result<Btf, btf_rs::Error> {
    match Btf::from_file_with_backend(path, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(_) => open_copied(path),
    }
}

/// [`open_lazily`] through a memfd copy of the file.
fn open_copied(path: &Path) -> Result<Btf, btf_rs::Error> {
    let bytes = std::fs::read(path)?;
    // SAFETY: a plain memfd_create(2) with a NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"mptcp-trace-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Btf::from_file(path);
    }
    // SAFETY: fd was just returned by memfd_create and nothing else owns it.
    let mut memfd = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut memfd, &bytes)?;
    // Opened again by path: the mapping is made from that descriptor, this one can go.
    Btf::from_file_with_backend(format!("/proc/self/fd/{fd}"), Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
}

pub fn resolve(btf: &Btf) -> Result<Resolved, OffsetError> {
    let mut offsets = Offsets::default();
    let mut missing = Vec::new();
    for &(strukt, path, slot, need) in MEMBERS {
        match member(btf, strukt, path) {
            Some(f) => *slot(&mut offsets) = f,
            None => match need {
                Need::Required => return Err(OffsetError::Required(format!("{strukt}.{path}"))),
                Need::Optional(what) => missing.push(format!("{strukt}.{path} ({what})")),
            },
        }
    }
    match rst_reason_arg(btf) {
        Some(f) => offsets.rst_reason_arg = f,
        None => missing.push(
            "tracepoint tcp_send_reset's `enum sk_rst_reason` argument (reset_sent_reason, Linux ≥ 6.10)"
                .into(),
        ),
    }
    Ok(Resolved { offsets, missing })
}

/// Where the `tcp_send_reset` tracepoint passes its `enum sk_rst_reason` (an argument index in
/// `offset`), from the tracepoint's prototype (`btf_trace_tcp_send_reset`); `None` on kernels
/// whose tracepoint has no reason, or has it anywhere but third (`sk, skb, reason`): the
/// program reads that argument at a constant index, as the verifier requires.
pub fn rst_reason_arg(btf: &Btf) -> Option<Field> {
    let ty = btf
        .resolve_types_by_name("btf_trace_tcp_send_reset")
        .ok()?
        .into_iter()
        .next()?;
    let Type::FuncProto(proto) = strip(btf, ty).and_then(|t| match t {
        Type::Ptr(p) => btf.resolve_chained_type(&p).ok(),
        _ => None,
    })?
    else {
        return None;
    };
    // The prototype's first parameter is the tracepoint's own context, not passed on.
    proto
        .parameters
        .iter()
        .skip(1)
        .position(|p| {
            matches!(
                btf.resolve_chained_type(p).ok().and_then(|t| strip(btf, t)),
                Some(Type::Enum(e)) if btf.resolve_name(&e).is_ok_and(|n| n == "sk_rst_reason")
            )
        })
        .filter(|&i| i == 2)
        .map(|i| Field {
            offset: i as u32,
            size: 4,
            shift: 0,
            bits: 32,
            signed: 0,
        })
}

/// The names of `enum sk_rst_reason` values on this kernel (they differ between kernels),
/// without the `SK_RST_REASON_` prefix, lowercase. Empty where the kernel has no such enum.
pub fn rst_reason_names(btf: &Btf) -> std::collections::HashMap<u16, String> {
    let mut names = std::collections::HashMap::new();
    let Ok(types) = btf.resolve_types_by_name("sk_rst_reason") else {
        return names;
    };
    for t in types {
        if let Type::Enum(e) = t {
            for m in &e.members {
                if let (Ok(name), Ok(v)) = (btf.resolve_name(m), u16::try_from(m.val())) {
                    let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
                    names.insert(v, short.to_ascii_lowercase());
                }
            }
        }
    }
    names
}

/// The name of a `sk_rst_reason` value on the running kernel (its BTF is read once, when the
/// first reset reason is decoded). Read lazily, as at start-up: parsing the whole BTF here took
/// 260 ms and 40 MiB at the first reset, 13 MiB of which the tracer then kept (the bench's
/// rounds with a reset held 43 MiB instead of 16).
pub fn rst_reason_name(v: u16) -> Option<String> {
    static NAMES: std::sync::OnceLock<std::collections::HashMap<u16, String>> =
        std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            open_lazily(Path::new(VMLINUX_BTF))
                .map(|b| rst_reason_names(&b))
                .unwrap_or_default()
        })
        .get(&v)
        .cloned()
}

/// Looks up `path` in the struct named `strukt`.
pub fn member(btf: &Btf, strukt: &str, path: &str) -> Option<Field> {
    let ty = btf
        .resolve_types_by_name(strukt)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))?;
    let mut cur = ty;
    let mut bit_base = 0u32;
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let (bits, m) = find_member(btf, &cur, name)?;
        bit_base += bits;
        if parts.peek().is_none() {
            return field_of(btf, &m, bit_base);
        }
        cur = strip(btf, btf.resolve_chained_type(&m).ok()?)?;
    }
    None
}

/// Finds the member `name` in a struct or union, looking inside anonymous members. Returns its
/// bit offset relative to `ty` and the member itself.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, btf_rs::Member)> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some((m.bit_offset(), m.clone()));
        }
        if mname.is_empty() {
            let inner = strip(btf, btf.resolve_chained_type(m).ok()?)?;
            if let Some((bits, found)) = find_member(btf, &inner, name) {
                return Some((m.bit_offset() + bits, found));
            }
        }
    }
    None
}

/// Follows typedefs and qualifiers to the type that has a layout.
fn strip(btf: &Btf, mut ty: Type) -> Option<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).ok()?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t).ok()?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        }
    }
}

fn field_of(btf: &Btf, m: &btf_rs::Member, bit_offset: u32) -> Option<Field> {
    let ty = strip(btf, btf.resolve_chained_type(m).ok()?)?;
    let (size, signed) = match &ty {
        Type::Int(i) => (i.size(), i.is_signed()),
        Type::Ptr(_) => (8, false),
        Type::Enum(e) => (e.size(), e.is_signed()),
        Type::Enum64(e) => (e.size(), e.is_signed()),
        Type::Struct(s) | Type::Union(s) => (s.size(), false),
        Type::Array(a) => {
            let elem = strip(btf, btf.resolve_chained_type(a).ok()?)?;
            let elem_size = match elem {
                Type::Int(i) => i.size(),
                Type::Struct(s) | Type::Union(s) => s.size(),
                _ => return None,
            };
            (elem_size * a.len(), false)
        }
        _ => return None,
    };
    Some(match m.bitfield_size().filter(|&b| b != 0) {
        Some(bits) => {
            let shift = bit_offset % 8;
            let bytes = (shift + bits).div_ceil(8);
            let size = bytes.next_power_of_two();
            Field {
                offset: bit_offset / 8,
                size: size as u8,
                shift: shift as u8,
                bits: bits as u8,
                signed: signed as u8,
            }
        }
        None => {
            let size = u8::try_from(size).ok()?;
            Field {
                offset: bit_offset / 8,
                size,
                shift: 0,
                bits: size.saturating_mul(8).min(64),
                signed: signed as u8,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    //! These run against the host's BTF: the kernel the tool runs on is the point.
    use super::*;

    fn host() -> Btf {
        Btf::from_file(VMLINUX_BTF).expect("host kernel BTF at /sys/kernel/btf/vmlinux")
    }

    #[test]
    fn resolves_every_member_on_the_host_kernel() {
        let r = resolve(&host()).expect("required members");
        assert!(r.missing.is_empty(), "missing on host: {:?}", r.missing);
        // sock_common is the first member of sock: family sits in its first 32 bytes.
        assert!(r.offsets.skc_family.offset < 32);
        assert_eq!(r.offsets.skc_family.size, 2);
        assert_eq!(r.offsets.sk_protocol.size, 2);
        assert_eq!(r.offsets.msk_token.size, 4);
        assert_eq!(r.offsets.sf_conn.size, 8);
        assert_eq!(r.offsets.skc_v6_daddr.size, 16);
        assert_eq!(r.offsets.netdev_name.size, 16);
    }

    #[test]
    fn the_lazy_backends_resolve_what_the_full_parse_does() {
        let full = resolve(&host()).expect("full parse");
        for (how, btf) in [
            ("mapped or copied", open_lazily(Path::new(VMLINUX_BTF))),
            ("memfd copy", open_copied(Path::new(VMLINUX_BTF))),
        ] {
            let lazy = resolve(&btf.expect(how)).expect(how);
            assert_eq!(lazy.offsets, full.offsets, "{how}");
            assert_eq!(lazy.missing, full.missing, "{how}");
        }
    }

    #[test]
    fn bitfields_inside_anonymous_unions_get_bit_offsets() {
        let btf = host();
        let mp_join = member(&btf, "mptcp_subflow_context", "mp_join").unwrap();
        let mp_capable = member(&btf, "mptcp_subflow_context", "mp_capable").unwrap();
        let reset_reason = member(&btf, "mptcp_subflow_context", "reset_reason").unwrap();
        assert_eq!(mp_join.bits, 1);
        assert_eq!(reset_reason.bits, 4);
        // In every kernel since 5.7 mp_join directly follows mp_capable.
        let abs = |f: Field| f.offset * 8 + f.shift as u32;
        assert_eq!(abs(mp_join), abs(mp_capable) + 1);
        // The anonymous union starts after `struct list_head node` (16 bytes).
        assert!(mp_join.offset >= 16);
    }

    #[test]
    fn signed_members_are_marked() {
        let btf = host();
        let local_id = member(&btf, "mptcp_subflow_context", "local_id").unwrap();
        let remote_id = member(&btf, "mptcp_subflow_context", "remote_id").unwrap();
        assert_eq!(remote_id.signed, 0);
        // s16 since 6.9, u8 before: either way the width matches the type.
        assert_eq!(local_id.bits, local_id.size * 8);
    }

    #[test]
    fn nested_named_members_add_up() {
        let btf = host();
        let net = member(&btf, "sock", "__sk_common.skc_net.net").unwrap();
        assert_eq!(net.size, 8);
        let inum = member(&btf, "net", "ns.inum").unwrap();
        assert_eq!(inum.size, 4);
    }

    #[test]
    fn the_reset_reason_argument_and_names_come_from_the_kernel() {
        let btf = host();
        // The host runs Linux ≥ 6.10: tcp_send_reset(sk, skb, reason).
        let arg = rst_reason_arg(&btf).expect("tcp_send_reset has a reason on the host");
        assert_eq!(arg.offset, 2);
        let names = rst_reason_names(&btf);
        assert_eq!(names.get(&0).map(String::as_str), Some("not_specified"));
        assert!(
            names.values().any(|n| n == "mptcp_rst_eprohibit"),
            "{names:?}"
        );
    }

    #[test]
    fn absent_members_are_none_not_guesses() {
        let btf = host();
        assert!(member(&btf, "mptcp_sock", "no_such_member").is_none());
        assert!(member(&btf, "no_such_struct_xyz", "token").is_none());
    }
}
