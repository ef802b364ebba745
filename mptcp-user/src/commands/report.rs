//! `mptcp-trace report CAPTURE [-o FILE]`: the HTML page of a capture (see `crate::report`).
//! No BPF, no privileges. Bad input (unreadable capture, a line that is not an event, an
//! output that cannot be written) is one line and status 2; nothing is written then.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{BadValue, ReportArgs};

/// `run.ndjson` → `run.html`, next to the capture; standard input → `report.html`.
fn default_output(capture: &std::path::Path) -> PathBuf {
    if capture == std::path::Path::new("-") {
        PathBuf::from("report.html")
    } else {
        capture.with_extension("html")
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    let events = crate::capture::load(&args.capture).map_err(BadValue)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.capture));
    let stdio = std::path::Path::new("-");
    if out == args.capture && out != stdio {
        return Err(BadValue(format!(
            "{}: the report would overwrite its capture (give -o FILE)",
            out.display()
        ))
        .into());
    }
    let source = args
        .capture
        .file_name()
        .map_or("standard input".into(), |n| {
            n.to_string_lossy().into_owned()
        });
    let (html, report) = crate::report::render(&events, &source);
    if out == stdio {
        use std::io::Write;
        std::io::stdout().write_all(html.as_bytes())?;
    } else {
        std::fs::write(&out, html)
            .map_err(|e| BadValue(format!("cannot write {}: {e}", out.display())))?;
        eprintln!(
            "mptcp-trace: wrote {} ({} connections, {} subflows, {} events)",
            out.display(),
            report.conns.len(),
            report.subflows(),
            report.events
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_output_sits_next_to_the_capture() {
        assert_eq!(
            default_output(std::path::Path::new("/tmp/run.ndjson")),
            PathBuf::from("/tmp/run.html")
        );
        assert_eq!(
            default_output(std::path::Path::new("-")),
            PathBuf::from("report.html")
        );
    }
}
