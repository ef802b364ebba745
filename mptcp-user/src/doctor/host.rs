//! Host checks: kernel, BTF, MPTCP, lockdown, whether the upgrade attaches (and exactly what
//! the kernel said when it does not), bpffs and the pin directory, cgroup v2, capabilities.

use std::{
    ffi::CString,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use aya_obj::generated::bpf_prog_type;
use mptcp_common::upgrade::Policy;

use super::{probe, Check, Status};
use crate::{
    offsets::VMLINUX_BTF,
    sys::caps::{self, Cap},
    upgrade::{raw_bpf, Upgrade, UpgradeError, BPFFS, HOOK, PIN_DIR},
};

/// The tracepoint the tracer itself uses, as a `tp_btf` target.
const TP_TYPEDEF: &str = "btf_trace_inet_sock_set_state";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const LSM: &str = "/sys/kernel/security/lsm";

/// The capabilities BPF tracing and the path-manager checks need, by bit number.
const CAPS: [Cap; 4] = [Cap::Bpf, Cap::Perfmon, Cap::NetAdmin, Cap::SysAdmin];

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The running kernel's release and version numbers.
pub fn kernel_version() -> (String, (u32, u32)) {
    let r = read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let mut it = r.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (r, v)
}

/// The lockdown mode and the LSM list, from securityfs (mounted for the read when it is not,
/// and unmounted again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// `none` / `integrity` / `confidentiality`; `None` when the kernel has no lockdown LSM.
    pub lockdown: Option<String>,
    pub lsms: Option<String>,
    /// How it was read, or why it could not be.
    pub note: String,
}

pub fn parse_lockdown(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
}

pub fn security() -> Security {
    if Path::new(LSM).exists() {
        return read_security(format!("read from {LOCKDOWN}"));
    }
    // Mount securityfs in a private mount namespace of a short-lived thread: nothing appears
    // on the host, and a reader elsewhere never sees it come and go.
    crate::sys::mountns::with_mount(
        c"securityfs",
        c"/sys/kernel/security",
        c"securityfs",
        || {
            read_security(format!(
                "read from {LOCKDOWN}, securityfs mounted for the read in a private mount namespace"
            ))
        },
    )
    .unwrap_or_else(|e| Security {
        note: format!("securityfs is not mounted and mounting it failed: {e}"),
        ..Default::default()
    })
}

fn read_security(note: String) -> Security {
    let lockdown = read(LOCKDOWN);
    let lsms = read(LSM);
    Security {
        note: if lockdown.is_none() && lsms.is_some() {
            "no lockdown LSM in this kernel (no /sys/kernel/security/lockdown)".into()
        } else {
            note
        },
        lockdown: lockdown.as_deref().and_then(parse_lockdown),
        lsms,
    }
}

/// Capabilities from `CAPS` missing in `eff`. Before Linux 5.8 there is no CAP_BPF or
/// CAP_PERFMON (`cap_last_cap` < 38): CAP_SYS_ADMIN covers them.
pub fn missing_caps(eff: u64, last_cap: u32) -> Vec<&'static str> {
    let known: Vec<Cap> = CAPS.into_iter().filter(|&c| c as u32 <= last_cap).collect();
    caps::missing_in(eff, &known)
        .into_iter()
        .map(Cap::name)
        .collect()
}

/// The mount points of filesystems of type `fstype` in a mountinfo text.
pub fn mounts_of(mountinfo: &str, fstype: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == fstype).then(|| mount_point.to_string())
        })
        .collect()
}

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The upgrade as `mptcp-trace upgrade` would meet it: attached with an empty scope (it
/// upgrades nothing) and detached at once.
pub fn try_upgrade() -> Result<(), UpgradeError> {
    Upgrade::attach(Policy::NONE).map(drop)
}

fn in_initial_userns() -> bool {
    read("/proc/self/uid_map")
        .is_some_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

fn bpf_lsm_programs() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.program_type() == bpf_prog_type::BPF_PROG_TYPE_LSM)
        .map(|p| p.id())
        .collect()
}

/// What lockdown has to do with a refused trampoline.
pub fn lockdown_verdict(mode: Option<&str>) -> String {
    match mode {
        None => "no lockdown LSM: not the cause".into(),
        Some("none") => "lockdown none: not the cause".into(),
        Some("integrity") => "lockdown integrity, which upstream does not forbid BPF \
                              trampolines: not the cause by itself"
            .into(),
        Some("confidentiality") => "lockdown confidentiality, which restricts BPF's reads \
                                    of kernel memory: possibly the cause"
            .into(),
        Some(other) => format!("lockdown {other}"),
    }
}

fn upgrade_check(sec: &Security, btf: Option<&btf_rs::Btf>, caps: Option<u64>) -> Check {
    let name = "upgrade";
    if let Err(e) = crate::upgrade::require_privileges() {
        return Check::host(name, Status::Fail, format!("not probed: {e}"))
            .fix("sudo mptcp-trace doctor");
    }
    let hook_id = btf.and_then(|b| raw_bpf::func_btf_id(b, HOOK));
    match try_upgrade() {
        Ok(()) => Check::host(
            name,
            Status::Ok,
            format!(
                "fmod_ret/{HOOK} loads and attaches (probed with an empty scope, detached at once)"
            ),
        ),
        Err(UpgradeError::HookMissing(v)) => Check::host(
            name,
            Status::Fail,
            format!(
                "Linux {v} has no {HOOK} (added in 6.6): the upgrade needs a newer kernel; \
                 tracing still works"
            ),
        ),
        Err(UpgradeError::MptcpDisabled) => Check::host(
            name,
            Status::Fail,
            "not probed: MPTCP is disabled in the namespace doctor runs in, and upgraded sockets \
             would fail to open there",
        )
        .fix("sysctl -w net.mptcp.enabled=1"),
        Err(UpgradeError::TrampolinesRefused(_)) => {
            let mut d =
                format!("the kernel refused fmod_ret/{HOOK} (the real upgrade program) with EPERM");
            let mut all_refused = false;
            if let Some(id) = hook_id {
                let fm = probe::load(id, probe::Kind::FmodRet);
                let fe = probe::load(id, probe::Kind::Fentry);
                all_refused = fm.load_errno.is_some() && fe.load_errno.is_some();
                d += &format!(
                    ". Probed with a 2-instruction program on {HOOK}: as fmod_ret {}; as fentry \
                     {}",
                    fm.describe(),
                    fe.describe()
                );
                if all_refused {
                    d += " (every BPF trampoline is refused, not only fmod_ret)";
                }
                // The same program type without a trampoline: is tracing refused as a whole?
                if let Some(tp) = btf.and_then(|b| typedef_btf_id(b, TP_TYPEDEF)) {
                    let r = probe::load(tp, probe::Kind::TpBtf);
                    d += &format!("; as tp_btf on inet_sock_set_state {}", r.describe());
                    if r.load_errno.is_none() && all_refused {
                        d += " (so BTF tracing works and only trampolines are refused)";
                    }
                }
            }
            d += &format!(
                ". Checked: {}; LSMs {}",
                lockdown_verdict(sec.lockdown.as_deref()),
                sec.lsms.as_deref().unwrap_or("unknown")
            );
            let lsm_progs = bpf_lsm_programs();
            if lsm_progs.is_empty() {
                d += ", no BPF LSM program loaded";
            } else {
                d += &format!(
                    ", BPF LSM programs loaded (ids {lsm_progs:?}): one of them may deny bpf()"
                );
            }
            let missing = caps.map(|c| missing_caps(c, last_cap()));
            match missing.as_deref() {
                Some([]) => d += ", CapEff has CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN",
                Some(m) => d += &format!(", CapEff lacks {}", m.join(", ")),
                None => d += ", CapEff unreadable",
            }
            let userns = in_initial_userns();
            d += if userns {
                ", initial user namespace"
            } else {
                ", inside a user namespace (BPF needs its capabilities in the initial one)"
            };
            let lockdown_innocent =
                matches!(sec.lockdown.as_deref(), None | Some("none" | "integrity"));
            if lockdown_innocent
                && lsm_progs.is_empty()
                && missing.as_deref() == Some(&[])
                && userns
            {
                d += ". Cause not found by these checks: a kernel build or policy choice outside \
                      them";
                if all_refused {
                    d += " that refuses BPF trampolines";
                }
            }
            d += ". Tracing still works; meanwhile `mptcpize run CMD` (LD_PRELOAD) upgrades \
                  dynamically linked programs";
            Check::host(name, Status::Fail, d)
        }
        Err(UpgradeError::Rejected { error, log }) => {
            let errno = error
                .raw_os_error()
                .map_or(error.to_string(), probe::errno_name);
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Check::host(
                name,
                Status::Fail,
                format!(
                    "the kernel rejected fmod_ret/{HOOK}: {errno}; verifier log: {}",
                    if tail.is_empty() {
                        "empty".to_string()
                    } else {
                        tail.join(" / ")
                    }
                ),
            )
        }
        Err(UpgradeError::Attach(e)) => Check::host(
            name,
            Status::Fail,
            format!(
                "fmod_ret/{HOOK} loads but BPF_LINK_CREATE fails: {}",
                e.raw_os_error().map_or(e.to_string(), probe::errno_name)
            ),
        ),
        Err(e) => Check::host(name, Status::Fail, e.to_string()),
    }
}

/// The BTF id of the typedef `name` (the `btf_trace_*` of a tracepoint).
fn typedef_btf_id(btf: &btf_rs::Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(btf_rs::Type::Typedef(_))))
}

fn last_cap() -> u32 {
    read("/proc/sys/kernel/cap_last_cap")
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

/// Every host check.
pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let (release, version) = kernel_version();
    let machine = read("/proc/sys/kernel/arch").unwrap_or_default();
    v.push(if version < (5, 6) {
        Check::host(
            "kernel",
            Status::Fail,
            format!("Linux {release}: upstream MPTCP needs 5.6 or newer (mptcp-trace: 5.10)"),
        )
    } else if version < (5, 10) {
        Check::host(
            "kernel",
            Status::Warn,
            format!("Linux {release}: older than 5.10, which mptcp-trace is not tested on"),
        )
    } else {
        // The hook is looked up in the kernel's BTF, not guessed from the version (distributions
        // backport; a kernel without BTF cannot run the upgrade anyway).
        let has_hook = crate::offsets::open_lazily(std::path::Path::new(VMLINUX_BTF))
            .ok()
            .and_then(|btf| crate::upgrade::raw_bpf::func_btf_id(&btf, crate::upgrade::HOOK))
            .is_some();
        let hook = match (has_hook, crate::sys::mptcp::in_kernel()) {
            (true, _) => "has the upgrade hook",
            (false, true) => "no upgrade hook (it came in 6.6), tracing works",
            (false, false) => "no upgrade hook (it came in 6.6)",
        };
        Check::host(
            "kernel",
            Status::Ok,
            format!("Linux {release} {machine} ({hook})").replace("  ", " "),
        )
    });

    let btf = btf_rs::Btf::from_file(VMLINUX_BTF);
    v.push(match &btf {
        Ok(_) => Check::host(
            "btf",
            Status::Ok,
            format!(
                "{VMLINUX_BTF} ({} KiB, parsed)",
                fs::metadata(VMLINUX_BTF)
                    .map(|m| m.len() / 1024)
                    .unwrap_or(0)
            ),
        ),
        Err(e) => Check::host(
            "btf",
            Status::Fail,
            format!(
                "cannot read {VMLINUX_BTF} ({e}): the tracer and the upgrade need a kernel built \
                 with CONFIG_DEBUG_INFO_BTF=y; no command fixes that"
            ),
        ),
    });

    let sysctls = Path::new("/proc/sys/net/mptcp/enabled").exists();
    let family = crate::pm_config::family_id();
    v.push(match (sysctls, &family) {
        (true, Ok(_)) => Check::host(
            "mptcp",
            Status::Ok,
            "built in (net.mptcp sysctls and the mptcp_pm netlink family exist)",
        ),
        (s, f) => Check::host(
            "mptcp",
            Status::Fail,
            format!(
                "no MPTCP in this kernel (net.mptcp sysctls {}, mptcp_pm family: {}): it needs \
                 CONFIG_MPTCP=y (it cannot be a module); no command fixes that",
                if s { "present" } else { "missing" },
                f.as_ref()
                    .map_or_else(|e| e.to_string(), |id| format!("id {id}"))
            ),
        ),
    });

    let sec = security();
    v.push(match (sec.lockdown.as_deref(), &sec.lsms) {
        (Some(mode), _) => Check::host(
            "lockdown",
            if mode == "confidentiality" {
                Status::Warn
            } else {
                Status::Ok
            },
            format!(
                "{mode} ({}; LSMs {})",
                sec.note,
                sec.lsms.as_deref().unwrap_or("unknown")
            ),
        ),
        // securityfs was read: this kernel has no lockdown LSM.
        (None, Some(_)) => Check::host("lockdown", Status::Ok, sec.note.clone()),
        (None, None) => Check::host("lockdown", Status::Warn, format!("unknown: {}", sec.note))
            .fix("sudo mptcp-trace doctor"),
    });

    let caps = caps::effective();
    v.push(upgrade_check(&sec, btf.as_ref().ok(), caps));

    v.push(if is_bpffs(BPFFS) {
        Check::host("bpffs", Status::Ok, format!("mounted at {BPFFS}"))
    } else {
        let elsewhere = fs::read_to_string("/proc/self/mountinfo")
            .map(|m| mounts_of(&m, "bpf"))
            .unwrap_or_default();
        Check::host(
            "bpffs",
            Status::Fail,
            format!(
                "no bpffs at {BPFFS}{}: `upgrade --pin` needs it",
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(" (mounted at {})", elsewhere.join(", "))
                }
            ),
        )
        .fix(format!("mount -t bpf bpf {BPFFS}"))
    });

    v.push(pin_dir_check());

    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cg2 = mounts_of(&mountinfo, "cgroup2");
    v.push(match cg2.first() {
        Some(m) => Check::host(
            "cgroup2",
            Status::Ok,
            if mounts_of(&mountinfo, "cgroup").is_empty() {
                format!("mounted at {m}")
            } else {
                format!("mounted at {m} (hybrid layout: cgroup v1 controllers too)")
            },
        ),
        None => {
            let v1_tmpfs = mounts_of(&mountinfo, "tmpfs")
                .iter()
                .any(|m| m == "/sys/fs/cgroup");
            Check::host(
                "cgroup2",
                Status::Fail,
                "no cgroup v2 mount: `upgrade --cgroup`, `run` and the --cgroup filter need one",
            )
            .fix(if v1_tmpfs {
                "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified"
            } else {
                "mount -t cgroup2 none /sys/fs/cgroup"
            })
        }
    });

    v.push(match caps {
        None => Check::host(
            "capabilities",
            Status::Fail,
            "cannot read CapEff in /proc/self/status",
        ),
        Some(eff) => {
            let missing = missing_caps(eff, last_cap());
            if missing.is_empty() {
                Check::host(
                    "capabilities",
                    Status::Ok,
                    format!(
                        "CapEff {eff:016x} has CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN"
                    ),
                )
            } else {
                Check::host(
                    "capabilities",
                    Status::Fail,
                    format!(
                        "CapEff {eff:016x} lacks {}: tracing and the upgrade need CAP_BPF and \
                         CAP_PERFMON, entering namespaces and cgroups CAP_SYS_ADMIN, the path \
                         manager CAP_NET_ADMIN",
                        missing.join(", ")
                    ),
                )
                .fix("sudo mptcp-trace doctor")
            }
        }
    });
    v.push(stale_demo_check());
    v
}

/// Namespaces of demos killed before they could remove them. Reported, not removed: doctor
/// changes nothing itself; the fix (or the next `demo`) removes them.
fn stale_demo_check() -> Check {
    let name = "stale_demo_namespaces";
    let stale = crate::commands::demo::stale_beds();
    if stale.is_empty() {
        return Check::host(name, Status::Ok, "none left by a demo that is gone");
    }
    let names: Vec<&str> = stale.iter().map(|(n, _)| n.as_str()).collect();
    let mut pids: Vec<u32> = stale.iter().map(|&(_, p)| p).collect();
    pids.dedup();
    Check::host(
        name,
        Status::Warn,
        format!(
            "{} left by demo process{} {} (no longer running): {}",
            if names.len() == 1 {
                "a namespace"
            } else {
                "namespaces"
            },
            if pids.len() == 1 { "" } else { "es" },
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        ),
    )
    .fix(
        names
            .iter()
            .map(|n| format!("ip netns del {n}"))
            .collect::<Vec<_>>()
            .join(" && "),
    )
}

fn pin_dir_check() -> Check {
    let name = "pin_dir";
    let Ok(m) = fs::symlink_metadata(PIN_DIR) else {
        return Check::host(
            name,
            Status::Ok,
            format!("{PIN_DIR} not present (`upgrade --pin` creates it, root-owned, mode 0700)"),
        );
    };
    if m.file_type().is_symlink() {
        let target = fs::read_link(PIN_DIR)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Check::host(
            name,
            Status::Fail,
            format!("{PIN_DIR} is a symlink (to {target}): pins must not be redirected"),
        )
        .fix(format!("rm {PIN_DIR}"));
    }
    if !m.is_dir() {
        return Check::host(name, Status::Fail, format!("{PIN_DIR} is not a directory"))
            .fix(format!("rm {PIN_DIR}"));
    }
    let mode = m.permissions().mode() & 0o7777;
    if m.uid() != 0 || m.gid() != 0 {
        return Check::host(
            name,
            Status::Fail,
            format!(
                "{PIN_DIR} belongs to uid {} gid {}, not root: its owner could replace the pinned upgrade",
                m.uid(),
                m.gid()
            ),
        )
        .fix(format!("chown root:root {PIN_DIR} && chmod 700 {PIN_DIR}"));
    }
    if mode != 0o700 {
        return Check::host(
            name,
            Status::Fail,
            format!("{PIN_DIR} has mode {mode:04o}, not 0700"),
        )
        .fix(format!("chmod 700 {PIN_DIR}"));
    }
    let pinned = Path::new(PIN_DIR).join("upgrade_link").exists();
    Check::host(
        name,
        Status::Ok,
        if pinned {
            format!(
                "{PIN_DIR}: root-owned directory, mode 0700; a pinned upgrade is there \
                 (`mptcp-trace upgrade --status`)"
            )
        } else {
            format!("{PIN_DIR}: root-owned directory, mode 0700, no pinned upgrade")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lockdown_caps_and_mounts() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown(""), None);
        let eff = caps::parse_cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n").unwrap();
        assert!(missing_caps(eff, 40).is_empty());
        assert_eq!(missing_caps(0, 40).len(), 4);
        assert_eq!(
            missing_caps(1 << 21, 37),
            ["CAP_NET_ADMIN"],
            "no CAP_BPF/CAP_PERFMON before 5.8"
        );
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  50 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw,mode=700\n";
        assert_eq!(mounts_of(mi, "cgroup2"), ["/sys/fs/cgroup/unified"]);
        assert_eq!(mounts_of(mi, "bpf"), ["/sys/fs/bpf"]);
        assert!(mounts_of(mi, "securityfs").is_empty());
    }

    #[test]
    fn lockdown_is_blamed_only_when_it_can_be_the_cause() {
        assert!(lockdown_verdict(Some("integrity")).contains("not the cause"));
        assert!(lockdown_verdict(Some("none")).contains("not the cause"));
        assert!(lockdown_verdict(None).contains("not the cause"));
        assert!(lockdown_verdict(Some("confidentiality")).contains("possibly the cause"));
    }
}
