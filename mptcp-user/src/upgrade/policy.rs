//! Turns the scope flags into the [`Policy`] the upgrade program reads, and back into words for
//! `upgrade --status`. Bad input (a cgroup that is not there, a dead pid, a long name) is an
//! [`UpgradeError`] with exit status 2, found before anything is loaded.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use mptcp_common::{scope, upgrade::Policy, MAX_COMMS, TASK_COMM_LEN};

use super::UpgradeError;
use crate::{
    cli::ScopeArgs,
    filter::{cgroup2_mount, cgroup_dirs},
};

/// A cgroup v2 directory as the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRef {
    pub path: PathBuf,
    /// The directory's inode: the cgroup id `bpf_get_current_cgroup_id` returns.
    pub id: u64,
    /// Depth below the cgroup2 root (root: 0).
    pub level: u32,
}

impl CgroupRef {
    /// Resolves an absolute path or one relative to the cgroup2 mount.
    pub fn resolve(spec: &Path) -> Result<Self, UpgradeError> {
        let mount = cgroup2_mount().ok_or(UpgradeError::NoCgroup2)?;
        Self::resolve_under(&mount, spec)
    }

    fn resolve_under(mount: &Path, spec: &Path) -> Result<Self, UpgradeError> {
        let bad = || UpgradeError::Cgroup(spec.display().to_string());
        let candidate = if spec.is_absolute() && spec.starts_with(mount) {
            spec.to_path_buf()
        } else {
            mount.join(spec.strip_prefix("/").unwrap_or(spec))
        };
        let path = candidate.canonicalize().map_err(|_| bad())?;
        let mount = mount.canonicalize().map_err(|_| bad())?;
        let rel = path.strip_prefix(&mount).map_err(|_| bad())?;
        if !path.join("cgroup.procs").exists() {
            return Err(bad());
        }
        let id = fs::metadata(&path).map_err(|_| bad())?.ino();
        Ok(CgroupRef {
            level: rel.components().count() as u32,
            path,
            id,
        })
    }

    /// The cgroup directory with inode `id` below the cgroup2 mount, if any (for `--status`).
    pub fn find_by_id(id: u64) -> Option<PathBuf> {
        cgroup_dirs(&cgroup2_mount()?).find(|d| fs::metadata(d).is_ok_and(|m| m.ino() == id))
    }
}

/// Builds the policy for `--cgroup/--comm/--pid/--uid/--all`. At least one is required.
pub fn from_args(args: &ScopeArgs, count_only: bool) -> Result<Policy, UpgradeError> {
    let mut p = Policy::NONE;
    p.count_only = count_only as u32;
    if args.all {
        p.scope.flags = scope::ALL;
        return Ok(p);
    }
    if let Some(spec) = &args.cgroup {
        p.set_cgroup(&CgroupRef::resolve(spec)?);
    }
    if let Some(pid) = args.pid {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(UpgradeError::NoProcess(pid));
        }
        p.scope.flags |= scope::PID;
        p.scope.pids[0] = pid;
        p.scope.n_pids = 1;
    }
    if let Some(uid) = args.uid {
        p.scope.flags |= scope::UID;
        p.scope.uid = uid;
    }
    if !args.comm.is_empty() {
        if args.comm.len() > MAX_COMMS {
            return Err(UpgradeError::TooManyComms(MAX_COMMS));
        }
        for (slot, name) in p.scope.comms.iter_mut().zip(&args.comm) {
            *slot = encode_comm(name)?;
        }
        p.scope.n_comms = args.comm.len() as u32;
        p.scope.flags |= scope::COMM;
    }
    if p.scope.flags == 0 {
        return Err(UpgradeError::NoScope);
    }
    Ok(p)
}

/// A command name as the kernel stores it: at most 15 bytes, NUL-padded.
pub fn encode_comm(name: &str) -> Result<[u8; TASK_COMM_LEN], UpgradeError> {
    if name.is_empty() || name.len() >= TASK_COMM_LEN || name.contains('\0') {
        return Err(UpgradeError::Comm(name.to_string()));
    }
    let mut out = [0u8; TASK_COMM_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Helpers on the shared type (kept here: the common crate stays `no_std` and minimal).
pub trait PolicyExt {
    fn set_cgroup(&mut self, cg: &CgroupRef);
    /// One line in words, e.g. `cgroup /sys/fs/cgroup/x (id 42) and comm curl`.
    fn describe(&self) -> String;
}

impl PolicyExt for Policy {
    fn set_cgroup(&mut self, cg: &CgroupRef) {
        self.scope.flags |= scope::CGROUP;
        self.scope.cgroup_id = cg.id;
        self.scope.cgroup_level = cg.level;
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let sc = &self.scope;
        if sc.flags & scope::ALL != 0 {
            parts.push("every process".to_string());
        }
        if sc.flags & scope::CGROUP != 0 {
            let path = CgroupRef::find_by_id(sc.cgroup_id)
                .map_or_else(|| "(removed)".to_string(), |p| p.display().to_string());
            parts.push(format!(
                "cgroup {path} and below (id {}, level {})",
                sc.cgroup_id, sc.cgroup_level
            ));
        }
        if sc.flags & scope::PID != 0 {
            parts.push(format!("pid {}", sc.pids[0]));
        }
        if sc.flags & scope::UID != 0 {
            parts.push(format!("uid {}", sc.uid));
        }
        if sc.flags & scope::COMM != 0 {
            let names: Vec<String> = sc
                .comms
                .iter()
                .take(sc.n_comms as usize)
                .map(|c| {
                    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                    String::from_utf8_lossy(&c[..end]).into_owned()
                })
                .collect();
            parts.push(format!("comm {}", names.join("|")));
        }
        if parts.is_empty() {
            parts.push("nothing".to_string());
        }
        let mut s = parts.join(" and ");
        if self.count_only != 0 {
            s.push_str(" (count only)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ScopeArgs {
        ScopeArgs::default()
    }

    #[test]
    fn all_ignores_nothing_else_and_needs_no_lookup() {
        let p = from_args(
            &ScopeArgs {
                all: true,
                ..args()
            },
            true,
        )
        .unwrap();
        assert_eq!(p.scope.flags, scope::ALL);
        assert_eq!(p.count_only, 1);
        assert_eq!(p.describe(), "every process (count only)");
    }

    #[test]
    fn no_scope_is_refused() {
        assert!(matches!(
            from_args(&args(), false),
            Err(UpgradeError::NoScope)
        ));
    }

    #[test]
    fn comms_are_nul_padded_and_repeatable() {
        let p = from_args(
            &ScopeArgs {
                comm: vec!["curl".into(), "iperf3".into()],
                uid: Some(1000),
                ..args()
            },
            false,
        )
        .unwrap();
        assert_eq!(p.scope.flags, scope::COMM | scope::UID);
        assert_eq!(p.scope.n_comms, 2);
        assert_eq!(&p.scope.comms[0][..5], b"curl\0");
        assert_eq!(&p.scope.comms[1][..7], b"iperf3\0");
        assert_eq!(p.scope.comms[2], [0; TASK_COMM_LEN]);
        assert_eq!(p.scope.uid, 1000);
        assert_eq!(p.describe(), "uid 1000 and comm curl|iperf3");
    }

    #[test]
    fn bad_values_are_refused_before_loading() {
        for (a, want) in [
            (
                ScopeArgs {
                    comm: vec!["sixteen-bytes-xx".into()],
                    ..args()
                },
                "--comm",
            ),
            (
                ScopeArgs {
                    comm: vec![String::new()],
                    ..args()
                },
                "--comm",
            ),
            (
                ScopeArgs {
                    comm: (0..9).map(|i| format!("c{i}")).collect(),
                    ..args()
                },
                "--comm",
            ),
            (
                ScopeArgs {
                    pid: Some(u32::MAX - 1),
                    ..args()
                },
                "--pid",
            ),
            (
                ScopeArgs {
                    cgroup: Some("/no/such/cgroup-for-mptcp-trace".into()),
                    ..args()
                },
                "--cgroup",
            ),
        ] {
            let e = from_args(&a, false).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn pid_scope_uses_the_tgid() {
        let me = std::process::id();
        let p = from_args(
            &ScopeArgs {
                pid: Some(me),
                ..args()
            },
            false,
        )
        .unwrap();
        assert_eq!(
            (p.scope.flags, p.scope.pids[0], p.scope.n_pids),
            (scope::PID, me, 1)
        );
    }

    #[test]
    fn cgroup_level_counts_from_the_mount() {
        let dir = std::env::temp_dir().join(format!("mptcp-trace-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).unwrap();
        // A directory tree that looks like a cgroup2 mount.
        fs::write(dir.join("a/b/cgroup.procs"), "").unwrap();
        let cg = CgroupRef::resolve_under(&dir, Path::new("a/b")).unwrap();
        assert_eq!(cg.level, 2);
        assert_eq!(cg.id, fs::metadata(dir.join("a/b")).unwrap().ino());
        let abs = CgroupRef::resolve_under(&dir, &dir.join("a/b")).unwrap();
        assert_eq!(abs, cg);
        assert!(CgroupRef::resolve_under(&dir, Path::new("a")).is_err());
        assert!(CgroupRef::resolve_under(&dir, Path::new("a/b/../../..")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn real_cgroup_root_children_are_level_one() {
        let Some(mount) = cgroup2_mount() else {
            panic!("no cgroup2 mount on this machine");
        };
        let root = CgroupRef::resolve(&mount).unwrap();
        assert_eq!(root.level, 0);
    }
}
