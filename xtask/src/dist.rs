//! `cargo xtask dist`: the Debian package, `target/dist/mptcp-trace_<version>_amd64.deb`.
//!
//! The release binary is built the way `scripts/setup.sh` builds `/usr/local/bin/mptcp-trace`
//! (mptcp-user's build.rs embeds the eBPF objects). Man pages and shell completions are
//! generated from the binary's own clap definitions (`mptcp_user::cli::Cli`), so they cannot
//! drift from `--help`. The systemd units are `contrib/systemd/` as they are. The tree is
//! staged under `target/dist/build/debian/mptcp-trace` (the layout `dpkg-shlibdeps` expects)
//! and packed by `dpkg-deb --build --root-owner-group`: files owned by root whoever builds.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use flate2::{write::GzEncoder, Compression, GzBuilder};

use crate::workspace_root;

const PACKAGE: &str = "mptcp-trace";
const BIN: &str = "mptcp-trace";
/// The units shipped, from `contrib/systemd/`.
const UNITS: &[&str] = &[
    "mptcp-trace-exporter.service",
    "mptcp-trace-upgrade@.service",
];

/// No one's mail address is the project's yet: `.invalid` says so rather than inventing one.
const DEFAULT_MAINTAINER: &str = "mptcp-trace developers <mptcp-trace@invalid>";

#[derive(clap::Args)]
pub struct DistArgs {
    /// The package's Maintainer field ("NAME <EMAIL>").
    #[arg(long, default_value = DEFAULT_MAINTAINER)]
    maintainer: String,
}

impl Default for DistArgs {
    fn default() -> Self {
        DistArgs {
            maintainer: DEFAULT_MAINTAINER.into(),
        }
    }
}

/// What `cargo metadata` says about the build: the target directory and the version of the
/// crate that makes the binary.
fn metadata() -> Result<(PathBuf, String)> {
    let out = crate::test::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let target = v["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    let version = v["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "mptcp-user"))
        .and_then(|p| p["version"].as_str())
        .context("cargo metadata: no mptcp-user package")?;
    Ok((target.into(), version.to_string()))
}

/// Writes `data` to `path` (parents created) with `mode`.
fn put(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n: no name and a zero time in the header, so the same input gives the same bytes
/// (Debian policy 12.3 for man pages and documentation).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// The man pages: `mptcp-trace.1` and one `mptcp-trace-<sub>.1` per subcommand, gzipped.
fn man_pages(man1: &Path) -> Result<usize> {
    let tmp = man1.with_file_name("man1.roff");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    clap_mangen::generate_to(mptcp_user::cli::Cli::command(), &tmp)
        .context("cannot generate the man pages")?;
    let mut n = 0;
    for entry in fs::read_dir(&tmp)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // clap's own `help` subcommand has nothing to document.
        if name == format!("{BIN}-help.1") {
            continue;
        }
        put(
            &man1.join(format!("{name}.gz")),
            &gzip(&fs::read(&path)?)?,
            0o644,
        )?;
        n += 1;
    }
    fs::remove_dir_all(&tmp)?;
    Ok(n)
}

fn completions(root: &Path) -> Result<()> {
    for (shell, path) in [
        (
            Shell::Bash,
            "usr/share/bash-completion/completions/mptcp-trace",
        ),
        (Shell::Zsh, "usr/share/zsh/vendor-completions/_mptcp-trace"),
        (
            Shell::Fish,
            "usr/share/fish/vendor_completions.d/mptcp-trace.fish",
        ),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut mptcp_user::cli::Cli::command(), BIN, &mut buf);
        if shell == Shell::Bash {
            buf = fix_bash_hyphenated_bin(&String::from_utf8(buf)?).into_bytes();
        }
        put(&root.join(path), &buf, 0o644)?;
    }
    Ok(())
}

/// clap_complete's bash script spells the state of a subcommand of a hyphenated binary two
/// ways: the loop sets `mptcp__trace__subcmd__upgrade`, the case arms test
/// `mptcp__subcmd__trace__subcmd__upgrade`, so no option of any subcommand ever completes
/// (clap-rs/clap#6421, open). The arms are respelled the way the loop spells them; with a fixed
/// clap_complete there is nothing to respell. tests/tests/dist.rs completes `upgrade --p`.
fn fix_bash_hyphenated_bin(script: &str) -> String {
    script.replace("mptcp__subcmd__trace__", "mptcp__trace__")
}

/// `Depends` from the binary's ELF dependencies and the shlibs/symbols files of the installed
/// libraries (minimum versions by the symbols actually used), as debhelper would compute it.
fn shlib_depends(build: &Path, bin: &Path) -> Result<String> {
    put(
        &build.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: amd64\n").as_bytes(),
        0o644,
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(
            bin.strip_prefix(build)
                .expect("the binary is staged under build"),
        )
        .current_dir(build)
        .output()
        .context("cannot run dpkg-shlibdeps (package dpkg-dev; scripts/setup.sh installs it)")?;
    ensure!(
        out.status.success(),
        "dpkg-shlibdeps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))
}

/// Installed-Size in KiB, as dpkg-gencontrol counts it (each file and directory rounded up).
fn installed_size(dir: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "DEBIAN" {
            continue;
        }
        let meta = entry.metadata()?;
        kib += meta.len().div_ceil(1024).max(1);
        if meta.is_dir() {
            kib += installed_size(&entry.path())?;
        }
    }
    Ok(kib)
}

/// Every regular file below `dir`, relative to `root`, sorted.
fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path != root.join("DEBIAN") {
                files(root, &path, out)?;
            }
        } else {
            out.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    out.sort();
    Ok(())
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mptcp-trace

Files: *
Copyright: the mptcp-trace developers
License: MIT or Apache-2.0

License: Apache-2.0
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of
 this software and associated documentation files (the \"Software\"), to deal in
 the Software without restriction, including without limitation the rights to
 use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
 the Software, and to permit persons to whom the Software is furnished to do so,
 subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all
 copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
 FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
 COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
 IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
 CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
";

/// Builds the package and returns its path.
pub fn run(args: DistArgs) -> Result<PathBuf> {
    let ws = workspace_root();
    let (target, version) = metadata()?;
    eprintln!("==> cargo build --release -p mptcp-user (mptcp-trace {version})");
    let status = crate::test::cargo()
        .args([
            "build",
            "--quiet",
            "--locked",
            "--release",
            "-p",
            "mptcp-user",
        ])
        .current_dir(&ws)
        .status()
        .context("cannot run cargo build")?;
    ensure!(status.success(), "cargo build --release failed ({status})");

    let dist = target.join("dist");
    let build = dist.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("cannot remove {}", build.display()))?;
    }
    let root = build.join("debian").join(PACKAGE);

    let bin = root.join("usr/bin").join(BIN);
    put(&bin, &fs::read(target.join("release").join(BIN))?, 0o755)?;
    // As Debian ships binaries (policy 10.1): without the symbol table; the embedded eBPF
    // objects are data and stay.
    let status = Command::new("strip")
        .arg("--strip-unneeded")
        .arg(&bin)
        .status()
        .context("cannot run strip (package binutils)")?;
    ensure!(status.success(), "strip failed ({status})");
    let pages = man_pages(&root.join("usr/share/man/man1"))?;
    completions(&root)?;
    for unit in UNITS {
        let src = ws.join("contrib/systemd").join(unit);
        let data = fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        put(&root.join("lib/systemd/system").join(unit), &data, 0o644)?;
    }
    let doc = root.join("usr/share/doc").join(PACKAGE);
    put(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    put(
        &doc.join("README.md.gz"),
        &gzip(&fs::read(ws.join("README.md"))?)?,
        0o644,
    )?;

    let depends = shlib_depends(&build, &bin)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: MPTCP tracer and TCP-to-MPTCP upgrader built on eBPF\n \
         mptcp-trace traces every MPTCP connection and each of its subflows live from\n \
         eBPF (events, a live view, diagnoses of missing subflows and fallbacks, HTML\n \
         reports), and makes unmodified programs use MPTCP: a BPF hook on socket()\n \
         (Linux 6.6 and later) or seccomp user notification for one command.\n \
         .\n \
         Includes man pages, bash/zsh/fish completions, and systemd units for the\n \
         Prometheus exporter and for a pinned upgrade scoped to a service's cgroup.\n",
        maintainer = args.maintainer,
        size = installed_size(&root)?,
    );
    put(&root.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    // md5sums: what `dpkg --verify` checks the installed files against.
    let mut list = Vec::new();
    files(&root, &root, &mut list)?;
    let out = Command::new("md5sum")
        .args(&list)
        .current_dir(&root)
        .output()
        .context("cannot run md5sum")?;
    ensure!(out.status.success(), "md5sum failed");
    put(&root.join("DEBIAN/md5sums"), &out.stdout, 0o644)?;
    // Directories 0755 whatever the umask was (dpkg-deb refuses a group-writable DEBIAN).
    set_dir_modes(&root)?;

    let deb = dist.join(format!("{PACKAGE}_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    eprintln!(
        "==> {} ({} files, {pages} man pages; Depends: {depends})",
        deb.display(),
        list.len()
    );
    println!("{}", deb.display());
    Ok(deb)
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}
