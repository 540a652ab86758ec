//! Running at scale (SPEC.md "Running at scale", `liveness.redis_url_env`): revocations fan
//! out to every replica through Redis pub/sub, black-box. Every replica is a real
//! `sessiongate` process on loopback; they share one recording upstream, one scriptable
//! platform backend and one `redis-server` started by the test on a free loopback port.
//!
//! `cache_ttl` is 30 s everywhere and the backend keeps answering live for the sessions that
//! get ended, so a replica that refuses a cookie soon after another replica ended it can only
//! have learnt it through the fan-out.

use crate::common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHANNEL: &str = "sessiongate:revocations";

const CONNECTED: &str = "sessiongate_redis_connected";
const DISCONNECTS: &str = "sessiongate_redis_disconnects_total";
const PUBLISHED: &str = "sessiongate_redis_revocations_published_total";
const RECEIVED: &str = "sessiongate_redis_revocations_received_total";
const IGNORED: &str = "sessiongate_redis_messages_ignored_total";

/// How often the "within 1 s" checks ask again.
const POLL: Duration = Duration::from_millis(20);
/// The bound on every wait that is not the contract itself (slow CI machines are fine).
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// A `redis-server` child on 127.0.0.1, no persistence; killed on drop. With TLS, the replicas
/// speak `rediss://` to its TLS port (a test certificate for 127.0.0.1, trusted through
/// `SSL_CERT_FILE`), and the test's own commands use its plain port.
struct Redis {
    port: u16,
    tls: Option<RedisTls>,
    child: Option<Child>,
    log: std::path::PathBuf,
    _dir: TempDir,
}

struct RedisTls {
    port: u16,
    ca: TestCa,
    leaf: Leaf,
}

impl Redis {
    /// Starts it on a free loopback port (and, with `tls`, a TLS port too, as managed Redis
    /// services require) and waits until it answers `PING`.
    async fn start_with(tls: bool) -> Redis {
        let dir = TempDir::new();
        let tls = tls.then(|| {
            let ca = TestCa::new("redis");
            let leaf = ca.leaf("redis", &["127.0.0.1", "localhost"]);
            RedisTls {
                port: free_port(),
                ca,
                leaf,
            }
        });
        let mut r = Redis {
            port: free_port(),
            tls,
            child: None,
            log: dir.path().join("redis.log"),
            _dir: dir,
        };
        r.spawn().await;
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The value of `SG_REDIS_URL` for the replicas.
    fn url(&self) -> String {
        match &self.tls {
            Some(t) => format!("rediss://127.0.0.1:{}", t.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts the server on `self.port` and waits (bounded) for `PONG`.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("redis log file");
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if let Some(t) = &self.tls {
            for (k, v) in [
                ("--tls-port", t.port.to_string()),
                ("--tls-cert-file", t.leaf.cert_file.display().to_string()),
                ("--tls-key-file", t.leaf.key_file.display().to_string()),
                ("--tls-ca-cert-file", t.ca.ca_file.display().to_string()),
                ("--tls-auth-clients", "no".to_string()),
            ] {
                args.push(k.to_string());
                args.push(v);
            }
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); .ci/run installs it (apt redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                panic!(
                    "redis-server exited ({status}) before answering; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_secs(2), self.try_command(&["PING"])).await
                && reply == "+PONG"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer PING after 30 s; log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as an outage looks to the replicas: connections just break.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command in RESP; returns the first reply line without its CRLF
    /// (`+PONG`, `:3`, `-ERR …`). Enough for PING and PUBLISH.
    async fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(self.addr()).await?;
        s.write_all(&out).await?;
        let mut buf = Vec::new();
        let mut tmp = [0u8; 512];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        Ok(text.split("\r\n").next().unwrap_or("").to_string())
    }

    /// `PUBLISH sessiongate:revocations payload`, as the platform backend would;
    /// returns how many subscribers got it.
    async fn publish(&self, payload: &str) -> u64 {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.try_command(&["PUBLISH", CHANNEL, payload]),
        )
        .await
        .expect("PUBLISH got no answer within 10 s")
        .expect("PUBLISH to redis-server");
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("PUBLISH answered {reply:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------

/// `n` replicas with their own ports, the same upstream, backend and Redis, and the same CSRF
/// secret (an End form from one replica is good on all).
async fn replicas(n: usize, backend: &Backend, up: &Upstream, redis: &Redis) -> Vec<Sidecar> {
    let mut config = Config::new()
        .admin_token()
        .liveness(Liveness::on(backend).cache_ttl("30s").redis(&redis.url()))
        .banner_csrf_secret()
        .site(Site::new(HOST, up.addr));
    if let Some(t) = &redis.tls {
        // The system's roots, as rustls reads them: here the test CA only.
        config = config.with_env("SSL_CERT_FILE", &t.ca.ca_file.display().to_string());
    }
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Sidecar::start(&config).await);
    }
    v
}

/// `/page` is HTML with a `<body>` (so it gets the banner), everything else JSON.
async fn upstream() -> Upstream {
    spawn_upstream_with(|rec| {
        if rec.path() == "/page" {
            Reply::html(b"<!DOCTYPE html>\n<html><head><title>p</title></head><body><h1>Orders</h1></body></html>\n")
        } else {
            Reply::typed("application/json", b"[]")
        }
    })
    .await
}

/// `/readyz` once the replica has loaded the stored revocations: an outage after that does not
/// make it unready (it still serves, on cache_ttl), so every answer here must be 200.
async fn readyz(sc: &Sidecar) -> String {
    let r = send(plain_client().get(sc.admin_url("/readyz"))).await;
    assert_eq!(r.status, 200, "GET /readyz: {:?}", r.body);
    r.body
}

fn says_connected(readyz: &str) -> bool {
    readyz.lines().any(|l| l.trim() == "redis: connected")
}

/// `redis: disconnected for Ns; revocations from other replicas fall back to cache_ttl`.
fn says_disconnected(readyz: &str) -> bool {
    readyz.lines().any(|l| {
        let Some(rest) = l.trim().strip_prefix("redis: disconnected for ") else {
            return false;
        };
        let Some((secs, tail)) = rest.split_once("s; ") else {
            return false;
        };
        !secs.is_empty()
            && secs.chars().all(|c| c.is_ascii_digit())
            && tail == "revocations from other replicas fall back to cache_ttl"
    })
}

/// Polls (bounded) until every replica says, in `/readyz` and in the gauge, that its link
/// to Redis is `up` (or down).
async fn wait_link(scs: &[&Sidecar], up: bool) {
    let deadline = Instant::now() + PATIENCE;
    for (i, sc) in scs.iter().enumerate() {
        // A replica that just started is unready (503) until its first load from Redis.
        while up
            && send(plain_client().get(sc.admin_url("/readyz")))
                .await
                .status
                == 503
        {
            assert!(Instant::now() < deadline, "replica {i}: never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let text = readyz(sc).await;
            let gauge = sc.metric(CONNECTED, &[]).await;
            let ok = if up {
                says_connected(&text) && gauge == 1.0
            } else {
                says_disconnected(&text) && gauge == 0.0
            };
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: waited 30 s for the Redis link to be {}; /readyz {text:?}, {CONNECTED} {gauge}",
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A `fetch()`-style call to `/api/orders`: not a navigation.
async fn api(sc: &Sidecar, cookie: &str) -> Resp {
    send(api_call(
        sc.client().get(sc.url(HOST, "/api/orders")),
        cookie,
    ))
    .await
}

async fn assert_live(what: &str, sc: &Sidecar, cookie: &str) {
    let r = api(sc, cookie).await;
    assert_eq!(r.status, 200, "{what}: body {:?}", r.body);
}

/// The ended treatment, for a non-navigation and for a navigation.
async fn assert_refused(what: &str, sc: &Sidecar, cookie: &str) {
    let r = api(sc, cookie).await;
    assert_eq!(r.status, 401, "{what}: API call (body {:?})", r.body);
    assert_eq!(
        without_request_id(&r.body),
        ENDED_BODY,
        "{what}: API call body"
    );
    let r = send(navigate(sc.client().get(sc.url(HOST, "/page")), cookie)).await;
    assert_eq!(
        r.status,
        302,
        "{what}: navigation (body {:?}, Location {:?})",
        r.body,
        r.header("location")
    );
}

/// The contract (SPEC.md "Running at scale": every replica must stop honouring an ended
/// session *within a second*) is the one time bound these tests assert. From the moment
/// the End/revoke/publish that caused it has returned, polls every replica in `names`
/// every 20 ms for up to 1 s until each refuses the cookie. A replica fails only on a 200
/// to a request *sent* after the deadline, so a slow answer on a loaded machine is not
/// mistaken for a late revocation.
async fn assert_refused_within_1s(what: &str, scs: &[(&str, &Sidecar)], cookie: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pending: Vec<(&str, &Sidecar)> = scs.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (name, sc) in pending {
            let sent = Instant::now();
            let r = api(sc, cookie).await;
            match r.status {
                401 => assert_eq!(
                    without_request_id(&r.body),
                    ENDED_BODY,
                    "{what}: replica {name}: body"
                ),
                200 => {
                    assert!(
                        sent < deadline,
                        "{what}: replica {name} still honours the session 1 s after the end"
                    );
                    still.push((name, sc));
                }
                s => panic!("{what}: replica {name} answered {s} {:?}", r.body),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    for (name, sc) in scs {
        assert_refused(&format!("{what}: replica {name}"), sc, cookie).await;
    }
}

/// Ends the session through the banner's End button on `sc`: GET a page for the banner's
/// csrf, then the form POST with this site's exact Origin.
async fn end_via_banner(sc: &Sidecar, cookie: &str) {
    let csrf = sc.csrf_for(cookie).await;
    let r = sc.end_with_form(cookie, &csrf, "application/json").await;
    assert_eq!(r.status, 200, "End: {:?}", r.body);
    assert_eq!(r.json(), json!({"ended": true}), "End answer");
}

async fn metrics_of(scs: &[&Sidecar], name: &str) -> Vec<f64> {
    let mut v = Vec::new();
    for sc in scs {
        v.push(sc.metric(name, &[]).await);
    }
    v
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stop_honouring_an_ended_session_within_a_second() {
    three_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stop_honouring_an_ended_session_within_a_second_over_tls_redis() {
    three_replicas(true).await;
}

async fn three_replicas(tls: bool) {
    let redis = Redis::start_with(tls).await;
    let backend = spawn_backend().await;
    let up = upstream().await;
    let scs = replicas(3, &backend, &up, &redis).await;
    let (a, b, c) = (&scs[0], &scs[1], &scs[2]);
    let all = [a, b, c];
    wait_link(&all, true).await;
    // Subscribed, all three: the channel has exactly our three replicas on it.
    assert_eq!(
        redis.publish(r#"{"v":1,"sid":"nobody-uses-this"}"#).await,
        3,
        "subscribers on {CHANNEL}"
    );
    // That message counts as received everywhere (it has no origin): wait for it, so the
    // baselines below are settled.
    for sc in all {
        sc.wait_for_metric(RECEIVED, &[], |v| v >= 1.0).await;
    }
    let received0 = metrics_of(&all, RECEIVED).await;
    let published0 = metrics_of(&all, PUBLISHED).await;
    let ignored0 = metrics_of(&all, IGNORED).await;

    // Four sessions, each live on every replica (one backend call per replica, then cached).
    let sids = ["scale-end", "scale-revoke", "scale-backend", "scale-v2"];
    for sid in sids {
        let cookie = imp_cookie(sid);
        for round in 0..2 {
            for (name, sc) in [("A", a), ("B", b), ("C", c)] {
                assert_live(&format!("{sid} on {name}, round {round}"), sc, &cookie).await;
            }
        }
        assert_eq!(
            backend.calls_for(sid),
            3,
            "{sid}: one backend call per replica, then the 30 s cache"
        );
    }

    // 1. The End button on A: B and C refuse within 1 s.
    let cookie = imp_cookie("scale-end");
    end_via_banner(a, &cookie).await;
    assert_refused("scale-end on A right after End", a, &cookie).await;
    assert_refused_within_1s("End on A", &[("B", b), ("C", c)], &cookie).await;

    // 2. An admin revoke on B: A and C refuse within 1 s.
    let cookie = imp_cookie("scale-revoke");
    b.revoke("scale-revoke").await;
    assert_refused("scale-revoke on B right after the revoke", b, &cookie).await;
    assert_refused_within_1s("admin revoke on B", &[("A", a), ("C", c)], &cookie).await;

    // 3. The platform backend publishes the end itself (only v and sid are required):
    //    all three refuse within 1 s.
    let cookie = imp_cookie("scale-backend");
    let n = redis
        .publish(
            &json!({"v": 1, "sid": "scale-backend", "ended_by": "backend", "ts": now()})
                .to_string(),
        )
        .await;
    assert_eq!(n, 3, "subscribers that got the backend's message");
    assert_refused_within_1s(
        "message published by the backend",
        &[("A", a), ("B", b), ("C", c)],
        &cookie,
    )
    .await;

    // None of these refusals came from the backend: it still answers live, and was not asked.
    for sid in ["scale-end", "scale-revoke", "scale-backend"] {
        assert_eq!(
            backend.calls_for(sid),
            3,
            "{sid}: a refusal went to the backend instead of coming from the fan-out"
        );
    }

    // 4. A message of another version, and one that is not JSON at all: ignored and counted
    //    by every replica, and the session stays live.
    let v2 = json!({"v": 2, "sid": "scale-v2", "ended_by": "backend", "ts": now()}).to_string();
    assert_eq!(redis.publish(&v2).await, 3, "subscribers that got v2");
    assert_eq!(
        redis.publish("scale-v2").await,
        3,
        "subscribers that got garbage"
    );
    for (i, sc) in all.iter().enumerate() {
        sc.wait_for_metric(IGNORED, &[], |v| v >= ignored0[i] + 2.0)
            .await;
    }
    let cookie = imp_cookie("scale-v2");
    for (name, sc) in [("A", a), ("B", b), ("C", c)] {
        assert_live(
            &format!("scale-v2 on {name} after a v2 message"),
            sc,
            &cookie,
        )
        .await;
    }
    assert_eq!(backend.calls_for("scale-v2"), 3, "scale-v2 stayed cached");

    // The counters, exactly: each replica published its own end once and received every end
    // but its own (the backend's message counts on all three).
    for (i, (name, want_pub, want_recv)) in [("A", 1.0, 2.0), ("B", 1.0, 2.0), ("C", 0.0, 3.0)]
        .into_iter()
        .enumerate()
    {
        let sc = all[i];
        sc.wait_for_metric(PUBLISHED, &[], |v| v >= published0[i] + want_pub)
            .await;
        assert_eq!(
            sc.metric(PUBLISHED, &[]).await - published0[i],
            want_pub,
            "replica {name}: {PUBLISHED}"
        );
        assert_eq!(
            sc.metric(RECEIVED, &[]).await - received0[i],
            want_recv,
            "replica {name}: {RECEIVED}"
        );
        assert_eq!(
            sc.metric(IGNORED, &[]).await - ignored0[i],
            2.0,
            "replica {name}: {IGNORED}"
        );
        assert_eq!(sc.metric(CONNECTED, &[]).await, 1.0, "replica {name}");
        assert_eq!(sc.metric(DISCONNECTS, &[]).await, 0.0, "replica {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_cache_ttl_and_the_reconnect_drops_old_live_answers() {
    redis_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_outage_falls_back_to_cache_ttl_and_the_reconnect_drops_old_live_answers() {
    redis_outage(true).await;
}

async fn redis_outage(tls: bool) {
    let mut redis = Redis::start_with(tls).await;
    let backend = spawn_backend().await;
    let up = upstream().await;
    let scs = replicas(2, &backend, &up, &redis).await;
    let (a, b) = (&scs[0], &scs[1]);
    wait_link(&[a, b], true).await;

    // Live and cached on both replicas before the outage.
    let revoked = imp_cookie("outage-revoked");
    let cached = imp_cookie("outage-cached");
    for (what, cookie) in [("outage-revoked", &revoked), ("outage-cached", &cached)] {
        for (name, sc) in [("A", a), ("B", b)] {
            assert_live(&format!("{what} on {name} before the outage"), sc, cookie).await;
        }
    }
    assert_eq!(backend.calls_for("outage-revoked"), 2);
    assert_eq!(backend.calls_for("outage-cached"), 2);

    // Redis goes away: both replicas say so, and keep serving from their cache.
    redis.kill();
    wait_link(&[a, b], false).await;
    for sc in [a, b] {
        assert_eq!(sc.metric(DISCONNECTS, &[]).await, 1.0, "{DISCONNECTS}");
    }
    for (what, cookie) in [("outage-revoked", &revoked), ("outage-cached", &cached)] {
        for (name, sc) in [("A", a), ("B", b)] {
            assert_live(&format!("{what} on {name} during the outage"), sc, cookie).await;
        }
    }
    assert_eq!(backend.calls_for("outage-revoked"), 2, "served from cache");
    assert_eq!(backend.calls_for("outage-cached"), 2, "served from cache");

    // A revoke on A while Redis is down: A refuses at once; B cannot know and, as documented,
    // falls back to cache_ttl: it still serves the cached live answer.
    a.revoke("outage-revoked").await;
    assert_refused("revoked on A during the outage", a, &revoked).await;
    assert_live("revoked on A, asked on B during the outage", b, &revoked).await;

    // The backend now says both sessions are over (the revoked one was ended for real).
    backend.set_for("outage-revoked", 410, "");
    backend.set_for("outage-cached", 410, "");

    // Redis comes back on the same port; both replicas reconnect.
    redis.spawn().await;
    wait_link(&[a, b], true).await;

    // B dropped the live answer it cached before the outage: its next request for a session
    // that nobody revoked through Redis goes to the backend again, which says ended.
    let before = backend.calls_for("outage-cached");
    let r = api(b, &cached).await;
    assert_eq!(
        backend.calls_for("outage-cached"),
        before + 1,
        "after reconnecting, B answered {} from a live answer it cached before the outage \
         instead of asking the backend again",
        r.status
    );
    assert_refused("outage-cached on B after the reconnect", b, &cached).await;

    // The session revoked on A during the outage is refused by B too now (through A's
    // queued message or through the dropped cache and the backend, either way at once).
    assert_refused("outage-revoked on B after the reconnect", b, &revoked).await;
    assert_refused("outage-revoked on A after the reconnect", a, &revoked).await;

    for sc in [a, b] {
        assert_eq!(sc.metric(DISCONNECTS, &[]).await, 1.0, "{DISCONNECTS}");
    }
}
