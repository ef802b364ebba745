//! The collector: loads the tracer, turns ring-buffer records into [`Update`]s on a channel,
//! and runs the `sock_diag` poller on its own thread. The state never sees a kernel object.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use log::warn;
use tokio::{io::unix::AsyncFd, sync::mpsc::UnboundedSender, time::interval};

use crate::{
    cli::FilterArgs,
    decode::{self, Clock},
    event::Event,
    filter::Filter,
    loader,
};

use super::{diag::Poller, state::Update};

/// The attached tracer and the userspace filter.
pub struct Collector {
    tracer: loader::Tracer,
    filter: Filter,
    pub clock: Clock,
}

impl Collector {
    /// Checks the filters, loads and attaches the programs. Returns once tracing is live.
    pub fn load(filters: &FilterArgs) -> Result<Self> {
        let filter = Filter::new(filters)?;
        let tracer = loader::load(filter.kernel_config())?;
        Ok(Collector {
            tracer,
            filter,
            clock: Clock::now(),
        })
    }

    /// What this kernel lacks (missing fields, programs), each with what is lost.
    pub fn degraded(&self) -> &[String] {
        &self.tracer.degraded
    }

    /// Sends every accepted event (those `keep` also agrees to) and the lost-event total until
    /// the receiver goes away. Detaches the programs on return.
    pub async fn run(
        self,
        tx: UnboundedSender<Update>,
        mut keep: impl FnMut(&Event) -> bool,
    ) -> Result<()> {
        let Collector {
            tracer:
                loader::Tracer {
                    events,
                    counters,
                    logger,
                    ebpf,
                    degraded: _,
                    programs: _,
                },
            mut filter,
            clock,
        } = self;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
        let mut logger = loader::KernelLog::register(logger)?;
        let mut tick = interval(Duration::from_millis(500));
        let mut open = true;
        while open {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let rb = guard.get_inner_mut();
                    while let Some(item) = rb.next() {
                        match decode::decode(&item, &clock) {
                            Ok(e) if filter.accept(&e) && keep(&e) => {
                                open = tx.send(Update::Event(Box::new(e))).is_ok();
                            }
                            Ok(_) => {}
                            Err(err) => warn!("dropped a malformed record: {err}"),
                        }
                    }
                    guard.clear_ready();
                }
                r = logger.forward() => r?,
                _ = tick.tick() => {
                    open = tx.send(Update::Lost(counters.lost())).is_ok();
                }
            }
        }
        drop(ring);
        drop(logger);
        drop(ebpf);
        Ok(())
    }
}

/// Polls `sock_diag` about once a second in the namespaces listed in `netns` (the state keeps
/// that list current) until `stop` is set or the receiver goes away.
pub struct DiagThread {
    pub netns: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DiagThread {
    pub fn spawn(tx: UnboundedSender<Update>, period: Duration) -> Self {
        let netns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, st) = (netns.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("sock_diag".into())
            .spawn(move || {
                let mut poller = Poller::default();
                while !st.load(Ordering::Relaxed) {
                    let list = ns.lock().map(|l| l.clone()).unwrap_or_default();
                    for (netns, socks) in poller.poll(&list) {
                        let at_ns = decode::monotonic_ns();
                        if tx
                            .send(Update::Diag {
                                netns,
                                at_ns,
                                socks,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    // Sleep in slices so that stopping is quick.
                    let mut slept = Duration::ZERO;
                    while slept < period && !st.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        slept += Duration::from_millis(50);
                    }
                }
            })
            .expect("spawn the sock_diag thread");
        DiagThread {
            netns,
            stop,
            handle: Some(handle),
        }
    }

    pub fn set_netns(&self, list: Vec<u32>) {
        if let Ok(mut l) = self.netns.lock() {
            *l = list;
        }
    }
}

impl Drop for DiagThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
