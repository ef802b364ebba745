//! The kernel's BTF as far as aya's `BtfTracePoint::load` reads it.
//!
//! A `tp_btf` program names its attach point by the type id of the kernel's
//! `btf_trace_<tracepoint>` typedef, and aya finds that id by walking a fully parsed
//! `aya_obj::btf::Btf`. Parsing the kernel's whole BTF for three ids cost 16 MiB and 20 ms at
//! each start on the 2-core host (more in an emulated guest; `loader::load` keeps aya's own
//! loader from making that parse too). A type id is only a position, so a BTF whose sole
//! named types are those typedefs, at the ids they have in the kernel's BTF, answers the same:
//! the ids are read through the lazy reader start-up already uses, and every other position
//! holds a nameless placeholder.

use btf_rs::Type;

/// The `btf_trace_<tracepoint>` typedefs found in the kernel's BTF: name and type id.
#[derive(Debug, Default)]
pub struct AttachIds(Vec<(String, u32)>);

/// BTF's encoding (`include/uapi/linux/btf.h`).
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
const HEADER_LEN: u32 = 24;
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
/// Every type here is a `struct btf_type` with nothing after it: name, info, type.
const TYPE_LEN: usize = 12;

impl AttachIds {
    /// Looks up each tracepoint's typedef; one the kernel lacks is left out, and loading its
    /// program then fails as it would with the full BTF (unknown type name).
    pub fn resolve<'a>(btf: &btf_rs::Btf, tracepoints: impl IntoIterator<Item = &'a str>) -> Self {
        let mut ids = Vec::new();
        for tp in tracepoints {
            let name = format!("btf_trace_{tp}");
            if ids.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let Ok(found) = btf.resolve_ids_by_name(&name) else {
                continue;
            };
            let typedef = found
                .into_iter()
                .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Typedef(_))));
            if let Some(id) = typedef {
                ids.push((name, id));
            }
        }
        AttachIds(ids)
    }

    /// The BTF for `BtfTracePoint::load`: the typedefs at their kernel ids, placeholders (`void *`,
    /// nameless) everywhere before them. Its size follows the largest id, not the kernel's BTF.
    pub fn to_aya_btf(&self) -> Result<aya_obj::btf::Btf, aya_obj::btf::BtfError> {
        aya_obj::btf::Btf::parse(&self.encode(), object::Endianness::default())
    }

    fn encode(&self) -> Vec<u8> {
        let last = self.0.iter().map(|&(_, id)| id).max().unwrap_or(0);
        let mut strings = vec![0u8];
        let mut names = Vec::with_capacity(self.0.len());
        for (name, id) in &self.0 {
            names.push((*id, strings.len() as u32));
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let type_len = last as usize * TYPE_LEN;
        let mut out = Vec::with_capacity(HEADER_LEN as usize + type_len + strings.len());
        out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        out.push(BTF_VERSION);
        out.push(0); // flags
        for field in [
            HEADER_LEN,
            0,
            type_len as u32,
            type_len as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&field.to_ne_bytes());
        }
        // Id 0 is `void` and has no entry: the first entry is id 1.
        for id in 1..=last {
            let (name, kind) = match names.iter().find(|&&(n, _)| n == id) {
                Some(&(_, name)) => (name, KIND_TYPEDEF),
                None => (0, KIND_PTR),
            };
            for word in [name, kind << 24, 0] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
        }
        out.extend_from_slice(&strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::btf::BtfKind;

    /// Against the running kernel's BTF: each id the small BTF gives is the one the whole
    /// BTF, parsed by aya as before, gives.
    #[test]
    fn the_small_btf_gives_the_ids_of_the_kernels_whole_btf() {
        let path = std::path::Path::new(crate::offsets::VMLINUX_BTF);
        let lazy = crate::offsets::open_lazily(path).expect("the kernel's BTF");
        let tracepoints = ["inet_sock_set_state", "tcp_send_reset", "tcp_receive_reset"];
        let small = AttachIds::resolve(&lazy, tracepoints)
            .to_aya_btf()
            .expect("the small BTF parses");
        let whole = aya_obj::btf::Btf::from_sys_fs().expect("aya parses the kernel's BTF");
        for tp in tracepoints {
            let name = format!("btf_trace_{tp}");
            let want = whole.id_by_type_name_kind(&name, BtfKind::Typedef);
            let got = small.id_by_type_name_kind(&name, BtfKind::Typedef);
            assert_eq!(got.ok(), want.ok(), "{name}");
        }
        assert!(small
            .id_by_type_name_kind("btf_trace_no_such_tracepoint", BtfKind::Typedef)
            .is_err());
    }

    #[test]
    fn a_tracepoint_the_kernel_lacks_is_left_out() {
        let path = std::path::Path::new(crate::offsets::VMLINUX_BTF);
        let lazy = crate::offsets::open_lazily(path).expect("the kernel's BTF");
        let ids = AttachIds::resolve(&lazy, ["no_such_tracepoint", "inet_sock_set_state"]);
        assert_eq!(ids.0.len(), 1);
        assert_eq!(ids.0[0].0, "btf_trace_inet_sock_set_state");
    }
}
