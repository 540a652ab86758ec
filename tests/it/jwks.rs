//! Key rotation through a JWKS endpoint (SPEC.md `token.jwks_url`), black-box: keys rotate
//! mid-run, an unknown `kid` refreshes at most once per 5 s window (concurrent callers sharing
//! the fetch), forgeries around the rotation are refused, and a broken endpoint keeps the
//! previous keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The public key of `file` (n, e) as a JWK with `kid`.
fn jwk(file: &str, kid: &str) -> Value {
    let text = std::fs::read_to_string(fixture(file)).expect("read JWK fixture");
    let mut v: Value = serde_json::from_str(&text).expect("JWK fixture is JSON");
    v["kid"] = json!(kid);
    v["alg"] = json!("RS256");
    v["use"] = json!("sig");
    v
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// RS256 with the fixture key `private_pem`, the header naming `kid`.
fn mint_kid(private_pem: &str, kid: &str, claims: &Value) -> String {
    mint_rs256_with(private_pem, Some(kid), claims)
}

/// A JWKS endpoint whose answer the test switches, counting fetches.
struct JwksServer {
    server: Upstream,
    answer: Arc<Mutex<(u16, String)>>,
}

impl JwksServer {
    async fn spawn(body: String) -> JwksServer {
        let answer = Arc::new(Mutex::new((200, body)));
        let a = answer.clone();
        let server = spawn_upstream_with(move |_| {
            let (status, body) = a.lock().expect("jwks answer lock").clone();
            Reply::typed("application/json", body.as_bytes())
                .status(status)
                // Slow enough for concurrent refreshes to overlap.
                .delay(Duration::from_millis(300))
        })
        .await;
        JwksServer { server, answer }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.server.addr)
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().expect("jwks answer lock") = (status, body);
    }

    fn fetches(&self) -> usize {
        self.server.count()
    }
}

/// Sends the token; returns the user id the upstream was given, if any.
async fn identity_with(sc: &Sidecar, up: &Upstream, token: &str) -> Option<String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let target = format!("/jwks-probe/{}", N.fetch_add(1, Ordering::SeqCst));
    let r = sc
        .client()
        .get(sc.url(HOST, &target))
        .header("cookie", session_cookie(token))
        .header("accept", "application/json")
        .send()
        .await
        .expect("request to the proxy");
    assert_eq!(r.status(), 200, "{target}: unauthenticated = pass forwards");
    up.find(&target).header("x-auth-user-id")
}

/// Sleeps until `since + 5.5 s` (the refresh window has passed).
async fn past_refresh_window(since: Instant) {
    let until = since + Duration::from_millis(5500);
    let now = Instant::now();
    if until > now {
        tokio::time::sleep(until - now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_mid_run() {
    let jwks_server = JwksServer::spawn(jwks(&[jwk("rsa_public.jwk.json", "k1")])).await;
    let up = spawn_upstream().await;
    let sc = Sidecar::start(
        &Config::new()
            .token(Token::jwks(&jwks_server.url()))
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let k1 = mint_kid("rsa_private.pem", "k1", &claims());
    let k2 = mint_kid("rsa2_private.pem", "k2", &claims());

    // {k1}: accepted; later tokens use the keys at hand.
    let f0 = jwks_server.fetches();
    assert_eq!(
        identity_with(&sc, &up, &k1).await.as_deref(),
        Some("user-42"),
        "k1 token"
    );
    let last_fetch = Instant::now();
    let f1 = jwks_server.fetches();
    assert!(
        f1 >= 1 && f1 <= f0 + 1,
        "JWKS fetches: {f0} before, {f1} after the first token"
    );
    for _ in 0..5 {
        assert_eq!(
            identity_with(&sc, &up, &k1).await.as_deref(),
            Some("user-42")
        );
    }
    assert_eq!(jwks_server.fetches(), f1, "a known kid caused a fetch");

    // Rotation to {k2}.
    jwks_server.serve(200, jwks(&[jwk("rsa2_public.jwk.json", "k2")]));
    past_refresh_window(last_fetch).await;
    assert_eq!(
        identity_with(&sc, &up, &k2).await.as_deref(),
        Some("user-42"),
        "k2 token after the rotation"
    );
    let rotated = Instant::now();
    assert_eq!(jwks_server.fetches(), f1 + 1, "one refetch for the new kid");
    assert_eq!(
        identity_with(&sc, &up, &k1).await,
        None,
        "k1 after the refresh removed it"
    );
    assert_eq!(
        identity_with(&sc, &up, &k2).await.as_deref(),
        Some("user-42")
    );

    // Forgeries around the rotation.
    let wrong_key = mint_kid("rsa_private.pem", "k2", &claims());
    assert_eq!(
        identity_with(&sc, &up, &wrong_key).await,
        None,
        "k1's key under kid k2"
    );
    let public_pem = std::fs::read(fixture("rsa2_public.pem")).expect("public pem");
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("k2".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(),
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("HS256 token");
    assert_eq!(
        identity_with(&sc, &up, &confused).await,
        None,
        "HS256 with the public key"
    );
    assert_eq!(jwks_server.fetches(), f1 + 1, "no fetch within the window");

    // Random unknown kids: at most one fetch per 5 s window, concurrent
    // callers sharing it.
    past_refresh_window(rotated).await;
    let before = jwks_server.fetches();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = sc.client();
        let url = sc.url(HOST, &format!("/unknown-kid/{i}"));
        let t = mint_kid("rsa2_private.pem", &format!("rnd-{i}-{}", now()), &claims());
        set.spawn(async move {
            c.get(url)
                .header("cookie", session_cookie(&t))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task").expect("request"), 200);
    }
    for i in 20..40 {
        let t = mint_kid("rsa2_private.pem", &format!("rnd-{i}"), &claims());
        assert_eq!(identity_with(&sc, &up, &t).await, None, "unknown kid {i}");
    }
    let windows = started.elapsed().as_secs() as usize / 5 + 1;
    let extra = jwks_server.fetches() - before;
    assert!(
        extra >= 1,
        "an unknown kid after the window caused no refresh"
    );
    assert!(
        extra <= windows,
        "40 unknown-kid tokens caused {extra} fetches within {windows} refresh window(s)"
    );
    for i in 0..20 {
        let got = up.find(&format!("/unknown-kid/{i}"));
        assert_eq!(
            got.identity(),
            Vec::<(String, String)>::new(),
            "unknown kid {i}"
        );
    }

    // A broken JWKS endpoint keeps the previous keys.
    for (status, body) in [(500, "oops".to_string()), (200, "not json".to_string())] {
        jwks_server.serve(status, body);
        past_refresh_window(Instant::now()).await;
        let before = jwks_server.fetches();
        let t = mint_kid("rsa2_private.pem", "k-missing", &claims());
        assert_eq!(identity_with(&sc, &up, &t).await, None);
        assert_eq!(
            jwks_server.fetches(),
            before + 1,
            "refresh attempt ({status})"
        );
        assert_eq!(
            identity_with(&sc, &up, &k2).await.as_deref(),
            Some("user-42"),
            "k2 after a failed refresh ({status})"
        );
    }
    sc.assert_healthy().await;
}
