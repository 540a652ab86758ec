//! The platform side: the liveness backend (answers per impersonation session, and the
//! `end_url`) and an HTTP audit receiver that can refuse or go away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;

use super::{Handler, Recorded, Recorder, Reply, is_listening, pct_decode, serve};

/// What the test backend answers to one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Waited after the request is counted and before the answer is written.
    pub delay: Duration,
    /// Close the connection instead of answering (after `delay`).
    pub close: bool,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
            close: false,
        }
    }

    /// `200 {"active": true}`.
    pub fn live() -> Answer {
        Answer::new(200, r#"{"active":true}"#)
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Drops the connection without a response.
    pub fn broken() -> Answer {
        Answer {
            close: true,
            ..Answer::new(0, "")
        }
    }

    fn reply(&self) -> Reply {
        Reply {
            delay: self.delay,
            hang_up: self.close,
            ..Reply::typed("application/json", self.body.as_bytes()).status(self.status)
        }
    }
}

#[derive(Debug)]
struct BackendState {
    default: Answer,
    per_sid: HashMap<String, Answer>,
}

/// The platform backend: an HTTP/1.1 server on 127.0.0.1:0 that records every
/// request and answers what the test set, per sid or by default. The `end_url` is
/// `/tenant/auth/end-impersonation`: its "sid" is `end-impersonation`.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<Mutex<BackendState>>,
    recorder: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sid a liveness request names: the last path segment, percent-decoded.
pub fn sid_of_target(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    String::from_utf8_lossy(&pct_decode(last)).into_owned()
}

/// A backend that answers `200 {"active":true}` until told otherwise.
pub async fn spawn_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let state = Arc::new(Mutex::new(BackendState {
        default: Answer::live(),
        per_sid: HashMap::new(),
    }));
    let s = state.clone();
    let handler: Handler = Arc::new(move |rec: &Recorded| {
        let s = s.lock().expect("backend state lock");
        let sid = sid_of_target(&rec.target);
        s.per_sid.get(&sid).unwrap_or(&s.default).reply()
    });
    let recorder = Recorder::default();
    let task = serve(listener, handler, recorder.clone());
    Backend {
        addr,
        state,
        recorder,
        task,
    }
}

impl Backend {
    /// The `[liveness] url` that points at this backend.
    pub fn url(&self) -> String {
        format!("http://{}/internal/impersonations/{{sid}}", self.addr)
    }

    pub fn end_url(&self) -> String {
        format!("http://{}/tenant/auth/end-impersonation", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BackendState> {
        self.state.lock().expect("backend state lock")
    }

    /// The default answer's delay.
    pub fn set_delay(&self, delay: Duration) {
        self.state().default.delay = delay;
    }

    /// The answer for one sid (as the proxy names it, before encoding).
    pub fn set_for(&self, sid: &str, status: u16, body: &str) {
        self.set_answer_for(sid, Answer::new(status, body));
    }

    pub fn set_answer_for(&self, sid: &str, answer: Answer) {
        self.state().per_sid.insert(sid.to_string(), answer);
    }

    /// Every request so far (counted when it has arrived, before the answer).
    pub fn calls(&self) -> usize {
        self.recorder.count()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorder.requests()
    }

    /// Requests whose last path segment decodes to `sid`.
    pub fn requests_for(&self, sid: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| sid_of_target(&r.target) == sid)
            .collect()
    }

    pub fn calls_for(&self, sid: &str) -> usize {
        self.requests_for(sid).len()
    }

    /// The requests to `end_url`.
    pub fn end_calls(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == "/tenant/auth/end-impersonation")
            .collect()
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_for_calls(&self, n: usize) {
        self.recorder.wait_for_count(n, "backend").await;
    }
}

// ---------------------------------------------------------------------------
// HTTP audit receiver
// ---------------------------------------------------------------------------

#[derive(Default)]
struct AuditReceiverState {
    /// POSTs answered 2xx, in arrival order.
    accepted: Vec<Recorded>,
    refusing: bool,
}

/// An HTTP audit sink endpoint on a fixed loopback port: records what it
/// accepts, and can refuse (503) or go away entirely (listener and
/// connections closed) and come back on the same port.
pub struct AuditReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<AuditReceiverState>>,
    /// Every request, accepted or refused.
    attempts: Recorder,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for AuditReceiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().expect("receiver task lock").take() {
            t.abort();
        }
    }
}

pub async fn spawn_audit_receiver() -> AuditReceiver {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind audit receiver");
    let addr = listener.local_addr().expect("audit receiver addr");
    let r = AuditReceiver {
        addr,
        state: Arc::new(Mutex::new(AuditReceiverState::default())),
        attempts: Recorder::default(),
        task: Mutex::new(None),
    };
    r.serve(listener);
    r
}

impl AuditReceiver {
    /// The `[audit] sink` value.
    pub fn url(&self) -> String {
        format!("http://{}/audit", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let handler: Handler = Arc::new(move |rec: &Recorded| {
            let mut s = state.lock().expect("receiver state lock");
            if s.refusing {
                Reply::default().status(503).body(b"down")
            } else {
                s.accepted.push(rec.clone());
                Reply::default().status(200).body(b"")
            }
        });
        let task = serve(listener, handler, self.attempts.clone());
        *self.task.lock().expect("receiver task lock") = Some(task);
    }

    /// Answer `503` to every POST (true) or accept again (false).
    pub fn refuse(&self, refusing: bool) {
        self.state.lock().expect("receiver state lock").refusing = refusing;
    }

    /// Closes the listener and every open connection: the port refuses connections.
    pub async fn go_down(&self) {
        let task = self.task.lock().expect("receiver task lock").take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        assert!(
            !is_listening(self.addr).await,
            "audit receiver still listening after go_down"
        );
    }

    /// Listens on the same port again.
    pub async fn come_back(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot bind {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    /// Requests that reached the receiver, accepted or refused.
    pub fn attempts(&self) -> usize {
        self.attempts.count()
    }

    /// The POSTs that were accepted.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.state
            .lock()
            .expect("receiver state lock")
            .accepted
            .clone()
    }

    /// Every JSON line of every accepted POST, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.accepted()
            .iter()
            .flat_map(|r| {
                String::from_utf8_lossy(&r.body)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        serde_json::from_str::<Value>(l)
                            .unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l:?}"))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits (bounded by 30 s) until `pred` holds for the accepted events.
    pub async fn wait_for_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "audit receiver: waited 30 s for {what}; it has {} events: {:?}",
                events.len(),
                events
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
