//! The ops plane: `/metrics`, `/healthz`, `/readyz`, the admin API and the console. Separate
//! listener, never on the data path.

use crate::admin;
use crate::audit::AuditEvent;
use crate::auth;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::state::Shared;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::sync::Arc;

pub struct OpsPlane {
    shared: Arc<Shared>,
    jwks: super::jwks::Fetcher,
}

impl OpsPlane {
    /// What `/readyz` and `model_bridge_ready` report: serving a config with models, not draining.
    fn ready(&self) -> bool {
        !self.shared.is_draining() && !self.shared.live().config.models.is_empty()
    }

    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            jwks: super::jwks::Fetcher::new(),
        }
    }
}

/// Longest wait for an ops-plane client to send or take one piece of a request or response.
const OPS_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1 << 20;

fn json_reply(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

impl OpsPlane {
    async fn admin(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match super::body::read_bounded(s, MAX_ADMIN_BODY).await {
            Ok(b) => b,
            Err(e) => return reply(e.status(), "application/json", e.body()),
        };
        let req_header = s.req_header();
        let path = req_header.uri.path().to_string();
        if path == "/admin/v1/openapi.json" && req_header.method == http::Method::GET {
            return json_reply(200, &admin::openapi());
        }
        let live = self.shared.live();
        if live.config.auth.is_none() {
            // Without authentication there are no tenants: a console request's receipt is
            // anyone's (the dev profile's playground shows its cost).
            if let Some(id) = path.strip_prefix("/admin/v1/requests/") {
                let wait = admin::receipt_wait(req_header.uri.query());
                let r = match self.shared.receipts.wait(id, wait, |_| true).await {
                    Some(v) => admin::Reply::ok(v),
                    None => admin::Reply::error(404, "not_found", "No receipt for this request."),
                };
                return json_reply(r.status, &r.body);
            }
            let r = admin::Reply::error(
                403,
                "admin_disabled",
                "The admin API needs authentication: configure [auth].",
            );
            return json_reply(r.status, &r.body);
        }
        let cred = auth::credential(
            s.get_header(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            s.get_header("api-key").map(|v| v.as_bytes()),
        );
        let request_id = super::context::new_request_id();
        let client_ip = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|i| i.ip().to_string());
        let user_agent = s
            .get_header("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|u| u.chars().take(256).collect());
        let resolved = super::identity::principal_of(&self.shared, &live, &self.jwks, cred).await;
        let principal = match resolved {
            Ok(Some(p)) => p,
            failed => {
                // `Ok(None)`: auth is configured but its key store is not open yet.
                let f = failed.err().unwrap_or(auth::AuthFailure::Unknown);
                METRICS.auth_failures.with_label_values(&[f.label()]).inc();
                self.shared.audit.record(AuditEvent {
                    ts_ms: crate::time::now_unix() * 1000,
                    request_id: request_id.clone(),
                    actor: "anonymous".into(),
                    org: None,
                    action: "auth.failed",
                    resource: path.clone(),
                    outcome: "denied",
                    reason: Some(f.label().into()),
                    before: None,
                    after: None,
                    client_ip,
                    user_agent,
                });
                let e = GatewayError::Unauthenticated(f);
                return reply(401, "application/json", e.body());
            }
        };
        let method = s.req_header().method.as_str().to_string();
        let query = s.req_header().uri.query().map(str::to_string);
        let credential = super::identity::caller_credential(s);
        let req = admin::Request {
            method: &method,
            path: &path,
            query: query.as_deref(),
            body: &body,
            request_id: &request_id,
            client_ip,
            user_agent,
            credential,
        };
        let r = admin::handle(&self.shared, &live, &principal, &req).await;
        let mut resp = match r.text {
            Some((content_type, text)) => reply(r.status, content_type, text.into_bytes()),
            None => json_reply(r.status, &r.body),
        };
        if let Ok(v) = http::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
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

/// Our own request loop rather than pingora's `ServeHttp` adapter: that one logs a request it
/// cannot parse at ERROR with the raw request bytes — `Authorization` header included. Here a
/// failure is logged by its kind only; no request text reaches the log.
#[async_trait]
impl HttpServerApp for OpsPlane {
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match s.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!("ops plane: unreadable request ({:?})", e.etype());
                return None;
            }
        }
        s.set_keepalive((!*shutdown.borrow()).then_some(60));
        // A client that sends or reads nothing cannot hold an ops connection forever.
        s.set_read_timeout(Some(OPS_IO_TIMEOUT));
        s.set_write_timeout(Some(OPS_IO_TIMEOUT));
        let (parts, body) = self.response(&mut s).await.into_parts();
        let header: ResponseHeader = parts.into();
        if s.write_response_header(Box::new(header)).await.is_err()
            || s.write_response_body(body.into(), true).await.is_err()
        {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&s);
        match s.finish().await {
            Ok(c) => c.map(|c| ReusedHttpStream::from_reusable_stream(c, settings)),
            Err(e) => {
                log::debug!("ops plane: finishing a request ({:?})", e.etype());
                None
            }
        }
    }
}

impl OpsPlane {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        if s.req_header().uri.path().starts_with("/admin/") {
            return self.admin(s).await;
        }
        let _ = s.drain_request_body().await;
        let path = s.req_header().uri.path();
        let get = s.req_header().method == http::Method::GET;
        if get && path.starts_with("/console") {
            let live = self.shared.live();
            let host = s
                .get_header(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let etag = s
                .get_header(http::header::IF_NONE_MATCH)
                .map(|v| v.as_bytes());
            if let Some(r) = crate::console::serve(&live.config.console, path, host, etag) {
                return r;
            }
        }
        match (get, path) {
            (true, "/metrics") => {
                METRICS.ready.set(self.ready() as i64);
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            (true, "/healthz") => reply(200, "application/json", b"{\"status\":\"ok\"}".to_vec()),
            (true, "/readyz") => {
                let live = self.shared.live();
                let draining = self.shared.is_draining();
                let ready = self.ready();
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
