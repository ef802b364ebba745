//! The pin directory, `/sys/fs/bpf/mptcp-trace`, handled so that nobody but root can steer it.
//!
//! bpffs mounted without `mode=` is world-writable (1777): any user can create
//! `/sys/fs/bpf/mptcp-trace` first, as a symbolic link (root's `--off` would then delete files
//! wherever it points) or as a directory of their own (they would own root's pins and could
//! rename them away, so `--status` and `--off` would lie). So every access goes through
//! descriptors: the bpffs root is opened once with `O_NOFOLLOW`, the pin directory is opened
//! relative to it with `O_NOFOLLOW` and must be a directory owned by root that nobody else can
//! write; after that check only the descriptor is used (`unlinkat`, and
//! `/proc/self/fd/N/NAME` for the `bpf(2)` commands that take a path, which resolves to the
//! checked directory itself whatever happens to the name).
//!
//! Pinning is atomic: the pins go into a fresh private directory that is then renamed into
//! place with `RENAME_NOREPLACE`, so of two concurrent `--pin` exactly one wins and the loser
//! removes only what it created.

use std::{
    ffi::{CStr, CString, OsStr},
    io,
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use log::debug;

use super::{UpgradeError, BPFFS, BPF_FS_MAGIC, PIN_DIR};

/// The pin directory's name in the bpffs root.
const NAME: &CStr = c"mptcp-trace";
/// Prefix of the private directories a `--pin` fills before renaming them to [`NAME`]:
/// `mptcp-trace-staging-<pid>-<n>`. No dots: bpffs refuses them in names (EPERM, reserved for
/// its own files such as `maps.debug`).
const TMP_PREFIX: &str = "mptcp-trace-staging-";

fn cstr(s: &str) -> CString {
    CString::new(s).expect("pin names have no NUL")
}

/// `openat(dir, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)`: a symbolic link is an
/// error (ELOOP), never followed; anything but a directory is ENOTDIR.
fn open_dir_nofollow(dir: Option<BorrowedFd<'_>>, name: &CStr) -> io::Result<OwnedFd> {
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: NUL-terminated name; the result is a new descriptor we own.
    let fd = unsafe {
        libc::openat(
            at,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct on success.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what the name itself is.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as fstat.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path the kernel resolves to `name` inside the directory `dir` refers to, whatever has
/// become of the directory's own name since it was opened.
pub fn fd_path(dir: BorrowedFd<'_>, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn refuse(path: &str, problem: String, fix: &str) -> UpgradeError {
    UpgradeError::UnsafePinDir {
        path: path.to_string(),
        problem,
        fix: fix.to_string(),
    }
}

/// The bpffs root, opened without following a link, or `None` when nothing is mounted at
/// [`BPFFS`] and `mount` is false (then nothing can be pinned there). With `mount`, mounts one
/// (mode 0700) first when missing. Refuses a root other users could write without the sticky
/// bit: they could rename the pin directory away and put their own in its place.
pub fn open_root(mount: bool) -> Result<Option<OwnedFd>, UpgradeError> {
    if !super::is_bpffs(std::path::Path::new(BPFFS)) {
        if !mount {
            return Ok(None);
        }
        debug!("mounting bpffs at {BPFFS}");
        // SAFETY: constant NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(UpgradeError::Io {
                what: format!("no bpffs at {BPFFS} and mounting one failed"),
                source: io::Error::last_os_error(),
            });
        }
    }
    let root = open_dir_nofollow(None, &cstr(BPFFS))
        .map_err(UpgradeError::io(format!("cannot open {BPFFS}")))?;
    // The descriptor's own file system: the name could have changed since the statfs above.
    let mut sfs = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the struct on success.
    let ok = unsafe { libc::fstatfs(root.as_raw_fd(), sfs.as_mut_ptr()) } == 0
        // SAFETY: initialised by the successful call.
        && is_bpf_magic(&unsafe { sfs.assume_init() });
    if !ok {
        return Err(UpgradeError::Io {
            what: format!("{BPFFS} is not a bpffs"),
            source: io::Error::from_raw_os_error(libc::EXDEV),
        });
    }
    let st = fstat(root.as_fd()).map_err(UpgradeError::io(format!("cannot stat {BPFFS}")))?;
    let fix = "remount it for root only: `umount /sys/fs/bpf && mount -t bpf -o mode=0700 bpf /sys/fs/bpf`";
    if st.st_uid != 0 {
        return Err(refuse(
            BPFFS,
            format!(
                "it is owned by uid {}, not root, who could replace {PIN_DIR}",
                st.st_uid
            ),
            fix,
        ));
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        return Err(refuse(
            BPFFS,
            format!(
                "other users can write it (mode {:04o}) and it has no sticky bit, so they could replace {PIN_DIR}",
                st.st_mode & 0o7777
            ),
            fix,
        ));
    }
    Ok(Some(root))
}

/// `f_type`'s type differs between architectures, hence the cast.
#[allow(clippy::unnecessary_cast)]
fn is_bpf_magic(st: &libc::statfs) -> bool {
    st.f_type as i64 == BPF_FS_MAGIC
}

/// Checks a directory opened with `O_NOFOLLOW`: owned by root, writable by nobody else.
fn check_owned_by_root(dir: BorrowedFd<'_>, path: &str, fix: &str) -> Result<(), UpgradeError> {
    let st = fstat(dir).map_err(UpgradeError::io(format!("cannot stat {path}")))?;
    if st.st_uid != 0 {
        return Err(refuse(
            path,
            format!(
                "it is owned by uid {}, not root, so that user could rename or replace the pins",
                st.st_uid
            ),
            fix,
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(
            path,
            format!(
                "group or others can write it (mode {:04o}), so they could rename or replace the pins",
                st.st_mode & 0o7777
            ),
            fix,
        ));
    }
    Ok(())
}

/// The pin directory, opened relative to the bpffs `root` without following a link, or
/// `None` when there is none. Anything but a directory owned by root that only root can
/// write is refused (exit 2) and left as it is.
pub fn open_checked(root: BorrowedFd<'_>) -> Result<Option<OwnedFd>, UpgradeError> {
    let dir = match open_dir_nofollow(Some(root), NAME) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            // Only to say what is there: the open above already refused it.
            let is_link =
                lstat_at(root, NAME).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
            return Err(if is_link {
                let target = std::fs::read_link(fd_path(root, "mptcp-trace"))
                    .map(|t| format!(" (to {t:?})"))
                    .unwrap_or_default();
                refuse(
                    PIN_DIR,
                    format!("it is a symbolic link{target}, not a directory; it was not followed"),
                    &format!("remove the link (`rm {PIN_DIR}`) and try again"),
                )
            } else {
                refuse(
                    PIN_DIR,
                    "it is not a directory".into(),
                    &format!("remove it (`rm {PIN_DIR}`) and try again"),
                )
            });
        }
        Err(e) => {
            return Err(UpgradeError::Io {
                what: format!("cannot open {PIN_DIR}"),
                source: e,
            })
        }
    };
    check_owned_by_root(
        dir.as_fd(),
        PIN_DIR,
        &format!("check what it holds, remove it (`rm -r {PIN_DIR}`) and try again"),
    )?;
    Ok(Some(dir))
}

/// Which of `names` exist in `dir` (as names: a link there is not followed).
pub fn present(dir: BorrowedFd<'_>, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .copied()
        .filter(|n| lstat_at(dir, &cstr(n)).is_ok())
        .collect()
}

/// Removes `names` from `dir`; returns those that were there.
pub fn remove(dir: BorrowedFd<'_>, names: &[&'static str]) -> Vec<&'static str> {
    let there = present(dir, names);
    for n in &there {
        if let Err(e) = unlink_at(dir, &cstr(n), 0) {
            log::warn!("cannot remove {n} from the pin directory: {e}");
        }
    }
    there
}

/// Removes the (empty) pin directory; harmless when other files live there.
pub fn remove_dir(root: BorrowedFd<'_>) {
    let _ = unlink_at(root, NAME, libc::AT_REMOVEDIR);
}

/// A fresh directory only root can use, created under `root` for this process, to be filled
/// and then renamed into place with [`publish`].
pub struct Staging {
    pub name: CString,
    pub dir: OwnedFd,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Creates `mptcp-trace-staging-<pid>-<n>` (mode 0700). `mkdirat` never follows or reuses what is
/// already there: a name someone took (EEXIST) only moves on to the next `n`.
pub fn stage(root: BorrowedFd<'_>) -> Result<Staging, UpgradeError> {
    for _ in 0..100 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = cstr(&format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        // SAFETY: NUL-terminated name.
        if unsafe { libc::mkdirat(root.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            return Err(UpgradeError::Io {
                what: format!("cannot create a directory in {BPFFS}"),
                source: e,
            });
        }
        let shown = format!("{BPFFS}/{}", name.to_string_lossy());
        let dir = open_dir_nofollow(Some(root), &name)
            .map_err(UpgradeError::io(format!("cannot open {shown}")));
        let dir = match dir.and_then(|d| {
            check_owned_by_root(d.as_fd(), &shown, "try again")?;
            Ok(d)
        }) {
            Ok(d) => d,
            Err(e) => {
                let _ = unlink_at(root, &name, libc::AT_REMOVEDIR);
                return Err(e);
            }
        };
        // Exactly 0700 whatever the umask: the mode shows it is root's alone.
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) } != 0 {
            let e = io::Error::last_os_error();
            let _ = unlink_at(root, &name, libc::AT_REMOVEDIR);
            return Err(UpgradeError::Io {
                what: format!("cannot chmod {shown}"),
                source: e,
            });
        }
        return Ok(Staging { name, dir });
    }
    Err(UpgradeError::Io {
        what: format!("cannot find a free name for a directory in {BPFFS}"),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    })
}

impl Staging {
    /// Removes what this process put in its staging directory, and the directory.
    pub fn discard(self, root: BorrowedFd<'_>, names: &[&'static str]) {
        remove(self.dir.as_fd(), names);
        let _ = unlink_at(root, &self.name, libc::AT_REMOVEDIR);
    }

    /// Renames the staging directory to [`PIN_DIR`] unless something is there already:
    /// `Ok(false)` then, and nothing was changed.
    pub fn publish(&self, root: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: NUL-terminated names, both relative to our descriptor of the bpffs root.
        let r = unsafe {
            libc::renameat2(
                root.as_raw_fd(),
                self.name.as_ptr(),
                root.as_raw_fd(),
                NAME.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// Staging directories whose `--pin` was killed before its rename (pid gone): each can hold a
/// pinned link that keeps an upgrade attached out of sight. Removes them with their pins
/// (only root-owned directories, never followed); returns how many there were.
pub fn remove_abandoned(root: BorrowedFd<'_>, names: &[&'static str]) -> usize {
    let Ok(entries) = std::fs::read_dir(fd_path(root, "")) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|s| s.strip_prefix(TMP_PREFIX))
            .and_then(|s| s.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let c = CString::new(OsStr::as_bytes(&name)).expect("no NUL in a file name");
        let Ok(dir) = open_dir_nofollow(Some(root), &c) else {
            continue;
        };
        if check_owned_by_root(dir.as_fd(), "", "").is_err() {
            continue;
        }
        remove(dir.as_fd(), names);
        if unlink_at(root, &c, libc::AT_REMOVEDIR).is_ok() {
            n += 1;
        }
    }
    n
}
