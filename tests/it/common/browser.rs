//! A real browser: headless Chromium driven through chromedriver's W3C WebDriver HTTP API.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them). Set `SESSIONGATE_SKIP_BROWSER=1` to skip the
//! browser tests on a machine without them.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{TempDir, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver plus one browser session; both are ended on drop.
pub struct Driver {
    child: Option<Child>,
    port: u16,
    http: reqwest::Client,
    session: Option<String>,
    log: PathBuf,
    dir: TempDir,
}

impl Driver {
    pub async fn start() -> Driver {
        let dir = TempDir::new();
        let port = free_port();
        let log = dir.path().join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("webdriver client");
        let mut d = Driver {
            child: Some(child),
            port,
            http,
            session: None,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match d.http.get(d.base("/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready after 30 s; log {}",
                d.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = d.dir.path().join("profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 60000, "script": 30000, "implicit": 0 },
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--no-proxy-server",
                            "--window-size=1280,800",
                            format!("--user-data-dir={}", profile.display()),
                        ]
                    }
                }
            }
        });
        let (status, v) = d.call(reqwest::Method::POST, "/session", Some(caps)).await;
        assert_eq!(
            status,
            200,
            "new WebDriver session failed: {v}; log {}",
            d.log.display()
        );
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_string();
        d.session = Some(id);
        d
    }

    fn base(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn sid(&self) -> &str {
        self.session.as_deref().expect("a WebDriver session")
    }

    /// One WebDriver command: (HTTP status, the `value` member).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), self.base(path));
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status().as_u16();
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: reply is not JSON: {e}"));
        (status, v["value"].clone())
    }

    /// A session command that must succeed.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.sid());
        let (status, v) = self.call(method.clone(), &full, body).await;
        assert_eq!(status, 200, "WebDriver {method} {path} failed: {v}");
        v
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `return` its result) in the page.
    pub async fn exec(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// A host-only cookie for the current page's host.
    pub async fn add_cookie(&self, name: &str, value: &str) {
        self.cmd(
            reqwest::Method::POST,
            "/cookie",
            Some(json!({ "cookie": { "name": name, "value": value, "path": "/" } })),
        )
        .await;
    }

    /// The named cookie's value, `None` when the browser has none.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let path = format!("/session/{}/cookie/{name}", self.sid());
        let (status, v) = self.call(reqwest::Method::GET, &path, None).await;
        match status {
            200 => v["value"].as_str().map(str::to_string),
            404 => None,
            _ => panic!("WebDriver get cookie {name}: {status} {v}"),
        }
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("screenshot as base64"))
            .expect("screenshot base64")
    }

    /// Polls `script` (bounded) until it returns `true`; panics with `what`
    /// and the last value of `diagnose` otherwise.
    pub async fn wait_for(&self, what: &str, script: &str, diagnose: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.exec(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let d = self.exec(diagnose).await;
                panic!("waited 20 s for {what}; page state: {d}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls (bounded) until the current URL's path is `path`.
    pub async fn wait_for_path(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.current_url().await;
            let p = url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
                .unwrap_or_default();
            if p.split('?').next() == Some(path) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for the browser to reach {path}; it is at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the browser session (best effort, blocking: usable from drop).
    fn delete_session_blocking(&mut self) {
        let Some(id) = self.session.take() else {
            return;
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port)
            .parse()
            .expect("driver addr");
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let req = format!(
                "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.delete_session_blocking();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- chromedriver log ({}), last lines ---\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Where screenshots are kept: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts")
}

/// Whether Chromium and chromedriver are here; without them the browser tests fail unless
/// `SESSIONGATE_SKIP_BROWSER` is set (then they are skipped).
pub fn browser_available() -> bool {
    let have = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !have && std::env::var_os("SESSIONGATE_SKIP_BROWSER").is_some() {
        eprintln!("SESSIONGATE_SKIP_BROWSER is set and Chromium is missing: skipped");
        return false;
    }
    assert!(
        have,
        "{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver; \
         .ci/run does); set SESSIONGATE_SKIP_BROWSER=1 to skip"
    );
    true
}
