//! Why the kernel refused the upgrade's BPF trampoline: what it returned and what was checked,
//! without guessing. Upstream, no lockdown mode forbids fentry/fmod_ret programs as such (only
//! some helpers under `confidentiality`), and "function not modifiable" is EINVAL, so an EPERM
//! is reported with the facts around it: capabilities, the lockdown mode, the active LSMs.

use std::{fmt, fs, io};

use crate::sys::caps::{self, Cap};

/// The capabilities that loading and attaching a trampoline needs.
const CAPS: [Cap; 3] = [Cap::SysAdmin, Cap::Bpf, Cap::Perfmon];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The bpf(2) command that failed.
    pub op: &'static str,
    pub errno: i32,
    pub verifier_log: String,
    /// Effective capabilities that are missing (of CAPS).
    pub missing_caps: Vec<&'static str>,
    /// `none`, `integrity`, `confidentiality`, or `None` when it could not be read.
    pub lockdown: Option<String>,
    /// /sys/kernel/security/lsm, when readable.
    pub lsms: Option<String>,
}

impl Refusal {
    pub fn diagnose(op: &'static str, err: &io::Error, log: &str) -> Refusal {
        let (lockdown, lsms) = read_securityfs();
        Refusal {
            op,
            errno: err.raw_os_error().unwrap_or(0),
            verifier_log: log.trim().to_string(),
            missing_caps: caps::missing(&CAPS).iter().map(|c| c.name()).collect(),
            lockdown: lockdown.map(|l| parse_lockdown(&l)),
            lsms: lsms.map(|s| s.trim().to_string()),
        }
    }
}

/// The bracketed word of /sys/kernel/security/lockdown (`none [integrity] confidentiality`).
pub fn parse_lockdown(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .unwrap_or("none")
        .trim_matches(['[', ']'])
        .to_string()
}

/// Reads lockdown and lsm from securityfs. When securityfs is not mounted it is mounted in a
/// private mount namespace of a short-lived thread, so nothing changes for anyone else.
fn read_securityfs() -> (Option<String>, Option<String>) {
    let read = || {
        (
            fs::read_to_string("/sys/kernel/security/lockdown").ok(),
            fs::read_to_string("/sys/kernel/security/lsm").ok(),
        )
    };
    let direct = read();
    if direct.0.is_some() || direct.1.is_some() {
        return direct;
    }
    crate::sys::mountns::with_mount(c"securityfs", c"/sys/kernel/security", c"securityfs", read)
        .unwrap_or((None, None))
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = super::seccomp::errno_name(self.errno);
        write!(f, "{} returned {errno}", self.op)?;
        if self.verifier_log.is_empty() {
            write!(f, " with an empty verifier log")?;
        } else {
            write!(f, " (verifier log: {})", self.verifier_log)?;
        }
        write!(f, ". Checked: ")?;
        if self.missing_caps.is_empty() {
            write!(f, "CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON are effective")?;
        } else {
            write!(
                f,
                "missing effective capabilities {} (a likely cause)",
                self.missing_caps.join(", ")
            )?;
        }
        match self.lockdown.as_deref() {
            None => write!(
                f,
                "; kernel lockdown unknown (no /sys/kernel/security/lockdown)"
            )?,
            Some("none") => write!(f, "; kernel lockdown is off (none), so it is not the cause")?,
            Some("confidentiality") => write!(
                f,
                "; kernel lockdown is confidentiality (/sys/kernel/security/lockdown), which \
                 restricts some BPF helpers and may be the cause"
            )?,
            Some(mode) => write!(
                f,
                "; kernel lockdown is {mode} (/sys/kernel/security/lockdown), which upstream \
                 does not forbid BPF trampolines, so it is not a proven cause"
            )?,
        }
        if let Some(l) = &self.lsms {
            write!(f, "; active LSMs: {l}")?;
        }
        if self.missing_caps.is_empty() {
            write!(
                f,
                "; the refusal comes from this kernel's build or a security policy not visible \
                 from here"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lockdown: Option<&str>, caps: Vec<&'static str>) -> String {
        Refusal {
            op: "BPF_PROG_LOAD",
            errno: libc::EPERM,
            verifier_log: String::new(),
            missing_caps: caps,
            lockdown: lockdown.map(String::from),
            lsms: Some("lockdown,capability,yama".into()),
        }
        .to_string()
    }

    #[test]
    fn never_blames_lockdown_without_cause() {
        let t = r(Some("none"), vec![]);
        assert!(
            t.contains("BPF_PROG_LOAD returned EPERM with an empty verifier log"),
            "{t}"
        );
        assert!(
            t.contains("lockdown is off (none), so it is not the cause"),
            "{t}"
        );
        let t = r(Some("integrity"), vec![]);
        assert!(t.contains("not a proven cause"), "{t}");
        assert!(t.contains("active LSMs: lockdown,capability,yama"), "{t}");
        let t = r(None, vec!["CAP_BPF"]);
        assert!(t.contains("missing effective capabilities CAP_BPF"), "{t}");
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n"),
            "integrity"
        );
    }
}
