//! What the seccomp supervisor tells `run`, one JSON line per [`Report`] on its stdout, and
//! the two readers of those lines: a thread that logs the records (`run` alone), and the
//! pipeline's [`SupervisorFeed`] (`run --trace`).
//!
//! A `socket_upgraded` event must come before its connection's events. The record is written
//! after the answer (its outcome is known only then), and the answer lets the caller connect:
//! so the supervisor first says that it is answering ([`Report::Answering`], flushed), then
//! answers, then writes the record. The pipeline reads the pipe itself just before it releases
//! events, not on a thread of its own: whatever the supervisor wrote before an event happened
//! has been read by the time that event goes out. While a call is being answered, events
//! stamped from its arrival on wait for its record (at most [`ANSWER_WAIT_NS`]). Records that
//! went through a reader thread and a channel instead came after their conn_created in the 6.1
//! guest, when the thread was later than the reorder window.

use std::{
    fs::File,
    io::{self, BufRead, Read, Write},
    os::fd::OwnedFd,
    process::ChildStdout,
};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::seccomp::{SeccompCounts, Upgraded};

/// How long events wait for the record of a call being answered, from when the pipeline read
/// that it was (a stopped or starved supervisor must not stop the output).
pub const ANSWER_WAIT_NS: u64 = crate::trace::order::ESTABLISHED_WAIT_NS;

/// One line of the supervisor's stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The supervisor is about to give the caller the MPTCP socket for the call it received
    /// at `since` (CLOCK_MONOTONIC ns): that socket's events may follow from now on. Its
    /// `Record` or `Unanswered` comes next.
    Answering { since: u64 },
    /// What became of one call.
    Record(Upgraded),
    /// The call being answered was not: its caller was killed, or interrupted by a signal (it
    /// calls again).
    Unanswered,
}

impl Report {
    /// Writes the report as one line.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let line = serde_json::to_string(self).expect("serializable");
        writeln!(out, "{line}")
    }
}

/// Reads the records on the current thread until the supervisor ends, passing each to
/// `on_record`; returns their sums.
pub fn log_records(
    stdout: ChildStdout,
    mut on_record: Box<dyn FnMut(&Upgraded) + Send>,
) -> SeccompCounts {
    let mut counts = SeccompCounts::default();
    for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Record(u)) => {
                counts.add(&u.outcome);
                on_record(&u);
            }
            Ok(Report::Answering { .. } | Report::Unanswered) => {}
            Err(e) => log::warn!("the seccomp supervisor sent {line:?}: {e}"),
        }
    }
    counts
}

/// Sets O_NONBLOCK on `fd`.
fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl calls on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The supervisor's stdout, read by the pipeline without blocking.
pub struct SupervisorFeed {
    pipe: AsyncFd<File>,
    /// Bytes of a line not complete yet.
    partial: Vec<u8>,
    /// A call being answered: (its arrival, until when events wait for its record).
    answering: Option<(u64, u64)>,
    /// Lines that were not a report (counted with the pipeline's malformed records).
    malformed: u64,
}

impl SupervisorFeed {
    /// Takes the supervisor's stdout (a `ChildStdout`). Needs a tokio runtime with I/O (the
    /// pipe is registered with its reactor).
    pub fn new(stdout: impl Into<OwnedFd>) -> io::Result<SupervisorFeed> {
        let fd = stdout.into();
        set_nonblocking(&fd)?;
        // SAFETY: the file owns its descriptor for as long as the AsyncFd holds it.
        let pipe = unsafe { AsyncFd::register(File::from(fd)) }.map_err(|e| e.into_parts().1)?;
        Ok(SupervisorFeed {
            pipe,
            partial: Vec::new(),
            answering: None,
            malformed: 0,
        })
    }

    /// Waits until the pipe has something to read (or was closed). Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.pipe.readable().await?;
        // Edge-triggered: whatever arrives after this is a new edge; `drain` reads until empty.
        guard.clear_ready();
        Ok(())
    }

    /// Reads everything waiting, passing each record to `on_record`; `now` is the monotonic
    /// time. False once the supervisor has closed its end (it exited).
    pub fn drain(&mut self, now: u64, on_record: &mut impl FnMut(Upgraded)) -> io::Result<bool> {
        let mut buf = [0u8; 16384];
        loop {
            let n = match self.pipe.get_ref().read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.take(&buf[..n], now, on_record);
        }
    }

    /// Handles the complete lines in `bytes` (after what is left of the last read).
    fn take(&mut self, bytes: &[u8], now: u64, on_record: &mut impl FnMut(Upgraded)) {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(len) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + len];
            start += len + 1;
            match serde_json::from_slice::<Report>(line) {
                Ok(Report::Answering { since }) => {
                    self.answering = Some((since, now + ANSWER_WAIT_NS));
                }
                Ok(Report::Record(u)) => {
                    self.answering = None;
                    on_record(u);
                }
                Ok(Report::Unanswered) => self.answering = None,
                Err(e) => {
                    self.malformed += 1;
                    log::warn!(
                        "the seccomp supervisor sent {:?}: {e}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
        }
        self.partial.drain(..start);
    }

    /// Events stamped from this time on wait: a call from then is being answered, and its
    /// record is still to come (none once it has waited [`ANSWER_WAIT_NS`]).
    pub fn hold(&self, now: u64) -> Option<u64> {
        self.answering
            .filter(|&(_, until)| now < until)
            .map(|(since, _)| since)
    }

    /// When the current hold ends at the latest (monotonic ns).
    pub fn hold_until(&self) -> Option<u64> {
        self.answering.map(|(_, until)| until)
    }

    /// Lines that were not a report, since the last call.
    pub fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Family,
        upgrade::seccomp::{Method, Outcome},
    };

    fn record(ts_ns: u64) -> Upgraded {
        Upgraded {
            ts_ns,
            pid: 10,
            tid: 11,
            comm: "nc".into(),
            cgroup_id: 42,
            family: Family::Ipv4,
            nonblock: false,
            cloexec: true,
            method: Method::Seccomp,
            outcome: Outcome::Upgraded,
        }
    }

    fn lines(reports: &[Report]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in reports {
            r.write(&mut out).unwrap();
        }
        out
    }

    /// A feed on a pipe whose write end the test keeps, and the runtime it is registered with.
    fn feed() -> (tokio::runtime::Runtime, SupervisorFeed, File) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        let mut fds = [0; 2];
        // SAFETY: valid array of two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: fresh descriptors we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let f = SupervisorFeed::new(r).unwrap();
        drop(_g);
        (rt, f, File::from(w))
    }

    #[test]
    fn reports_round_trip_as_one_line_each() {
        let all = [
            Report::Answering { since: 5 },
            Report::Record(record(5)),
            Report::Unanswered,
        ];
        let text = String::from_utf8(lines(&all)).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.starts_with(r#"{"answering":{"since":5}}"#), "{text}");
        let back: Vec<Report> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, all);
    }

    #[test]
    fn events_wait_while_a_call_is_answered_until_its_record_comes() {
        let (_rt, mut f, mut w) = feed();
        let mut got = Vec::new();
        w.write_all(&lines(&[Report::Answering { since: 700 }]))
            .unwrap();
        assert!(f.drain(1_000, &mut |u| got.push(u.ts_ns)).unwrap());
        assert_eq!(f.hold(1_000), Some(700));
        assert_eq!(f.hold_until(), Some(1_000 + ANSWER_WAIT_NS));
        // Half a record: still answering.
        let rec = lines(&[Report::Record(record(700))]);
        let (a, b) = rec.split_at(rec.len() / 2);
        w.write_all(a).unwrap();
        f.drain(2_000, &mut |u| got.push(u.ts_ns)).unwrap();
        assert_eq!((f.hold(2_000), got.len()), (Some(700), 0));
        w.write_all(b).unwrap();
        f.drain(3_000, &mut |u| got.push(u.ts_ns)).unwrap();
        assert_eq!((f.hold(3_000), got), (None, vec![700]));
        // An unanswered call ends its hold too, without a record.
        w.write_all(&lines(&[
            Report::Answering { since: 800 },
            Report::Unanswered,
        ]))
        .unwrap();
        f.drain(4_000, &mut |_| panic!("no record")).unwrap();
        assert_eq!(f.hold(4_000), None);
        // The end of the pipe ends the feed.
        drop(w);
        assert!(!f.drain(5_000, &mut |_| {}).unwrap());
    }

    #[test]
    fn a_record_that_never_comes_holds_events_for_a_bounded_time() {
        let (_rt, mut f, mut w) = feed();
        w.write_all(&lines(&[Report::Answering { since: 700 }]))
            .unwrap();
        f.drain(1_000, &mut |_| {}).unwrap();
        assert_eq!(f.hold(1_000 + ANSWER_WAIT_NS - 1), Some(700));
        assert_eq!(f.hold(1_000 + ANSWER_WAIT_NS), None);
    }

    #[test]
    fn a_line_that_is_no_report_is_counted_and_skipped() {
        let (_rt, mut f, mut w) = feed();
        w.write_all(b"not json\n").unwrap();
        w.write_all(&lines(&[Report::Record(record(9))])).unwrap();
        let mut got = Vec::new();
        f.drain(1, &mut |u| got.push(u.ts_ns)).unwrap();
        assert_eq!(
            (got, f.take_malformed(), f.take_malformed()),
            (vec![9], 1, 0)
        );
    }
}
