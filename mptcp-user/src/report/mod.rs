//! `mptcp-trace report CAPTURE`: one self-contained HTML page from a capture of `events
//! --json` — no script, no stylesheet or font fetched, the drawings inline SVG — with a
//! summary table of every connection and, per connection, its subflows as lanes over time,
//! its throughput per subflow stacked to the total and its RTT per subflow (from the
//! capture's `subflow_stats`, when it was recorded with `--stats-interval`), and its
//! diagnoses. What `mptcptrace`/`mptcpanalyzer` draw from a pcap, drawn from a trace.

pub mod model;
pub mod svg;

use std::fmt::Write;

use model::{Connection, Report};
use svg::{endpoint, esc};

use crate::text;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{font-size:22px}h2{font-size:17px;margin:28px 0 6px;border-top:1px solid #ddd;padding-top:14px}\
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00}.muted{color:#777}.diag{background:#fff4e5;border-left:4px solid #e69f00;padding:6px 10px;margin:6px 0}\
code{font-size:12px}";

fn duration(c: &Connection, capture_end: u64) -> String {
    let end = c.end_ns.unwrap_or(capture_end);
    let s = end.saturating_sub(c.start_ns) as f64 / 1e9;
    if c.end_ns.is_some() {
        format!("{s:.2}s")
    } else {
        format!("{s:.2}s+ (open)")
    }
}

fn name(c: &Connection) -> String {
    match c.token {
        Some(t) => t.to_string(),
        None => "plain TCP".into(),
    }
}

fn ends(c: &Connection) -> String {
    c.tuple.as_ref().map_or("?".into(), |t| {
        format!(
            "{} → {}",
            endpoint(t.saddr, t.sport),
            endpoint(t.daddr, t.dport)
        )
    })
}

fn summary(r: &Report, o: &mut String) {
    o.push_str(
        "<table class=\"summary\"><tr><th>#</th><th>token</th><th>side</th><th>process</th>\
         <th>endpoints</th><th>start</th><th>duration</th><th>subflows</th><th>sent</th>\
         <th>received</th><th>fallback</th><th>diagnosis</th></tr>",
    );
    for (i, c) in r.conns.iter().enumerate() {
        let failed = c.lanes.len() - c.established();
        let _ = write!(
            o,
            r##"<tr class="conn-row" data-token="{}" data-subflows="{}" data-bytes-sent="{}" data-bytes-received="{}"><td><a href="#c{i}">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}{}</td><td class="n">{}</td><td class="n">{}</td><td{}>{}</td><td{}>{}</td></tr>"##,
            name(c),
            c.lanes.len(),
            c.bytes_sent(),
            c.bytes_received(),
            i + 1,
            esc(&name(c)),
            c.side
                .map_or("?".into(), |s| format!("{s:?}").to_lowercase()),
            esc(&format!(
                "{} {}",
                c.comm.as_deref().unwrap_or("?"),
                c.pid.map_or(String::new(), |p| format!("({p})"))
            )),
            esc(&ends(c)),
            esc(c.start_time.get(11..23).unwrap_or(&c.start_time)),
            duration(c, r.last_ns),
            c.established(),
            if failed > 0 {
                format!(" <span class=\"bad\">+{failed} failed</span>")
            } else {
                String::new()
            },
            text::size(c.bytes_sent()),
            text::size(c.bytes_received()),
            if c.fallback.is_some() {
                " class=\"bad\""
            } else {
                ""
            },
            c.fallback.as_ref().map_or(String::new(), |(_, w)| esc(w)),
            if c.diagnoses.is_empty() {
                ""
            } else {
                " class=\"bad\""
            },
            esc(&c
                .diagnoses
                .iter()
                .map(|(cause, _)| cause.as_str())
                .collect::<Vec<_>>()
                .join(", ")),
        );
    }
    o.push_str("</table>");
}

fn section(r: &Report, i: usize, c: &Connection, o: &mut String) {
    let sc = svg::Scale::of(c, r.last_ns);
    let _ = write!(
        o,
        r#"<section class="conn" id="c{i}" data-token="{}" data-lanes="{}"><h2>{} · {} · {}</h2>"#,
        name(c),
        c.lanes.len(),
        esc(&name(c)),
        c.side
            .map_or("?".into(), |s| format!("{s:?}").to_lowercase()),
        esc(&ends(c)),
    );
    let mut facts = format!(
        "{} {}, netns {}, started {}, {}",
        esc(c.comm.as_deref().unwrap_or("?")),
        c.pid.map_or(String::new(), |p| format!("pid {p}")),
        c.netns.map_or("?".into(), |n| n.to_string()),
        esc(&c.start_time),
        duration(c, r.last_ns)
    );
    if let Some(p) = c.peer_token {
        let _ = write!(facts, ", peer token <code>{p}</code>");
    }
    if c.existing {
        facts.push_str(", open when the tracer started");
    }
    let _ = write!(o, r#"<p class="muted">{facts}</p>"#);
    for (cause, detail) in &c.diagnoses {
        let _ = write!(
            o,
            r#"<div class="diag"><b>{}</b>: {}</div>"#,
            esc(cause),
            esc(detail)
        );
    }
    o.push_str(&svg::timeline(c, sc));
    if c.has_samples() {
        o.push_str("<h3>Throughput per subflow (sent + received), stacked</h3>");
        o.push_str(&svg::throughput(c, sc));
        o.push_str("<h3>Smoothed RTT per subflow</h3>");
        o.push_str(&svg::rtt(c, sc));
    } else if !c.lanes.is_empty() {
        o.push_str(
            "<p class=\"muted\">No <code>subflow_stats</code> for this connection: record \
             with <code>mptcp-trace events --json --stats-interval 1</code> for throughput and \
             RTT over time.</p>",
        );
    }
    o.push_str("</section>");
}

/// The page for `events` (read from the file `source`).
pub fn render(events: &[crate::event::Event], source: &str) -> (String, Report) {
    let r = Report::build(events);
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mptcp-trace \
         report: {}</title><style>{STYLE}</style></head><body><h1>mptcp-trace report</h1>",
        esc(source)
    );
    let _ = write!(
        o,
        r#"<p class="muted">{} · {} events from {} over {:.1}s · {} connections, {} subflows{}</p>"#,
        esc(source),
        r.events,
        esc(&r.first_time),
        r.last_ns.saturating_sub(r.first_ns) as f64 / 1e9,
        r.conns.len(),
        r.subflows(),
        if r.lost > 0 {
            format!(
                " · <span class=\"bad\">{} events lost by the tracer</span>",
                r.lost
            )
        } else {
            String::new()
        }
    );
    summary(&r, &mut o);
    for (i, c) in r.conns.iter().enumerate() {
        section(&r, i, c, &mut o);
    }
    o.push_str(&format!(
        "<p class=\"muted\">mptcp-trace {}</p></body></html>\n",
        env!("CARGO_PKG_VERSION")
    ));
    (o, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = include_str!("../../../tests/data/demo-capture.ndjson");

    #[test]
    fn the_demo_capture_has_its_connections_lanes_totals_and_samples() {
        let events = crate::capture::read(CAPTURE.as_bytes(), "capture").unwrap();
        let (html, r) = render(&events, "demo-capture.ndjson");
        assert_eq!(r.conns.len(), 2);
        assert_eq!(r.subflows(), 4);
        // Totals are the subflow_closed counters.
        let closed: u64 = events
            .iter()
            .filter_map(|e| match &e.data {
                crate::event::Data::SubflowClosed(d) => Some(d.bytes_sent),
                _ => None,
            })
            .sum();
        assert_eq!(
            r.conns.iter().map(Connection::bytes_sent).sum::<u64>(),
            closed
        );
        assert_eq!(html.matches(r#"<g class="lane""#).count(), 4);
        // The throughput bands stack to the totals: the samples, and the bytes after the last
        // sample at each close.
        let received: u64 = events
            .iter()
            .filter_map(|e| match &e.data {
                crate::event::Data::SubflowClosed(d) => Some(d.bytes_received),
                _ => None,
            })
            .sum();
        let stacked: u64 = html
            .match_indices(r#"<path class="band" data-bytes=""#)
            .map(|(i, m)| {
                let v = &html[i + m.len()..];
                v[..v.find('"').unwrap()].parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(stacked, closed + received);
        assert_eq!(html.matches(r#"<svg class="throughput""#).count(), 2);
        assert_eq!(html.matches(r#"<svg class="rtt""#).count(), 2);
        assert_eq!(html.matches(r#"class="conn-row""#).count(), 2);
        // Self-contained: nothing fetched.
        for needle in ["<script", "http://", "https://", "<link", "@import"] {
            let n = html.matches(needle).count();
            let svg_ns = html.matches("http://www.w3.org/2000/svg").count();
            if needle == "http://" {
                assert_eq!(n, svg_ns, "only the SVG namespace");
            } else {
                assert_eq!(n, 0, "{needle}");
            }
        }
    }

    #[test]
    fn names_from_the_capture_are_escaped() {
        let line = CAPTURE
            .lines()
            .next()
            .unwrap()
            .replace("\"comm\":\"mptcp-trace\"", "\"comm\":\"<b>x</b>&\"");
        let events = crate::capture::read(line.as_bytes(), "c").unwrap();
        let (html, _) = render(&events, "<evil>.ndjson");
        assert!(!html.contains("<b>x</b>"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;&amp;"));
        assert!(html.contains("&lt;evil&gt;.ndjson"));
    }

    /// A hand-assembled capture of one connection with every kind of mark: an ADD_ADDR, a
    /// failed join, a subflow reset by the peer, a fallback and a diagnosis. Each appears once
    /// in the page, with its reason.
    #[test]
    fn each_kind_of_mark_and_the_diagnosis_appear_in_the_page() {
        let conn = r#""token":"c3c00218","netns":4026532174,"family":"ipv4""#;
        let first = r#""saddr":"10.0.0.2","sport":35798,"daddr":"10.0.0.1","dport":4321"#;
        let sf = r#""ifindex":2,"ifname":"red-client","local_id":0,"remote_id":0,"backup":false,"peer_backup":false"#;
        let line = |ts: u64, rest: &str| {
            format!(r#"{{"v":1,"time":"2026-12-06T06:11:05.{ts:09}Z","ts_ns":{ts},{rest}}}"#)
        };
        let text = [
            line(1, &format!(r#""event":"conn_created",{conn},{first},"side":"client""#)),
            line(2, &format!(r#""event":"subflow_established",{conn},{first},{sf},"join":false"#)),
            line(3, &format!(r#""event":"addr_announced",{conn},"remote_id":1,"addr":"192.168.0.1""#)),
            line(4, &format!(r#""event":"subflow_failed",{conn},"saddr":"10.0.0.2","sport":40001,"daddr":"192.168.0.1","dport":4321,"reason":"ECONNREFUSED","error":"ECONNREFUSED","local_id":0,"remote_id":1,"backup":false,"peer_backup":false,"join":true,"retrans":0"#)),
            line(5, &format!(r#""event":"conn_diagnosis",{conn},{first},"cause":"join_refused","detail":"the join to 192.168.0.1 port 4321 was refused","evidence":["subflow_failed sport=40001 error=ECONNREFUSED"]"#)),
            line(6, &format!(r#""event":"conn_fallback",{conn},{first},"reason":"mp_capable_not_negotiated""#)),
            line(7, &format!(r#""event":"subflow_closed",{conn},{first},"reason":"rst_received",{sf},"join":false,"bytes_sent":1000,"bytes_acked":1000,"bytes_received":2000,"retrans":0,"srtt_us":50"#)),
            line(8, &format!(r#""event":"conn_closed",{conn},{first},"duration_ns":7,"subflows_total":1"#)),
        ]
        .join("\n");
        let events = crate::capture::read(text.as_bytes(), "c").unwrap();
        assert_eq!(events.len(), 8);
        let (html, r) = render(&events, "c");
        assert_eq!(r.conns.len(), 1);
        let c = &r.conns[0];
        assert_eq!((c.lanes.len(), c.established()), (2, 1));
        assert_eq!((c.bytes_sent(), c.bytes_received()), (1000, 2000));
        for (mark, n) in [
            (r#"<path class="announce""#, 1),
            (r#"class="mark failed""#, 1),
            (r#"class="mark reset""#, 1),
            (r#"class="mark closed""#, 0),
            (r#"<line class="fallback""#, 1),
            (r#"<div class="diag">"#, 1),
        ] {
            assert_eq!(html.matches(mark).count(), n, "{mark}");
        }
        assert!(html.contains("ADD_ADDR 192.168.0.1 (id 1) at "));
        assert!(html.contains(": mp_capable_not_negotiated</title>"));
        assert!(html.contains(r#">rst_received</title></rect>"#));
        assert!(html.contains(
            r#"<div class="diag"><b>join_refused</b>: the join to 192.168.0.1 port 4321 was refused</div>"#
        ));
        // The summary row names the fallback and the diagnosis, both marked bad.
        let row = &html[html.find(r#"<tr class="conn-row""#).unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(r#"<td class="bad">mp_capable_not_negotiated</td>"#),
            "{row}"
        );
        assert!(
            row.contains(r#"<td class="bad">join_refused</td>"#),
            "{row}"
        );
        assert!(row.contains("+1 failed"), "{row}");
    }

    #[test]
    fn a_failed_join_is_a_lane_that_ends_where_it_starts() {
        let mut text = CAPTURE.lines().take(3).collect::<Vec<_>>().join("\n");
        text.push('\n');
        text.push_str(r#"{"v":1,"time":"2026-12-06T06:11:06.0Z","ts_ns":16440174600000,"event":"subflow_failed","token":"c3c00218","netns":4026532174,"family":"ipv4","saddr":"192.168.0.2","sport":40001,"daddr":"10.0.0.1","dport":4321,"reason":"ECONNREFUSED","error":"ECONNREFUSED","local_id":1,"remote_id":0,"backup":false,"peer_backup":false,"join":true,"retrans":0}"#);
        let events = crate::capture::read(text.as_bytes(), "c").unwrap();
        let (html, r) = render(&events, "c");
        let c = &r.conns[0];
        assert_eq!((c.lanes.len(), c.established()), (2, 1));
        assert!(html.contains(r#"data-end="failed""#));
        assert!(html.contains("+1 failed"));
    }
}
