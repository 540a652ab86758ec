//! Raw HTTP/1.1 on loopback: requests written byte for byte (so that no client library
//! normalizes a path or a header on the way), and [`Conn`], one connection read one response
//! (or one request, on the server side) at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{HOST, Headers, NAVIGATION, Recorded, Sidecar, lossy_values};

/// A response as the client read it off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Headers for RawResponse {
    fn header_all(&self, name: &str) -> Vec<String> {
        lossy_values(&self.headers, name)
    }
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` member of a JSON body.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["error"].as_str().map(str::to_string)
    }
}

/// How a message's body is framed: its `Content-Length`, and whether it is chunked.
pub fn framing(message: &impl Headers) -> (Option<usize>, bool) {
    let cl = message
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    (cl, chunked)
}

/// `METHOD TARGET HTTP/1.1` with `Host`, the given headers (values as bytes, not
/// necessarily ASCII) and `Connection: close`: one request on its own connection.
pub fn raw_request_bytes<V: AsRef<[u8]>>(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, V)],
) -> Vec<u8> {
    raw_request_with_body(method, target, host, headers, b"")
}

/// [`raw_request_bytes`] with `body` after the head, announced by a `Content-Length` (none
/// when the body is empty).
pub fn raw_request_with_body<V: AsRef<[u8]>>(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, V)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_ref());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// `METHOD TARGET HTTP/1.1`, `Host: cafe.nixtech.app` first (unless `headers` has one), then
/// `headers` as given, `Content-Length` for a body unless framing is given, and the body.
/// No `Connection` header: closing is the proxy's decision.
pub fn http1(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        s.extend_from_slice(format!("Host: {HOST}\r\n").as_bytes());
    }
    for (k, v) in headers {
        s.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !body.is_empty() && !framed {
        s.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(body);
    s
}

/// Writes `request` as is on a fresh connection and reads one response (bounded by 30 s).
/// A request whose method is `HEAD` gets a response without a body.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let head = request
        .get(..5)
        .is_some_and(|m| m.eq_ignore_ascii_case(b"HEAD "));
    let mut c = Conn::open(addr).await;
    c.send(request).await;
    c.response(head).await.unwrap_or_else(|| {
        panic!(
            "connection closed without a response to {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Whether anything accepts TCP connections at `addr`.
pub async fn is_listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// One connection and what has been read from it but not consumed yet.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn open(addr: SocketAddr) -> Conn {
        Conn::new(
            TcpStream::connect(addr)
                .await
                .expect("connect to the proxy"),
        )
    }

    /// Writes the bytes as they are; a failed write is not a verdict (the
    /// proxy may answer and close before reading everything).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more bytes into the buffer; false on EOF or error.
    pub async fn read_more(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Reads until the buffer holds at least `n` bytes.
    pub async fn fill(&mut self, n: usize) -> Option<()> {
        while self.buf.len() < n {
            if !self.read_more().await {
                return None;
            }
        }
        Some(())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Some(line);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// A whole chunked body (trailers skipped).
    async fn chunked_body(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                loop {
                    if self.line().await?.is_empty() {
                        return Some(body);
                    }
                }
            }
            self.fill(size + 2).await?;
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// The body `Content-Length` or `Transfer-Encoding: chunked` announces.
    async fn framed_body(
        &mut self,
        content_length: Option<usize>,
        chunked: bool,
    ) -> Option<Vec<u8>> {
        if chunked {
            self.chunked_body().await
        } else {
            let n = content_length.unwrap_or(0);
            self.fill(n).await?;
            Some(self.buf.drain(..n).collect())
        }
    }

    /// The next response head (status and headers), `None` when the connection ends first.
    pub async fn response_head(&mut self) -> Option<RawResponse> {
        loop {
            let parsed = {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut resp = httparse::Response::new(&mut hs);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => Some((
                        n,
                        resp.code.unwrap_or(0),
                        resp.headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect::<Vec<_>>(),
                    )),
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => panic!(
                        "unparseable response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                }
            };
            match parsed {
                Some((n, status, headers)) => {
                    self.buf.drain(..n);
                    return Some(RawResponse {
                        status,
                        headers,
                        body: Vec::new(),
                    });
                }
                None => {
                    if !self.read_more().await {
                        return None;
                    }
                }
            }
        }
    }

    /// The next response (bounded by 30 s), interim 1xx answers skipped; `None` when the
    /// connection ends before a complete one. `head`: the request was HEAD (no body).
    pub async fn response(&mut self, head: bool) -> Option<RawResponse> {
        tokio::time::timeout(Duration::from_secs(30), self.read_response(head))
            .await
            .expect("no complete response within 30 s")
    }

    async fn read_response(&mut self, head: bool) -> Option<RawResponse> {
        loop {
            let r = self.response_head().await?;
            if (100..200).contains(&r.status) && r.status != 101 {
                continue;
            }
            let (cl, chunked) = framing(&r);
            let body = if head || matches!(r.status, 101 | 204 | 304) {
                Vec::new()
            } else if chunked || cl.is_some() {
                self.framed_body(cl, chunked).await?
            } else {
                while self.read_more().await {}
                std::mem::take(&mut self.buf)
            };
            return Some(RawResponse { body, ..r });
        }
    }

    /// The server side: the next request head, `None` at EOF, `Err` when the bytes are not
    /// HTTP/1.1 (they stay in the buffer).
    pub async fn request_head(&mut self) -> Result<Option<Recorded>, httparse::Error> {
        loop {
            if !self.buf.is_empty() {
                let mut hs = vec![httparse::EMPTY_HEADER; 1024];
                let mut req = httparse::Request::new(&mut hs);
                if let httparse::Status::Complete(n) = req.parse(&self.buf)? {
                    let mut rec = Recorded {
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("").to_string(),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect(),
                        body: Vec::new(),
                        close: req.version == Some(0),
                    };
                    rec.close |= rec
                        .header("connection")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
                    self.buf.drain(..n);
                    return Ok(Some(rec));
                }
            }
            if !self.read_more().await {
                return Ok(None);
            }
        }
    }

    /// The server side: the next whole request, its body read as its framing says.
    pub async fn request(&mut self) -> Result<Option<Recorded>, httparse::Error> {
        let Some(mut rec) = self.request_head().await? else {
            return Ok(None);
        };
        let (cl, chunked) = framing(&rec);
        match self.framed_body(cl, chunked).await {
            Some(body) => rec.body = body,
            None => return Ok(None),
        }
        Ok(Some(rec))
    }

    /// The peer closes the connection (EOF or reset) within a bounded wait,
    /// without sending anything more.
    pub async fn assert_closed(&mut self, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: the proxy sent more after its answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(15), self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!(
                "{what}: the proxy sent more after its answer: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(_) => panic!("{what}: the connection is still open 15 s after the answer"),
        }
    }

    /// Reads until the peer closes (bounded by `wait`); returns everything read and whether
    /// it closed.
    pub async fn read_until_closed(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_more()).await {
                Ok(false) => return (std::mem::take(&mut self.buf), true),
                Ok(true) => {}
                Err(_) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }
}

impl Sidecar {
    /// A GET on its own connection with `Host: host` exactly as given and `headers` (values as
    /// bytes).
    pub async fn raw_get<V: AsRef<[u8]>>(
        &self,
        host: &str,
        target: &str,
        headers: &[(&str, V)],
    ) -> RawResponse {
        self.raw_send("GET", host, target, headers, b"").await
    }

    /// Any method on its own connection with `Host: host` exactly as given, `headers` (values
    /// as bytes) and `body` ([`raw_request_with_body`]).
    pub async fn raw_send<V: AsRef<[u8]>>(
        &self,
        method: &str,
        host: &str,
        target: &str,
        headers: &[(&str, V)],
        body: &[u8],
    ) -> RawResponse {
        raw_request(
            self.addr,
            &raw_request_with_body(method, target, host, headers, body),
        )
        .await
    }

    /// One request on its own connection, `Host` as the client sends it (with the port),
    /// `cookie` as a `Cookie` header when given, then `headers`.
    pub async fn raw(
        &self,
        method: &str,
        host: &str,
        path: &str,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        let mut hs: Vec<(&str, &str)> = Vec::new();
        if let Some(c) = cookie {
            hs.push(("Cookie", c));
        }
        hs.extend_from_slice(headers);
        raw_request(
            self.addr,
            &raw_request_bytes(method, path, &self.authority(host), &hs),
        )
        .await
    }

    /// A top-level navigation as a browser sends it ([`NAVIGATION`], no `Accept-Encoding`
    /// unless `extra` has one), byte for byte.
    pub async fn raw_navigate(
        &self,
        host: &str,
        path: &str,
        cookie: Option<&str>,
        extra: &[(&str, &str)],
    ) -> RawResponse {
        let mut hs = NAVIGATION.to_vec();
        hs.extend_from_slice(extra);
        self.raw("GET", host, path, cookie, &hs).await
    }
}

/// A response read as it arrives (HTTP/1.1, chunked or not), each read bounded by 60 s.
pub struct Streamed {
    conn: Conn,
    pub status: u16,
    head: RawResponse,
    chunked: bool,
    chunk_left: usize,
    need_crlf: bool,
    done: bool,
}

const READ_BOUND: Duration = Duration::from_secs(60);

impl Streamed {
    /// Sends `request` on a fresh connection and reads the response head.
    pub async fn open(addr: SocketAddr, request: &[u8]) -> Streamed {
        let mut conn = Conn::open(addr).await;
        conn.stream.write_all(request).await.expect("send request");
        let head = tokio::time::timeout(READ_BOUND, conn.response_head())
            .await
            .unwrap_or_else(|_| panic!("the proxy sent nothing for {READ_BOUND:?}"))
            .expect("the proxy closed before a response head");
        let (_, chunked) = framing(&head);
        Streamed {
            conn,
            status: head.status,
            head,
            chunked,
            chunk_left: 0,
            need_crlf: false,
            done: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.header(name)
    }

    /// Reads more bytes; false on EOF.
    async fn fill(&mut self) -> bool {
        tokio::time::timeout(READ_BOUND, self.conn.read_more())
            .await
            .unwrap_or_else(|_| panic!("the proxy sent nothing for {READ_BOUND:?}"))
    }

    /// The next piece of the body (de-chunked), `None` at its end.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if !self.chunked {
            if self.conn.buf.is_empty() && !self.fill().await {
                self.done = true;
                return None;
            }
            return Some(std::mem::take(&mut self.conn.buf));
        }
        loop {
            if self.chunk_left > 0 {
                if self.conn.buf.is_empty() {
                    assert!(self.fill().await, "the chunked body was cut short");
                }
                let n = self.chunk_left.min(self.conn.buf.len());
                let out: Vec<u8> = self.conn.buf.drain(..n).collect();
                self.chunk_left -= n;
                self.need_crlf = self.chunk_left == 0;
                return Some(out);
            }
            if self.need_crlf {
                while self.conn.buf.len() < 2 {
                    assert!(self.fill().await, "the chunked body was cut short");
                }
                assert_eq!(&self.conn.buf[..2], b"\r\n", "bad chunk framing");
                self.conn.buf.drain(..2);
                self.need_crlf = false;
            }
            let line_end = loop {
                if let Some(p) = self.conn.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                assert!(self.fill().await, "the chunked body was cut short");
            };
            let line = String::from_utf8_lossy(&self.conn.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            self.conn.buf.drain(..line_end + 2);
            if size == 0 {
                self.done = true;
                return None;
            }
            self.chunk_left = size;
        }
    }
}
