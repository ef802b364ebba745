//! State transitions (`apply`), keys, and screens drawn on ratatui's `TestBackend`.

use std::{net::IpAddr, sync::Arc};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, buffer::Buffer, Terminal};

use super::{
    diag::SockInfo,
    key, render,
    state::{ConnState, SortBy, State, Update, LINGER_NS, MAX_LINGERING, WINDOW_NS},
    Action,
};
use crate::event::{
    Conn, ConnClosed, ConnCreated, ConnEstablished, ConnFallback, Data, Event, Family, Ids, Lost,
    Side, Subflow as EvSubflow, SubflowClosed, SubflowEstablished, Token, Tuple,
};

const S: u64 = 1_000_000_000;
const NS: u32 = 4026532319;
const C1: u64 = 0xffff_0001;
const C2: u64 = 0xffff_0002;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn conn(id: u64, sub: u64) -> Conn {
    Conn {
        token: None,
        peer_token: None,
        netns: Some(NS),
        pid: None,
        comm: None,
        protocol: None,
        ids: Ids {
            conn: id,
            subflow: sub,
            cgroup: None,
        },
    }
}

fn tuple(local: (&str, u16), remote: (&str, u16)) -> Tuple {
    Tuple {
        family: Family::of(ip(local.0)),
        saddr: ip(local.0),
        sport: local.1,
        daddr: ip(remote.0),
        dport: remote.1,
    }
}

fn ev(data: Data, t: u64) -> Event {
    Event::new(t, String::new(), data)
}

fn established(c: u64, t: u64) -> Update {
    Update::Event(Arc::new(ev(
        Data::ConnEstablished(ConnEstablished {
            conn: conn(c, 0),
            tuple: tuple(RED, SRV),
            peer_deny_join_id0: None,
        }),
        t,
    )))
}

fn created(c: u64, token: &str, t: u64, client: (&str, u16), server: (&str, u16)) -> Update {
    let mut cn = conn(c, 0);
    cn.token = Some(Token(u32::from_str_radix(token, 16).unwrap()));
    cn.pid = Some(4242);
    cn.comm = Some("curl".into());
    Update::Event(Arc::new(ev(
        Data::ConnCreated(ConnCreated {
            conn: cn,
            tuple: tuple(client, server),
            side: Side::Client,
        }),
        t,
    )))
}

fn closed(c: u64, t: u64) -> Update {
    Update::Event(Arc::new(ev(
        Data::ConnClosed(ConnClosed {
            conn: conn(c, 0),
            tuple: tuple(RED, SRV),
            duration_ns: None,
            subflows_total: 1,
        }),
        t,
    )))
}

fn fallback(c: u64, t: u64, reason: &str) -> Update {
    Update::Event(Arc::new(ev(
        Data::ConnFallback(ConnFallback {
            conn: conn(c, 0),
            tuple: tuple(RED, SRV),
            reason: reason.into(),
        }),
        t,
    )))
}

fn sf_info(ifname: &str, join: bool) -> EvSubflow {
    EvSubflow {
        ifindex: None,
        ifname: Some(ifname.into()),
        local_id: Some(if join { 1 } else { 0 }),
        remote_id: 0,
        backup: false,
        peer_backup: false,
        join,
    }
}

fn subflow(
    c: u64,
    id: u64,
    t: u64,
    local: (&str, u16),
    remote: (&str, u16),
    ifname: &str,
    join: bool,
) -> Update {
    Update::Event(Arc::new(ev(
        Data::SubflowEstablished(SubflowEstablished {
            conn: conn(c, id),
            tuple: tuple(local, remote),
            subflow: sf_info(ifname, join),
            existing: false,
        }),
        t,
    )))
}

fn subflow_closed(c: u64, id: u64, t: u64, reason: &str, sent: u64) -> Update {
    Update::Event(Arc::new(ev(
        Data::SubflowClosed(SubflowClosed {
            conn: conn(c, id),
            tuple: tuple(RED, SRV),
            reason: reason.into(),
            cause: Default::default(),
            subflow: sf_info("red-client", false),
            bytes_sent: sent,
            bytes_acked: sent,
            bytes_received: 0,
            retrans: 3,
            srtt_us: 1200,
        }),
        t,
    )))
}

fn lost(n: u64) -> Update {
    Update::Event(Arc::new(ev(
        Data::Lost(Lost {
            count: n,
            ring_buffer: n,
            ..Lost::default()
        }),
        0,
    )))
}

fn sock(local: (&str, u16), remote: (&str, u16), sent: u64, rtt_us: u32) -> SockInfo {
    SockInfo {
        local: (ip(local.0), local.1),
        remote: (ip(remote.0), remote.1),
        state: 1,
        bytes_sent: sent,
        bytes_acked: sent,
        bytes_received: 0,
        total_retrans: 1,
        rtt_us,
        snd_cwnd: 10,
        pacing_rate: None,
    }
}

const RED: (&str, u16) = ("10.0.0.2", 50000);
const BLUE: (&str, u16) = ("192.168.0.2", 50001);
const SRV: (&str, u16) = ("10.0.0.1", 4321);

/// Connection 1: two subflows (red initial, blue join), 2 MB/s each after two samples.
/// Connection 2: fell back to TCP, one subflow.
fn model() -> State {
    let mut s = State::default();
    s.apply(created(C1, "6d816c04", 10 * S, RED, SRV));
    s.apply(established(C1, 10 * S));
    s.apply(subflow(C1, 1, 10 * S, RED, SRV, "red-client", false));
    s.apply(subflow(C1, 2, 11 * S, BLUE, SRV, "blue-client", true));
    s.apply(created(C2, "0badf00d", 12 * S, ("10.0.0.2", 50002), SRV));
    s.apply(subflow(
        C2,
        3,
        12 * S,
        ("10.0.0.2", 50002),
        SRV,
        "red-client",
        false,
    ));
    s.apply(fallback(C2, 12 * S, "mp_capable_missing"));
    for (t, k) in [(13 * S, 0u64), (14 * S, 1)] {
        s.apply(Update::Diag {
            netns: NS,
            at_ns: t,
            socks: vec![
                sock(RED, SRV, 1_000_000 + k * 2_097_152, 5200),
                sock(BLUE, SRV, 500_000 + k * 2_097_152, 5400),
                sock(("10.0.0.2", 50002), SRV, 1000, 80),
            ],
        });
    }
    s.apply(Update::Tick(14 * S));
    s
}

#[test]
fn joins_and_fallbacks_are_counted() {
    let s = model();
    assert_eq!(s.open_conns(), 2);
    assert_eq!(s.open_subflows(), 3);
    assert_eq!(s.joins_last_minute(), 1);
    assert_eq!(s.fallbacks_last_minute(), 1);
    let c1 = &s.conns[&(NS, C1, 0)];
    assert_eq!(c1.state, ConnState::Established);
    assert!(!c1.subflows[0].join && c1.subflows[1].join);
    assert_eq!(c1.subflows[1].local_id, Some(1));
    assert_eq!(
        s.conns[&(NS, C2, 0)].fallback.as_deref(),
        Some("mp_capable_missing")
    );
    // The "last minute" window forgets.
    let mut s = s;
    s.apply(Update::Tick(14 * S + WINDOW_NS));
    assert_eq!((s.joins_last_minute(), s.fallbacks_last_minute()), (0, 0));
}

#[test]
fn rates_come_from_two_samples() {
    let s = model();
    let c1 = &s.conns[&(NS, C1, 0)];
    assert_eq!(c1.subflows[0].tx_rate, 2_097_152.0);
    assert_eq!(c1.subflows[0].rx_rate, 0.0);
    assert_eq!(c1.subflows[0].bytes_sent, 3_097_152);
    assert_eq!(c1.subflows[0].srtt_us, Some(5200));
    assert_eq!(c1.subflows[0].retrans, 1);
    assert_eq!(c1.rate(), 2.0 * 2_097_152.0);
    // A sample without that socket leaves the rate; no sample for 3 s makes it stale.
    let mut s = s;
    s.apply(Update::Tick(18 * S));
    assert_eq!(s.conns[&(NS, C1, 0)].subflows[0].tx_rate, 0.0);
}

#[test]
fn the_share_sparkline_follows_each_subflows_part_of_the_throughput() {
    let mut s = State::default();
    s.apply(created(C1, "6d816c04", S, RED, SRV));
    s.apply(subflow(C1, 1, S, RED, SRV, "red-client", false));
    s.apply(subflow(C1, 2, S, BLUE, SRV, "blue-client", true));
    // Red carries 3 parts, blue 1; then blue alone.
    let (mut red, mut blue) = (0, 0);
    for i in 0..9u64 {
        if i < 6 {
            red += 3_000_000;
        }
        blue += 1_000_000;
        s.apply(Update::Diag {
            netns: NS,
            at_ns: (2 + i) * S,
            socks: vec![sock(RED, SRV, red, 10), sock(BLUE, SRV, blue, 10)],
        });
        s.apply(Update::Tick((2 + i) * S));
    }
    let c = &s.conns[&(NS, C1, 0)];
    // The first sample has no rate; the last SHARES samples, oldest first.
    let spark = |i: usize| super::render::sparkline(&c.subflows[i].shares);
    assert_eq!(spark(0), "▆▆   ");
    assert_eq!(spark(1), "▂▂███");
    let screen = text(&draw(&s, 136, 40)).join("\n");
    assert!(screen.contains("SHARE"), "{screen}");
    assert!(screen.contains("▂▂███"), "{screen}");
}

#[test]
fn a_single_sample_gives_no_rate_yet() {
    let mut s = State::default();
    s.apply(created(C1, "6d816c04", S, RED, SRV));
    s.apply(subflow(C1, 1, S, RED, SRV, "red-client", false));
    s.apply(Update::Diag {
        netns: NS,
        at_ns: 2 * S,
        socks: vec![sock(RED, SRV, 5000, 10)],
    });
    let sf = &s.conns[&(NS, C1, 0)].subflows[0];
    assert_eq!((sf.tx_rate, sf.bytes_sent), (0.0, 5000));
    // A sample from another namespace does not touch it.
    s.apply(Update::Diag {
        netns: NS + 1,
        at_ns: 3 * S,
        socks: vec![sock(RED, SRV, 9000, 10)],
    });
    assert_eq!(s.conns[&(NS, C1, 0)].subflows[0].bytes_sent, 5000);
}

#[test]
fn closes_keep_final_counters_and_linger() {
    let mut s = model();
    s.apply(subflow_closed(C1, 2, 15 * S, "closed", 7_000_000));
    let c1 = &s.conns[&(NS, C1, 0)];
    let blue = &c1.subflows[1];
    assert!(!blue.is_open());
    assert_eq!(
        (blue.bytes_sent, blue.retrans, blue.tx_rate),
        (7_000_000, 3, 0.0)
    );
    assert!(c1.reset.is_none());
    assert_eq!(s.open_subflows(), 2);
    // Still there (dimmed) within the linger time, gone after.
    s.apply(Update::Tick(15 * S + LINGER_NS));
    assert_eq!(s.conns[&(NS, C1, 0)].subflows.len(), 2);
    s.apply(Update::Tick(15 * S + LINGER_NS + 1));
    assert_eq!(s.conns[&(NS, C1, 0)].subflows.len(), 1);
    // Closing the connection closes what is left and lingers the whole block.
    s.apply(closed(C1, 21 * S));
    let c1 = &s.conns[&(NS, C1, 0)];
    assert_eq!(c1.state, ConnState::Closed);
    assert!(c1.subflows.iter().all(|sf| !sf.is_open()));
    assert_eq!(s.open_conns(), 1);
    assert!(
        !s.live_netns().is_empty(),
        "connection 2 is still open there"
    );
    s.apply(Update::Tick(21 * S + LINGER_NS + 1));
    assert!(!s.conns.contains_key(&(NS, C1, 0)));
}

#[test]
fn at_most_max_lingering_closed_connections_stay() {
    let mut s = model();
    let n = MAX_LINGERING as u64 + 10;
    for i in 0..n {
        let id = 0xaaaa_0000 + i;
        s.apply(created(id, "0badcafe", 20 * S + i, RED, SRV));
        s.apply(closed(id, 20 * S + i));
    }
    let closed = |s: &State| s.conns.values().filter(|c| !c.is_open()).count();
    assert_eq!(closed(&s), MAX_LINGERING);
    // The oldest closed went first; the newest and the open connections stay.
    assert!(!s.conns.contains_key(&(NS, 0xaaaa_0000, 0)));
    assert!(s.conns.contains_key(&(NS, 0xaaaa_0000 + n - 1, 0)));
    assert_eq!(s.open_conns(), 2);
    assert_eq!(s.seen(), n + 2);
}

#[test]
fn resets_mark_the_connection() {
    let mut s = model();
    s.apply(subflow_closed(C1, 1, 15 * S, "rst_received", 10));
    assert_eq!(s.conns[&(NS, C1, 0)].reset.as_deref(), Some("rst_received"));
    s.apply(subflow_closed(C2, 3, 15 * S, "mp_tcprst:2", 10));
    assert_eq!(s.conns[&(NS, C2, 0)].reset.as_deref(), Some("mp_tcprst:2"));
}

#[test]
fn lost_events_add_up() {
    let mut s = State::default();
    s.apply(lost(5));
    s.apply(lost(3));
    assert_eq!((s.lost.count, s.lost.ring_buffer), (8, 8));
}

#[test]
fn a_reused_socket_address_starts_a_new_connection() {
    // The kernel reuses a closed MPTCP socket's memory at once: the next connection has the
    // same address (conn id) and a new token.
    let mut s = model();
    s.apply(closed(C1, 15 * S));
    s.apply(created(
        C1,
        "00c0ffee",
        15 * S + 1,
        ("10.0.0.2", 50010),
        SRV,
    ));
    s.apply(subflow(
        C1,
        9,
        15 * S + 2,
        ("10.0.0.2", 50010),
        SRV,
        "red-client",
        false,
    ));
    let old = &s.conns[&(NS, C1, 0)];
    let new = &s.conns[&(NS, C1, 1)];
    assert_eq!(old.state, ConnState::Closed);
    assert_eq!(old.token.as_deref(), Some("6d816c04"));
    assert_eq!(new.token.as_deref(), Some("00c0ffee"));
    assert_eq!(new.state, ConnState::Established);
    assert_eq!(new.subflows.len(), 1);
    // The old one lingers and goes; the new one stays.
    s.apply(Update::Tick(15 * S + LINGER_NS + 1));
    assert!(!s.conns.contains_key(&(NS, C1, 0)));
    assert!(s.conns.contains_key(&(NS, C1, 1)));
    s.apply(subflow_closed(C1, 9, 21 * S, "closed", 5));
    assert!(
        !s.conns[&(NS, C1, 1)].subflows[0].is_open(),
        "events find the new entry"
    );
}

#[test]
fn address_events_show_under_their_connection() {
    let mut s = model();
    let mut c = conn(C1, 0);
    c.token = Some(Token(0x6d816c04));
    s.apply(Update::Event(Arc::new(ev(
        Data::AddrAnnounced(crate::event::Addr {
            conn: c,
            family: Some(Family::Ipv4),
            remote_id: 1,
            addr: Some(ip("192.168.0.1")),
            port: None,
        }),
        14 * S,
    ))));
    let c1 = &s.conns[&(NS, C1, 0)];
    assert_eq!(c1.peer_addrs.len(), 1);
    assert!(c1.peer_addrs[0].announced);
    let screen = text(&draw(&s, 150, 20)).join("\n");
    assert!(
        screen.contains("⇢ peer announced 192.168.0.1 (id 1)"),
        "{screen}"
    );
}

#[test]
fn a_diagnosis_shows_as_one_line_under_its_connection_once_per_cause() {
    let mut s = model();
    for t in [14, 15] {
        s.apply(Update::Event(Arc::new(ev(
            Data::ConnDiagnosis(crate::event::ConnDiagnosis {
                conn: conn(C2, 0),
                tuple: tuple(("10.0.0.2", 50002), SRV),
                cause: "fallback".into(),
                detail: "the connection fell back to plain TCP at its handshake".into(),
                evidence: vec!["conn_fallback reason=mp_capable_missing".into()],
            }),
            t * S,
        ))));
    }
    assert_eq!(s.conns[&(NS, C2, 0)].diagnoses.len(), 1);
    let screen = text(&draw(&s, 150, 20)).join("\n");
    assert_eq!(
        screen
            .matches("⚑ fallback: the connection fell back to plain TCP at its handshake")
            .count(),
        1,
        "{screen}"
    );
}

fn press(s: &mut State, code: KeyCode) -> Action {
    key(s, KeyEvent::new(code, KeyModifiers::NONE))
}

#[test]
fn keys_move_fold_filter_sort_pause_and_quit() {
    let mut s = model();
    assert_eq!(press(&mut s, KeyCode::Down), Action::Redraw);
    assert_eq!(s.ui.selected, Some((NS, C1, 0)));
    press(&mut s, KeyCode::Char('j'));
    assert_eq!(s.ui.selected, Some((NS, C2, 0)));
    press(&mut s, KeyCode::Char('j'));
    assert_eq!(s.ui.selected, Some((NS, C2, 0)), "stays on the last");
    press(&mut s, KeyCode::Up);
    press(&mut s, KeyCode::Enter);
    assert!(s.ui.folded.contains(&(NS, C1, 0)));
    press(&mut s, KeyCode::Char('s'));
    assert_eq!(s.ui.sort, SortBy::Throughput);
    assert_eq!(s.visible()[0].key, (NS, C1, 0));
    press(&mut s, KeyCode::Char('/'));
    for c in "badf".chars() {
        press(&mut s, KeyCode::Char(c));
    }
    assert_eq!(
        press(&mut s, KeyCode::Char('q')),
        Action::Redraw,
        "q is text here"
    );
    press(&mut s, KeyCode::Backspace);
    press(&mut s, KeyCode::Enter);
    assert_eq!(s.ui.filter, "badf");
    assert_eq!(s.visible().len(), 1);
    assert_eq!(s.visible()[0].key, (NS, C2, 0));
    press(&mut s, KeyCode::Char('p'));
    assert!(s.ui.paused);
    press(&mut s, KeyCode::Char('?'));
    assert!(s.ui.help);
    press(&mut s, KeyCode::Char('x'));
    assert!(!s.ui.help);
    assert_eq!(press(&mut s, KeyCode::Char('q')), Action::Quit);
    assert_eq!(
        key(
            &mut s,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
        ),
        Action::Quit
    );
}

fn draw(s: &State, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::render(s, f)).unwrap();
    t.backend().buffer().clone()
}

fn text(b: &Buffer) -> Vec<String> {
    let w = b.area.width as usize;
    b.content
        .chunks(w)
        .map(|row| {
            let mut s = String::new();
            for c in row {
                s.push_str(c.symbol());
            }
            s.trim_end().to_string()
        })
        .collect()
}

/// Column of `needle` in a screen row, in cells.
fn col(row: &str, needle: &str) -> u16 {
    let at = row
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {row}"));
    row[..at].chars().count() as u16
}

fn failed(c: u64, id: u64, t: u64, local: (&str, u16), reason: &str, error: &str) -> Update {
    Update::Event(Arc::new(ev(
        Data::SubflowFailed(crate::event::SubflowFailed {
            conn: conn(c, id),
            tuple: tuple(local, SRV),
            reason: reason.into(),
            cause: crate::event::Cause {
                error: Some(error.into()),
                ..Default::default()
            },
            subflow: sf_info("blue-client", true),
            retrans: 2,
        }),
        t,
    )))
}

/// Causes on screen without opening anything, highlighted: a reset with the reason this host
/// gave, a failed join with its error, backup flags, a connection that predates the tracer,
/// an RM_ADDR, the diagnosis line.
#[test]
fn causes_are_on_screen_and_highlighted() {
    use ratatui::style::{Color, Modifier};
    let mut s = model();
    let mut closed = subflow_closed(C1, 2, 14 * S, "rst_sent", 10);
    if let Update::Event(e) = &mut closed {
        if let Data::SubflowClosed(d) = &mut Arc::make_mut(e).data {
            d.cause.reset_sent_reason = Some("mptcp_rst_eprohibit".into());
            d.subflow.peer_backup = true;
        }
    }
    s.apply(closed);
    s.apply(failed(
        C2,
        4,
        14 * S,
        ("192.168.0.2", 50003),
        "rst_received",
        "ECONNREFUSED",
    ));
    let c3 = 0xffff_0003;
    let mut cn = conn(c3, 0);
    cn.token = Some(Token(0x0e0e0e0e));
    s.apply(Update::Event(Arc::new(ev(
        Data::ConnExisting(crate::event::ConnExisting {
            conn: cn.clone(),
            tuple: tuple(("10.0.0.2", 50100), SRV),
            side: None,
            subflows: 1,
            fallback: false,
            add_addr_signal: 0,
            add_addr_accepted: 0,
            subflows_max: 2,
        }),
        14 * S,
    ))));
    s.apply(Update::Event(Arc::new(ev(
        Data::AddrRemoved(crate::event::Addr {
            conn: cn,
            family: Some(Family::Ipv4),
            remote_id: 3,
            addr: None,
            port: None,
        }),
        14 * S,
    ))));
    s.conns.get_mut(&(NS, C1, 0)).unwrap().diagnoses.push((
        "join_refused".into(),
        "the blue subflow was reset by this host".into(),
    ));
    let b = draw(&s, 136, 20);
    let rows = text(&b);
    let at = |needle: &str| {
        let y = rows
            .iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{}", rows.join("\n")));
        (col(&rows[y], needle), y as u16)
    };
    let bold_in = |(x, y): (u16, u16), colour: Color| {
        let cell = &b[(x, y)];
        assert_eq!(
            cell.fg,
            colour,
            "{:?} at {x},{y}:\n{}",
            cell,
            rows.join("\n")
        );
        assert!(cell.modifier.contains(Modifier::BOLD));
    };
    // The connection line says it, the subflow row's STATE says it, the line under it says why.
    bold_in(at("RESET(rst_sent)"), Color::Red);
    bold_in(at("reset     "), Color::Red);
    bold_in(
        at("✗ rst_sent reset_sent_reason=mptcp_rst_eprohibit"),
        Color::Red,
    );
    bold_in(at("FAILED JOINS 1"), Color::Red);
    bold_in(at("failed    "), Color::Red);
    bold_in(at("✗ rst_received error=ECONNREFUSED"), Color::Red);
    bold_in(at("FALLBACK(mp_capable_missing)"), Color::Yellow);
    bold_in(at("EXISTING (open before the tracer)"), Color::Cyan);
    bold_in(at("⇢ peer removed address id 3"), Color::Yellow);
    bold_in(
        at("⚑ join_refused: the blue subflow was reset by this host"),
        Color::Magenta,
    );
    // The closed subflow is dimmed, its peer's backup flag highlighted; open rows are not.
    let (_, blue) = at("192.168.0.2:50001");
    assert!(b[(4, blue)].modifier.contains(Modifier::DIM));
    let (_, red) = at("10.0.0.2:50000 → 10.0.0.1:4321 ");
    assert!(!b[(4, red)].modifier.contains(Modifier::DIM));
    let flag = col(&rows[blue as usize], " B ") + 1;
    assert_eq!(b[(flag, blue)].fg, Color::Yellow);
    // The diagnosis line sits right under its connection.
    let (_, conn1) = at("▾ 6d816c04");
    assert_eq!(at("⚑").1, conn1 + 1);
}

#[test]
fn folding_hides_subflows_and_help_overlays() {
    let mut s = model();
    press(&mut s, KeyCode::Down);
    press(&mut s, KeyCode::Enter);
    let rows = text(&draw(&s, 160, 10));
    assert!(rows[2].starts_with("▸ 6d816c04"), "{}", rows[2]);
    assert!(rows[2].contains("[2 subflows folded]"));
    assert!(rows[3].starts_with("▾ 0badf00d"), "{}", rows[3]);
    s.ui.help = true;
    let rows = text(&draw(&s, 100, 16));
    assert!(
        rows.iter().any(|r| r.contains("fold / unfold")),
        "{rows:#?}"
    );
}

#[test]
fn upgraded_is_shown_only_when_known() {
    let mut s = model();
    assert!(!text(&draw(&s, 200, 5))[0].contains("upgraded"));
    s.upgraded = Some(7);
    assert!(text(&draw(&s, 200, 5))[0].contains("upgraded sockets 7"));
}

/// Issue 16 item 2b: paused under churn, the live view keeps absorbing updates into its
/// state (pruned as usual) and shows a frozen copy. 100,000 connections come and go (at
/// ~1,700/s, a socket address reused every 5,000) while paused: the state never holds more
/// than the linger window's worth, the frozen view does not change, and resuming shows the
/// present.
#[test]
fn pausing_under_churn_stays_bounded_and_frozen() {
    const TOTAL: u64 = 100_000;
    const STEP: u64 = 600_000; // ns between connections
    const OPEN: u64 = 80; // connections open at once
    const TICK_EVERY: u64 = 100;
    let base = 20 * S;
    let id = |i: u64| 0x1_0000_0000 + i % 5_000;
    let mut s = model();
    press(&mut s, KeyCode::Char('p'));
    assert!(s.ui.paused);
    let frozen = format!("{:?}", s.frozen);
    let screen = text(&draw(s.frozen.as_deref().unwrap(), 120, 12));
    assert!(screen[..2].join(" ").contains("PAUSED"), "{screen:?}");
    let mut most = 0;
    for i in 0..TOTAL {
        let t = base + i * STEP;
        let port = 40_000 + (i % 20_000) as u16;
        s.apply(created(id(i), "00c0ffee", t, ("10.0.0.2", port), SRV));
        if i >= OPEN {
            s.apply(closed(id(i - OPEN), t));
        }
        if i % TICK_EVERY == 0 {
            s.apply(Update::Tick(t));
        }
        most = most.max(s.conns.len());
    }
    // What a tick keeps: the connections closed within the linger time, the open ones, the
    // model's two, and those created since the last tick.
    let bound = (LINGER_NS / STEP + OPEN + TICK_EVERY + 2) as usize;
    assert!(
        most <= bound,
        "the paused state grew to {most} connections (bound {bound})"
    );
    assert!(bound < TOTAL as usize / 10);
    assert_eq!(format!("{:?}", s.frozen), frozen, "the frozen view changed");
    assert_eq!(text(&draw(s.frozen.as_deref().unwrap(), 120, 12)), screen);

    press(&mut s, KeyCode::Char('p'));
    assert!(!s.ui.paused && s.frozen.is_none());
    // Shown now: the present (the newest connection, not the first), not paused.
    let last = id(TOTAL - 1);
    assert!(s.conns.keys().any(|k| k.1 == last));
    assert_eq!(s.open_conns(), OPEN as usize + 2);
    assert!(
        s.conns.values().all(|c| c.closed_ns.is_none()
            || c.closed_ns.unwrap() + LINGER_NS >= base + (TOTAL - 1) * STEP - TICK_EVERY * STEP),
        "closed connections older than the linger time are still kept"
    );
    let now = text(&draw(&s, 120, 12));
    assert!(!now[..2].join(" ").contains("PAUSED"), "{now:?}");
    assert_ne!(now, screen);
}

#[test]
fn socket_upgraded_events_count_only_the_sockets_made_mptcp() {
    use crate::event::{Family, SocketUpgraded, UpgradeOutcome};
    let mut s = model();
    let conns = s.conns.len();
    for outcome in [
        UpgradeOutcome::Upgraded,
        UpgradeOutcome::KeptTcp,
        UpgradeOutcome::Upgraded,
        UpgradeOutcome::Counted,
    ] {
        s.apply(Update::Event(Arc::new(ev(
            Data::SocketUpgraded(SocketUpgraded {
                pid: 5,
                comm: "nc".into(),
                cgroup: None,
                family: Family::Ipv4,
                method: crate::upgrade::seccomp::Method::Seccomp,
                outcome,
                reason: None,
                nonblock: false,
                cloexec: false,
            }),
            11 * S,
        ))));
    }
    assert_eq!(s.upgraded, Some(2));
    assert_eq!(s.conns.len(), conns, "no connection row for a bare socket");
    assert!(text(&draw(&s, 200, 5))[0].contains("upgraded sockets 2"));
}

const V6_CLIENT: (&str, u16) = ("2001:db8:1234:5678:9abc:def0:1234:5678", 65001);
const V6_CLIENT2: (&str, u16) = ("2001:db8:ffff:5678:9abc:def0:1234:5678", 65002);
const V6_SERVER: (&str, u16) = ("2001:db8:4321:8765:cba9:fed0:4321:8765", 65535);
/// Interface names of the kernel's maximum length (IFNAMSIZ - 1 = 15), as udev names USB
/// adapters.
const IF1: &str = "enx00e04c68012a";
const IF2: &str = "wlx00c0ca9a2b3c";

/// The worst case for widths: full IPv6 addresses, 15-character interface names, an IPv4
/// connection beside it, a failed join, a reset, backup flags.
fn wide_model() -> State {
    let mut s = model();
    let c3 = 0xffff_0003;
    s.apply(created(c3, "a1b2c3d4", 13 * S, V6_CLIENT, V6_SERVER));
    s.apply(established(c3, 13 * S));
    s.apply(subflow(c3, 7, 13 * S, V6_CLIENT, V6_SERVER, IF1, false));
    let mut sf = sf_info(IF2, true);
    sf.backup = true;
    sf.peer_backup = true;
    s.apply(Update::Event(Arc::new(ev(
        Data::SubflowEstablished(SubflowEstablished {
            conn: conn(c3, 8),
            tuple: tuple(V6_CLIENT2, V6_SERVER),
            subflow: sf,
            existing: false,
        }),
        13 * S,
    ))));
    s.apply(Update::Diag {
        netns: NS,
        at_ns: 14 * S,
        socks: vec![
            sock(V6_CLIENT, V6_SERVER, 123_456_789, 6),
            sock(V6_CLIENT2, V6_SERVER, 1_000, 250_000),
        ],
    });
    s
}

/// Compares the top of a screen with `top`; the rows below are empty but the last (the keys).
fn assert_top(b: &Buffer, top: &[&str]) {
    let got = text(b);
    let h = got.len();
    let mut want: Vec<String> = top.iter().map(|l| l.to_string()).collect();
    want.resize(h - 1, String::new());
    want.push("q quit  ↑↓/jk move  Enter fold  / filter  s sort  p pause  ? help".into());
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

fn demo_model() -> State {
    model()
}

/// 80x24: the header wraps instead of losing `lost events`; connection lines wrap (state
/// first, endpoints last); the reduced columns sit under each subflow's endpoints.
#[test]
fn at_80x24_the_header_wraps_and_rows_stack() {
    assert_top(
        &draw(&wide_model(), 80, 24),
        &[
            "mptcp-trace  connections 3 open · subflows 5 · last minute: joins 2, fallbacks 1",
            "  · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE",
            "      IFACE           BKUP STATE             TX/s        RX/s     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 →",
            "    10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321",
            "  │   red-client      -    estab         2.0MiB/s        0B/s   5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321",
            "      blue-client     -    estab         2.0MiB/s        0B/s   5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s",
            "    pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321",
            "      red-client      -    estab             0B/s        0B/s    80µs    1",
            "▾ a1b2c3d4  established  client  age 1.0s  pid 4242 curl",
            "    [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 →",
            "    [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  ├ [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 →",
            "      [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  │   enx00e04c68012a -    estab             0B/s        0B/s     6µs    1",
            "  └ [2001:db8:ffff:5678:9abc:def0:1234:5678]:65002 →",
            "      [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "      wlx00c0ca9a2b3c bB   estab             0B/s        0B/s 250.0ms    1",
        ],
    );
}

/// 100x30: the reduced column set (no IDS, SENT, RECV); endpoints wider than their column
/// take a line of their own, the cells stay in their columns.
#[test]
fn at_100x30_the_reduced_columns_follow_the_endpoints() {
    assert_top(
        &draw(&wide_model(), 100, 30),
        &[
            "mptcp-trace  connections 3 open · subflows 5 · last minute: joins 2, fallbacks 1 · lost events 0",
            "  sort:age",
            "    SUBFLOW LOCAL → REMOTE      IFACE           BKUP STATE             TX/s        RX/s     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321",
            "  │                             red-client      -    estab         2.0MiB/s        0B/s   5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321",
            "                                blue-client     -    estab         2.0MiB/s        0B/s   5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl",
            "    10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321",
            "                                red-client      -    estab             0B/s        0B/s    80µs    1",
            "▾ a1b2c3d4  established  client  age 1.0s  pid 4242 curl",
            "    [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  ├ [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  │                             enx00e04c68012a -    estab             0B/s        0B/s     6µs    1",
            "  └ [2001:db8:ffff:5678:9abc:def0:1234:5678]:65002 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "                                wlx00c0ca9a2b3c bB   estab             0B/s        0B/s 250.0ms    1",
        ],
    );
}

/// 120x40 with 15-character interface names and IPv6: the set that keeps most rows on one
/// line (reduced); nothing shifts.
#[test]
fn at_120x40_ipv4_rows_stay_on_one_line() {
    assert_top(
        &draw(&wide_model(), 120, 40),
        &[
            "mptcp-trace  connections 3 open · subflows 5 · last minute: joins 2, fallbacks 1 · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE                          IFACE           BKUP STATE             TX/s        RX/s     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321                  red-client      -    estab         2.0MiB/s        0B/s   5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321               blue-client     -    estab         2.0MiB/s        0B/s   5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321                  red-client      -    estab             0B/s        0B/s    80µs    1",
            "▾ a1b2c3d4  established  client  age 1.0s  pid 4242 curl  [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 →",
            "    [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  ├ [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  │                                                 enx00e04c68012a -    estab             0B/s        0B/s     6µs    1",
            "  └ [2001:db8:ffff:5678:9abc:def0:1234:5678]:65002 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "                                                    wlx00c0ca9a2b3c bB   estab             0B/s        0B/s 250.0ms    1",
        ],
    );
}

/// 136x40: every column but SHARE (the documented second layout: with SHARE the IPv4 rows
/// would not fit on one line); the IPv4 rows stay on one line, the IPv6 rows take two
/// (endpoints, then the cells under the same columns).
#[test]
fn at_136x40_every_column_but_share_is_shown() {
    assert_top(
        &draw(&wide_model(), 136, 40),
        &[
            "mptcp-trace  connections 3 open · subflows 5 · last minute: joins 2, fallbacks 1 · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE                  IFACE           IDS BKUP STATE           SENT      RECV        TX/s        RX/s     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321          red-client      0/0 -    estab         3.0MiB        0B    2.0MiB/s        0B/s   5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321       blue-client     1/0 -    estab         2.5MiB        0B    2.0MiB/s        0B/s   5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321          red-client      0/0 -    estab          1000B        0B        0B/s        0B/s    80µs    1",
            "▾ a1b2c3d4  established  client  age 1.0s  pid 4242 curl  [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 →",
            "    [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  ├ [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  │                                         enx00e04c68012a 0/0 -    estab       117.7MiB        0B        0B/s        0B/s     6µs    1",
            "  └ [2001:db8:ffff:5678:9abc:def0:1234:5678]:65002 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "                                            wlx00c0ca9a2b3c 1/0 bB   estab          1000B        0B        0B/s        0B/s 250.0ms    1",
        ],
    );
}

/// 200x60: full IPv6 endpoints and every column on one line.
#[test]
fn at_200x60_full_ipv6_rows_fit_on_one_line() {
    assert_top(
        &draw(&wide_model(), 200, 60),
        &[
            "mptcp-trace  connections 3 open · subflows 5 · last minute: joins 2, fallbacks 1 · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE                                                                          IFACE           IDS BKUP STATE           SENT      RECV        TX/s        RX/s SHARE     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321                                                                  red-client      0/0 -    estab         3.0MiB        0B    2.0MiB/s        0B/s ▄       5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321                                                               blue-client     1/0 -    estab         2.5MiB        0B    2.0MiB/s        0B/s ▄       5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321                                                                  red-client      0/0 -    estab          1000B        0B        0B/s        0B/s          80µs    1",
            "▾ a1b2c3d4  established  client  age 1.0s  pid 4242 curl  [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535",
            "  ├ [2001:db8:1234:5678:9abc:def0:1234:5678]:65001 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535 enx00e04c68012a 0/0 -    estab       117.7MiB        0B        0B/s        0B/s           6µs    1",
            "  └ [2001:db8:ffff:5678:9abc:def0:1234:5678]:65002 → [2001:db8:4321:8765:cba9:fed0:4321:8765]:65535 wlx00c0ca9a2b3c 1/0 bB   estab          1000B        0B        0B/s        0B/s       250.0ms    1",
        ],
    );
}

/// The reported defect: at 120 columns the header ended at `TX/s      R`.
#[test]
fn the_demo_at_120_columns_keeps_rx_rtt_and_retr() {
    assert_top(
        &draw(&demo_model(), 120, 40),
        &[
            "mptcp-trace  connections 2 open · subflows 3 · last minute: joins 1, fallbacks 1 · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE            IFACE       BKUP STATE             TX/s        RX/s     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321    red-client  -    estab         2.0MiB/s        0B/s   5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321 blue-client -    estab         2.0MiB/s        0B/s   5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321    red-client  -    estab             0B/s        0B/s    80µs    1",
        ],
    );
}

/// And at 136 columns: every column, one line per subflow.
#[test]
fn the_demo_at_136_columns_shows_every_column() {
    assert_top(
        &draw(&demo_model(), 136, 40),
        &[
            "mptcp-trace  connections 2 open · subflows 3 · last minute: joins 1, fallbacks 1 · lost events 0  sort:age",
            "    SUBFLOW LOCAL → REMOTE            IFACE       IDS BKUP STATE           SENT      RECV        TX/s        RX/s SHARE     RTT RETR",
            "▾ 6d816c04  established  client  age 4.0s  pid 4242 curl  10.0.0.2:50000 → 10.0.0.1:4321",
            "  ├ 10.0.0.2:50000 → 10.0.0.1:4321    red-client  0/0 -    estab         3.0MiB        0B    2.0MiB/s        0B/s ▄       5.2ms    1",
            "  └ 192.168.0.2:50001 → 10.0.0.1:4321 blue-client 1/0 -    estab         2.5MiB        0B    2.0MiB/s        0B/s ▄       5.4ms    1",
            "▾ 0badf00d  established  FALLBACK(mp_capable_missing)  client  age 2.0s  pid 4242 curl  10.0.0.2:50002 → 10.0.0.1:4321",
            "  └ 10.0.0.2:50002 → 10.0.0.1:4321    red-client  0/0 -    estab          1000B        0B        0B/s        0B/s          80µs    1",
        ],
    );
}

/// At every common size: no header part lost, no cell cut, every subflow's interface name,
/// flags, RTT with its unit and retransmits present, every endpoint whole.
#[test]
fn every_common_size_shows_every_cell_whole() {
    let s = wide_model();
    for (w, h) in [(80, 24), (100, 30), (120, 40), (136, 40), (200, 60)] {
        let rows = text(&draw(&s, w, h));
        let all = rows.join("\n");
        for part in [
            "connections 3 open",
            "subflows 5",
            "joins 2, fallbacks 1",
            "lost events 0",
            "sort:age",
        ] {
            assert!(rows[..2].join(" ").contains(part), "{w}x{h}: {part}\n{all}");
        }
        for cell in [
            IF1,
            IF2,
            "red-client",
            "blue-client",
            "bB",
            "6µs",
            "250.0ms",
            "5.2ms",
            "80µs",
            "2.0MiB/s",
            "FALLBACK(mp_capable_missing)",
        ] {
            assert!(all.contains(cell), "{w}x{h}: {cell}\n{all}");
        }
        for (a, p) in [V6_CLIENT, V6_CLIENT2, V6_SERVER, RED, BLUE, SRV] {
            let ep = match ip(a) {
                IpAddr::V6(_) => format!("[{a}]:{p}"),
                _ => format!("{a}:{p}"),
            };
            assert!(all.contains(&ep), "{w}x{h}: {ep}\n{all}");
        }
        assert_eq!(all.matches("established").count(), 3, "{w}x{h}\n{all}");
        assert!(rows.iter().all(|r| r.chars().count() <= w as usize));
    }
}

/// Many connections at 80x24: moving down past the screen scrolls the connections, and the
/// header and column names stay on top.
#[test]
fn the_column_names_stay_while_scrolling() {
    let mut s = State::default();
    for i in 0..30u64 {
        let port = 40_000 + i as u16;
        s.apply(created(
            0x100 + i,
            "00c0ffee",
            S + i,
            ("10.0.0.2", port),
            SRV,
        ));
        s.apply(subflow(
            0x100 + i,
            0x1000 + i,
            S + i,
            ("10.0.0.2", port),
            SRV,
            IF1,
            false,
        ));
    }
    for _ in 0..25 {
        press(&mut s, KeyCode::Char('j'));
    }
    let rows = text(&draw(&s, 80, 24));
    assert!(
        rows[0].starts_with("mptcp-trace  connections 30 open"),
        "{rows:#?}"
    );
    assert!(
        rows[2].starts_with("    SUBFLOW LOCAL → REMOTE"),
        "{rows:#?}"
    );
    assert!(
        rows[3].contains("IFACE") && rows[3].contains("RETR"),
        "{rows:#?}"
    );
    let selected = s.visible()[24].client.unwrap().1.to_string();
    assert!(
        rows[4..23].iter().any(|r| r.contains(&selected)),
        "the selection (port {selected}) is in view: {rows:#?}"
    );
    assert!(!rows[4..].iter().any(|r| r.contains(":40000 ")), "scrolled");
}

/// An empty body says what is true: a filter hides connections, or they all closed.
#[test]
fn an_empty_list_says_why() {
    let mut s = model();
    s.ui.filter = "nomatch".into();
    let rows = text(&draw(&s, 100, 8));
    assert_eq!(
        rows[0],
        "mptcp-trace  connections 2 open · subflows 3 · last minute: joins 1, fallbacks 1 · lost events 0"
    );
    assert_eq!(rows[1], "  sort:age  filter:nomatch (0 of 2 shown)");
    assert_eq!(
        rows[3],
        "  (no connection matches the filter \"nomatch\"; 2 hidden — `/` then Esc clears it)"
    );
    assert!(!rows.join("\n").contains("no MPTCP connection yet"));

    // 60 connections came and went.
    let mut s = State::default();
    for i in 0..60u64 {
        s.apply(created(0x100 + i, "00c0ffee", S + i, RED, SRV));
        s.apply(closed(0x100 + i, S + i + 1));
    }
    s.apply(Update::Tick(S + 60 + LINGER_NS + 1));
    assert!(s.conns.is_empty());
    let rows = text(&draw(&s, 100, 8));
    assert!(
        rows.iter()
            .any(|r| r
                == "  (no MPTCP connection open now; 60 seen since the view started, all closed)"),
        "{rows:#?}"
    );
    let rows = text(&draw(&State::default(), 100, 8));
    assert!(
        rows.iter().any(|r| r == "  (no MPTCP connection yet)"),
        "{rows:#?}"
    );
}

/// A long banner (the demo's note) wraps between words, and the key help stays whole.
#[test]
fn the_banner_wraps_between_words() {
    let mut s = model();
    s.ui.banner = Some(
        "demo (mptcp-client-demo4935 / mptcp-server-demo4935): the TCP→MPTCP upgrade is not \
         available (this kernel refuses BPF trampolines (fmod_ret); `mptcp-trace upgrade` says why)"
            .into(),
    );
    let rows = text(&draw(&s, 80, 24));
    assert_eq!(
        rows[20..],
        [
            "demo (mptcp-client-demo4935 / mptcp-server-demo4935): the TCP→MPTCP upgrade is",
            "not available (this kernel refuses BPF trampolines (fmod_ret); `mptcp-trace",
            "upgrade` says why)",
            "q quit  ↑↓/jk move  Enter fold  / filter  s sort  p pause  ? help",
        ]
    );
}

/// A real capture (`events --json --stats-interval 1` during `demo`), as `live --replay` reads it.
const CAPTURE: &str = include_str!("../../../tests/data/demo-capture.ndjson");

#[test]
fn a_replayed_capture_shows_its_connections_and_the_rates_of_its_samples() {
    let events = super::replay::parse(CAPTURE).unwrap();
    assert_eq!(events.len(), CAPTURE.lines().count());
    // Up to the third sample: both connections open, each subflow with the rate of its last
    // subflow_stats record: its delta over its interval (red-client 5704680 B in 1.0007 s).
    let third = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind() == crate::event::Kind::SubflowStats)
        .nth(8)
        .map(|(i, _)| i)
        .unwrap();
    let mut s = State::default();
    for e in &events[..third + 4] {
        s.apply(Update::Event(Arc::new(e.clone())));
    }
    s.apply(Update::Tick(events[third].ts_ns));
    assert_eq!((s.open_conns(), s.open_subflows()), (2, 4));
    let screen = text(&draw(&s, 136, 40));
    let find = |needle: &str| {
        screen
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not on screen:\n{}", screen.join("\n")))
            .clone()
    };
    assert!(find("c3c00218").contains("client"), "{screen:?}");
    assert!(find("a436ea2c").contains("server"), "{screen:?}");
    for (iface, rate) in [
        ("red-client", "5.4MiB/s"),
        ("blue-client", "5.6MiB/s"),
        ("red-server", "5.4MiB/s"),
        ("blue-server", "5.6MiB/s"),
    ] {
        let row = find(iface);
        assert!(row.contains("estab"), "{row}");
        assert!(row.contains(rate), "{iface}: {row}");
    }
    // And the record's totals (8335104 B sent on red).
    assert!(find("red-client").contains("7.9MiB"), "{screen:?}");
    // The whole capture: both closed, with the close's figures.
    for e in &events[third + 4..] {
        s.apply(Update::Event(Arc::new(e.clone())));
    }
    assert_eq!(s.open_conns(), 0);
    let screen = text(&draw(&s, 136, 40));
    assert!(
        screen
            .iter()
            .any(|l| l.contains("red-client") && l.contains("13.8MiB")),
        "{screen:?}"
    );
}

#[test]
fn a_capture_that_is_not_ndjson_events_is_refused_with_its_line() {
    let err = super::replay::parse("{\"v\":1}\n").unwrap_err();
    assert!(err.starts_with("capture line 1: not an event"), "{err}");
    let err = super::replay::parse(&format!("{}\nnot json\n", CAPTURE.lines().next().unwrap()))
        .unwrap_err();
    assert!(err.starts_with("capture line 2:"), "{err}");
    assert_eq!(
        super::replay::parse("\n\n").unwrap_err(),
        "capture: no events in it"
    );
    let v2 = CAPTURE
        .lines()
        .next()
        .unwrap()
        .replacen("\"v\":1", "\"v\":2", 1);
    assert!(super::replay::parse(&v2)
        .unwrap_err()
        .contains("schema version 2"));
}

#[test]
fn a_replayed_address_event_of_an_unseen_connection_is_not_a_connection() {
    let first = CAPTURE.lines().next().unwrap();
    let stray = r#"{"v":1,"time":"2026-12-06T06:11:05.9Z","ts_ns":16440174600000,"event":"addr_announced","token":"0badf00d","netns":4026532174,"family":"ipv4","remote_id":1,"addr":"192.168.0.1"}"#;
    let own = r#"{"v":1,"time":"2026-12-06T06:11:05.9Z","ts_ns":16440174600001,"event":"addr_announced","token":"c3c00218","netns":4026532174,"family":"ipv4","remote_id":1,"addr":"192.168.0.1"}"#;
    let events = super::replay::parse(&format!("{first}\n{stray}\n{own}\n")).unwrap();
    let mut s = State::default();
    for e in events {
        s.apply(Update::Event(Arc::new(e)));
    }
    assert_eq!(s.conns.len(), 1);
    let c = s.conns.values().next().unwrap();
    assert_eq!(c.token.as_deref(), Some("c3c00218"));
    assert_eq!(c.peer_addrs.len(), 1, "its own announcement is kept");
}
