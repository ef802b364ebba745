//! The seed article's two-path test bed, in network namespaces: a client and a server joined by
//! a "red" path (10.0.0.0/24, fd00:0:0:10::/64) and a "blue" path (192.168.0.0/24,
//! fd00:0:0:192::/64), MPTCP limits 2/2 on both ends and the client's blue address as a
//! `subflow` endpoint. Used by `mptcp-trace demo` and by the integration tests.
//!
//! Namespace names carry a unique tag so several beds can coexist; everything is removed when
//! the [`TestBed`] is dropped.

use std::{fs, os::unix::fs::MetadataExt, process::Command};

use anyhow::{bail, Context, Result};

use crate::sys::netns;

pub const RED_SERVER_V4: &str = "10.0.0.1";
pub const RED_CLIENT_V4: &str = "10.0.0.2";
pub const BLUE_SERVER_V4: &str = "192.168.0.1";
pub const BLUE_CLIENT_V4: &str = "192.168.0.2";
pub const RED_SERVER_V6: &str = "fd00:0:0:10::1";
pub const RED_CLIENT_V6: &str = "fd00:0:0:10::2";
pub const BLUE_SERVER_V6: &str = "fd00:0:0:192::1";
pub const BLUE_CLIENT_V6: &str = "fd00:0:0:192::2";
/// Endpoint ids of the client's blue addresses (`ip mptcp endpoint show`).
pub const BLUE_V4_ENDPOINT_ID: u8 = 1;
pub const BLUE_V6_ENDPOINT_ID: u8 = 2;

/// Runs `ip` with the arguments, failing with its stderr.
/// `ip -n NETNS mptcp endpoint add ADDR [dev DEV] id ID FLAGS…`.
pub fn add_endpoint(
    netns: &str,
    addr: &str,
    dev: Option<&str>,
    id: u8,
    flags: &[&str],
) -> Result<()> {
    let id = id.to_string();
    let mut args = vec!["-n", netns, "mptcp", "endpoint", "add", addr];
    if let Some(d) = dev {
        args.extend(["dev", d]);
    }
    args.extend(["id", &id]);
    args.extend(flags);
    ip(&args).map(|_| ())
}

pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces wired as in the seed article.
#[derive(Debug)]
pub struct TestBed {
    pub client: String,
    pub server: String,
}

impl TestBed {
    /// Builds the bed. `tag` makes the names unique (`mptcp-client-<tag>`).
    pub fn create(tag: &str) -> Result<TestBed> {
        let bed = TestBed {
            client: format!("mptcp-client-{tag}"),
            server: format!("mptcp-server-{tag}"),
        };
        // Leftovers of a killed run with the same tag would make `ip netns add` fail.
        bed.remove();
        // From here on, dropping `bed` (also through `?`) removes whatever was made.
        ip(&["netns", "add", &bed.client])?;
        ip(&["netns", "add", &bed.server])?;
        let (c, s) = (bed.client.as_str(), bed.server.as_str());
        for (path, v4net, v6net) in [
            ("red", "10.0.0", "fd00:0:0:10"),
            ("blue", "192.168.0", "fd00:0:0:192"),
        ] {
            let cl = format!("{path}-client");
            let sv = format!("{path}-server");
            ip(&[
                "link", "add", &cl, "netns", c, "type", "veth", "peer", &sv, "netns", s,
            ])?;
            for (ns, dev, host) in [(s, &sv, "1"), (c, &cl, "2")] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v4net}.{host}/24"),
                    "dev",
                    dev,
                ])?;
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6net}::{host}/64"),
                    "dev",
                    dev,
                    "nodad",
                ])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        for ns in [c, s] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            sysctl(ns, "net.mptcp.enabled", "1")?;
            set_limits(ns, 2, 2)?;
        }
        add_endpoint(
            c,
            BLUE_CLIENT_V4,
            Some("blue-client"),
            BLUE_V4_ENDPOINT_ID,
            &["subflow"],
        )?;
        Ok(bed)
    }

    /// Replaces the client's IPv4 blue endpoint by its IPv6 one, for IPv6 connections. (The
    /// path manager tries endpoints in order, and an IPv6 connection does not get past a
    /// failed attempt from the IPv4 endpoint.)
    pub fn use_ipv6_endpoint(&self) -> Result<()> {
        let c = self.client.as_str();
        let v4 = BLUE_V4_ENDPOINT_ID.to_string();
        let v6 = BLUE_V6_ENDPOINT_ID.to_string();
        ip(&["-n", c, "mptcp", "endpoint", "delete", "id", &v4])?;
        let endpoint = [
            "mptcp",
            "endpoint",
            "add",
            BLUE_CLIENT_V6,
            "dev",
            "blue-client",
        ];
        ip(&[&["-n", c][..], &endpoint, &["id", &v6, "subflow"]].concat())?;
        // A subflow bound to blue-client needs a route to the server's red address on that
        // device; IPv4 assumes on-link for a bound device, IPv6 does not.
        let route = [
            "-6",
            "route",
            "add",
            "fd00:0:0:10::/64",
            "via",
            BLUE_SERVER_V6,
        ];
        ip(&[
            &["-n", c][..],
            &route,
            &["dev", "blue-client", "metric", "512"],
        ]
        .concat())?;
        Ok(())
    }

    /// Inode of a namespace: what the events' `netns` field holds.
    pub fn netns_inode(name: &str) -> Result<u32> {
        let m =
            fs::metadata(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
        Ok(m.ino() as u32)
    }

    fn remove(&self) {
        for ns in [&self.client, &self.server] {
            if fs::metadata(format!("/run/netns/{ns}")).is_ok() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// One more named namespace (another host on a path of the bed), removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        if fs::metadata(format!("/run/netns/{name}")).is_ok() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `ip -n NETNS mptcp limits set subflow N add_addr_accepted M`.
pub fn set_limits(netns: &str, subflows: u32, add_addr_accepted: u32) -> Result<()> {
    let (n, m) = (subflows.to_string(), add_addr_accepted.to_string());
    ip(&[
        "-n",
        netns,
        "mptcp",
        "limits",
        "set",
        "subflow",
        &n,
        "add_addr_accepted",
        &m,
    ])?;
    Ok(())
}

/// Sets `key` (`net.mptcp.enabled`, …) to `value` inside the named namespace.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, move || fs::write(&path, value))?
        .with_context(|| format!("{ns}: sysctl {key}"))?;
    Ok(())
}

/// Runs `f` on a thread that has entered the named network namespace: sockets it creates
/// live there. The caller's own namespace is untouched.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> Result<T> {
    let path = netns::named(ns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| netns::run_in(&path, f).with_context(|| format!("netns {ns}")))
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {ns} panicked"))?
    })
}

/// Like [`in_netns`], on a detached thread: for servers that outlive the call.
pub fn spawn_in_netns<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
    ns: &str,
    f: F,
) -> Result<std::thread::JoinHandle<T>> {
    netns::spawn_in(&netns::named(ns), f).with_context(|| format!("netns {ns}"))
}
