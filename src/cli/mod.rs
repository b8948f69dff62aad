//! Subcommands other than `serve`: operating on state without the running gateway.

pub mod eval;
pub mod keys;
pub mod warehouse;
