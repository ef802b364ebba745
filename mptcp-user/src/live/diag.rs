//! Live per-subflow counters from `sock_diag` (NETLINK_INET_DIAG, what `ss -ti` reads): one
//! dump of the TCP sockets of a network namespace, with `tcp_info` (INET_DIAG_INFO) for each.
//! MPTCP subflows are TCP sockets, so they are in the dump; the state matches them to the
//! traced subflows by 4-tuple.
//!
//! The sock_diag requests themselves are in [`crate::sys::sockdiag`], shared with the tracer's
//! start-up snapshot.

use std::collections::HashMap;

pub use crate::sys::sockdiag::{parse_tcp_info, NetnsDiag, SockInfo};

/// One sock_diag socket per namespace, opened on demand.
#[derive(Default)]
pub struct Poller {
    socks: HashMap<u32, NetnsDiag>,
}

impl Poller {
    /// The sock_diag socket of each namespace in `netns` that can be reached, opened on first
    /// use; the sockets of namespaces no longer asked for are closed. Namespaces that cannot be
    /// reached are skipped (and logged at debug level).
    pub fn reach(&mut self, netns: &[u32]) -> impl Iterator<Item = (u32, &mut NetnsDiag)> {
        let missing: Vec<u32> = netns
            .iter()
            .copied()
            .filter(|n| !self.socks.contains_key(n))
            .collect();
        if !missing.is_empty() {
            let files = crate::sys::netns::all();
            for n in missing {
                match files.get(&n).map(|p| NetnsDiag::open(p)) {
                    Some(Ok(d)) => {
                        self.socks.insert(n, d);
                    }
                    Some(Err(e)) => log::debug!("sock_diag in netns {n}: {e}"),
                    None => log::debug!("no file names netns {n}: no sock_diag there"),
                }
            }
        }
        self.socks.retain(|n, _| netns.contains(n));
        self.socks.iter_mut().map(|(n, d)| (*n, d))
    }

    /// Dumps each namespace in `netns` that can be reached (see [`Poller::reach`]).
    pub fn poll(&mut self, netns: &[u32]) -> Vec<(u32, Vec<SockInfo>)> {
        let mut out = Vec::new();
        for (n, d) in self.reach(netns) {
            match d.dump() {
                Ok(v) => out.push((n, v)),
                Err(e) => log::debug!("sock_diag dump of netns {n}: {e}"),
            }
        }
        out
    }
}
