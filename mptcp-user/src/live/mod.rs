//! The full-screen live view: a collector task sends [`Update`]s over a channel, the
//! [`State`] absorbs them (`apply`), and [`render::render`] draws the state. Keys change only
//! the state's `ui` part ([`key`]). The terminal is restored on every way out: return, error,
//! panic (hook), Ctrl-C (a key in raw mode, or SIGINT) and SIGTERM.

pub mod collector;
pub mod diag;
pub mod render;
pub mod replay;
pub mod state;

use std::{
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use crossterm::{
    event::{self as term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};
use tokio::{
    sync::mpsc,
    time::{interval, sleep},
};

use crate::{decode, event::Event, sys::signals::Stop, trace::Pipeline};

pub use collector::DiagThread;
pub use state::{State, Update};

/// What a key asks the loop to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

/// What a terminal event asks of a view (live or replay): a key's action, or a redraw after
/// the terminal was resized.
pub(crate) fn terminal_event(
    state: &mut State,
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    ev: term::Event,
) -> io::Result<Action> {
    Ok(match ev {
        term::Event::Key(k) => key(state, k),
        term::Event::Resize(..) => {
            terminal.autoresize()?;
            Action::Redraw
        }
        _ => Action::None,
    })
}

/// Applies one key to the UI state.
pub fn key(state: &mut State, k: KeyEvent) -> Action {
    if k.kind == KeyEventKind::Release {
        return Action::None;
    }
    if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
        return Action::Quit;
    }
    let ui = &mut state.ui;
    if ui.editing_filter {
        match k.code {
            KeyCode::Enter => ui.editing_filter = false,
            KeyCode::Esc => {
                ui.editing_filter = false;
                ui.filter.clear();
            }
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Char(c) => ui.filter.push(c),
            _ => return Action::None,
        }
        return Action::Redraw;
    }
    if ui.help {
        ui.help = false;
        return Action::Redraw;
    }
    match k.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => state.move_selection(-1),
        KeyCode::Down | KeyCode::Char('j') => state.move_selection(1),
        KeyCode::Enter => state.toggle_fold(),
        KeyCode::Char('/') => ui.editing_filter = true,
        KeyCode::Char('s') => ui.sort = ui.sort.next(),
        KeyCode::Char('p') => {
            // Paused, the view shows a frozen copy; the state keeps absorbing updates, so
            // nothing piles up and resuming shows the present.
            ui.paused = !ui.paused;
            state.frozen = ui.paused.then(|| Box::new(state.snapshot()));
        }
        KeyCode::Char('?') => ui.help = true,
        _ => return Action::None,
    }
    Action::Redraw
}

/// Why the view cannot run here, if it cannot: it draws on stdout, which must be a terminal,
/// and reads keys from stdin when that is a terminal, else from the controlling terminal
/// (`/dev/tty`) — which a process started without one (cron, `setsid`, a container without a
/// tty) does not have: opening it fails with ENXIO, "No such device or address".
pub fn no_terminal() -> Option<&'static str> {
    use std::io::IsTerminal;
    if !io::stdout().is_terminal() {
        return Some("stdout is not a terminal");
    }
    if !io::stdin().is_terminal()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .is_err()
    {
        return Some("there is no terminal to read keys from (stdin is not one, and no /dev/tty)");
    }
    None
}

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Raw mode and the alternate screen for as long as it lives; also restores them in a panic.
/// What every full-screen view holds while it runs: the terminal in raw mode on the alternate
/// screen, the key reader, the signals that end it and the redraw tick. Dropped in field order:
/// the key reader stops, then the terminal, then the guard restores the screen.
pub(crate) struct Screen {
    // Held for their Drop only.
    _input: InputThread,
    pub terminal: Terminal<CrosstermBackend<io::Stdout>>,
    _guard: TerminalGuard,
    pub keys: mpsc::UnboundedReceiver<term::Event>,
    pub stop: Stop,
    pub tick: tokio::time::Interval,
}

impl Screen {
    pub fn open() -> Result<Screen> {
        let guard = TerminalGuard::enter()?;
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        terminal.clear()?;
        let (ktx, keys) = mpsc::unbounded_channel();
        let input = InputThread::spawn(ktx);
        let stop = Stop::install()?;
        Ok(Screen {
            _input: input,
            terminal,
            _guard: guard,
            keys,
            stop,
            tick: interval(Duration::from_millis(250)),
        })
    }

    /// Draws `state`, or its frozen snapshot while paused.
    pub fn draw(&mut self, state: &State) -> Result<()> {
        let shown = state.frozen.as_deref().unwrap_or(state);
        self.terminal.draw(|f| render::render(shown, f))?;
        Ok(())
    }
}

struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        // Nothing to restore if raw mode cannot even start.
        terminal::enable_raw_mode()?;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            prev(info);
        }));
        let guard = TerminalGuard;
        execute!(io::stdout(), EnterAlternateScreen, crossterm::cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // Later panics print plainly again.
        let _ = std::panic::take_hook();
    }
}

/// Reads terminal events on a thread (crossterm's reads block) until dropped.
struct InputThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl InputThread {
    fn spawn(tx: mpsc::UnboundedSender<term::Event>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match term::poll(Duration::from_millis(100)) {
                    Ok(true) => match term::read() {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    },
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        });
        InputThread {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for InputThread {
    /// Stops the reader, waiting for it only briefly: when the terminal hung up (an ssh
    /// session gone, `tmux kill-server`), crossterm's `read` can keep retrying on the dead
    /// tty and never return. Joining it would keep this process — and its attached programs —
    /// alive and spinning; a detached thread ends with the process.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let deadline = std::time::Instant::now() + Duration::from_millis(300);
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Options of one live session.
pub struct Options {
    /// A line shown above the key help (the demo explains itself there).
    pub banner: Option<String>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Runs the live view on the terminal until `q`, Ctrl-C, SIGTERM, SIGHUP or the duration;
/// `each` sees every event first. Returns the final state and the pipeline (still attached,
/// for its totals; the caller finishes it).
pub async fn run(
    mut pipe: Pipeline,
    mut each: impl FnMut(&Event),
    opts: Options,
) -> Result<(State, Pipeline)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let diag = DiagThread::spawn(tx, Duration::from_secs(1));

    let mut state = State::default();
    state.ui.banner = opts.banner;
    state.apply(Update::Tick(decode::monotonic_ns()));

    let mut screen = Screen::open()?;
    let deadline = sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    let result: Result<()> = loop {
        let mut redraw = false;
        tokio::select! {
            e = pipe.next() => match e {
                Ok(e) => {
                    each(&e);
                    state.apply(Update::Event(e));
                }
                Err(e) => break Err(e.into()),
            },
            Some(u) = rx.recv() => state.apply(u),
            Some(ev) = screen.keys.recv() => match terminal_event(&mut state, &mut screen.terminal, ev)? {
                Action::Quit => break Ok(()),
                Action::Redraw => redraw = true,
                Action::None => {}
            },
            _ = screen.tick.tick() => {
                state.apply(Update::Tick(decode::monotonic_ns()));
                diag.set_netns(state.live_netns().into_iter().collect());
                redraw = true;
            }
            _ = screen.stop.recv() => break Ok(()),
            _ = &mut deadline => break Ok(()),
        }
        if redraw {
            screen.draw(&state)?;
        }
    };
    drop(screen);
    drop(diag);
    result.map(|()| (state, pipe))
}

#[cfg(test)]
mod tests;
