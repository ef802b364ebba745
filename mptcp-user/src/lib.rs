//! mptcp-trace userspace: loader, decoder, filters and renderers. The binary (`main.rs`) only
//! parses the command line and dispatches to `commands`.

pub mod attach_btf;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod decode;
pub mod doctor;
pub mod event;
pub mod fleet;
pub mod live;
pub mod loader;
pub mod ndjson;
pub mod offsets;
pub mod output;
pub mod peer;
pub mod pm_config;
pub mod report;
pub mod select;
pub mod sys;
pub mod testbed;
pub mod text;
pub mod trace;
pub mod upgrade;
