//! The only pingora-facing code: the server, its two planes, the request loop and the upstream
//! client. Domain modules below never see a pingora type.

mod admission;
mod body;
mod busy_poll;
mod client;
mod context;
mod cors;
mod data_plane;
mod deadline;
mod feedback;
pub mod h1;
/// Public for the header micro-benches (benches/hot_paths.rs); nothing outside `proxy` uses it.
#[doc(hidden)]
pub mod headers;
mod identity;
mod jwks;
mod lifecycle;
mod listen;
mod online;
mod ops;
mod pool;
mod relay;
mod response_head;
mod route;
mod shadow;
mod sinks;
mod upstream;
mod workflows;

use crate::config::Config;
use crate::state::Shared;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::Path;

/// Builds the server from a validated config and runs it until shutdown.
pub fn serve(config: Config, config_path: &Path) -> Result<(), String> {
    crate::logging::set_format(config.server.log_format);
    if let Some(t) = &config.tracing {
        crate::telemetry::init(t)?;
        log::info!(
            "tracing: OTLP to {} (sampling {} of new traces)",
            t.otlp_endpoint,
            t.sample_ratio
        );
    }
    if config.usage.tokenizer_preload {
        crate::usage::estimate::preload();
    }
    let (sink, audit) = sinks::start(&config)?;
    let feedback = sinks::feedback(&config)?;
    let workflow_history = sinks::workflows(&config)?;
    let server_cfg = config.server.clone();
    if config.auth.is_none() {
        log::warn!("authentication is disabled ([auth] absent): every caller is unrestricted");
    }
    let shared = Shared::new(config, config_path, sink, audit, feedback)
        .map_err(|e| format!("key store: {e}"))?;
    if let Some(h) = workflow_history {
        let _ = shared.workflows.history.set(h);
    }

    {
        let live = shared.live();
        crate::limits::reconcile::load_at_start(&live.config, &shared.limiter);
    }
    crate::limits::reconcile::spawn(shared.clone());
    crate::finance::watch::spawn(shared.clone());
    crate::experiments::promote::spawn(shared.clone());
    crate::eval::schedule::spawn(shared.clone());

    let conf = ServerConf {
        threads: server_cfg.threads,
        work_stealing: server_cfg.work_stealing,
        // We drain ourselves (lifecycle::Signals) before pingora's shutdown starts.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: std::env::temp_dir()
            .join(format!("model-bridge-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let data =
        data_plane::Connections::new(data_plane::DataPlane::new(shared.clone(), &server_cfg));
    let sweeper = background_service("upstream pool sweep", data.upstream_sweeper());
    let tls = match &server_cfg.tls {
        Some(tls) => {
            crate::metrics::tls::observe_cert("data", Path::new(&tls.cert_path));
            let mut settings = TlsSettings::intermediate(&tls.cert_path, &tls.key_path)
                .map_err(|e| format!("TLS: {e}"))?;
            settings.enable_h2();
            Some(settings)
        }
        None => None,
    };
    let data_svc = listen::DataListener::new(server_cfg.listen.to_string(), tls, data);
    let mut ops_svc = Service::new("ops plane".to_string(), ops::OpsPlane::new(shared.clone()));
    ops_svc.add_tcp(&server_cfg.ops_listen.to_string());
    ops_svc.threads = Some(1);
    let reloader = background_service(
        "config reload",
        lifecycle::Reloader {
            shared: shared.clone(),
            path: config_path.to_path_buf(),
        },
    );
    server.add_service(data_svc);
    server.add_service(ops_svc);
    server.add_service(reloader);
    server.add_service(sweeper);
    log::info!(
        "model-bridge serving data plane on {} ({}), ops plane on {}",
        server_cfg.listen,
        if server_cfg.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        },
        server_cfg.ops_listen
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals {
            shared: shared.clone(),
            drain_timeout: server_cfg.drain_timeout,
        }),
    });
    Ok(())
}
