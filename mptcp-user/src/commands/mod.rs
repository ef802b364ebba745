//! One module per verb.
pub mod events;
pub mod schema;
