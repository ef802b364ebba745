//! Turns the filter flags into a kernel-side [`Config`] (pid, netns: cheap there) and a
//! userspace [`Filter`] for the rest. A connection is judged once, on its first event, and all
//! its later events (subflows a kworker created, closes) follow that verdict.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use mptcp_common::{scope, Config, Scope};

use crate::{
    cli::FilterArgs,
    event::{Event, Family, Kind},
};

/// A bad filter value: the caller prints it and exits with status 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--pid {0}: no such process")]
    NoProcess(u32),
    #[error(
        "--netns {0}: not a namespace name from `ip netns`, a namespace file or an inode number"
    )]
    Netns(String),
    #[error("--cgroup {0}: not a cgroup v2 directory")]
    Cgroup(String),
    #[error("--cgroup: no cgroup v2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    #[error("--token {0}: expected 1 to 8 hex digits")]
    Token(String),
    #[error("--comm {0}: a command name has at most 15 bytes")]
    Comm(String),
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (it is /sys/fs/cgroup/unified on
/// hybrid hosts, /sys/fs/cgroup on unified ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A cgroup directory and every cgroup below it (depth first). A cgroup's id is its
/// directory's inode number.
pub fn cgroup_dirs(root: &Path) -> impl Iterator<Item = PathBuf> {
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

/// The inode of a network namespace given by name, path or number.
pub fn resolve_netns(spec: &str) -> Result<u32, FilterError> {
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(n);
    }
    let candidates = [PathBuf::from(spec), Path::new("/run/netns").join(spec)];
    candidates
        .iter()
        .filter(|p| !spec.contains('/') || p.is_absolute() || p.starts_with("."))
        .find_map(|p| fs::metadata(p).ok())
        .and_then(|m| u32::try_from(m.ino()).ok())
        .ok_or_else(|| FilterError::Netns(spec.to_string()))
}

/// Cgroup ids (cgroup v2 directory inodes) of a cgroup and its descendants.
#[derive(Debug)]
struct CgroupTree {
    root: PathBuf,
    ids: HashSet<u64>,
}

impl CgroupTree {
    fn new(spec: &Path) -> Result<Self, FilterError> {
        let root = if spec.is_absolute() && spec.exists() {
            spec.to_path_buf()
        } else {
            let mount = cgroup2_mount().ok_or(FilterError::NoCgroup2)?;
            mount.join(spec.strip_prefix("/").unwrap_or(spec))
        };
        if !root.join("cgroup.procs").exists() {
            return Err(FilterError::Cgroup(spec.display().to_string()));
        }
        let mut tree = CgroupTree {
            root,
            ids: HashSet::new(),
        };
        tree.rescan();
        Ok(tree)
    }

    fn rescan(&mut self) {
        self.ids = cgroup_dirs(&self.root)
            .filter_map(|d| fs::metadata(d).ok())
            .map(|m| m.ino())
            .collect();
    }

    /// Whether `id` is the root or below it; a cgroup created after the last scan triggers a
    /// rescan.
    fn contains(&mut self, id: u64) -> bool {
        if !self.ids.contains(&id) {
            self.rescan();
        }
        self.ids.contains(&id)
    }
}

/// The userspace half of the filters.
#[derive(Debug, Default)]
pub struct Filter {
    comm: Option<String>,
    cgroup: Option<CgroupTree>,
    port: Option<u16>,
    addr: Option<IpAddr>,
    token: Option<String>,
    family: Option<Family>,
    kernel: Config,
    /// Verdicts for connections seen so far, by connection id.
    verdicts: HashMap<u64, bool>,
}

impl Filter {
    pub fn new(args: &FilterArgs) -> Result<Self, FilterError> {
        let mut kernel = Config::default();
        if let Some(pid) = args.pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(FilterError::NoProcess(pid));
            }
            kernel.scope = Scope {
                flags: scope::PID,
                n_pids: 1,
                ..Scope::NONE
            };
            kernel.scope.pids[0] = pid;
        }
        if let Some(ns) = &args.netns {
            kernel.netns[0] = resolve_netns(ns)?;
            kernel.n_netns = 1;
        }
        kernel.all_tcp = args.all_tcp as u32;
        if let Some(c) = &args.comm {
            if c.is_empty() || c.len() > 15 {
                return Err(FilterError::Comm(c.clone()));
            }
        }
        let token = match &args.token {
            Some(t) => {
                let t = t.trim_start_matches("0x");
                let v = u32::from_str_radix(t, 16)
                    .ok()
                    .filter(|_| (1..=8).contains(&t.len()))
                    .ok_or_else(|| FilterError::Token(t.to_string()))?;
                Some(format!("{v:08x}"))
            }
            None => None,
        };
        Ok(Filter {
            comm: args.comm.clone(),
            cgroup: args.cgroup.as_deref().map(CgroupTree::new).transpose()?,
            port: args.port,
            addr: args.addr,
            token,
            family: match (args.ipv4, args.ipv6) {
                (true, _) => Some(Family::Ipv4),
                (_, true) => Some(Family::Ipv6),
                _ => None,
            },
            kernel,
            verdicts: HashMap::new(),
        })
    }

    /// The filters the programs apply.
    pub fn kernel_config(&self) -> Config {
        self.kernel
    }

    /// Whether to show `e`. Connection-level filters are decided on the connection's first
    /// event; the verdict is forgotten when the connection closes.
    pub fn accept(&mut self, e: &Event) -> bool {
        if e.event == Kind::Lost {
            return true;
        }
        if let (Some(want), Some(got)) = (&self.token, &e.token) {
            if want != got {
                return false;
            }
        }
        if e.conn_id == 0 {
            // Not tied to a connection we saw (an address event of an unknown connection).
            return self.judge(e);
        }
        let verdict = match self.verdicts.get(&e.conn_id) {
            Some(&v) => v,
            None => {
                let v = self.judge(e);
                self.verdicts.insert(e.conn_id, v);
                v
            }
        };
        if e.event == Kind::ConnClosed {
            self.verdicts.remove(&e.conn_id);
        }
        verdict
    }

    fn judge(&mut self, e: &Event) -> bool {
        if self.token.is_some() && e.token.is_none() {
            return false;
        }
        // The kernel applies it to its own events; address events come from netlink.
        let s = &self.kernel.scope;
        if s.flags & scope::PID != 0 && e.pid != Some(s.pids[0]) {
            return false;
        }
        if let Some(c) = &self.comm {
            if e.comm.as_deref() != Some(c.as_str()) {
                return false;
            }
        }
        if let Some(tree) = &mut self.cgroup {
            match e.cgroup_id {
                Some(id) if tree.contains(id) => {}
                _ => return false,
            }
        }
        if let Some(p) = self.port {
            if e.sport != Some(p) && e.dport != Some(p) {
                return false;
            }
        }
        if let Some(a) = self.addr {
            if e.saddr != Some(a) && e.daddr != Some(a) {
                return false;
            }
        }
        if let Some(f) = self.family {
            if e.family != Some(f) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(conn: u64, kind: Kind, sport: u16, dport: u16) -> Event {
        let mut e = Event::new(kind, 1, String::new());
        e.conn_id = conn;
        e.sport = Some(sport);
        e.dport = Some(dport);
        e.family = Some(Family::Ipv4);
        e.comm = Some("client".into());
        e.token = Some("0000abcd".into());
        e
    }

    #[test]
    fn port_verdict_follows_the_connection() {
        let mut f = Filter::new(&FilterArgs {
            port: Some(4321),
            ..Default::default()
        })
        .unwrap();
        assert!(f.accept(&ev(1, Kind::ConnCreated, 40000, 4321)));
        // A join subflow of the same connection is judged by the connection.
        assert!(f.accept(&ev(1, Kind::SubflowEstablished, 40001, 9999)));
        assert!(!f.accept(&ev(2, Kind::ConnCreated, 40002, 80)));
        assert!(!f.accept(&ev(2, Kind::SubflowEstablished, 40002, 4321)));
        assert!(f.accept(&ev(1, Kind::ConnClosed, 40000, 4321)));
        assert!(!f.verdicts.contains_key(&1), "verdict forgotten at close");
    }

    #[test]
    fn comm_family_addr_and_token() {
        let args = FilterArgs {
            comm: Some("client".into()),
            ipv6: true,
            ..Default::default()
        };
        let mut f = Filter::new(&args).unwrap();
        assert!(!f.accept(&ev(1, Kind::ConnCreated, 1, 2)), "ipv4 rejected");
        let mut f = Filter::new(&FilterArgs {
            token: Some("ABCD".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(f.accept(&ev(3, Kind::ConnCreated, 1, 2)));
        let mut other = ev(4, Kind::ConnCreated, 1, 2);
        other.token = Some("00001234".into());
        assert!(!f.accept(&other));
        let mut f = Filter::new(&FilterArgs {
            addr: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        let mut e = ev(5, Kind::ConnCreated, 1, 2);
        e.daddr = Some("10.0.0.1".parse().unwrap());
        assert!(f.accept(&e));
        assert!(!f.accept(&ev(6, Kind::ConnCreated, 1, 2)));
        assert!(
            f.accept(&Event::new(Kind::Lost, 1, String::new())),
            "loss always shown"
        );
    }

    #[test]
    fn events_without_a_connection_are_judged_one_by_one() {
        let mut f = Filter::new(&FilterArgs {
            pid: Some(std::process::id()),
            ..Default::default()
        })
        .unwrap();
        let mut mine = Event::new(Kind::AddrAnnounced, 1, String::new());
        mine.pid = Some(std::process::id());
        let stranger = Event::new(Kind::AddrRemoved, 1, String::new());
        assert!(!f.accept(&stranger), "unknown owner fails a pid filter");
        assert!(f.accept(&mine), "not tainted by the stranger's verdict");
    }

    #[test]
    fn bad_values_are_errors() {
        let bad = |a: FilterArgs| Filter::new(&a).unwrap_err();
        assert_eq!(
            bad(FilterArgs {
                token: Some("xyz".into()),
                ..Default::default()
            }),
            FilterError::Token("xyz".into())
        );
        assert!(matches!(
            bad(FilterArgs {
                netns: Some("no-such-netns-xyz".into()),
                ..Default::default()
            }),
            FilterError::Netns(_)
        ));
        assert_eq!(
            bad(FilterArgs {
                pid: Some(u32::MAX - 1),
                ..Default::default()
            }),
            FilterError::NoProcess(u32::MAX - 1)
        );
        assert!(matches!(
            bad(FilterArgs {
                cgroup: Some("/no/such/cgroup-xyz".into()),
                ..Default::default()
            }),
            FilterError::Cgroup(_) | FilterError::NoCgroup2
        ));
    }

    #[test]
    fn netns_by_path_and_number() {
        let self_ns = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(resolve_netns("/proc/self/ns/net"), Ok(self_ns));
        assert_eq!(resolve_netns("4026531840"), Ok(4026531840));
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = cgroup2_mount().expect("cgroup2 mounted");
        assert!(m.join("cgroup.procs").exists());
    }
}
