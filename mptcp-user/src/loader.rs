//! Loads the tracing programs: resolves offsets from BTF, hands them and the kernel-side filters
//! to the programs as read-only globals, loads and attaches every program, and hands back the
//! maps userspace reads. Dropping the [`Tracer`] detaches everything (links are fd-owned).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use log::{debug, warn};
use mptcp_common::{counter, Config};

use crate::offsets::{self, OffsetError, VMLINUX_BTF};

/// The eBPF object built from `mptcp-ebpf` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MPTCP_EBPF_OBJECT"));

/// Programs and the tracepoint each attaches to. `required` ones make the tracer useless when
/// they fail; the others lose one kind of information, with a warning.
const PROGRAMS: &[(&str, bool, &str)] = &[
    (
        "inet_sock_set_state",
        true,
        "connection and subflow lifecycle",
    ),
    ("tcp_send_reset", false, "rst_sent close reasons"),
    ("tcp_receive_reset", false, "rst_received close reasons"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    #[error(
        "loading eBPF programs needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN); run with sudo"
    )]
    NotRoot,
    #[error("the kernel refused to load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("cannot {what} program {name}: {source}")]
    Program {
        what: &'static str,
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object lacks map {0}")]
    Map(&'static str),
    #[error("map {name}: {source}")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot read kernel BTF for tracepoint types: {0}")]
    Btf(#[from] aya::BtfError),
}

/// Loaded and attached tracing programs. Take the parts you poll; keep `ebpf` alive for as
/// long as the programs should stay attached.
pub struct Tracer {
    pub events: RingBuf<MapData>,
    pub counters: Counters,
    /// Kernel log records (aya-log), forwarded to the `log` crate.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub ebpf: Ebpf,
    /// Members or programs this kernel lacks, each with what is lost.
    pub degraded: Vec<String>,
    /// Every attached program, for its recursion misses (runs the kernel skipped).
    pub programs: Vec<AttachedProgram>,
}

/// One attached tracing program: its name and a descriptor of its own (a duplicate, so it
/// outlives a destructured [`Tracer`] as long as the caller keeps it; it does not keep the
/// program attached — the links in `Ebpf` do).
#[derive(Debug)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub fd: OwnedFd,
}

impl AttachedProgram {
    /// Runs the kernel skipped because the program would have re-entered itself on one CPU
    /// (`bpf_prog_info.recursion_misses`); `None` when this kernel does not report it.
    pub fn recursion_misses(&self) -> io::Result<Option<u64>> {
        crate::upgrade::raw_bpf::recursion_misses(self.fd.as_fd())
    }
}

/// The programs' per-CPU counters (`mptcp_common::counter`).
pub struct Counters(PerCpuArray<MapData, u64>);

/// Lifts RLIMIT_MEMLOCK for map and program memory on kernels that still count it.
pub fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        // Kernels ≥ 5.11 charge BPF memory to the memory cgroup instead: not an error.
        debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn load(config: Config) -> Result<Tracer, LoadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    bump_memlock_rlimit();
    let resolved = offsets::resolve_from(Path::new(VMLINUX_BTF))?;
    let mut degraded = resolved.missing.clone();
    for m in &resolved.missing {
        warn!("this kernel lacks {m}: that field stays empty");
    }
    let btf = Btf::from_sys_fs()?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &resolved.offsets, true)
        .override_global("CONFIG", &config, true)
        .load(OBJECT)
        .map_err(LoadError::Load)?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            debug!("kernel-side logging unavailable: {e}");
            None
        }
    };
    let mut programs = Vec::new();
    for &(name, required, what) in PROGRAMS {
        match attach(&mut ebpf, &btf, name) {
            Ok(fd) => {
                debug!("attached tp_btf/{name}");
                programs.push(AttachedProgram { name, fd });
            }
            Err(e) if required => return Err(e),
            Err(e) => {
                warn!("{e}: {what} are not reported");
                degraded.push(format!("tp_btf/{name} ({what})"));
            }
        }
    }
    let events = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or(LoadError::Map("EVENTS"))?)
        .map_err(|source| LoadError::MapType {
            name: "EVENTS",
            source,
        })?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map("COUNTERS")
            .ok_or(LoadError::Map("COUNTERS"))?,
    )
    .map_err(|source| LoadError::MapType {
        name: "COUNTERS",
        source,
    })?;
    Ok(Tracer {
        events,
        counters: Counters(counters),
        logger,
        ebpf,
        degraded,
        programs,
    })
}

/// Loads and attaches one program; returns a duplicate of its descriptor.
fn attach(ebpf: &mut Ebpf, btf: &Btf, name: &'static str) -> Result<OwnedFd, LoadError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::Map(name))?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: "find",
            name,
            source,
        })?;
    prog.load(name, btf).map_err(|source| LoadError::Program {
        what: "load",
        name,
        source,
    })?;
    prog.attach().map_err(|source| LoadError::Program {
        what: "attach",
        name,
        source,
    })?;
    let fd = prog
        .fd()
        .map_err(|source| LoadError::Program {
            what: "find the descriptor of",
            name,
            source,
        })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LoadError::Program {
            what: "duplicate the descriptor of",
            name,
            source: aya::programs::ProgramError::IOError(e),
        })?;
    Ok(fd)
}

impl Counters {
    /// Sum over CPUs of one of the kernel's counters.
    pub fn get(&self, idx: u32) -> u64 {
        self.0.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Everything the programs could not report, all causes together (`counter::NAMES`).
    pub fn lost(&self) -> u64 {
        (0..counter::COUNT).map(|i| self.get(i)).sum()
    }

    /// Each cause of loss with its NDJSON name (`counter::NAMES`), for the `lost` breakdown.
    pub fn breakdown(&self) -> [(&'static str, u64); counter::COUNT as usize] {
        let mut out = [("", 0); counter::COUNT as usize];
        for (i, (slot, name)) in out.iter_mut().zip(counter::NAMES).enumerate() {
            *slot = (name, self.get(i as u32));
        }
        out
    }
}

/// The programs' own log records (aya-log) as an async source for a `select!` loop.
pub struct KernelLog(Option<tokio::io::unix::AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>);

impl KernelLog {
    /// Registers the logger with the runtime; `None` (no log map) never yields.
    pub fn register(
        logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    ) -> std::io::Result<Self> {
        Ok(KernelLog(match logger {
            // SAFETY: the logger owns its fd for as long as the AsyncFd holds it.
            Some(l) => Some(
                unsafe { tokio::io::unix::AsyncFd::register(l) }.map_err(|e| e.into_parts().1)?,
            ),
            None => None,
        }))
    }

    /// Waits for kernel log records and forwards them to the `log` crate.
    pub async fn forward(&mut self) -> std::io::Result<()> {
        let Some(fd) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
        Ok(())
    }
}
