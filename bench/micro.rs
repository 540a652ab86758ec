//! Criterion micro-benchmarks for sessiongate's per-request hot spots.
//!
//! ```text
//! cargo bench --bench micro                 # all of them
//! cargo bench --bench micro -- token        # one group
//! ```
//!
//! `cargo test --all-targets` runs each benchmark once (criterion's test mode), so these must
//! stay quick to set up and must never assert on timings.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{EncodingKey, Header, encode};
use pingora::http::RequestHeader;
use sessiongate::banner::encoding::{Coding, OutCoding};
use sessiongate::banner::rewrite::{BannerStream, Splice};
use sessiongate::config::Config;
use sessiongate::headers::{self, IdentityHeaders};
use sessiongate::liveness::{Liveness, LivenessChecker};
use sessiongate::policy::canonical_path;
use sessiongate::token::Verifier;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://api.bench.test";

/// A config like the load benchmark's; `liveness_port` is where the liveness URL points.
fn config(liveness_port: u16) -> Config {
    let toml = format!(
        r#"
[listen]
addr = "127.0.0.1:18080"

[admin]
addr = "127.0.0.1:0"

[token]
cookie = "nix_session"
cookie_domain = ".bench.test"
algorithms = ["HS256"]
secret_env = "BENCH_JWT_SECRET"
issuer = "{ISSUER}"
audience = ["nixtech"]

[liveness]
url = "http://127.0.0.1:{liveness_port}/i/{{sid}}"
end_url = "http://127.0.0.1:{liveness_port}/end"
cache_ttl = "10m"

[[site]]
host = "cafe.bench.test"
upstream = "127.0.0.1:9"
"#
    );
    let env: HashMap<String, String> =
        HashMap::from([("BENCH_JWT_SECRET".to_string(), SECRET.to_string())]);
    match Config::parse(&toml, "bench.toml", &env) {
        Ok(c) => c,
        Err(e) => panic!("bench config does not parse: {e}"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint(claims: &serde_json::Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint a bench token")
}

fn token(c: &mut Criterion) {
    let cfg = config(9);
    let verifier = Verifier::new(&cfg.token);
    let iat = now();
    let user = mint(&serde_json::json!({
        "sub": "u_1042", "tenant_id": "cafe", "email": "ana@cafe.example",
        "roles": ["staff", "billing"], "iss": ISSUER, "aud": "nixtech",
        "iat": iat, "exp": iat + 3600,
    }));
    let impersonated = mint(&serde_json::json!({
        "sub": "u_1042", "tenant_id": "cafe", "email": "ana@cafe.example",
        "roles": ["staff"], "iss": ISSUER, "aud": "nixtech",
        "iat": iat, "exp": iat + 1800,
        "imp": {"sid": "imp_7f3a", "admin_id": "a_9", "admin_email": "ops@nixtech.app",
                "reason": "ticket 4711"},
    }));
    // Sanity, not timing: the benchmark must measure the success path.
    assert!(verifier.verify(&user).is_ok(), "user token must verify");
    assert!(
        verifier
            .verify(&impersonated)
            .is_ok_and(|id| id.impersonation.is_some()),
        "impersonation token must verify"
    );
    let forged = format!("{}x", &user[..user.len() - 1]);

    let mut g = c.benchmark_group("token");
    g.bench_function("verify_hs256_user", |b| {
        b.iter(|| verifier.verify(black_box(&user)))
    });
    g.bench_function("verify_hs256_impersonation", |b| {
        b.iter(|| verifier.verify(black_box(&impersonated)))
    });
    g.bench_function("verify_hs256_bad_signature", |b| {
        b.iter(|| verifier.verify(black_box(&forged)))
    });
    g.finish();
}

fn path(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    g.bench_function("canonical_path_messy", |b| {
        b.iter(|| canonical_path(black_box("/a//b/../c?x=1")))
    });
    g.bench_function("canonical_path_plain", |b| {
        b.iter(|| canonical_path(black_box("/orders/2024/page?sort=desc")))
    });
    g.finish();
}

/// The upstream-request header work for a tenant user's page request: strip the identity
/// family, drop the session cookie, set `X-Forwarded-*`, inject the identity.
fn header_rewrite(c: &mut Criterion) {
    let cfg = config(9);
    let verifier = Verifier::new(&cfg.token);
    let iat = now();
    let token = mint(&serde_json::json!({
        "sub": "u_1042", "tenant_id": "cafe", "email": "ana@cafe.example",
        "roles": ["staff"], "iss": ISSUER, "aud": "nixtech", "iat": iat, "exp": iat + 3600,
    }));
    let identity = verifier.verify(&token).expect("bench token verifies");
    let names = IdentityHeaders::new("X-Auth-");
    let mut req = RequestHeader::build("GET", b"/orders", None).expect("request");
    for (k, v) in [
        ("Host", "cafe.bench.test"),
        (
            "Cookie",
            &format!("nix_session={token}; theme=dark") as &str,
        ),
        ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("Sec-Fetch-Dest", "document"),
        ("Accept-Encoding", "gzip"),
    ] {
        req.append_header(k.to_string(), v).expect("header");
    }

    let client = headers::Client {
        peer: "127.0.0.1".parse().ok(),
        trusted: false,
        tls: false,
    };
    let mut g = c.benchmark_group("headers");
    g.bench_function("upstream_rewrite_tenant", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                headers::strip_inbound(&mut r, &names, false);
                sessiongate::token::cookie::remove_session_cookie(&mut r, "nix_session", None);
                headers::set_forwarded(&mut r, &client, "cafe.bench.test").ok();
                headers::inject(&mut r, &names, &identity, None).ok();
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("insert_one_header", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                r.insert_header("x-dummy-one", "u_1042").ok();
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A liveness backend on loopback that says "live" to everything, for as long as the
/// runtime lives. Only the first (cache-filling) lookup reaches it.
async fn live_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bench liveness backend");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"active\":true}";
                        if sock.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn liveness(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let addr = rt.block_on(live_backend());
    let cfg = config(addr.port());
    let checker = LivenessChecker::new();
    let first = rt.block_on(checker.check(&cfg.liveness, "sid1", None, u64::MAX));
    assert_eq!(first, Ok(Liveness::Live), "the bench backend must say live");

    let mut g = c.benchmark_group("liveness");
    g.bench_function("check_cache_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let r = checker
                        .check(&cfg.liveness, black_box("sid1"), None, u64::MAX)
                        .await;
                    black_box(r).ok();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// The load benchmark's page shape: a 150-row table, an inline script in the head.
fn bench_page() -> Vec<u8> {
    let rows: String = (0..150)
        .map(|i| {
            format!("<tr><td>#{i}</td><td>Flat white and a croissant</td><td>$4.{i:02}</td></tr>")
        })
        .collect();
    format!(
        "<!doctype html><html><head><title>Orders</title><script>window.app={{page:'orders'}}</script>\
         </head><body class=\"app\" data-page=\"orders\"><table>{rows}</table></body></html>"
    )
    .into_bytes()
}

fn splice(page: &[u8], coding: Coding, out: OutCoding) -> usize {
    let splice = Splice {
        render: Box::new(|_| "<div id=\"sessiongate-banner\">banner</div>".to_string()),
        authority: "cafe.bench.test".into(),
        nonce: "n".into(),
        script_nonce: false,
    };
    let mut s = match BannerStream::new(coding, out, splice) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let mut n = 0;
    // Pingora hands the body over in chunks; 4 KiB is typical for a small page.
    for chunk in page.chunks(4096) {
        n += s.push(chunk).map_or(0, |v| v.len());
    }
    n + s.finish().map_or(0, |v| v.len())
}

/// Banner rewrite throughput (criterion prints MB/s): plain HTML in and out, and the
/// impersonated-page path of the load benchmark (identity in, banner, gzip level 1 out).
fn banner(c: &mut Criterion) {
    let page = bench_page();
    let mut g = c.benchmark_group("banner");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function("identity_in_identity_out", |b| {
        b.iter(|| splice(black_box(&page), Coding::Identity, OutCoding::Identity))
    });
    g.bench_function("identity_in_gzip_out", |b| {
        b.iter(|| splice(black_box(&page), Coding::Identity, OutCoding::Gzip))
    });
    g.finish();
}

fn settings() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = settings();
    targets = token, path, header_rewrite, liveness, banner
}
criterion_main!(benches);
