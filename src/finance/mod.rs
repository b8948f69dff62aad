//! Finance: what the gateway does for the people who pay for it, beyond the request path —
//! allocations for chargeback, the snapshot of budgets and allocations written to the
//! warehouse per config generation, and the watch that turns budget crossings and spend
//! anomalies into metrics and signed webhooks.

pub mod allocation;
pub mod snapshot;
pub mod webhook;

/// `[finance]`.
#[derive(Debug, Clone)]
pub struct FinanceSettings {
    /// Zero: the watch is off.
    pub watch_interval: std::time::Duration,
    pub grains: Vec<crate::warehouse::spend::Grain>,
    pub webhook: Option<webhook::WebhookSettings>,
}
pub mod watch;
