//! The `sock_diag` poller: live per-subflow counters on its own thread (its dumps block), sent
//! to the state as [`Update::Diag`]. Events come from the pipeline (`crate::trace`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::mpsc::UnboundedSender;

use crate::decode;

use super::{diag::Poller, state::Update};

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
