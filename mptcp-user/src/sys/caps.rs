//! Privileges by capability, not by uid: a process granted CAP_BPF, CAP_PERFMON,
//! CAP_NET_ADMIN and CAP_SYS_ADMIN may trace without being root
//! ([`crate::loader::TRACING_CAPS`] says why each).

use std::fs;

/// Capability numbers (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Cap {
    DacOverride = 1,
    NetAdmin = 12,
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::DacOverride => "CAP_DAC_OVERRIDE",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// `CapEff` of a /proc/PID/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective() -> Option<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status").ok()?)
}

/// The capabilities of `needed` missing in the set `eff`.
pub fn missing_in(eff: u64, needed: &[Cap]) -> Vec<Cap> {
    needed
        .iter()
        .copied()
        .filter(|&c| eff & (1u64 << c as u32) == 0)
        .collect()
}

/// The capabilities of `needed` this process lacks.
pub fn missing(needed: &[Cap]) -> Vec<Cap> {
    missing_in(effective().unwrap_or(0), needed)
}

/// Whether this process may create entries in `dir`, judged with its effective uid and
/// capabilities (`faccessat(AT_EACCESS)`, which counts CAP_DAC_OVERRIDE as the kernel would).
pub fn can_write(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: NUL-terminated path; no memory is written.
    unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        ) == 0
    }
}

/// `Err(message)` naming what is missing, for `what` ("tracing", "the upgrade"...).
pub fn require(needed: &[Cap], what: &str) -> Result<(), String> {
    let m = missing(needed);
    if m.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = m.iter().map(|c| c.name()).collect();
    let grant: Vec<String> = needed
        .iter()
        .map(|c| format!("+{}", c.name().trim_start_matches("CAP_").to_lowercase()))
        .collect();
    Err(format!(
        "{what} needs {} (missing: {}); run as root, or grant them (e.g. `setpriv --inh-caps {g} --ambient-caps {g} …`)",
        needed.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        names.join(", "),
        g = grant.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_what_is_missing() {
        let eff = effective().unwrap();
        let have_bpf = eff & (1 << Cap::Bpf as u32) != 0;
        assert_eq!(missing(&[Cap::Bpf]).is_empty(), have_bpf);
        match require(&[Cap::Bpf, Cap::NetAdmin], "tracing") {
            Ok(()) => assert!(missing(&[Cap::Bpf, Cap::NetAdmin]).is_empty()),
            Err(m) => assert!(m.contains("missing: CAP_"), "{m}"),
        }
    }
}
