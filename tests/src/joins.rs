//! Joins on demand in the seed's test bed: the bed without the client's `subflow` endpoint,
//! an established connection with data exchanged, and the endpoint added afterwards (the
//! in-kernel path manager then opens a join on every established connection) — how the tests
//! provoke a join at a moment they choose, towards a listener that is there or gone.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

use mptcp_user::{
    peer::{self, Proto},
    testbed::{self, TestBed},
};

use crate::tag;

/// The seed's test bed without the client's `subflow` endpoint, and both namespaces' inodes.
pub fn bed_without_join(name: &str) -> (TestBed, u32, u32) {
    let bed = TestBed::create(&tag(name)).unwrap();
    let id = testbed::BLUE_V4_ENDPOINT_ID.to_string();
    testbed::ip(&["-n", &bed.client, "mptcp", "endpoint", "delete", "id", &id]).unwrap();
    let (cns, sns) = (
        TestBed::netns_inode(&bed.client).unwrap(),
        TestBed::netns_inode(&bed.server).unwrap(),
    );
    (bed, cns, sns)
}

/// Gives the client its blue endpoint (IPv4 or IPv6) with `flags` (`subflow`, `backup`, …).
pub fn add_join_endpoint(bed: &TestBed, v6: bool, flags: &[&str]) {
    let (addr, id) = if v6 {
        (testbed::BLUE_CLIENT_V6, testbed::BLUE_V6_ENDPOINT_ID)
    } else {
        (testbed::BLUE_CLIENT_V4, testbed::BLUE_V4_ENDPOINT_ID)
    };
    if v6 {
        // As in `TestBed::use_ipv6_endpoint`: IPv6 needs a route to the server's red
        // address out of blue-client.
        testbed::ip(&[
            "-n",
            &bed.client,
            "-6",
            "route",
            "add",
            "fd00:0:0:10::/64",
            "via",
            testbed::BLUE_SERVER_V6,
            "dev",
            "blue-client",
            "metric",
            "512",
        ])
        .unwrap();
    }
    testbed::add_endpoint(&bed.client, addr, Some("blue-client"), id, flags).unwrap();
}

/// The server's red address, IPv4 or IPv6, at `port`.
pub fn server_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        format!("[{}]:{port}", testbed::RED_SERVER_V6)
    } else {
        format!("{}:{port}", testbed::RED_SERVER_V4)
    }
    .parse()
    .unwrap()
}

/// 1000 bytes each way: a connection is fully established, and joins are opened, only then.
pub fn exchange(a: &mut TcpStream, b: &mut TcpStream) {
    let mut buf = [0u8; 1000];
    a.write_all(&buf).unwrap();
    b.read_exact(&mut buf).unwrap();
    b.write_all(&buf).unwrap();
    a.read_exact(&mut buf).unwrap();
}

/// An established MPTCP connection to a `proto` listener at `addr` in the server namespace,
/// with data exchanged both ways: the client's end, the server's, and the listener (drop it
/// to make the joins find no listener).
pub fn connected(
    bed: &TestBed,
    addr: SocketAddr,
    proto: Proto,
) -> (TcpStream, TcpStream, TcpListener) {
    connected_via(bed, addr, addr, proto)
}

/// As [`connected`], with the listener bound to `listen` (the unspecified address: joins to
/// any of the server's addresses find it).
pub fn connected_via(
    bed: &TestBed,
    listen: SocketAddr,
    addr: SocketAddr,
    proto: Proto,
) -> (TcpStream, TcpStream, TcpListener) {
    let listener = testbed::in_netns(&bed.server, move || peer::listen(listen, proto))
        .unwrap()
        .unwrap();
    let mut client = testbed::in_netns(&bed.client, move || peer::connect(addr, Proto::Mptcp))
        .unwrap()
        .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    exchange(&mut client, &mut server);
    (client, server, listener)
}

/// Makes a join towards the server time out quickly and for sure: two SYNs (1 s + 2 s,
/// `net.ipv4.tcp_syn_retries=1` in the client namespace, which IPv6 uses too), and the
/// server's replies to the client's blue address (IPv4 or IPv6) thrown away (a more specific
/// blackhole route) while its listener stays.
pub fn black_hole_joins(bed: &TestBed, v6: bool) {
    testbed::sysctl(&bed.client, "net.ipv4.tcp_syn_retries", "1").unwrap();
    let black = if v6 {
        format!("{}/128", testbed::BLUE_CLIENT_V6)
    } else {
        format!("{}/32", testbed::BLUE_CLIENT_V4)
    };
    testbed::ip(&["-n", &bed.server, "route", "add", "blackhole", &black]).unwrap();
}
