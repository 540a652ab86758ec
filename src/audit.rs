//! Audit events (JSON lines) and their sinks. Writing never blocks or fails a request: events
//! go into a bounded queue; a full queue drops and counts.

use crate::config::AuditSink;
use crate::metrics::METRICS;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// At most this many events per POST to an http sink.
const BATCH: usize = 500;
/// How long the shutdown flush may try to deliver what is left.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub ts: String,
    pub event: &'static str,
    pub site: String,
    pub sid: Option<String>,
    pub admin_id: Option<String>,
    pub admin_email: Option<String>,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_duration_s: Option<u64>,
}

impl AuditEvent {
    pub fn new(event: &'static str, site: &str) -> AuditEvent {
        AuditEvent {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            site: site.to_string(),
            ..AuditEvent::default()
        }
    }
}

impl AuditEvent {
    /// An event about a verified identity: who, on whose behalf, which impersonation.
    pub fn about(event: &'static str, site: &str, id: &crate::token::Identity) -> AuditEvent {
        let mut ev = AuditEvent::new(event, site);
        ev.user_id = Some(id.user_id.clone());
        ev.tenant_id = id.tenant_id.clone();
        if let Some(imp) = &id.impersonation {
            ev.sid = Some(imp.sid.clone());
            ev.admin_id = imp.admin_id.clone();
            ev.admin_email = imp.admin_email.clone();
        }
        ev
    }
}

/// The sending half, cheap to clone into every request.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
}

/// The receiving half, driven by `AuditWriter::run` on a background task.
pub struct AuditWriter {
    sink: AuditSink,
    rx: Mutex<Option<mpsc::Receiver<AuditEvent>>>,
}

pub fn channel(sink: AuditSink, queue: usize) -> (Auditor, AuditWriter) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    (
        Auditor { tx },
        AuditWriter {
            sink,
            rx: Mutex::new(Some(rx)),
        },
    )
}

impl Auditor {
    pub fn emit(&self, event: AuditEvent) {
        METRICS.audit_events.with_label_values(&[event.event]).inc();
        if self.tx.try_send(event).is_err() {
            METRICS.audit_dropped.inc();
        }
    }
}

enum Out {
    Stdout(tokio::io::Stdout),
    File(tokio::fs::File),
}

impl AuditWriter {
    async fn open(&self, path: Option<&std::path::Path>) -> std::io::Result<Out> {
        match path {
            None => Ok(Out::Stdout(tokio::io::stdout())),
            Some(path) => tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map(Out::File),
        }
    }

    /// Writes events until `stop` fires; then flushes what is queued.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let Some(rx) = self.rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        match &self.sink {
            AuditSink::Http(url) => run_http(url, rx, stop).await,
            AuditSink::Stdout => self.run_local(None, rx, stop).await,
            AuditSink::File(path) => self.run_local(Some(path), rx, stop).await,
        }
    }

    async fn run_local(
        &self,
        path: Option<&std::path::Path>,
        mut rx: mpsc::Receiver<AuditEvent>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut out = match self.open(path).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the audit sink; audit events are dropped");
                return;
            }
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            let first = tokio::select! {
                ev = rx.recv() => ev,
                _ = stop.changed() => None,
            };
            let Some(first) = first else { break };
            buf.clear();
            push_line(&mut buf, &first);
            while buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(ev) => push_line(&mut buf, &ev),
                    Err(_) => break,
                }
            }
            write(&mut out, &buf).await;
        }
        // Shutdown: drain what was queued before the stop.
        buf.clear();
        while let Ok(ev) = rx.try_recv() {
            push_line(&mut buf, &ev);
        }
        if !buf.is_empty() {
            write(&mut out, &buf).await;
        }
    }
}

/// Batches POSTs of JSON lines. A failed batch is retried with backoff (100 ms doubling to
/// 2 s) and kept in order; meanwhile new events wait in the bounded queue, and what does not
/// fit is dropped and counted. On shutdown the rest is tried until a deadline, then counted.
async fn run_http(
    url: &str,
    mut rx: mpsc::Receiver<AuditEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let mut stopping = false;
    let mut deadline: Option<Instant> = None;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        if stopping {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                _ = stop.changed() => {
                    stopping = true;
                    deadline = Some(Instant::now() + FLUSH_DEADLINE);
                    continue;
                }
            }
        }
        let mut body = Vec::with_capacity(batch.len() * 256);
        for ev in &batch {
            push_line(&mut body, ev);
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let sent = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    "audit sink refused a batch; retrying"
                ),
                Err(e) => tracing::warn!(error = %e, "audit sink unreachable; retrying"),
            }
            if let Some(d) = deadline
                && Instant::now() + backoff > d
            {
                let lost = batch.len() as u64 + rx.len() as u64;
                METRICS.audit_dropped.inc_by(lost);
                tracing::error!(lost, "audit sink still down at shutdown; events dropped");
                return;
            }
            if !stopping {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => {
                        stopping = true;
                        deadline = Some(Instant::now() + FLUSH_DEADLINE);
                    }
                }
            } else {
                tokio::time::sleep(backoff).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn push_line(buf: &mut Vec<u8>, ev: &AuditEvent) {
    if serde_json::to_writer(&mut *buf, ev).is_ok() {
        buf.push(b'\n');
    }
}

async fn write(out: &mut Out, buf: &[u8]) {
    let res = match out {
        Out::Stdout(s) => match s.write_all(buf).await {
            Ok(()) => s.flush().await,
            Err(e) => Err(e),
        },
        Out::File(f) => match f.write_all(buf).await {
            Ok(()) => f.flush().await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = res {
        let lost = buf.iter().filter(|b| **b == b'\n').count() as u64;
        METRICS.audit_dropped.inc_by(lost);
        tracing::error!(error = %e, lost, "audit write failed");
    }
}
