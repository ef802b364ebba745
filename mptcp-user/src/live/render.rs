//! Draws a [`State`]: header with totals, one block per connection with one row per subflow,
//! footer with the keys. Only reads the state; works on any backend (tests use `TestBackend`).

use std::net::IpAddr;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
    Frame,
};

use super::state::{Conn, ConnState, PeerAddr, State, Subflow};
use crate::text::printable;

/// Below this width the subflow rows drop the byte totals, ids and backup columns.
const WIDE: u16 = 120;

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= (1u64 << 30) as f64 => format!("{:.1}G", n / (1u64 << 30) as f64),
        n if n >= (1u64 << 20) as f64 => format!("{:.1}M", n / (1u64 << 20) as f64),
        n if n >= 1024.0 => format!("{:.1}K", n / 1024.0),
        n => format!("{n}B"),
    }
}

pub fn rate(r: f64) -> String {
    format!("{}/s", bytes(r.round() as u64))
}

fn rtt(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000 => format!("{us}µs"),
        Some(us) => format!("{:.1}ms", us as f64 / 1000.0),
    }
}

fn age(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s < 60 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    }
}

fn endpoint((a, p): (IpAddr, u16)) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    }
}

fn dim(style: Style, closed: bool) -> Style {
    if closed {
        style.fg(Color::DarkGray).add_modifier(Modifier::DIM)
    } else {
        style
    }
}

fn header(state: &State) -> Line<'static> {
    let mut parts = vec![
        Span::styled("mptcp-trace", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  connections {} open · subflows {} · last minute: joins {}, fallbacks {} · lost events {}",
            state.open_conns(),
            state.open_subflows(),
            state.joins_last_minute(),
            state.fallbacks_last_minute(),
            state.lost.count,
        )),
    ];
    if let Some(n) = state.upgraded {
        parts.push(Span::raw(format!(" · upgraded sockets {n}")));
    }
    parts.push(Span::raw(format!("  sort:{}", state.ui.sort.label())));
    if !state.ui.filter.is_empty() {
        parts.push(Span::raw(format!("  filter:{}", state.ui.filter)));
    }
    if state.ui.paused {
        parts.push(Span::styled(
            "  PAUSED",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(n) = state.lost.recursion_misses.filter(|&n| n > 0) {
        parts.push(Span::styled(
            format!(" (skipped program runs {n})"),
            Style::default().fg(Color::Red),
        ));
    }
    if state.lost.count > 0 {
        parts[1].style = Style::default().fg(Color::Red);
    }
    Line::from(parts)
}

fn columns(wide: bool) -> Line<'static> {
    let text = if wide {
        format!(
            "    {:<46} {:<12} {:>5} {:<4} {:<10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>5}",
            "SUBFLOW LOCAL → REMOTE",
            "IFACE",
            "IDS",
            "BKUP",
            "STATE",
            "SENT",
            "RECV",
            "TX/s",
            "RX/s",
            "RTT",
            "RETR"
        )
    } else {
        format!(
            "    {:<32} {:<6} {:<6} {:>9} {:>9} {:>7}",
            "SUBFLOW", "IFACE", "STATE", "TX/s", "RX/s", "RTT"
        )
    };
    Line::styled(text, Style::default().add_modifier(Modifier::BOLD))
}

fn conn_line(state: &State, c: &Conn, selected: bool, folded: bool) -> Line<'static> {
    let closed = !c.is_open();
    let base = dim(Style::default().add_modifier(Modifier::BOLD), closed);
    let base = if selected {
        base.add_modifier(Modifier::REVERSED)
    } else {
        base
    };
    let arrow = if folded { "▸" } else { "▾" };
    let ends = match (c.client, c.server) {
        (Some(cl), Some(sv)) => format!("{} → {}", endpoint(cl), endpoint(sv)),
        _ => "? → ?".into(),
    };
    let side = match c.side {
        Some(crate::event::Side::Server) => "server",
        Some(crate::event::Side::Client) => "client",
        None => "",
    };
    let owner = match (c.pid, &c.comm) {
        (Some(p), Some(n)) => format!("pid {p} {}", printable(n)),
        (Some(p), None) => format!("pid {p}"),
        _ => "pid ?".into(),
    };
    let st = match c.state {
        ConnState::Connecting => "connecting",
        ConnState::Established => "established",
        ConnState::Closed => "closed",
    };
    let end = c.closed_ns.unwrap_or(state.now_ns);
    let mut spans = vec![Span::styled(
        format!(
            "{arrow} {:<8}  {ends}  {side}  {owner}  age {}  {st}",
            c.token.as_deref().unwrap_or("--------"),
            age(end.saturating_sub(c.created_ns)),
        ),
        base,
    )];
    if let Some(r) = &c.fallback {
        spans.push(Span::styled(
            format!("  FALLBACK({r})"),
            dim(
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
                closed,
            ),
        ));
    }
    if let Some(r) = &c.reset {
        spans.push(Span::styled(
            format!("  RESET({r})"),
            dim(
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                closed,
            ),
        ));
    }
    if folded {
        spans.push(Span::styled(
            format!("  [{} subflows folded]", c.subflows.len()),
            dim(Style::default(), closed),
        ));
    }
    Line::from(spans)
}

fn subflow_line(sf: &Subflow, last: bool, wide: bool, conn_closed: bool) -> Line<'static> {
    let tree = if last { "└" } else { "├" };
    let state = match (&sf.reason, sf.is_open()) {
        (Some(r), false) if r != "closed" => r.clone(),
        _ => sf.state.clone(),
    };
    let ids = format!(
        "{}/{}",
        sf.local_id.map_or("?".into(), |v| v.to_string()),
        sf.remote_id.map_or("?".into(), |v| v.to_string())
    );
    let text = if wide {
        format!(
            "  {tree} {:<46} {:<12} {:>5} {:<4} {:<10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>5}",
            format!("{} → {}", endpoint(sf.local), endpoint(sf.remote)),
            printable(sf.ifname.as_deref().unwrap_or("?")),
            ids,
            if sf.backup { "yes" } else { "-" },
            state,
            bytes(sf.bytes_sent),
            bytes(sf.bytes_received),
            rate(sf.tx_rate),
            rate(sf.rx_rate),
            rtt(sf.srtt_us),
            sf.retrans,
        )
    } else {
        format!(
            "  {tree} {:<32} {:<6} {:<6} {:>9} {:>9} {:>7}",
            format!("{}→{}", endpoint(sf.local), endpoint(sf.remote)),
            sf.path_name(),
            state,
            rate(sf.tx_rate),
            rate(sf.rx_rate),
            rtt(sf.srtt_us),
        )
    };
    let style = if sf.reason.as_deref().is_some_and(|r| r != "closed") {
        Style::default().fg(Color::Red)
    } else {
        Style::default()
    };
    Line::styled(text, dim(style, conn_closed || !sf.is_open()))
}

/// An ADD_ADDR / RM_ADDR of the peer, under its connection, highlighted.
fn peer_addr_line(a: &PeerAddr, conn_closed: bool) -> Line<'static> {
    let what = match (a.announced, a.addr) {
        (true, Some((ip, Some(port)))) => format!(
            "peer announced {} (id {})",
            endpoint((ip, port)),
            a.remote_id
        ),
        (true, Some((ip, None))) => format!("peer announced {ip} (id {})", a.remote_id),
        (true, None) => format!("peer announced id {}", a.remote_id),
        (false, _) => format!("peer removed address id {}", a.remote_id),
    };
    Line::styled(
        format!("  ⇢ {what}"),
        dim(Style::default().fg(Color::Cyan), conn_closed),
    )
}

/// A `conn_diagnosis` under its connection: why it has fewer subflows than configured.
fn diagnosis_line((cause, detail): &(String, String), conn_closed: bool) -> Line<'static> {
    Line::styled(
        format!("  ? {cause}: {}", crate::text::printable(detail)),
        dim(Style::default().fg(Color::Yellow), conn_closed),
    )
}

/// The body lines and the index of the selected connection's line.
fn body(state: &State, wide: bool) -> (Vec<Line<'static>>, Option<usize>) {
    let mut lines = vec![columns(wide)];
    let mut sel = None;
    let visible = state.visible();
    if visible.is_empty() {
        lines.push(Line::styled(
            "  (no MPTCP connection yet)",
            Style::default().fg(Color::DarkGray),
        ));
    }
    for c in visible {
        let selected = state.ui.selected == Some(c.key);
        let folded = state.ui.folded.contains(&c.key);
        if selected {
            sel = Some(lines.len());
        }
        lines.push(conn_line(state, c, selected, folded));
        if !folded {
            let n = c.subflows.len();
            for (i, sf) in c.subflows.iter().enumerate() {
                lines.push(subflow_line(sf, i + 1 == n, wide, !c.is_open()));
            }
            for a in &c.peer_addrs {
                lines.push(peer_addr_line(a, !c.is_open()));
            }
            for d in &c.diagnoses {
                lines.push(diagnosis_line(d, !c.is_open()));
            }
        }
    }
    (lines, sel)
}

fn footer(state: &State) -> Vec<Line<'static>> {
    let mut v = Vec::new();
    if let Some(b) = &state.ui.banner {
        v.push(Line::styled(b.clone(), Style::default().fg(Color::Cyan)));
    }
    if state.ui.editing_filter {
        v.push(Line::from(format!(
            "/{}▏  (Enter: keep, Esc: clear)",
            state.ui.filter
        )));
    } else {
        v.push(Line::styled(
            "q quit  ↑↓/jk move  Enter fold  / filter  s sort  p pause  ? help",
            Style::default().fg(Color::DarkGray),
        ));
    }
    v
}

const HELP: &[&str] = &[
    "q, Ctrl-C   quit",
    "↑ ↓, j k    move between connections",
    "Enter       fold / unfold the selected connection",
    "/           filter (substring of token, address, comm)",
    "s           sort: age → throughput → token",
    "p           pause / resume the display",
    "?           this help (any key closes it)",
    "",
    "Dimmed rows closed a few seconds ago.",
    "TX/s RX/s RTT RETR come from sock_diag (tcp_info), once a second.",
];

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

pub fn render(state: &State, frame: &mut Frame) {
    let area = frame.area();
    let foot = footer(state);
    // The footer wraps (the demo's banner is long); count the rows it takes.
    let foot_height = foot
        .iter()
        .map(|l| (l.width() as u16).div_ceil(area.width.max(1)).max(1))
        .sum::<u16>();
    let [top, mid, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(foot_height),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header(state)), top);
    let (lines, sel) = body(state, area.width >= WIDE);
    // Keep the selected connection in view.
    let scroll = match sel {
        Some(i) if i >= mid.height as usize => (i + 1 - mid.height as usize) as u16,
        _ => 0,
    };
    frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), mid);
    frame.render_widget(Paragraph::new(foot).wrap(Wrap { trim: true }), bottom);
    if state.ui.help {
        let popup = centered(area, 66, HELP.len() as u16 + 2);
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
                .block(Block::default().borders(Borders::ALL).title(" keys ")),
            popup,
        );
    }
}
