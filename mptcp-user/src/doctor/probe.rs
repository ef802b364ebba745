//! Minimal BPF trampoline probes, to say *what* the kernel refuses when the upgrade cannot
//! attach: a two-instruction program (`r0 = 0; exit`) loaded as `fmod_ret` and as `fentry` on
//! the upgrade's hook, with the verifier log on, and the `fmod_ret` one attached and detached
//! at once. They change nothing (they return 0, which leaves the socket's protocol alone).

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn};

use crate::upgrade::raw_bpf;

const LOG_SIZE: usize = 64 << 10;

/// What one probe met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// `BPF_PROG_LOAD`'s errno, `None` when it loaded.
    pub load_errno: Option<i32>,
    /// The verifier log the kernel wrote (empty when it wrote none).
    pub log: String,
    /// `BPF_LINK_CREATE`'s outcome, when the probe tried to attach.
    pub attach_errno: Option<Option<i32>>,
}

fn insn(code: u8, imm: i32) -> bpf_insn {
    bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
        off: 0,
        imm,
    }
}

/// `BPF_ALU64 | BPF_MOV | BPF_K` r0 = 0, then `BPF_JMP | BPF_EXIT`.
fn return_zero() -> [bpf_insn; 2] {
    [insn(0xb7, 0), insn(0x95, 0)]
}

fn prog_load(attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: a fully initialised bpf_attr whose pointers outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }
}

/// The kind of tracing program a probe loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `fmod_ret` on a function (a BPF trampoline); attached and detached at once.
    FmodRet,
    /// `fentry` on a function (a BPF trampoline); load only.
    Fentry,
    /// `tp_btf` on a tracepoint (`btf_trace_*` typedef; no trampoline); load only.
    TpBtf,
}

/// Loads `r0 = 0; exit` as a `kind` program on the BTF id `btf_id`.
pub fn load(btf_id: u32, kind: Kind) -> ProbeResult {
    let fmod_ret = kind == Kind::FmodRet;
    let insns = return_zero();
    let license: &CStr = c"GPL";
    let mut log = vec![0u8; LOG_SIZE];
    let mut attr =
        raw_bpf::fmod_ret_load_attr(&insns, license, "mptcp_doctor", btf_id, Some(&mut log));
    // The BPF_PROG_LOAD member of the attr built above (a plain-data union field).
    match kind {
        Kind::FmodRet => {}
        Kind::Fentry => {
            attr.__bindgen_anon_3.expected_attach_type = bpf_attach_type::BPF_TRACE_FENTRY as u32
        }
        Kind::TpBtf => {
            attr.__bindgen_anon_3.expected_attach_type = bpf_attach_type::BPF_TRACE_RAW_TP as u32
        }
    }
    let loaded = prog_load(&mut attr);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
    match loaded {
        Err(e) => ProbeResult {
            load_errno: e.raw_os_error(),
            log,
            attach_errno: None,
        },
        Ok(fd) => ProbeResult {
            load_errno: None,
            log,
            attach_errno: fmod_ret.then(|| {
                raw_bpf::link_create(fd.as_fd())
                    .err()
                    .map(|e| e.raw_os_error().unwrap_or(0))
            }),
        },
    }
}

/// `EPERM (Operation not permitted)`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        // The kernel's own "not supported" (include/linux/errno.h), which libc does not name.
        524 => Some("ENOTSUPP".to_string()),
        e => crate::sys::errno::name(e),
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    match name {
        Some(name) => format!("{name} ({text})"),
        None => format!("errno {errno} ({text})"),
    }
}

impl ProbeResult {
    /// "load EPERM (Operation not permitted), verifier log empty" and the like.
    pub fn describe(&self) -> String {
        let log = if self.log.is_empty() {
            "verifier log empty".to_string()
        } else {
            // The end of the log says why.
            let tail: Vec<&str> = self.log.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("verifier log: {}", tail.join(" / "))
        };
        match (self.load_errno, self.attach_errno) {
            (Some(e), _) => format!("load {}, {log}", errno_name(e)),
            (None, None) => "loads".to_string(),
            (None, Some(None)) => "loads and attaches".to_string(),
            (None, Some(Some(e))) => format!("loads, attach {}", errno_name(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_the_kernel_said() {
        let r = ProbeResult {
            load_errno: Some(libc::EPERM),
            log: String::new(),
            attach_errno: None,
        };
        assert_eq!(
            r.describe(),
            "load EPERM (Operation not permitted), verifier log empty"
        );
        let r = ProbeResult {
            load_errno: Some(libc::EINVAL),
            log: "0: R1=ctx()\nattach to unsupported member\nprocessed 0 insns".into(),
            attach_errno: None,
        };
        assert!(r
            .describe()
            .ends_with("attach to unsupported member / processed 0 insns"));
        let r = ProbeResult {
            load_errno: None,
            log: String::new(),
            attach_errno: Some(Some(libc::EBUSY)),
        };
        assert_eq!(
            r.describe(),
            "loads, attach EBUSY (Device or resource busy)"
        );
        assert_eq!(errno_name(9999), "errno 9999 (Unknown error 9999)");
    }

    #[test]
    fn the_probe_program_is_two_instructions() {
        let p = return_zero();
        assert_eq!((p[0].code, p[0].imm, p[0].dst_reg()), (0xb7, 0, 0));
        assert_eq!(p[1].code, 0x95);
    }
}
