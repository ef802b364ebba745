//! The report's drawings, as inline SVG written by hand: a timeline of subflow lanes, the
//! throughput per subflow stacked to the connection's total, and the RTT per subflow. Every
//! element a test or a reader may look for has a class and `data-` attributes with exact
//! numbers; every mark has a `<title>` (the browser's tooltip).

use std::fmt::Write;

use super::model::{Connection, End, Lane};
use crate::text;

/// Lane colours (colour-blind safe, Okabe–Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const WIDTH: f64 = 960.0;
/// Room for the lane labels on the left.
const LABEL: f64 = 330.0;
const PLOT: f64 = WIDTH - LABEL - 20.0;
const LANE_H: f64 = 24.0;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

pub fn endpoint(a: std::net::IpAddr, port: u16) -> String {
    match a.to_canonical() {
        a @ std::net::IpAddr::V4(_) => format!("{a}:{port}"),
        a => format!("[{a}]:{port}"),
    }
}

/// Seconds since `t0`, for axis labels.
fn secs(ns: u64, t0: u64) -> String {
    format!("{:.1}s", ns.saturating_sub(t0) as f64 / 1e9)
}

/// The x scale of a connection's drawings: its start to its end (or the capture's end).
#[derive(Clone, Copy)]
pub struct Scale {
    pub t0: u64,
    pub t1: u64,
}

impl Scale {
    pub fn of(c: &Connection, capture_end: u64) -> Scale {
        let t1 = c.end_ns.unwrap_or(capture_end).max(c.start_ns + 1);
        Scale { t0: c.start_ns, t1 }
    }

    fn x(&self, ns: u64) -> f64 {
        let f =
            ns.clamp(self.t0, self.t1).saturating_sub(self.t0) as f64 / (self.t1 - self.t0) as f64;
        LABEL + f * PLOT
    }

    fn axis(&self, out: &mut String, y: f64) {
        let _ = write!(
            out,
            r##"<line x1="{LABEL}" y1="{y}" x2="{}" y2="{y}" stroke="#999"/>"##,
            LABEL + PLOT
        );
        for i in 0..=4 {
            let ns = self.t0 + (self.t1 - self.t0) * i / 4;
            let x = self.x(ns);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
                y + 4.0,
                y + 16.0,
                secs(ns, self.t0)
            );
        }
    }
}

fn lane_label(l: &Lane) -> String {
    let mut s = format!(
        "{} → {}",
        endpoint(l.tuple.saddr, l.tuple.sport),
        endpoint(l.tuple.daddr, l.tuple.dport)
    );
    if let Some(i) = &l.ifname {
        let _ = write!(s, " {i}");
    }
    s
}

/// The timeline: one lane per subflow from its start to its end, marks at both ends, the
/// fallback as a red line and ADD_ADDRs as diamonds above the lanes.
pub fn timeline(c: &Connection, sc: Scale) -> String {
    let top = 22.0;
    let h = top + LANE_H * c.lanes.len() as f64 + 28.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}">"#
    );
    for &(ts, id, addr) in &c.announced {
        let x = sc.x(ts);
        let what = addr.map_or(format!("id {id}"), |a| format!("{a} (id {id})"));
        let _ = write!(
            o,
            r##"<path class="announce" d="M{x:.1} 4 l5 6 l-5 6 l-5 -6 z" fill="#666"><title>ADD_ADDR {} at {}</title></path>"##,
            esc(&what),
            secs(ts, sc.t0)
        );
    }
    for (i, l) in c.lanes.iter().enumerate() {
        let y = top + LANE_H * i as f64;
        let (x0, x1) = (sc.x(l.start_ns), sc.x(l.end_ns.unwrap_or(sc.t1)));
        let end = match &l.end {
            End::Open => "open",
            End::Closed(_) => "closed",
            End::Failed(_) => "failed",
        };
        let kind = match (l.join, l.existing) {
            (_, true) => "existing",
            (true, _) => "join",
            (false, _) => "initial",
        };
        let _ = write!(
            o,
            r#"<g class="lane" data-kind="{kind}" data-end="{end}" data-bytes-sent="{}" data-bytes-received="{}">"#,
            l.bytes_sent, l.bytes_received
        );
        let _ = write!(
            o,
            r##"<text x="4" y="{:.1}" font-size="12" fill="#222">{}</text>"##,
            y + 15.0,
            esc(&lane_label(l))
        );
        let mut title = format!(
            "{} {} {}–{}, {}",
            kind,
            esc(&lane_label(l)),
            secs(l.start_ns, sc.t0),
            l.end_ns.map_or("end".into(), |e| secs(e, sc.t0)),
            esc(&l.end.label())
        );
        if l.backup || l.peer_backup {
            title += if l.backup {
                ", backup"
            } else {
                ", peer backup"
            };
        }
        let _ = write!(
            title,
            ", {} sent, {} received",
            text::size(l.bytes_sent),
            text::size(l.bytes_received)
        );
        if matches!(l.end, End::Failed(_)) {
            // A failed subflow has no life: a cross where it ended.
            let (x, y) = (x0, y + 12.0);
            let _ = write!(
                o,
                r##"<path class="mark failed" d="M{:.1} {:.1} l10 10 m0 -10 l-10 10" stroke="#D00" stroke-width="2.5"><title>{title}</title></path>"##,
                x - 5.0,
                y - 5.0
            );
        } else {
            let dash = if l.backup || l.peer_backup {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let _ = write!(
                o,
                r##"<line x1="{x0:.1}" y1="{:.1}" x2="{x1:.1}" y2="{:.1}" stroke="{}" stroke-width="8"{dash}><title>{title}</title></line>"##,
                y + 12.0,
                y + 12.0,
                colour(i)
            );
            let _ = write!(
                o,
                r##"<circle class="mark established" cx="{x0:.1}" cy="{:.1}" r="5" fill="{}" stroke="#fff"><title>{} established at {}</title></circle>"##,
                y + 12.0,
                colour(i),
                if l.join { "joined," } else { "" },
                secs(l.start_ns, sc.t0)
            );
            if l.end != End::Open {
                let fill = if l.end.is_bad() { "#D00" } else { "#333" };
                let _ = write!(
                    o,
                    r##"<rect class="mark {}" x="{:.1}" y="{:.1}" width="8" height="8" fill="{fill}"><title>{}</title></rect>"##,
                    if l.end.is_bad() { "reset" } else { "closed" },
                    x1 - 4.0,
                    y + 8.0,
                    esc(&l.end.label())
                );
            }
        }
        o.push_str("</g>");
    }
    if let Some((ts, why)) = &c.fallback {
        let x = sc.x(*ts);
        let _ = write!(
            o,
            r##"<line class="fallback" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#D00" stroke-width="2" stroke-dasharray="4 2"><title>fallback to TCP at {}: {}</title></line>"##,
            h - 26.0,
            secs(*ts, sc.t0),
            esc(why)
        );
    }
    sc.axis(&mut o, h - 22.0);
    o.push_str("</svg>");
    o
}

/// A value axis on the left of the plot, `n` ticks from 0 to `max`.
fn y_axis(o: &mut String, top: f64, height: f64, max: f64, label: impl Fn(f64) -> String) {
    for i in 0..=3 {
        let v = max * i as f64 / 3.0;
        let y = top + height - height * i as f64 / 3.0;
        let _ = write!(
            o,
            r##"<line x1="{LABEL}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            LABEL + PLOT,
            LABEL - 6.0,
            y + 4.0,
            label(v)
        );
    }
}

const CHART_H: f64 = 150.0;

/// Throughput (bytes sent + received per second) of each subflow from its samples, stacked so
/// that the top edge is the connection's total.
pub fn throughput(c: &Connection, sc: Scale) -> String {
    // Sample times shared by the lanes (the stats sampler records every open subflow at once).
    let mut times: Vec<u64> = c
        .lanes
        .iter()
        .flat_map(|l| l.samples.iter().map(|s| s.ts_ns))
        .collect();
    times.sort_unstable();
    times.dedup();
    // A sample is the rate over its interval, which ends at its time: a lane's rate at `t` is
    // that of its sample whose interval holds `t` (a lane's last sample at its close falls
    // between the shared times: the other lanes keep their rate there), else 0.
    let rate_at = |l: &Lane, t: u64| {
        l.samples
            .iter()
            .find(|s| s.ts_ns >= t && s.ts_ns.saturating_sub(s.interval_ns) < t)
            .map_or(0.0, |s| s.rate())
    };
    let totals: Vec<f64> = times
        .iter()
        .map(|&t| c.lanes.iter().map(|l| rate_at(l, t)).sum())
        .collect();
    let max = totals.iter().cloned().fold(1.0, f64::max);
    let (top, h) = (10.0, CHART_H);
    let total_h = top + h + 28.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="throughput" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h}" viewBox="0 0 {WIDTH} {total_h}">"#
    );
    y_axis(&mut o, top, h, max, |v| {
        format!("{}/s", text::size(v as u64))
    });
    let y = |v: f64| top + h - h * v / max;
    let mut below = vec![0.0; times.len()];
    for (i, l) in c.lanes.iter().enumerate() {
        if l.samples.is_empty() {
            continue;
        }
        let above: Vec<f64> = times
            .iter()
            .zip(&below)
            .map(|(&t, b)| b + rate_at(l, t))
            .collect();
        let mut d = String::new();
        for (k, &t) in times.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if k == 0 { "M" } else { "L" },
                sc.x(t),
                y(above[k])
            );
        }
        for (k, &t) in times.iter().enumerate().rev() {
            let _ = write!(d, "L{:.1} {:.1} ", sc.x(t), y(below[k]));
        }
        let sent: u64 = l.samples.iter().map(|s| s.sent + s.received).sum();
        let _ = write!(
            o,
            r#"<path class="band" data-bytes="{sent}" d="{}Z" fill="{}" fill-opacity="0.75"><title>{}: {} over the samples</title></path>"#,
            d.trim_end(),
            colour(i),
            esc(&lane_label(l)),
            text::size(sent)
        );
        below = above;
    }
    sc.axis(&mut o, top + h + 6.0);
    o.push_str("</svg>");
    o
}

/// Smoothed RTT of each subflow from its samples, one line per subflow.
pub fn rtt(c: &Connection, sc: Scale) -> String {
    let max = c
        .lanes
        .iter()
        .flat_map(|l| l.samples.iter().map(|s| s.srtt_us as f64))
        .fold(1.0, f64::max);
    let (top, h) = (10.0, CHART_H * 0.7);
    let total_h = top + h + 28.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="rtt" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h}" viewBox="0 0 {WIDTH} {total_h}">"#
    );
    y_axis(&mut o, top, h, max, |v| format!("{:.1}ms", v / 1000.0));
    for (i, l) in c.lanes.iter().enumerate() {
        if l.samples.is_empty() {
            continue;
        }
        let points: Vec<String> = l
            .samples
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    sc.x(s.ts_ns),
                    top + h - h * s.srtt_us as f64 / max
                )
            })
            .collect();
        let _ = write!(
            o,
            r#"<polyline class="rtt-line" points="{}" fill="none" stroke="{}" stroke-width="2"><title>{}: smoothed RTT</title></polyline>"#,
            points.join(" "),
            colour(i),
            esc(&lane_label(l))
        );
    }
    sc.axis(&mut o, top + h + 6.0);
    o.push_str("</svg>");
    o
}
