//! The data plane: pingora's HTTP server hands each request to one loop of ours —
//! accept → read body → route → rewrite → upstream → relay → finish.

use super::body;
use super::client::{Client, RequestBody, RequestHeaders};
use super::context::Ctx;
use super::h1::request::HeadError;
use super::h1::server::{Connection, Next, Timeouts};
use super::headers;
use super::identity;
use super::relay::{relay, Outcome, RelayMode};
use super::upstream::Upstream;
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::rewrite::RequestFields;
use crate::routing::{Endpoint, ModelRoute};
use crate::state::Shared;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// Passthrough bodies up to this size are buffered (so a dead pooled connection can be
/// retried); larger ones stream to a fresh connection.
const PASSTHROUGH_BUFFER: usize = 1 << 20;
/// Longest wait for the next piece of a client's request.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refused body is drained before the connection closes.
const LINGER: Duration = Duration::from_secs(2);

pub struct DataPlane {
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    jwks: super::jwks::Fetcher,
    options: HttpServerOptions,
    keepalive_s: u64,
    busy_poll: Duration,
}

impl DataPlane {
    pub fn new(shared: Arc<Shared>, server: &crate::config::ServerSettings) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2c = server.h2c;
        Self {
            shared,
            upstream: Arc::new(Upstream::new(1024)),
            jwks: super::jwks::Fetcher::new(),
            options,
            keepalive_s: server.keepalive_timeout_s,
            busy_poll: server.busy_poll,
        }
    }
}

/// Counts a request in flight for metrics and for draining on shutdown.
struct Inflight<'a>(&'a Shared);

impl<'a> Inflight<'a> {
    fn enter(s: &'a Shared) -> Self {
        s.inflight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        METRICS.inflight.inc();
        Self(s)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        METRICS.inflight.dec();
    }
}

/// The data plane's connections (accepted by `listen`): HTTP/1 runs through our own session,
/// one request after another on the connection; HTTP/2 (by ALPN, or the h2c preface when
/// enabled) goes to pingora's, which calls `process_new_http` per stream.
pub struct Connections {
    plane: Arc<DataPlane>,
}

impl Connections {
    pub fn new(plane: DataPlane) -> Self {
        Self {
            plane: Arc::new(plane),
        }
    }

    pub fn upstream_sweeper(&self) -> super::pool::Sweeper {
        self.plane.upstream.sweeper()
    }

    /// Whether plaintext connections may open with HTTP/2's preface (h2c prior knowledge).
    pub fn h2c(&self) -> bool {
        self.plane.options.h2c
    }

    /// Serves one connection until it closes. `h2_preface`: a plaintext connection opened with
    /// HTTP/2's preface (TLS connections say so by ALPN).
    pub async fn serve(&self, stream: Stream, h2_preface: bool, shutdown: &ShutdownWatch) {
        let h2 = match stream.get_ssl_digest() {
            Some(_) => matches!(stream.selected_alpn_proto(), Some(ALPN::H2)),
            None => h2_preface,
        };
        if h2 {
            ServerApp::process_new(&self.plane, stream, shutdown).await;
        } else {
            self.plane.serve_h1(stream, shutdown).await;
        }
    }
}

#[async_trait]
impl HttpServerApp for DataPlane {
    /// One HTTP/2 stream (HTTP/1 never comes here: `Connections` serves it).
    async fn process_new_http(
        self: &Arc<Self>,
        mut s: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match s.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // The error's text quotes the raw request (credentials included): kind only.
                log::debug!("unreadable request ({:?})", e.etype());
                return None;
            }
        }
        s.set_read_timeout(Some(CLIENT_READ_TIMEOUT));
        let mut client = Client::H2(Box::new(s));
        if self.serve(&mut client, shutdown).await == Outcome::Abort {
            if let Client::H2(s) = &mut client {
                s.shutdown().await;
            }
            return None;
        }
        if let Client::H2(s) = client {
            let _ = s.finish().await;
        }
        None
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

impl DataPlane {
    /// Requests on one HTTP/1 connection, until either side closes it.
    async fn serve_h1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut conn = Connection::new(stream);
        // A new connection gets as long for its first request as any read; a kept one waits
        // the keep-alive timeout for its next.
        let mut idle = CLIENT_READ_TIMEOUT;
        loop {
            let timeouts = Timeouts {
                idle,
                read: CLIENT_READ_TIMEOUT,
                write: self.shared.live().config.server.client_write_timeout,
            };
            let session = match conn.next(timeouts).await {
                Next::Request(s) => s,
                Next::Closed => return,
                Next::Refused(conn, e) => return refuse_unreadable(conn, e).await,
            };
            idle = Duration::from_secs(self.keepalive_s);
            let mut client = Client::H1(session);
            let outcome = self.serve(&mut client, shutdown).await;
            let Client::H1(mut session) = client else {
                return;
            };
            if outcome == Outcome::Abort {
                session.shutdown().await;
                return;
            }
            match session.finish() {
                Some(next) => conn = next,
                None => return,
            }
        }
    }

    /// One request, either protocol.
    async fn serve(&self, client: &mut Client, shutdown: &ShutdownWatch) -> Outcome {
        super::busy_poll::touch(self.busy_poll);
        let _inflight = Inflight::enter(&self.shared);
        if *shutdown.borrow() || self.shared.is_draining() {
            client.close_after();
        }
        let outcome = self.handle(client).await;
        super::busy_poll::touch(self.busy_poll);
        outcome
    }
}

impl DataPlane {
    async fn handle(&self, s: &mut Client) -> Outcome {
        let live = self.shared.live();
        // Browsers (the console's playground) call from another origin: a preflight is
        // answered here, before authentication (it carries no credential), and allowed
        // origins see the gateway's response headers.
        let origin = s
            .header_str("origin")
            .filter(|o| live.config.console.allows_origin(o))
            .map(str::to_string);
        if let Some(o) = &origin {
            if s.method() == http::Method::OPTIONS {
                return super::cors::preflight(s, o).await;
            }
        }
        let method = super::context::method_text(s.method());
        // One canonical path for routing, metering and forwarding (routing::path).
        let path = crate::routing::path::normalize(s.uri().path()).map(|p| {
            match Endpoint::from_path(&p).and_then(Endpoint::canonical_path) {
                Some(c) if c == p => Cow::Borrowed(c),
                _ => Cow::Owned(p.into_owned()),
            }
        });
        let client_ip = s.client_addr();
        let shown = path.as_deref().unwrap_or("/");
        let shown_path = path.as_ref().map_or(Cow::Borrowed("/"), Cow::clone);
        let mut ctx = Ctx::new(live, method.clone(), shown_path, client_ip);
        if let Some(o) = origin {
            super::cors::allow(&mut ctx.added_headers, &o);
            ctx.receipt = true;
        }
        // Classified before authentication, so refusals are labelled with their endpoint.
        ctx.set_endpoint(Endpoint::classify(shown));
        ctx.start_trace(&*s, &method, shown);
        let result = match path {
            Err(e) => Err(GatewayError::InvalidField {
                param: "path",
                message: e.message().into(),
            }),
            Ok(path) => {
                let serve = async {
                    let t = ctx.phase_start();
                    let auth = identity::authenticate(&self.shared, &self.jwks, s, &mut ctx).await;
                    ctx.phase("authenticate", t);
                    auth?;
                    self.dispatch(s, &mut ctx, &method, &path).await
                };
                // At the drain deadline the request is cut here, while `ctx` lives on: it
                // still settles its admission and leaves its record, marked as cut by shutdown.
                let served = tokio::select! {
                    r = serve => Some(r),
                    _ = self.shared.tasks.cut_signal() => None,
                };
                served.unwrap_or_else(|| {
                    ctx.record.cancelled = s.response_written();
                    Err(GatewayError::ShuttingDown)
                })
            }
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => write_error(s, &mut ctx, &e).await,
        };
        ctx.finish(&self.shared);
        outcome
    }

    /// Nothing is served whose record could not be queued: while the usage sink is backed up
    /// (its writer behind), new requests get 503 with `retry-after` before reaching a provider.
    fn refuse_if_backed_up(&self, ctx: &mut Ctx) -> Result<(), GatewayError> {
        if self.shared.sink.backed_up() {
            ctx.added_headers.push("retry-after", "1");
            return Err(GatewayError::Backpressure);
        }
        Ok(())
    }

    async fn dispatch(
        &self,
        s: &mut Client,
        ctx: &mut Ctx,
        method: &str,
        path: &str,
    ) -> Result<Outcome, GatewayError> {
        if !path.starts_with("/v1/") {
            return Err(GatewayError::NotFound);
        }
        if path.starts_with("/v1/workflows/") {
            return super::workflows::handle(&self.shared, s, ctx, method, path).await;
        }
        match Endpoint::from_path(path) {
            Some(Endpoint::Models) => {
                ctx.set_endpoint(Endpoint::Models);
                if method != "GET" {
                    return Err(GatewayError::MethodNotAllowed);
                }
                let body = if ctx.principal.unrestricted {
                    ctx.live.models_json.clone()
                } else {
                    visible_models(ctx)
                };
                write_json(s, ctx, 200, body).await
            }
            Some(ep) => {
                ctx.set_endpoint(ep);
                if method != "POST" {
                    return Err(GatewayError::MethodNotAllowed);
                }
                identity::authorize_endpoint(&self.shared, s, ctx, ep)?;
                if ep == Endpoint::Feedback {
                    return self.feedback(s, ctx).await;
                }
                self.llm(s, ctx, ep).await
            }
            None => {
                if let Some(id) = path.strip_prefix("/v1/models/") {
                    if method == "GET" {
                        ctx.set_endpoint(Endpoint::Models);
                        return model_object(s, ctx, id).await;
                    }
                }
                ctx.set_endpoint(Endpoint::Passthrough);
                identity::authorize_endpoint(&self.shared, s, ctx, Endpoint::Passthrough)?;
                self.passthrough(s, ctx, method, path).await
            }
        }
    }

    async fn llm(
        &self,
        s: &mut Client,
        ctx: &mut Ctx,
        ep: Endpoint,
    ) -> Result<Outcome, GatewayError> {
        self.refuse_if_backed_up(ctx)?;
        let limit = ctx.live.config.server.max_body_bytes;
        let body = body::read_bounded(s, limit).await?;
        ctx.record.request_bytes = body.len() as u64;
        METRICS.body_bytes.observe(body.len() as f64);
        let fields = RequestFields::parse(&body)?;
        ctx.record.stream = fields.stream;
        ctx.record.end_user = fields.user.as_deref().map(bounded_text);
        let Some(model) = fields.model.as_deref() else {
            return Err(GatewayError::InvalidField {
                param: "model",
                message: "you must provide a model parameter".into(),
            });
        };
        // A client's text is echoed into errors and records only in bounded form: a 10 MB
        // model name is refused with (and recorded as) its first 256 bytes.
        ctx.record.requested_model = Some(bounded_text(model));
        let not_found = |ctx: &Ctx| {
            GatewayError::ModelNotFound(ctx.record.requested_model.clone().unwrap_or_default())
        };
        if let Some(name) = model.strip_prefix("workflow:") {
            if ep != Endpoint::ChatCompletions {
                return Err(not_found(ctx));
            }
            return super::workflows::chat(
                &self.shared,
                s,
                ctx,
                name,
                &body,
                fields.stream,
                fields.include_usage,
            )
            .await;
        }
        let live = ctx.live.clone();
        let route = live
            .config
            .models
            .get(model)
            .ok_or_else(|| not_found(ctx))?;
        identity::authorize_model(&self.shared, s, ctx, route)?;
        ctx.model_metrics = Some(route.metrics.clone());
        let plan = super::route::choose(ctx, route, &fields);
        ctx.price = Some(plan.targets[0].price);
        let t = ctx.phase_start();
        let admitted = super::admission::admit(
            &self.shared,
            ctx,
            route,
            plan.targets[0].price,
            ep,
            &fields,
            body.len(),
        )
        .await;
        ctx.phase("admission", t);
        admitted?;
        let (body, fields) = match plan.params.and_then(|p| p.apply(&body)) {
            Some(b) => {
                let b = Bytes::from(b);
                let f = RequestFields::parse(&b)?;
                (b, f)
            }
            None => (body, fields),
        };
        ctx.request_body = Some(body.clone());
        if let Some(sh) = &route.shadow {
            super::shadow::maybe_send(
                &self.shared,
                &self.upstream,
                s,
                ctx,
                route,
                sh,
                ep,
                &body,
                fields.max_tokens,
            );
        }
        if let Some(oe) = route.online_eval.as_ref() {
            if ep == Endpoint::ChatCompletions {
                ctx.online = super::online::sample(&self.shared, &self.upstream, &route.alias, oe);
            }
        }
        let inject = fields.stream && ep.needs_include_usage();
        let resp = super::route::send(
            &self.shared,
            &self.upstream,
            s,
            ctx,
            route,
            plan.targets,
            ep,
            &body,
            &fields,
            inject,
        )
        .await?;
        let mode = RelayMode {
            account: true,
            strip_usage_chunk: inject && !fields.include_usage,
        };
        let t = ctx.phase_start();
        let relayed = relay(s, ctx, &self.upstream, resp, mode).await;
        ctx.phase("relay", t);
        relayed
    }

    /// `POST /v1/feedback` `{"request_id": "req_…", "score": 0.8, "comment": "…"}`.
    async fn feedback(&self, s: &mut Client, ctx: &mut Ctx) -> Result<Outcome, GatewayError> {
        let body = body::read_bounded(s, 64 * 1024).await?;
        ctx.record.request_bytes = body.len() as u64;
        let row = super::feedback::parse(&body, ctx)?;
        let Some(sink) = &self.shared.feedback else {
            return Err(GatewayError::InvalidField {
                param: "feedback",
                message: "feedback needs a [clickhouse] warehouse on this gateway".into(),
            });
        };
        let reply = serde_json::json!({"object": "feedback", "id": row.feedback_id,
                                       "request_id": row.request_id, "score": row.score});
        sink.submit(row);
        write_json(s, ctx, 200, Bytes::from(reply.to_string())).await
    }

    async fn passthrough(
        &self,
        s: &mut Client,
        ctx: &mut Ctx,
        method: &str,
        path: &str,
    ) -> Result<Outcome, GatewayError> {
        let live = ctx.live.clone();
        let provider = live
            .config
            .passthrough
            .as_ref()
            .ok_or(GatewayError::NoPassthrough)?;
        self.refuse_if_backed_up(ctx)?;
        ctx.record.provider = Some(provider.name.clone());
        let suffix = &path["/v1".len()..];
        let up_path = provider.passthrough_path(suffix, s.uri().query());
        let limit = live.config.server.max_body_bytes;
        let declared = s.content_length();
        let small = declared.is_some_and(|n| n <= PASSTHROUGH_BUFFER) || s.is_body_empty();
        let resp = if small {
            let body = body::read_bounded(s, limit).await?;
            ctx.record.request_bytes = body.len() as u64;
            let header = headers::upstream_request(
                s.headers(),
                provider,
                method,
                &up_path,
                body.len(),
                ctx.id(),
                None,
            )?;
            self.upstream
                .send(provider, header, body, ctx.started)
                .await?
        } else {
            body::admit(s, limit).await?;
            let header = headers::upstream_request_streamed(
                s,
                provider,
                method,
                &up_path,
                declared,
                ctx.id(),
            )?;
            let (resp, sent) = self
                .upstream
                .send_streaming(provider, header, s, limit, ctx.started)
                .await?;
            ctx.record.request_bytes = sent;
            resp
        };
        let mode = RelayMode {
            account: false,
            strip_usage_chunk: false,
        };
        relay(s, ctx, &self.upstream, resp, mode).await
    }
}

pub(super) async fn write_json(
    s: &mut Client,
    ctx: &mut Ctx,
    status: u16,
    body: Bytes,
) -> Result<Outcome, GatewayError> {
    let Some(mut h) = headers::local_response(status, body.len(), ctx.id(), false) else {
        return Ok(Outcome::Abort);
    };
    headers::add(&mut h, &ctx.added_headers);
    ctx.record.status = status;
    ctx.record.response_bytes = body.len() as u64;
    if s.write_head(&h).await.is_err() || s.write_body(body, true).await.is_err() {
        ctx.record.cancelled = true;
        return Ok(Outcome::Abort);
    }
    Ok(Outcome::Done)
}

/// `GET /v1/models` for a restricted caller: only the aliases it may invoke.
fn visible_models(ctx: &Ctx) -> Bytes {
    let p = &ctx.principal;
    let mut ids: Vec<&ModelRoute> = ctx
        .live
        .config
        .models
        .values()
        .filter(|r| r.visible_to(&p.org) && p.can_invoke(&r.alias))
        .collect();
    ids.sort_by(|a, b| a.alias.cmp(&b.alias));
    let data: Vec<serde_json::Value> = ids
        .iter()
        .map(|r| {
            serde_json::json!({"id": r.alias.as_ref(), "object": "model", "created": 0,
                               "owned_by": r.provider.name.as_ref()})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

async fn model_object(s: &mut Client, ctx: &mut Ctx, id: &str) -> Result<Outcome, GatewayError> {
    let live = ctx.live.clone();
    let route = live
        .config
        .models
        .get(id)
        .filter(|r| r.visible_to(&ctx.principal.org) && ctx.principal.can_invoke(&r.alias))
        .ok_or_else(|| GatewayError::ModelNotFound(id.to_string()))?;
    let v = serde_json::json!({
        "id": route.alias.as_ref(),
        "object": "model",
        "created": 0,
        "owned_by": route.provider.name.as_ref(),
    });
    write_json(s, ctx, 200, Bytes::from(v.to_string())).await
}

/// Writes the OpenAI-shaped error, unless a response already started (then the connection is
/// cut, the only honest signal left).
async fn write_error(s: &mut Client, ctx: &mut Ctx, e: &GatewayError) -> Outcome {
    ctx.record.error_type = Some(e.code());
    METRICS.gateway_errors.with_label_values(&[e.code()]).inc();
    if matches!(e, GatewayError::ClientClosed) {
        ctx.record.cancelled = true;
        return Outcome::Abort;
    }
    if s.response_written() {
        return Outcome::Abort;
    }
    // After a refused or unread body the connection cannot be reused safely.
    let close = matches!(
        e,
        GatewayError::BodyTooLarge { .. } | GatewayError::InvalidField { param: "body", .. }
    ) || !s.is_body_done();
    if close {
        s.close_after();
    }
    let body = Bytes::from(e.body());
    let status = e.status();
    ctx.record.status = status;
    let Some(mut h) = headers::local_response(status, body.len(), ctx.id(), close) else {
        return Outcome::Abort;
    };
    headers::add(&mut h, &ctx.added_headers);
    ctx.record.response_bytes = body.len() as u64;
    if s.write_head(&h).await.is_err() || s.write_body(body, true).await.is_err() {
        ctx.record.cancelled = true;
        return Outcome::Abort;
    }
    if close && !s.is_body_done() {
        // Lingering close: read and discard what the client is still sending, for a bounded
        // time, so its TCP stack does not reset the connection before it reads our answer.
        let _ = tokio::time::timeout(LINGER, s.drain_body()).await;
    }
    Outcome::Done
}

/// Longest client-supplied text (model name, end-user id) echoed into an error or a record.
const MAX_ECHO: usize = 256;

/// `text` cut to `MAX_ECHO` bytes at a character boundary, marked with `…` when cut.
fn bounded_text(text: &str) -> String {
    if text.len() <= MAX_ECHO {
        return text.to_string();
    }
    let mut cut = MAX_ECHO;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Answers a request head that cannot be served, then closes: 431 for too many or too large
/// header fields, 400 for anything else malformed (nothing for timeouts and closed
/// connections). The head is never logged: it may carry credentials.
async fn refuse_unreadable(conn: Connection, e: HeadError) {
    let err = match e {
        HeadError::TooLarge => GatewayError::HeadersTooLarge,
        HeadError::Malformed(why) => {
            log::debug!("unreadable request ({why})");
            GatewayError::MalformedRequest
        }
    };
    METRICS
        .gateway_errors
        .with_label_values(&[err.code()])
        .inc();
    conn.refuse(err.status(), &err.body()).await;
}
