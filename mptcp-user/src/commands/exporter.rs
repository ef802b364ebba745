//! `mptcp-trace exporter`: Prometheus `/metrics` of the traced connections until SIGTERM or
//! SIGINT (then the programs detach and the port closes). A sink of the one pipeline: every
//! event is observed as it arrives; the tracer's health is brought up to date at each request.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;

use crate::{
    cli::{BadValue, ExporterArgs},
    fleet::{exporter::Metrics, http, observe::Observer, pinned_upgrade},
    output::ReadyFile,
    select::Selector,
    sys::signals::Stop,
    trace::Pipeline,
};

pub async fn run(args: ExporterArgs) -> Result<()> {
    // Checked, and the port taken, before anything is loaded: a bad value or a busy port
    // leaves nothing behind.
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        BadValue(format!(
            "--listen {:?}: not ADDRESS:PORT (e.g. 127.0.0.1:9464 or [::]:9464)",
            args.listen
        ))
    })?;
    let sel = Selector::for_tracing(&args.select)?;
    let ready = ReadyFile::from_arg(args.ready_file.as_deref())?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| BadValue(format!("--listen {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let mut stop = Stop::install()?;
    let mut pipe = Pipeline::start(&sel)?;
    // Requests that arrived meanwhile waited in the backlog: answered now, with the programs
    // attached.
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let metrics = Arc::new(Mutex::new(Metrics::new(pipe.programs_attached())));
    if let Some(r) = &ready {
        r.signal()?;
    }
    eprintln!("mptcp-trace exporter: serving http://{addr}/metrics");
    let mut observer = Observer::default();
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            e = pipe.next() => {
                observer.observe(&*e?, &mut seen);
                let m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                for o in seen.drain(..) {
                    m.add(&o);
                }
            }
            c = listener.accept() => {
                let Ok((stream, _)) = c else { continue };
                metrics.lock().unwrap_or_else(|p| p.into_inner()).health(
                    &pipe.totals().lost,
                    pinned_upgrade(),
                    pipe.programs_attached(),
                );
                tokio::spawn(http::serve(stream, metrics.clone()));
            }
        }
    }
    drop(listener);
    let (_, totals) = pipe.finish();
    eprintln!("mptcp-trace exporter: stopped; {}", totals.describe());
    Ok(())
}
