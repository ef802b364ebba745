//! A separate process that speaks MPTCP, for tests that need a second pid (filters by pid).
//! `mptcp-peer serve ADDR:PORT N` accepts N connections; `mptcp-peer send ADDR:PORT BYTES`
//! prints `ready`, waits for a line on stdin, then connects and sends (so a test can learn the
//! pid and start a tracer filtered on it first). `mptcp-peer hold ADDR:PORT N` opens N
//! connections (one byte each, so that they become fully established and join subflows),
//! prints `ready`, holds them until a line on stdin, then closes each cleanly (shutdown, read
//! the server's answer) and prints the bytes sent.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use mptcp_user::peer::{self, Proto, Send};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        eprintln!("usage: mptcp-peer serve ADDR:PORT N | send ADDR:PORT BYTES | hold ADDR:PORT N");
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
        "hold" => hold(addr, n as usize),
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

/// Opens `n` connections, holds them until a line on stdin, closes them.
fn hold(addr: SocketAddr, n: usize) -> std::io::Result<u64> {
    use std::io::{Read, Write};
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = peer::connect(addr, Proto::Mptcp)?;
        c.write_all(&[0x5a])?;
        conns.push(c);
    }
    println!("ready");
    let mut go = String::new();
    let _ = std::io::stdin().read_line(&mut go);
    for mut c in conns {
        c.shutdown(std::net::Shutdown::Write)?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
    }
    Ok(n as u64)
}
