//! `cargo xtask vm-test`: the integration suite inside qemu guests, one per Debian kernel.
//!
//! The kernels come from `scripts/fetch-kernels.sh` (extracted Debian cloud kernels and a
//! `versions` file). For each run the task builds the workspace's binaries and the
//! `integration-tests` executables, packs them with busybox, iproute2, their shared libraries
//! and the guest's `/init` (`tests/vm/init.sh`) into a gzip'd newc initramfs, boots it with
//! TCG, streams the guest console and reads the init's result line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::workspace_root;

/// The guest's `/init`.
const INIT: &str = include_str!("../../tests/vm/init.sh");
/// Test executables that stay on the host, for tools the guests do not have: `report`
/// renders a capture in Chromium; `fleet` has a real Prometheus scrape the exporter (both are
/// userspace sinks of the pipeline every other suite tests in the guests); `dist` installs the
/// .deb with dpkg.
const HOST_ONLY: &[&str] = &["report", "fleet", "dist"];

/// The kernels `cargo xtask test` (and so CI) boots: all of them, in the order the guests
/// start, two at a time (no-MPTCP kernels always last). 6.1 and sid, the two longest guests
/// (a tracer start there takes the longest; sid's preemptible kernel also verifies the rescue
/// program), start together; 6.12 follows the first to finish, 5.10 the other.
pub const CI_KERNELS: &str = "6.1,sid,6.12,5.10";

/// The test executables a guest whose kernel has no MPTCP runs: every other suite builds MPTCP
/// connections; this one checks that each command names the missing feature.
const WITHOUT_MPTCP: &[&str] = &["kernel_support"];

/// The line the init prints once every test executable has run.
const RESULT_MARKER: &str = "MPTCP-TRACE-VM-RESULT";
/// Where `scripts/fetch-kernels.sh` puts the kernels (`MPTCP_TRACE_KERNELS` overrides it).
const DEFAULT_KERNELS_DIR: &str = "/var/cache/mptcp-trace/kernels";
/// Modules loaded in the guest (with what they depend on), from the kernel's own tree.
/// `sch_tbf` limits the demo's paths; `sch_netem` is there for tests that add delay or loss;
/// `inet_diag`/`tcp_diag`/`mptcp_diag` answer the live view's sock_diag polls (and `ss`): a host
/// loads them on demand through modprobe, the guest has no modprobe. `nf_tables`/`nft_numgen`
/// run the mid-connection fallback test's "middlebox" (one payload byte changed).
const MODULES: &[&str] = &[
    "veth",
    "sch_tbf",
    "sch_netem",
    "inet_diag",
    "tcp_diag",
    "mptcp_diag",
    "nf_tables",
    "nft_numgen",
];
/// Host tools the test bed and the tests run: iproute2's, nft, tmux for the live view tests,
/// util-linux's setpriv and prlimit (busybox's setpriv lacks --reuid, and it has no prlimit),
/// and mptcpize for the bench.
const HOST_TOOLS: &[&str] = &[
    "ip", "ss", "tc", "nft", "tmux", "setpriv", "prlimit", "mptcpize",
];
/// Host directories copied as they are: terminfo and the C.UTF-8 locale for tmux, and the
/// library `mptcpize run` preloads (the bench compares the upgrade methods with it on the
/// kernel where the `fmod_ret` hook loads).
const HOST_DIRS: &[&str] = &[
    "/lib/terminfo",
    "/usr/lib/locale/C.utf8",
    "/usr/lib/x86_64-linux-gnu/mptcpize",
];

/// The longest suite (diagnosis) needs ~300 s in the 6.1 guest when it has the machine to
/// itself, more with a second guest beside it; the limit catches a hung executable.
const DEFAULT_EXE_TIMEOUT: u64 = 900;
/// A whole guest took 480–720 s on an idle 2-core machine before the diagnosis, snapshot,
/// replay and stats suites, and over 1,000 s in the 6.1 guest with them; the limit catches a
/// hung guest, it is not a performance target (CI's own limit is 90 minutes).
const DEFAULT_GUEST_TIMEOUT: u64 = 3000;

#[derive(clap::Args, Clone, Debug)]
pub struct VmTestArgs {
    /// Kernel series to boot: series from the kernels' `versions` file (5.10, 6.1, 6.12, sid),
    /// comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Time limit for each guest, from boot to power-off, in seconds. The whole suite takes
    /// 3–4 minutes per guest on an idle 2-core machine; the limit leaves room for a busy one.
    #[arg(long, default_value_t = DEFAULT_GUEST_TIMEOUT)]
    pub timeout: u64,
    /// Time limit for each test executable inside the guest, in seconds: a hung one is killed
    /// and counted as failed, and the rest still run.
    #[arg(long, default_value_t = DEFAULT_EXE_TIMEOUT)]
    pub exe_timeout: u64,
    /// Virtual CPUs of each guest.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// Guests booted at the same time. A guest keeps about one host core busy on average (its
    /// tests wait for the network and for timers as much as they compute), so on a 2-core
    /// machine two guests at once take little longer than one.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// Ship the dev-profile `mptcp-trace` (and other binaries) instead of release builds. The
    /// release build starts about twice as fast under TCG, which the suite feels at every
    /// tracer start; this saves its compile time.
    #[arg(long)]
    pub debug_binaries: bool,
    /// Extra arguments for every test executable in the guest (libtest's), e.g. a name filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
    /// Extra environment of the guest's tests (`cargo xtask bench` sizes its worker with it).
    #[arg(skip)]
    pub env: Vec<(String, String)>,
    /// Only these test executables go into the guest (all when empty): the bench's guest runs
    /// one worker, not every suite with a filter that matches nothing.
    #[arg(skip)]
    pub tests: Vec<String>,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        VmTestArgs {
            kernel: "all".into(),
            timeout: DEFAULT_GUEST_TIMEOUT,
            exe_timeout: DEFAULT_EXE_TIMEOUT,
            smp: 2,
            parallel: 2,
            debug_binaries: false,
            test_args: Vec::new(),
            env: Vec::new(),
            tests: Vec::new(),
        }
    }
}

/// An extracted Debian kernel.
#[derive(Debug, Clone)]
struct Kernel {
    /// `6.1`, `6.12`: what `--kernel` selects.
    series: String,
    /// `uname -r` of the kernel.
    release: String,
    /// The `dpkg -x` tree.
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.release))
    }

    /// Whether the kernel was built with MPTCP, from its packaged config. Debian 11's 5.10 is
    /// not (`# CONFIG_MPTCP is not set`): its guest runs only the suite that checks what the
    /// tool says on such a kernel.
    fn has_mptcp(&self) -> Result<bool> {
        let config = self.root.join(format!("boot/config-{}", self.release));
        let text = fs::read_to_string(&config)
            .with_context(|| format!("read {} (the kernel's config)", config.display()))?;
        Ok(text.lines().any(|l| l.trim() == "CONFIG_MPTCP=y"))
    }
}

/// What one guest reported.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    passed: u32,
    failed: u32,
    /// The `key=value;…` of its `MPTCP-TRACE-SUPPORT` line (tests/tests/kernel_support.rs).
    support: Option<String>,
    /// Every console line that carries a marker ([`MARKER_PREFIX`]), from the marker on: what
    /// a caller of [`run_guest`] reads its results from.
    marked: Vec<String>,
}

/// The prefix of every line a test prints for the runner or another reader (the result line,
/// `MPTCP-TRACE-SUPPORT`, the bench's `MPTCP-TRACE-SOCKET-BENCH`).
const MARKER_PREFIX: &str = "MPTCP-TRACE-";

/// The line kernel_support prints: what the guest's kernel supports, for the matrix's table.
const SUPPORT_MARKER: &str = "MPTCP-TRACE-SUPPORT ";

/// The guests' support lines as one Markdown table, a row per kernel (the README's).
fn support_table(rows: &[(&str, &str)]) -> Option<String> {
    let parsed: Vec<(&str, Vec<(&str, &str)>)> = rows
        .iter()
        .map(|(series, line)| {
            let fields = line.split(';').filter_map(|f| f.split_once('=')).collect();
            (*series, fields)
        })
        .collect();
    let (_, first) = parsed.first()?;
    let keys: Vec<&str> = first.iter().map(|(k, _)| *k).collect();
    let mut out = format!("| series | {} |\n", keys.join(" | "));
    out.push_str(&format!("|---|{}\n", "---|".repeat(keys.len())));
    for (series, fields) in &parsed {
        let cells: Vec<&str> = keys
            .iter()
            .map(|k| fields.iter().find(|(f, _)| f == k).map_or("?", |(_, v)| *v))
            .collect();
        out.push_str(&format!("| {series} | {} |\n", cells.join(" | ")));
    }
    Some(out)
}

pub fn run(args: VmTestArgs) -> Result<()> {
    let kernels = select_kernels(&args.kernel)?;
    let artifacts = build(!args.debug_binaries)?;
    let work = target_dir()?.join("vm");
    fs::create_dir_all(&work)?;
    let base = build_base_initramfs(&work, &artifacts, &args)?;

    // The longest guests first: a kernel without MPTCP runs one short suite.
    let mut kernels = kernels;
    kernels.sort_by_key(|k| !k.has_mptcp().unwrap_or(true));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..args.parallel.clamp(1, kernels.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(kernel) = kernels.get(i) else { break };
                eprintln!("==> vm {}: booting {}", kernel.series, kernel.release);
                let start = Instant::now();
                let result = build_kernel_initramfs(&work, kernel, &base)
                    .and_then(|initrd| boot_until_init(kernel, &initrd, &args));
                let secs = start.elapsed().as_secs();
                eprintln!("==> vm {}: done in {secs} s", kernel.series);
                done.lock().unwrap().push((i, result, secs));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _, _)| *i);
    let results: Vec<_> = done
        .into_iter()
        .map(|(i, result, secs)| (&kernels[i], result, secs))
        .collect();

    let mut ok = true;
    for (kernel, result, secs) in &results {
        match result {
            Ok(o) => {
                println!(
                    "vm {}: {} passed, {} failed ({}, {secs} s)",
                    kernel.series, o.passed, o.failed, kernel.release
                );
                // No test at all is a failure too: a filter that matches nothing, or an init
                // that found no executables.
                ok &= o.failed == 0 && o.passed > 0;
            }
            Err(e) => {
                println!(
                    "vm {}: no result ({}, {secs} s): {e:#}",
                    kernel.series, kernel.release
                );
                ok = false;
            }
        }
    }
    let rows: Vec<(&str, &str)> = results
        .iter()
        .filter_map(|(k, r, _)| Some((k.series.as_str(), r.as_ref().ok()?.support.as_deref()?)))
        .collect();
    if let Some(table) = support_table(&rows) {
        println!("vm-matrix: what each kernel supports (from kernel_support):\n{table}");
    }
    // One plain closing line over every guest, in the form CI reads.
    let (passed, failed) = results
        .iter()
        .filter_map(|(_, r, _)| r.as_ref().ok())
        .fold((0, 0), |(p, f), o| (p + o.passed, f + o.failed));
    println!("vm-matrix: {passed} passed, {failed} failed");
    ensure!(ok, "VM tests failed");
    Ok(())
}

/// What [`run_guest`] brings back from its guest.
pub struct GuestRun {
    /// `uname -r` of the guest's kernel.
    pub release: String,
    /// Its console lines that carry a marker, from the marker on.
    pub marked: Vec<String>,
}

/// Boots the one kernel `args.kernel` names with `args`' tests, arguments and environment,
/// and returns its marker lines once every test it ran passed: for a caller that reads
/// results from a guest (`cargo xtask bench`). Its own work directory (`target/vm-capture`),
/// so that it does not clobber a `vm-test` running beside it.
pub fn run_guest(args: &VmTestArgs) -> Result<GuestRun> {
    let kernels = select_kernels(&args.kernel)?;
    ensure!(
        kernels.len() == 1,
        "run_guest boots one kernel, not {}",
        args.kernel
    );
    let kernel = &kernels[0];
    let artifacts = build(!args.debug_binaries)?;
    for t in &args.tests {
        ensure!(
            artifacts.tests.contains_key(t),
            "no test executable {t} in integration-tests"
        );
    }
    let work = target_dir()?.join("vm-capture");
    fs::create_dir_all(&work)?;
    let base = build_base_initramfs(&work, &artifacts, args)?;
    eprintln!("==> vm {}: booting {}", kernel.series, kernel.release);
    let start = Instant::now();
    let initrd = build_kernel_initramfs(&work, kernel, &base)?;
    let o = boot_until_init(kernel, &initrd, args)?;
    eprintln!(
        "==> vm {}: {} passed, {} failed in {} s",
        kernel.series,
        o.passed,
        o.failed,
        start.elapsed().as_secs()
    );
    ensure!(
        o.failed == 0 && o.passed > 0,
        "the {} guest's tests failed ({} passed, {} failed): see its console above",
        kernel.series,
        o.passed,
        o.failed
    );
    Ok(GuestRun {
        release: kernel.release.clone(),
        marked: o.marked,
    })
}

fn kernels_dir() -> PathBuf {
    std::env::var_os("MPTCP_TRACE_KERNELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_KERNELS_DIR.into())
}

/// The kernels in the `versions` file written by `scripts/fetch-kernels.sh`.
fn select_kernels(which: &str) -> Result<Vec<Kernel>> {
    let dir = kernels_dir();
    let versions = dir.join("versions");
    let text = fs::read_to_string(&versions).with_context(|| {
        format!(
            "{} missing: fetch the kernels with `sudo ./scripts/fetch-kernels.sh`",
            versions.display()
        )
    })?;
    let all: Vec<Kernel> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (series, release) = (f.next()?, f.next()?);
            Some(Kernel {
                series: series.into(),
                release: release.into(),
                root: dir.join(release),
            })
        })
        .collect();
    // In the order asked for (the order the guests start in), else the versions file's.
    let rank = |k: &Kernel| {
        which
            .split(',')
            .position(|w| k.series == w || k.release == w)
    };
    let mut chosen: Vec<Kernel> = all
        .iter()
        .filter(|k| which == "all" || rank(k).is_some())
        .cloned()
        .collect();
    chosen.sort_by_key(|k| rank(k).unwrap_or(usize::MAX));
    if chosen.is_empty() {
        let known: Vec<&str> = all.iter().map(|k| k.series.as_str()).collect();
        bail!(
            "no kernel {which} in {} (known: {}); add a series to scripts/fetch-kernels.sh",
            versions.display(),
            known.join(", ")
        );
    }
    for k in &chosen {
        ensure!(
            k.vmlinuz().is_file(),
            "{} missing: run `sudo ./scripts/fetch-kernels.sh --refresh`",
            k.vmlinuz().display()
        );
    }
    Ok(chosen)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata: no target_directory")
}

/// Executables built for the guest: name → path.
struct Artifacts {
    bins: BTreeMap<String, PathBuf>,
    tests: BTreeMap<String, PathBuf>,
}

/// Runs a cargo build with JSON messages and returns the executables it reports, with
/// whether each is a test harness.
pub(crate) fn cargo_executables(args: &[&str]) -> Result<Vec<(String, PathBuf, bool)>> {
    eprintln!("==> cargo {}", args.join(" "));
    let out = cargo()
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    ensure!(out.status.success(), "cargo {} failed", args.join(" "));
    let mut exes = Vec::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(exe), Some(name)) =
            (msg["executable"].as_str(), msg["target"]["name"].as_str())
        {
            let test = msg["profile"]["test"].as_bool().unwrap_or(false);
            exes.push((name.to_string(), PathBuf::from(exe), test));
        }
    }
    Ok(exes)
}

fn build(release: bool) -> Result<Artifacts> {
    let mut build = vec!["build", "--workspace", "--exclude", "mptcp-ebpf", "--bins"];
    if release {
        build.push("--release");
    }
    let mut bins = BTreeMap::new();
    for (name, exe, _) in cargo_executables(&build)? {
        bins.insert(name, exe);
    }
    ensure!(
        bins.contains_key("mptcp-trace"),
        "cargo did not report the mptcp-trace binary"
    );
    let mut tests = BTreeMap::new();
    for (name, exe, test) in cargo_executables(&["test", "-p", "integration-tests", "--no-run"])? {
        if test && HOST_ONLY.contains(&name.as_str()) {
            continue;
        }
        if test {
            tests.insert(name, exe);
        } else {
            // The test build's own copies of the binaries: the ones built above win.
            bins.entry(name).or_insert(exe);
        }
    }
    ensure!(
        !tests.is_empty(),
        "cargo reported no integration-tests executable"
    );
    Ok(Artifacts { bins, tests })
}

fn find_in_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found (install it with `sudo ./scripts/setup.sh`)"))
}

/// Shared libraries (and the loader) `ldd` lists for a dynamic executable; none for a static one.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line.trim(),
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path == "not found" {
            bail!("{}: a shared library is missing: {line}", exe.display());
        }
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A directory tree that becomes one newc cpio member of the initramfs.
struct Stage {
    root: PathBuf,
    libs: BTreeSet<PathBuf>,
}

impl Stage {
    fn new(root: PathBuf) -> Result<Stage> {
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        Ok(Stage {
            root,
            libs: BTreeSet::new(),
        })
    }

    fn path(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    fn write(&self, guest: &str, contents: &[u8], mode: u32) -> Result<()> {
        let p = self.path(guest);
        fs::create_dir_all(p.parent().expect("absolute guest path"))?;
        fs::write(&p, contents)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Copies a host executable without its debug info (symbols stay for backtraces), plus
    /// the shared libraries it needs.
    fn add_executable(&mut self, host: &Path, guest: &str) -> Result<()> {
        let dst = self.path(guest);
        fs::create_dir_all(dst.parent().expect("absolute guest path"))?;
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dst)
            .arg(host)
            .status()
            .context("cannot run strip (binutils)")?;
        if !status.success() {
            // Not an ELF file strip understands: ship it as it is.
            fs::copy(host, &dst).with_context(|| format!("copy {}", host.display()))?;
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
        for lib in shared_libraries(host)? {
            if self.libs.insert(lib.clone()) {
                let dst = self.path(&lib.to_string_lossy());
                fs::create_dir_all(dst.parent().expect("absolute library path"))?;
                // Follows symlinks: the guest gets the file under the name the loader asks for.
                fs::copy(&lib, &dst).with_context(|| format!("copy {}", lib.display()))?;
            }
        }
        Ok(())
    }

    /// Packs the tree as a gzip'd newc cpio archive, files owned by root, and removes it.
    fn pack(self, out: &Path) -> Result<()> {
        let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1")
            .current_dir(&self.root)
            .stdout(file)
            .status()
            .context("cannot run find | cpio | gzip")?;
        ensure!(
            status.success(),
            "cpio/gzip failed for {}",
            self.root.display()
        );
        fs::remove_dir_all(&self.root)?;
        Ok(())
    }
}

/// The kernel-independent part: init, busybox, iproute2, the binaries and the tests.
fn build_base_initramfs(work: &Path, art: &Artifacts, args: &VmTestArgs) -> Result<PathBuf> {
    let mut stage = Stage::new(work.join("base"))?;
    stage.write("/init", INIT.as_bytes(), 0o755)?;
    let busybox = find_in_path("busybox")?;
    ensure!(
        shared_libraries(&busybox)?.is_empty(),
        "{} is not static: install busybox-static",
        busybox.display()
    );
    fs::create_dir_all(stage.path("/bin"))?;
    fs::copy(&busybox, stage.path("/bin/busybox"))?;
    symlink("busybox", stage.path("/bin/sh"))?;
    fs::create_dir_all(stage.path("/lib"))?;
    for tool in HOST_TOOLS {
        stage.add_executable(&find_in_path(tool)?, &format!("/bin/{tool}"))?;
    }
    for dir in HOST_DIRS {
        let parent = stage
            .path(dir)
            .parent()
            .expect("absolute host dir")
            .to_path_buf();
        fs::create_dir_all(&parent)?;
        let status = Command::new("cp").arg("-a").arg(dir).arg(parent).status()?;
        ensure!(status.success(), "cp -a {dir} failed");
    }
    // Each binary is announced as $<NAME>_BIN (MPTCP_TRACE_BIN, MPTCP_PEER_BIN), the variable
    // the tests read before falling back to cargo's target directory.
    let mut env = String::new();
    for (name, exe) in &art.bins {
        stage.add_executable(exe, &format!("/bin/{name}"))?;
        let var = name.to_uppercase().replace('-', "_");
        env.push_str(&format!("export {var}_BIN=/bin/{name}\n"));
    }
    let wanted = |name: &String| args.tests.is_empty() || args.tests.contains(name);
    let mut shipped = 0;
    for (name, exe) in art.tests.iter().filter(|(name, _)| wanted(name)) {
        stage.add_executable(exe, &format!("/tests/{name}"))?;
        shipped += 1;
    }
    for (k, v) in &args.env {
        env.push_str(&format!("export {k}='{v}'\n"));
    }
    stage.write("/etc/vm/env", env.as_bytes(), 0o644)?;
    stage.write(
        "/etc/vm/test-args",
        args.test_args.join(" ").as_bytes(),
        0o644,
    )?;
    stage.write(
        "/etc/vm/exe-timeout",
        args.exe_timeout.to_string().as_bytes(),
        0o644,
    )?;
    let libs = stage.libs.len();
    let out = work.join("base.cpio.gz");
    stage.pack(&out)?;
    eprintln!(
        "==> initramfs: {shipped} test executables, {} binaries, {libs} shared libraries, {} KiB",
        art.bins.len(),
        fs::metadata(&out)?.len() / 1024
    );
    Ok(out)
}

/// Module files (relative to the modules directory) to load for `names`, dependencies first.
fn module_load_order(modules_dir: &Path, names: &[&str]) -> Result<Vec<String>> {
    let dep_file = modules_dir.join("modules.dep");
    let text =
        fs::read_to_string(&dep_file).with_context(|| format!("read {}", dep_file.display()))?;
    let deps: BTreeMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m, d.split_whitespace().collect()))
        })
        .collect();
    let module_name = |file: &str| -> String {
        let base = file.rsplit('/').next().unwrap_or(file);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    for name in names {
        let file = deps
            .keys()
            .find(|f| module_name(f) == name.replace('-', "_"))
            .with_context(|| format!("module {name} not in {}", dep_file.display()))?;
        // modules.dep lists every (transitive) dependency; the last one is loaded first.
        for f in deps[file].iter().rev().chain(std::iter::once(file)) {
            if !order.iter().any(|o| o == f) {
                order.push(f.to_string());
            }
        }
    }
    Ok(order)
}

/// Adds the kernel's modules to the base initramfs (a second, concatenated cpio member).
fn build_kernel_initramfs(work: &Path, kernel: &Kernel, base: &Path) -> Result<PathBuf> {
    let modules_dir = kernel.modules_dir();
    let stage = Stage::new(work.join(format!("modules-{}", kernel.release)))?;
    let has_mptcp = kernel.has_mptcp()?;
    let wanted: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| has_mptcp || *m != "mptcp_diag")
        .collect();
    if !has_mptcp {
        stage.write("/etc/vm/only", WITHOUT_MPTCP.join("\n").as_bytes(), 0o644)?;
    }
    let mut list = String::new();
    for file in module_load_order(&modules_dir, &wanted)? {
        let src = modules_dir.join(&file);
        let (ko, decompress) = match file.rsplit_once('.') {
            Some((stem, "xz")) => (stem.to_string(), Some("xz")),
            Some((stem, "zst")) => (stem.to_string(), Some("zstd")),
            Some((stem, "gz")) => (stem.to_string(), Some("gzip")),
            _ => (file.clone(), None),
        };
        let name = ko.rsplit('/').next().unwrap_or(&ko).to_string();
        let bytes = match decompress {
            Some(tool) => {
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&src)
                    .output()
                    .with_context(|| format!("cannot run {tool}"))?;
                ensure!(out.status.success(), "{tool} -dc {} failed", src.display());
                out.stdout
            }
            None => fs::read(&src).with_context(|| format!("read {}", src.display()))?,
        };
        stage.write(&format!("/lib/modules/{name}"), &bytes, 0o644)?;
        list.push_str(&name);
        list.push('\n');
    }
    stage.write("/etc/vm/modules", list.as_bytes(), 0o644)?;
    let modules = work.join(format!("modules-{}.cpio.gz", kernel.release));
    stage.pack(&modules)?;
    // The kernel unpacks concatenated archives in order.
    let initrd = work.join(format!("initrd-{}.gz", kernel.release));
    let mut out = fs::File::create(&initrd)?;
    out.write_all(&fs::read(base)?)?;
    out.write_all(&fs::read(&modules)?)?;
    fs::remove_file(&modules)?;
    Ok(initrd)
}

/// qemu, killed and reaped however the run ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parse_result(line: &str) -> Option<Outcome> {
    let rest = line.trim().strip_prefix(RESULT_MARKER)?;
    let mut passed = None;
    let mut failed = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("passed", v)) => passed = v.parse().ok(),
            Some(("failed", v)) => failed = v.parse().ok(),
            _ => {}
        }
    }
    Some(Outcome {
        passed: passed?,
        failed: failed?,
        support: None,
        marked: Vec::new(),
    })
}

/// The init's first line: once it is printed, the kernel booted and the suite is under way.
const INIT_BANNER: &str = "vm: kernel ";
/// How many times a guest is booted when its kernel dies before its init starts.
const BOOT_ATTEMPTS: u32 = 3;

/// [`boot`], again when the kernel died before it reached the init (an oops in early boot
/// under TCG, seen once in the 6.12 guest: `int3` in `sched_clock_cpu` while the kernel was
/// patching its own text), and once more when it died during the suite ([`KernelDied`]: the
/// whole suite runs again). A test that fails is never retried.
fn boot_until_init(kernel: &Kernel, initrd: &Path, args: &VmTestArgs) -> Result<Outcome> {
    let mut attempt = 1;
    let mut died = 0;
    loop {
        match boot(kernel, initrd, args) {
            Err(e) if attempt < BOOT_ATTEMPTS && e.downcast_ref::<NoInit>().is_some() => {
                eprintln!(
                    "==> vm {}: {e:#}; booting again ({}/{BOOT_ATTEMPTS})",
                    kernel.series,
                    attempt + 1
                );
                attempt += 1;
            }
            // Once: a second run of the whole suite is the guest's time again.
            Err(e) if died == 0 && e.downcast_ref::<KernelDied>().is_some() => {
                eprintln!(
                    "==> vm {}: {e:#}; the whole suite runs again in a new guest (test \
                     failures are never retried)",
                    kernel.series
                );
                died += 1;
            }
            other => return other,
        }
    }
}

/// The guest's kernel died (an Oops or a panic on its console) while the suite ran, before the
/// init's result line: the emulator, not a test, failed — seen under TCG as an `int3` Oops at a
/// jump label being patched (a stale translation of self-modified kernel text).
#[derive(Debug)]
struct KernelDied(String);

impl std::fmt::Display for KernelDied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest's kernel died during the suite: {}", self.0)
    }
}

impl std::error::Error for KernelDied {}

/// A console line that says the guest's kernel died.
fn kernel_death(line: &str) -> bool {
    line.contains("Kernel panic - not syncing") || line.contains("] Oops: ")
}

/// The guest stopped before its init printed [`INIT_BANNER`].
#[derive(Debug)]
struct NoInit;

impl std::fmt::Display for NoInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the kernel stopped before its init started")
    }
}

impl std::error::Error for NoInit {}

/// Boots the kernel with the initramfs, streams its console and returns the init's result.
fn boot(kernel: &Kernel, initrd: &Path, args: &VmTestArgs) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024"])
        .args(["-smp", &args.smp.to_string()])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut qemu = Qemu(
        cmd.spawn()
            .context("cannot run qemu-system-x86_64 (install qemu-system-x86)")?,
    );
    let stdout = qemu.0.stdout.take().expect("piped");
    // Guests run side by side: each console line says whose it is.
    let prefix = format!("[{}] ", kernel.series);
    let reader = thread::spawn(move || {
        let mut result = None;
        let mut support = None;
        let mut marked = Vec::new();
        let mut init_started = false;
        let mut death = None;
        let mut out = std::io::stdout();
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            let _ = writeln!(out, "{prefix}{line}");
            if let Some(o) = parse_result(line) {
                result = Some(o);
            }
            if let Some((_, s)) = line.split_once(SUPPORT_MARKER) {
                support = Some(s.trim().to_string());
            }
            if let Some(at) = line.find(MARKER_PREFIX) {
                marked.push(line[at..].trim().to_string());
            }
            init_started |= line.contains(INIT_BANNER);
            if death.is_none() && kernel_death(line) {
                death = Some(line.trim().to_string());
            }
            buf.clear();
        }
        (
            result.map(|o| Outcome {
                support,
                marked,
                ..o
            }),
            init_started,
            death,
        )
    });

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let status = loop {
        if let Some(status) = qemu.0.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    // Kills qemu if it is still running; the reader then sees the end of its output.
    drop(qemu);
    let (result, init_started, death) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("console reader panicked"))?;
    if status.is_some() && result.is_none() && !init_started {
        return Err(NoInit.into());
    }
    if let (Some(_), None, Some(line)) = (status, &result, death) {
        return Err(KernelDied(line).into());
    }
    match (status, result) {
        (None, _) => bail!(
            "the guest did not power off within {} s (--timeout)",
            args.timeout
        ),
        (Some(_), None) => bail!("the guest stopped without printing its {RESULT_MARKER} line"),
        (Some(_), Some(o)) => Ok(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_lines_become_a_table_row_per_kernel() {
        let t = support_table(&[
            ("6.1", "kernel=6.1.0;tracing=yes;upgrade bpf=no (no hook)"),
            ("5.10", "kernel=5.10.0;tracing=no (no MPTCP)"),
        ])
        .unwrap();
        assert_eq!(
            t,
            "| series | kernel | tracing | upgrade bpf |\n|---|---|---|---|\n\
             | 6.1 | 6.1.0 | yes | no (no hook) |\n| 5.10 | 5.10.0 | no (no MPTCP) | ? |\n"
        );
        assert_eq!(support_table(&[]), None);
    }

    #[test]
    fn a_kernel_oops_or_panic_on_the_console_is_a_death() {
        assert!(kernel_death(
            "[   75.812700] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(kernel_death(
            "[   75.821361] Kernel panic - not syncing: Fatal exception in interrupt"
        ));
        assert!(!kernel_death("test oops_are_reported ... ok"));
    }

    #[test]
    fn parses_the_result_line() {
        assert_eq!(
            parse_result("MPTCP-TRACE-VM-RESULT kernel=6.1.0-56-cloud-amd64 passed=7 failed=1\r"),
            Some(Outcome {
                passed: 7,
                failed: 1,
                support: None,
                marked: Vec::new(),
            })
        );
        assert_eq!(
            parse_result("MPTCP-TRACE-VM-RESULT kernel=x passed=3"),
            None
        );
        assert_eq!(parse_result("test result: ok. 3 passed; 0 failed"), None);
    }

    #[test]
    fn orders_modules_after_their_dependencies() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/net/veth.ko.xz:\n\
             kernel/net/sched/sch_netem.ko.xz: kernel/a/b.ko.xz kernel/a/c.ko.xz\n\
             kernel/a/b.ko.xz: kernel/a/c.ko.xz\n\
             kernel/a/c.ko.xz:\n",
        )
        .unwrap();
        let order = module_load_order(&dir, &["veth", "sch_netem"]).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/net/veth.ko.xz",
                "kernel/a/c.ko.xz",
                "kernel/a/b.ko.xz",
                "kernel/net/sched/sch_netem.ko.xz"
            ]
        );
    }
}
