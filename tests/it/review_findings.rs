//! Findings of our own adversarial review of the fixes for issue 11 (commit 4149e92), black-box:
//! the real binary between raw-byte clients and recording servers on loopback, as in
//! `tests/security.rs`. Every test here failed on 4149e92: each was a hole those fixes left open,
//! or a spot next to them.

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const HOST: &str = "cafe.nixtech.app";
/// A site with `forward_session_cookie = true` (an app that still reads the cookie itself).
const FORWARDING_HOST: &str = "legacy.nixtech.app";
const ADMIN_TOKEN_ENV: &str = "SG_REVIEW_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "review-admin-token-5c1d";

fn review_config(backend: &Backend, liveness: &str, sites: &str) -> String {
    format!(
        r#"[listen]
addr = "@LISTEN@"

[admin]
addr = "@ADMIN@"
token_env = "{ADMIN_TOKEN_ENV}"

{token}
[liveness]
url = "{url}"
end_url = "{end_url}"
timeout = "5s"
{liveness}

[audit]
sink = "file:@AUDIT@"

{sites}"#,
        token = hs256_token_section(""),
        url = backend.url(),
        end_url = backend.end_url(),
    )
}

async fn start(backend: &Backend, liveness: &str, sites: &str) -> Sidecar {
    Sidecar::start(
        &review_config(backend, liveness, sites),
        &[(SECRET_ENV, SECRET), (ADMIN_TOKEN_ENV, ADMIN_TOKEN)],
    )
    .await
}

/// `cafe` (defaults) and `legacy` (`forward_session_cookie = true`), both with deny rules for
/// `DELETE /account` and `GET /export`.
fn sites(up: SocketAddr) -> String {
    let deny = "[[site.deny_while_impersonating]]\nmethods = [\"DELETE\"]\npath = \"/account\"\n\
                [[site.deny_while_impersonating]]\nmethods = [\"GET\"]\npath = \"/export\"\n";
    format!(
        "{}{}",
        site(HOST, up, deny),
        site(
            FORWARDING_HOST,
            up,
            &format!("forward_session_cookie = true\n{deny}")
        )
    )
}

/// A raw HTTP/1.1 request with byte header values and an optional body.
fn request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

async fn send_raw(
    sc: &Sidecar,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> RawResponse {
    raw_request(sc.addr, &request(method, target, host, headers, body)).await
}

async fn revoke(sc: &Sidecar, sid: &str) {
    let r = plain_client()
        .post(sc.admin_url(&format!("/sessions/{sid}/revoke")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200, "revoke {sid}");
}

/// An HS256 token over `payload` exactly as written (JSON text, not a serde value).
fn mint_raw(payload: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64url(payload.as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every `Cookie` value the upstream received for the request with this target (if it got one).
fn upstream_cookies(up: &Upstream, target: &str) -> Vec<Vec<u8>> {
    up.requests()
        .iter()
        .filter(|r| r.target == target)
        .flat_map(|r| {
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Finding 1: session-cookie look-alikes reach an app that reads the cookie itself
// ---------------------------------------------------------------------------

/// On a `forward_session_cookie` site the app judges the cookie itself. Common cookie parsers read
/// more names as `nix_session` than the proxy does: Rack 2 (`parse_query(header, ';,')` with
/// `unescape`, first value wins) reads `nix%5Fsession` and `a=1, nix_session=`; PHP urldecodes
/// names and maps `.`, ` ` and `[` to `_` (first wins); Python's `http.cookies.SimpleCookie`
/// (Bottle, CherryPy) reads `a=1, nix_session=`. The proxy sees no session in any of them, so an
/// ENDED impersonation (or another tenant's token) skips liveness, the deny list, the audit and
/// the tenant binding, and the app gets the token anyway. The fix said "the app never judges a
/// token on its own": only the exact cookie the proxy verified may carry a token to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_look_alikes_never_carry_an_unverified_token_to_a_forwarding_app() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let sid = "imp-look-alike";
    let ended = token(&imp_claims(sid));
    backend.set_for(sid, 404, "gone");
    // The plain cookie is refused (ended): the baseline the look-alikes must not escape.
    let plain = session_cookie(&ended);
    let r = send_raw(
        &sc,
        "DELETE",
        "/account",
        FORWARDING_HOST,
        &[("Cookie", plain.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "baseline: an ended impersonation is refused");

    let variants = [
        format!("a=1, {COOKIE}={ended}"), // Rack 2, SimpleCookie: split on ','
        format!("a=1,{COOKIE}={ended}"),  // Rack 2
        format!("nix%5Fsession={ended}"), // Rack 2, PHP: percent-decoded names
        format!("nix%5fsession={ended}"),
        format!("nix.session={ended}"), // PHP: '.' -> '_'
        format!("nix session={ended}"), // PHP: ' ' -> '_'
        format!("nix[session={ended}"), // PHP: '[' -> '_'
    ];
    let mut leaked = Vec::new();
    for (i, cookie) in variants.iter().enumerate() {
        let target = format!("/account?v={i}");
        let r = send_raw(
            &sc,
            "DELETE",
            &target,
            FORWARDING_HOST,
            &[("Cookie", cookie.as_bytes())],
            b"",
        )
        .await;
        if upstream_cookies(&up, &target)
            .iter()
            .any(|c| contains(c, ended.as_bytes()))
        {
            leaked.push(format!(
                "{cookie:.24}... -> {} (forwarded to the app)",
                r.status
            ));
        }
    }

    // Cookie tossing with a look-alike: a sibling plants `nix%5Fsession=<attacker>` on the parent
    // domain (sent first: longer Path); the victim's own session verifies, and Rack/PHP (first
    // wins) run the request as the attacker.
    let attacker = token(&claims_with(json!({"sub": "attacker-1"})));
    let victim = token(&claims());
    let tossed = format!("nix%5Fsession={attacker}; nix.session={attacker}; {COOKIE}={victim}");
    let r = send_raw(
        &sc,
        "GET",
        "/tossed",
        FORWARDING_HOST,
        &[("Cookie", tossed.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    if upstream_cookies(&up, "/tossed")
        .iter()
        .any(|c| contains(c, attacker.as_bytes()))
    {
        leaked.push("tossed look-alike beside a verified session (forwarded to the app)".into());
    }
    assert!(
        leaked.is_empty(),
        "unverified tokens reached a forward_session_cookie app under look-alike names:\n{}",
        leaked.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 2: a nameless `Set-Cookie: nix_session` from an app signs everyone out
// ---------------------------------------------------------------------------

/// `Set-Cookie: nix_session; Domain=.nixtech.app` has no `=`: browsers store a cookie with an
/// EMPTY name and the value `nix_session`, and send it back as a bare `nix_session` (RFC 6265bis
/// 5.6 and 5.8.3; checked in Chromium). The proxy's Set-Cookie filter looks for `name=` and lets
/// it through; its Cookie parser then reads the bare `nix_session` as a session cookie with an
/// empty value, which conflicts with the real one: any one tenant app can end every session on
/// every tenant of the parent domain, for as long as its Max-Age says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameless_session_cookie_from_an_app_neither_passes_nor_conflicts() {
    let up = spawn_upstream_with(|rec| {
        if rec.target == "/set" {
            Reply::default()
                .header(
                    "Set-Cookie",
                    "nix_session; Domain=.nixtech.app; Path=/; Max-Age=31536000",
                )
                .header("Set-Cookie", "theme=dark; Path=/")
        } else {
            Reply::default()
        }
    })
    .await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;

    let r = send_raw(&sc, "GET", "/set", HOST, &[], b"").await;
    assert_eq!(r.status, 200);
    let passed: Vec<String> = r
        .header_all("set-cookie")
        .into_iter()
        .filter(|v| {
            let first = v.split(';').next().unwrap_or("").trim();
            let first = first.strip_prefix('=').unwrap_or(first);
            first.eq_ignore_ascii_case(COOKIE)
                || first
                    .to_ascii_lowercase()
                    .starts_with(&format!("{COOKIE}="))
        })
        .collect();

    // What the browser then sends: the real session, and the nameless cookie as its bare value.
    let good = token(&claims());
    let cookie = format!("{COOKIE}={good}; theme=dark; {COOKIE}");
    let r = send_raw(
        &sc,
        "GET",
        "/after",
        HOST,
        &[("Cookie", cookie.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let user = up.find("/after").header("x-auth-user-id");
    assert!(
        passed.is_empty() && user.as_deref() == Some("user-42"),
        "nameless session cookie from the app passed: {passed:?}; the session afterwards: {user:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 3: method overrides by parameter, and HEAD for a GET rule
// ---------------------------------------------------------------------------

/// Rails (`button_to ... method: :delete`, Rack::MethodOverride), Laravel/Symfony and Sinatra turn
/// a POST with `_method=DELETE` (form body; Symfony/Laravel also the query) into a DELETE: that
/// is how every browser DELETE is sent in those apps. And every common router runs a GET route
/// for HEAD (Express, Rails, Flask, Django, Next.js), with its side effects. None of these is
/// judged by the deny list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_parameters_and_head_are_judged_by_the_deny_list() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let cookie = imp_cookie("imp-override-param");
    let c = cookie.as_bytes();
    let form: &[u8] = b"application/x-www-form-urlencoded";
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a [u8])>, &'a [u8]);
    let cases: [Case; 4] = [
        ("POST", "/account?_method=DELETE", vec![("Cookie", c)], b""),
        (
            "POST",
            "/account",
            vec![("Cookie", c), ("Content-Type", form)],
            b"_method=delete&authenticity_token=x",
        ),
        ("HEAD", "/export", vec![("Cookie", c)], b""),
        ("HEAD", "/export?x=1", vec![("Cookie", c)], b""),
    ];
    let mut passed = Vec::new();
    for (method, target, headers, body) in &cases {
        let r = send_raw(&sc, method, target, HOST, headers, body).await;
        if r.status != 403 {
            passed.push(format!(
                "{method} {target} body={:?} -> {} (upstream got it: {})",
                String::from_utf8_lossy(body),
                r.status,
                up.requests().iter().any(|q| q.target == *target)
            ));
        }
    }
    assert!(
        passed.is_empty(),
        "denied routes reached:\n{}",
        passed.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 4: forwarding and identity look-alikes that frameworks trust still pass
// ---------------------------------------------------------------------------

/// Client copies of headers that apps and frameworks take as the proxy's word: client address
/// (`Client-IP`, PHP's first choice; `Proxy-Client-IP`/`WL-Proxy-Client-IP`, Java snippets;
/// `X-Originating-IP`, `X-Remote-Addr`), scheme and URL (`X-Scheme`, Tornado and nginx recipes;
/// `X-Forwarded-Uri`/`-Method`/`-Path`, Traefik; `X-Forwarded-By`, Tomcat's RemoteIpValve), and
/// identity set by other auth proxies that apps migrating to sessiongate may still trust
/// (oauth2-proxy's `X-Forwarded-User`/`-Email`/`-Groups`/`-Access-Token`, `Remote-User`,
/// Envoy's `X-Forwarded-Client-Cert`, nginx-ingress's `ssl-client-*`, Grafana's `X-WEBAUTH-USER`,
/// IAP/Cloudflare Access/ALB/Pomerium assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_forwarding_and_identity_look_alikes_never_reach_the_app() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let names = [
        "Client-IP",
        "X-Client-IP-Address",
        "Proxy-Client-IP",
        "WL-Proxy-Client-IP",
        "X-Originating-IP",
        "X-Remote-Addr",
        "X-Remote-IP",
        "X-ProxyUser-Ip",
        "X-Scheme",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Forwarded-Method",
        "X-Forwarded-By",
        "X-Forwarded-Client-Cert",
        "X-Forwarded-Tls-Client-Cert",
        "X-SSL-Client-Cert",
        "Ssl-Client-Subject-Dn",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Groups",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Access-Token",
        "Remote-User",
        "X-Remote-User",
        "X-WEBAUTH-USER",
        "X-Goog-Authenticated-User-Email",
        "X-Goog-Iap-Jwt-Assertion",
        "Cf-Access-Authenticated-User-Email",
        "Cf-Access-Jwt-Assertion",
        "X-Amzn-Oidc-Identity",
        "X-Amzn-Oidc-Data",
        "X-Pomerium-Jwt-Assertion",
        "X-MS-CLIENT-PRINCIPAL-NAME",
    ];
    let headers: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, &b"spoofed"[..])).collect();
    let r = send_raw(&sc, "GET", "/lookalikes", HOST, &headers, b"").await;
    assert_eq!(r.status, 200);
    let rec = up.find("/lookalikes");
    let reached: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| rec.header(n).is_some())
        .collect();
    assert!(
        reached.is_empty(),
        "client copies reached the app: {reached:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 5: header values still read alike for different claims
// ---------------------------------------------------------------------------

/// Item 7 promised that decoding a header gives the claim back exactly. Leading and trailing
/// spaces are not encoded, and every HTTP parser strips them as OWS, so `" user-42"` reaches the
/// app as `user-42`. Integers beyond u64 go through f64, so two different numeric ids become one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_claims_never_reach_the_app_as_the_same_header() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    // `sub` as raw JSON text (a serde_json Value would already round the big numbers here).
    let pairs = [
        ("\"user-42\"", "\" user-42\""),
        ("\"user-42\"", "\"user-42 \""),
        ("123456789012345678901234", "123456789012345678901235"),
    ];
    let mut same = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let mut seen = Vec::new();
        for (j, sub) in [a, b].iter().enumerate() {
            let target = format!("/claims/{i}/{j}");
            let cookie = session_cookie(&mint_raw(&format!(
                r#"{{"sub":{sub},"tenant_id":"cafe","exp":{}}}"#,
                now() + 3600
            )));
            let r = send_raw(
                &sc,
                "GET",
                &target,
                HOST,
                &[("Cookie", cookie.as_bytes())],
                b"",
            )
            .await;
            assert_eq!(r.status, 200);
            // None = the token was refused, which is also fine.
            seen.push(up.find(&target).header("x-auth-user-id"));
        }
        if seen[0].is_some() && seen[0] == seen[1] {
            same.push(format!("{a} and {b} both arrive as {:?}", seen[0]));
        }
    }
    assert!(
        same.is_empty(),
        "ambiguous identity headers:\n{}",
        same.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 6: invisible characters make the banner show another address
// ---------------------------------------------------------------------------

/// Unicode default-ignorable code points: rendered as nothing.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// The text of `<bdi class="{class}">…</bdi>`, character references decoded.
fn bdi_text(html: &str, class: &str) -> Option<String> {
    let open = format!("<bdi class=\"{class}\">");
    let start = html.find(&open)? + open.len();
    let end = start + html[start..].find("</bdi>")?;
    let raw = &html[start..end];
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find("&#x") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let semi = after.find(';')?;
        let c = u32::from_str_radix(&after[..semi], 16)
            .ok()
            .and_then(char::from_u32)?;
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Item 10 dropped the bidi controls, but the other invisible code points (zero-width space and
/// joiners, U+2060..U+2064 and U+206A..U+206F, BOM, soft hyphen, Hangul fillers, tag characters)
/// still go out as character references, which browsers render as nothing: the banner shows
/// `ceo@acme.com` while the session is another account's. (Dropping them would not help either:
/// the two accounts would still read alike. They have to be shown.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_in_claims_cannot_make_the_banner_show_another_address() {
    let up = spawn_upstream_with(|_| {
        Reply {
            headers: vec![("Content-Type".into(), "text/html".into())],
            ..Reply::default()
        }
        .body(b"<html><body><p>page</p></body></html>")
    })
    .await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let mut spoofed = Vec::new();
    for (i, hidden) in [
        "\u{200B}",
        "\u{2060}",
        "\u{2063}",
        "\u{206A}",
        "\u{FEFF}",
        "\u{00AD}",
        "\u{3164}",
        "\u{E0041}",
    ]
    .iter()
    .enumerate()
    {
        let email = format!("ceo{hidden}@acme.com");
        let mut c = imp_claims(&format!("imp-invisible-{i}"));
        c["email"] = json!(email);
        let cookie = session_cookie(&token(&c));
        let r = send_raw(
            &sc,
            "GET",
            &format!("/inv/{i}"),
            HOST,
            &[("Cookie", cookie.as_bytes()), ("Accept", b"text/html")],
            b"",
        )
        .await;
        assert_eq!(r.status, 200);
        let html = r.body_text();
        let shown = bdi_text(&html, "sg-who").expect("the banner names the target");
        let visible: String = shown.chars().filter(|c| !invisible(*c)).collect();
        if visible == "ceo@acme.com" {
            spoofed.push(format!(
                "U+{:04X}",
                hidden.chars().next().map_or(0, |c| c as u32)
            ));
        }
    }
    assert!(
        spoofed.is_empty(),
        "the banner displays `ceo@acme.com` for another account's address holding {spoofed:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 7: HTTP/2 cookie crumbs go to an HTTP/1.1 app as several Cookie headers
// ---------------------------------------------------------------------------

/// RFC 9113 8.2.3: crumbs "MUST be concatenated into a single octet string using the two-octet
/// delimiter of 0x3b, 0x20 ("; ") before being passed into a non-HTTP/2 context such as an
/// HTTP/1.1 connection". They are forwarded as separate lines unless the proxy happened to remove
/// a session cookie; gunicorn then joins them with "," (Django sees one cookie), others keep only
/// the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_reach_an_http1_app_as_one_header() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let good = token(&claims());
    let c = sc.h2_client();
    for (path, host, crumbs) in [
        (
            "/crumbs/plain",
            HOST,
            vec!["a=1".to_string(), "b=2".to_string()],
        ),
        (
            "/crumbs/forwarded",
            FORWARDING_HOST,
            vec![
                "a=1".to_string(),
                format!("{COOKIE}={good}"),
                "b=2".to_string(),
            ],
        ),
    ] {
        let mut req = c.get(sc.url(host, path));
        for crumb in &crumbs {
            req = req.header("cookie", crumb);
        }
        let r = req.send().await.expect("h2 request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let got = upstream_cookies(&up, path);
        assert_eq!(
            got.len(),
            1,
            "{path}: {} Cookie headers reached the HTTP/1.1 app: {:?}",
            got.len(),
            got.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------
// Finding 8: a vendor's targeted cache directive still passes
// ---------------------------------------------------------------------------

/// RFC 9213 targeted fields are `<target>-Cache-Control`; the list has five vendors but not
/// Netlify's documented `Netlify-CDN-Cache-Control`, nor any other `*-CDN-Cache-Control`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_responses_lose_every_targeted_cache_directive() {
    let up = spawn_upstream_with(|_| {
        Reply::default()
            .header("Netlify-CDN-Cache-Control", "public, s-maxage=31536000")
            .header("Akamai-CDN-Cache-Control", "max-age=3600")
    })
    .await;
    let backend = spawn_backend().await;
    let sc = start(&backend, "", &sites(up.addr)).await;
    let cookie = imp_cookie("imp-netlify");
    let r = send_raw(
        &sc,
        "GET",
        "/cdn",
        HOST,
        &[("Cookie", cookie.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let kept: Vec<&String> = r
        .headers
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            n.to_ascii_lowercase().ends_with("cache-control")
                && !n.eq_ignore_ascii_case("cache-control")
        })
        .collect();
    assert!(
        kept.is_empty(),
        "targeted cache directives kept on an impersonated response: {kept:?}"
    );
}

// ---------------------------------------------------------------------------
// Finding 9: "ended stays ended" only for tokens this replica has already seen
// ---------------------------------------------------------------------------

/// Item 5 asked that an ended sid stay ended until the latest exp a token of it CAN have. It stays
/// ended until the latest exp this replica has SEEN. An admin revoke (no token) on a replica that
/// has not served the sid yet, or a `v:1` message from the backend, is remembered for `ended_ttl`
/// only (10 min by default; tokens live 30): after it a misconfigured backend's "live" brings the
/// session back, on this replica and on every one the revoke reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sid_stays_ended_on_a_replica_that_had_not_seen_its_token() {
    let up = spawn_upstream().await;
    let backend = spawn_backend().await;
    let sc = start(
        &backend,
        "cache_ttl = \"200ms\"\nended_ttl = \"1s\"",
        &sites(up.addr),
    )
    .await;
    let sid = "imp-revoked-unseen";
    // The admin revokes from the console; this replica has not served the sid yet.
    revoke(&sc, sid).await;
    // The backend (misconfigured, or its row restored) keeps answering "live".
    backend.set_for(sid, 200, r#"{"active":true}"#);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The token (30 minutes left) arrives.
    let cookie = imp_cookie(sid);
    let r = send_raw(
        &sc,
        "GET",
        "/revoked/late",
        HOST,
        &[("Cookie", cookie.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "a revoked impersonation came back after ended_ttl (the upstream got it: {})",
        up.received("/revoked/late")
    );
}
