//! sessiongate: a reverse-proxy authentication sidecar on Pingora.
//!
//! The request pipeline of SPEC.md is the module list, one file per stage: `site` (host ->
//! site), `token` (cookie -> verified identity -> tenant binding), `liveness` (is the
//! impersonation live?), `policy` (paths, deny list, no session), `headers` (strip, forward,
//! inject), `banner` (the streamed splice), `audit`. Around them: `response` (every answer the
//! proxy makes itself), `endpoints` (`/.sessiongate/*` and the admin listener), `config`,
//! `metrics`, `fanout` (Redis), `state`, `lifecycle`, `connections` (the cap on the public
//! listener), and `proxy`, whose hooks only call the stages. The command line lives in
//! `src/cli/`.

#![forbid(unsafe_code)]

pub mod access;
pub mod assertion;
pub mod audit;
pub mod banner;
pub mod config;
pub mod connections;
pub mod endpoints;
pub mod fanout;
pub mod headers;
pub mod lifecycle;
pub mod lines;
pub mod liveness;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod response;
pub mod revocation;
pub mod signing;
pub mod site;
pub mod state;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod token;
pub mod watch;

use config::Config;
pub use lifecycle::ConfigSource;
use pingora::apps::HttpServerOptions;
use pingora::listeners::L4BufferSettings;
use pingora::listeners::ListenerConfig;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Bytes of write buffer per client connection (allocated for the connection's life).
pub const DOWNSTREAM_WRITE_BUFFER: usize = 8 * 1024;

/// Why the server cannot be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    NoRandomness(#[from] banner::NoRandomness),
    #[error("the TLS listener cannot be set up: {0}")]
    Tls(String),
}

/// Builds the Pingora server for a validated config: the public proxy (HTTP/1.1 and h2c on the
/// plain listener, HTTP/1.1 and h2 by ALPN on the TLS one), the admin listener, and the
/// lifecycle service (audit writer, reload, graceful stop).
/// `source`: where reloads read the config (none: the config never reloads).
pub fn build(config: Config, source: Option<ConfigSource>) -> Result<Server, BuildError> {
    // One process-wide rustls crypto provider (aws-lc-rs, which the rest already uses), for the
    // clients that do not pick one themselves (Redis over TLS). Already set is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = ServerConf {
        threads,
        // Our lifecycle service exits as soon as in-flight requests are done; this is only the
        // backstop Pingora applies after SIGTERM.
        grace_period_seconds: Some(config.grace_period.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // First: the public listener's cap below depends on the limit in force.
    let soft_limit = connections::raise_descriptor_limit();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let listen = config.listen.map(|a| a.to_string());
    let tls_listen = config.tls.as_ref().map(|t| t.addr.to_string());
    let admin = config.admin.addr.to_string();
    let header_timeout = config.header_timeout;
    // The audit and access logs: one writer per distinct sink (both on stdout share one, so
    // their lines never interleave mid-line).
    let (audit_lines, audit_writer) = lines::channel(
        config.audit.clone(),
        config.audit_queue,
        &metrics::METRICS.audit_dropped,
    );
    let mut writers = vec![audit_writer];
    let access_lines = match &config.access_log {
        None => None,
        Some(sink) if *sink == config.audit => Some(audit_lines.clone()),
        Some(sink) => {
            let (l, w) = lines::channel(
                sink.clone(),
                config.audit_queue,
                &metrics::METRICS.access_log_dropped,
            );
            writers.push(w);
            Some(l)
        }
    };
    let logs = state::Logs {
        auditor: audit::Auditor::new(audit_lines),
        access: access::AccessLog::new(access_lines),
    };
    let shared = Arc::new(state::Shared::new(config, logs)?);

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        proxy::Proxy {
            shared: shared.clone(),
        },
    );
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // Telling h2c from HTTP/1 waits for the client's first bytes: bounded, so a silent
    // connection gets a 408 instead of holding its socket forever (vendor patch).
    opts.h2c_preface_timeout = Some(header_timeout);
    app.server_options = Some(opts);
    let max = shared.clone();
    let limiter = Arc::new(connections::Limiter::new(
        move || max.snapshot().config.max_connections,
        soft_limit,
    ));
    // The proxy behind the connection cap (as `http_proxy_service_with_name` builds it, with
    // one more layer).
    let mut proxy = Service::new(
        "sessiongate proxy".to_string(),
        connections::Limited::new(app, limiter),
    );
    // A write buffer that holds a response head and a typical compressed page, so that head and
    // body leave in one send instead of two (Pingora's default is one MSS, 1460 bytes).
    let buffers = L4BufferSettings::default().write(DOWNSTREAM_WRITE_BUFFER);
    if let Some(addr) = &listen {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    if let Some(addr) = &tls_listen {
        let settings = tls::listener_settings(shared.certs.clone())
            .map_err(|e| BuildError::Tls(e.to_string()))?;
        proxy.add_listener(
            ListenerConfig::tcp(addr.as_str())
                .tls(settings)
                .l4_buffer(buffers),
        );
    }

    let mut admin_service = Service::new(
        "sessiongate admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(endpoints::AdminApp {
            shared: shared.clone(),
        }),
    );
    admin_service.add_tcp(&admin);
    admin_service.threads = Some(1);

    let lifecycle = pingora::services::background::background_service(
        "sessiongate lifecycle",
        lifecycle::Lifecycle::new(shared, writers, source),
    );
    server.add_service(proxy);
    server.add_service(admin_service);
    server.add_service(lifecycle);
    Ok(server)
}

/// Runs until SIGTERM or SIGINT (both graceful).
pub fn run(config: Config, source: Option<ConfigSource>) -> Result<(), BuildError> {
    let server = build(config, source)?;
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals),
    });
    Ok(())
}
