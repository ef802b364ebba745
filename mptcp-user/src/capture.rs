//! Reading captures: the NDJSON of `events --json` (or a tracer's why file), for `live
//! --replay`, `why --from` and `report`. One reader, so every command names a bad line alike.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
};

use crate::event::{Event, SCHEMA_VERSION};

/// Every event of an NDJSON stream, in its order (blank lines skipped); the first line that is
/// not an event of schema version 1 is an error naming it (`NAME line N: …`).
pub fn read(r: impl Read, name: &str) -> Result<Vec<Event>, String> {
    let mut v = Vec::new();
    for (i, line) in BufReader::new(r).lines().enumerate() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(&line).map_err(|err| {
            format!(
                "{name} line {}: not an event of `mptcp-trace events --json`: {err}",
                i + 1
            )
        })?;
        if e.v != SCHEMA_VERSION {
            return Err(format!(
                "{name} line {}: schema version {}, this mptcp-trace reads {SCHEMA_VERSION}",
                i + 1,
                e.v
            ));
        }
        v.push(e);
    }
    Ok(v)
}

/// The events of the capture file at `path` (`-`: standard input); at least one.
pub fn load(path: &Path) -> Result<Vec<Event>, String> {
    let name = path.display().to_string();
    let events = if path == Path::new("-") {
        read(std::io::stdin(), "standard input")?
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the capture {name}: {e}"))?;
        read(f, &name)?
    };
    if events.is_empty() {
        return Err(format!("{name}: no events in it"));
    }
    Ok(events)
}
