//! Draws a [`State`]: header with totals, the column names, one block per connection with one
//! row per subflow, footer with the keys. Only reads the state; works on any backend (tests use
//! `TestBackend`).
//!
//! Nothing is cut silently. The header and connection lines wrap onto more lines when the
//! terminal is narrow; the column names stay on screen while the body scrolls. Every column
//! is as wide as its widest cell (at least its usual width), so a 15-character interface name
//! or a full IPv6 address never shifts the columns after it. The layout is the first of these
//! that fits the width:
//! 1. every column, the subflow's endpoints first on its row;
//! 2. every column but SHARE (the throughput-share sparkline), endpoints first on the row;
//! 3. the reduced set (IDS, SENT, RECV and SHARE dropped: the close counters are in
//!    `events`), endpoints first on the row;
//! 4. every column but SHARE, on a second line under the subflow's endpoints;
//! 5. the reduced set on a second line (under 100 columns or so).

use std::net::IpAddr;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
    Frame,
};

use super::state::{Conn, ConnState, PeerAddr, State, Subflow, SHARES};
use crate::text::{printable, size};

pub fn rate(r: f64) -> String {
    format!("{}/s", size(r.round() as u64))
}

fn rtt(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000 => format!("{us}µs"),
        Some(us) if us < 1_000_000 => format!("{:.1}ms", us as f64 / 1000.0),
        Some(us) => format!("{:.2}s", us as f64 / 1e6),
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

fn width(s: &str) -> usize {
    Span::raw(s).width()
}

/// Lays `spans` out over lines of at most `max` columns, breaking between spans (a span wider
/// than a line is split); continuation lines start with `indent` spaces and drop the span's
/// leading blanks.
fn wrap(spans: Vec<Span<'static>>, max: usize, indent: usize) -> Vec<Line<'static>> {
    let max = max.max(indent + 8);
    let mut lines: Vec<Vec<Span<'static>>> = vec![Vec::new()];
    let mut used = 0;
    // Nothing but the indent on the current line yet.
    let mut fresh = true;
    for span in spans {
        let style = span.style;
        let mut content = span.content.into_owned();
        while !content.is_empty() {
            let w = width(&content);
            let line = lines.last_mut().expect("one line");
            if used + w <= max {
                used += w;
                line.push(Span::styled(content, style));
                fresh = false;
                break;
            }
            if !fresh {
                lines.push(vec![Span::raw(" ".repeat(indent))]);
                used = indent;
                fresh = true;
                content = content.trim_start().to_string();
                continue;
            }
            // Wider than a whole line: cut it, at the last blank that fits if there is one.
            let room = max - used;
            let fits: String = content.chars().take(room + 1).collect();
            let take = match fits.rfind(' ') {
                Some(at) if at > 0 => fits[..at].chars().count(),
                _ => room,
            }
            .min(room);
            let cut: String = content.chars().take(take).collect();
            content = content.chars().skip(take).collect();
            used += width(&cut);
            line.push(Span::styled(cut, style));
            fresh = false;
        }
    }
    lines.into_iter().map(Line::from).collect()
}

/// The subflow columns after the endpoints: name, usual width (the widest cell widens it),
/// right-aligned, kept in the reduced set.
const COLUMNS: [(&str, usize, bool, bool); N_COLUMNS] = [
    ("IFACE", 5, false, true),
    ("IDS", 3, true, false),
    ("BKUP", 4, false, true),
    ("STATE", 10, false, true),
    ("SENT", 9, true, false),
    ("RECV", 9, true, false),
    ("TX/s", 11, true, true),
    ("RX/s", 11, true, true),
    ("SHARE", SHARES, false, false),
    ("RTT", 7, true, true),
    ("RETR", 4, true, true),
];
const N_COLUMNS: usize = 11;
/// The SHARE column's index in [`COLUMNS`].
const SHARE: usize = 8;

/// The subflow's share of its connection's throughput over its last samples, one block per
/// sample (▁ a little … █ all of it; a blank: nothing), newest on the right.
pub(super) fn sparkline(shares: &std::collections::VecDeque<u8>) -> String {
    const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    shares.iter().map(|&e| BLOCKS[e.min(8) as usize]).collect()
}
const ENDS_TITLE: &str = "SUBFLOW LOCAL → REMOTE";

/// The cells of a subflow row, in [`COLUMNS`] order, with their styles.
fn cells(sf: &Subflow) -> [(String, Style); N_COLUMNS] {
    let plain = Style::default();
    let flags = match (sf.backup, sf.peer_backup) {
        (false, false) => "-",
        (true, false) => "b",
        (false, true) => "B",
        (true, true) => "bB",
    };
    let flag_style = if flags == "-" {
        plain
    } else {
        plain.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    };
    let state_style = match sf.state.as_str() {
        "failed" | "reset" => plain.fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => plain,
    };
    [
        (
            printable(sf.ifname.as_deref().unwrap_or("?")).into_owned(),
            plain,
        ),
        (
            format!(
                "{}/{}",
                sf.local_id.map_or("?".into(), |v| v.to_string()),
                sf.remote_id.map_or("?".into(), |v| v.to_string())
            ),
            plain,
        ),
        (flags.into(), flag_style),
        (sf.state.clone(), state_style),
        (size(sf.bytes_sent), plain),
        (size(sf.bytes_received), plain),
        (rate(sf.tx_rate), plain),
        (rate(sf.rx_rate), plain),
        (sparkline(&sf.shares), plain.fg(Color::Cyan)),
        (rtt(sf.srtt_us), plain),
        (sf.retrans.to_string(), plain),
    ]
}

/// A subflow's endpoints, in two pieces so that a narrow line breaks at the arrow.
fn ends(sf: &Subflow) -> [String; 2] {
    [
        format!("{} →", endpoint(sf.local)),
        format!(" {}", endpoint(sf.remote)),
    ]
}

fn ends_width(sf: &Subflow) -> usize {
    ends(sf).iter().map(|s| width(s)).sum()
}

/// The columns chosen for a width and the rows to show.
#[derive(Clone, Debug, PartialEq)]
struct Cols {
    /// Width of each of [`COLUMNS`], `None` when left out.
    widths: [Option<usize>; N_COLUMNS],
    /// Width of the endpoints column: a row whose endpoints are wider has them on a line of
    /// their own, its cells on the next line, in the same columns.
    ends: usize,
    /// No room for an endpoints column: every subflow takes two lines, the cells indented
    /// under the endpoints.
    stacked: bool,
}

/// Where the cells start on a row: after "  ├ " and the endpoints, or under them.
const TREE: usize = 4;
const STACKED: usize = 6;

impl Cols {
    fn choose(conns: &[&Conn], max: usize) -> Cols {
        let rows: Vec<&Subflow> = conns.iter().flat_map(|c| c.subflows.iter()).collect();
        let mut widths = COLUMNS.map(|(name, w, _, _)| w.max(name.len()));
        for sf in &rows {
            for (w, (cell, _)) in widths.iter_mut().zip(cells(sf)) {
                *w = (*w).max(width(&cell));
            }
        }
        let widest = rows
            .iter()
            .map(|sf| ends_width(sf))
            .max()
            .unwrap_or(0)
            .max(width(ENDS_TITLE));
        let pick = |full: bool| {
            let mut v = [None; N_COLUMNS];
            for (i, (_, _, _, reduced)) in COLUMNS.iter().enumerate() {
                if full || *reduced {
                    v[i] = Some(widths[i]);
                }
            }
            v
        };
        let (all, reduced) = (pick(true), pick(false));
        // The sparkline is the first to go: every other column without it.
        let mut full = all;
        full[SHARE] = None;
        // Room for the endpoints beside the cells.
        let room = |w: &[Option<usize>; N_COLUMNS]| {
            max.saturating_sub(TREE + w.iter().flatten().map(|w| w + 1).sum::<usize>())
        };
        // Every column if every row fits on one line; else the set that keeps the most rows
        // on one line (every column on a tie), the others taking two lines; else no
        // endpoints column at all.
        let inline = |w: &[Option<usize>; N_COLUMNS]| {
            rows.iter().filter(|sf| ends_width(sf) <= room(w)).count()
        };
        let choice = if room(&all) >= widest {
            Some((all, 0))
        } else if room(&full) >= widest {
            Some((full, 0))
        } else {
            [(full, inline(&full)), (reduced, inline(&reduced))]
                .into_iter()
                .filter(|(w, _)| room(w) >= width(ENDS_TITLE))
                .max_by_key(|&(w, n)| (n, w == full))
        };
        match choice {
            Some((w, _)) => Cols {
                ends: room(&w).min(widest),
                widths: w,
                stacked: false,
            },
            None => Cols {
                widths: reduced,
                ends: 0,
                stacked: true,
            },
        }
    }

    /// Where the cells start.
    fn indent(&self) -> usize {
        if self.stacked {
            STACKED
        } else {
            TREE + self.ends + 1
        }
    }

    /// The cells, padded, from the first column on.
    fn row(
        &self,
        cells: [(String, Style); N_COLUMNS],
        style: impl Fn(Style) -> Style,
    ) -> Vec<Span<'static>> {
        let mut out = Vec::new();
        for (i, (cell, st)) in cells.into_iter().enumerate() {
            let Some(w) = self.widths[i] else { continue };
            let sep = if out.is_empty() { "" } else { " " };
            let text = if COLUMNS[i].2 {
                format!("{sep}{cell:>w$}")
            } else {
                format!("{sep}{cell:<w$}")
            };
            out.push(Span::styled(text, style(st)));
        }
        out
    }

    /// The column names: one line, or two when the endpoints have their own line.
    fn header(&self) -> Vec<Line<'static>> {
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let names = COLUMNS.map(|(n, ..)| (n.to_string(), bold));
        let cells = self.row(names, |s| s);
        let mut first = vec![Span::styled(format!("{:<TREE$}{ENDS_TITLE}", ""), bold)];
        if self.stacked {
            let mut second = vec![Span::raw(" ".repeat(STACKED))];
            second.extend(cells);
            return vec![Line::from(first), Line::from(second)];
        }
        first.push(Span::raw(
            " ".repeat(self.indent() - TREE - width(ENDS_TITLE)),
        ));
        first.extend(cells);
        vec![Line::from(first)]
    }
}

fn header(state: &State, shown: usize, max: usize) -> Vec<Line<'static>> {
    let lost = if state.lost.count > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let mut parts = vec![
        Span::styled("mptcp-trace", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  connections {} open", state.open_conns())),
        Span::raw(format!(" · subflows {}", state.open_subflows())),
        Span::raw(format!(
            " · last minute: joins {}, fallbacks {}",
            state.joins_last_minute(),
            state.fallbacks_last_minute(),
        )),
        Span::styled(format!(" · lost events {}", state.lost.count), lost),
    ];
    if let Some(n) = state.lost.recursion_misses.filter(|&n| n > 0) {
        parts.push(Span::styled(
            format!(" (skipped program runs {n})"),
            Style::default().fg(Color::Red),
        ));
    }
    if let Some(n) = state.upgraded {
        parts.push(Span::raw(format!(" · upgraded sockets {n}")));
    }
    parts.push(Span::raw(format!("  sort:{}", state.ui.sort.label())));
    if !state.ui.filter.is_empty() {
        parts.push(Span::raw(format!(
            "  filter:{} ({shown} of {} shown)",
            state.ui.filter,
            state.conns.len()
        )));
    }
    if state.ui.paused {
        parts.push(Span::styled(
            "  PAUSED (frozen; still tracing)",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    wrap(parts, max, 2)
}

fn conn_lines(
    state: &State,
    c: &Conn,
    selected: bool,
    folded: bool,
    max: usize,
) -> Vec<Line<'static>> {
    let closed = !c.is_open();
    let sel = |s: Style| {
        if selected {
            s.add_modifier(Modifier::REVERSED)
        } else {
            s
        }
    };
    let base = sel(dim(Style::default().add_modifier(Modifier::BOLD), closed));
    let plain = sel(dim(Style::default(), closed));
    let mark = |colour: Color| {
        sel(dim(
            Style::default().fg(colour).add_modifier(Modifier::BOLD),
            closed,
        ))
    };
    let arrow = if folded { "▸" } else { "▾" };
    let st = match c.state {
        ConnState::Connecting => "connecting",
        ConnState::Established => "established",
        ConnState::Closed => "closed",
    };
    let mut spans = vec![Span::styled(
        format!(
            "{arrow} {:<8}  {st}",
            c.token.as_deref().unwrap_or("--------")
        ),
        base,
    )];
    if let Some(r) = &c.fallback {
        spans.push(Span::styled(
            format!("  FALLBACK({r})"),
            mark(Color::Yellow),
        ));
    }
    if let Some(r) = &c.reset {
        spans.push(Span::styled(format!("  RESET({r})"), mark(Color::Red)));
    }
    if c.failed > 0 {
        spans.push(Span::styled(
            format!("  FAILED JOINS {}", c.failed),
            mark(Color::Red),
        ));
    }
    if c.existing {
        spans.push(Span::styled(
            "  EXISTING (open before the tracer)",
            mark(Color::Cyan),
        ));
    }
    if let Some(side) = c.side {
        spans.push(Span::styled(
            match side {
                crate::event::Side::Server => "  server",
                crate::event::Side::Client => "  client",
            },
            plain,
        ));
    }
    let end = c.closed_ns.unwrap_or(state.now_ns);
    spans.push(Span::styled(
        format!("  age {}", age(end.saturating_sub(c.created_ns))),
        plain,
    ));
    spans.push(Span::styled(
        match (c.pid, &c.comm) {
            (Some(p), Some(n)) => format!("  pid {p} {}", printable(n)),
            (Some(p), None) => format!("  pid {p}"),
            _ => "  pid ?".into(),
        },
        plain,
    ));
    match (c.client, c.server) {
        (Some(cl), Some(sv)) => {
            spans.push(Span::styled(format!("  {} →", endpoint(cl)), plain));
            spans.push(Span::styled(format!(" {}", endpoint(sv)), plain));
        }
        _ => spans.push(Span::styled("  ? → ?", plain)),
    }
    if folded {
        spans.push(Span::styled(
            format!("  [{} subflows folded]", c.subflows.len()),
            plain,
        ));
    }
    let mut lines = wrap(spans, max, 4);
    // Why it has fewer subflows than configured (`conn_diagnosis`), right under it.
    for (cause, detail) in &c.diagnoses {
        lines.extend(wrap(
            vec![Span::styled(
                format!("  ⚑ {cause}: {}", crate::text::printable(detail)),
                dim(
                    Style::default()
                        .fg(Color::Magenta)
                        .add_modifier(Modifier::BOLD),
                    closed,
                ),
            )],
            max,
            6,
        ));
    }
    lines
}

fn subflow_lines(
    sf: &Subflow,
    last: bool,
    cols: &Cols,
    conn_closed: bool,
    max: usize,
) -> Vec<Line<'static>> {
    let closed = conn_closed || !sf.is_open();
    let tree = if last { "└" } else { "├" };
    let down = if last { " " } else { "│" };
    // A closed subflow's row is dimmed, but what says why (STATE, flags) keeps its colour
    // while the connection lives.
    let row = cols.row(cells(sf), |s| {
        if s.fg.is_some() && !conn_closed {
            s
        } else {
            dim(s, closed)
        }
    });
    let plain = dim(Style::default(), closed);
    let [local, remote] = ends(sf);
    let mut lines = Vec::new();
    if !cols.stacked && ends_width(sf) <= cols.ends {
        let pad = cols.ends - ends_width(sf) + 1;
        let mut spans = vec![Span::styled(
            format!("  {tree} {local}{remote}{:pad$}", ""),
            plain,
        )];
        spans.extend(row);
        lines.push(Line::from(spans));
    } else {
        lines.extend(wrap(
            vec![
                Span::styled(format!("  {tree} {local}"), plain),
                Span::styled(remote, plain),
            ],
            max,
            6,
        ));
        let mut second = vec![Span::styled(
            format!("  {down}{:w$}", "", w = cols.indent() - 3),
            plain,
        )];
        second.extend(row);
        lines.push(Line::from(second));
    }
    if let Some(why) = &sf.cause {
        lines.extend(wrap(
            vec![Span::styled(
                format!("  {down}   ✗ {why}"),
                dim(
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                    conn_closed,
                ),
            )],
            max,
            8,
        ));
    }
    lines
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
    let colour = if a.announced {
        Color::Cyan
    } else {
        Color::Yellow
    };
    Line::styled(
        format!("  ⇢ {what}"),
        dim(
            Style::default().fg(colour).add_modifier(Modifier::BOLD),
            conn_closed,
        ),
    )
}

/// What an empty body says: the truth about why nothing is listed.
fn nothing_shown(state: &State) -> String {
    if !state.conns.is_empty() {
        format!(
            "  (no connection matches the filter \"{}\"; {} hidden — `/` then Esc clears it)",
            state.ui.filter,
            state.conns.len()
        )
    } else if state.seen() > 0 {
        format!(
            "  (no MPTCP connection open now; {} seen since the view started, all closed)",
            state.seen()
        )
    } else {
        "  (no MPTCP connection yet)".into()
    }
}

/// The column names, the body lines, and the index of the selected connection's line.
/// The column names and the lines of the connections that can be on screen (`height` rows at
/// most), with the selected connection's line among them.
///
/// Only connections near the selection are laid out: each takes at least one line, so `height`
/// connections before the selected one and `height` from it on fill any screen. At 1,000
/// connections a second thousands linger, and laying them all out every frame took half a core.
/// The columns are sized for what is laid out.
fn body(
    state: &State,
    max: usize,
    height: usize,
) -> (Vec<Line<'static>>, Vec<Line<'static>>, Option<usize>) {
    let mut lines = Vec::new();
    let mut sel = None;
    let visible = state.visible();
    let at = state
        .ui
        .selected
        .and_then(|k| visible.iter().position(|c| c.key == k));
    let lo = at.map_or(0, |s| s.saturating_sub(height));
    let hi = visible.len().min(at.map_or(0, |s| s + 1).max(lo) + height);
    let visible = &visible[lo..hi];
    let cols = Cols::choose(visible, max);
    if visible.is_empty() {
        lines.extend(wrap(
            vec![Span::styled(
                nothing_shown(state),
                Style::default().fg(Color::DarkGray),
            )],
            max,
            3,
        ));
    }
    for c in visible.iter().copied() {
        let selected = state.ui.selected == Some(c.key);
        let folded = state.ui.folded.contains(&c.key);
        if selected {
            sel = Some(lines.len());
        }
        lines.extend(conn_lines(state, c, selected, folded, max));
        if !folded {
            let n = c.subflows.len();
            for (i, sf) in c.subflows.iter().enumerate() {
                lines.extend(subflow_lines(sf, i + 1 == n, &cols, !c.is_open(), max));
            }
            for a in &c.peer_addrs {
                lines.push(peer_addr_line(a, !c.is_open()));
            }
        }
    }
    (cols.header(), lines, sel)
}

fn footer(state: &State, max: usize) -> Vec<Line<'static>> {
    let mut v = Vec::new();
    if let Some(b) = &state.ui.banner {
        v.extend(wrap(
            vec![Span::styled(b.clone(), Style::default().fg(Color::Cyan))],
            max,
            0,
        ));
    }
    if state.ui.editing_filter {
        v.push(Line::from(format!(
            "/{}▏  (Enter: keep, Esc: clear)",
            state.ui.filter
        )));
    } else {
        v.extend(wrap(
            [
                "q quit",
                "  ↑↓/jk move",
                "  Enter fold",
                "  / filter",
                "  s sort",
                "  p pause",
                "  ? help",
            ]
            .map(|s| Span::styled(s, Style::default().fg(Color::DarkGray)))
            .to_vec(),
            max,
            0,
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
    "p           pause / resume the display (tracing goes on)",
    "?           this help (any key closes it)",
    "",
    "Dimmed rows closed a few seconds ago; ✗ says why a subflow ended.",
    "BKUP: b = this side asked for backup, B = the peer did.",
    "TX/s RX/s RTT RETR come from sock_diag (tcp_info), once a second.",
    "Sizes in IEC units: KiB, MiB, GiB (powers of 1024).",
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
    let max = area.width as usize;
    let (columns, lines, sel) = body(state, max, area.height as usize);
    let head = header(state, state.visible().len(), max);
    let foot = footer(state, max);
    let [top, names, mid, bottom] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Length(columns.len() as u16),
        Constraint::Min(0),
        Constraint::Length(foot.len() as u16),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(head), top);
    // The column names stay put; only the connections scroll.
    frame.render_widget(Paragraph::new(columns), names);
    // Keep the selected connection in view.
    let scroll = match sel {
        Some(i) if i >= mid.height as usize => (i + 1 - mid.height as usize) as u16,
        _ => 0,
    };
    frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), mid);
    frame.render_widget(Paragraph::new(foot), bottom);
    if state.ui.help {
        let popup = centered(area, 70, HELP.len() as u16 + 2);
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(" keys ")),
            popup,
        );
    }
}
