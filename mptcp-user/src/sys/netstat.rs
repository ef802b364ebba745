//! The MPTcpExt counters of a network namespace (what `nstat -a MPTcp*` shows): the lines
//! `MPTcpExt: NAME …` / `MPTcpExt: VALUE …` of /proc/net/netstat. /proc/thread-self/net answers
//! for the reading thread's namespace, so the file is read on a thread inside the namespace.

use std::{collections::BTreeMap, io, path::Path};

/// Counter name → value, as the kernel names them (`MPJoinRejected`, …).
pub type MptcpExt = BTreeMap<String, u64>;

/// Parses /proc/net/netstat: the `MPTcpExt:` header line and the value line after it.
/// Empty when the kernel has no MPTCP.
pub fn parse(text: &str) -> MptcpExt {
    let mut lines = text.lines().filter(|l| l.starts_with("MPTcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return MptcpExt::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect()
}

/// The counters of the calling thread's namespace.
pub fn here() -> io::Result<MptcpExt> {
    Ok(parse(&std::fs::read_to_string(
        "/proc/thread-self/net/netstat",
    )?))
}

/// The counters of the namespace behind `ns_file`, read on a short-lived thread inside it (the
/// caller's thread never changes namespace).
pub fn read(ns_file: &Path) -> io::Result<MptcpExt> {
    std::thread::scope(|s| {
        s.spawn(|| super::netns::run_in(ns_file, here)?)
            .join()
            .map_err(|_| io::Error::other("netstat reader panicked"))?
    })
}

/// What grew between `before` and `after`, by name, for the counters `pick` selects.
pub fn deltas(
    before: &MptcpExt,
    after: &MptcpExt,
    pick: impl Fn(&str) -> bool,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(n, _)| pick(n))
        .filter_map(|(n, v)| {
            let d = v.saturating_sub(before.get(n).copied().unwrap_or(0));
            (d > 0).then(|| (n.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mptcpext_pair_of_lines_is_read_by_name() {
        let text = "TcpExt: SyncookiesSent A\nTcpExt: 0 1\nMPTcpExt: MPCapableSYNRX MPJoinRejected\nMPTcpExt: 3 7\n";
        let m = parse(text);
        assert_eq!(m.get("MPJoinRejected"), Some(&7));
        assert_eq!(m.get("MPCapableSYNRX"), Some(&3));
        assert!(parse("TcpExt: A\nTcpExt: 1\n").is_empty());
        let after = parse("MPTcpExt: MPCapableSYNRX MPJoinRejected\nMPTcpExt: 3 9\n");
        assert_eq!(
            deltas(&m, &after, |n| n.starts_with("MPJoin")),
            [("MPJoinRejected".to_string(), 2)]
        );
    }
}
