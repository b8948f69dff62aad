//! The ops plane: `/metrics`, `/healthz`, `/readyz`. Separate listener, never on the data path.

use crate::metrics::METRICS;
use crate::state::Shared;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

pub struct OpsPlane {
    shared: Arc<Shared>,
}

impl OpsPlane {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for OpsPlane {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let _ = s.drain_request_body().await;
        let path = s.req_header().uri.path();
        let get = s.req_header().method == http::Method::GET;
        match (get, path) {
            (true, "/metrics") => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.render(),
            ),
            (true, "/healthz") => reply(200, "application/json", b"{\"status\":\"ok\"}".to_vec()),
            (true, "/readyz") => {
                let live = self.shared.live();
                let draining = self.shared.is_draining();
                let ready = !draining && !live.config.models.is_empty();
                let body = serde_json::json!({
                    "ready": ready,
                    "draining": draining,
                    "config_generation": live.generation,
                    "models": live.config.models.len(),
                    "providers": live.config.providers.len(),
                });
                reply(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => reply(
                404,
                "application/json",
                br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#.to_vec(),
            ),
        }
    }
}
