//! One module per verb.
pub mod demo;
pub mod doctor;
pub mod events;
pub mod exporter;
pub mod live;
pub mod report;
pub mod run;
pub mod schema;
pub mod stats;
pub mod upgrade;
pub mod why;
