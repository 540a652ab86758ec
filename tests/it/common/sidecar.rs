//! The sidecar process: `sessiongate run` on ephemeral loopback ports with a config from the
//! builder, its metrics and audit file, signals, and the CLI's other commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::{
    ADMIN_TOKEN, Addrs, Config, HOSTS, Resp, SECRET_ENV, TempDir, fill_placeholders, plain_client,
    send,
};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sessiongate")
}

/// `kill -SIGNAL pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A running `sessiongate run`, stopped (SIGTERM, then kill) on drop.
pub struct Sidecar {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The TLS listener's address (listening only when the config has `[listen.tls]`).
    pub tls_addr: SocketAddr,
    pub config_path: PathBuf,
    /// The config's `sites_dir`, when it has one (created before the start).
    pub sites_dir: Option<PathBuf>,
    pub audit_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Holds the config, the audit file and the logs; removed on drop.
    _dir: TempDir,
}

impl Sidecar {
    /// Writes the config (placeholders filled), spawns the binary with the environment the
    /// config names and waits until the admin `/healthz` answers 200.
    pub async fn start(config: &Config) -> Sidecar {
        Sidecar::start_with(Command::new(bin()), config).await
    }

    /// [`Sidecar::start`], with the binary started by `sh -c SCRIPT`, where `SCRIPT` sets
    /// limits and ends in `exec "$0" "$@"` (e.g. `ulimit -n 128; exec "$0" "$@"`), so the
    /// shell's pid becomes the proxy's.
    pub async fn start_under_shell(script: &str, config: &Config) -> Sidecar {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg(bin());
        Sidecar::start_with(cmd, config).await
    }

    /// [`Sidecar::start`] with `cmd` as the command that runs the binary (its arguments follow).
    async fn start_with(mut cmd: Command, config: &Config) -> Sidecar {
        let dir = TempDir::new();
        let addrs = Addrs::fresh();
        let (addr, admin_addr, tls_addr) = (addrs.listen, addrs.admin, addrs.tls);
        let audit_path = dir.path().join("audit.jsonl");
        let toml = fill_placeholders(&config.toml(), addrs, &audit_path);
        let config_path = dir.write("sessiongate.toml", &toml);
        let sites_dir = config.write_site_files(dir.path());
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
        for (k, v) in config.env() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sessiongate");
        let mut sc = Sidecar {
            child: Some(child),
            addr,
            admin_addr,
            tls_addr,
            config_path,
            sites_dir,
            audit_path,
            stderr_path,
            _dir: dir,
        };
        sc.wait_ready().await;
        sc
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

    /// `config` as this sidecar would read it: its addresses and audit file filled in.
    pub fn fill(&self, config: &Config) -> String {
        let addrs = Addrs {
            listen: self.addr,
            admin: self.admin_addr,
            tls: self.tls_addr,
        };
        fill_placeholders(&config.toml(), addrs, &self.audit_path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
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

    /// `HOST:PORT`, the `Host` a client sends to the public listener.
    pub fn authority(&self, host: &str) -> String {
        format!("{host}:{}", self.addr.port())
    }

    /// `http://HOST:PORT`.
    pub fn origin(&self, host: &str) -> String {
        format!("http://{}", self.authority(host))
    }

    /// `http://HOST:PORT/PATH` on the public listener.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("{}{path}", self.origin(host))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// The admin `/healthz` answers 200.
    pub async fn assert_healthy(&self) {
        let r = send(plain_client().get(self.admin_url("/healthz"))).await;
        assert_eq!(r.status, 200, "admin /healthz");
    }

    /// `POST /sessions/{sid}/revoke` on the admin listener, without credentials.
    pub fn revoke_request(&self, sid_in_path: &str) -> reqwest::RequestBuilder {
        plain_client().post(self.admin_url(&format!("/sessions/{sid_in_path}/revoke")))
    }

    /// Revokes `sid` with the admin bearer; the answer must be `{"revoked":true,"sid":…}`.
    pub async fn revoke(&self, sid: &str) {
        let r: Resp = send(self.revoke_request(sid).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200, "revoke of {sid}: {:?}", r.body);
        assert_eq!(r.json(), json!({"revoked": true, "sid": sid}));
    }

    /// Sends `signal` (`HUP`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
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

    // -----------------------------------------------------------------------
    // Audit
    // -----------------------------------------------------------------------

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_path).unwrap_or_default()
    }

    pub fn audit_events(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The audit events named `name`.
    pub fn audit_events_named(&self, name: &str) -> Vec<Value> {
        self.audit_events()
            .into_iter()
            .filter(|e| e["event"] == name)
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

    // -----------------------------------------------------------------------
    // Metrics
    // -----------------------------------------------------------------------

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = send(plain_client().get(self.admin_url("/metrics"))).await;
        assert_eq!(r.status, 200, "GET /metrics");
        r.body
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

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
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
