//! Workflows: multi-step LLM pipelines run by the gateway.
pub mod def;
pub mod expr;
