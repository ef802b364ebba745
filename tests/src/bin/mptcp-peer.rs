//! A separate process that speaks MPTCP, for tests that need a second pid (filters by pid).
//! `mptcp-peer serve ADDR:PORT N` accepts N connections; `mptcp-peer send ADDR:PORT BYTES`
//! prints `ready`, waits for a line on stdin, then connects and sends (so a test can learn the
//! pid and start a tracer filtered on it first).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use mptcp_user::peer::{self, Proto, Send};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        eprintln!("usage: mptcp-peer serve ADDR:PORT N | send ADDR:PORT BYTES");
        ExitCode::from(2)
    };
    let (Some(verb), Some(addr), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        return usage();
    };
    let (Ok(addr), Ok(n)) = (addr.parse::<SocketAddr>(), n.parse::<u64>()) else {
        return usage();
    };
    let result = match verb.as_str() {
        "serve" => peer::listen(addr, Proto::Mptcp).and_then(|l| {
            println!("listening");
            peer::serve(&l, n as usize).map(|v| v.iter().sum())
        }),
        "send" => {
            println!("ready");
            let mut go = String::new();
            let _ = std::io::stdin().read_line(&mut go);
            peer::send(
                addr,
                Proto::Mptcp,
                Send {
                    bytes: n,
                    warmup: Duration::from_millis(300),
                    spread: Duration::ZERO,
                },
            )
        }
        _ => return usage(),
    };
    match result {
        Ok(total) => {
            println!("{total}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mptcp-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
