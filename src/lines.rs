//! JSON lines to a sink, off the request path: the audit log and the access log both write
//! through this. A request serializes its line and pushes it into a bounded queue (a lock and a
//! push; a full queue drops and the caller counts it); one writer task per sink batches what
//! is queued into one write (a file or stdout) or one POST (an http sink, retried with backoff).
//! A file sink is reopened on SIGHUP and when it is moved or removed (logrotate), so rotation
//! needs no `copytruncate`.

use crate::config::AuditSink as Sink;
use crate::sync::lock;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// At most this many lines per POST to an http sink.
const BATCH: usize = 500;
/// At most this many lines per write to a file or stdout.
const LOCAL_BATCH: usize = 4096;
/// How long the writer gathers lines after the first one of a batch.
pub const LINGER: Duration = Duration::from_millis(2);
/// How long the shutdown flush may try to deliver what is left.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// How often a file sink checks that its path still names the open file.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

type Line = Vec<u8>;

/// The bounded queue between requests and the writer. A request only takes a lock and pushes;
/// it wakes the writer when the queue turns non-empty or reaches half its bound, so under load
/// one wake-up (and one write) carries a batch of events instead of one each.
struct Queue {
    lines: Mutex<VecDeque<Line>>,
    cap: usize,
    wake: Notify,
}

impl Queue {
    fn take(&self, max: usize) -> VecDeque<Line> {
        let mut q = lock(&self.lines);
        if q.len() <= max {
            std::mem::take(&mut *q)
        } else {
            q.drain(..max).collect()
        }
    }

    fn len(&self) -> usize {
        lock(&self.lines).len()
    }
}

/// The sending half, cheap to clone into every request.
#[derive(Clone)]
pub struct Lines {
    queue: Arc<Queue>,
}

/// The receiving half, driven by [`LineWriter::run`] on a background task.
pub struct LineWriter {
    sink: Sink,
    queue: Arc<Queue>,
    running: AtomicBool,
    /// Where lines lost by the writer (a failed write, an http sink still down at shutdown)
    /// are counted.
    dropped: &'static IntCounter,
    /// Reopen a file sink (SIGHUP).
    reopen: Notify,
}

/// A queue of at most `cap` lines for `sink`; `dropped` counts what the writer loses.
pub fn channel(sink: Sink, cap: usize, dropped: &'static IntCounter) -> (Lines, LineWriter) {
    let queue = Arc::new(Queue {
        lines: Mutex::new(VecDeque::new()),
        cap: cap.max(1),
        wake: Notify::new(),
    });
    (
        Lines {
            queue: queue.clone(),
        },
        LineWriter {
            sink,
            queue,
            running: AtomicBool::new(false),
            dropped,
            reopen: Notify::new(),
        },
    )
}

impl Lines {
    /// Queues one line (without its newline). `false`: the queue was full and the line is lost
    /// (the caller counts it).
    pub fn push(&self, line: Line) -> bool {
        let q = &self.queue;
        let len = {
            let mut lines = lock(&q.lines);
            if lines.len() >= q.cap {
                return false;
            }
            lines.push_back(line);
            lines.len()
        };
        if len == 1 || len == q.cap.div_ceil(2) {
            q.wake.notify_one();
        }
        true
    }

    /// Serializes `item` as one JSON line and queues it.
    pub fn push_json(&self, item: &impl serde::Serialize) -> bool {
        match serde_json::to_vec(item) {
            Ok(line) => self.push(line),
            Err(_) => false,
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

/// The identity of an open file, to notice that its path now names another one (rotation).
#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

async fn open(path: Option<&std::path::Path>) -> std::io::Result<Out> {
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

/// Has the file behind `path` been moved or removed since `out` was opened?
async fn rotated(out: &Out, path: &std::path::Path) -> bool {
    let Out::File(f) = out else { return false };
    let (Ok(open), on_disk) = (f.metadata().await, tokio::fs::metadata(path).await) else {
        return false;
    };
    match on_disk {
        Ok(now) => file_id(&open) != file_id(&now),
        Err(_) => true,
    }
}

impl LineWriter {
    /// Reopens a file sink before its next write (SIGHUP).
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }

    /// Writes lines until `stop` fires; then flushes what is queued.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        match &self.sink {
            Sink::Http(url) => run_http(url, &self.queue, self.dropped, stop).await,
            Sink::Stdout => self.run_local(None, stop).await,
            Sink::File(path) => self.run_local(Some(path), stop).await,
        }
    }

    async fn run_local(
        &self,
        path: Option<&std::path::Path>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut out = match open(path).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, sink = ?self.sink, "cannot open a log sink; its lines are dropped");
                return;
            }
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut checked = Instant::now();
        loop {
            let running = tokio::select! {
                running = next_batch(&self.queue, &mut stop) => running,
                () = self.reopen.notified() => {
                    checked = Instant::now() - ROTATION_CHECK;
                    true
                }
            };
            if let Some(path) = path
                && checked.elapsed() >= ROTATION_CHECK
            {
                checked = Instant::now();
                if rotated(&out, path).await || !running {
                    match open(Some(path)).await {
                        Ok(o) => out = o,
                        Err(e) => {
                            tracing::error!(error = %e, path = %path.display(), "cannot reopen a log file; writing to the old one")
                        }
                    }
                }
            }
            // After a stop this drains what was queued before it.
            loop {
                let batch = self.queue.take(LOCAL_BATCH);
                if batch.is_empty() {
                    break;
                }
                buf.clear();
                for line in &batch {
                    buf.extend_from_slice(line);
                    buf.push(b'\n');
                }
                write(&mut out, &buf, self.dropped).await;
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
async fn run_http(
    url: &str,
    queue: &Queue,
    dropped: &IntCounter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
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
        for line in &batch {
            body.extend_from_slice(line);
            body.push(b'\n');
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
                    "log sink refused a batch; retrying"
                ),
                Err(e) => tracing::warn!(error = %e, "log sink unreachable; retrying"),
            }
            if let Some(d) = deadline
                && Instant::now() + backoff > d
            {
                let lost = batch.len() as u64 + queue.len() as u64;
                dropped.inc_by(lost);
                tracing::error!(lost, url, "log sink still down at shutdown; lines dropped");
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

async fn write(out: &mut Out, buf: &[u8], dropped: &IntCounter) {
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
        dropped.inc_by(lost);
        tracing::error!(error = %e, lost, "log write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static DROPPED: LazyLock<IntCounter> =
        LazyLock::new(|| IntCounter::new("t_dropped", "test").expect("counter"));

    fn line(n: usize) -> Line {
        format!("{{\"n\":{n}}}").into_bytes()
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        let (lines, writer) = channel(Sink::Stdout, 3, &DROPPED);
        let accepted: Vec<bool> = (0..5).map(|n| lines.push(line(n))).collect();
        assert_eq!(accepted, [true, true, true, false, false]);
        let kept: Vec<_> = writer.queue.take(10).into_iter().collect();
        assert_eq!(kept, (0..3).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn take_hands_out_at_most_max_in_order() {
        let (lines, writer) = channel(Sink::Stdout, 100, &DROPPED);
        for n in 0..7 {
            lines.push(line(n));
        }
        let first: Vec<_> = writer.queue.take(5).into_iter().collect();
        assert_eq!(first.len(), 5);
        assert_eq!(first[4], line(4));
        assert_eq!(writer.queue.take(5).len(), 2);
        assert!(writer.queue.take(5).is_empty());
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "sessiongate-lines-{name}-{}-{:?}.jsonl",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn numbers(text: &str) -> Vec<u64> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                v["n"].as_u64().unwrap_or(u64::MAX)
            })
            .collect()
    }

    #[tokio::test]
    async fn the_file_writer_batches_and_drains_everything_on_stop() {
        let path = temp("drain");
        let (lines, writer) = channel(Sink::File(path.clone()), 10_000, &DROPPED);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { writer.run(stop_rx).await });
        for n in 0..1000 {
            lines.push(line(n));
        }
        // Lines written while the writer runs, then more right before the stop: all of them
        // reach the file, in order.
        tokio::time::sleep(LINGER * 3).await;
        for n in 1000..1500 {
            lines.push(line(n));
        }
        stop_tx.send(true).ok();
        task.await.ok();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert_eq!(numbers(&text), (0..1500).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_moved_file_is_reopened_at_its_path() {
        let path = temp("rotate");
        let moved = path.with_extension("1");
        let (lines, writer) = channel(Sink::File(path.clone()), 100, &DROPPED);
        let writer = Arc::new(writer);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let w = writer.clone();
        let task = tokio::spawn(async move { w.run(stop_rx).await });
        lines.push(line(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the first line was never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::rename(&path, &moved).expect("rotate");
        // As logrotate does, then SIGHUP (or just wait for the periodic check).
        writer.reopen();
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines.push(line(2));
        stop_tx.send(true).ok();
        task.await.ok();
        let old = std::fs::read_to_string(&moved).unwrap_or_default();
        let new = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = (std::fs::remove_file(&path), std::fs::remove_file(&moved));
        assert_eq!(numbers(&old), [1]);
        assert_eq!(numbers(&new), [2]);
    }
}
