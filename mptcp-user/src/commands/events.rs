//! `mptcp-trace events`: load the programs, stream decoded events as text or NDJSON until
//! Ctrl-C, SIGTERM, `--duration` or a closed pipe; report losses; detach on the way out.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context, Result};
use log::warn;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep},
};

use crate::{
    cli::EventsArgs,
    decode::{self, Clock},
    event::Event,
    filter::Filter,
    loader,
    pm_events::{Owners, PmWatcher},
    text,
};

/// Writes events in the chosen format; a closed pipe is reported as `Ok(false)`.
struct Printer<W: Write> {
    out: W,
    json: bool,
    printed: u64,
}

impl<W: Write> Printer<W> {
    fn print(&mut self, e: &Event) -> io::Result<bool> {
        let res = if self.json {
            serde_json::to_writer(&mut self.out, e)
                .map_err(io::Error::from)
                .and_then(|_| self.out.write_all(b"\n"))
        } else {
            writeln!(self.out, "{}", text::line(e))
        };
        self.printed += 1;
        quiet_pipe(res)
    }

    fn flush(&mut self) -> io::Result<bool> {
        quiet_pipe(self.out.flush())
    }
}

fn quiet_pipe(res: io::Result<()>) -> io::Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

impl<W: Write> Printer<W> {
    fn header(&mut self) -> io::Result<bool> {
        quiet_pipe(writeln!(self.out, "{}", text::HEADER))
    }
}

/// Where ring-buffer records go: decoded, remembered for address events, filtered, printed.
struct Sink {
    clock: Clock,
    filter: Filter,
    owners: Owners,
    malformed: u64,
}

impl Sink {
    /// Handles one record; `Ok(false)` when the reader closed the pipe.
    fn record<W: Write>(&mut self, item: &[u8], printer: &mut Printer<W>) -> io::Result<bool> {
        match decode::decode(item, &self.clock) {
            Ok(e) => {
                self.owners.observe(&e);
                if self.filter.accept(&e) {
                    return printer.print(&e);
                }
            }
            Err(err) => {
                self.malformed += 1;
                warn!("dropped a malformed record: {err}");
            }
        }
        Ok(true)
    }
}

/// Emits a `lost` event when the kernel's drop counter moved since the last report.
fn report_lost<W: Write>(
    total: u64,
    reported: &mut u64,
    clock: &Clock,
    printer: &mut Printer<W>,
) -> io::Result<bool> {
    if total <= *reported {
        return Ok(true);
    }
    let e = decode::lost(total - *reported, clock);
    *reported = total;
    Ok(printer.print(&e)? && printer.flush()?)
}

pub async fn run(args: EventsArgs) -> Result<()> {
    let filter = Filter::new(&args.filters)?;
    let loader::Tracer {
        events,
        counters,
        logger,
        ebpf,
        degraded: _,
        programs: _,
    } = loader::load(filter.kernel_config())?;
    // Address announcements come from the kernel's MPTCP netlink events, per namespace.
    let (pm_tx, mut pm_rx) = tokio::sync::mpsc::unbounded_channel();
    let kernel = filter.kernel_config();
    let netns_filter = Some(kernel.netns[0]).filter(|_| kernel.n_netns != 0);
    let mut pm = PmWatcher::new(pm_tx, netns_filter);
    let clock = Clock::now();
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("cannot create ready file {}", path.display()))?;
    }
    let mut printer = Printer {
        out: BufWriter::new(io::stdout().lock()),
        json: args.json,
        printed: 0,
    };
    let mut open = args.json || printer.header()?;

    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
    let mut logger = loader::KernelLog::register(logger)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = interval(Duration::from_millis(500));
    let deadline = sleep(Duration::from_secs(args.duration.unwrap_or(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut lost = 0u64;
    let mut sink = Sink {
        clock,
        filter,
        owners: Owners::default(),
        malformed: 0,
    };
    let mut ticks = 0u64;

    while open {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if !sink.record(&item, &mut printer)? {
                        open = false;
                        break;
                    }
                }
                guard.clear_ready();
                open = open && printer.flush()?;
            }
            r = logger.forward() => r?,
            Some(a) = pm_rx.recv() => {
                // The connection's own events were recorded before the kernel processed the
                // ADD_ADDR: drain them first so the address event finds its owner.
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    if !sink.record(&item, &mut printer)? {
                        open = false;
                        break;
                    }
                }
                let mut e = decode::addr_event(&a, &clock);
                sink.owners.enrich(&mut e);
                if open && sink.filter.accept(&e) {
                    open = printer.print(&e)? && printer.flush()?;
                }
            }
            _ = tick.tick() => {
                open = report_lost(counters.lost(), &mut lost, &clock, &mut printer)?;
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    pm.rescan();
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    if open {
        report_lost(counters.lost(), &mut lost, &clock, &mut printer)?;
        printer.flush()?;
    }
    let shown = printer.printed;
    drop(printer);
    // Detach before saying goodbye: the links are owned by these fds.
    drop(ring);
    drop(logger);
    drop(ebpf);
    let mut summary = format!("mptcp-trace: {shown} events shown, {lost} lost");
    if sink.malformed > 0 {
        summary += &format!(", {} malformed records dropped", sink.malformed);
    }
    eprintln!("{summary}");
    Ok(())
}
