//! `mptcp-trace doctor`: checks the host (kernel, BTF, MPTCP, the upgrade hook, bpffs, cgroup v2,
//! capabilities) and each network namespace (MPTCP enabled, path manager, limits, endpoints and
//! the classic misconfigurations), and says for each failure the command that fixes it.
//!
//! Gathering facts ([`host`], [`net`], `pm_config`) is separate from judging them
//! ([`netns::judge`] is a pure function over the facts), so every verdict is unit-tested
//! without a kernel.

pub mod host;
pub mod net;
pub mod netns;
pub mod probe;

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "⚠",
            Status::Fail => "✗",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Host,
    Netns,
}

/// A network namespace as `doctor` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    /// Its name under /run/netns, when it has one.
    pub name: Option<String>,
    pub inode: u32,
    /// A process in it, for a namespace without a name.
    pub pid: Option<u32>,
    /// Whether it is the namespace `doctor` runs in.
    pub current: bool,
    /// The file that was opened to enter it.
    #[serde(skip)]
    pub path: PathBuf,
}

impl NetnsRef {
    pub fn label(&self) -> String {
        match (&self.name, self.pid) {
            (Some(n), _) => format!("{n} (inode {})", self.inode),
            (None, Some(pid)) => format!(
                "inode {} (pid {pid}{})",
                self.inode,
                if self.current { ", this one" } else { "" }
            ),
            (None, None) => format!("inode {}", self.inode),
        }
    }

    /// `ip ARGS` run in this namespace.
    pub fn ip(&self, args: &str) -> String {
        match &self.name {
            Some(n) => format!("ip -n {n} {args}"),
            None if self.current => format!("ip {args}"),
            None => format!("nsenter --net={} ip {args}", self.path.display()),
        }
    }

    /// `sysctl -w KEY=VALUE` run in this namespace.
    pub fn sysctl(&self, kv: &str) -> String {
        match &self.name {
            Some(n) => format!("ip netns exec {n} sysctl -w {kv}"),
            None if self.current => format!("sysctl -w {kv}"),
            None => format!("nsenter --net={} sysctl -w {kv}", self.path.display()),
        }
    }
}

/// One verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsRef>,
    pub status: Status,
    pub detail: String,
    /// A command line that fixes a failure or a warning; `null` when none exists.
    pub fix: Option<String>,
}

impl Check {
    pub fn host(name: &str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            scope: Scope::Host,
            netns: None,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn netns(ns: &NetnsRef, name: &str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            scope: Scope::Netns,
            netns: Some(ns.clone()),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// `doctor --json`: every check and the counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub summary: Summary,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Ok => summary.ok += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
            }
        }
        Report { checks, summary }
    }

    /// The text form: a heading per scope, one line per check, the fix under it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut heading = None;
        for c in &self.checks {
            let h = match &c.netns {
                None => "host".to_string(),
                Some(ns) => format!("netns {}", ns.label()),
            };
            if heading.as_ref() != Some(&h) {
                let _ = writeln!(out, "{h}");
                heading = Some(h);
            }
            let _ = writeln!(out, "  {} {}: {}", c.status.symbol(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "      fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{} ✓, {} ⚠, {} ✗",
            self.summary.ok, self.summary.warn, self.summary.fail
        );
        out
    }
}

/// `--netns` named nothing that exists.
#[derive(Debug, thiserror::Error)]
#[error("--netns {0}: no such network namespace (a name from `ip netns list`, a path such as /proc/PID/ns/net, or an inode number)")]
pub struct UnknownNetns(pub String);

fn pid_of(path: &Path) -> Option<u32> {
    path.strip_prefix("/proc")
        .ok()?
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .parse()
        .ok()
}

fn current_inode() -> Option<u32> {
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// Every namespace on the host: named ones first (by name), then the others by inode.
pub fn all_namespaces() -> Vec<NetnsRef> {
    let current = current_inode();
    let mut v: Vec<NetnsRef> = crate::sys::netns::all()
        .into_iter()
        .map(|(inode, path)| to_ref(inode, path, current))
        .collect();
    v.sort_by(|a, b| {
        (a.name.is_none(), &a.name, a.inode).cmp(&(b.name.is_none(), &b.name, b.inode))
    });
    v
}

fn to_ref(inode: u32, path: PathBuf, current: Option<u32>) -> NetnsRef {
    let name = path
        .strip_prefix("/run/netns")
        .ok()
        .map(|n| n.display().to_string());
    NetnsRef {
        pid: if name.is_none() { pid_of(&path) } else { None },
        name,
        inode,
        current: current == Some(inode),
        path,
    }
}

/// Resolves `--netns` values: a name under /run/netns, a path, or an inode number.
pub fn resolve_namespaces(specs: &[String]) -> Result<Vec<NetnsRef>, UnknownNetns> {
    let all = all_namespaces();
    let mut out: Vec<NetnsRef> = Vec::new();
    for spec in specs {
        let named = Path::new("/run/netns").join(spec);
        let found = if !spec.contains('/') && named.exists() {
            let ino = fs::metadata(&named).map(|m| m.ino() as u32).ok();
            ino.map(|i| to_ref(i, named, current_inode()))
        } else if spec.contains('/') {
            fs::metadata(spec).ok().map(|m| {
                let ino = m.ino() as u32;
                all.iter()
                    .find(|n| n.inode == ino)
                    .cloned()
                    .unwrap_or_else(|| to_ref(ino, PathBuf::from(spec), current_inode()))
            })
        } else {
            spec.parse::<u32>()
                .ok()
                .and_then(|ino| all.iter().find(|n| n.inode == ino).cloned())
        };
        let ns = found.ok_or_else(|| UnknownNetns(spec.clone()))?;
        if !out.iter().any(|o| o.inode == ns.inode) {
            out.push(ns);
        }
    }
    Ok(out)
}

/// Runs every check: the host's, then each namespace's.
pub fn run(namespaces: &[NetnsRef]) -> Report {
    let mut checks = host::checks();
    for ns in namespaces {
        checks.extend(netns::checks(ns).unwrap_or_default());
    }
    Report::new(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: Option<&str>, current: bool) -> NetnsRef {
        NetnsRef {
            name: name.map(String::from),
            inode: 4026532000,
            pid: name.is_none().then_some(42),
            current,
            path: if let Some(n) = name {
                PathBuf::from(format!("/run/netns/{n}"))
            } else {
                PathBuf::from("/proc/42/ns/net")
            },
        }
    }

    #[test]
    fn fix_commands_run_in_the_right_namespace() {
        let named = ns(Some("mptcp-client"), false);
        assert_eq!(
            named.ip("mptcp limits set subflow 2"),
            "ip -n mptcp-client mptcp limits set subflow 2"
        );
        assert_eq!(
            named.sysctl("net.mptcp.enabled=1"),
            "ip netns exec mptcp-client sysctl -w net.mptcp.enabled=1"
        );
        assert_eq!(ns(None, true).ip("link set eth1 up"), "ip link set eth1 up");
        assert_eq!(
            ns(None, false).sysctl("net.mptcp.enabled=1"),
            "nsenter --net=/proc/42/ns/net sysctl -w net.mptcp.enabled=1"
        );
        assert_eq!(
            ns(None, true).label(),
            "inode 4026532000 (pid 42, this one)"
        );
    }

    #[test]
    fn text_and_json_carry_the_same_verdicts() {
        let n = ns(Some("c"), false);
        let report = Report::new(vec![
            Check::host("kernel", Status::Ok, "Linux 6.18"),
            Check::netns(&n, "mptcp_enabled", Status::Fail, "net.mptcp.enabled = 0")
                .fix(n.sysctl("net.mptcp.enabled=1")),
            Check::netns(&n, "add_addr_accepted", Status::Warn, "0"),
        ]);
        let text = report.text();
        assert_eq!(
            text,
            "host\n  ✓ kernel: Linux 6.18\nnetns c (inode 4026532000)\n  ✗ mptcp_enabled: \
             net.mptcp.enabled = 0\n      fix: ip netns exec c sysctl -w net.mptcp.enabled=1\n  \
             ⚠ add_addr_accepted: 0\n1 ✓, 1 ⚠, 1 ✗\n"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["scope"], "netns");
        assert_eq!(json["checks"][1]["netns"]["name"], "c");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(json["summary"]["fail"], 1);
    }

    #[test]
    fn unknown_namespaces_are_bad_input() {
        let e = resolve_namespaces(&["no-such-netns-xyz".into()]).unwrap_err();
        assert!(e.to_string().starts_with("--netns no-such-netns-xyz: "));
        assert!(resolve_namespaces(&["1".into()]).is_err());
    }
}
