//! `mptcp-trace schema`: the JSON schema of an NDJSON event line.

use std::io::Write;

pub fn run() -> anyhow::Result<()> {
    let schema = serde_json::to_string_pretty(&crate::event::json_schema())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{schema}")?;
    Ok(())
}
