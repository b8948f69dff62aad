//! Finance: what the gateway does for the people who pay for it, beyond the request path —
//! allocations for chargeback, the snapshot of budgets and allocations written to the
//! warehouse per config generation, and the watch that turns budget crossings and spend
//! anomalies into metrics and signed webhooks.

pub mod allocation;
