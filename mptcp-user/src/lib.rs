//! mptcp-trace userspace: loader, decoder, filters and renderers. The binary (`main.rs`) only
//! parses the command line and dispatches to `commands`.

pub mod cli;
pub mod commands;
pub mod decode;
pub mod doctor;
pub mod event;
pub mod filter;
pub mod live;
pub mod loader;
pub mod offsets;
pub mod peer;
pub mod pm_config;
pub mod pm_events;
pub mod testbed;
pub mod text;
pub mod upgrade;
