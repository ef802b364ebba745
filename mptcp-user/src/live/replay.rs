//! `live --replay CAPTURE.ndjson [--speed N]`: plays a capture of `events --json` through the
//! same [`State`] and renderer as the live view, at the capture's pace scaled by N (`0`: all at
//! once), then stays on the final screen until `q`. No BPF, no privileges.
//!
//! The capture's clock is the view's clock: every update is stamped with capture time, so ages,
//! lingering and rates read as they did when it was recorded. The NDJSON has no kernel socket
//! addresses, which the state groups by; they are made up from what the lines do carry (see
//! [`identify`]). `subflow_stats` records (`--stats-interval`) take the place of the live
//! view's sock_diag samples.

use std::{
    hash::{Hash, Hasher},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use tokio::time::{sleep, Instant};

use crate::{
    cli::BadValue,
    event::{Data, Event},
};

use super::{terminal_event, Action, Screen, State, Update};

/// Reads a capture (see [`crate::capture::load`]) for the view.
pub fn load(path: &Path) -> Result<Vec<Event>, BadValue> {
    crate::capture::load(path).map(prepare).map_err(BadValue)
}

/// The events of a capture's text, ready for the view (see [`load`]).
pub fn parse(text: &str) -> Result<Vec<Event>, String> {
    let events = crate::capture::read(text.as_bytes(), "capture")?;
    if events.is_empty() {
        return Err("capture: no events in it".into());
    }
    Ok(prepare(events))
}

/// Gives the events the identities the state groups by ([`identify`]).
fn prepare(mut events: Vec<Event>) -> Vec<Event> {
    // Connections the capture has a conn_*/subflow_* line of: an address event of any other
    // is not shown (as live, where it would have no owner).
    let mut known = std::collections::HashSet::new();
    for e in &mut events {
        identify(e);
        let addr = matches!(e.data, Data::AddrAnnounced(_) | Data::AddrRemoved(_));
        if let Some(c) = e.conn_mut() {
            if addr {
                if !known.contains(&c.ids.conn) {
                    c.ids.conn = 0;
                }
            } else {
                known.insert(c.ids.conn);
            }
        }
    }
    events
}

fn hash(x: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    // Never 0: the state reads 0 as "no connection".
    h.finish() | 1
}

/// Stands in for the kernel socket addresses the state groups events by: a connection is its
/// namespace and token (a plain TCP connection, which has none: its endpoints), a subflow its
/// namespace and endpoints. Two connections that reuse a token one after the other stay apart:
/// the state starts a new entry at a conn_created after a close.
pub fn identify(e: &mut Event) {
    let netns = e.netns();
    let token = e.token();
    let ends = e.tuple().map(|t| {
        (
            t.saddr.to_canonical(),
            t.sport,
            t.daddr.to_canonical(),
            t.dport,
        )
    });
    let Some(c) = e.conn_mut() else { return };
    c.ids.conn = match (token, ends) {
        (Some(t), _) => hash((netns, t.0)),
        (None, Some(ends)) => hash((netns, ends)),
        (None, None) => 0,
    };
    c.ids.subflow = ends.map_or(0, |ends| hash((netns, ends, "subflow")));
}

/// Where the playback is, in capture time.
struct Clock {
    first_ns: u64,
    last_ns: u64,
    /// Capture nanoseconds per real one; infinite for `--speed 0`.
    speed: f64,
    started: Instant,
}

impl Clock {
    /// Capture time now: never past the last event (the final screen stays as it was).
    fn now(&self) -> u64 {
        if self.speed.is_infinite() {
            return self.last_ns;
        }
        let ahead = self.started.elapsed().as_secs_f64() * 1e9 * self.speed;
        (self.first_ns as f64 + ahead).min(self.last_ns as f64) as u64
    }

    /// Real time until capture time `ts`.
    fn until(&self, ts: u64) -> Duration {
        if self.speed.is_infinite() {
            return Duration::ZERO;
        }
        let at =
            Duration::from_secs_f64(ts.saturating_sub(self.first_ns) as f64 / 1e9 / self.speed);
        at.saturating_sub(self.started.elapsed())
    }
}

/// The banner: where the playback is.
fn banner(name: &str, clock: &Clock, shown: usize, total: usize) -> String {
    let secs = |ns: u64| ns.saturating_sub(clock.first_ns) as f64 / 1e9;
    let speed = if clock.speed.is_infinite() {
        "as fast as possible".to_string()
    } else {
        format!("×{}", clock.speed)
    };
    if shown == total {
        format!(
            "replay of {name}: ended at {:.1} s, {total} events ({speed}); q quits",
            secs(clock.last_ns)
        )
    } else {
        format!(
            "replay of {name}: {:.1} s of {:.1} s, {shown} of {total} events ({speed})",
            secs(clock.now()),
            secs(clock.last_ns)
        )
    }
}

/// Parses `--speed N`: a factor, 0 for as fast as possible.
pub fn parse_speed(s: &str) -> Result<f64, BadValue> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(if v == 0.0 { f64::INFINITY } else { v }),
        _ => Err(BadValue(format!(
            "--speed {s:?}: a factor of the capture's pace (e.g. 2, 0.5), or 0 for as fast as possible"
        ))),
    }
}

/// Plays `events` on the terminal until `q`, Ctrl-C, SIGTERM, SIGHUP or `duration`.
pub async fn run(
    events: Vec<Event>,
    name: &str,
    speed: f64,
    duration: Option<Duration>,
) -> Result<State> {
    let clock = Clock {
        first_ns: events.first().map_or(0, |e| e.ts_ns),
        last_ns: events.iter().map(|e| e.ts_ns).max().unwrap_or(0),
        speed,
        started: Instant::now(),
    };
    let total = events.len();
    let mut pending = events.into_iter().peekable();
    let mut shown = 0;
    let mut state = State::default();
    state.apply(Update::Tick(clock.first_ns));

    let mut screen = Screen::open()?;
    let deadline = sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    let result: Result<()> = loop {
        let mut redraw = false;
        let next_due = pending.peek().map(|e| clock.until(e.ts_ns));
        tokio::select! {
            _ = sleep(next_due.unwrap_or(Duration::ZERO)), if next_due.is_some() => {
                // Everything due by now, in file order.
                let now = clock.now();
                while let Some(e) = pending.next_if(|e| e.ts_ns <= now || clock.until(e.ts_ns).is_zero()) {
                    state.apply(Update::Event(Arc::new(e)));
                    shown += 1;
                }
                redraw = pending.peek().is_none();
            }
            Some(ev) = screen.keys.recv() => match terminal_event(&mut state, &mut screen.terminal, ev)? {
                Action::Quit => break Ok(()),
                Action::Redraw => redraw = true,
                Action::None => {}
            },
            _ = screen.tick.tick() => redraw = true,
            _ = screen.stop.recv() => break Ok(()),
            _ = &mut deadline => break Ok(()),
        }
        if redraw {
            state.apply(Update::Tick(clock.now()));
            state.ui.banner = Some(banner(name, &clock, shown, total));
            screen.draw(&state)?;
        }
    };
    drop(screen);
    result.map(|()| state)
}
