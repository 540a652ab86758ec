//! Audit events (JSON lines) and their sinks. Writing never blocks or fails a request: events
//! go into a bounded queue; a full queue drops and counts.

use crate::config::AuditSink;
use crate::metrics::METRICS;
use crate::sync::lock;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// At most this many events per POST to an http sink.
const BATCH: usize = 500;
/// At most this many events per write to a file or stdout.
const LOCAL_BATCH: usize = 4096;
/// How long the writer gathers events after the first one of a batch.
const LINGER: Duration = Duration::from_millis(2);
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
    /// `session.revoked`: what was revoked (`jti`, `sid`, `sub`) and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `session.revoked` of a `sub`: tokens issued before this Unix time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
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

/// The bounded queue between requests and the writer. A request only takes a lock and pushes;
/// it wakes the writer when the queue turns non-empty or reaches half its bound, so under load
/// one wake-up (and one write) carries a batch of events instead of one each.
struct Queue {
    events: Mutex<VecDeque<AuditEvent>>,
    cap: usize,
    wake: Notify,
}

impl Queue {
    fn take(&self, max: usize) -> VecDeque<AuditEvent> {
        let mut q = lock(&self.events);
        if q.len() <= max {
            std::mem::take(&mut *q)
        } else {
            q.drain(..max).collect()
        }
    }

    fn len(&self) -> usize {
        lock(&self.events).len()
    }
}

/// The sending half, cheap to clone into every request.
#[derive(Clone)]
pub struct Auditor {
    queue: Arc<Queue>,
}

/// The receiving half, driven by `AuditWriter::run` on a background task.
pub struct AuditWriter {
    sink: AuditSink,
    queue: Arc<Queue>,
    running: AtomicBool,
}

pub fn channel(sink: AuditSink, queue: usize) -> (Auditor, AuditWriter) {
    let queue = Arc::new(Queue {
        events: Mutex::new(VecDeque::new()),
        cap: queue.max(1),
        wake: Notify::new(),
    });
    (
        Auditor {
            queue: queue.clone(),
        },
        AuditWriter {
            sink,
            queue,
            running: AtomicBool::new(false),
        },
    )
}

impl Auditor {
    pub fn emit(&self, event: AuditEvent) {
        METRICS.audit_events.with_label_values(&[event.event]).inc();
        let q = &self.queue;
        let len = {
            let mut events = lock(&q.events);
            if events.len() >= q.cap {
                drop(events);
                METRICS.audit_dropped.inc();
                return;
            }
            events.push_back(event);
            events.len()
        };
        if len == 1 || len == q.cap.div_ceil(2) {
            q.wake.notify_one();
        }
    }
}

/// Waits until the queue has something to write or `stop` fires; then lingers up to `LINGER`
/// (cut short by a half-full queue or `stop`) so that the events of that window go out together.
/// Returns false once `stop` has fired.
async fn next_batch(queue: &Queue, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = queue.wake.notified() => {},
        _ = stop.changed() => return false,
    }
    tokio::select! {
        _ = tokio::time::sleep(LINGER) => true,
        _ = queue.wake.notified() => true,
        _ = stop.changed() => false,
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
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        match &self.sink {
            AuditSink::Http(url) => run_http(url, &self.queue, stop).await,
            AuditSink::Stdout => self.run_local(None, stop).await,
            AuditSink::File(path) => self.run_local(Some(path), stop).await,
        }
    }

    async fn run_local(
        &self,
        path: Option<&std::path::Path>,
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
            let running = next_batch(&self.queue, &mut stop).await;
            // After a stop this drains what was queued before it.
            loop {
                let batch = self.queue.take(LOCAL_BATCH);
                if batch.is_empty() {
                    break;
                }
                buf.clear();
                for ev in &batch {
                    push_line(&mut buf, ev);
                }
                write(&mut out, &buf).await;
            }
            if !running {
                return;
            }
        }
    }
}

/// Batches POSTs of JSON lines. A failed batch is retried with backoff (100 ms doubling to
/// 2 s) and kept in order; meanwhile new events wait in the bounded queue, and what does not
/// fit is dropped and counted. On shutdown the rest is tried until a deadline, then counted.
async fn run_http(url: &str, queue: &Queue, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let mut stopping = false;
    let mut deadline: Option<Instant> = None;
    loop {
        let mut batch = queue.take(BATCH);
        if batch.is_empty() {
            if stopping {
                return;
            }
            if !next_batch(queue, &mut stop).await {
                stopping = true;
                deadline = Some(Instant::now() + FLUSH_DEADLINE);
            }
            batch = queue.take(BATCH);
            if batch.is_empty() {
                continue;
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
                let lost = batch.len() as u64 + queue.len() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> AuditEvent {
        let mut ev = AuditEvent::new("impersonation.request", "cafe.test");
        ev.path = Some(format!("/p/{n}"));
        ev
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let (auditor, writer) = channel(AuditSink::Stdout, 3);
        let dropped = METRICS.audit_dropped.get();
        for n in 0..5 {
            auditor.emit(event(n));
        }
        assert_eq!(writer.queue.len(), 3);
        assert!(METRICS.audit_dropped.get() >= dropped + 2);
        let kept: Vec<_> = writer.queue.take(10).into_iter().map(|e| e.path).collect();
        assert_eq!(kept, [0, 1, 2].map(|n| Some(format!("/p/{n}"))));
    }

    #[test]
    fn take_hands_out_at_most_max_in_order() {
        let (auditor, writer) = channel(AuditSink::Stdout, 100);
        for n in 0..7 {
            auditor.emit(event(n));
        }
        let first: Vec<_> = writer.queue.take(5).into_iter().map(|e| e.path).collect();
        assert_eq!(first.len(), 5);
        assert_eq!(first[4].as_deref(), Some("/p/4"));
        assert_eq!(writer.queue.take(5).len(), 2);
        assert!(writer.queue.take(5).is_empty());
    }

    #[tokio::test]
    async fn the_file_writer_batches_and_drains_everything_on_stop() {
        let path = std::env::temp_dir().join(format!(
            "sessiongate-audit-{}-{:?}.jsonl",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let (auditor, writer) = channel(AuditSink::File(path.clone()), 10_000);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { writer.run(stop_rx).await });
        for n in 0..1000 {
            auditor.emit(event(n));
        }
        // Events written while the writer runs, then more right before the stop: all of them
        // reach the file, in order.
        tokio::time::sleep(LINGER * 3).await;
        for n in 1000..1500 {
            auditor.emit(event(n));
        }
        stop_tx.send(true).ok();
        task.await.ok();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let paths: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                v["path"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(paths.len(), 1500);
        assert!(
            paths
                .iter()
                .enumerate()
                .all(|(n, p)| *p == format!("/p/{n}"))
        );
    }
}
