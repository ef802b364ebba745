//! The one selector: every "which processes / which connections" flag, validated once with one
//! set of rules, turned into what each consumer needs — the tracer's kernel-side [`Config`],
//! the upgrade's [`Policy`], and the userspace [`ConnFilter`] for what the kernel cannot decide.
//!
//! Who owns a connection (pid, comm, cgroup, uid) and where it lives (netns) are decided in the
//! kernel, once, when the connection is created. Addresses, ports, tokens and the family are
//! matched in userspace against every subflow of a connection (a join may use the address the
//! user asked for), see `trace::filter`.

use std::{net::IpAddr, path::PathBuf};

use mptcp_common::{
    scope, upgrade::Policy, Config, Scope, MAX_COMMS, MAX_NETNS, MAX_PIDS, TASK_COMM_LEN,
};

use crate::{
    cli::SelectArgs,
    event::Family,
    sys::{
        cgroup::{Cgroup, CgroupError},
        netns::{Netns, NetnsError},
    },
};

/// A bad selector value: one line, exit status 2, nothing loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("--pid {0}: no such process")]
    NoProcess(u32),
    #[error("--pid {pid}: that is a thread of process {tgid}; give the process id")]
    Thread { pid: u32, tgid: u32 },
    // The cause is part of the one line, not a second link of the error chain (which
    // `{:#}` would print again).
    #[error("--netns {spec}: {why}")]
    Netns { spec: String, why: NetnsError },
    #[error("--cgroup {0}")]
    Cgroup(CgroupError),
    #[error("--token {0:?}: expected 1 to 8 hex digits (as `ip mptcp monitor` prints it)")]
    Token(String),
    #[error("--comm {0:?}: a command name has 1 to 15 bytes")]
    Comm(String),
    #[error("--{flag}: at most {max} values")]
    TooMany { flag: &'static str, max: usize },
    #[error("--{0} selects connections, not processes: the upgrade decides when socket() is called, before any address, port or token exists (it takes --pid, --comm, --cgroup, --uid or --all)")]
    NotForUpgrade(&'static str),
    #[error("say what to upgrade: --cgroup PATH, --comm NAME, --pid PID, --uid UID or --all")]
    NoScope,
}

/// Connection properties matched in userspace (any subflow of the connection may match).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnFilter {
    pub ports: Vec<u16>,
    pub addrs: Vec<IpAddr>,
    /// Local tokens.
    pub tokens: Vec<u32>,
    pub family: Option<Family>,
}

impl ConnFilter {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.addrs.is_empty()
            && self.tokens.is_empty()
            && self.family.is_none()
    }
}

/// The validated selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// Whose sockets: matched in the kernel.
    pub scope: Scope,
    pub cgroup: Option<Cgroup>,
    pub netns: Vec<Netns>,
    pub conn: ConnFilter,
    pub all_tcp: bool,
}

impl Default for Selector {
    fn default() -> Self {
        Selector {
            scope: Scope::ALL,
            cgroup: None,
            netns: Vec::new(),
            conn: ConnFilter::default(),
            all_tcp: false,
        }
    }
}

/// A command name as the kernel stores it: 1 to 15 bytes, NUL-padded.
pub fn encode_comm(name: &str) -> Result<[u8; TASK_COMM_LEN], SelectError> {
    if name.is_empty() || name.len() >= TASK_COMM_LEN || name.contains('\0') {
        return Err(SelectError::Comm(name.to_string()));
    }
    let mut out = [0u8; TASK_COMM_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Parses a token as `ip mptcp monitor` prints it: 1 to 8 hex digits, optionally `0x`.
pub fn parse_token(t: &str) -> Result<u32, SelectError> {
    let bad = || SelectError::Token(t.to_string());
    let digits = t.strip_prefix("0x").unwrap_or(t);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u32::from_str_radix(digits, 16).map_err(|_| bad())
}

/// The thread-group id of `pid`, from /proc/PID/status.
fn tgid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

fn too_many<T>(v: &[T], flag: &'static str, max: usize) -> Result<(), SelectError> {
    if v.len() > max {
        return Err(SelectError::TooMany { flag, max });
    }
    Ok(())
}

impl Selector {
    /// Validates the tracing flags.
    pub fn for_tracing(a: &SelectArgs) -> Result<Selector, SelectError> {
        let mut s = Selector::processes(a)?;
        if s.scope.flags == 0 {
            s.scope = Scope::ALL;
        }
        too_many(&a.netns, "netns", MAX_NETNS)?;
        for spec in &a.netns {
            let ns = Netns::resolve(spec).map_err(|why| SelectError::Netns {
                spec: spec.clone(),
                why,
            })?;
            if !s.netns.contains(&ns) {
                s.netns.push(ns);
            }
        }
        s.conn = ConnFilter {
            ports: a.port.clone(),
            addrs: a.addr.iter().map(|a| a.to_canonical()).collect(),
            tokens: a
                .token
                .iter()
                .map(|t| parse_token(t))
                .collect::<Result<_, _>>()?,
            family: match (a.ipv4, a.ipv6) {
                (true, _) => Some(Family::Ipv4),
                (_, true) => Some(Family::Ipv6),
                _ => None,
            },
        };
        s.all_tcp = a.all_tcp;
        Ok(s)
    }

    /// Validates the flags of `upgrade`: only process selectors apply; `all` selects every
    /// process; at least one is required.
    pub fn for_upgrade(a: &SelectArgs, all: bool) -> Result<Selector, SelectError> {
        let not = |set: bool, flag| {
            if set {
                Err(SelectError::NotForUpgrade(flag))
            } else {
                Ok(())
            }
        };
        not(!a.port.is_empty(), "port")?;
        not(!a.addr.is_empty(), "addr")?;
        not(!a.token.is_empty(), "token")?;
        not(!a.netns.is_empty(), "netns")?;
        not(a.ipv4, "ipv4")?;
        not(a.ipv6, "ipv6")?;
        not(a.all_tcp, "all-tcp")?;
        if all {
            return Ok(Selector::default());
        }
        let s = Selector::processes(a)?;
        if s.scope.flags == 0 {
            return Err(SelectError::NoScope);
        }
        Ok(s)
    }

    /// Exactly one cgroup and everything below it (`run`).
    pub fn for_cgroup(cg: Cgroup) -> Selector {
        let mut scope = Scope::NONE;
        scope.flags = scope::CGROUP;
        scope.cgroup_id = cg.id;
        scope.cgroup_level = cg.level;
        Selector {
            scope,
            cgroup: Some(cg),
            ..Selector::default()
        }
    }

    /// Exactly one process (the demo's own sockets).
    pub fn for_pid(pid: u32) -> Selector {
        let mut scope = Scope::NONE;
        scope.flags = scope::PID;
        scope.n_pids = 1;
        scope.pids[0] = pid;
        Selector {
            scope,
            ..Selector::default()
        }
    }

    /// The process part, shared by both: pid, comm, cgroup, uid. No flag: `flags == 0`.
    fn processes(a: &SelectArgs) -> Result<Selector, SelectError> {
        let mut sc = Scope::NONE;
        too_many(&a.pid, "pid", MAX_PIDS)?;
        for &pid in &a.pid {
            match tgid_of(pid) {
                None => return Err(SelectError::NoProcess(pid)),
                Some(tgid) if tgid != pid => return Err(SelectError::Thread { pid, tgid }),
                Some(_) => {}
            }
            if !sc.pids[..sc.n_pids as usize].contains(&pid) {
                sc.pids[sc.n_pids as usize] = pid;
                sc.n_pids += 1;
            }
        }
        if sc.n_pids > 0 {
            sc.flags |= scope::PID;
        }
        too_many(&a.comm, "comm", MAX_COMMS)?;
        for name in &a.comm {
            let c = encode_comm(name)?;
            if !sc.comms[..sc.n_comms as usize].contains(&c) {
                sc.comms[sc.n_comms as usize] = c;
                sc.n_comms += 1;
            }
        }
        if sc.n_comms > 0 {
            sc.flags |= scope::COMM;
        }
        let cgroup = a
            .cgroup
            .as_deref()
            .map(Cgroup::resolve)
            .transpose()
            .map_err(SelectError::Cgroup)?;
        if let Some(cg) = &cgroup {
            sc.flags |= scope::CGROUP;
            sc.cgroup_id = cg.id;
            sc.cgroup_level = cg.level;
        }
        if let Some(uid) = a.uid {
            sc.flags |= scope::UID;
            sc.uid = uid;
        }
        Ok(Selector {
            scope: sc,
            cgroup,
            ..Selector::default()
        })
    }

    /// What the tracing programs filter themselves.
    pub fn config(&self) -> Config {
        let mut c = Config {
            scope: self.scope,
            all_tcp: self.all_tcp as u32,
            ..Config::default()
        };
        for (slot, ns) in c.netns.iter_mut().zip(&self.netns) {
            *slot = ns.inode;
        }
        c.n_netns = self.netns.len() as u32;
        c
    }

    /// What the upgrade program reads.
    pub fn policy(&self, count_only: bool) -> Policy {
        Policy {
            scope: self.scope,
            count_only: count_only as u32,
            events: 0,
        }
    }

    /// The namespaces the user restricted tracing to (empty: all).
    pub fn netns_inodes(&self) -> Vec<u32> {
        self.netns.iter().map(|n| n.inode).collect()
    }

    /// One line in words, e.g. `cgroup /sys/fs/cgroup/x and below, comm curl|wget`.
    pub fn describe(&self) -> String {
        describe_scope(&self.scope, self.cgroup.as_ref().map(|c| c.path.clone()))
    }
}

/// A scope in words (also for a pinned policy read back from the kernel).
pub fn describe_scope(sc: &Scope, cgroup_path: Option<PathBuf>) -> String {
    let mut parts = Vec::new();
    if sc.flags & scope::ALL != 0 {
        parts.push("every process".to_string());
    }
    if sc.flags & scope::CGROUP != 0 {
        let path = cgroup_path
            .or_else(|| Cgroup::find_by_id(sc.cgroup_id))
            .map_or_else(|| "(removed)".to_string(), |p| p.display().to_string());
        parts.push(format!(
            "cgroup {path} and below (id {}, level {})",
            sc.cgroup_id, sc.cgroup_level
        ));
    }
    if sc.flags & scope::PID != 0 {
        let pids: Vec<String> = sc.pids[..sc.n_pids as usize]
            .iter()
            .map(u32::to_string)
            .collect();
        parts.push(format!("pid {}", pids.join("|")));
    }
    if sc.flags & scope::UID != 0 {
        parts.push(format!("uid {}", sc.uid));
    }
    if sc.flags & scope::COMM != 0 {
        let names: Vec<String> = sc.comms[..sc.n_comms as usize]
            .iter()
            .map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            })
            .collect();
        parts.push(format!("comm {}", names.join("|")));
    }
    if parts.is_empty() {
        parts.push("nothing".to_string());
    }
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SelectArgs {
        SelectArgs::default()
    }

    #[test]
    fn tokens_are_strict_hex() {
        assert_eq!(parse_token("ABCD"), Ok(0xabcd));
        assert_eq!(parse_token("0x5c0089f8"), Ok(0x5c0089f8));
        for bad in ["+1", "0x0x1", "", "0x", "123456789", "xyz", "-1", " 1"] {
            assert!(parse_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn process_flags_land_in_one_scope_for_both_consumers() {
        let me = std::process::id();
        let a = SelectArgs {
            pid: vec![me, me],
            comm: vec!["curl".into(), "iperf3".into()],
            uid: Some(1000),
            ..args()
        };
        let t = Selector::for_tracing(&a).unwrap();
        let u = Selector::for_upgrade(&a, false).unwrap();
        assert_eq!(t.scope, u.scope, "one selector, one scope");
        assert_eq!(t.config().scope, u.policy(false).scope);
        assert_eq!(t.scope.flags, scope::PID | scope::COMM | scope::UID);
        assert_eq!(
            (t.scope.n_pids, t.scope.pids[0]),
            (1, me),
            "duplicates folded"
        );
        assert_eq!(&t.scope.comms[1][..7], b"iperf3\0");
        assert_eq!(
            t.describe(),
            format!("pid {me} and uid 1000 and comm curl|iperf3")
        );
        // No process flag: the tracer shows everything, the upgrade refuses.
        assert_eq!(Selector::for_tracing(&args()).unwrap().scope, Scope::ALL);
        assert_eq!(
            Selector::for_upgrade(&args(), false),
            Err(SelectError::NoScope)
        );
        assert_eq!(
            Selector::for_upgrade(&args(), true).unwrap().scope,
            Scope::ALL
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |a: SelectArgs| Selector::for_tracing(&a).unwrap_err();
        assert!(matches!(
            bad(SelectArgs {
                pid: vec![u32::MAX - 1],
                ..args()
            }),
            SelectError::NoProcess(_)
        ));
        assert!(matches!(
            bad(SelectArgs {
                comm: vec!["sixteen-bytes-xx".into()],
                ..args()
            }),
            SelectError::Comm(_)
        ));
        assert!(matches!(
            bad(SelectArgs {
                comm: vec![String::new()],
                ..args()
            }),
            SelectError::Comm(_)
        ));
        assert!(matches!(
            bad(SelectArgs {
                comm: (0..9).map(|i| format!("c{i}")).collect(),
                ..args()
            }),
            SelectError::TooMany { flag: "comm", .. }
        ));
        for ns in ["", "0", "12345", "/etc/passwd", "../../proc/1/ns/net"] {
            assert!(
                matches!(
                    bad(SelectArgs {
                        netns: vec![ns.into()],
                        ..args()
                    }),
                    SelectError::Netns { .. }
                ),
                "{ns:?}"
            );
        }
        for cg in ["/no/such/cgroup-xyz", "../../etc", "/tmp"] {
            assert!(
                matches!(
                    bad(SelectArgs {
                        cgroup: Some(cg.into()),
                        ..args()
                    }),
                    SelectError::Cgroup(_)
                ),
                "{cg:?}"
            );
        }
        assert!(matches!(
            bad(SelectArgs {
                token: vec!["+1".into()],
                ..args()
            }),
            SelectError::Token(_)
        ));
        // A thread id is not a process id.
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(matches!(
            bad(SelectArgs {
                pid: vec![tid],
                ..args()
            }),
            SelectError::Thread { .. }
        ));
        stop_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn connection_flags_are_not_for_the_upgrade() {
        let a = SelectArgs {
            port: vec![80],
            ..args()
        };
        assert_eq!(
            Selector::for_upgrade(&a, true),
            Err(SelectError::NotForUpgrade("port"))
        );
        let t = Selector::for_tracing(&SelectArgs {
            port: vec![80, 443],
            addr: vec!["::ffff:10.0.0.1".parse().unwrap()],
            ipv6: true,
            ..args()
        })
        .unwrap();
        assert_eq!(t.conn.ports, [80, 443]);
        assert_eq!(
            t.conn.addrs,
            ["10.0.0.1".parse::<IpAddr>().unwrap()],
            "v4-mapped unmapped"
        );
        assert_eq!(t.conn.family, Some(Family::Ipv6));
    }
}
