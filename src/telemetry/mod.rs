//! Distributed tracing: W3C Trace Context in and out, one span per request with children for
//! authentication, admission, each upstream attempt and the relay, carrying the OpenTelemetry
//! GenAI attributes; exported over OTLP/HTTP by the SDK's batch processor on its own thread,
//! never on the request path. Off unless `[tracing]` is configured; sampling is parent-based
//! (a client's sampled flag wins) with a ratio for traces the gateway starts.

pub mod traceparent;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use traceparent::TraceParent;

/// `[tracing]`: where spans go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// Share of traces the gateway starts that are sampled (a client's decision is followed).
    pub sample_ratio: f64,
    pub service_name: String,
    /// How often the batch processor exports.
    pub export_interval: Duration,
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts the exporter (once, at start; outside any async runtime: the HTTP client blocks on
/// the processor's own thread).
pub fn init(s: &TracingSettings) -> Result<(), String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(s.otlp_endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(s.export_interval)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            s.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(s.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("model-bridge");
    EXPORTER
        .set(Exporter { provider, tracer })
        .map_err(|_| "tracing initialised twice".to_string())
}

/// Exports what is buffered (at shutdown, after the drain).
pub fn shutdown() {
    if let Some(e) = EXPORTER.get() {
        if let Err(err) = e.provider.shutdown() {
            log::warn!("tracing: final export failed: {err}");
        }
    }
}

/// The trace of one request: its server span, and the context its children hang from.
pub struct RequestTrace {
    tracer: SdkTracer,
    root: Span,
    /// The root's context as a (local) parent.
    parent: Context,
    context: SpanContext,
}

/// A child span in progress (an upstream attempt).
pub struct Child(Span);

impl RequestTrace {
    /// Starts the request's span when tracing is on: continuing the client's `traceparent`
    /// (and `tracestate`) when valid, a new trace otherwise.
    pub fn start(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        name: &str,
    ) -> Option<Box<Self>> {
        let e = EXPORTER.get()?;
        let parent = traceparent
            .and_then(TraceParent::parse)
            .map(|tp| {
                let state = tracestate
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(tp.trace_id),
                    opentelemetry::trace::SpanId::from(tp.parent_id),
                    if tp.sampled {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    },
                    true,
                    state,
                ))
            })
            .unwrap_or_default();
        let root = e.tracer.build_with_context(
            SpanBuilder::from_name(name.to_string()).with_kind(SpanKind::Server),
            &parent,
        );
        let context = root.span_context().clone();
        let local = SpanContext::new(
            context.trace_id(),
            context.span_id(),
            context.trace_flags(),
            false,
            context.trace_state().clone(),
        );
        Some(Box::new(Self {
            tracer: e.tracer.clone(),
            root,
            parent: Context::new().with_remote_span_context(local),
            context,
        }))
    }

    /// `traceparent` naming `span` (this request's own span when `None`), for the provider
    /// and for the client's response.
    pub fn traceparent(&self, span: Option<&Child>) -> String {
        let id = span.map_or(self.context.span_id(), |c| c.0.span_context().span_id());
        traceparent::format(
            u128::from_be_bytes(self.context.trace_id().to_bytes()),
            u64::from_be_bytes(id.to_bytes()),
            self.context.is_sampled(),
        )
    }

    /// Trace id in hex (for log lines).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.context.trace_id())
    }

    pub fn sampled(&self) -> bool {
        self.context.is_sampled()
    }

    /// A child that started at `start` and ends now.
    pub fn phase(&self, name: &'static str, start: SystemTime, attributes: Vec<KeyValue>) {
        if !self.sampled() {
            return;
        }
        self.child_at(name, SpanKind::Internal, start, attributes)
            .0
            .end();
    }

    /// A child starting now, ended by `Child::end`.
    pub fn child(&self, name: String, kind: SpanKind, attributes: Vec<KeyValue>) -> Child {
        self.child_at(name, kind, SystemTime::now(), attributes)
    }

    fn child_at(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Child {
        Child(
            self.tracer.build_with_context(
                SpanBuilder::from_name(name)
                    .with_kind(kind)
                    .with_start_time(start)
                    .with_attributes(attributes),
                &self.parent,
            ),
        )
    }

    /// Ends the request's span with its final attributes.
    pub fn finish(mut self: Box<Self>, attributes: Vec<KeyValue>, error: Option<String>) {
        if !self.sampled() {
            return;
        }
        self.root.set_attributes(attributes);
        if let Some(e) = error {
            self.root.set_status(Status::error(e));
        }
        self.root.end();
    }
}

impl Child {
    pub fn end(mut self, attributes: Vec<KeyValue>, error: Option<String>) {
        self.0.set_attributes(attributes);
        if let Some(e) = error {
            self.0.set_status(Status::error(e));
        }
        self.0.end();
    }
}
