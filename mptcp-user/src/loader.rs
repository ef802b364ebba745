//! Loads the tracing programs: resolves offsets from BTF, hands them and the kernel-side filters
//! to the programs as read-only globals, loads and attaches every program, and hands back the
//! maps userspace reads. Dropping the [`Tracer`] detaches everything (links are fd-owned).

use std::{path::Path, time::Instant};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Ebpf, EbpfLoader,
};
use log::{debug, warn};
use mptcp_common::{Config, ExistingKey, ListenKey, Owner};

use crate::attach_btf::AttachIds;
use crate::offsets::{self, OffsetError, VMLINUX_BTF};

/// The eBPF object built from `mptcp-ebpf` (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MPTCP_EBPF_OBJECT"));

/// A program and the tracepoint it attaches to. `required` ones make the tracer useless when
/// they fail; the others lose one kind of information, with a warning.
struct Program {
    name: &'static str,
    tracepoint: &'static str,
    required: bool,
    what: &'static str,
}

/// The second program on `inet_sock_set_state`: it handles the state changes the kernel skips
/// the main one for (see `NESTING` in mptcp-ebpf). Its own skipped runs are no loss. Loaded
/// only where the kernel is preemptible ([`rescue_wanted`]): elsewhere only a softirq can
/// interrupt the main program, which skips a run only at thousands of connections a second,
/// and verifying the program a second time costs each start (seconds in an emulated guest).
const RESCUE: &str = "inet_sock_set_state_rescue";

/// The rescue program is attached first: a tracepoint calls its programs in the order they
/// were attached, and counting a rescue before the kernel counts the miss it makes up for
/// keeps the loss total from ever reading high (see `trace::Core::lost_now`).
const PROGRAMS: &[Program] = &[
    Program {
        name: RESCUE,
        tracepoint: "inet_sock_set_state",
        required: false,
        what: "state changes while the main program is preempted (they count as skipped runs)",
    },
    Program {
        name: "inet_sock_set_state",
        tracepoint: "inet_sock_set_state",
        required: true,
        what: "connection and subflow lifecycle",
    },
    Program {
        name: "tcp_send_reset",
        tracepoint: "tcp_send_reset",
        required: false,
        what: "rst_sent close reasons",
    },
    Program {
        name: "tcp_receive_reset",
        tracepoint: "tcp_receive_reset",
        required: false,
        what: "rst_received close reasons",
    },
];

/// Overrides [`rescue_wanted`]'s choice: `always` (e.g. thousands of connections a second on
/// a kernel without preemption) or `never` (start-up time over completeness).
pub const RESCUE_ENV: &str = "MPTCP_TRACE_RESCUE";

/// Whether to load the rescue program: where the kernel is preemptible, or cannot say, unless
/// [`RESCUE_ENV`] decides.
fn rescue_wanted() -> Result<bool, LoadError> {
    match std::env::var(RESCUE_ENV) {
        Ok(v) if v == "always" => return Ok(true),
        Ok(v) if v == "never" => return Ok(false),
        Ok(other) => return Err(LoadError::BadRescue(other)),
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(LoadError::BadRescue(v.to_string_lossy().into_owned()))
        }
        Err(std::env::VarError::NotPresent) => {}
    }
    Ok(match crate::sys::preempt::model() {
        Some((model, source)) => {
            debug!("preemption model {model} (from {source})");
            model.preemptible()
        }
        None => {
            debug!("preemption model unknown: the rescue program is loaded");
            true
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    #[error("{0}")]
    Privileges(String),
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
    #[error("cannot build the BTF of the programs' attach points: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("{}", crate::sys::mptcp::MISSING)]
    NoMptcp,
    #[error("{RESCUE_ENV}={0:?}: must be `always` or `never` (or unset: the kernel's preemption model decides)")]
    BadRescue(String),
}

impl LoadError {
    /// Bad input or a refusal (exit code 2), not a failure of the kernel or of the tool.
    pub fn refused(&self) -> bool {
        matches!(
            self,
            LoadError::Privileges(_) | LoadError::NoMptcp | LoadError::BadRescue(_)
        )
    }
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
    /// The attached programs, for their kernel statistics.
    pub programs: Vec<(&'static str, aya::programs::ProgramFd)>,
    /// Owners of the connections open before the tracer started (userspace writes them from
    /// its snapshot; see `trace::existing`).
    pub existing: HashMap<MapData, ExistingKey, Owner>,
    /// Owners of listeners; userspace seeds those that predate the tracer.
    pub listeners: HashMap<MapData, ListenKey, Owner>,
}

/// What stays of a [`Tracer`] once the ring buffer, counters and log were taken: the attached
/// programs (dropping it detaches them) and what the kernel can say about them.
pub struct Attached {
    _ebpf: Ebpf,
    pub degraded: Vec<String>,
    programs: Vec<(&'static str, aya::programs::ProgramFd)>,
}

impl Attached {
    /// How many programs are attached.
    pub fn programs(&self) -> usize {
        self.programs.len()
    }

    /// Program runs the kernel skipped, summed over the programs but the rescue program (whose
    /// runs only matter when the main one was skipped: see [`RESCUE`]); `None` when this kernel
    /// cannot tell (Linux < 5.12). The caller takes off what the rescue program handled.
    pub fn recursion_misses(&self) -> Option<u64> {
        use std::os::fd::AsFd;
        let mut total = 0;
        for (name, fd) in self.programs.iter().filter(|(n, _)| *n != RESCUE) {
            match crate::upgrade::raw_bpf::recursion_misses(fd.as_fd()) {
                Ok(Some(n)) => total += n,
                Ok(None) => return None,
                Err(e) => {
                    debug!("bpf_prog_info of {name}: {e}");
                    return None;
                }
            }
        }
        Some(total)
    }
}

impl Tracer {
    /// Keeps the programs attached after the other parts were taken.
    pub fn attached(
        ebpf: Ebpf,
        degraded: Vec<String>,
        programs: Vec<(&'static str, aya::programs::ProgramFd)>,
    ) -> Attached {
        Attached {
            _ebpf: ebpf,
            degraded,
            programs,
        }
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

/// What tracing needs: CAP_BPF and CAP_PERFMON for the `tp_btf` programs and their
/// `bpf_probe_read_kernel`, CAP_NET_ADMIN for the path manager's events group, and
/// CAP_SYS_ADMIN because that group is subscribed to inside every network namespace, which
/// means `setns` into it — without it the kernel refuses (EPERM) and every `addr_announced` /
/// `addr_removed` would be missing, so it is required rather than silently done without.
pub const TRACING_CAPS: &[crate::sys::caps::Cap] = {
    use crate::sys::caps::Cap;
    &[Cap::Bpf, Cap::Perfmon, Cap::NetAdmin, Cap::SysAdmin]
};

/// aya's loader, without the kernel's BTF. `EbpfLoader::new` parses the kernel's whole BTF
/// for CO-RE relocations (18 MiB at its peak: three quarters of the tracer's peak RSS, and
/// 20 ms of start-up on the 2-core host), and this object has none — it carries no `.BTF`
/// at all; its offsets come from [`offsets`], its attach points from [`AttachIds`]. aya has
/// no way to skip that parse, so the loader is made on a thread that sees an empty
/// `/sys/kernel/btf` (a tmpfs in its own mount namespace): the read fails and nothing is
/// parsed. Where that namespace cannot be made, aya parses as it would.
fn loader<'a>() -> EbpfLoader<'a> {
    let made = crate::sys::mountns::with_mount(c"none", c"/sys/kernel/btf", c"tmpfs", || {
        EbpfLoader::new()
    });
    let mut loader = made.unwrap_or_else(|e| {
        debug!("cannot hide /sys/kernel/btf from aya's loader ({e}): aya parses it");
        EbpfLoader::new()
    });
    // Either way: no relocations against the kernel's BTF, which the object has none of.
    loader.btf(None);
    loader
}

pub fn load(config: Config) -> Result<Tracer, LoadError> {
    // Bad input first: its one error line must not follow warnings about this kernel.
    let rescue = rescue_wanted()?;
    crate::sys::caps::require(TRACING_CAPS, "tracing").map_err(LoadError::Privileges)?;
    if !crate::sys::mptcp::in_kernel() {
        return Err(LoadError::NoMptcp);
    }
    bump_memlock_rlimit();
    // Start-up's phases are logged with `-v`: under emulation (the test guests) a start takes
    // seconds, and which phase to shorten is read from here.
    let started = Instant::now();
    let kernel_btf = offsets::open(Path::new(VMLINUX_BTF))?;
    let resolved = offsets::resolve(&kernel_btf)?;
    let attach_ids = AttachIds::resolve(&kernel_btf, PROGRAMS.iter().map(|p| p.tracepoint));
    drop(kernel_btf);
    debug!(
        "offsets and attach points resolved from the kernel's BTF in {:?}",
        started.elapsed()
    );
    let mut degraded = resolved.missing.clone();
    for m in &resolved.missing {
        warn!("this kernel lacks {m}: that field stays empty");
    }
    let config = Config {
        rescue: rescue as u32,
        ..config
    };
    let mut ebpf = loader()
        .override_global("OFFSETS", &resolved.offsets, true)
        .override_global("CONFIG", &config, true)
        .load(OBJECT)
        .map_err(LoadError::Load)?;
    debug!("object loaded (maps created) at {:?}", started.elapsed());
    let btf = attach_ids.to_aya_btf()?;
    debug!("attach points' BTF built at {:?}", started.elapsed());
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            debug!("kernel-side logging unavailable: {e}");
            None
        }
    };
    let mut programs = Vec::new();
    for p in PROGRAMS.iter().filter(|p| rescue || p.name != RESCUE) {
        let before = Instant::now();
        match attach(&mut ebpf, &btf, p.name, p.tracepoint) {
            Ok((fd, verified)) => {
                debug!(
                    "attached {} to tp_btf/{} in {:?} (the verifier processed {} instructions)",
                    p.name,
                    p.tracepoint,
                    before.elapsed(),
                    verified.map_or("an unknown number of".into(), |n| n.to_string()),
                );
                programs.push((p.name, fd));
            }
            Err(e) if p.required => return Err(e),
            Err(e) => {
                warn!("{e}: {} are not reported", p.what);
                degraded.push(format!("tp_btf/{} ({})", p.tracepoint, p.what));
            }
        }
    }
    // What start-up allocated, aya's parse of the kernel's BTF above all, is free now, in many
    // small blocks the allocator would otherwise keep for ever: give it back.
    drop(btf);
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe { libc::malloc_trim(0) };
    // The ring buffer's mapping is resident from here on: 8 MiB of RSS for its 4 MiB, whose
    // data pages are mapped twice so that a record wrapping the end reads as one piece.
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
    let existing = HashMap::try_from(
        ebpf.take_map("EXISTING")
            .ok_or(LoadError::Map("EXISTING"))?,
    )
    .map_err(|source| LoadError::MapType {
        name: "EXISTING",
        source,
    })?;
    let listeners = HashMap::try_from(
        ebpf.take_map("LISTENERS")
            .ok_or(LoadError::Map("LISTENERS"))?,
    )
    .map_err(|source| LoadError::MapType {
        name: "LISTENERS",
        source,
    })?;
    Ok(Tracer {
        events,
        existing,
        listeners,
        counters: Counters(counters),
        logger,
        ebpf,
        degraded,
        programs,
    })
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &aya_obj::btf::Btf,
    name: &'static str,
    tracepoint: &str,
) -> Result<(aya::programs::ProgramFd, Option<u32>), LoadError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::Map(name))?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: "find",
            name,
            source,
        })?;
    prog.load(tracepoint, btf)
        .map_err(|source| LoadError::Program {
            what: "load",
            name,
            source,
        })?;
    prog.attach().map_err(|source| LoadError::Program {
        what: "attach",
        name,
        source,
    })?;
    // What the verifier walked (Linux ≥ 5.16): the bulk of a start's time.
    let verified = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count());
    let fd = prog
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|source| LoadError::Program {
            what: "read",
            name,
            source,
        })?;
    Ok((fd, verified))
}

impl Counters {
    /// Sum over CPUs of one of the kernel's counters.
    pub fn get(&self, idx: u32) -> u64 {
        // Wrapping: a CPU's slot may be decremented (the rescue count, see RESCUED).
        self.0
            .get(&idx, 0)
            .map(|v| v.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
            .unwrap_or(0)
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
