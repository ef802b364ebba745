//! A minimal traffic source and sink speaking MPTCP (or plain TCP), for `mptcp-trace demo` and
//! the tests. The client sends a number of bytes, half-closes, and waits for the server to
//! acknowledge the total, so both ends agree on what crossed the connection before it closes.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

/// `IPPROTO_MPTCP`.
pub const IPPROTO_MPTCP: i32 = 262;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Mptcp,
    Tcp,
}

fn socket(addr: &SocketAddr, proto: Proto) -> io::Result<Socket> {
    let protocol = match proto {
        Proto::Mptcp => Protocol::from(IPPROTO_MPTCP),
        Proto::Tcp => Protocol::TCP,
    };
    Socket::new(Domain::for_address(*addr), Type::STREAM, Some(protocol))
}

pub fn listen(addr: SocketAddr, proto: Proto) -> io::Result<TcpListener> {
    let s = socket(&addr, proto)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

pub fn connect(addr: SocketAddr, proto: Proto) -> io::Result<TcpStream> {
    let s = socket(&addr, proto)?;
    s.connect(&addr.into())?;
    Ok(s.into())
}

/// Serves one connection: reads to EOF, answers with the byte count (8 bytes, big endian).
pub fn serve_one(mut conn: TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    conn.write_all(&total.to_be_bytes())?;
    Ok(total)
}

/// Accepts `n` connections, serving each on its own thread; returns the byte counts.
pub fn serve(listener: &TcpListener, n: usize) -> io::Result<Vec<u64>> {
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (conn, _) = listener.accept()?;
        handles.push(std::thread::spawn(move || serve_one(conn)));
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| io::Error::other("server thread panicked"))?
        })
        .collect()
}

/// How a client paces its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Send {
    pub bytes: u64,
    /// Wait this long after connecting and sending one byte (lets additional subflows join).
    pub warmup: Duration,
    /// Spread the bytes over at least this long (0: as fast as possible).
    pub spread: Duration,
}

/// Connects, sends, half-closes and returns what the server acknowledged.
pub fn send(addr: SocketAddr, proto: Proto, plan: Send) -> io::Result<u64> {
    let mut conn = connect(addr, proto)?;
    let chunk = vec![0x5au8; 64 << 10];
    // A first byte makes the connection fully established, which is when the path manager
    // starts additional subflows: they can join during the warmup.
    let mut sent = plan.bytes.min(1);
    conn.write_all(&chunk[..sent as usize])?;
    std::thread::sleep(plan.warmup);
    let start = Instant::now();
    while sent < plan.bytes {
        let n = (plan.bytes - sent).min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..n])?;
        sent += n as u64;
        if !plan.spread.is_zero() {
            // Stay on schedule: sleep until this many bytes are due.
            let due = plan.spread.mul_f64(sent as f64 / plan.bytes as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    finish(&mut conn)
}

/// Half-closes a client's connection and returns what the server acknowledged: the byte count
/// [`serve_one`] answers with once it reads EOF.
pub fn finish(conn: &mut TcpStream) -> io::Result<u64> {
    conn.shutdown(Shutdown::Write)?;
    let mut ack = [0u8; 8];
    conn.read_exact(&mut ack)?;
    Ok(u64::from_be_bytes(ack))
}

/// The socket's protocol as the kernel sees it (`SO_PROTOCOL`): 262 for MPTCP.
pub fn so_protocol(s: &impl std::os::fd::AsRawFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}
