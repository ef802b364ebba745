//! `mptcp-trace why [TOKEN] [--from FILE]`: per connection, its subflows and every
//! `conn_diagnosis`, from an NDJSON capture or from the files the running tracers keep
//! (`trace::why_file`).

use std::{
    io::{Read, Write},
    path::Path,
    process::ExitCode,
};

use crate::{
    cli::WhyArgs,
    event::{Data, Event, Side, Token},
    trace::why_file,
};

/// One line on stderr and exit status 2.
fn bad(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("mptcp-trace: {msg}");
    Ok(ExitCode::from(2))
}

pub fn run(args: WhyArgs) -> anyhow::Result<ExitCode> {
    let token = match args.token.as_deref().map(parse_token) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return bad(e),
    };
    let events = match &args.from {
        Some(path) => {
            let r: Box<dyn Read> = if path == Path::new("-") {
                Box::new(std::io::stdin())
            } else {
                match std::fs::File::open(path) {
                    Ok(f) => Box::new(f),
                    Err(e) => return bad(format!("{}: {e}", path.display())),
                }
            };
            match crate::capture::read(r, &path.display().to_string()) {
                Ok(v) => v,
                Err(e) => return bad(e),
            }
        }
        None => {
            let dir = Path::new(why_file::DIR);
            if let Err(e) = std::fs::read_dir(dir) {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    return bad(format!(
                        "{}: {e} (the tracers' diagnoses are root-only: sudo mptcp-trace why)",
                        dir.display()
                    ));
                }
            }
            let files = why_file::running(dir);
            if files.is_empty() {
                return bad(
                    "no tracer is running: start one (sudo mptcp-trace events) or read a \
                     capture: mptcp-trace why --from FILE",
                );
            }
            let mut all = Vec::new();
            // Two tracers watching the same connection wrote the same events, each stamped by
            // its own program run a few microseconds apart: shown once.
            let mut seen = std::collections::HashSet::new();
            for (_, f) in files {
                // A tracer that ended meanwhile took its file with it: nothing to read there.
                let Ok(file) = std::fs::File::open(&f) else {
                    continue;
                };
                match crate::capture::read(file, &f.display().to_string()) {
                    Ok(v) => all.extend(v.into_iter().filter(|e| seen.insert(identity(e)))),
                    Err(e) => return bad(e),
                }
            }
            all
        }
    };
    let (text, matched) = report(&events, token);
    let mut out = std::io::stdout().lock();
    if matched == 0 {
        match token {
            Some(t) => writeln!(out, "no connection with token or peer token {t}")?,
            None if args.from.is_some() => writeln!(out, "no MPTCP connection in the capture")?,
            None => writeln!(out, "no diagnosed connection yet")?,
        }
        out.flush()?;
        return Ok(if token.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    write!(out, "{text}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// An event without its stamps (`time`, `ts_ns`): what two tracers' copies of it share.
fn identity(e: &crate::event::Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("time");
        o.remove("ts_ns");
    }
    v.to_string()
}

fn parse_token(s: &str) -> Result<Token, String> {
    let lower = s.to_ascii_lowercase();
    serde_json::from_value(serde_json::Value::String(lower))
        .map_err(|_| format!("{s:?} is not a token (8 hex digits, e.g. 5c0089f8)"))
}

fn ep(a: std::net::IpAddr, p: u16) -> String {
    match a {
        std::net::IpAddr::V4(_) => format!("{a}:{p}"),
        std::net::IpAddr::V6(_) => format!("[{a}]:{p}"),
    }
}

/// The text for the connections (all, or the one `token` names) and how many there were.
pub fn report(events: &[Event], token: Option<Token>) -> (String, usize) {
    // Connections by (netns, token), in order of first appearance.
    let mut order: Vec<(Option<u32>, Token)> = Vec::new();
    let mut groups: std::collections::HashMap<(Option<u32>, Token), Vec<&Event>> =
        Default::default();
    for e in events {
        let Some(c) = e.conn() else { continue };
        let Some(t) = c.token else { continue };
        let key = (c.netns, t);
        groups
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(e);
    }
    let mut s = String::new();
    let mut n = 0;
    for key in order {
        let evs = &groups[&key];
        let peer = evs.iter().find_map(|e| e.conn().and_then(|c| c.peer_token));
        if let Some(t) = token {
            if key.1 != t && peer != Some(t) {
                continue;
            }
        }
        n += 1;
        let side = evs.iter().find_map(|e| match &e.data {
            Data::ConnCreated(d) => Some(d.side),
            Data::ConnExisting(d) => d.side,
            _ => None,
        });
        let first = evs.iter().find_map(|e| e.tuple());
        s += &format!("connection {}", key.1);
        if let Some(p) = peer {
            s += &format!(" (peer {p})");
        }
        if let Some(ns) = key.0 {
            s += &format!(" netns {ns}");
        }
        match side {
            Some(Side::Client) => s += " client",
            Some(Side::Server) => s += " server",
            None => {}
        }
        if let Some(t) = first {
            s += &format!(" {} → {}", ep(t.saddr, t.sport), ep(t.daddr, t.dport));
        }
        s += "\n";
        let mut diagnosed = false;
        for e in evs {
            match &e.data {
                Data::SubflowEstablished(d) => {
                    s += &format!(
                        "  {:<7} {} → {} established\n",
                        if d.subflow.join { "join" } else { "subflow" },
                        ep(d.tuple.saddr, d.tuple.sport),
                        ep(d.tuple.daddr, d.tuple.dport)
                    )
                }
                Data::SubflowFailed(d) => {
                    s += &format!(
                        "  {:<7} {} → {} failed: {}{}\n",
                        if d.subflow.join { "join" } else { "subflow" },
                        ep(d.tuple.saddr, d.tuple.sport),
                        ep(d.tuple.daddr, d.tuple.dport),
                        d.reason,
                        d.cause
                            .error
                            .as_ref()
                            .filter(|err| **err != d.reason)
                            .map_or(String::new(), |err| format!(" {err}"))
                    )
                }
                Data::SubflowClosed(d) => {
                    s += &format!(
                        "  {:<7} {} → {} closed: {}\n",
                        if d.subflow.join { "join" } else { "subflow" },
                        ep(d.tuple.saddr, d.tuple.sport),
                        ep(d.tuple.daddr, d.tuple.dport),
                        d.reason
                    )
                }
                Data::ConnFallback(d) => s += &format!("  fallback to TCP: {}\n", d.reason),
                Data::ConnDiagnosis(d) => {
                    diagnosed = true;
                    s += &format!(
                        "  why: {} — {}\n",
                        d.cause,
                        crate::text::printable(&d.detail)
                    );
                    for ev in &d.evidence {
                        s += &format!("       evidence: {}\n", crate::text::printable(ev));
                    }
                }
                _ => {}
            }
        }
        if !diagnosed {
            s += "  no diagnosis: nothing was missing or failed\n";
        }
    }
    (s, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ends of one connection (client token 0000000a, server 0000000b) and a healthy one.
    const CAPTURE: &str = r#"{"v":1,"time":"2026-12-06T05:36:03.9Z","ts_ns":1,"event":"conn_created","token":"0000000a","peer_token":"0000000b","netns":1,"family":"ipv4","saddr":"10.0.0.2","sport":5000,"daddr":"10.0.0.1","dport":4405,"side":"client"}
{"v":1,"time":"2026-12-06T05:36:03.9Z","ts_ns":2,"event":"subflow_failed","token":"0000000a","netns":1,"family":"ipv4","saddr":"192.168.0.2","sport":5001,"daddr":"10.0.0.1","dport":4405,"reason":"rst_received","error":"ECONNREFUSED","local_id":1,"remote_id":0,"backup":false,"peer_backup":false,"join":true,"retrans":0}
{"v":1,"time":"2026-12-06T05:36:03.9Z","ts_ns":2,"event":"conn_diagnosis","token":"0000000a","peer_token":"0000000b","netns":1,"family":"ipv4","saddr":"10.0.0.2","sport":5000,"daddr":"10.0.0.1","dport":4405,"cause":"join_refused","detail":"refused","evidence":["subflow_failed sport=5001 reason=rst_received error=ECONNREFUSED"]}
{"v":1,"time":"2026-12-06T05:36:03.9Z","ts_ns":3,"event":"conn_created","token":"0000000c","netns":1,"family":"ipv4","saddr":"10.0.0.2","sport":5002,"daddr":"10.0.0.1","dport":4405,"side":"client"}
"#;

    #[test]
    fn two_tracers_copies_of_an_event_are_one_event() {
        let mut events = crate::capture::read(CAPTURE.as_bytes(), "capture").unwrap();
        let first = events[0].clone();
        let mut copy = first.clone();
        copy.ts_ns += 10_000;
        copy.time = "2026-12-06T05:36:03.900010Z".into();
        assert_eq!(identity(&first), identity(&copy));
        // Another event of the same connection stays another event.
        events[1].ts_ns = first.ts_ns;
        assert_ne!(identity(&first), identity(&events[1]));
    }

    #[test]
    fn connections_are_reported_with_their_subflows_and_diagnoses_and_found_by_either_token() {
        let events = crate::capture::read(CAPTURE.as_bytes(), "capture").unwrap();
        let (all, n) = report(&events, None);
        assert_eq!(n, 2);
        assert!(
            all.contains(
                "join    192.168.0.2:5001 → 10.0.0.1:4405 failed: rst_received ECONNREFUSED"
            ),
            "{all}"
        );
        assert!(
            all.contains(
                "  why: join_refused — refused\n       evidence: subflow_failed sport=5001"
            ),
            "{all}"
        );
        assert!(
            all.contains(
                "connection 0000000c netns 1 client 10.0.0.2:5002 → 10.0.0.1:4405\n  no diagnosis"
            ),
            "{all}"
        );
        // By the peer's token too: the server end names the connection with it.
        let (one, n) = report(&events, Some(Token(0xb)));
        assert_eq!(n, 1);
        assert!(
            one.starts_with("connection 0000000a (peer 0000000b)"),
            "{one}"
        );
        assert_eq!(report(&events, Some(Token(0xd))).1, 0);
    }

    #[test]
    fn bad_lines_and_tokens_are_named() {
        let e = crate::capture::read("{}\n".as_bytes(), "cap.ndjson").unwrap_err();
        assert!(
            e.starts_with("cap.ndjson line 1: not an event of `mptcp-trace events --json`"),
            "{e}"
        );
        assert!(parse_token("5C0089F8").is_ok());
        assert!(parse_token("xyz").is_err());
    }
}
