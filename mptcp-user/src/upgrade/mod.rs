//! The TCP→MPTCP upgrade: checks that this kernel can do it, loads the `fmod_ret` program from
//! the `mptcp-upgrade` object (aya-obj parses and relocates it, aya creates its maps,
//! [`raw_bpf`] loads and attaches it), and keeps it attached for as long as the [`Upgrade`]
//! lives — or, pinned, until `upgrade --off`.

pub mod pindir;
pub mod raw_bpf;
pub mod refusal;
pub mod reports;
pub mod seccomp;
pub mod supervisor;

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs, io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, IterableMap, Map, MapData, PerCpuArray, RingBuf};
use log::debug;
use mptcp_common::upgrade::{counter, Policy};

use crate::offsets::VMLINUX_BTF;

/// The upgrade object built from `mptcp-ebpf/src/bin/upgrade.rs` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MPTCP_UPGRADE_OBJECT"));
/// The program's symbol in that object.
const PROGRAM: &str = "mptcp_upgrade";
/// The kernel function it modifies.
pub const HOOK: &str = "update_socket_protocol";
const POLICY_MAP: &str = "UPGRADE_POLICY";
const COUNTERS_MAP: &str = "UPGRADE_COUNTERS";
const EVENTS_MAP: &str = "UPGRADE_EVENTS";

pub const BPFFS: &str = "/sys/fs/bpf";
/// Where `--pin` leaves the upgrade: a directory owned by root, mode 0700 (see [`pindir`]).
pub const PIN_DIR: &str = "/sys/fs/bpf/mptcp-trace";
const PIN_LINK: &str = "upgrade_link";
const PIN_POLICY: &str = "upgrade_policy";
const PIN_COUNTERS: &str = "upgrade_counters";
/// Everything `--pin` puts in [`PIN_DIR`].
const PINS: [&str; 3] = [PIN_LINK, PIN_POLICY, PIN_COUNTERS];
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

const TRACING_STILL_WORKS: &str = "tracing still works (mptcp-trace events)";

/// Why the upgrade cannot run. Every variant but [`UpgradeError::Io`] and
/// [`UpgradeError::Object`] is a refusal with exit status 2 that leaves nothing behind.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Privileges(String),
    #[error("the upgrade needs Linux ≥ 6.6: this kernel ({0}) has no `update_socket_protocol` hook; `mptcp-trace run -- CMD` works on it (seccomp user notification, Linux ≥ 5.9); {TRACING_STILL_WORKS}")]
    HookMissing(String),
    #[error("cannot read kernel BTF at {VMLINUX_BTF} ({0}): the upgrade needs CONFIG_DEBUG_INFO_BTF=y; {TRACING_STILL_WORKS}")]
    NoBtf(String),
    #[error("the kernel refused to load the upgrade's BPF trampoline program (fmod_ret on update_socket_protocol): {0}. {TRACING_STILL_WORKS}. What works on this kernel: `mptcp-trace run -- CMD` (seccomp user notification on socket(), also for static binaries); for dynamically linked programs also `mptcpize run CMD` (LD_PRELOAD, package mptcpd)")]
    TrampolinesRefused(refusal::Refusal),
    #[error("the seccomp upgrade method cannot run here: {0}")]
    SeccompUnavailable(String),
    #[error("the kernel rejected the upgrade program: {error}{}", if log.is_empty() { String::new() } else { format!("\nverifier log:\n{log}") })]
    Rejected { error: io::Error, log: String },
    #[error("cannot attach the upgrade to update_socket_protocol: {0}")]
    Attach(io::Error),
    #[error("MPTCP is disabled in this network namespace (net.mptcp.enabled = 0): upgraded sockets would fail to open. Enable it with `sysctl -w net.mptcp.enabled=1`")]
    MptcpDisabled,
    #[error("{}", crate::sys::mptcp::MISSING)]
    NoMptcp,
    #[error("an upgrade is already pinned at {PIN_DIR} ({0}); remove it first with `mptcp-trace upgrade --off`")]
    AlreadyPinned(String),
    /// The pin directory (or the bpffs root) is not something only root controls: another
    /// user could have planted it.
    #[error("refusing {path}: {problem}; nothing was changed. To fix: {fix}")]
    UnsafePinDir {
        path: String,
        problem: String,
        fix: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the upgrade object is broken: {0}")]
    Object(String),
}

impl UpgradeError {
    /// 2 for refusals and bad input (as clap does for usage errors), 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpgradeError::Io { .. } | UpgradeError::Object(_) => 1,
            _ => 2,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpgradeError {
        let what = what.into();
        move |source| UpgradeError::Io { what, source }
    }
}

pub(crate) fn osrelease() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// BPF trampolines need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; pins and cgroups need
/// CAP_SYS_ADMIN too.
pub fn require_privileges() -> Result<(), UpgradeError> {
    crate::sys::caps::require(UPGRADE_CAPS, "the upgrade").map_err(UpgradeError::Privileges)
}

/// What the upgrade needs (see [`require_privileges`]).
pub const UPGRADE_CAPS: &[crate::sys::caps::Cap] = {
    use crate::sys::caps::Cap;
    &[Cap::Bpf, Cap::Perfmon, Cap::SysAdmin]
};

/// The checks that need no BPF: root, the hook in BTF, MPTCP enabled here. Returns the hook's
/// BTF id.
pub fn preflight() -> Result<u32, UpgradeError> {
    require_privileges()?;
    // Before the hook: on a kernel without MPTCP, `run`'s seccomp method is no way out either.
    if !crate::sys::mptcp::in_kernel() {
        return Err(UpgradeError::NoMptcp);
    }
    let btf = crate::offsets::open_lazily(std::path::Path::new(VMLINUX_BTF))
        .map_err(|e| UpgradeError::NoBtf(e.to_string()))?;
    let id =
        raw_bpf::func_btf_id(&btf, HOOK).ok_or_else(|| UpgradeError::HookMissing(osrelease()))?;
    match fs::read_to_string("/proc/sys/net/mptcp/enabled") {
        Ok(v) if v.trim() == "0" => return Err(UpgradeError::MptcpDisabled),
        Ok(_) => {}
        Err(_) => return Err(UpgradeError::NoMptcp),
    }
    Ok(id)
}

/// Sums of the program's per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub seen: u64,
    pub in_scope: u64,
    pub upgraded: u64,
    /// `socket_upgraded` records the ring had no room for.
    pub lost: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCP sockets seen {}, in scope {}, upgraded to MPTCP {}",
            self.seen, self.in_scope, self.upgraded
        )
    }
}

fn read_counts(map: &PerCpuArray<MapData, u64>) -> Counts {
    let get = |i: u32| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
    Counts {
        seen: get(counter::SEEN),
        in_scope: get(counter::IN_SCOPE),
        upgraded: get(counter::UPGRADED),
        lost: get(counter::LOST),
    }
}

/// What the event pipeline needs to read the program's `socket_upgraded` records and to
/// account for the ones it lost.
pub struct EventFeed {
    pub ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    prog: OwnedFd,
}

/// Reads the upgrade program's loss: records the ring had no room for, and its skipped runs
/// (`None` where the kernel cannot tell).
pub type LossReader = Box<dyn Fn() -> (u64, Option<u64>) + Send>;

/// An [`EventFeed`] taken apart: the ring, and what reads the loss.
pub struct FeedParts {
    pub ring: RingBuf<MapData>,
    pub loss: LossReader,
}

impl EventFeed {
    pub fn split(self) -> FeedParts {
        let EventFeed {
            ring,
            counters,
            prog,
        } = self;
        FeedParts {
            ring,
            loss: Box::new(move || {
                let misses = raw_bpf::recursion_misses(prog.as_fd()).unwrap_or(None);
                (read_counts(&counters).lost, misses)
            }),
        }
    }
}

/// An attached upgrade. Dropping it detaches the program (the link is fd-owned), unless it was
/// pinned.
pub struct Upgrade {
    link: OwnedFd,
    /// The program itself (the link holds it too): for its recursion misses.
    prog: OwnedFd,
    policy: Array<MapData, Policy>,
    counters: PerCpuArray<MapData, u64>,
    /// The `socket_upgraded` records (taken by [`Upgrade::event_feed`]).
    events: Option<EventFeed>,
    pub policy_value: Policy,
}

impl Upgrade {
    /// Checks the kernel, loads the program with `policy` in its map and attaches it.
    pub fn attach(policy: Policy) -> Result<Upgrade, UpgradeError> {
        let btf_id = preflight()?;
        crate::loader::bump_memlock_rlimit();
        let mut obj =
            aya_obj::Object::parse(OBJECT).map_err(|e| UpgradeError::Object(e.to_string()))?;
        let mut maps: HashMap<String, MapData> = HashMap::new();
        for (name, def) in obj.maps.clone() {
            let data = MapData::create(def, &name, None).map_err(|e| UpgradeError::Io {
                what: format!("cannot create map {name}"),
                source: io::Error::other(e),
            })?;
            maps.insert(name, data);
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let map_objs: Vec<(String, i32, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(name, def)| {
                (
                    name.clone(),
                    maps[name].fd().as_fd().as_raw_fd(),
                    def.clone(),
                )
            })
            .collect();
        obj.relocate_maps(
            map_objs.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| UpgradeError::Object(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| UpgradeError::Object(e.to_string()))?;
        let prog = obj
            .programs
            .get(PROGRAM)
            .ok_or_else(|| UpgradeError::Object(format!("no program {PROGRAM}")))?;
        let insns = &obj.functions[&prog.function_key()].instructions;

        let take = |maps: &mut HashMap<String, MapData>, name: &str| {
            maps.remove(name)
                .ok_or_else(|| UpgradeError::Object(format!("no map {name}")))
        };
        let mut policy_map: Array<MapData, Policy> =
            Array::try_from(Map::Array(take(&mut maps, POLICY_MAP)?))
                .map_err(|e| UpgradeError::Object(e.to_string()))?;
        let obj_err = |e: aya::maps::MapError| UpgradeError::Object(e.to_string());
        // A second handle on the counters, for the event feed's loss accounting.
        let counters_dup = maps
            .get(COUNTERS_MAP)
            .ok_or_else(|| UpgradeError::Object(format!("no map {COUNTERS_MAP}")))?
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(UpgradeError::io("dup of the upgrade counters"))?;
        let counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(take(&mut maps, COUNTERS_MAP)?))
                .map_err(obj_err)?;
        let feed_counters = PerCpuArray::try_from(Map::PerCpuArray(
            MapData::from_fd(counters_dup).map_err(obj_err)?,
        ))
        .map_err(obj_err)?;
        let ring: RingBuf<MapData> =
            RingBuf::try_from(Map::RingBuf(take(&mut maps, EVENTS_MAP)?)).map_err(obj_err)?;
        policy_map.set(0, policy, 0).map_err(|e| UpgradeError::Io {
            what: "cannot write the upgrade policy".into(),
            source: io::Error::other(e),
        })?;

        let license = CString::new(obj.license.as_bytes()).expect("license has no NUL");
        let prog_fd = match raw_bpf::load_fmod_ret(insns, &license, PROGRAM, btf_id) {
            Ok(fd) => fd,
            Err(e) if e.io.raw_os_error() == Some(libc::EPERM) => {
                return Err(UpgradeError::TrampolinesRefused(
                    refusal::Refusal::diagnose("BPF_PROG_LOAD", &e.io, &e.log),
                ))
            }
            Err(e) => {
                return Err(UpgradeError::Rejected {
                    error: e.io,
                    log: e.log,
                })
            }
        };
        debug!("loaded fmod_ret/{HOOK} ({} instructions)", insns.len());
        let link = raw_bpf::link_create(prog_fd.as_fd()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                UpgradeError::TrampolinesRefused(refusal::Refusal::diagnose(
                    "BPF_LINK_CREATE",
                    &e,
                    "",
                ))
            } else {
                UpgradeError::Attach(e)
            }
        })?;
        debug!("attached fmod_ret/{HOOK}");
        let prog_dup = prog_fd
            .try_clone()
            .map_err(UpgradeError::io("dup of the upgrade program"))?;
        Ok(Upgrade {
            link,
            prog: prog_fd,
            policy: policy_map,
            counters,
            events: Some(EventFeed {
                ring,
                counters: feed_counters,
                prog: prog_dup,
            }),
            policy_value: policy,
        })
    }

    pub fn counts(&self) -> Counts {
        read_counts(&self.counters)
    }

    /// The ring of `socket_upgraded` records, with what reads its loss; once. The program
    /// writes to it only when the policy's `events` is set.
    pub fn event_feed(&mut self) -> Option<EventFeed> {
        self.events.take()
    }

    /// `socket()` calls the kernel ran without the upgrade because the program would have
    /// re-entered itself on that CPU: each is an in-scope socket that silently stayed TCP.
    /// `None` when this kernel does not report it.
    pub fn recursion_misses(&self) -> io::Result<Option<u64>> {
        raw_bpf::recursion_misses(self.prog.as_fd())
    }

    /// Pins the link and the maps under [`PIN_DIR`]; the upgrade then outlives this process.
    /// The pins go into a private directory first, renamed into place only when complete
    /// (`RENAME_NOREPLACE`): of two concurrent `--pin` one wins, the other removes only its
    /// own pins and says "already pinned".
    pub fn pin(self) -> Result<PathBuf, UpgradeError> {
        let root = pindir::open_root(true)?.expect("open_root(true) mounts bpffs");
        let root = root.as_fd();
        clear_way(root)?;
        let staging = pindir::stage(root)?;
        let dir = staging.dir.as_fd();
        let result = (|| {
            self.policy
                .map()
                .pin(pindir::fd_path(dir, PIN_POLICY))
                .map_err(|e| UpgradeError::Io {
                    what: "cannot pin the policy map".into(),
                    source: io::Error::other(e),
                })?;
            self.counters
                .map()
                .pin(pindir::fd_path(dir, PIN_COUNTERS))
                .map_err(|e| UpgradeError::Io {
                    what: "cannot pin the counters map".into(),
                    source: io::Error::other(e),
                })?;
            // The link last: once it is pinned the upgrade is complete.
            raw_bpf::obj_pin(self.link.as_fd(), &pindir::fd_path(dir, PIN_LINK))
                .map_err(UpgradeError::io("cannot pin the upgrade link"))?;
            staging.publish(root).map_err(UpgradeError::io(format!(
                "cannot rename the pins to {PIN_DIR}"
            )))
        })();
        match result {
            Ok(true) => Ok(PathBuf::from(PIN_DIR)),
            Ok(false) => {
                // Another upgrade was pinned meanwhile; its pins stay untouched.
                staging.discard(root, &PINS);
                Err(UpgradeError::AlreadyPinned(
                    "pinned by another `mptcp-trace upgrade --pin` meanwhile".into(),
                ))
            }
            Err(e) => {
                staging.discard(root, &PINS);
                Err(e)
            }
        }
    }
}

/// Checks that nothing stands where the pins will go: a checked pin directory with our pins
/// is an upgrade pinned already; an empty one (left by hand) is removed; anything else is
/// refused as it is.
fn clear_way(root: std::os::fd::BorrowedFd<'_>) -> Result<(), UpgradeError> {
    let Some(dir) = pindir::open_checked(root)? else {
        return Ok(());
    };
    if let Some(existing) = pindir::present(dir.as_fd(), &PINS).first() {
        return Err(UpgradeError::AlreadyPinned(format!("{PIN_DIR}/{existing}")));
    }
    pindir::remove_dir(root);
    if pindir::open_checked(root)?.is_some() {
        // Not empty: files that are not ours, or pins that arrived meanwhile.
        return Err(UpgradeError::AlreadyPinned(format!(
            "{PIN_DIR} is not empty"
        )));
    }
    Ok(())
}

/// The checks `--pin` makes before loading anything, so that a refused pin directory leaves
/// nothing loaded: the same checks [`Upgrade::pin`] makes again at the end.
pub fn check_pin_dir() -> Result<(), UpgradeError> {
    require_privileges()?;
    let Some(root) = pindir::open_root(false)? else {
        // No bpffs yet: nobody can have planted anything; `pin` mounts one.
        return Ok(());
    };
    let Some(dir) = pindir::open_checked(root.as_fd())? else {
        return Ok(());
    };
    match pindir::present(dir.as_fd(), &PINS).first() {
        Some(existing) => Err(UpgradeError::AlreadyPinned(format!("{PIN_DIR}/{existing}"))),
        None => Ok(()),
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// What `upgrade --status` reports about a pinned upgrade.
#[derive(Debug)]
pub struct PinnedStatus {
    pub dir: PathBuf,
    pub policy: Policy,
    pub counts: Counts,
    /// `socket()` calls the pinned program was skipped for (re-entry on one CPU): in-scope
    /// sockets that stayed TCP. `None` when the kernel does not report it.
    pub recursion_misses: Option<u64>,
}

/// The pinned upgrade, if there is one. A pin directory that is not root's own is refused,
/// not read: its contents may be anyone's.
pub fn pinned_status() -> Result<Option<PinnedStatus>, UpgradeError> {
    require_privileges()?;
    let Some(root) = pindir::open_root(false)? else {
        return Ok(None);
    };
    let Some(dir) = pindir::open_checked(root.as_fd())? else {
        return Ok(None);
    };
    let dir = dir.as_fd();
    if pindir::present(dir, &[PIN_LINK]).is_empty() {
        return Ok(None);
    }
    // Opening the link proves it is a live BPF object, not a stale file.
    let link = raw_bpf::obj_get(&pindir::fd_path(dir, PIN_LINK))
        .map_err(UpgradeError::io("cannot open the pinned link"))?;
    let prog = raw_bpf::link_prog(link.as_fd())
        .map_err(UpgradeError::io("cannot find the pinned link's program"))?;
    let recursion_misses = raw_bpf::recursion_misses(prog.as_fd())
        .map_err(UpgradeError::io("cannot read the pinned program's info"))?;
    let open = |name: &str| {
        MapData::from_pin(pindir::fd_path(dir, name)).map_err(|e| UpgradeError::Io {
            what: format!("cannot open pinned map {name}"),
            source: io::Error::other(e),
        })
    };
    let policy: Array<MapData, Policy> = Array::try_from(Map::Array(open(PIN_POLICY)?))
        .map_err(|e| UpgradeError::Object(e.to_string()))?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(PIN_COUNTERS)?))
            .map_err(|e| UpgradeError::Object(e.to_string()))?;
    Ok(Some(PinnedStatus {
        policy: policy
            .get(&0, 0)
            .map_err(|e| UpgradeError::Object(e.to_string()))?,
        counts: read_counts(&counters),
        recursion_misses,
        dir: PathBuf::from(PIN_DIR),
    }))
}

/// Removes a pinned upgrade: the program detaches when its link's last pin goes. Returns
/// whether there was one. Also removes the staging directories of `--pin` runs killed before
/// their rename (each may hold an attached upgrade). Only a pin directory that is root's own
/// is touched, through its descriptor, never through a link.
pub fn unpin() -> Result<bool, UpgradeError> {
    require_privileges()?;
    let Some(root) = pindir::open_root(false)? else {
        return Ok(false);
    };
    let root = root.as_fd();
    let abandoned = pindir::remove_abandoned(root, &PINS);
    let Some(dir) = pindir::open_checked(root)? else {
        return Ok(abandoned > 0);
    };
    let removed = pindir::remove(dir.as_fd(), &PINS);
    // Fails harmlessly when other files live there.
    pindir::remove_dir(root);
    Ok(!removed.is_empty() || abandoned > 0)
}
