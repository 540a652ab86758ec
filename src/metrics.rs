//! Prometheus metrics, all named `sessiongate_*`, in one registry that outlives config reloads.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub token_rejected: IntCounterVec,
    pub cookie_conflicts: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub audit_events: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub config_reloads: IntCounterVec,
    pub liveness_lookups: IntCounterVec,
    pub liveness_cache: IntCounterVec,
    pub liveness_coalesced: IntCounter,
    pub liveness_stale_served: IntCounter,
    pub liveness_backend_errors: IntCounterVec,
    pub liveness_backend_seconds: Histogram,
    pub liveness_ended_entries: IntGauge,
    pub liveness_ended_evicted: IntCounter,
    pub banners_spliced: IntCounter,
    pub banner_skipped: IntCounterVec,
    pub redis_connected: IntGauge,
    pub tls_certificate_expiry: IntGaugeVec,
    pub redis_disconnects: IntCounter,
    pub redis_revocations_published: IntCounter,
    pub redis_revocations_received: IntCounter,
    pub redis_messages_ignored: IntCounter,
    pub open_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub revocations: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub trace_spans_dropped: IntCounter,
    pub revocations_evicted: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    // Registration only fails for duplicate names, which this one registry never has.
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ]))
    .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    let _ = registry.register(Box::new(h.clone()));
    h
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sessiongate_request_duration_seconds",
                "Time from request start to the end of the response, by site",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["site"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let _ = registry.register(Box::new(request_duration.clone()));
        Metrics {
            requests: counter_vec(
                &registry,
                "sessiongate_requests_total",
                "Requests on the public listener by site and outcome",
                &["site", "outcome"],
            ),
            request_duration,
            token_rejected: counter_vec(
                &registry,
                "sessiongate_token_rejected_total",
                "Session cookies that gave no session, by reason",
                &["reason"],
            ),
            cookie_conflicts: counter(
                &registry,
                "sessiongate_cookie_conflicts_total",
                "Requests carrying several different session cookies (treated as no session)",
            ),
            upstream_errors: counter_vec(
                &registry,
                "sessiongate_upstream_errors_total",
                "Upstream connect or read failures, by site",
                &["site"],
            ),
            audit_events: counter_vec(
                &registry,
                "sessiongate_audit_events_total",
                "Audit events queued, by event",
                &["event"],
            ),
            audit_dropped: counter(
                &registry,
                "sessiongate_audit_dropped_total",
                "Audit events dropped because the sink queue was full or the sink failed",
            ),
            config_reloads: counter_vec(
                &registry,
                "sessiongate_config_reload_total",
                "Config reloads (SIGHUP) by result",
                &["result"],
            ),
            liveness_lookups: counter_vec(
                &registry,
                "sessiongate_liveness_lookups_total",
                "Impersonation liveness answers by result (live, ended, error)",
                &["result"],
            ),
            liveness_cache: counter_vec(
                &registry,
                "sessiongate_liveness_cache_total",
                "Liveness cache lookups by result (hit, miss)",
                &["result"],
            ),
            liveness_coalesced: counter(
                &registry,
                "sessiongate_liveness_coalesced_total",
                "Lookups that waited on another request's backend call for the same sid",
            ),
            liveness_stale_served: counter(
                &registry,
                "sessiongate_liveness_stale_served_total",
                "Backend failures answered with the last live answer (on_error = stale)",
            ),
            liveness_backend_errors: counter_vec(
                &registry,
                "sessiongate_liveness_backend_errors_total",
                "Liveness backend failures by kind",
                &["kind"],
            ),
            liveness_backend_seconds: histogram(
                &registry,
                "sessiongate_liveness_backend_seconds",
                "Liveness backend call latency",
            ),
            liveness_ended_entries: gauge(
                &registry,
                "sessiongate_liveness_ended_sessions",
                "Impersonation sids this replica holds as ended (bounded; approximate)",
            ),
            liveness_ended_evicted: counter(
                &registry,
                "sessiongate_liveness_ended_evicted_total",
                "Ended sids pushed out of memory by the size bound before their tokens expired",
            ),
            banners_spliced: counter(
                &registry,
                "sessiongate_banners_spliced_total",
                "Impersonated HTML pages that got the banner",
            ),
            banner_skipped: counter_vec(
                &registry,
                "sessiongate_banner_skipped_total",
                "Impersonated responses without a banner, by reason",
                &["reason"],
            ),
            tls_certificate_expiry: gauge_vec(
                &registry,
                "sessiongate_tls_certificate_expiry_seconds",
                "When each certificate of the TLS listener expires (Unix seconds), by its first name",
                &["name"],
            ),
            redis_connected: gauge(
                &registry,
                "sessiongate_redis_connected",
                "1 while the Redis revocation fan-out is connected",
            ),
            redis_disconnects: counter(
                &registry,
                "sessiongate_redis_disconnects_total",
                "Times the Redis revocation fan-out was lost",
            ),
            redis_revocations_published: counter(
                &registry,
                "sessiongate_redis_revocations_published_total",
                "Local ends published to the other replicas",
            ),
            redis_revocations_received: counter(
                &registry,
                "sessiongate_redis_revocations_received_total",
                "Ends received from other replicas or the backend",
            ),
            redis_messages_ignored: counter(
                &registry,
                "sessiongate_redis_messages_ignored_total",
                "Messages on the revocation channel this version does not understand",
            ),
            open_connections: gauge(
                &registry,
                "sessiongate_open_connections",
                "Client connections open on the public listener",
            ),
            connections_refused: counter(
                &registry,
                "sessiongate_connections_refused_total",
                "Client connections closed on arrival because the public listener was full",
            ),
            revocations: gauge_vec(
                &registry,
                "sessiongate_revocations",
                "Session revocations this replica remembers, by kind (jti, sid, sub)",
                &["kind"],
            ),
            access_log_dropped: counter(
                &registry,
                "sessiongate_access_log_dropped_total",
                "Access log lines dropped because the sink queue was full or the sink failed",
            ),
            trace_spans_dropped: counter(
                &registry,
                "sessiongate_trace_spans_dropped_total",
                "Trace spans dropped because the export queue was full or the collector failed",
            ),
            revocations_evicted: counter(
                &registry,
                "sessiongate_revocations_evicted_total",
                "Revocations pushed out of memory by the size bound before their retention ended",
            ),
            registry,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
