//! The servers that stand where the app would: a recording HTTP/1.1 upstream answering from
//! a handler, and a scripted one that writes its responses itself (chunked, streaming,
//! compressing as it goes).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{Conn, Headers, canonical_name, lossy_values};

/// One request as a server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// In arrival order, names exactly as received.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The client asked for the connection to end after this request.
    pub close: bool,
}

impl Headers for Recorded {
    fn header_all(&self, name: &str) -> Vec<String> {
        lossy_values(&self.headers, name)
    }
}

impl Recorded {
    /// Headers whose name, lower-cased with `_` read as `-`, starts with `prefix`.
    pub fn headers_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let prefix = canonical_name(prefix);
        self.headers
            .iter()
            .filter(|(n, _)| canonical_name(n).starts_with(&prefix))
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// The identity family (`X-Auth-*`), names lower-cased, sorted.
    pub fn identity(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .headers_with_prefix("x-auth-")
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        v.sort();
        v
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Every `Cookie` header, as bytes.
    pub fn cookies(&self) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// What the upstream answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited after the request is counted and before the answer is written.
    pub delay: Duration,
    /// Close the connection instead of answering (after `delay`).
    pub hang_up: bool,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
            delay: Duration::ZERO,
            hang_up: false,
        }
    }
}

impl Reply {
    /// A reply with exactly one `Content-Type`.
    pub fn typed(content_type: &str, body: &[u8]) -> Reply {
        Reply {
            headers: vec![("Content-Type".into(), content_type.into())],
            ..Reply::default()
        }
        .body(body)
    }

    pub fn html(body: &[u8]) -> Reply {
        Reply::typed("text/html; charset=utf-8", body)
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Every request a server received, and how many (counted before the reply is sent).
#[derive(Clone, Default)]
pub struct Recorder {
    requests: Arc<Mutex<Vec<Recorded>>>,
    count: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    /// How many connections the server has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }

    fn push(&self, rec: Recorded) {
        self.requests.lock().expect("requests lock").push(rec);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_for_count(&self, n: usize, who: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{who} got {} requests, waited for {n}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves `listener` with `handler`, recording into `recorder`. Connections live in the
/// task: aborting it closes them all.
pub fn serve(
    listener: TcpListener,
    handler: Handler,
    recorder: Recorder,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    if let Ok((stream, _)) = acc {
                        recorder.connections.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(serve_connection(stream, handler.clone(), recorder.clone()));
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

async fn serve_connection(stream: TcpStream, handler: Handler, recorder: Recorder) {
    let mut conn = Conn::new(stream);
    loop {
        let rec = match conn.request().await {
            Ok(Some(rec)) => rec,
            Ok(None) => return,
            Err(e) => {
                let msg = format!("bad request: {e}");
                let _ = conn
                    .stream
                    .write_all(
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                            msg.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
        };
        let reply = handler(&rec);
        let is_head = rec.method.eq_ignore_ascii_case("HEAD");
        let close = rec.close;
        recorder.push(rec);

        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if reply.hang_up {
            let _ = conn.stream.shutdown().await;
            return;
        }
        let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !reply
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !is_head {
            bytes.extend_from_slice(&reply.body);
        }
        if conn.stream.write_all(&bytes).await.is_err() || close {
            let _ = conn.stream.shutdown().await;
            return;
        }
    }
}

/// An HTTP/1.1 server on 127.0.0.1:0 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    recorder: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// How many requests have arrived (counted before the reply is sent).
    pub fn count(&self) -> usize {
        self.recorder.count()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorder.requests()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    /// The only request whose target is exactly `target`.
    pub fn find(&self, target: &str) -> Recorded {
        let all = self.requests();
        let hits: Vec<&Recorded> = all.iter().filter(|r| r.target == target).collect();
        match hits.as_slice() {
            [one] => (*one).clone(),
            [] => panic!(
                "upstream never received {target}; it received {:?}",
                all.iter().map(|r| &r.target).collect::<Vec<_>>()
            ),
            _ => panic!("upstream received {target} {} times", hits.len()),
        }
    }

    /// How many connections have been accepted (the proxy's pool reuses them).
    pub fn connections(&self) -> usize {
        self.recorder.connections()
    }

    /// Whether any request with this exact target arrived.
    pub fn received(&self, target: &str) -> bool {
        self.requests().iter().any(|r| r.target == target)
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_for_count(&self, n: usize) {
        self.recorder.wait_for_count(n, "upstream").await;
    }
}

/// Answers `200 ok` (text/plain) to everything.
pub async fn spawn_upstream() -> Upstream {
    spawn_upstream_with(|_| Reply::default()).await
}

pub async fn spawn_upstream_with<F>(handler: F) -> Upstream
where
    F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let recorder = Recorder::default();
    let task = serve(listener, Arc::new(handler), recorder.clone());
    Upstream {
        addr,
        recorder,
        task,
    }
}

/// An upstream answering from a fixed table of paths (404 otherwise).
pub async fn routed_upstream(routes: Vec<(&str, Reply)>) -> Upstream {
    let map: HashMap<String, Reply> = routes
        .into_iter()
        .map(|(p, r)| (p.to_string(), r))
        .collect();
    spawn_upstream_with(move |rec| {
        map.get(rec.path())
            .cloned()
            .unwrap_or_else(|| Reply::default().status(404).body(b"no such route"))
    })
    .await
}

// ---------------------------------------------------------------------------
// A scripted upstream: chunked and streaming responses
// ---------------------------------------------------------------------------

/// The head of a chunked HTML response that ends the connection (the blank line is the
/// caller's, after any more headers).
pub const CHUNKED_HTML_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                                     Transfer-Encoding: chunked\r\nConnection: close\r\n";

/// A scripted upstream: every connection's request head and stream go to `serve`, which
/// writes the whole response itself. Stops with the returned task.
pub async fn spawn_stream_upstream<F, Fut>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Recorded, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stream upstream");
    let addr = listener.local_addr().expect("addr");
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(stream);
                if let Ok(Some(head)) = conn.request_head().await {
                    serve(head, conn.stream).await;
                }
            });
        }
    });
    (addr, task)
}

/// Writes one chunk of a chunked body and flushes it (an empty `data` writes nothing: that
/// would end the body).
pub async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await?;
    stream.flush().await
}
