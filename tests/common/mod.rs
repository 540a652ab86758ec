//! Hermetic harness for the black-box tests: a recording upstream, the real
//! `sessiongate` binary on ephemeral loopback ports, raw HTTP/1.1 requests for
//! exact bytes, and token minting.
//!
//! Everything here talks to 127.0.0.1 only.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// HS256 secret handed to the sidecar through [`SECRET_ENV`].
pub const SECRET: &str = "sessiongate-test-secret-0123456789abcdef";
pub const SECRET_ENV: &str = "SG_TEST_JWT_SECRET";
pub const COOKIE: &str = "nix_session";

/// Hosts every client made by [`Sidecar::client`] resolves to the proxy.
pub const HOSTS: &[&str] = &[
    "cafe.nixtech.app",
    "legacy.nixtech.app",
    "strict.nixtech.app",
    "login.nixtech.app",
    "public.nixtech.app",
    "down.nixtech.app",
    "unknown.nixtech.app",
    "acme.shop.nixtech.app",
    "evil.shop.nixtech.app",
];

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A loopback port nobody in this test process has been handed before.
///
/// Bound then released: another process could still take it, which is the
/// accepted cost of testing a binary that binds its own ports.
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if taken.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A fresh directory under the system temp dir, removed on drop unless the
/// test is failing (then it is kept for inspection and its path printed).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "sessiongate-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept test dir {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Lower-cased with `_` read as `-`, the way the proxy must compare names.
pub fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Percent-decodes `%XX` sequences (anything else is kept as is).
pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn header_lookup<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

// ---------------------------------------------------------------------------
// Recording upstream
// ---------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// In arrival order, names exactly as received.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// First value of `name` (case-insensitive), lossily as text.
    pub fn header(&self, name: &str) -> Option<String> {
        header_lookup(&self.headers, name)
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        header_lookup(&self.headers, name)
            .into_iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

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
}

/// What the upstream answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
            delay: Duration::ZERO,
        }
    }
}

impl Reply {
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

/// An HTTP/1.1 server on 127.0.0.1:0 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    count: Arc<AtomicUsize>,
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
        self.count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
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

    /// Whether any request with this exact target arrived.
    pub fn received(&self, target: &str) -> bool {
        self.requests().iter().any(|r| r.target == target)
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_for_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "upstream got {} requests, waited for {n}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn spawn_upstream() -> Upstream {
    spawn_upstream_with(|_| Reply::default()).await
}

pub async fn spawn_upstream_with<F>(handler: F) -> Upstream
where
    F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    let handler: Handler = Arc::new(handler);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (r, c) = (requests.clone(), count.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_connection(
                stream,
                handler.clone(),
                r.clone(),
                c.clone(),
            ));
        }
    });
    Upstream {
        addr,
        requests,
        count,
        task,
    }
}

/// Reads more bytes into `buf`; false on EOF or error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16 * 1024];
    match stream.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

async fn fill_to(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    while buf.len() < len {
        if !read_more(stream, buf).await {
            return false;
        }
    }
    true
}

async fn line_end(stream: &mut TcpStream, buf: &mut Vec<u8>, from: usize) -> Option<usize> {
    loop {
        if let Some(p) = find(buf, b"\r\n", from) {
            return Some(p);
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

/// Decodes a chunked body starting at `pos`; returns the body and the end offset.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut pos: usize,
) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    loop {
        let end = line_end(stream, buf, pos).await?;
        let line = std::str::from_utf8(&buf[pos..end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let end = line_end(stream, buf, pos).await?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some((body, pos));
                }
            }
        }
        if !fill_to(stream, buf, pos + size + 2).await {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
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

async fn serve_connection(
    mut stream: TcpStream,
    handler: Handler,
    requests: Arc<Mutex<Vec<Recorded>>>,
    count: Arc<AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        // Request head.
        let (mut rec, head_len, content_length, chunked, close) = loop {
            if !buf.is_empty() {
                let mut hs = vec![httparse::EMPTY_HEADER; 1024];
                let mut req = httparse::Request::new(&mut hs);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers: Vec<(String, Vec<u8>)> = req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), h.value.to_vec()))
                            .collect();
                        let get = |name: &str| {
                            header_lookup(&headers, name)
                                .first()
                                .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
                        };
                        let content_length = get("content-length")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let chunked = get("transfer-encoding")
                            .map(|v| v.contains("chunked"))
                            .unwrap_or(false);
                        let close = get("connection")
                            .map(|v| v.contains("close"))
                            .unwrap_or(false)
                            || req.version == Some(0);
                        let rec = Recorded {
                            method: req.method.unwrap_or("").to_string(),
                            target: req.path.unwrap_or("").to_string(),
                            headers,
                            body: Vec::new(),
                        };
                        break (rec, n, content_length, chunked, close);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        let msg = format!("bad request: {e}");
                        let _ = stream
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
                }
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };

        // Body.
        let consumed = if chunked {
            match read_chunked(&mut stream, &mut buf, head_len).await {
                Some((body, end)) => {
                    rec.body = body;
                    end
                }
                None => return,
            }
        } else {
            if !fill_to(&mut stream, &mut buf, head_len + content_length).await {
                return;
            }
            rec.body = buf[head_len..head_len + content_length].to_vec();
            head_len + content_length
        };
        buf.drain(..consumed);

        let reply = handler(&rec);
        let is_head = rec.method.eq_ignore_ascii_case("HEAD");
        requests.lock().expect("requests lock").push(rec);
        count.fetch_add(1, Ordering::SeqCst);

        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
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
        if stream.write_all(&bytes).await.is_err() || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A valid identity: user-42 of tenant `cafe`, one hour left.
pub fn claims() -> Value {
    json!({
        "sub": "user-42",
        "tenant_id": "cafe",
        "email": "ana@example.com",
        "roles": ["admin", "staff"],
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// `claims()` with `changes` merged in; a `null` in `changes` removes the key.
pub fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    let obj = c.as_object_mut().expect("claims object");
    for (k, v) in changes.as_object().expect("changes object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

pub fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode token")
}

pub fn mint_hs256(secret: &str, claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// Signed with the test [`SECRET`].
pub fn token(claims: &Value) -> String {
    mint_hs256(SECRET, claims)
}

pub fn mint_rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).expect("read rsa_private.pem");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa private key");
    mint(Algorithm::RS256, &key, claims)
}

/// `{"alg":"none"}` with an empty signature, built by hand.
pub fn alg_none_token(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}")
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The `[token]` section of the test template (HS256, secret from env).
pub fn hs256_token_section(extra: &str) -> String {
    format!(
        r#"[token]
cookie = "nix_session"
cookie_domain = ".nixtech.app"
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"
leeway = "30s"
{extra}
"#
    )
}

/// The `[token]` section for RS256 with the fixture public key.
pub fn rs256_token_section() -> String {
    format!(
        r#"[token]
cookie = "nix_session"
cookie_domain = ".nixtech.app"
algorithms = ["RS256"]
public_key_file = "{}"
leeway = "30s"
"#,
        fixture("rsa_public.pem").display()
    )
}

/// A whole config. `@LISTEN@`, `@ADMIN@` and `@AUDIT@` are filled in by
/// [`Sidecar::start`].
pub fn config_with_token(token_section: &str, sites: &str) -> String {
    format!(
        r#"[listen]
addr = "@LISTEN@"

[admin]
addr = "@ADMIN@"

{token_section}
[audit]
sink = "file:@AUDIT@"

{sites}"#
    )
}

pub fn config(sites: &str) -> String {
    config_with_token(&hs256_token_section(""), sites)
}

/// One `[[site]]` table; `extra` is more `key = value` lines.
pub fn site(host: &str, upstream: SocketAddr, extra: &str) -> String {
    format!("[[site]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\n{extra}\n\n")
}

// ---------------------------------------------------------------------------
// The sidecar process
// ---------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sessiongate")
}

/// A running `sessiongate run`, stopped (SIGTERM, then kill) on drop.
pub struct Sidecar {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub stderr_path: PathBuf,
    pub dir: TempDir,
}

impl Sidecar {
    /// Writes `config_toml` (placeholders filled), spawns the binary with `env`
    /// and waits until the admin `/healthz` answers 200.
    pub async fn start(config_toml: &str, env: &[(&str, &str)]) -> Sidecar {
        Sidecar::start_with(Command::new(bin()), config_toml, env).await
    }

    /// [`Sidecar::start`] with `cmd` as the command that runs the binary (its arguments follow).
    async fn start_with(mut cmd: Command, config_toml: &str, env: &[(&str, &str)]) -> Sidecar {
        let dir = TempDir::new();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let audit_path = dir.path().join("audit.jsonl");
        let toml = config_toml
            .replace("@LISTEN@", &addr.to_string())
            .replace("@ADMIN@", &admin_addr.to_string())
            .replace("@AUDIT@", &audit_path.display().to_string());
        let config_path = dir.write("sessiongate.toml", &toml);
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_remove(SECRET_ENV)
            .env_remove("MIMALLOC_ALLOW_THP")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sessiongate");
        let mut sc = Sidecar {
            child: Some(child),
            addr,
            admin_addr,
            config_path,
            audit_path,
            stderr_path,
            dir,
        };
        sc.wait_ready().await;
        sc
    }

    /// HS256 template, the secret in the environment.
    pub async fn start_hs256(sites: &str) -> Sidecar {
        Sidecar::start(&config(sites), &[(SECRET_ENV, SECRET)]).await
    }

    async fn wait_ready(&mut self) {
        let client = plain_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/healthz", self.admin_addr);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "sessiongate exited before it was ready ({status}); stderr:\n{}\nconfig:\n{}",
                    self.stderr(),
                    std::fs::read_to_string(&self.config_path).unwrap_or_default()
                );
            }
            let healthy = matches!(
                client.get(&url).timeout(Duration::from_secs(2)).send().await,
                Ok(r) if r.status() == 200
            );
            if healthy && TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessiongate not ready after 30 s; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls the audit file (audit is asynchronous) for up to 5 s.
    pub async fn wait_for_audit(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.audit_events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client that resolves every name in [`HOSTS`] to the proxy.
    pub fn client(&self) -> reqwest::Client {
        self.builder().build().expect("client")
    }

    /// Like [`Sidecar::client`], speaking HTTP/2 cleartext with prior knowledge.
    pub fn h2_client(&self) -> reqwest::Client {
        self.builder()
            .http2_prior_knowledge()
            .build()
            .expect("h2 client")
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        for h in HOSTS {
            b = b.resolve(h, self.addr);
        }
        b
    }

    /// `http://HOST:PORT/PATH` on the public listener.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    pub fn sigterm(&self) {
        send_sigterm(self.pid());
    }

    /// Waits (bounded by 60 s) for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sessiongate still running after 60 s; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                send_sigterm(child.id());
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = err
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!(
                "--- sessiongate stderr ({}), last lines ---\n{tail}",
                self.stderr_path.display()
            );
        }
    }
}

/// A client for loopback addresses (no proxies from the environment).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Runs `sessiongate ARGS` to completion (bounded), returning (code, stdout, stderr).
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env_remove(SECRET_ENV)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("sessiongate did not finish within 60 s")
        .expect("run sessiongate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        header_lookup(&self.headers, name)
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        header_lookup(&self.headers, name)
            .into_iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `METHOD TARGET HTTP/1.1` with `Host`, the given headers and `Connection: close`.
pub fn raw_request_bytes(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.into_bytes()
}

/// Writes `request` as is and reads one response (bounded by 30 s).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(30), raw_exchange(addr, request))
        .await
        .expect("raw request got no complete answer within 30 s")
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    // The proxy may answer (e.g. 431) before reading everything: a failed
    // write is not the test's verdict, the response is.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let mut eof = false;
    let mut read_error = None;
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let status = resp.code.unwrap_or(0);
            let headers: Vec<(String, Vec<u8>)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect();
            if (100..200).contains(&status) {
                buf.drain(..n);
                continue;
            }
            let cl = header_lookup(&headers, "content-length")
                .first()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = header_lookup(&headers, "transfer-encoding")
                .first()
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .to_ascii_lowercase()
                        .contains("chunked")
                })
                .unwrap_or(false);
            let body = if chunked {
                match read_chunked(&mut stream, &mut buf, n).await {
                    Some((body, _)) => body,
                    None => buf[n..].to_vec(),
                }
            } else if let Some(cl) = cl {
                fill_to(&mut stream, &mut buf, n + cl).await;
                buf[n..buf.len().min(n + cl)].to_vec()
            } else if status == 204 || status == 304 {
                Vec::new()
            } else {
                while read_more(&mut stream, &mut buf).await {}
                buf[n..].to_vec()
            };
            return RawResponse {
                status,
                headers,
                body,
            };
        }
        if eof {
            panic!(
                "no complete HTTP response (read error: {read_error:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        let mut tmp = [0u8; 16 * 1024];
        match stream.read(&mut tmp).await {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => {
                read_error = Some(e);
                eof = true;
            }
        }
    }
}

/// Whether anything accepts TCP connections at `addr`.
pub async fn is_listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Fills the `@LISTEN@`, `@ADMIN@`, `@AUDIT@` placeholders for a config that
/// is only checked, never run.
pub fn materialize(toml: &str, dir: &TempDir) -> String {
    toml.replace("@LISTEN@", &format!("127.0.0.1:{}", free_port()))
        .replace("@ADMIN@", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "@AUDIT@",
            &dir.path().join("audit.jsonl").display().to_string(),
        )
}

// ---------------------------------------------------------------------------
// Platform backend for the liveness checks
// ---------------------------------------------------------------------------

/// What the test backend answers to one liveness request.
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
}

#[derive(Debug)]
struct BackendState {
    default: Answer,
    per_sid: std::collections::HashMap<String, Answer>,
}

/// The platform backend: an HTTP/1.1 server on 127.0.0.1:0 that records every
/// request and answers what the test set, per sid or by default.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<Mutex<BackendState>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    calls: Arc<AtomicUsize>,
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

    /// The default answer (every sid without its own answer); keeps the delay.
    pub fn set(&self, status: u16, body: &str) {
        let mut s = self.state();
        let delay = s.default.delay;
        s.default = Answer::new(status, body).delay(delay);
    }

    /// The default answer's delay.
    pub fn set_delay(&self, delay: Duration) {
        self.state().default.delay = delay;
    }

    pub fn set_answer(&self, answer: Answer) {
        self.state().default = answer;
    }

    /// The answer for one sid (as the proxy names it, before encoding).
    pub fn set_for(&self, sid: &str, status: u16, body: &str) {
        self.set_answer_for(sid, Answer::new(status, body));
    }

    pub fn set_answer_for(&self, sid: &str, answer: Answer) {
        self.state().per_sid.insert(sid.to_string(), answer);
    }

    /// Every request so far (counted when its head has arrived).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("backend requests lock").clone()
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

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_for_calls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.calls() < n {
            assert!(
                Instant::now() < deadline,
                "backend got {} calls, waited for {n}",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A backend that answers `200 {"active":true}` until told otherwise.
pub async fn spawn_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let state = Arc::new(Mutex::new(BackendState {
        default: Answer::live(),
        per_sid: std::collections::HashMap::new(),
    }));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, r, c) = (state.clone(), requests.clone(), calls.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_backend_connection(
                stream,
                s.clone(),
                r.clone(),
                c.clone(),
            ));
        }
    });
    Backend {
        addr,
        state,
        requests,
        calls,
        task,
    }
}

async fn serve_backend_connection(
    mut stream: TcpStream,
    state: Arc<Mutex<BackendState>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    calls: Arc<AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        let (rec, consumed) = loop {
            let mut hs = vec![httparse::EMPTY_HEADER; 256];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, Vec<u8>)> = req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect();
                    let content_length = header_lookup(&headers, "content-length")
                        .first()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let rec = Recorded {
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("").to_string(),
                        headers,
                        body: Vec::new(),
                    };
                    break (rec, n + content_length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        if !fill_to(&mut stream, &mut buf, consumed).await {
            return;
        }
        buf.drain(..consumed);
        let sid = sid_of_target(&rec.target);
        let answer = {
            let s = state.lock().expect("backend state lock");
            s.per_sid.get(&sid).unwrap_or(&s.default).clone()
        };
        requests.lock().expect("backend requests lock").push(rec);
        calls.fetch_add(1, Ordering::SeqCst);
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        if answer.close {
            let _ = stream.shutdown().await;
            return;
        }
        let out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            answer.status,
            reason(answer.status),
            answer.body.len(),
            answer.body
        );
        if stream.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Claims of user-42 of tenant `cafe`, impersonated by admin-7 in session `sid`.
pub fn imp_claims(sid: &str) -> Value {
    claims_with(json!({
        "imp": {
            "sid": sid,
            "admin_id": "admin-7",
            "admin_email": "root@nixtech.app",
            "reason": "ticket #4711",
        }
    }))
}

/// The session cookie of an impersonation token for `sid`.
pub fn imp_cookie(sid: &str) -> String {
    session_cookie(&token(&imp_claims(sid)))
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
    attempts: Arc<Mutex<Vec<Recorded>>>,
    attempt_count: Arc<AtomicUsize>,
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
        attempts: Arc::new(Mutex::new(Vec::new())),
        attempt_count: Arc::new(AtomicUsize::new(0)),
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
        let (attempts, count) = (self.attempts.clone(), self.attempt_count.clone());
        let task = tokio::spawn(async move {
            // Connections live in the set: aborting this task closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        if let Ok((stream, _)) = acc {
                            conns.spawn(serve_connection(
                                stream,
                                handler.clone(),
                                attempts.clone(),
                                count.clone(),
                            ));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
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
        self.attempt_count.load(Ordering::SeqCst)
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

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Parses `{k="v",...}` (values without escaped quotes are enough here).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let Some(end) = after.find('"') else { break };
        out.push((key, after[..end].to_string()));
        rest = &after[end + 1..];
    }
    out
}

/// Sum of every sample of `name` whose labels include `labels` (0 when none).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.find('{') {
            Some(i) => (
                &series[..i],
                parse_labels(series[i + 1..].trim_end_matches('}')),
            ),
            None => (series, Vec::new()),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

impl Sidecar {
    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = plain_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200, "GET /metrics");
        r.text().await.expect("metrics body")
    }

    /// One metric, summed over the series that carry `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics().await, name, labels)
    }

    /// Polls (bounded by 30 s) until the metric satisfies `pred`; returns its value.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(name, labels).await;
            if pred(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name}{labels:?} is {v} after 30 s of waiting"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Client side: one response type for every suite
// ---------------------------------------------------------------------------

/// What the client got back from the proxy.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub version: reqwest::Version,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.expect("request to the proxy failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let version = r.version();
    let body = r.text().await.expect("response body");
    Resp {
        status,
        headers,
        version,
        body,
    }
}

// ---------------------------------------------------------------------------
// The sidecar under resource limits
// ---------------------------------------------------------------------------

impl Sidecar {
    /// [`Sidecar::start`], with the binary started by `sh -c SCRIPT`, where `SCRIPT` sets
    /// limits and ends in `exec "$0" "$@"` (e.g. `ulimit -n 128; exec "$0" "$@"`), so the
    /// shell's pid becomes the proxy's.
    pub async fn start_under_shell(
        script: &str,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg(bin());
        Sidecar::start_with(cmd, config_toml, env).await
    }
}
