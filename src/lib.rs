//! Model Bridge: an OpenAI-compatible LLM gateway on pingora.
//!
//! A request passes `proxy` (pingora server, request loop, upstream client) which calls the
//! domain modules in order: `routing` (alias → provider, body rewrite), then `usage` (tokens from
//! JSON or SSE, one record per request to a `UsageSink`). `config` parses and validates the TOML,
//! `state` holds the live generation behind an `ArcSwap`, `metrics` the Prometheus registry,
//! `error` the one error type mapped to OpenAI-shaped bodies, `mock` the mock provider that tests
//! and benches use.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod drop_behind;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod finance;
pub mod handoff;
pub mod header_list;
pub mod jsonl;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod rbac;
pub mod routing;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod time;
pub mod usage;
pub mod warehouse;
pub mod workflow;
