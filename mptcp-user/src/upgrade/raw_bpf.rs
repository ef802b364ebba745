//! The few `bpf(2)` commands aya 0.14 cannot issue for us: loading an `fmod_ret` program
//! (`BPF_PROG_TYPE_TRACING` + `BPF_MODIFY_RETURN` + the target's BTF id), attaching it with
//! `BPF_LINK_CREATE`, pinning/opening the link in bpffs, and reading a program's
//! `recursion_misses` (`BPF_OBJ_GET_INFO_BY_FD`; aya 0.14's `ProgramInfo` does not expose it). Maps, ELF parsing and relocation
//! stay with aya/aya-obj (see `super::load`); `bpf_attr` is aya-obj's generated binding of the
//! kernel's uapi header, so no layout is written by hand here.

use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_link_info, bpf_prog_info, bpf_prog_type,
};
use btf_rs::{Btf, Type};

/// `BPF_OBJ_NAME_LEN`: program names are at most 15 bytes plus NUL.
const OBJ_NAME_LEN: usize = 16;
/// Verifier log size for the retry after a failed load.
const LOG_SIZE: usize = 256 << 10;

/// A failed `BPF_PROG_LOAD`: the errno and, when the kernel wrote one, the verifier log.
#[derive(Debug)]
pub struct ProgLoadError {
    pub io: io::Error,
    pub log: String,
}

/// The BTF id of the function `name` (`BTF_KIND_FUNC`) in `btf`, or `None` when this kernel
/// has no such function (e.g. `update_socket_protocol` before Linux 6.6).
pub fn func_btf_id(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Func(_))))
}

/// `prog_name`: at most 15 bytes, NUL-terminated.
fn obj_name(name: &str) -> [std::ffi::c_char; OBJ_NAME_LEN] {
    let mut out = [0; OBJ_NAME_LEN];
    for (o, b) in out.iter_mut().zip(name.bytes().take(OBJ_NAME_LEN - 1)) {
        *o = b as std::ffi::c_char;
    }
    out
}

/// The `BPF_PROG_LOAD` attributes of an `fmod_ret` program attached to the vmlinux function
/// with BTF id `attach_btf_id`. `log` (level 1) when given; the pointers in the result borrow
/// `insns`, `license` and `log`.
pub fn fmod_ret_load_attr(
    insns: &[bpf_insn],
    license: &CStr,
    name: &str,
    attach_btf_id: u32,
    log: Option<&mut [u8]>,
) -> bpf_attr {
    // SAFETY: bpf_attr is plain data; all-zero is its "unset" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the BPF_PROG_LOAD member of a zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
    u.expected_attach_type = bpf_attach_type::BPF_MODIFY_RETURN as u32;
    u.insn_cnt = insns.len() as u32;
    u.insns = insns.as_ptr() as u64;
    u.license = license.as_ptr() as u64;
    u.prog_name = obj_name(name);
    // 0 in attach_btf_obj_fd: the id is in vmlinux's BTF, not a module's.
    u.attach_btf_id = attach_btf_id;
    if let Some(log) = log {
        u.log_level = 1;
        u.log_buf = log.as_mut_ptr() as u64;
        u.log_size = log.len() as u32;
    }
    attr
}

/// The `BPF_LINK_CREATE` attributes attaching a loaded tracing program. For fentry/fexit/
/// fmod_ret the target is the program's `attach_btf_id`, so target fd and id stay 0.
pub fn tracing_link_attr(prog: BorrowedFd<'_>) -> bpf_attr {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the BPF_LINK_CREATE member of a zeroed union.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = bpf_attach_type::BPF_MODIFY_RETURN as u32;
    attr
}

/// The `BPF_OBJ_PIN`/`BPF_OBJ_GET` attributes; `path` must outlive the call.
pub fn obj_attr(path: &CStr, fd: Option<BorrowedFd<'_>>) -> bpf_attr {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing fields of the BPF_OBJ_* member of a zeroed union.
    let o = unsafe { &mut attr.__bindgen_anon_4 };
    o.pathname = path.as_ptr() as u64;
    o.bpf_fd = fd.map_or(0, |fd| fd.as_raw_fd() as u32);
    attr
}

/// `bpf(cmd, attr, sizeof attr)`; a non-negative result is a new file descriptor for the
/// commands that return one.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr whose embedded pointers the
    // callers keep alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `insns` as an `fmod_ret` program on the vmlinux function `attach_btf_id`. When the
/// kernel refuses for a reason other than permissions, loads again with the verifier log on so
/// the error can say why.
pub fn load_fmod_ret(
    insns: &[bpf_insn],
    license: &CStr,
    name: &str,
    attach_btf_id: u32,
) -> Result<OwnedFd, ProgLoadError> {
    let mut attr = fmod_ret_load_attr(insns, license, name, attach_btf_id, None);
    let first = match sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    if first.raw_os_error() == Some(libc::EPERM) {
        return Err(ProgLoadError {
            io: first,
            log: String::new(),
        });
    }
    let mut log = vec![0u8; LOG_SIZE];
    let mut attr = fmod_ret_load_attr(insns, license, name, attach_btf_id, Some(&mut log));
    match sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(io) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(ProgLoadError {
                io,
                log: String::from_utf8_lossy(&log[..end]).trim_end().to_string(),
            })
        }
    }
}

/// Attaches a loaded fmod_ret program; the link (and the attachment) lives as long as the
/// returned descriptor or a pin of it.
pub fn link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut tracing_link_attr(prog))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Pins a BPF object (here: the link) at `path` in bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut obj_attr(&p, Some(fd))).map(drop)
}

/// Opens a pinned BPF object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    sys_bpf_fd(bpf_cmd::BPF_OBJ_GET, &mut obj_attr(&p, None))
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program: its `bpf_prog_info` and how many bytes of it the
/// kernel filled in (older kernels know a shorter struct and leave the rest zero).
pub fn prog_info(fd: BorrowedFd<'_>) -> io::Result<(bpf_prog_info, usize)> {
    // SAFETY: plain data; zero is "not asked for" for every pointer/count member.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_GET_INFO_BY_FD member of a zeroed union.
    let i = unsafe { &mut attr.info };
    i.bpf_fd = fd.as_raw_fd() as u32;
    i.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    i.info = &mut info as *mut bpf_prog_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: the kernel wrote back how much it filled.
    let len = unsafe { attr.info.info_len } as usize;
    Ok((info, len))
}

/// How a count of skipped runs reads where the kernel cannot tell it.
pub const MISSES_UNKNOWN: &str = "unknown (Linux < 5.12)";

/// `recursion_misses` of an info the kernel filled `len` bytes of: `None` when this kernel's
/// `bpf_prog_info` ends before the field (Linux < 5.12), which is "unknown", not 0.
pub fn recursion_misses_in(info: &bpf_prog_info, len: usize) -> Option<u64> {
    let end = std::mem::offset_of!(bpf_prog_info, recursion_misses) + std::mem::size_of::<u64>();
    (len >= end).then_some(info.recursion_misses)
}

/// How many times the kernel skipped the program because it would have re-entered itself on
/// the same CPU (tracing programs; the kernel counts it nowhere else, so without this the
/// loss is silent). `Ok(None)`: this kernel does not report it.
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let (info, len) = prog_info(fd)?;
    Ok(recursion_misses_in(&info, len))
}

/// The program a BPF link (e.g. a pinned one) runs, as a descriptor of its own: the link's
/// `prog_id` (`BPF_OBJ_GET_INFO_BY_FD`), then `BPF_PROG_GET_FD_BY_ID`.
pub fn link_prog(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: plain data; zero is "not asked for" for every pointer/count member.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_GET_INFO_BY_FD member of a zeroed union.
    let i = unsafe { &mut attr.info };
    i.bpf_fd = link.as_raw_fd() as u32;
    i.info_len = std::mem::size_of::<bpf_link_info>() as u32;
    i.info = &mut info as *mut bpf_link_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_*_GET_FD_BY_ID member of a zeroed union.
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = info.prog_id;
    sys_bpf_fd(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr)
}

/// How many keys a hash map holds (`BPF_MAP_GET_NEXT_KEY` until ENOENT; `key_size` from the
/// map's info). For leak checks and fill levels: the count is a snapshot while the programs run.
pub fn count_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<usize> {
    let mut cur = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0;
    let mut first = true;
    loop {
        // SAFETY: as above.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_MAP_*_ELEM member of a zeroed union; a null key asks for the
        // first key.
        let a = unsafe { &mut attr.__bindgen_anon_2 };
        a.map_fd = map.as_raw_fd() as u32;
        a.key = if first { 0 } else { cur.as_ptr() as u64 };
        a.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
        match sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut cur, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use aya_obj::generated::{
        bpf_attr__bindgen_ty_14 as LinkCreate, bpf_attr__bindgen_ty_4 as ProgLoad,
        bpf_attr__bindgen_ty_5 as ObjPin,
    };

    use super::*;

    /// Offsets from include/uapi/linux/bpf.h (`union bpf_attr`), counted by hand: the kernel
    /// reads these bytes, so a binding that drifted would load garbage.
    #[test]
    fn attr_layout_matches_the_uapi() {
        assert_eq!(offset_of!(ProgLoad, prog_type), 0);
        assert_eq!(offset_of!(ProgLoad, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoad, insns), 8);
        assert_eq!(offset_of!(ProgLoad, license), 16);
        assert_eq!(offset_of!(ProgLoad, log_level), 24);
        assert_eq!(offset_of!(ProgLoad, log_size), 28);
        assert_eq!(offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(offset_of!(ProgLoad, attach_btf_id), 108);
        assert_eq!(offset_of!(LinkCreate, attach_type), 8);
        assert_eq!(offset_of!(ObjPin, pathname), 0);
        assert_eq!(offset_of!(ObjPin, bpf_fd), 8);
        assert_eq!(bpf_cmd::BPF_PROG_LOAD as u32, 5);
        assert_eq!(bpf_cmd::BPF_OBJ_PIN as u32, 6);
        assert_eq!(bpf_cmd::BPF_OBJ_GET as u32, 7);
        assert_eq!(bpf_cmd::BPF_LINK_CREATE as u32, 28);
        assert_eq!(bpf_prog_type::BPF_PROG_TYPE_TRACING as u32, 26);
        assert_eq!(bpf_attach_type::BPF_MODIFY_RETURN as u32, 26);
    }

    #[test]
    fn load_attr_describes_an_fmod_ret_program() {
        // SAFETY: bpf_insn is plain data.
        let insns: [bpf_insn; 3] = unsafe { std::mem::zeroed() };
        let license = c"GPL";
        let mut log = [0u8; 64];
        let attr = fmod_ret_load_attr(
            &insns,
            license,
            "a_name_longer_than_fifteen",
            4242,
            Some(&mut log),
        );
        // SAFETY: reading the member we wrote.
        let u = unsafe { attr.__bindgen_anon_3 };
        assert_eq!(u.prog_type, 26);
        assert_eq!(u.expected_attach_type, 26);
        assert_eq!(u.insn_cnt, 3);
        assert_eq!(u.insns, insns.as_ptr() as u64);
        assert_eq!(u.license, license.as_ptr() as u64);
        assert_eq!(u.attach_btf_id, 4242);
        assert_eq!((u.log_level, u.log_size), (1, 64));
        // SAFETY: reading the union member we wrote.
        assert_eq!(unsafe { u.__bindgen_anon_1.attach_btf_obj_fd }, 0);
        let name: Vec<u8> = u.prog_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name, b"a_name_longer_t\0");
        let quiet = fmod_ret_load_attr(&insns, license, "x", 1, None);
        // SAFETY: as above.
        let q = unsafe { quiet.__bindgen_anon_3 };
        assert_eq!((q.log_level, q.log_size, q.log_buf), (0, 0, 0));
    }

    #[test]
    fn link_attr_attaches_as_modify_return() {
        // Any descriptor will do: the attributes only carry its number.
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let attr = tracing_link_attr(f.as_fd());
        // SAFETY: reading the member we wrote.
        let l = unsafe { attr.link_create };
        // SAFETY: as above.
        assert_eq!(unsafe { l.__bindgen_anon_1.prog_fd }, f.as_raw_fd() as u32);
        assert_eq!(l.attach_type, 26);
        // SAFETY: as above.
        assert_eq!(unsafe { l.__bindgen_anon_2.target_fd }, 0);
    }

    /// Against the host's BTF: the hook exists on this machine's kernel (≥ 6.6), and a name
    /// that is a struct, not a function, is not mistaken for one.
    #[test]
    fn finds_the_hook_in_the_host_btf() {
        let btf = Btf::from_file(crate::offsets::VMLINUX_BTF).expect("kernel BTF");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
        let (major, minor) = (v.next().unwrap().unwrap(), v.next().unwrap().unwrap());
        let id = func_btf_id(&btf, "update_socket_protocol");
        if (major, minor) >= (6, 6) {
            let id = id.expect("Linux ≥ 6.6 has update_socket_protocol");
            let Ok(Type::Func(f)) = btf.resolve_type_by_id(id) else {
                panic!("id {id} is not a function")
            };
            assert_eq!(btf.resolve_name(&f).unwrap(), "update_socket_protocol");
        } else {
            assert_eq!(
                id, None,
                "Linux {major}.{minor} has no update_socket_protocol"
            );
        }
        assert!(func_btf_id(&btf, "__sys_socket").is_some());
        assert_eq!(func_btf_id(&btf, "mptcp_sock"), None);
        assert_eq!(func_btf_id(&btf, "no_such_function_anywhere"), None);
    }

    /// Loads `r0 = 0; exit` as a socket filter: the smallest real program to ask about.
    fn load_trivial_program() -> OwnedFd {
        load_returning(bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER, 0)
    }

    /// Loads `r0 = ret; exit` as a program of type `ty`.
    fn load_returning(ty: bpf_prog_type, ret: u8) -> OwnedFd {
        // BPF_ALU64|BPF_MOV|BPF_K r0 = ret; BPF_JMP|BPF_EXIT.
        let raw: [[u8; 8]; 2] = [[0xb7, 0, 0, 0, ret, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
        // SAFETY: bpf_insn is 8 bytes of plain data.
        let insns: [bpf_insn; 2] = unsafe { std::mem::transmute(raw) };
        let license = c"GPL";
        // SAFETY: as in fmod_ret_load_attr.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_PROG_LOAD member of a zeroed union.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = ty as u32;
        u.insn_cnt = insns.len() as u32;
        u.insns = insns.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
        u.prog_name = obj_name("mptcp_rm_test");
        sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
            .expect("load a trivial socket filter (this test needs root)")
    }

    #[test]
    fn reads_recursion_misses_of_a_real_program() {
        use std::os::fd::AsFd;
        let prog = load_trivial_program();
        let (info, len) = prog_info(prog.as_fd()).unwrap();
        assert_eq!(
            info.type_,
            bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER as u32,
            "the info is this program's"
        );
        let name: Vec<u8> = info.name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..14], b"mptcp_rm_test\0");
        assert!(len > 0 && len <= std::mem::size_of::<bpf_prog_info>());
        // This machine's kernel (≥ 5.12) reports the field; the program never ran.
        assert_eq!(recursion_misses(prog.as_fd()).unwrap(), Some(0));
        // A kernel that fills less than the field: unknown, not 0.
        let end = std::mem::offset_of!(bpf_prog_info, recursion_misses) + 8;
        assert_eq!(recursion_misses_in(&info, end - 1), None);
        assert_eq!(recursion_misses_in(&info, end), Some(0));
        // Not a BPF object: an error, not a number.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(recursion_misses(f.as_fd()).is_err());
    }

    /// A link's program is found again from the link alone (what `upgrade --status` does with
    /// the pinned link): an XDP_PASS program linked to `lo` of a private network namespace.
    #[test]
    fn finds_the_program_behind_a_link() {
        use std::os::fd::AsFd;
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only: its `lo` is not the host's.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let prog = load_returning(bpf_prog_type::BPF_PROG_TYPE_XDP, 2);
            // SAFETY: as in tracing_link_attr.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            // SAFETY: writing the BPF_LINK_CREATE member of a zeroed union.
            let l = unsafe { &mut attr.link_create };
            l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
            l.__bindgen_anon_2.target_ifindex = 1;
            l.attach_type = bpf_attach_type::BPF_XDP as u32;
            let link = sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr).expect("link XDP to lo");
            let found = link_prog(link.as_fd()).unwrap();
            let id = |fd: &OwnedFd| prog_info(fd.as_fd()).unwrap().0.id;
            assert_eq!(id(&found), id(&prog));
            assert_eq!(recursion_misses(found.as_fd()).unwrap(), Some(0));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn obj_get_of_a_missing_pin_fails_cleanly() {
        let err = obj_get(Path::new("/sys/fs/bpf/mptcp-trace-no-such-pin")).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)),
            "{err}"
        );
    }
}
