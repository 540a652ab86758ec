//! Audit events (JSON lines) and their sinks. Writing never blocks or fails a request: events
//! go into a bounded queue; a full queue drops and counts.

use crate::config::AuditSink;
use crate::metrics::METRICS;
use serde::Serialize;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 16 * 1024;

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
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
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

pub fn channel(sink: AuditSink) -> (Auditor, AuditWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
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
    async fn open(&self) -> std::io::Result<Out> {
        match &self.sink {
            AuditSink::Stdout | AuditSink::Http(_) => Ok(Out::Stdout(tokio::io::stdout())),
            AuditSink::File(path) => tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map(Out::File),
        }
    }

    /// Writes events until every `Auditor` is gone or `stop` fires; then drains what is queued.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let mut out = match self.open().await {
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
