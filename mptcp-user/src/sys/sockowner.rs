//! Which process holds a socket, from its inode: what `ss -p` does — every `/proc/PID/fd/N`
//! that links to `socket:[INODE]`. Used for the connections and listeners that were open
//! before the tracer started, whose creation the programs did not see.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use mptcp_common::{scope, Owner, Scope, TASK_COMM_LEN};

/// Socket inode → the process holding it (the lowest pid when several share it, e.g. after
/// `fork`: the parent, usually the one that created it).
pub fn socket_holders() -> HashMap<u32, u32> {
    let mut map: HashMap<u32, u32> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return map;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go during the scan: a vanished one simply holds nothing.
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            else {
                continue;
            };
            map.entry(ino)
                .and_modify(|old| *old = (*old).min(pid))
                .or_insert(pid);
        }
    }
    map
}

/// A process as the kernel programs would have described it ([`Owner`]), read from /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// cgroup v2 id (the inode of the process's cgroup directory), when readable.
    pub cgroup_id: Option<u64>,
    /// The cgroup directory, for ancestors at a scope's depth.
    cgroup_path: Option<PathBuf>,
}

impl Process {
    pub fn read(pid: u32) -> Option<Process> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let comm = fs::read_to_string(dir.join("comm")).ok()?;
        let status = fs::read_to_string(dir.join("status")).ok()?;
        // "Uid:\treal\teffective\tsaved\tfs": the programs use the real uid.
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let cgroup = crate::sys::cgroup::Cgroup::of_process(pid).ok();
        Some(Process {
            pid,
            comm: comm.trim_end_matches('\n').to_string(),
            uid,
            cgroup_id: cgroup.as_ref().map(|c| c.id),
            cgroup_path: cgroup.map(|c| c.path),
        })
    }

    /// The [`Owner`] the programs match `scope` against (and report): the ancestor cgroup is
    /// computed only when the scope selects by cgroup, as the programs do.
    pub fn owner(&self, scope: &Scope) -> Owner {
        let mut comm = [0u8; TASK_COMM_LEN];
        let n = self.comm.len().min(TASK_COMM_LEN - 1);
        comm[..n].copy_from_slice(&self.comm.as_bytes()[..n]);
        let ancestor_cgroup_id = if scope.flags & scope::CGROUP != 0 {
            self.cgroup_path
                .as_deref()
                .and_then(|p| ancestor_id(p, scope.cgroup_level))
                .unwrap_or(0)
        } else {
            0
        };
        Owner {
            cgroup_id: self.cgroup_id.unwrap_or(0),
            ancestor_cgroup_id,
            tgid: self.pid,
            uid: self.uid,
            comm,
        }
    }
}

/// The id of the ancestor of cgroup directory `path` at depth `level` below the cgroup2 root
/// (`bpf_get_current_ancestor_cgroup_id(level)`); `None` when the cgroup is not that deep.
fn ancestor_id(path: &Path, level: u32) -> Option<u64> {
    let root = crate::sys::cgroup::mount()?.canonicalize().ok()?;
    let rel = path.strip_prefix(&root).ok()?;
    let parts: Vec<_> = rel.components().collect();
    if parts.len() < level as usize {
        return None;
    }
    let mut p = root;
    for c in &parts[..level as usize] {
        p.push(c);
    }
    fs::metadata(&p).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_the_holder_of_a_socket_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .unwrap()
        .ino() as u32;
        let me = std::process::id();
        assert_eq!(socket_holders().get(&ino), Some(&me));
        let p = Process::read(me).unwrap();
        let o = p.owner(&Scope::ALL);
        assert_eq!((o.tgid, o.ancestor_cgroup_id), (me, 0));
        assert_eq!(o.cgroup_id, p.cgroup_id.unwrap());
        // At its own depth the ancestor is its own cgroup; at depth 0, the root.
        let cg = crate::sys::cgroup::Cgroup::of_process(me).unwrap();
        let sc = Scope {
            flags: scope::CGROUP,
            cgroup_level: cg.level,
            cgroup_id: cg.id,
            ..Scope::NONE
        };
        assert_eq!(p.owner(&sc).ancestor_cgroup_id, cg.id);
        assert!(sc.selects(&p.owner(&sc)));
        let root = crate::sys::cgroup::mount().unwrap();
        assert_eq!(
            ancestor_id(&cg.path, 0),
            Some(fs::metadata(root).unwrap().ino())
        );
    }
}
