//! Finance webhooks: budget thresholds crossed and spend anomalies found, POSTed as JSON to
//! the configured URL, signed with HMAC-SHA256, retried with exponential backoff — all on a
//! thread of their own: the request path only queues an event (and drops it, counted, when
//! the queue is full rather than wait).
//!
//! Receivers check `x-model-bridge-signature: sha256=<hex>` = HMAC-SHA256(secret,
//! `<x-model-bridge-timestamp>.<body>`), refuse stale timestamps, and dedupe on the event id
//! (`x-model-bridge-event-id`, also in the body): every replica that sees the same crossing
//! or anomaly names it the same.

use crate::metrics::METRICS;
use crate::routing::Secret;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Secret,
    pub timeout: Duration,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time (capped at a minute).
    pub backoff: Duration,
}

impl WebhookSettings {
    /// Whether a reload changed anything the delivery thread was started with.
    pub fn same_as(&self, o: &WebhookSettings) -> bool {
        self.url == o.url
            && self.secret.expose() == o.secret.expose()
            && self.timeout == o.timeout
            && self.max_attempts == o.max_attempts
            && self.backoff == o.backoff
    }
}

/// One notification.
#[derive(Debug, Clone)]
pub struct Event {
    /// Stable across replicas and retries.
    pub id: String,
    /// `budget.threshold` or `spend.anomaly`.
    pub kind: &'static str,
    pub data: Value,
}

/// The sending end; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Event>,
}

/// Events waiting to be delivered; beyond this they are dropped (and counted).
const QUEUE: usize = 1_024;
/// Deliveries in flight at once (a slow receiver does not hold up the others).
const CONCURRENCY: usize = 8;

/// `sha256=<hex>` of `timestamp.body` under `secret`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this never fails.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Notifier {
    /// Starts the delivery thread.
    pub fn start(settings: WebhookSettings) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A redirect could send the signed body anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(deliver_all(rx, client, Arc::new(settings)));
            })
            .map_err(|e| format!("webhook thread: {e}"))?;
        Ok(Self { tx })
    }

    /// Queues an event; never waits.
    pub fn send(&self, e: Event) {
        let kind = e.kind;
        if self.tx.try_send(e).is_err() {
            METRICS
                .webhook_deliveries
                .with_label_values(&[kind, "dropped"])
                .inc();
        }
    }
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Event>,
    client: reqwest::Client,
    settings: Arc<WebhookSettings>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    while let Some(e) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, settings) = (client.clone(), settings.clone());
        tokio::spawn(async move {
            let outcome = if deliver(&client, &settings, &e).await {
                "delivered"
            } else {
                "failed"
            };
            METRICS
                .webhook_deliveries
                .with_label_values(&[e.kind, outcome])
                .inc();
            drop(permit);
        });
    }
}

/// Delivers one event; true once the receiver answered 2xx. Retries network errors, 429 and
/// 5xx; any other answer is final (the receiver refused this event).
async fn deliver(client: &reqwest::Client, s: &WebhookSettings, e: &Event) -> bool {
    let body = serde_json::to_vec(&json!({
        "id": e.id,
        "type": e.kind,
        "created_at": crate::time::now_unix(),
        "data": e.data,
    }))
    .unwrap_or_default();
    let mut wait = s.backoff;
    for attempt in 1..=s.max_attempts.max(1) {
        let ts = crate::time::now_unix();
        let sent = client
            .post(&s.url)
            .header("content-type", "application/json")
            .header("user-agent", "model-bridge-webhooks")
            .header("x-model-bridge-event", e.kind)
            .header("x-model-bridge-event-id", &e.id)
            .header("x-model-bridge-timestamp", ts.to_string())
            .header(
                "x-model-bridge-signature",
                signature(s.secret.expose(), ts, &body),
            )
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let st = r.status().as_u16();
                log::warn!("webhook {} ({}): receiver answered {st}", e.id, e.kind);
                st == 429 || st >= 500
            }
            Err(err) => {
                // reqwest's error text names the URL, not the secret.
                log::warn!("webhook {} ({}): {err}", e.id, e.kind);
                true
            }
        };
        if !retry || attempt == s.max_attempts {
            return false;
        }
        METRICS.webhook_retries.inc();
        // Jitter so replicas retrying the same receiver spread out.
        let jitter = rand::random::<f64>() * 0.25 + 0.875;
        tokio::time::sleep(wait.mul_f64(jitter)).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Python: hmac.new(b"Jefe", b"1.what do ya want for nothing?", sha256).hexdigest()
        let sig = signature("Jefe", 1, b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=a9049465ce89cfb8e9aac62333abda66f80e3403f51f57f6bae3c3a4485eca38"
        );
        assert_ne!(sig, signature("Jefe", 2, b"what do ya want for nothing?"));
        assert_ne!(sig, signature("jefe", 1, b"what do ya want for nothing?"));
    }
}
