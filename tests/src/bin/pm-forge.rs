//! Plays an attacker with a network namespace of its own, for the hardening tests.
//! `pm-forge idle SECS` enters a new network namespace and sleeps (a namespace the tracer
//! finds and must watch without a thread). `pm-forge announce N TOKEN DELAY` enters a new
//! network namespace, waits DELAY seconds (for the tracer to find it), then broadcasts N
//! forged MPTCP_EVENT_ANNOUNCED messages (token TOKEN, 6.6.6.6:31337) on the kernel's
//! `mptcp_pm_events` group there, which any process with its own user and network namespace
//! may do; prints `sent N` and sleeps a second so the tracer can read them.

use std::{process::ExitCode, thread, time::Duration};

use mptcp_user::trace::pm::{
    family_and_group, ATTR_DADDR4, ATTR_DPORT, ATTR_REM_ID, ATTR_TOKEN, MPTCP_EVENT_ANNOUNCED,
};

fn nla(kind: u16, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn forge(n: u32, token: u32) -> std::io::Result<()> {
    let (family, group) = family_and_group()?;
    if !(1..=32).contains(&group) {
        return Err(std::io::Error::other(format!(
            "group {group} is not addressable"
        )));
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut attrs = Vec::new();
    nla(ATTR_TOKEN, &token.to_ne_bytes(), &mut attrs);
    nla(ATTR_REM_ID, &[9], &mut attrs);
    nla(ATTR_DADDR4, &[6, 6, 6, 6], &mut attrs);
    nla(ATTR_DPORT, &31337u16.to_be_bytes(), &mut attrs);
    for seq in 0..n {
        let mut msg = Vec::new();
        msg.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
        msg.extend_from_slice(&[MPTCP_EVENT_ANNOUNCED, 1, 0, 0]);
        msg.extend_from_slice(&attrs);
        // SAFETY: zeroed sockaddr_nl with the fields set below.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        to.nl_groups = 1 << (group - 1);
        // SAFETY: valid fd, buffer and address.
        let r = unsafe {
            libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: unshare(2) on this single-threaded process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("pm-forge: unshare: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    match args.get(1).map(String::as_str) {
        Some("idle") => {
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
            thread::sleep(Duration::from_secs(secs));
            ExitCode::SUCCESS
        }
        Some("announce") => {
            let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
            let token = args
                .get(3)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .unwrap_or(0xdeadbeef);
            let delay = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);
            thread::sleep(Duration::from_secs(delay));
            match forge(n, token) {
                Ok(()) => {
                    println!("sent {n}");
                    thread::sleep(Duration::from_secs(1));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pm-forge: {e}");
                    ExitCode::from(1)
                }
            }
        }
        _ => {
            eprintln!("usage: pm-forge idle SECS | announce N TOKEN DELAY");
            ExitCode::from(2)
        }
    }
}
