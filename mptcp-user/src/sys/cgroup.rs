//! cgroup v2: where the hierarchy is mounted, and cgroups named by the user, resolved without
//! leaving the hierarchy (no `..` escapes, no look-alike directories, no cgroup v1).

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (mount one with `mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,
    #[error("{0}: no such cgroup in the cgroup v2 hierarchy")]
    NotFound(String),
    #[error("{0}: outside the cgroup v2 hierarchy mounted at {1}")]
    Outside(String, String),
    #[error("{0}: not a cgroup v2 directory")]
    NotCgroup2(String),
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (it is /sys/fs/cgroup/unified on
/// hybrid hosts, /sys/fs/cgroup on unified ones).
pub fn mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// A cgroup v2 directory as the kernel programs see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The directory's inode: the cgroup id `bpf_get_current_cgroup_id` returns.
    pub id: u64,
    /// Depth below the cgroup2 root (root: 0).
    pub level: u32,
}

impl Cgroup {
    /// Resolves an absolute path or one relative to the cgroup2 mount.
    pub fn resolve(spec: &Path) -> Result<Self, CgroupError> {
        let mount = mount().ok_or(CgroupError::NoCgroup2)?;
        Self::resolve_under(&mount, spec, true)
    }

    /// `check_fs`: require the directory to be on cgroup2 (off only in unit tests that build a
    /// look-alike tree).
    pub(crate) fn resolve_under(
        mount: &Path,
        spec: &Path,
        check_fs: bool,
    ) -> Result<Self, CgroupError> {
        let shown = spec.display().to_string();
        let candidate = if spec.is_absolute() && spec.starts_with(mount) {
            spec.to_path_buf()
        } else {
            mount.join(spec.strip_prefix("/").unwrap_or(spec))
        };
        let path = candidate
            .canonicalize()
            .map_err(|_| CgroupError::NotFound(shown.clone()))?;
        let root = mount
            .canonicalize()
            .map_err(|_| CgroupError::NotFound(shown.clone()))?;
        let rel = path
            .strip_prefix(&root)
            .map_err(|_| CgroupError::Outside(shown.clone(), root.display().to_string()))?;
        if !path.is_dir() || !path.join("cgroup.procs").exists() || (check_fs && !is_cgroup2(&path))
        {
            return Err(CgroupError::NotCgroup2(shown));
        }
        let id = fs::metadata(&path)
            .map_err(|_| CgroupError::NotFound(shown))?
            .ino();
        Ok(Cgroup {
            level: rel.components().count() as u32,
            path,
            id,
        })
    }

    /// The cgroup of a process (its line `0::/PATH` in /proc/PID/cgroup).
    pub fn of_process(pid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| io::Error::other("no cgroup v2 line"))?;
        Self::resolve(Path::new(rel)).map_err(io::Error::other)
    }

    /// The cgroup directory with inode `id` below the cgroup2 mount, if any.
    pub fn find_by_id(id: u64) -> Option<PathBuf> {
        dirs(&mount()?).find(|d| fs::metadata(d).is_ok_and(|m| m.ino() == id))
    }
}

/// A cgroup directory and every cgroup below it (depth first).
pub fn dirs(root: &Path) -> impl Iterator<Item = PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    std::iter::from_fn(move || {
        let dir = stack.pop()?;
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(dir)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_from_the_mount_and_escapes_are_refused() {
        let dir = std::env::temp_dir().join(format!("mptcp-trace-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/cgroup.procs"), "").unwrap();
        let cg = Cgroup::resolve_under(&dir, Path::new("a/b"), false).unwrap();
        assert_eq!(cg.level, 2);
        assert_eq!(cg.id, fs::metadata(dir.join("a/b")).unwrap().ino());
        let abs = Cgroup::resolve_under(&dir, &dir.join("a/b"), false).unwrap();
        assert_eq!(abs, cg);
        assert!(Cgroup::resolve_under(&dir, Path::new("a"), false).is_err());
        assert!(matches!(
            Cgroup::resolve_under(&dir, Path::new("a/b/../../.."), false),
            Err(CgroupError::Outside(..))
        ));
        // A look-alike directory is not on cgroup2.
        assert!(matches!(
            Cgroup::resolve_under(&dir, Path::new("a/b"), true),
            Err(CgroupError::NotCgroup2(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_real_root_is_level_zero_and_this_process_has_a_cgroup() {
        let m = mount().expect("cgroup2 mounted");
        assert_eq!(Cgroup::resolve(&m).unwrap().level, 0);
        let mine = Cgroup::of_process(std::process::id()).unwrap();
        assert!(mine.path.starts_with(m.canonicalize().unwrap()));
    }
}
