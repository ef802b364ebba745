//! The signals that end a command: SIGINT, SIGTERM and SIGHUP are all "stop cleanly" (detach,
//! summary, remove what was made), so every command waits on them the same way.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Stop {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Stop {
    /// Installs the handlers: from here on these signals no longer kill the process.
    pub fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves when one of them arrives; returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }

    /// Whether one already arrived (does not wait).
    pub async fn arrived(&mut self) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, self.recv())
            .await
            .is_ok()
    }
}
