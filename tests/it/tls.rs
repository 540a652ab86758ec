//! The production edge (SPEC.md `[listen]`, `[listen.tls]`, steps 2, 9 and 10, `upstream`):
//! trusted proxies and the effective scheme, the TLS listener (HTTP/1.1 and h2 by ALPN,
//! certificates by SNI, 421 for a host the certificate does not cover, nothing older than TLS
//! 1.2, certificates reloaded when their files change), and `https://` upstreams. Certificates
//! are made by the tests (rcgen), trusted only through a test CA.

use crate::common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOGIN: &str = "https://login.nixtech.app/?return_to={url}";

fn edge_site(up: SocketAddr) -> Site {
    Site::new(HOST, up)
        .unauthenticated("redirect")
        .login_url(LOGIN)
}

/// What the app got in the forwarding headers, and where a navigation without a session was
/// sent, for a request that claims to come from behind a TLS terminator.
async fn forwarded_view(sc: &Sidecar, up: &Upstream, path: &str) -> (Recorded, String) {
    let claimed: [(&str, &[u8]); 3] = [
        ("X-Forwarded-Proto", b"https"),
        ("X-Forwarded-For", b"203.0.113.7"),
        ("X-Forwarded-Host", b"www.cafe.example"),
    ];
    let cookie = session_cookie(&token(&claims()));
    let mut with_session = claimed.to_vec();
    with_session.push(("Cookie", cookie.as_bytes()));
    let r = sc.raw_get(HOST, path, &with_session).await;
    assert_eq!(r.status, 200, "{path}");
    let rec = up.find(path);
    let mut navigation = claimed.to_vec();
    navigation.push(("Sec-Fetch-Mode", b"navigate"));
    let r = sc.raw_get(HOST, "/orders/7.json?x=a.b", &navigation).await;
    assert_eq!(r.status, 302);
    (rec, r.header("location").unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_forwarding_headers_reach_the_app_and_others_are_replaced() {
    let up = spawn_upstream().await;

    // The test client connects from 127.0.0.1: a trusted peer here.
    let trusting = Sidecar::start(
        &Config::new()
            .trusted_proxies(&["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
            .site(edge_site(up.addr)),
    )
    .await;
    let (rec, location) = forwarded_view(&trusting, &up, "/trusted").await;
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "the peer is appended to the chain it sent"
    );
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("www.cafe.example")
    );
    // The return URL follows the effective scheme; `.` (unreserved) stays as it is.
    assert_eq!(
        location,
        "https://login.nixtech.app/?return_to=https%3A%2F%2Fcafe.nixtech.app%2Forders%2F7.json%3Fx%3Da.b"
    );

    // Anyone else: all three replaced by the proxy's own view.
    let strict = Sidecar::start(
        &Config::new()
            .trusted_proxies(&["10.0.0.0/8"])
            .site(edge_site(up.addr)),
    )
    .await;
    let (rec, location) = forwarded_view(&strict, &up, "/untrusted").await;
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("cafe.nixtech.app")
    );
    assert_eq!(
        location,
        "https://login.nixtech.app/?return_to=http%3A%2F%2Fcafe.nixtech.app%2Forders%2F7.json%3Fx%3Da.b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trusted_proxy_entry_is_a_config_error_naming_it() {
    let dir = TempDir::new();
    let config = Config::new()
        .trusted_proxies(&["10.0.0.0/8", "not-a-cidr"])
        .site(Site::new(HOST, free_addr()));
    let path = dir.write("bad.toml", &materialize(&config, &dir));
    let (code, _, err) = run_cli(
        &["check", "--config", &path.display().to_string()],
        &[(SECRET_ENV, SECRET)],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen.trusted_proxies[1]"), "{err}");
}

// ---------------------------------------------------------------------------
// The TLS listener
// ---------------------------------------------------------------------------

/// One HTTP/1.1 exchange over TLS with `sni`; returns the response and the leaf certificate the
/// proxy presented (DER).
async fn https_exchange(
    addr: SocketAddr,
    ca: &TestCa,
    sni: &str,
    request: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    tls.write_all(request).await.expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    (out, cert)
}

fn get_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn status_of(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A client for the TLS listener that trusts `ca` and resolves `hosts` to it.
fn https_client(sc: &Sidecar, ca: &TestCa, hosts: &[&str], http1_only: bool) -> reqwest::Client {
    let ca_cert =
        reqwest::Certificate::from_pem(std::fs::read(&ca.ca_file).expect("ca file").as_slice())
            .expect("ca cert");
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca_cert])
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    for h in hosts {
        b = b.resolve(h, sc.tls_addr);
    }
    b.build().expect("https client")
}

fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_speaks_h1_and_h2_with_the_certificate_sni_asks_for() {
    let up = spawn_upstream().await;
    let ca = TestCa::new("listener");
    let cafe = ca.leaf("cafe", &["cafe.nixtech.app"]);
    let shop = ca.leaf("shop", &["*.shop.nixtech.app"]);
    let sc = Sidecar::start(
        &Config::new()
            .tls(&[
                (&cafe.cert_file, &cafe.key_file),
                (&shop.cert_file, &shop.key_file),
            ])
            .site(Site::new(HOST, up.addr))
            .site(Site::new("*.shop.nixtech.app", up.addr)),
    )
    .await;
    let port = sc.tls_addr.port();
    let cookie = session_cookie(&token(&claims()));

    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let c = https_client(
            &sc,
            &ca,
            &["cafe.nixtech.app", "acme.shop.nixtech.app"],
            http1,
        );
        let path = format!("/tls/{http1}");
        let r = c
            .get(format!("https://cafe.nixtech.app:{port}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("https request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), version);
        assert_eq!(peer_cert(&r), cafe.cert_der, "the exact name's certificate");
        let rec = up.find(&path);
        assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(rec.header("x-auth-user-id").as_deref(), Some("user-42"));

        let r = c
            .get(format!(
                "https://acme.shop.nixtech.app:{port}/tls/shop/{http1}"
            ))
            .send()
            .await
            .expect("https request");
        assert_eq!(r.status(), 200);
        assert_eq!(peer_cert(&r), shop.cert_der, "the wildcard's certificate");
    }

    // No SNI a certificate names: the first one.
    let (resp, cert) = https_exchange(
        sc.tls_addr,
        &ca,
        "cafe.nixtech.app",
        &get_bytes("cafe.nixtech.app", "/tls/plain"),
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(cert, cafe.cert_der);

    // A Host the connection's certificate does not cover: 421, the app never asked.
    let (resp, _) = https_exchange(
        sc.tls_addr,
        &ca,
        "cafe.nixtech.app",
        &get_bytes("acme.shop.nixtech.app", "/tls/misdirected"),
    )
    .await;
    assert_eq!(status_of(&resp), 421, "{}", String::from_utf8_lossy(&resp));
    assert!(!up.received("/tls/misdirected"));
}

/// A TLS 1.1 ClientHello (RFC 4346), by hand: rustls cannot send one.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0xc0, 0x13]); // two cipher suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_older_than_1_2_is_refused() {
    let up = spawn_upstream().await;
    let ca = TestCa::new("versions");
    let cafe = ca.leaf("cafe", &["cafe.nixtech.app"]);
    let sc = Sidecar::start(
        &Config::new()
            .tls(&[(&cafe.cert_file, &cafe.key_file)])
            .site(Site::new(HOST, up.addr)),
    )
    .await;
    let mut s = TcpStream::connect(sc.tls_addr).await.expect("connect");
    s.write_all(&tls11_client_hello()).await.expect("hello");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(
        got.first() != Some(&0x16),
        "the server answered a TLS 1.1 hello with a handshake: {got:?}"
    );
    assert_eq!(
        got.first(),
        Some(&0x15),
        "an alert, then the close: {got:?}"
    );
    // TLS 1.2 and 1.3 both work.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca.ca_file).expect("ca") {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(sc.tls_addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("cafe.nixtech.app").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        assert!(tls.is_ok(), "{version:?}: {tls:?}");
    }
}

use rustls::pki_types::pem::PemObject as _;

/// Replaces `file` as cert-manager does: write a temporary file, rename it over.
fn replace_by_rename(file: &std::path::Path, contents: &str) {
    let tmp = file.with_extension("tmp-new");
    std::fs::write(&tmp, contents).expect("write new file");
    std::fs::rename(&tmp, file).expect("rename over");
}

/// Polls (bounded) until a new connection gets `want` as its certificate.
async fn wait_for_cert(sc: &Sidecar, ca: &TestCa, want: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (resp, cert) = https_exchange(
            sc.tls_addr,
            ca,
            "cafe.nixtech.app",
            &get_bytes("cafe.nixtech.app", "/tls/poll"),
        )
        .await;
        if cert == want {
            assert_eq!(status_of(&resp), 200);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_are_replaced_and_a_bad_pair_keeps_the_old() {
    let up = spawn_upstream().await;
    let ca = TestCa::new("reload");
    let first = ca.leaf("live", &["cafe.nixtech.app"]);
    let sc = Sidecar::start(
        &Config::new()
            .tls(&[(&first.cert_file, &first.key_file)])
            .site(Site::new(HOST, up.addr)),
    )
    .await;

    // A keep-alive connection opened on the first certificate.
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let tcp = TcpStream::connect(sc.tls_addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("cafe.nixtech.app").expect("name");
    let mut kept = connector.connect(name, tcp).await.expect("handshake");
    let conn_request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: cafe.nixtech.app\r\n\r\n").into_bytes();
    kept.write_all(&conn_request("/kept/1"))
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.expect("read");
    assert_eq!(status_of(&buf[..n]), 200);

    // cert-manager renews: new key and certificate, renamed over the old files.
    let second = ca.leaf("next", &["cafe.nixtech.app"]);
    replace_by_rename(&first.key_file, &second.key_pem);
    replace_by_rename(&first.cert_file, &second.cert_pem);
    wait_for_cert(&sc, &ca, &second.cert_der, "after the renewal").await;

    // The connection opened before still works.
    kept.write_all(&conn_request("/kept/2"))
        .await
        .expect("send");
    let n = kept.read(&mut buf).await.expect("read");
    assert_eq!(
        status_of(&buf[..n]),
        200,
        "the old connection after the reload"
    );
    assert!(up.received("/kept/2"));

    // A broken key: logged, counted, and the renewed certificate keeps serving.
    let errors = sc
        .metric("sessiongate_config_reload_total", &[("result", "error")])
        .await;
    replace_by_rename(
        &first.key_file,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    sc.wait_for_metric(
        "sessiongate_config_reload_total",
        &[("result", "error")],
        |v| v > errors,
    )
    .await;
    let (resp, cert) = https_exchange(
        sc.tls_addr,
        &ca,
        "cafe.nixtech.app",
        &get_bytes("cafe.nixtech.app", "/tls/after-bad-key"),
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(cert, second.cert_der, "the old pair keeps serving");
    assert!(
        sc.stderr().contains("listen.tls.certificates[0].key_file"),
        "the log names the key: {}",
        sc.stderr()
    );
    let expiry = sc
        .metric(
            "sessiongate_tls_certificate_expiry_seconds",
            &[("name", "cafe.nixtech.app")],
        )
        .await;
    assert!(
        expiry > now() as f64,
        "the certificate's expiry is exported: {expiry}"
    );
}

// ---------------------------------------------------------------------------
// https:// upstreams
// ---------------------------------------------------------------------------

/// A TLS terminator in front of `plain`, with `leaf`'s certificate: the "app" speaks TLS.
async fn tls_front(leaf: &Leaf, plain: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut app) = TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut app).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_its_ca() {
    let up = spawn_upstream().await;
    let ca = TestCa::new("upstream");
    let other_ca = TestCa::new("other");
    let leaf = ca.leaf("app", &["app.internal"]);
    let (app, _task) = tls_front(&leaf, up.addr).await;
    let https = |ca_file: &std::path::Path| {
        Site::new(HOST, app)
            .upstream(&format!("https://127.0.0.1:{}", app.port()))
            .upstream_tls(ca_file, "app.internal")
    };
    let sc = Sidecar::start(&Config::new().site(https(&ca.ca_file))).await;
    let r = send(sc.client().get(sc.url(HOST, "/over/tls"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(up.received("/over/tls"));

    // Another CA: the upstream's certificate does not verify, the app is never reached.
    let sc = Sidecar::start(&Config::new().site(https(&other_ca.ca_file))).await;
    let r = send(sc.client().get(sc.url(HOST, "/wrong/ca"))).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(!up.received("/wrong/ca"));
}
