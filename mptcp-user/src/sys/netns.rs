//! Network namespaces: naming them (a name from `ip netns`, a namespace file, an inode), listing
//! every one on the host, and running code inside one.
//!
//! A socket belongs to the namespace of the thread that created it, whichever thread uses it
//! later. [`Netns::enter`] switches the *calling* thread and switches back when its guard is
//! dropped, so a socket can be created in another namespace without a thread per namespace.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// Where `ip netns` keeps its names.
pub const NAMED_DIR: &str = "/run/netns";
/// `NSFS_MAGIC` (linux/magic.h): the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Why a namespace given by the user cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetnsError {
    #[error("no network namespace named {0:?} (see `ip netns list`)")]
    NoSuchName(String),
    #[error("no network namespace with inode {0} (see `lsns -t net`)")]
    NoSuchInode(u32),
    #[error("{reason}")]
    BadFile { path: String, reason: String },
    #[error("an empty network namespace name")]
    Empty,
}

/// A network namespace the user named, resolved to its inode and a file that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}

/// Whether `path` is a network namespace file (on nsfs, and `setns` would accept it).
fn check_ns_file(path: &Path) -> Result<u32, String> {
    let file = File::open(path).map_err(|e| open_error(path, &e))?;
    // SAFETY: fstatfs fills the zeroed struct for a valid fd.
    let on_nsfs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::fstatfs(file.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    };
    if !on_nsfs {
        return Err("not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)".into());
    }
    if !is_net_ns(&file) {
        return Err("a namespace file, but not of a network namespace".into());
    }
    let ino = file.metadata().map_err(|e| e.to_string())?.ino();
    u32::try_from(ino).map_err(|_| "inode out of range".to_string())
}

/// Why a namespace file cannot be opened, in a user's words. A process's namespace file
/// (`/proc/PID/ns/net`) opens only for those allowed to inspect the process — the kernel's
/// ptrace "read" check (`proc_ns_get_link` → `ptrace_may_access`): the same user, or root /
/// CAP_SYS_PTRACE for another user's process (checked by hand: uid 65534 is refused
/// /proc/PID/ns/net of a root process, and allowed it with CAP_SYS_PTRACE alone).
fn open_error(path: &Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied if path.starts_with("/proc") => format!(
            "cannot open {}: permission denied (another user's process: needs root or CAP_SYS_PTRACE)",
            path.display()
        ),
        io::ErrorKind::PermissionDenied => {
            format!("cannot open {}: permission denied", path.display())
        }
        io::ErrorKind::NotFound => format!("{}: no such file", path.display()),
        _ => format!("cannot open {}: {e}", path.display()),
    }
}

/// `ioctl(NS_GET_NSTYPE) == CLONE_NEWNET`.
fn is_net_ns(file: &File) -> bool {
    // _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the fd.
    let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    t == libc::CLONE_NEWNET
}

impl Netns {
    /// Resolves what the user typed: a name in /run/netns, an absolute namespace file path, or
    /// an inode number of a namespace that exists now. Relative paths and names with `/` are
    /// refused (they could walk out of /run/netns).
    pub fn resolve(spec: &str) -> Result<Netns, NetnsError> {
        if spec.is_empty() {
            return Err(NetnsError::Empty);
        }
        if spec.bytes().all(|b| b.is_ascii_digit()) {
            let inode: u32 = spec.parse().map_err(|_| NetnsError::NoSuchInode(0))?;
            return all()
                .remove(&inode)
                .map(|path| Netns { inode, path })
                .ok_or(NetnsError::NoSuchInode(inode));
        }
        let path = if spec.starts_with('/') {
            PathBuf::from(spec)
        } else if spec.contains('/') || spec == "." || spec == ".." {
            return Err(NetnsError::BadFile {
                path: spec.into(),
                reason: "a name from `ip netns` or an absolute path".into(),
            });
        } else {
            let p = Path::new(NAMED_DIR).join(spec);
            if !p.exists() {
                return Err(NetnsError::NoSuchName(spec.into()));
            }
            p
        };
        let inode = check_ns_file(&path).map_err(|reason| NetnsError::BadFile {
            path: spec.into(),
            reason,
        })?;
        Ok(Netns { inode, path })
    }

    /// The namespace of this process.
    pub fn current() -> io::Result<Netns> {
        let path = PathBuf::from("/proc/self/ns/net");
        let inode = fs::metadata(&path)?.ino() as u32;
        Ok(Netns { inode, path })
    }
}

/// Returns the calling thread to its previous namespace when dropped.
pub struct EnterGuard {
    home: OwnedFd,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        // SAFETY: setns with a namespace fd we opened; failing to go home would leave this
        // thread in a foreign namespace, which must never happen silently.
        let r = unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "cannot return to the original network namespace");
    }
}

/// Switches the calling thread into the network namespace of `ns_file`.
pub fn enter_file(ns_file: &Path) -> io::Result<EnterGuard> {
    let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
    let target = File::open(ns_file)?;
    // SAFETY: setns on this thread only, with a valid fd.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(EnterGuard { home })
}

/// Runs `f` on the calling thread inside the namespace of `ns_file`, then returns.
pub fn run_in<T>(ns_file: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
    let _guard = enter_file(ns_file)?;
    Ok(f())
}

/// Runs `f` on a new thread that stays in the namespace (for servers that outlive the call).
pub fn spawn_in<T: Send + 'static>(
    ns_file: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    let file = File::open(ns_file)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on this new thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = tx.send(Err(io::Error::last_os_error()));
            // The caller gets the error; this thread never runs `f` outside the namespace.
            loop {
                std::thread::park();
            }
        }
        drop(file);
        let _ = tx.send(Ok(()));
        f()
    });
    rx.recv()
        .map_err(|_| io::Error::other("namespace thread died"))??;
    Ok(handle)
}

/// The file of a named namespace (`/run/netns/NAME`).
pub fn named(name: &str) -> PathBuf {
    Path::new(NAMED_DIR).join(name)
}

/// Every network namespace on the host, by inode, with a file that opens it: names under
/// /run/netns first, then the namespace of every process.
pub fn all() -> HashMap<u32, PathBuf> {
    let mut map = HashMap::new();
    if let Ok(dir) = fs::read_dir(NAMED_DIR) {
        for e in dir.flatten() {
            if let Ok(m) = fs::metadata(e.path()) {
                map.entry(m.ino() as u32).or_insert(e.path());
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = e.path().join("ns/net");
            // "net:[4026531840]": no stat needed.
            let Some(ino) = fs::read_link(&path).ok().and_then(|l| {
                l.to_str()?
                    .strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse::<u32>()
                    .ok()
            }) else {
                continue;
            };
            map.entry(ino).or_insert(path);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_and_inodes_and_refuses_the_rest() {
        let me = Netns::current().unwrap();
        assert_eq!(Netns::resolve("/proc/self/ns/net").unwrap().inode, me.inode);
        assert_eq!(
            Netns::resolve(&me.inode.to_string()).unwrap().inode,
            me.inode
        );
        assert_eq!(Netns::resolve(""), Err(NetnsError::Empty));
        assert_eq!(Netns::resolve("12345"), Err(NetnsError::NoSuchInode(12345)));
        assert_eq!(Netns::resolve("0"), Err(NetnsError::NoSuchInode(0)));
        assert!(matches!(
            Netns::resolve("../../proc/1/ns/net"),
            Err(NetnsError::BadFile { .. })
        ));
        assert!(matches!(
            Netns::resolve("/etc/passwd"),
            Err(NetnsError::BadFile { .. })
        ));
        assert!(matches!(
            Netns::resolve("/proc/self/ns/uts"),
            Err(NetnsError::BadFile { .. })
        ));
        assert_eq!(
            Netns::resolve("no-such-netns-for-mptcp-trace"),
            Err(NetnsError::NoSuchName(
                "no-such-netns-for-mptcp-trace".into()
            ))
        );
    }

    #[test]
    fn lists_this_process_namespace() {
        let me = Netns::current().unwrap();
        assert!(all().contains_key(&me.inode));
    }
}
