//! The Debian package from `cargo xtask dist` (which `cargo xtask test` runs before the tests),
//! installed with `dpkg -i` on this machine and removed again: the binary reports the crate's
//! version, `man` finds the pages, bash completes with the installed script, the systemd
//! units pass `systemd-analyze verify`, and the upgrade unit's ExecStart, as written in the
//! installed file, gives on this kernel exactly what `upgrade --pin` must give here. The
//! exporter unit's command line serves /metrics until SIGTERM.
//! Host only (the guests have no dpkg). Needs root.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use integration_tests::{kernel_version, require_root, tag};
use mptcp_user::sys::cgroup::mount as cgroup2_mount;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const UNIT_DIR: &str = "/lib/systemd/system";
const EXPORTER_UNIT: &str = "mptcp-trace-exporter.service";
const UPGRADE_UNIT: &str = "mptcp-trace-upgrade@.service";
const PIN_DIR: &str = "/sys/fs/bpf/mptcp-trace";
/// `scripts/setup.sh` installs the tool there; the package must not touch it.
const SETUP_COPY: &str = "/usr/local/bin/mptcp-trace";

fn deb_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(format!("dist/mptcp-trace_{VERSION}_amd64.deb"))
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = sh(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}\n{}",
        o.status,
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dpkg's status of the package; "" when dpkg does not know it or it is purged.
fn package_status() -> String {
    let o = sh("dpkg-query", &["-W", "-f=${Status}", "mptcp-trace"]);
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    if s.ends_with(" not-installed") {
        String::new()
    } else {
        s
    }
}

/// Removes the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let o = sh("dpkg", &["--purge", "mptcp-trace"]);
        if !o.status.success() {
            eprintln!("dpkg --purge mptcp-trace failed: {}", text(&o));
        }
    }
}

/// Removes a cgroup directory (and its parent when this test made it) however the test ends.
struct Cgroup {
    dir: PathBuf,
    made_parent: bool,
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
        if self.made_parent {
            let _ = fs::remove_dir(self.dir.parent().unwrap());
        }
    }
}

/// The identity of a file: whatever the test does must leave it as it was.
fn fingerprint(p: &Path) -> Option<(u64, u64, i64, Vec<u8>)> {
    let m = fs::metadata(p).ok()?;
    Some((m.ino(), m.size(), m.mtime(), fs::read(p).ok()?))
}

/// The value of `key=` in a unit file, with the instance substituted.
fn unit_value(unit: &str, key: &str, instance: &str) -> String {
    let body = fs::read_to_string(Path::new(UNIT_DIR).join(unit)).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit}: no {key}="))
        .replace("%i", instance)
}

/// Runs a unit's command line as systemd would (no quoting or variables in ours: asserted).
fn run_line(line: &str) -> Output {
    assert!(
        !line.contains(['"', '\'', '$', '\\', '%']),
        "the test splits on spaces only: {line}"
    );
    let argv: Vec<&str> = line.split_whitespace().collect();
    sh(argv[0], &argv[1..])
}

/// What `upgrade --pin` must do on this kernel, decided from independent facts as in
/// tests/tests/upgrade.rs: the hook exists from 6.6; under kernel lockdown (this host:
/// integrity) the kernel refuses the BPF trampoline.
fn upgrade_is_refused_here() -> bool {
    assert!(
        kernel_version() >= (6, 6),
        "this test expects a kernel with update_socket_protocol (6.6+); it is host only"
    );
    let mut mounted = false;
    let file = Path::new("/sys/kernel/security/lockdown");
    if !file.exists() {
        mounted = sh(
            "mount",
            &["-t", "securityfs", "none", "/sys/kernel/security"],
        )
        .status
        .success();
    }
    let mode = fs::read_to_string(file).unwrap_or_else(|_| "[none]".into());
    if mounted {
        let _ = sh("umount", &["/sys/kernel/security"]);
    }
    !mode.contains("[none]")
}

#[test]
fn dist_deb_installs_documents_completes_and_removes_cleanly() {
    require_root();
    let deb = deb_path();
    assert!(
        deb.exists(),
        "{} missing: `cargo xtask dist` builds it (`cargo xtask test` does before the tests)",
        deb.display()
    );
    assert_eq!(
        package_status(),
        "",
        "mptcp-trace is already installed as a package: the test installs and removes it, \
         so remove it first (dpkg --purge mptcp-trace)"
    );
    let setup_copy = fingerprint(Path::new(SETUP_COPY));

    let guard = Installed;
    ok("dpkg", &["-i", deb.to_str().unwrap()]);
    assert_eq!(package_status(), "install ok installed");

    // The files, where the README says they are.
    let listed = ok("dpkg", &["-L", "mptcp-trace"]);
    for f in [
        "/usr/bin/mptcp-trace",
        "/usr/share/man/man1/mptcp-trace.1.gz",
        "/usr/share/man/man1/mptcp-trace-upgrade.1.gz",
        "/usr/share/bash-completion/completions/mptcp-trace",
        "/usr/share/zsh/vendor-completions/_mptcp-trace",
        "/usr/share/fish/vendor_completions.d/mptcp-trace.fish",
        "/lib/systemd/system/mptcp-trace-exporter.service",
        "/lib/systemd/system/mptcp-trace-upgrade@.service",
        "/usr/share/doc/mptcp-trace/copyright",
        "/usr/share/doc/mptcp-trace/README.md.gz",
    ] {
        assert!(
            listed.lines().any(|l| l == f),
            "{f} not in dpkg -L:\n{listed}"
        );
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    // dpkg's own check of every installed file against the package's md5sums.
    ok("dpkg", &["--verify", "mptcp-trace"]);

    assert_eq!(
        ok("/usr/bin/mptcp-trace", &["--version"]).trim(),
        format!("mptcp-trace {VERSION}")
    );

    // man-db finds the pages and renders them; the upgrade page carries the flags of
    // `upgrade --help`, so it was generated from the same definitions.
    assert_eq!(
        ok("man", &["-w", "mptcp-trace"]).trim(),
        "/usr/share/man/man1/mptcp-trace.1.gz"
    );
    let o = Command::new("man")
        .arg("mptcp-trace-upgrade")
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let page = text(&o);
    assert!(o.status.success(), "{page}");
    for flag in ["--pin", "--off", "--status", "--cgroup"] {
        assert!(
            page.contains(flag),
            "{flag} missing from the man page:\n{page}"
        );
    }

    // bash: the installed script loads, and completes a subcommand and a subcommand's options
    // (the second is what clap-rs/clap#6421 breaks for hyphenated binaries).
    let script = r#"
        set -e
        source /usr/share/bash-completion/completions/mptcp-trace
        f=$(complete -p mptcp-trace | sed -E 's/.* -F ([^ ]+) .*/\1/')
        COMP_WORDS=(mptcp-trace upgr); COMP_CWORD=1
        "$f" mptcp-trace upgr mptcp-trace
        echo "sub: ${COMPREPLY[*]}"
        COMP_WORDS=(mptcp-trace upgrade --p); COMP_CWORD=2
        "$f" mptcp-trace --p upgrade
        echo "opts: ${COMPREPLY[*]}"
    "#;
    let out = ok("bash", &["-c", script]);
    assert!(out.contains("sub: upgrade\n"), "{out}");
    let opts: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("opts: "))
        .unwrap()
        .split(' ')
        .collect();
    for o in ["--pid", "--port", "--pin"] {
        assert!(opts.contains(&o), "{o} not completed: {out}");
    }
    let zsh = fs::read_to_string("/usr/share/zsh/vendor-completions/_mptcp-trace").unwrap();
    assert!(zsh.starts_with("#compdef mptcp-trace\n"), "{zsh:.200}");
    let fish = fs::read_to_string("/usr/share/fish/vendor_completions.d/mptcp-trace.fish").unwrap();
    assert!(fish.contains("complete -c mptcp-trace "), "{fish:.200}");

    // systemd's own parser on both units. The upgrade template is verified as an instance
    // bound to a throwaway service (BindsTo= needs the unit to exist), given to systemd through
    // SYSTEMD_UNIT_PATH (the trailing ':' keeps the default search path).
    let instance = tag("dist");
    let units = std::env::temp_dir().join(&instance);
    fs::create_dir_all(&units).unwrap();
    fs::write(
        units.join(format!("{instance}.service")),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    for unit in [
        format!("{UNIT_DIR}/{EXPORTER_UNIT}"),
        format!("{UNIT_DIR}/mptcp-trace-upgrade@{instance}.service"),
    ] {
        let o = Command::new("systemd-analyze")
            .args(["verify", &unit])
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
            .current_dir(&units)
            .output()
            .expect("systemd-analyze (package systemd) is needed");
        let t = text(&o);
        assert!(o.status.success(), "systemd-analyze verify {unit}: {t}");
        // It exits 0 on dependencies it ignores ("Failed to add dependency …, ignoring").
        assert!(t.trim().is_empty(), "systemd-analyze verify {unit}: {t}");
    }
    fs::remove_dir_all(&units).unwrap();

    // The upgrade unit's ExecStart, as installed, for a service whose cgroup this test makes.
    assert_eq!(
        unit_value(UPGRADE_UNIT, "ExecStart", &instance),
        format!("/usr/bin/mptcp-trace upgrade --cgroup system.slice/{instance}.service --pin")
    );
    let root = cgroup2_mount().expect("a cgroup2 mount");
    let slice = root.join("system.slice");
    let made_parent = !slice.exists();
    let cg = Cgroup {
        dir: slice.join(format!("{instance}.service")),
        made_parent,
    };
    fs::create_dir_all(&cg.dir).unwrap();
    let start = run_line(&unit_value(UPGRADE_UNIT, "ExecStart", &instance));
    let stop_line = unit_value(UPGRADE_UNIT, "ExecStop", &instance);
    let t = text(&start);
    if upgrade_is_refused_here() {
        // The documented refusal: exit 2, the kernel's answer, what works instead; nothing
        // pinned (systemd then marks the unit failed and runs no ExecStop).
        assert_eq!(start.status.code(), Some(2), "{t}");
        assert!(
            t.contains("refused to load the upgrade's BPF trampoline"),
            "{t}"
        );
        assert!(t.contains("BPF_PROG_LOAD returned EPERM"), "{t}");
        assert!(t.contains("mptcp-trace run -- CMD"), "{t}");
        assert_eq!(t.lines().count(), 1, "one line: {t}");
        assert!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} left behind");
    } else {
        // Pinned, scoped to that cgroup, and returned.
        assert_eq!(start.status.code(), Some(0), "{t}");
        assert!(Path::new(PIN_DIR).is_dir(), "{t}");
        let status = ok("/usr/bin/mptcp-trace", &["upgrade", "--status"]);
        let id = fs::metadata(&cg.dir).unwrap().ino();
        assert!(status.contains(&format!("{instance}.service")), "{status}");
        assert!(status.contains(&format!("(id {id},")), "{status}");
    }
    // ExecStop removes the pin, and with nothing pinned it still succeeds (exit 0).
    let stop = run_line(&stop_line);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    assert!(
        !Path::new(PIN_DIR).exists(),
        "{PIN_DIR} left after ExecStop"
    );
    let status = ok("/usr/bin/mptcp-trace", &["upgrade", "--status"]);
    assert!(status.contains("not pinned"), "{status}");
    drop(cg);

    // The exporter unit's ExecStart, as installed: it serves /metrics until SIGTERM (what
    // `systemctl stop` sends), then exits 0 and the port closes.
    let line = unit_value(EXPORTER_UNIT, "ExecStart", "");
    assert_eq!(
        line,
        "/usr/bin/mptcp-trace exporter --listen 127.0.0.1:9464"
    );
    let argv: Vec<&str> = line.split_whitespace().collect();
    let mut exporter = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let metrics = loop {
        let o = sh(
            "curl",
            &["-sS", "--max-time", "2", "http://127.0.0.1:9464/metrics"],
        );
        if o.status.success() {
            break text(&o);
        }
        if let Ok(Some(st)) = exporter.try_wait() {
            panic!("the exporter unit's command exited: {st}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter unit's command never served: {}",
            text(&o)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(exporter.id() as i32, libc::SIGTERM) };
    let st = exporter.wait().unwrap();
    assert!(st.success(), "exporter exit: {st}");
    assert!(
        metrics.contains("mptcp_trace_build_info{version=\""),
        "{metrics}"
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:9464").is_err(),
        "port 9464 still open after SIGTERM"
    );

    drop(guard);
    assert_eq!(package_status(), "", "still known to dpkg after --purge");
    for f in [
        "/usr/bin/mptcp-trace",
        "/lib/systemd/system/mptcp-trace-upgrade@.service",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after dpkg --purge");
    }
    let o = sh("man", &["-w", "mptcp-trace"]);
    assert!(
        !o.status.success(),
        "the man page is still found: {}",
        text(&o)
    );
    assert_eq!(
        fingerprint(Path::new(SETUP_COPY)),
        setup_copy,
        "{SETUP_COPY} (scripts/setup.sh's copy) changed"
    );
}
