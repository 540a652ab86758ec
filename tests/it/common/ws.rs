//! WebSockets on both sides of the proxy: a minimal RFC 6455 codec, an echo server that can
//! push frames of its own, and a client socket.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;

use super::{Conn, Headers, RawResponse, Recorded, http1};

/// The RFC 6455 sample key and its accept value (section 1.3).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// `Sec-WebSocket-Accept` for `key`.
pub fn ws_accept(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// One frame: `(opcode, payload, bytes used)`, unmasked.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        let b = buf.get(2..4)?;
        len = u16::from_be_bytes([b[0], b[1]]) as usize;
        pos = 4;
    } else if len == 127 {
        let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
        len = u64::from_be_bytes(b) as usize;
        pos = 10;
    }
    let mask = if masked {
        let m: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
        pos += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = buf.get(pos..pos + len)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((opcode, payload, pos + len))
}

fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

type Pushers = Arc<Mutex<Vec<UnboundedSender<Vec<u8>>>>>;

/// A WebSocket echo server: records each handshake and each payload it
/// receives, echoes frames back unmasked, and can push frames of its own.
pub struct WsUpstream {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Recorded>>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    pushers: Pushers,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub fn handshakes(&self) -> Vec<Recorded> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }

    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("received lock")
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Sends a text frame from the server on every open socket.
    pub fn push(&self, text: &str) {
        for tx in self.pushers.lock().expect("pushers lock").iter() {
            let _ = tx.send(text.as_bytes().to_vec());
        }
    }
}

pub async fn spawn_ws_upstream() -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws upstream");
    let addr = listener.local_addr().expect("ws upstream addr");
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let pushers: Pushers = Arc::new(Mutex::new(Vec::new()));
    let (h, r, p) = (handshakes.clone(), received.clone(), pushers.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_ws(stream, h.clone(), r.clone(), p.clone()));
        }
    });
    WsUpstream {
        addr,
        handshakes,
        received,
        pushers,
        task,
    }
}

async fn serve_ws(
    stream: TcpStream,
    handshakes: Arc<Mutex<Vec<Recorded>>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    pushers: Pushers,
) {
    let mut conn = Conn::new(stream);
    let Ok(Some(rec)) = conn.request_head().await else {
        return;
    };
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    let key = rec.header("sec-websocket-key").unwrap_or_default();
    let websocket = rec
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    handshakes.lock().expect("handshakes lock").push(rec);
    if !websocket {
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_accept(&key)
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pushers.lock().expect("pushers lock").push(tx);
    let mut tmp = [0u8; 16 * 1024];
    loop {
        while let Some((opcode, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if opcode == 8 {
                let _ = stream.write_all(&encode_frame(8, &payload, None)).await;
                return;
            }
            received
                .lock()
                .expect("received lock")
                .push(payload.clone());
            let reply = if opcode == 9 { 10 } else { opcode };
            if stream
                .write_all(&encode_frame(reply, &payload, None))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            r = stream.read(&mut tmp) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            },
            Some(msg) = rx.recv() => {
                if stream.write_all(&encode_frame(1, &msg, None)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug)]
pub enum WsEvent {
    Frame(u8, Vec<u8>),
    Closed,
    Silent,
}

/// The client side of a WebSocket through the proxy.
pub struct WsClient {
    conn: Conn,
}

/// Opens `path` with the session `cookie`; returns the handshake response and,
/// on 101, the socket.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    cookie: &str,
) -> (RawResponse, Option<WsClient>) {
    let mut conn = Conn::open(addr).await;
    conn.send(&http1(
        "GET",
        path,
        &[
            ("Cookie", cookie),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", "http://cafe.nixtech.app"),
        ],
        b"",
    ))
    .await;
    let r = conn
        .response(false)
        .await
        .expect("an answer to the WebSocket handshake");
    if r.status != 101 {
        return (r, None);
    }
    (r, Some(WsClient { conn }))
}

impl WsClient {
    pub async fn send_text(&mut self, text: &str) {
        let frame = encode_frame(1, text.as_bytes(), Some([0x37, 0xfa, 0x21, 0x3d]));
        self.conn.send(&frame).await;
    }

    /// The next frame, EOF/reset, or nothing within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> WsEvent {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.conn.buf) {
                self.conn.buf.drain(..used);
                return WsEvent::Frame(op, payload);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.conn.read_more()).await {
                Err(_) => return WsEvent::Silent,
                Ok(false) => return WsEvent::Closed,
                Ok(true) => {}
            }
        }
    }

    /// Sends `text` and expects it back.
    pub async fn echo(&mut self, text: &str) {
        self.send_text(text).await;
        match self.recv(Duration::from_secs(15)).await {
            WsEvent::Frame(1, p) if p == text.as_bytes() => {}
            WsEvent::Closed => panic!(
                "echo of {text:?}: the proxy closed the socket instead (an upgrade torn down \
                 right after its 101 looks like cloudflare/pingora#946)"
            ),
            other => panic!("echo of {text:?}: got {other:?}"),
        }
    }

    /// After `text` was sent (or pushed), the socket must close within a
    /// bounded wait and never deliver `text`.
    pub async fn expect_closed_without(&mut self, text: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                WsEvent::Closed => return,
                WsEvent::Frame(_, p) if p == text.as_bytes() => {
                    panic!("{what}: {text:?} was delivered")
                }
                WsEvent::Frame(..) => {}
                WsEvent::Silent => panic!("{what}: the socket is still open after 20 s"),
            }
        }
    }
}
