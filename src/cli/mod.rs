//! Subcommands other than `serve`: operating on state without the running gateway.

pub mod keys;
pub mod warehouse;
