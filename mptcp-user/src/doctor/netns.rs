//! Per-namespace checks: MPTCP enabled, the path manager, its limits and endpoints, and the
//! misconfigurations that leave a connection with one subflow. Facts are read on a short-lived
//! thread inside the namespace ([`Facts::read`]); [`judge`] turns them into verdicts.

use std::{fs, net::IpAddr, path::Path};

use super::{
    net::{link_name, Addr, NetState},
    Check, NetnsRef, Status,
};
use crate::pm_config::{flag, Endpoint, PmConfig};

/// `MPTCP_PM_SUBFLOWS_MAX`: the kernel refuses larger limits.
const SUBFLOWS_MAX: usize = 8;

/// What was read in one namespace; each part fails on its own.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `net.mptcp.enabled`; `Err` when the file is missing (no MPTCP) or unreadable.
    pub enabled: Result<String, String>,
    /// The path manager: `net.mptcp.path_manager` (6.15+) or `net.mptcp.pm_type` (5.19+).
    pub path_manager: Option<PathManager>,
    pub pm: Result<PmConfig, String>,
    pub net: Result<NetState, String>,
    /// ADD_ADDRs the peers of this namespace's connections sent (MPTcpExt `AddAddr`, since the
    /// namespace was created); `None` when the kernel does not say.
    pub add_addr_received: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathManager {
    /// The sysctl it came from and its value, as read.
    pub sysctl: &'static str,
    pub value: String,
    pub userspace: bool,
}

fn sysctl(key: &str) -> Result<String, String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

impl Facts {
    /// Reads the facts of the namespace this thread is in. (/proc/sys/net answers for the
    /// reading thread's namespace.)
    pub fn here() -> Facts {
        let mut f = Facts::here_without_sockets();
        if let Ok(net) = &mut f.net {
            net.tcp = super::net::tcp_sockets();
        }
        f
    }

    /// All but the TCP sockets (see [`NetState::read_without_sockets`]): what the tracer's
    /// diagnosis reads for every connection it judges.
    pub fn here_without_sockets() -> Facts {
        let path_manager = match sysctl("net.mptcp.path_manager") {
            Ok(v) => Some(PathManager {
                sysctl: "net.mptcp.path_manager",
                userspace: v == "userspace",
                value: v,
            }),
            Err(_) => sysctl("net.mptcp.pm_type").ok().map(|v| PathManager {
                sysctl: "net.mptcp.pm_type",
                userspace: v == "1",
                value: v,
            }),
        };
        Facts {
            enabled: sysctl("net.mptcp.enabled"),
            path_manager,
            pm: crate::pm_config::query().map_err(|e| e.to_string()),
            net: NetState::read_without_sockets().map_err(|e| format!("rtnetlink: {e}")),
            add_addr_received: crate::sys::netstat::here()
                .ok()
                .and_then(|c| c.get("AddAddr").copied()),
        }
    }

    /// Reads them inside the namespace behind `path` (this thread enters it and comes back).
    pub fn read(path: &Path) -> Result<Facts, String> {
        Facts::read_with(path, Facts::here)
    }

    /// [`Facts::read`] with `here` (e.g. [`Facts::here_without_sockets`]).
    pub fn read_with(path: &Path, here: fn() -> Facts) -> Result<Facts, String> {
        crate::sys::netns::run_in(path, here).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Reads and judges one namespace; `None` when it vanished meanwhile (its last process exited
/// or it was deleted): a namespace that no longer exists has nothing to fix.
pub fn checks(ns: &NetnsRef) -> Option<Vec<Check>> {
    // Our own namespace needs no setns (which needs CAP_SYS_ADMIN): read it on a thread as is.
    let facts = if ns.current {
        std::thread::scope(|s| s.spawn(Facts::here).join())
            .map_err(|_| "namespace thread panicked".to_string())
    } else {
        Facts::read(&ns.path)
    };
    match facts {
        Ok(f) => Some(judge(ns, &f)),
        Err(_) if !ns.path.exists() => None,
        Err(e) => Some(vec![Check::netns(
            ns,
            "netns",
            Status::Fail,
            format!("cannot enter the namespace: {e}"),
        )
        .fix("sudo mptcp-trace doctor")]),
    }
}

/// Whether a namespace accepts or opens connections, from its TCP sockets right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Listening sockets and no connection of its own.
    Server,
    /// Connections of its own and no listening socket.
    Client,
    Both,
    /// Neither: nothing to tell from.
    Unknown,
}

fn role(net: &NetState) -> (Role, String) {
    let ports = net.listening_ports();
    let out = net.outgoing();
    let ports_s = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match (ports.is_empty(), out) {
        (false, 0) => (
            Role::Server,
            format!("accepts connections (listening on TCP port {ports_s}), opens none"),
        ),
        (true, n) if n > 0 => (
            Role::Client,
            format!("opens connections ({n} outgoing), listens on no port"),
        ),
        (false, n) => (
            Role::Both,
            format!("accepts connections (port {ports_s}) and opens them ({n} outgoing)"),
        ),
        (true, _) => (
            Role::Unknown,
            "unknown: no listening socket and no connection right now".into(),
        ),
    }
}

fn describe(e: &Endpoint, net: Option<&NetState>) -> String {
    let mut s = format!("id {}", e.id);
    if let Some(a) = e.addr {
        s += &format!(" {a}");
    }
    if let Some(p) = e.port {
        s += &format!(" port {p}");
    }
    for f in e.flag_names() {
        s += &format!(" {f}");
    }
    if let Some(i) = e.ifindex {
        let name = net.map_or_else(|| format!("ifindex {i}"), |n| link_name(&n.links, i));
        s += &format!(" dev {name}");
    }
    s
}

/// `ip mptcp endpoint add …` re-creating `e` with `flags` instead of its own.
fn endpoint_add(e: &Endpoint, net: &NetState, names: &[&str]) -> String {
    let mut s = format!(
        "mptcp endpoint add {}",
        e.addr.map(|a| a.to_string()).unwrap_or_default()
    );
    if let Some(p) = e.port {
        s += &format!(" port {p}");
    }
    if let Some(i) = e.ifindex {
        s += &format!(" dev {}", link_name(&net.links, i));
    }
    s += &format!(" id {}", e.id);
    for n in names {
        s += &format!(" {n}");
    }
    s
}

/// Turns a namespace's facts into verdicts.
pub fn judge(ns: &NetnsRef, f: &Facts) -> Vec<Check> {
    let mut v = Vec::new();
    let c = |name: &str, status, detail: String| Check::netns(ns, name, status, detail);

    match &f.enabled {
        Ok(x) if x == "1" => v.push(c(
            "mptcp_enabled",
            Status::Ok,
            "net.mptcp.enabled = 1".into(),
        )),
        Ok(x) => v.push(
            c(
                "mptcp_enabled",
                Status::Fail,
                format!(
                    "net.mptcp.enabled = {x}: socket(…, IPPROTO_MPTCP) fails here \
                     (ENOPROTOOPT) and MP_CAPABLE SYNs from peers are answered as plain TCP"
                ),
            )
            .fix(ns.sysctl("net.mptcp.enabled=1")),
        ),
        Err(e) => {
            v.push(c(
                "mptcp_enabled",
                Status::Fail,
                format!(
                    "no MPTCP in this kernel ({e}): it needs CONFIG_MPTCP=y; no command fixes that"
                ),
            ));
            return v;
        }
    }

    let userspace = match &f.path_manager {
        Some(pm) if pm.userspace => {
            let kernel = if pm.sysctl == "net.mptcp.pm_type" {
                "net.mptcp.pm_type=0"
            } else {
                "net.mptcp.path_manager=kernel"
            };
            v.push(
                c(
                    "path_manager",
                    Status::Warn,
                    format!(
                        "userspace ({} = {}): the kernel opens no subflow and announces no \
                         address by itself, a daemon (mptcpd) must; the endpoints and limits \
                         below are not used. To let the kernel do it:",
                        pm.sysctl, pm.value
                    ),
                )
                .fix(ns.sysctl(kernel)),
            );
            true
        }
        Some(pm) => {
            v.push(c(
                "path_manager",
                Status::Ok,
                format!("in-kernel ({} = {})", pm.sysctl, pm.value),
            ));
            false
        }
        None => {
            v.push(c(
                "path_manager",
                Status::Ok,
                "in-kernel (this kernel has no other: no net.mptcp.pm_type)".into(),
            ));
            false
        }
    };

    let pm = match &f.pm {
        Ok(pm) => pm,
        Err(e) => {
            v.push(c(
                "pm_config",
                Status::Fail,
                format!("cannot read the path manager's limits and endpoints (generic netlink mptcp_pm): {e}"),
            ));
            return v;
        }
    };
    let net = match &f.net {
        Ok(n) => n,
        Err(e) => {
            v.push(c(
                "interfaces",
                Status::Fail,
                format!("cannot read interfaces, addresses and routes: {e}"),
            ));
            return v;
        }
    };
    let (role, role_detail) = role(net);
    v.push(c("role", Status::Ok, role_detail));

    let l = pm.limits;
    let eps = &pm.endpoints;
    let n_subflow = eps.iter().filter(|e| e.has(flag::SUBFLOW)).count();
    let not_used = "not used by the userspace path manager".to_string();

    // Limits.
    if userspace {
        v.push(c("subflows_limit", Status::Ok, not_used.clone()));
        v.push(c("add_addr_accepted", Status::Ok, not_used.clone()));
    } else {
        let want = eps.len().clamp(2, SUBFLOWS_MAX);
        let set_subflows = |n: usize| ns.ip(&format!("mptcp limits set subflow {n}"));
        let sub = if l.subflows == 0 && !eps.is_empty() {
            c(
                "subflows_limit",
                Status::Fail,
                format!(
                    "subflows 0 with {} endpoint(s): no extra subflow is opened or accepted, \
                     the endpoints are never used",
                    eps.len()
                ),
            )
            .fix(set_subflows(want))
        } else if l.subflows == 0 {
            let server = matches!(role, Role::Server | Role::Both);
            c(
                "subflows_limit",
                if server { Status::Fail } else { Status::Warn },
                if server {
                    "subflows 0: every MP_JOIN from this namespace's clients is rejected \
                     (MPJoinRejected), their connections keep one subflow"
                        .to_string()
                } else {
                    "subflows 0: no extra subflow is opened or accepted here".to_string()
                },
            )
            .fix(set_subflows(want))
        } else if (l.subflows as usize) < n_subflow {
            c(
                "subflows_limit",
                Status::Warn,
                format!(
                    "subflows {} < {n_subflow} subflow endpoints: only the first {} are used",
                    l.subflows, l.subflows
                ),
            )
            .fix(set_subflows(n_subflow.min(SUBFLOWS_MAX)))
        } else {
            c(
                "subflows_limit",
                Status::Ok,
                format!("subflows {} ({} endpoint(s))", l.subflows, eps.len()),
            )
        };
        v.push(sub);
        v.push(if l.add_addr_accepted == 0 {
            match f.add_addr_received {
                // Peers did announce addresses here: they were ignored.
                Some(n) if n > 0 => c(
                    "add_addr_accepted",
                    Status::Fail,
                    format!(
                        "add_addr_accepted 0 while peers announced {n} address(es) here \
                         (MPTcpExt AddAddr {n}): they were ignored, no subflow went to them"
                    ),
                ),
                _ => c(
                    "add_addr_accepted",
                    Status::Warn,
                    "add_addr_accepted 0: addresses the peers announce (ADD_ADDR) are ignored, \
                     so no subflow goes to a server's other addresses"
                        .into(),
                ),
            }
            .fix(ns.ip("mptcp limits set add_addr_accepted 2"))
        } else {
            c(
                "add_addr_accepted",
                Status::Ok,
                format!("add_addr_accepted {}", l.add_addr_accepted),
            )
        });
    }

    // Each endpoint: its address on an up interface with a route.
    for e in eps {
        v.push(endpoint_check(ns, e, net));
    }

    if userspace {
        v.push(c("signal_endpoints", Status::Ok, not_used.clone()));
        v.push(c("subflow_endpoint", Status::Ok, not_used));
        return v;
    }

    // `signal` endpoints where nobody listens.
    let signal: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| e.has(flag::SIGNAL) && !e.has(flag::SUBFLOW))
        .collect();
    if signal.is_empty() {
        v.push(c(
            "signal_endpoints",
            Status::Ok,
            "no signal-only endpoint".into(),
        ));
    } else {
        let ids = signal
            .iter()
            .map(|e| describe(e, Some(net)))
            .collect::<Vec<_>>()
            .join("; ");
        let (_, ifaces, primary) = paths(net);
        let on_first = |e: &Endpoint| ifaces.len() >= 2 && endpoint_iface(e, net) == primary;
        let advice = if signal.iter().all(|e| on_first(e)) {
            "its address is the first path's own, so it adds no path from here"
        } else {
            "to use the address for a second path from here it must be a `subflow` endpoint"
        };
        let fix = signal
            .iter()
            .map(|e| {
                let delete = ns.ip(&format!("mptcp endpoint delete id {}", e.id));
                // On the first path's interface a `subflow` endpoint would be skipped anyway.
                if on_first(e) {
                    return delete;
                }
                let mut keep = vec!["subflow"];
                keep.extend(
                    e.flag_names()
                        .into_iter()
                        .filter(|n| matches!(*n, "backup" | "fullmesh")),
                );
                format!("{delete} && {}", ns.ip(&endpoint_add(e, net, &keep)))
            })
            .collect::<Vec<_>>()
            .join(" && ");
        v.push(match role {
            Role::Server | Role::Both => c(
                "signal_endpoints",
                Status::Ok,
                format!("{ids}: announced to the clients of this namespace's listeners"),
            ),
            Role::Client => c(
                "signal_endpoints",
                Status::Fail,
                format!(
                    "{ids}: this namespace only connects, and a `signal` endpoint only \
                     announces the address to its servers, which open no subflow back by \
                     default; {advice}"
                ),
            )
            .fix(fix),
            Role::Unknown => c(
                "signal_endpoints",
                Status::Warn,
                format!(
                    "{ids}: cannot tell whether this namespace accepts connections (no \
                     listening socket and no connection right now). `signal` is for a host \
                     that accepts connections; if this one only connects: {advice}"
                ),
            )
            .fix(fix),
        });
    }

    // No `subflow` endpoint although a second path exists.
    v.push(subflow_endpoint_check(ns, eps, net, role, n_subflow));
    v
}

pub fn endpoint_check(ns: &NetnsRef, e: &Endpoint, net: &NetState) -> Check {
    let name = format!("endpoint:{}", e.id);
    let what = describe(e, Some(net));
    let c = |status, detail: String| Check::netns(ns, &name, status, format!("{what}: {detail}"));
    let Some(addr) = e.addr else {
        return c(Status::Warn, "no address".into());
    };
    let holders = net.holders(&addr);
    let Some(holder) = e
        .ifindex
        .and_then(|i| holders.iter().find(|a| a.index == i))
        .or(holders.first())
        .copied()
    else {
        let dev = e
            .ifindex
            .map_or_else(|| "DEV".to_string(), |i| link_name(&net.links, i));
        return c(
            Status::Fail,
            format!(
                "{addr} is on no interface of this namespace, the path manager cannot use it \
                 (or give it back to an interface: {})",
                ns.ip(&format!("addr add {addr}/PREFIX dev {dev}"))
            ),
        )
        .fix(ns.ip(&format!("mptcp endpoint delete id {}", e.id)));
    };
    let index = e.ifindex.unwrap_or(holder.index);
    let dev = link_name(&net.links, index);
    let Some(link) = net.link(index) else {
        return c(
            Status::Fail,
            format!("its interface (ifindex {index}) is gone"),
        )
        .fix(ns.ip(&format!("mptcp endpoint delete id {}", e.id)));
    };
    if !link.is_up() {
        return c(Status::Fail, format!("{dev} is down")).fix(ns.ip(&format!("link set {dev} up")));
    }
    if !link.has_carrier() {
        return c(
            Status::Fail,
            format!(
                "{dev} is up but has no carrier (NO-CARRIER: its other end is down or \
                 unplugged); nothing in this namespace fixes that"
            ),
        );
    }
    let routes = net.routes_via(index, &addr);
    let Some(route) = routes.first() else {
        return c(
            Status::Fail,
            format!("no route out of {dev} for {addr}: subflows from it cannot leave"),
        )
        .fix(ns.ip(&format!("route add {} dev {dev}", holder.network())));
    };
    let mut detail = format!("on {dev} (up), route {}", route.describe(&net.links));
    if holder.index != index {
        detail += &format!(
            " (the address itself is on {})",
            link_name(&net.links, holder.index)
        );
    }
    c(Status::Ok, detail)
}

/// The namespace's paths: usable addresses on up, non-loopback interfaces, those interfaces,
/// and the first path's interface (the default route's, else the lowest-numbered one).
fn paths(net: &NetState) -> (Vec<&Addr>, Vec<u32>, Option<u32>) {
    let usable: Vec<&Addr> = net
        .addrs
        .iter()
        .filter(|a| a.is_usable())
        .filter(|a| {
            net.link(a.index)
                .is_some_and(|l| l.is_up() && !l.is_loopback())
        })
        .collect();
    let mut ifaces: Vec<u32> = usable.iter().map(|a| a.index).collect();
    ifaces.sort();
    ifaces.dedup();
    let primary = net
        .routes
        .iter()
        .find(|r| r.dst.is_none() && r.table == 254 && !r.oifs.is_empty())
        .map(|r| r.oifs[0])
        .filter(|i| ifaces.contains(i))
        .or(ifaces.first().copied());
    (usable, ifaces, primary)
}

/// The interface an endpoint's subflows leave from: its `dev`, else the one with its address.
fn endpoint_iface(e: &Endpoint, net: &NetState) -> Option<u32> {
    e.ifindex.or_else(|| {
        e.addr
            .and_then(|a| net.holders(&a).first().map(|h| h.index))
    })
}

fn subflow_endpoint_check(
    ns: &NetnsRef,
    eps: &[Endpoint],
    net: &NetState,
    role: Role,
    n_subflow: usize,
) -> Check {
    let c = |status, detail: String| Check::netns(ns, "subflow_endpoint", status, detail);
    let (usable, ifaces, primary) = paths(net);
    let (Some(primary), true) = (primary, ifaces.len() >= 2) else {
        return c(
            Status::Ok,
            if n_subflow > 0 {
                format!("{n_subflow} subflow endpoint(s)")
            } else {
                "no subflow endpoint, and no second address on another up interface: one path"
                    .into()
            },
        );
    };
    let (on_first, elsewhere): (Vec<&Endpoint>, Vec<&Endpoint>) = eps
        .iter()
        .filter(|e| e.has(flag::SUBFLOW))
        .partition(|e| endpoint_iface(e, net) == Some(primary));
    if !elsewhere.is_empty() {
        return c(Status::Ok, format!("{n_subflow} subflow endpoint(s)"));
    }
    let mut none = "no subflow endpoint".to_string();
    if !on_first.is_empty() {
        none = format!(
            "no subflow endpoint off the first path ({} on {} only, whose address the first \
             subflow already uses)",
            on_first
                .iter()
                .map(|e| format!("id {}", e.id))
                .collect::<Vec<_>>()
                .join(", "),
            link_name(&net.links, primary)
        );
    }
    let mut candidates: Vec<&Addr> = usable
        .iter()
        .filter(|a| a.index != primary)
        .filter(|a| !eps.iter().any(|e| e.addr == Some(a.addr)))
        .copied()
        .collect();
    // IPv4 first, as the in-kernel path manager tries endpoints in order.
    candidates.sort_by_key(|a| (a.index, matches!(a.addr, IpAddr::V6(_))));
    let Some(second) = candidates.first() else {
        return c(
            Status::Ok,
            "no subflow endpoint; the other interfaces' addresses are endpoints already".into(),
        );
    };
    let dev = link_name(&net.links, second.index);
    let first = link_name(&net.links, primary);
    let fix = ns.ip(&format!(
        "mptcp endpoint add {} dev {dev} subflow",
        second.addr
    ));
    match role {
        Role::Server => c(
            Status::Ok,
            format!(
                "{none}: fine for a namespace that only accepts connections (its clients open \
                 the extra subflows); {} on {dev} could be announced to them with a `signal` \
                 endpoint",
                second.addr
            ),
        ),
        Role::Client | Role::Both => c(
            Status::Fail,
            format!(
                "{none}, although {} on {dev} is a second path besides {first}: connections \
                 from here keep one subflow",
                second.addr
            ),
        )
        .fix(fix),
        Role::Unknown => c(
            Status::Warn,
            format!(
                "{none}, although {} on {dev} is a second path besides {first}; cannot tell \
                 whether this namespace opens connections (no listening socket and no \
                 connection right now): if it does, they keep one subflow",
                second.addr
            ),
        )
        .fix(fix),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::net::{Link, Route, TcpSock, TCP_ESTABLISHED, TCP_LISTEN};
    use super::*;
    use crate::pm_config::Limits;
    use std::path::PathBuf;

    const UP: u32 = 0x1 | 0x10000;

    fn ns() -> NetnsRef {
        NetnsRef {
            name: Some("c".into()),
            inode: 1,
            pid: None,
            current: false,
            path: PathBuf::from("/run/netns/c"),
        }
    }

    fn addr(index: u32, a: &str, p: u8) -> Addr {
        Addr {
            index,
            addr: a.parse().unwrap(),
            prefix_len: p,
            flags: 0,
        }
    }

    fn route(index: u32, dst: &str, len: u8) -> Route {
        Route {
            family: libc::AF_INET as u8,
            dst: Some(dst.parse().unwrap()),
            dst_len: len,
            table: 254,
            oifs: vec![index],
        }
    }

    /// The seed's client: red 10.0.0.2 on ifindex 2, blue 192.168.0.2 on ifindex 3, the blue
    /// address as a subflow endpoint, limits 2/2.
    /// The seed's client, all well (also the diagnosis stage's tests start from it).
    pub(crate) fn client() -> Facts {
        Facts {
            enabled: Ok("1".into()),
            path_manager: Some(PathManager {
                sysctl: "net.mptcp.pm_type",
                value: "0".into(),
                userspace: false,
            }),
            pm: Ok(PmConfig {
                limits: Limits {
                    subflows: 2,
                    add_addr_accepted: 2,
                },
                endpoints: vec![Endpoint {
                    id: 1,
                    addr: Some("192.168.0.2".parse().unwrap()),
                    port: None,
                    flags: flag::SUBFLOW,
                    ifindex: Some(3),
                }],
            }),
            net: Ok(NetState {
                links: vec![
                    Link {
                        index: 1,
                        name: "lo".into(),
                        flags: UP | 0x8,
                    },
                    Link {
                        index: 2,
                        name: "red-client".into(),
                        flags: UP,
                    },
                    Link {
                        index: 3,
                        name: "blue-client".into(),
                        flags: UP,
                    },
                ],
                addrs: vec![
                    addr(1, "127.0.0.1", 8),
                    addr(2, "10.0.0.2", 24),
                    addr(3, "192.168.0.2", 24),
                ],
                routes: vec![route(2, "10.0.0.0", 24), route(3, "192.168.0.0", 24)],
                tcp: vec![],
            }),
            add_addr_received: Some(0),
        }
    }

    fn verdicts(f: &Facts) -> Vec<(String, Status, Option<String>)> {
        judge(&ns(), f)
            .into_iter()
            .map(|c| (c.name, c.status, c.fix))
            .collect()
    }

    fn get(f: &Facts, name: &str) -> Check {
        judge(&ns(), f)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
    }

    fn pm(f: &mut Facts) -> &mut PmConfig {
        f.pm.as_mut().unwrap()
    }

    fn net(f: &mut Facts) -> &mut NetState {
        f.net.as_mut().unwrap()
    }

    #[test]
    fn the_seed_client_is_all_ok() {
        let v = verdicts(&client());
        assert!(v.iter().all(|(_, s, _)| *s == Status::Ok), "{v:?}");
        let ep = get(&client(), "endpoint:1");
        assert_eq!(
            ep.detail,
            "id 1 192.168.0.2 subflow dev blue-client: on blue-client (up), route \
             192.168.0.0/24 dev blue-client"
        );
    }

    #[test]
    fn mptcp_disabled_fails_with_the_sysctl() {
        let mut f = client();
        f.enabled = Ok("0".into());
        let c = get(&f, "mptcp_enabled");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip netns exec c sysctl -w net.mptcp.enabled=1")
        );
        f.enabled = Err("missing".into());
        assert_eq!(
            judge(&ns(), &f).len(),
            1,
            "nothing else to check without MPTCP"
        );
    }

    #[test]
    fn subflows_zero_with_endpoints_fails() {
        let mut f = client();
        pm(&mut f).limits.subflows = 0;
        let c = get(&f, "subflows_limit");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.as_deref(), Some("ip -n c mptcp limits set subflow 2"));
        // Without endpoints: a server rejects every join (fail), otherwise a warning.
        pm(&mut f).endpoints.clear();
        assert_eq!(get(&f, "subflows_limit").status, Status::Warn);
        net(&mut f).tcp = vec![TcpSock {
            local_port: 4321,
            remote_port: 0,
            state: TCP_LISTEN,
        }];
        assert_eq!(get(&f, "subflows_limit").status, Status::Fail);
    }

    #[test]
    fn add_addr_accepted_zero_warns_and_fails_once_peers_announced() {
        let mut f = client();
        pm(&mut f).limits.add_addr_accepted = 0;
        let c = get(&f, "add_addr_accepted");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip -n c mptcp limits set add_addr_accepted 2")
        );
        f.add_addr_received = Some(3);
        let c = get(&f, "add_addr_accepted");
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
        assert!(c.detail.contains("MPTcpExt AddAddr 3"), "{}", c.detail);
        assert!(c.fix.is_some());
    }

    #[test]
    fn endpoint_on_a_down_interface_or_without_route_or_address_fails() {
        let mut f = client();
        net(&mut f).links[2].flags = 0;
        let c = get(&f, "endpoint:1");
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
        assert_eq!(c.fix.as_deref(), Some("ip -n c link set blue-client up"));

        let mut f = client();
        net(&mut f).links[2].flags = 0x1;
        let c = get(&f, "endpoint:1");
        assert!(c.detail.contains("no carrier") && c.fix.is_none(), "{c:?}");

        let mut f = client();
        net(&mut f).routes.retain(|r| r.oifs != [3]);
        let c = get(&f, "endpoint:1");
        assert_eq!(
            c.fix.as_deref(),
            Some("ip -n c route add 192.168.0.0/24 dev blue-client")
        );

        let mut f = client();
        pm(&mut f).endpoints[0].addr = Some("192.168.0.99".parse().unwrap());
        let c = get(&f, "endpoint:1");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.as_deref(), Some("ip -n c mptcp endpoint delete id 1"));
    }

    fn outgoing() -> Vec<TcpSock> {
        vec![TcpSock {
            local_port: 50000,
            remote_port: 4321,
            state: TCP_ESTABLISHED,
        }]
    }

    #[test]
    fn a_client_without_subflow_endpoint_fails_and_an_unknown_role_warns() {
        let mut f = client();
        pm(&mut f).endpoints.clear();
        let c = get(&f, "subflow_endpoint");
        assert_eq!(c.status, Status::Warn, "no socket: role unknown");
        let fix = "ip -n c mptcp endpoint add 192.168.0.2 dev blue-client subflow";
        assert_eq!(c.fix.as_deref(), Some(fix));
        net(&mut f).tcp = outgoing();
        let c = get(&f, "subflow_endpoint");
        assert_eq!((c.status, c.fix.as_deref()), (Status::Fail, Some(fix)));
        // A server (listening, nothing outgoing) needs none.
        net(&mut f).tcp = vec![TcpSock {
            local_port: 4321,
            remote_port: 0,
            state: TCP_LISTEN,
        }];
        assert_eq!(get(&f, "subflow_endpoint").status, Status::Ok);
        // One interface only: one path, nothing to say.
        let mut f = client();
        pm(&mut f).endpoints.clear();
        net(&mut f).tcp = outgoing();
        net(&mut f).addrs.retain(|a| a.index != 3);
        assert_eq!(get(&f, "subflow_endpoint").status, Status::Ok);
    }

    #[test]
    fn signal_endpoints_on_a_client_fail_and_warn_when_the_role_is_unknown() {
        let mut f = client();
        pm(&mut f).endpoints[0].flags = flag::SIGNAL | flag::BACKUP;
        let c = get(&f, "signal_endpoints");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "ip -n c mptcp endpoint delete id 1 && ip -n c mptcp endpoint add 192.168.0.2 \
                 dev blue-client id 1 subflow backup"
            )
        );
        net(&mut f).tcp = outgoing();
        assert_eq!(get(&f, "signal_endpoints").status, Status::Fail);
        net(&mut f).tcp.push(TcpSock {
            local_port: 8080,
            remote_port: 0,
            state: TCP_LISTEN,
        });
        assert_eq!(get(&f, "signal_endpoints").status, Status::Ok);
        // On the first path's own address it is only removed.
        let mut f = client();
        pm(&mut f).endpoints.push(Endpoint {
            id: 3,
            addr: Some("10.0.0.2".parse().unwrap()),
            port: None,
            flags: flag::SIGNAL,
            ifindex: Some(2),
        });
        assert_eq!(
            get(&f, "signal_endpoints").fix.as_deref(),
            Some("ip -n c mptcp endpoint delete id 3")
        );
    }

    #[test]
    fn a_subflow_endpoint_on_the_first_path_only_is_no_second_path() {
        let mut f = client();
        net(&mut f).tcp = outgoing();
        pm(&mut f).endpoints[0] = Endpoint {
            id: 3,
            addr: Some("10.0.0.2".parse().unwrap()),
            port: None,
            flags: flag::SUBFLOW,
            ifindex: None,
        };
        let c = get(&f, "subflow_endpoint");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("id 3 on red-client only"), "{}", c.detail);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip -n c mptcp endpoint add 192.168.0.2 dev blue-client subflow")
        );
    }

    #[test]
    fn userspace_path_manager_warns_and_skips_the_endpoint_rules() {
        let mut f = client();
        f.path_manager = Some(PathManager {
            sysctl: "net.mptcp.path_manager",
            value: "userspace".into(),
            userspace: true,
        });
        pm(&mut f).limits.subflows = 0;
        let c = get(&f, "path_manager");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("ip netns exec c sysctl -w net.mptcp.path_manager=kernel")
        );
        assert_eq!(get(&f, "subflows_limit").status, Status::Ok);
    }
}
