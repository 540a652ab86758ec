//! Operations: the all-in-one `demo`, `token mint` / `token inspect`, and
//! SIGHUP config reloads (a site added under load without a dropped request,
//! an invalid config or a changed listener refused while the old one keeps
//! serving, in-flight requests finishing on the old config), and the process's
//! opt-out of transparent huge pages. Graceful SIGTERM is covered in `cli`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const RELOADS: &str = "sessiongate_config_reload_total";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn read_config(sc: &Sidecar) -> String {
    std::fs::read_to_string(&sc.config_path).expect("read config")
}

/// The verdict line of `token inspect` (`accepted` or `refused: ...`).
fn verdict(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Our HS256 secret, and another one.
const OURS: (&str, &str) = (SECRET_ENV, SECRET);
const OTHER: (&str, &str) = ("SG_TEST_OTHER_SECRET", "a-completely-different-secret-4242");

/// `token mint` for user `u1` of tenant `acme` plus the `more` flags, signed with the secret
/// that the variable `secret.0` holds (`secret.1`); returns the printed token.
async fn mint_u1_of_acme(secret: (&str, &str), more: &[&str]) -> String {
    let mut args = vec![
        "token",
        "mint",
        "--secret-env",
        secret.0,
        "--sub",
        "u1",
        "--tenant",
        "acme",
    ];
    args.extend_from_slice(more);
    let (code, out, err) = run_cli(&args, &[secret]).await;
    assert_eq!(
        code,
        Some(0),
        "token mint {args:?}: stdout {out:?} stderr {err:?}"
    );
    let token = out.trim().to_string();
    assert_eq!(
        token.split('.').count(),
        3,
        "token mint printed no compact JWS: {out:?}"
    );
    token
}

async fn inspect_cli(config: &Path, host: Option<&str>, token: &str) -> (Option<i32>, String) {
    let config = config.display().to_string();
    let mut args = vec!["token", "inspect", "--config", config.as_str()];
    if let Some(h) = host {
        args.extend_from_slice(&["--host", h]);
    }
    args.push(token);
    let (code, out, err) = run_cli(&args, &[(SECRET_ENV, SECRET)]).await;
    assert!(
        !out.contains(SECRET) && !err.contains(SECRET),
        "inspect printed the secret"
    );
    (code, format!("{out}\n--- stderr ---\n{err}"))
}

fn stdout_part(combined: &str) -> &str {
    combined
        .split("\n--- stderr ---\n")
        .next()
        .unwrap_or(combined)
}

// ---------------------------------------------------------------------------
// demo
// ---------------------------------------------------------------------------

/// `sessiongate demo` as a child process whose stdout is collected.
struct Demo {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr_path: std::path::PathBuf,
    _dir: TempDir,
}

impl Demo {
    async fn start(port: u16) -> Demo {
        let dir = TempDir::new();
        let stderr_path = dir.path().join("demo-stderr.log");
        let mut child = tokio::process::Command::new(bin())
            .args(["demo", "--port", &port.to_string()])
            .env_remove(SECRET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sessiongate demo");
        let stdout = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take().expect("demo stdout");
        let sink = stdout.clone();
        // Keeps draining (audit lines go to stdout too) so the demo never blocks.
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().expect("stdout lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Demo {
            child,
            stdout,
            stderr_path,
            _dir: dir,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("demo pid")
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "sessiongate demo exited ({status})\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Waits (bounded) until stdout holds both login URLs; returns them.
    async fn login_urls(&mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.stdout();
            if let (Some(user), Some(admin)) = (
                url_ending(&out, "/login/user"),
                url_ending(&out, "/login/admin"),
            ) {
                return (user, admin);
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "demo printed no login URLs within 60 s; stdout:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The first `http://cafe.localhost:PORT...` URL in `text` that ends with `suffix`.
fn url_ending(text: &str, suffix: &str) -> Option<String> {
    const START: &str = "http://cafe.localhost:";
    let mut rest = text;
    while let Some(i) = rest.find(START) {
        let candidate = &rest[i..];
        let end = candidate
            .find(|c: char| c.is_whitespace())
            .unwrap_or(candidate.len());
        let url = &candidate[..end];
        if url.ends_with(suffix) {
            return Some(url.to_string());
        }
        rest = &candidate[START.len()..];
    }
    None
}

fn port_of(url: &str) -> u16 {
    let after = url
        .strip_prefix("http://cafe.localhost:")
        .unwrap_or_else(|| panic!("not a cafe.localhost URL: {url}"));
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in {url}"))
}

/// A client that sends every `cafe.localhost` request to loopback, keeping
/// the URL's port, and never follows redirects.
fn demo_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .resolve(
            "cafe.localhost",
            "127.0.0.1:0".parse::<SocketAddr>().expect("addr"),
        )
        .build()
        .expect("client")
}

/// Follows a login URL: `302` to the app with the session cookie; returns
/// (`nix_session=<jwt>`, the Location).
async fn sign_in(c: &reqwest::Client, login_url: &str) -> (String, String) {
    let r = c.get(login_url).send().await.expect("GET login URL");
    assert_eq!(r.status(), 302, "{login_url}");
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{login_url}: 302 without Location"))
        .to_string();
    let set_cookie: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let session = set_cookie
        .iter()
        .find(|c| c.starts_with(&format!("{COOKIE}=")))
        .unwrap_or_else(|| panic!("{login_url}: no {COOKIE} cookie in {set_cookie:?}"));
    let attrs: Vec<String> = session
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["path=/", "httponly", "samesite=lax", "secure"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "{login_url}: cookie lacks {want}: {session}"
        );
    }
    let pair = session
        .split(';')
        .next()
        .expect("cookie pair")
        .trim()
        .to_string();
    let jwt = pair.trim_start_matches(&format!("{COOKIE}="));
    assert_eq!(jwt.split('.').count(), 3, "cookie is not a JWT: {session}");
    (pair, location)
}

async fn whoami(c: &reqwest::Client, app: &str, cookie: &str) -> Value {
    let r = c
        .get(format!("{app}/api/whoami"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET /api/whoami");
    assert_eq!(r.status(), 200, "/api/whoami");
    let text = r.text().await.expect("whoami body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/api/whoami not JSON ({e}): {text}"))
}

/// The first start tag right after `<body class="demo">`, if the body tag is there.
fn tag_after_body(html: &str) -> Option<&str> {
    const BODY: &str = "<body class=\"demo\">";
    let rest = &html[html.find(BODY)? + BODY.len()..];
    if !rest.starts_with('<') {
        return Some("");
    }
    Some(&rest[..rest.find('>').map_or(rest.len(), |i| i + 1)])
}

async fn post_password(c: &reqwest::Client, app: &str, cookie: &str) -> u16 {
    c.post(format!("{app}/settings/password"))
        .header("cookie", cookie)
        .header("origin", app.to_string())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("p=hunter2")
        .send()
        .await
        .expect("POST /settings/password")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_login_urls_show_identity_headers_and_the_banner() {
    let port = free_port();
    let mut demo = Demo::start(port).await;
    let (user_url, admin_url) = demo.login_urls().await;
    let out = demo.stdout();
    let app = format!("http://cafe.localhost:{port}");
    assert!(
        out.lines()
            .any(|l| l.contains("The app behind the proxy:") && l.contains(&format!("{app}/"))),
        "stdout does not name the app URL {app}/:\n{out}"
    );
    let backend_port = port_of(&user_url);
    assert_eq!(
        backend_port,
        port_of(&admin_url),
        "both login URLs on the platform backend"
    );
    assert_ne!(
        backend_port, port,
        "login URLs point at the backend, not the proxy"
    );

    // The URLs are printed before the listeners are up: wait for both.
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in [port, backend_port] {
        let addr: SocketAddr = format!("127.0.0.1:{p}").parse().expect("addr");
        while !is_listening(addr).await {
            demo.assert_running();
            assert!(Instant::now() < deadline, "demo not listening on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let c = demo_client();

    // A tenant user.
    let (user, location) = sign_in(&c, &user_url).await;
    assert_eq!(location, format!("{app}/"), "user sign-in redirect");
    let ids = whoami(&c, &app, &user).await;
    assert_eq!(ids["x-auth-user-id"], "user-42", "user whoami: {ids}");
    assert_eq!(ids["x-auth-tenant-id"], "cafe", "user whoami: {ids}");
    assert!(
        ids["x-auth-email"]
            .as_str()
            .is_some_and(|e| e.contains('@')),
        "user whoami has no e-mail: {ids}"
    );
    for absent in [
        "x-auth-impersonation-session",
        "x-auth-impersonator-id",
        "x-auth-impersonator-email",
    ] {
        assert!(ids.get(absent).is_none(), "user whoami has {absent}: {ids}");
    }
    let Resp {
        status, body: home, ..
    } = send(navigate(c.get(&location), &user)).await;
    assert_eq!(status, 200, "user home");
    assert!(
        home.contains("<body class=\"demo\">") && home.contains("user-42"),
        "user home does not show the identity: {home}"
    );
    assert!(
        !home.contains("sessiongate-banner"),
        "the banner shows for a plain user: {home}"
    );
    assert_ne!(
        post_password(&c, &app, &user).await,
        403,
        "a plain user may change the password"
    );

    // An impersonating admin.
    let (admin, location) = sign_in(&c, &admin_url).await;
    assert_eq!(location, format!("{app}/"), "admin sign-in redirect");
    let ids = whoami(&c, &app, &admin).await;
    assert_eq!(ids["x-auth-user-id"], "user-42", "admin whoami: {ids}");
    assert_eq!(ids["x-auth-tenant-id"], "cafe", "admin whoami: {ids}");
    assert!(
        ids["x-auth-email"]
            .as_str()
            .is_some_and(|e| e.contains('@')),
        "admin whoami has no e-mail: {ids}"
    );
    assert!(
        ids["x-auth-impersonation-session"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "admin whoami has no impersonation session: {ids}"
    );
    assert_eq!(
        ids["x-auth-impersonator-email"], "support@nixtech.example",
        "admin whoami: {ids}"
    );

    let Resp {
        status,
        headers,
        body: home,
        ..
    } = send(navigate(c.get(&location), &admin)).await;
    assert_eq!(status, 200, "admin home");
    let first = tag_after_body(&home)
        .unwrap_or_else(|| panic!("no <body class=\"demo\"> in the admin home: {home}"));
    assert!(
        first.contains("id=\"sessiongate-banner\""),
        "the banner is not right after <body class=\"demo\">; next tag: {first:?}\n{home}"
    );
    assert!(
        home.contains("support@nixtech.example"),
        "the banner does not name the admin: {home}"
    );
    let cache = headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        cache.contains("private") && cache.contains("no-store"),
        "impersonated page is cacheable: {cache:?}"
    );

    // The strict-CSP page: banner present, the page's own nonce still allowed.
    let Resp {
        status,
        headers,
        body: strict,
        ..
    } = send(navigate(c.get(format!("{app}/strict")), &admin)).await;
    assert_eq!(status, 200, "/strict");
    let first = tag_after_body(&strict).unwrap_or("");
    assert!(
        first.contains("id=\"sessiongate-banner\""),
        "no banner on /strict; next tag: {first:?}\n{strict}"
    );
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("/strict lost its CSP"))
        .to_string();
    let page_nonce = strict
        .split("<script nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("/strict has no nonce'd inline script: {strict}"));
    assert!(
        csp.contains(&format!("'nonce-{page_nonce}'")),
        "the page's own script nonce is no longer allowed: {csp}"
    );

    assert_eq!(
        post_password(&c, &app, &admin).await,
        403,
        "an impersonating admin must not change the password"
    );

    // Ctrl-C: drains and exits 0.
    demo.assert_running();
    send_signal(demo.pid(), "INT");
    let status = tokio::time::timeout(Duration::from_secs(60), demo.child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo still running 60 s after SIGINT"))
        .expect("wait demo");
    assert_eq!(
        status.code(),
        Some(0),
        "demo exit status {status}; stderr:\n{}",
        demo.stderr()
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(!is_listening(addr).await, "proxy port open after exit");
}

// ---------------------------------------------------------------------------
// token mint / inspect
// ---------------------------------------------------------------------------

/// A config for `token inspect` with `token`, written to `dir/name`: `cafe` and the
/// `{tenant}.shop` wildcard.
fn inspect_config(dir: &TempDir, name: &str, token: Token) -> std::path::PathBuf {
    let up: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
    let config = Config::new()
        .token(token)
        .site(Site::new(HOST, up))
        .site(Site::new("*.shop.nixtech.app", up).tenant_from_host("{tenant}.shop.nixtech.app"));
    dir.write(name, &materialize(&config, dir))
}

/// Checks a refusal (exit 1, verdict starting with `prefix`), recording a
/// failure otherwise; returns the verdict.
fn refused(
    failures: &mut Vec<String>,
    what: &str,
    code: Option<i32>,
    out: &str,
    prefix: &str,
) -> String {
    let v = verdict(stdout_part(out));
    if code != Some(1) || !v.starts_with(prefix) {
        failures.push(format!(
            "{what}: exit {code:?}, verdict {v:?}, want exit 1 and {prefix:?}...\n{out}"
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_inspect_accepts_a_good_token_and_names_each_reason() {
    let dir = TempDir::new();
    let cfg = inspect_config(&dir, "inspect.toml", Token::hs256());

    // A good token, minted by the CLI with every identity flag.
    let good = mint_u1_of_acme(
        OURS,
        &[
            "--email",
            "u1@acme.example",
            "--roles",
            "a,b",
            "--ttl",
            "30m",
        ],
    )
    .await;
    let (code, out) = inspect_cli(&cfg, Some("acme.shop.nixtech.app"), &good).await;
    assert_eq!(code, Some(0), "good token:\n{out}");
    assert_eq!(verdict(stdout_part(&out)), "accepted", "good token:\n{out}");
    let stdout = stdout_part(&out);
    assert!(
        stdout.lines().any(|l| l.starts_with("header: ")),
        "no header line:\n{out}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("claims: ")),
        "no claims line:\n{out}"
    );
    for want in ["\"u1\"", "\"acme\"", "u1@acme.example", "\"HS256\""] {
        assert!(
            stdout.contains(want),
            "inspect does not show {want}:\n{out}"
        );
    }

    // The minted claims are what the flags said (decoded independently).
    let payload = good.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64url payload"),
    )
    .expect("JSON payload");
    assert_eq!(claims["sub"], "u1", "{claims}");
    assert_eq!(claims["tenant_id"], "acme", "{claims}");
    assert_eq!(claims["email"], "u1@acme.example", "{claims}");
    assert_eq!(claims["roles"], serde_json::json!(["a", "b"]), "{claims}");
    let (iat, exp) = (
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(exp - iat, 30 * 60, "--ttl 30m: {claims}");

    // A token the harness signed with the same secret is accepted too.
    let harness = token(&claims_with(serde_json::json!({"tenant_id": "acme"})));
    let (code, out) = inspect_cli(&cfg, Some("acme.shop.nixtech.app"), &harness).await;
    assert_eq!(code, Some(0), "harness token:\n{out}");
    assert_eq!(
        verdict(stdout_part(&out)),
        "accepted",
        "harness token:\n{out}"
    );

    // An impersonation token is accepted (liveness is the proxy's business).
    let imp = mint_u1_of_acme(
        OURS,
        &[
            "--imp-sid",
            "s-1",
            "--imp-admin-id",
            "a-1",
            "--imp-admin-email",
            "root@nixtech.app",
        ],
    )
    .await;
    let (code, out) = inspect_cli(&cfg, None, &imp).await;
    assert_eq!(code, Some(0), "impersonation token:\n{out}");
    assert!(
        out.contains("root@nixtech.app"),
        "imp claim not shown:\n{out}"
    );

    let mut failures: Vec<String> = Vec::new();

    // Bad signature: another secret, and a tampered payload.
    let forged = mint_u1_of_acme(OTHER, &[]).await;
    let (code, out) = inspect_cli(&cfg, Some("acme.shop.nixtech.app"), &forged).await;
    refused(
        &mut failures,
        "other secret",
        code,
        &out,
        "refused: signature:",
    );
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil_claims = claims.clone();
    evil_claims["sub"] = Value::from("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(evil_claims.to_string().as_bytes()),
        parts[2]
    );
    let (code, out) = inspect_cli(&cfg, None, &tampered).await;
    refused(
        &mut failures,
        "tampered payload",
        code,
        &out,
        "refused: signature:",
    );

    // Expired two hours ago (well past the 30 s leeway).
    let exp = (now() - 7200).to_string();
    let expired = mint_u1_of_acme(OURS, &["--claim", &format!("exp={exp}")]).await;
    let (code, out) = inspect_cli(&cfg, None, &expired).await;
    let v = refused(&mut failures, "expired", code, &out, "refused: expired: 2h");
    if !v.contains(" ago") {
        failures.push(format!("expired: verdict does not say how long ago: {v:?}"));
    }

    // Wrong tenant for the host.
    let (code, out) = inspect_cli(&cfg, Some("evil.shop.nixtech.app"), &good).await;
    let v = refused(
        &mut failures,
        "wrong tenant",
        code,
        &out,
        "refused: tenant:",
    );
    let want =
        "refused: tenant: evil.shop.nixtech.app names tenant evil, the token's tenant is acme";
    if v != want {
        failures.push(format!("wrong tenant: verdict {v:?}, want {want:?}"));
    }

    // Algorithm outside the allow-list (HS384 with the right secret).
    let hs384 = mint_u1_of_acme(OURS, &["--alg", "HS384"]).await;
    let (code, out) = inspect_cli(&cfg, None, &hs384).await;
    refused(&mut failures, "HS384", code, &out, "refused: algorithm:");

    // alg "none" is never accepted.
    let none = alg_none_token(&claims_with(serde_json::json!({"tenant_id": "acme"})));
    let (code, out) = inspect_cli(&cfg, None, &none).await;
    let v = verdict(stdout_part(&out));
    if code != Some(1)
        || !(v.starts_with("refused: algorithm:") || v.starts_with("refused: malformed:"))
    {
        failures.push(format!("alg none: exit {code:?}, verdict {v:?}\n{out}"));
    }

    // Not a JWT at all, and an oversized one.
    let (code, out) = inspect_cli(&cfg, None, "not-a-token").await;
    refused(&mut failures, "garbage", code, &out, "refused: malformed:");
    let huge = token(&claims_with(
        serde_json::json!({"tenant_id": "acme", "pad": "x".repeat(9000)}),
    ));
    let (code, out) = inspect_cli(&cfg, None, &huge).await;
    refused(&mut failures, "9 KB token", code, &out, "refused: size:");

    // Issuer and audience, when the config checks them.
    let iss_cfg = inspect_config(
        &dir,
        "inspect-iss.toml",
        Token::hs256()
            .issuer("https://api.nixtech.app")
            .audience(&["nixtech"]),
    );
    let wrong_iss =
        mint_u1_of_acme(OURS, &["--iss", "https://evil.example", "--aud", "nixtech"]).await;
    let (code, out) = inspect_cli(&iss_cfg, None, &wrong_iss).await;
    refused(
        &mut failures,
        "wrong issuer",
        code,
        &out,
        "refused: issuer:",
    );
    let wrong_aud = mint_u1_of_acme(
        OURS,
        &["--iss", "https://api.nixtech.app", "--aud", "someone-else"],
    )
    .await;
    let (code, out) = inspect_cli(&iss_cfg, None, &wrong_aud).await;
    refused(
        &mut failures,
        "wrong audience",
        code,
        &out,
        "refused: audience:",
    );
    let right = mint_u1_of_acme(
        OURS,
        &["--iss", "https://api.nixtech.app", "--aud", "nixtech"],
    )
    .await;
    let (code, out) = inspect_cli(&iss_cfg, None, &right).await;
    if code != Some(0) || verdict(stdout_part(&out)) != "accepted" {
        failures.push(format!("right issuer and audience: exit {code:?}\n{out}"));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_inspect_with_a_bad_config_exits_2() {
    let dir = TempDir::new();
    let good = token(&claims());
    let missing = dir.path().join("missing.toml");
    let (code, out) = inspect_cli(&missing, None, &good).await;
    assert_eq!(code, Some(2), "missing config:\n{out}");
    assert_ne!(verdict(stdout_part(&out)), "accepted", "{out}");

    let bad = inspect_config(&dir, "bad.toml", Token::hs256().leeway("soon"));
    let (code, out) = inspect_cli(&bad, None, &good).await;
    assert_eq!(code, Some(2), "bad duration:\n{out}");
    assert!(
        out.contains("token.leeway"),
        "error does not name the key:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mint_without_its_secret_fails() {
    let (code, out, err) = run_cli(
        &[
            "token",
            "mint",
            "--secret-env",
            "SG_TEST_SECRET_THAT_IS_NOT_SET",
            "--sub",
            "u1",
        ],
        &[],
    )
    .await;
    assert_ne!(code, Some(0), "minted without a secret: {out}");
    assert!(out.trim().is_empty(), "printed a token: {out}");
    assert!(
        err.contains("SG_TEST_SECRET_THAT_IS_NOT_SET"),
        "error does not name the variable: {err}"
    );
}

// ---------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_site_without_dropping_a_request_under_load() {
    let one = spawn_upstream_with(|_| Reply::default().body(b"one")).await;
    let two = spawn_upstream_with(|_| Reply::default().body(b"two")).await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, one.addr))).await;
    let cookie = session_cookie(&token(&claims()));
    let c = sc.client();
    let new_url = sc.url("legacy.nixtech.app", "/hello");

    let before = get(&c, &new_url, Some(&cookie)).await;
    assert!(
        matches!(before, Ok((421, _))),
        "a host no site serves: {before:?}"
    );
    assert_eq!(two.count(), 0);

    // Load on the existing site, over keep-alive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            spawn_load(
                sc.client(),
                sc.url("cafe.nixtech.app", "/load"),
                cookie.clone(),
                "one",
                stop.clone(),
            )
        })
        .collect();
    one.wait_for_count(200).await;

    let old = read_config(&sc);
    write_config(
        &sc.config_path,
        &format!(
            "{old}\n{}",
            Site::new("legacy.nixtech.app", two.addr).toml()
        ),
    );
    sc.signal("HUP");

    wait_for_answer(&c, &new_url, Some(&cookie), (200, "two")).await;
    let seen = two.last();
    assert_eq!(seen.path(), "/hello");
    assert_eq!(
        seen.header("x-auth-user-id").as_deref(),
        Some("user-42"),
        "the new site runs the whole pipeline"
    );
    let after_swap = one.count();
    one.wait_for_count(after_swap + 100).await;

    // More swaps of the same config, still under load.
    for n in 2..=4 {
        sc.signal("HUP");
        sc.wait_for_metric(RELOADS, &[("result", "ok")], |v| v >= f64::from(n))
            .await;
        let at = one.count();
        one.wait_for_count(at + 100).await;
    }
    let ok = finish_load(&stop, workers, "across the reload").await;
    eprintln!(
        "load: {ok} requests, {} before the new site answered, {} after",
        after_swap,
        ok.saturating_sub(after_swap)
    );
    assert!(ok >= 600, "only {ok} load requests ran");
    assert_eq!(
        one.last().header("x-auth-user-id").as_deref(),
        Some("user-42")
    );
    assert!(
        one.requests().iter().all(|r| r.target != "/hello"),
        "the new host reached the old upstream"
    );

    let metrics = sc.metrics().await;
    assert_eq!(
        metric_in(&metrics, RELOADS, &[("result", "ok")]),
        4.0,
        "reload counter:\n{metrics}"
    );
    assert_eq!(
        metric_in(&metrics, RELOADS, &[("result", "error")]),
        0.0,
        "reload counter:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_config_keeps_the_old_one_serving() {
    let one = spawn_upstream_with(|_| Reply::default().body(b"one")).await;
    let two = spawn_upstream_with(|_| Reply::default().body(b"two")).await;
    let three = spawn_upstream_with(|_| Reply::default().body(b"three")).await;
    let sc = Sidecar::start(
        &Config::new()
            .site(Site::new(HOST, one.addr))
            .site(Site::new("legacy.nixtech.app", two.addr)),
    )
    .await;
    let c = sc.client();
    let cookie = session_cookie(&token(&claims()));
    let cafe = sc.url("cafe.nixtech.app", "/");
    let legacy = sc.url("legacy.nixtech.app", "/");
    let strict = sc.url("strict.nixtech.app", "/");
    let original = read_config(&sc);

    let serving = |label: &'static str| {
        let (c, cookie, cafe, legacy, strict) = (
            c.clone(),
            cookie.clone(),
            cafe.clone(),
            legacy.clone(),
            strict.clone(),
        );
        async move {
            let a = get(&c, &cafe, Some(&cookie)).await;
            assert!(
                matches!(&a, Ok((200, b)) if b == "one"),
                "{label}: cafe {a:?}"
            );
            let b = get(&c, &legacy, Some(&cookie)).await;
            assert!(
                matches!(&b, Ok((200, x)) if x == "two"),
                "{label}: legacy {b:?}"
            );
            let s = get(&c, &strict, Some(&cookie)).await;
            assert!(
                matches!(&s, Ok((421, _))),
                "{label}: strict (in the refused config only) {s:?}"
            );
        }
    };
    serving("before").await;

    // 1. A bad duration, plus a third site that must not appear.
    assert!(original.contains("leeway = \"30s\""));
    let bad = format!(
        "{}\n{}",
        original.replacen("leeway = \"30s\"", "leeway = \"soon\"", 1),
        Site::new("strict.nixtech.app", three.addr).toml()
    );
    write_config(&sc.config_path, &bad);
    sc.signal("HUP");
    sc.wait_for_metric(RELOADS, &[("result", "error")], |v| v >= 1.0)
        .await;
    serving("after an invalid config").await;
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 1.0);
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sc.stderr().contains("token.leeway") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sc.stderr().contains("token.leeway"),
        "the refused reload is not logged with its key:\n{}",
        sc.stderr()
    );

    // 2. Broken TOML.
    write_config(&sc.config_path, "[listen\naddr = ");
    sc.signal("HUP");
    sc.wait_for_metric(RELOADS, &[("result", "error")], |v| v >= 2.0)
        .await;
    serving("after broken TOML").await;

    // 3. A valid config again: the reload machinery still works.
    write_config(
        &sc.config_path,
        &format!(
            "{original}\n{}",
            Site::new("strict.nixtech.app", three.addr).toml()
        ),
    );
    sc.signal("HUP");
    wait_for_answer(&c, &strict, Some(&cookie), (200, "three")).await;
    let ok = sc
        .wait_for_metric(RELOADS, &[("result", "ok")], |v| v >= 1.0)
        .await;
    assert_eq!(ok, 1.0);
    assert_eq!(sc.metric(RELOADS, &[("result", "error")]).await, 2.0);
    let a = get(&c, &cafe, Some(&cookie)).await;
    assert!(matches!(&a, Ok((200, b)) if b == "one"), "cafe {a:?}");
    let b = get(&c, &legacy, Some(&cookie)).await;
    assert!(matches!(&b, Ok((200, x)) if x == "two"), "legacy {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_to_change_the_listen_address() {
    let one = spawn_upstream_with(|_| Reply::default().body(b"one")).await;
    let two = spawn_upstream_with(|_| Reply::default().body(b"two")).await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, one.addr))).await;
    let c = sc.client();
    let original = read_config(&sc);
    let old_line = format!("addr = \"{}\"", sc.addr);
    assert!(
        original.contains(&old_line),
        "listen addr line:\n{original}"
    );
    let moved = free_addr();
    let changed = format!(
        "{}\n{}",
        original.replacen(&old_line, &format!("addr = \"{moved}\""), 1),
        Site::new("legacy.nixtech.app", two.addr).toml()
    );
    write_config(&sc.config_path, &changed);
    sc.signal("HUP");
    sc.wait_for_metric(RELOADS, &[("result", "error")], |v| v >= 1.0)
        .await;
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 0.0);

    let a = get(&c, &sc.url("cafe.nixtech.app", "/"), None).await;
    assert!(
        matches!(&a, Ok((200, b)) if b == "one"),
        "old site on the old address: {a:?}"
    );
    let b = get(&c, &sc.url("legacy.nixtech.app", "/"), None).await;
    assert!(
        matches!(&b, Ok((421, _))),
        "the refused config's site was applied: {b:?}"
    );
    assert!(!is_listening(moved).await, "listening on the new address");
    assert_eq!(two.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lets_an_in_flight_request_finish_on_the_old_config() {
    let up = spawn_upstream_with(|req| {
        if req.path() == "/slow" {
            Reply::default()
                .body(b"slow but complete")
                .delay(Duration::from_secs(4))
        } else {
            Reply::default().body(b"one")
        }
    })
    .await;
    let two = spawn_upstream_with(|_| Reply::default().body(b"two")).await;
    let sc = Sidecar::start(&Config::new().site(Site::new(HOST, up.addr))).await;
    let c = sc.client();
    let cookie = session_cookie(&token(&claims()));

    let in_flight = {
        let (c, url, cookie) = (
            c.clone(),
            sc.url("cafe.nixtech.app", "/slow"),
            cookie.clone(),
        );
        tokio::spawn(async move { get(&c, &url, Some(&cookie)).await })
    };
    up.wait_for_count(1).await;

    // The new config no longer serves cafe at all.
    write_config(
        &sc.config_path,
        &sc.fill(&Config::new().site(Site::new("legacy.nixtech.app", two.addr))),
    );
    sc.signal("HUP");
    wait_for_answer(
        &c,
        &sc.url("legacy.nixtech.app", "/"),
        Some(&cookie),
        (200, "two"),
    )
    .await;
    let now_cafe = get(&c, &sc.url("cafe.nixtech.app", "/"), Some(&cookie)).await;
    assert!(
        matches!(now_cafe, Ok((421, _))),
        "cafe after the reload removed it: {now_cafe:?}"
    );

    let done = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("in-flight request never finished")
        .expect("task");
    assert!(
        matches!(&done, Ok((200, b)) if b == "slow but complete"),
        "in-flight request across the reload: {done:?}"
    );
    assert_eq!(
        up.find("/slow").header("x-auth-user-id").as_deref(),
        Some("user-42")
    );
    assert_eq!(sc.metric(RELOADS, &[("result", "ok")]).await, 1.0);
}

// ---------------------------------------------------------------------------
// Memory: transparent huge pages
// ---------------------------------------------------------------------------

/// `THP_enabled` from `/proc/<pid>/status` (`pid` may be `self`): whether the kernel may back
/// the process's memory with transparent huge pages (a process flag, not the host setting).
fn thp_enabled(pid: &str) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status (kernel older than 5.0?)"));
    match line.split_whitespace().nth(1) {
        Some("1") => true,
        Some("0") => false,
        other => panic!("unexpected THP_enabled value {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_opts_out_of_transparent_huge_pages_unless_told_otherwise() {
    let up = spawn_upstream_with(|_| Reply::default().body(b"ok")).await;
    let config = Config::new().site(Site::new(HOST, up.addr));

    // Default: the process turns THP off for itself (huge pages doubled its peak RSS).
    let sc = Sidecar::start(&config).await;
    assert!(
        !thp_enabled(&sc.pid().to_string()),
        "sessiongate left transparent huge pages on"
    );

    // mimalloc's own switch keeps the host's behaviour: the flag is inherited, so the proxy
    // then has exactly what this test process has.
    let sc = Sidecar::start(&config.with_env("MIMALLOC_ALLOW_THP", "1")).await;
    assert_eq!(
        thp_enabled(&sc.pid().to_string()),
        thp_enabled("self"),
        "MIMALLOC_ALLOW_THP=1 should leave THP as the parent had it"
    );
}
