//! The impersonation banner (SPEC.md "The banner"), black-box: the real binary
//! between a recording (or scripted, streaming) upstream and a scriptable
//! platform backend, everything on loopback. Where it goes and where it does
//! not, through every content coding, while the upstream is still sending, under
//! the page's Content-Security-Policy, and the static assets it loads.
//!
//! Requests that must be seen byte for byte go over raw HTTP/1.1 (no
//! `Accept-Encoding` unless a test sets one).

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A site with `banner = false`, same upstream.
const OFF_HOST: &str = "legacy.nixtech.app";
const ADMIN_EMAIL: &str = "root@nixtech.app";
const AFTER_END: &str = "/ended";
const SPLICED: &str = "sessiongate_banners_spliced_total";
const SKIPPED: &str = "sessiongate_banner_skipped_total";

/// `cafe` (banner on, after_end_url = /ended) and `legacy` (banner off), both on `up`.
fn standard_config(backend: &Backend, up: SocketAddr) -> Config {
    Config::new()
        .liveness(Liveness::on(backend))
        .site(Site::new(HOST, up).after_end_url(AFTER_END))
        .site(Site::new(OFF_HOST, up).without_banner())
}

/// Only `cafe`, on `up`.
fn one_site_config(backend: &Backend, up: SocketAddr) -> Config {
    Config::new()
        .liveness(Liveness::on(backend))
        .site(Site::new(HOST, up))
}

// ---------------------------------------------------------------------------
// Pages and codings
// ---------------------------------------------------------------------------

/// Pseudo-random lower-case words (deterministic), about `len` bytes: compresses
/// like text, not like a run of one byte.
fn words(len: usize, seed: u64) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while s.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 2 + (x >> 61) as usize * 2;
        let newline = (x >> 20).is_multiple_of(13);
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push((b'a' + ((x >> 33) % 26) as u8) as char);
        }
        s.push(if newline { '\n' } else { ' ' });
    }
    s
}

const BIG_BODY_TAG: &str = "<body id=\"main\">";

/// A page whose `<body>` tag comes after ~96 KB of head and is followed by
/// ~200 KB of text, so that compressed it spans many reads.
fn big_page() -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>Big</title>\n<!-- {} -->\n</head>\n{BIG_BODY_TAG}\n<article>{}</article>\n</body></html>\n",
        words(96 * 1024, 1),
        words(200 * 1024, 2)
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip finish")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("zlib");
    e.finish().expect("zlib finish")
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("deflate");
    e.finish().expect("deflate finish")
}

fn brotli_enc(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("brotli");
    }
    out
}

fn zstd_enc(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// Decodes a whole body the client received under `content_encoding`.
fn decode_body(content_encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match content_encoding
        .map(|c| c.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("client body is not valid gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("client body is not valid br");
        }
        Some("zstd") => out = zstd::decode_all(body).expect("client body is not valid zstd"),
        Some(other) => panic!("the client got Content-Encoding {other:?}"),
    }
    out
}

// ---------------------------------------------------------------------------
// Looking at banners
// ---------------------------------------------------------------------------

/// The banner's `<script …>` start tag.
fn banner_script_tag(banner: &str) -> String {
    let s = banner
        .find("<script")
        .unwrap_or_else(|| panic!("no script in the banner: {banner}"));
    let e = banner[s..].find('>').expect("script tag end") + s + 1;
    banner[s..e].to_string()
}

/// Undoes HTML character references (enough for what the banner escapes).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => {
                if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse::<u32>().ok().and_then(char::from_u32)
                } else {
                    None
                }
            }
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Names of every tag (start or end) in `html`, lower-cased.
fn tag_names(html: &str) -> Vec<String> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    for (i, _) in html.match_indices('<') {
        let mut j = i + 1;
        if j < b.len() && b[j] == b'/' {
            j += 1;
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-') {
            j += 1;
        }
        if j > start {
            out.push(html[start..j].to_ascii_lowercase());
        }
    }
    out
}

fn is_chunked(r: &RawResponse) -> bool {
    framing(r).1
}

// ---------------------------------------------------------------------------
// Splicing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_follows_the_body_tag_with_the_admin_and_a_working_csrf_field() {
    let backend = spawn_backend().await;
    let page = page();
    let up = routed_upstream(vec![
        (
            "/page",
            Reply::html(page.as_bytes())
                .header("ETag", "\"v1\"")
                .header("Accept-Ranges", "bytes")
                .header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
                .header("Cache-Control", "public, max-age=600"),
        ),
        (
            "/xhtml",
            Reply::typed("application/xhtml+xml", page.as_bytes()),
        ),
    ])
    .await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let exp = now() + 1800;
    let cookie = session_cookie(&token(&imp_claims_with(
        "sid-splice",
        json!({ "exp": exp }),
    )));
    let spliced_before = sc.metric(SPLICED, &[]).await;

    let r = sc
        .raw_navigate(
            HOST,
            "/page",
            Some(&cookie),
            &[
                ("If-None-Match", "\"v0\""),
                ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("Range", "bytes=0-99"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let html = r.body_text();

    // Where: right after the body start tag, exactly once, the page otherwise untouched.
    let at = html
        .find(BANNER_START)
        .unwrap_or_else(|| panic!("no banner in {html:?}"));
    assert!(
        html[..at].ends_with(BODY_TAG),
        "the banner is not right after the <body> tag: {html:?}"
    );
    assert_eq!(
        html.matches("id=\"sessiongate-banner\"").count(),
        1,
        "{html}"
    );
    assert_eq!(
        without_banner(&html),
        page,
        "the page around the banner changed"
    );

    // What it says and carries.
    let b = banner(&html);
    // The banner's URLs name this origin (a `<base>` in the page cannot move them).
    let own = format!("//{}", sc.authority(HOST));
    for needle in [
        "ana@example.com".to_string(),
        ADMIN_EMAIL.to_string(),
        "cafe".to_string(),
        "ticket #4711".to_string(),
        "End impersonation".to_string(),
        "<input type=\"hidden\" name=\"csrf\" value=\"".to_string(),
        format!("<link rel=\"stylesheet\" href=\"{own}/.sessiongate/banner.css?v="),
        format!("<script src=\"{own}/.sessiongate/banner.js?v="),
    ] {
        assert!(b.contains(&needle), "the banner lacks {needle:?}: {b}");
    }
    assert_eq!(
        attr_after(&b, "<form", "method").as_deref(),
        Some("post"),
        "{b}"
    );
    assert_eq!(
        attr_after(&b, "<form", "action"),
        Some(format!("{own}{END_PATH}")),
        "{b}"
    );
    assert_eq!(b.matches("<form").count(), 1, "{b}");
    let time = attr_after(&b, "<time class=\"sg-left\"", "datetime")
        .unwrap_or_else(|| panic!("no <time class=\"sg-left\" datetime=…> in {b}"));
    let when = humantime::parse_rfc3339(&time)
        .unwrap_or_else(|e| panic!("datetime {time:?} is not RFC 3339: {e}"));
    assert_eq!(
        when,
        std::time::UNIX_EPOCH + Duration::from_secs(exp),
        "the countdown does not end at the token's exp"
    );
    let script = banner_script_tag(&b);
    assert!(script.contains(" async"), "{script}");
    assert!(!script.contains("nonce"), "no CSP, yet a nonce: {script}");
    assert!(
        !b.contains("style="),
        "inline style attributes need 'unsafe-inline': {b}"
    );
    assert!(!csrf_of(&b).is_empty());

    // Headers of a changed body.
    assert_eq!(
        r.header("content-length"),
        None,
        "a changed body kept its length"
    );
    assert!(is_chunked(&r), "HTTP/1.1 without a length must be chunked");
    assert_eq!(
        r.header("content-encoding"),
        None,
        "the client accepts no encoding"
    );
    assert_eq!(
        r.header("etag").as_deref(),
        Some("W/\"v1\""),
        "ETag not weakened"
    );
    assert_eq!(r.header("accept-ranges"), None, "ranges of a spliced body");
    assert_private("banner page", &r);
    let vary = header_tokens(&r, "vary");
    assert!(
        vary.iter().any(|t| t == "accept-encoding"),
        "Vary {vary:?} lacks Accept-Encoding"
    );

    // What the upstream was asked: identity, no conditional or range request.
    let got = up.find("/page");
    assert_eq!(got.header("accept-encoding").as_deref(), Some("identity"));
    for h in ["if-none-match", "if-modified-since", "range"] {
        assert_eq!(got.header(h), None, "{h} reached the upstream");
    }

    sc.wait_for_metric(SPLICED, &[], |v| v >= spliced_before + 1.0)
        .await;

    // XHTML documents get it too.
    let r = sc.raw_navigate(HOST, "/xhtml", Some(&cookie), &[]).await;
    assert_eq!(r.status, 200);
    let x = r.body_text();
    let at = x.find(BANNER_START).expect("banner in the XHTML page");
    assert!(x[..at].ends_with(BODY_TAG), "{x}");

    // The csrf field works: a same-origin form POST with it ends the session.
    let r = sc.end_with_form(&cookie, &csrf_of(&b), "text/html").await;
    assert_eq!(r.status, 303, "the banner's own csrf was refused");
    assert_eq!(r.header("location").as_deref(), Some(AFTER_END));
}

/// (name, Content-Encoding header, encoder)
type Codec = (&'static str, &'static str, fn(&[u8]) -> Vec<u8>);

const UPSTREAM_CODINGS: &[Codec] = &[
    ("gzip", "gzip", gzip),
    ("x-gzip", "x-gzip", gzip),
    ("deflate-zlib", "deflate", zlib),
    ("deflate-raw", "deflate", raw_deflate),
    ("br", "br", brotli_enc),
    ("zstd", "zstd", zstd_enc),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_goes_through_compressed_upstream_bodies_and_is_compressed_back() {
    let backend = spawn_backend().await;
    let page = big_page();
    let mut routes = vec![("/enc/identity".to_string(), Reply::html(page.as_bytes()))];
    for (name, header, enc) in UPSTREAM_CODINGS {
        routes.push((
            format!("/enc/{name}"),
            Reply::html(&enc(page.as_bytes()))
                .header("Content-Encoding", header)
                .header("ETag", "\"big\""),
        ));
    }
    let up = routed_upstream(
        routes
            .iter()
            .map(|(p, r)| (p.as_str(), r.clone()))
            .collect(),
    )
    .await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let cookie = imp_cookie("sid-codings");

    // (client Accept-Encoding, Content-Encoding it must get)
    let clients: &[(Option<&str>, Option<&str>)] = &[
        (None, None),
        (Some("identity"), None),
        (Some("gzip"), Some("gzip")),
        (Some("gzip, deflate"), Some("gzip")),
        (Some("gzip, deflate, br, zstd"), Some("br")),
        (Some("br"), Some("br")),
        (Some("br;q=0, gzip"), Some("gzip")),
        (Some("zstd"), None),
    ];
    let mut upstream_names = vec!["identity"];
    upstream_names.extend(UPSTREAM_CODINGS.iter().map(|c| c.0));
    for name in upstream_names {
        let path = format!("/enc/{name}");
        for (ae, expect_ce) in clients {
            let what = format!("upstream {name}, client Accept-Encoding {ae:?}");
            let extra: Vec<(&str, &str)> = ae.iter().map(|v| ("Accept-Encoding", *v)).collect();
            let r = sc.raw_navigate(HOST, &path, Some(&cookie), &extra).await;
            assert_eq!(r.status, 200, "{what}: {}", r.body_text());
            let ce = r.header("content-encoding");
            assert_eq!(
                ce.as_deref().map(str::to_ascii_lowercase).as_deref(),
                *expect_ce,
                "{what}: Content-Encoding"
            );
            assert_eq!(r.header("content-length"), None, "{what}");
            let decoded = decode_body(ce.as_deref(), &r.body);
            let html = String::from_utf8(decoded)
                .unwrap_or_else(|e| panic!("{what}: the decoded body is not UTF-8: {e}"));
            let at = html
                .find(BANNER_START)
                .unwrap_or_else(|| panic!("{what}: no banner"));
            assert!(
                html[..at].ends_with(BIG_BODY_TAG),
                "{what}: the banner is not right after <body>"
            );
            assert!(
                without_banner(&html) == page,
                "{what}: the page around the banner changed (got {} bytes without the banner, expected {})",
                without_banner(&html).len(),
                page.len()
            );
            assert!(
                header_tokens(&r, "vary")
                    .iter()
                    .any(|t| t == "accept-encoding"),
                "{what}: Vary {:?}",
                r.header_all("vary")
            );
            if name != "identity" {
                assert_eq!(r.header("etag").as_deref(), Some("W/\"big\""), "{what}");
            }
        }
        // The upstream sent its coding although it was asked for identity.
        let last = up.last();
        assert_eq!(
            last.header("accept-encoding").as_deref(),
            Some("identity"),
            "upstream {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_users_get_byte_identical_pages() {
    let backend = spawn_backend().await;
    let page = page();
    let zipped = gzip(big_page().as_bytes());
    let csp = "default-src 'none'; script-src 'nonce-abc'; style-src 'self'; form-action 'none'";
    let up = routed_upstream(vec![
        (
            "/page",
            Reply::html(page.as_bytes())
                .header("ETag", "\"v1\"")
                .header("Accept-Ranges", "bytes")
                .header("Cache-Control", "public, max-age=600")
                .header("Content-Security-Policy", csp),
        ),
        (
            "/gz",
            Reply::html(&zipped)
                .header("Content-Encoding", "gzip")
                .header("ETag", "\"gz1\"")
                .header("Vary", "Accept-Encoding"),
        ),
    ])
    .await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let normal = session_cookie(&token(&claims()));
    let spliced_before = sc.metric(SPLICED, &[]).await;

    for (who, cookie) in [("anonymous", None), ("normal user", Some(normal.as_str()))] {
        for host in [HOST, OFF_HOST] {
            let what = format!("{who} on {host}");
            let r = sc
                .raw_navigate(
                    host,
                    "/page",
                    cookie,
                    &[("Accept-Encoding", "gzip, br"), ("If-None-Match", "\"v0\"")],
                )
                .await;
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.body, page.as_bytes(), "{what}: body changed");
            assert_eq!(
                r.header("content-length"),
                Some(page.len().to_string()),
                "{what}"
            );
            assert_eq!(r.header("etag").as_deref(), Some("\"v1\""), "{what}");
            assert_eq!(
                r.header("accept-ranges").as_deref(),
                Some("bytes"),
                "{what}"
            );
            assert_eq!(
                r.header("cache-control").as_deref(),
                Some("public, max-age=600"),
                "{what}"
            );
            assert_eq!(
                r.header_all("content-security-policy"),
                vec![csp.to_string()],
                "{what}: CSP changed"
            );
            assert!(!is_chunked(&r), "{what}: re-framed");
            let got = up.last();
            assert_eq!(
                got.header("if-none-match").as_deref(),
                Some("\"v0\""),
                "{what}: conditional request dropped"
            );
            assert_eq!(
                got.header("accept-encoding").as_deref(),
                Some("gzip, br"),
                "{what}: Accept-Encoding rewritten"
            );

            let r = sc
                .raw_navigate(host, "/gz", cookie, &[("Accept-Encoding", "gzip")])
                .await;
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.body, zipped, "{what}: gzip body changed");
            assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
            assert_eq!(
                r.header("content-length"),
                Some(zipped.len().to_string()),
                "{what}"
            );
            assert_eq!(r.header("etag").as_deref(), Some("\"gz1\""), "{what}");
        }
    }
    assert_eq!(
        sc.metric(SPLICED, &[]).await,
        spliced_before,
        "a banner was spliced for a normal user"
    );
}

/// (what, host, method, path, extra headers, upstream body, metric reason)
type SkipCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_banner_where_it_does_not_belong() {
    let backend = spawn_backend().await;
    let page = page();
    let fragment =
        "<!DOCTYPE html><title>partial</title><div class=\"row\">no body tag here</div>\n";
    let json_body = r#"{"html":"<html><body><p>x</p></body></html>"}"#;
    let compressed = b"\x1f\x9d\x90<body>not really compressed</body>".to_vec();
    let stacked = gzip(&brotli_enc(page.as_bytes()));
    let up = routed_upstream(vec![
        (
            "/page",
            Reply::html(page.as_bytes()).header("ETag", "\"v1\""),
        ),
        (
            "/json",
            Reply::typed("application/json", json_body.as_bytes()),
        ),
        (
            "/attachment",
            Reply::html(page.as_bytes()).header(
                "Content-Disposition",
                "attachment; filename=\"orders.html\"",
            ),
        ),
        (
            "/attachment-caps",
            Reply::html(page.as_bytes()).header("Content-Disposition", "Attachment"),
        ),
        ("/fragment", Reply::html(fragment.as_bytes())),
        (
            "/compress",
            Reply::html(&compressed).header("Content-Encoding", "compress"),
        ),
        (
            "/stacked",
            Reply::html(&stacked).header("Content-Encoding", "br, gzip"),
        ),
    ])
    .await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let cookie = imp_cookie("sid-skips");

    let cases: Vec<SkipCase> = vec![
        (
            "Sec-Fetch-Dest: empty",
            HOST,
            "GET",
            "/page",
            vec![("Sec-Fetch-Dest", "empty"), ("Sec-Fetch-Mode", "cors")],
            page.as_bytes().to_vec(),
            "not_document",
        ),
        (
            "Sec-Fetch-Dest: iframe",
            HOST,
            "GET",
            "/page",
            vec![("Sec-Fetch-Dest", "iframe")],
            page.as_bytes().to_vec(),
            "not_document",
        ),
        (
            "JSON",
            HOST,
            "GET",
            "/json",
            vec![],
            json_body.as_bytes().to_vec(),
            "not_html",
        ),
        (
            "attachment",
            HOST,
            "GET",
            "/attachment",
            vec![],
            page.as_bytes().to_vec(),
            "attachment",
        ),
        (
            "Attachment",
            HOST,
            "GET",
            "/attachment-caps",
            vec![],
            page.as_bytes().to_vec(),
            "attachment",
        ),
        (
            "no body tag",
            HOST,
            "GET",
            "/fragment",
            vec![],
            fragment.as_bytes().to_vec(),
            "no_body_tag",
        ),
        (
            "Content-Encoding: compress",
            HOST,
            "GET",
            "/compress",
            vec![("Accept-Encoding", "gzip, compress")],
            compressed.clone(),
            "unknown_encoding",
        ),
        (
            "Content-Encoding: br, gzip",
            HOST,
            "GET",
            "/stacked",
            vec![("Accept-Encoding", "gzip, br")],
            stacked.clone(),
            "unknown_encoding",
        ),
        (
            "banner-off site",
            OFF_HOST,
            "GET",
            "/page",
            vec![],
            page.as_bytes().to_vec(),
            "site_off",
        ),
    ];
    for (what, host, method, path, extra, expected, reason) in cases {
        let before = sc.metric(SKIPPED, &[("reason", reason)]).await;
        let mut hs: Vec<(&str, &str)> = vec![("Accept", "text/html,*/*;q=0.8")];
        hs.extend(extra);
        let r = sc.raw(method, host, path, Some(&cookie), &hs).await;
        assert_eq!(r.status, 200, "{what}: {}", r.body_text());
        assert!(
            !r.body_text().contains("sessiongate-banner"),
            "{what}: got a banner"
        );
        assert!(
            r.body == expected,
            "{what}: the body changed: {:?}",
            r.body_text()
        );
        if reason != "no_body_tag" {
            assert_eq!(
                r.header("content-length"),
                Some(expected.len().to_string()),
                "{what}: Content-Length"
            );
        }
        assert_private(what, &r);
        sc.wait_for_metric(SKIPPED, &[("reason", reason)], |v| v >= before + 1.0)
            .await;
    }

    // HEAD: headers only, no banner.
    let before = sc.metric(SKIPPED, &[("reason", "head")]).await;
    let r = sc
        .raw(
            "HEAD",
            HOST,
            "/page",
            Some(&cookie),
            &[("Accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD got a body: {:?}", r.body_text());
    assert_private("HEAD", &r);
    sc.wait_for_metric(SKIPPED, &[("reason", "head")], |v| v >= before + 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_the_token_is_shown_only_escaped() {
    let backend = spawn_backend().await;
    let page = page();
    let up = routed_upstream(vec![("/page", Reply::html(page.as_bytes()))]).await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;

    let admin = "<script>alert(\"pwn\")</script>\"'><img src=x onerror=alert(1)>@evil.test";
    let reason = "</div><b onmouseover=alert(2)>urgent</b> & \"quoted\" 'single' \u{2014} J\u{f6}rg \u{1F600}";
    let target = "<i>ana</i>@example.com";
    let claims = claims_with(json!({
        "email": target,
        "imp": {
            "sid": "sid-escape",
            "admin_id": "admin-7",
            "admin_email": admin,
            "reason": reason,
        }
    }));
    let cookie = session_cookie(&token(&claims));
    let r = sc.raw_navigate(HOST, "/page", Some(&cookie), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let html = r.body_text();
    let b = banner(&html);

    // Only the banner's own elements: nothing from the token became markup.
    let allowed = [
        "div", "link", "span", "strong", "bdi", "time", "form", "input", "button", "script",
    ];
    for name in tag_names(&b) {
        assert!(
            allowed.contains(&name.as_str()),
            "a <{name}> element came from the token: {b}"
        );
    }
    assert_eq!(b.matches("<script").count(), 1, "{b}");
    assert!(!b.contains("onerror=alert(1)>"), "{b}");
    assert!(!b.contains("'><img"), "{b}");
    assert!(b.is_ascii(), "non-ASCII must be character references: {b}");

    // … and every value reads back exactly.
    let text = unescape(&b);
    for v in [admin, reason, target] {
        assert!(text.contains(v), "{v:?} is not shown (escaped) in {b}");
    }
    // The rest of the page is unchanged and there is one banner.
    assert_eq!(without_banner(&html), page);
    assert_eq!(html.matches(BANNER_START).count(), 1);
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

/// Decodes the client's body piece by piece.
enum StreamDecoder {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl StreamDecoder {
    fn new(content_encoding: Option<&str>) -> StreamDecoder {
        match content_encoding.map(str::to_ascii_lowercase).as_deref() {
            None => StreamDecoder::Identity,
            Some("gzip") => {
                StreamDecoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some("br") => {
                StreamDecoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Some(other) => panic!("unexpected Content-Encoding {other:?}"),
        }
    }

    /// The decoded bytes that `data` completes.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            StreamDecoder::Identity => data.to_vec(),
            StreamDecoder::Gzip(d) => {
                d.write_all(data).expect("gzip from the proxy");
                d.flush().expect("gzip flush");
                std::mem::take(d.get_mut())
            }
            StreamDecoder::Br(d) => {
                d.write_all(data).expect("br from the proxy");
                d.flush().expect("br flush");
                std::mem::take(d.get_mut())
            }
        }
    }
}

/// Shared between a slow upstream handler and the test.
#[derive(Default)]
struct SlowProbe {
    /// The handler is about to write the rest of the page.
    second_write: AtomicBool,
    /// The client saw the banner: the handler may go on.
    seen: tokio::sync::Notify,
}

/// An upstream compressing as it goes: each flush hands over what decodes so far.
enum UpstreamEncoder {
    Identity,
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl UpstreamEncoder {
    /// By the last path segment: identity, gzip, br or zstd.
    fn for_path(path: &str) -> (UpstreamEncoder, Option<&'static str>) {
        match path.rsplit('/').next().unwrap_or("") {
            "gzip" => (
                UpstreamEncoder::Gzip(flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::fast(),
                )),
                Some("gzip"),
            ),
            "br" => (
                UpstreamEncoder::Br(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    4096,
                    4,
                    22,
                ))),
                Some("br"),
            ),
            "zstd" => (
                UpstreamEncoder::Zstd(
                    zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder"),
                ),
                Some("zstd"),
            ),
            _ => (UpstreamEncoder::Identity, None),
        }
    }

    /// Compresses `data` and flushes: the bytes that decode to everything so far.
    fn flushed(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            UpstreamEncoder::Identity => data.to_vec(),
            UpstreamEncoder::Gzip(e) => {
                e.write_all(data).expect("gzip");
                e.flush().expect("gzip sync flush");
                std::mem::take(e.get_mut())
            }
            UpstreamEncoder::Br(e) => {
                e.write_all(data).expect("br");
                e.flush().expect("br flush");
                std::mem::take(e.get_mut())
            }
            UpstreamEncoder::Zstd(e) => {
                e.write_all(data).expect("zstd");
                e.flush().expect("zstd flush");
                std::mem::take(e.get_mut())
            }
        }
    }

    /// Compresses `data` and ends the stream.
    fn finished(self, data: &[u8]) -> Vec<u8> {
        match self {
            UpstreamEncoder::Identity => data.to_vec(),
            UpstreamEncoder::Gzip(mut e) => {
                e.write_all(data).expect("gzip");
                e.finish().expect("gzip finish")
            }
            UpstreamEncoder::Br(mut e) => {
                e.write_all(data).expect("br");
                e.into_inner()
            }
            UpstreamEncoder::Zstd(mut e) => {
                e.write_all(data).expect("zstd");
                e.finish().expect("zstd finish")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_reaches_the_client_while_the_upstream_is_still_sending() {
    let first = format!(
        "<!DOCTYPE html>\n<html><head><title>slow</title></head><body><p>first part</p>{}",
        words(2048, 7)
    );
    let rest = format!("<p>second part</p>{}</body></html>\n", words(4096, 8));
    let probe: Arc<Mutex<Arc<SlowProbe>>> = Arc::new(Mutex::new(Arc::new(SlowProbe::default())));

    // `/slow/<coding>`: headers and the page up to a bit after <body> (flushed), a pause of
    // 2 s (cut short once the client has seen the banner), then the rest.
    let (first_h, rest_h, probe_h) = (first.clone(), rest.clone(), probe.clone());
    let (up_addr, _task) = spawn_stream_upstream(move |head, mut stream| {
        let (first, rest) = (first_h.clone(), rest_h.clone());
        let probe = probe_h.lock().expect("probe").clone();
        async move {
            let (mut encoder, coding) = UpstreamEncoder::for_path(&head.target);
            let mut head_out = CHUNKED_HTML_HEAD.to_string();
            if let Some(c) = coding {
                head_out.push_str(&format!("Content-Encoding: {c}\r\n"));
            }
            head_out.push_str("\r\n");
            if stream.write_all(head_out.as_bytes()).await.is_err() {
                return;
            }
            let first_bytes = encoder.flushed(first.as_bytes());
            if write_chunk(&mut stream, &first_bytes).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = probe.seen.notified() => {}
            }
            probe.second_write.store(true, Ordering::SeqCst);
            let rest_bytes = encoder.finished(rest.as_bytes());
            let _ = write_chunk(&mut stream, &rest_bytes).await;
            let _ = stream.write_all(b"0\r\n\r\n").await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&one_site_config(&backend, up_addr)).await;
    let cookie = imp_cookie("sid-slow");

    // (upstream path, client Accept-Encoding, expected Content-Encoding)
    let variants: &[(&str, Option<&str>, Option<&str>)] = &[
        ("/slow/identity", None, None),
        ("/slow/identity", Some("gzip"), Some("gzip")),
        ("/slow/identity", Some("br, gzip"), Some("br")),
        ("/slow/gzip", None, None),
        ("/slow/gzip", Some("br"), Some("br")),
        ("/slow/br", Some("gzip"), Some("gzip")),
        ("/slow/zstd", None, None),
    ];
    let mut late = Vec::new();
    for (path, ae, expect_ce) in variants {
        let what = format!("upstream {path}, client Accept-Encoding {ae:?}");
        let p = Arc::new(SlowProbe::default());
        *probe.lock().expect("probe") = p.clone();

        let mut hs = vec![("Cookie", cookie.as_str()), ("Accept", "text/html")];
        if let Some(ae) = ae {
            hs.push(("Accept-Encoding", ae));
        }
        let req = raw_request_bytes("GET", path, &sc.authority(HOST), &hs);
        let mut resp = Streamed::open(sc.addr, &req).await;
        assert_eq!(resp.status, 200, "{what}");
        let ce = resp.header("content-encoding");
        assert_eq!(ce.as_deref(), *expect_ce, "{what}: Content-Encoding");
        let mut dec = StreamDecoder::new(ce.as_deref());
        let mut text = Vec::new();
        let mut banner_seen = false;
        while let Some(data) = resp.next().await {
            text.extend(dec.push(&data));
            if !banner_seen {
                let s = String::from_utf8_lossy(&text);
                if s.contains(BANNER_START) && banner_range(&s).is_some() {
                    banner_seen = true;
                    if p.second_write.load(Ordering::SeqCst) {
                        late.push(what.clone());
                    }
                    p.seen.notify_one();
                }
            }
        }
        assert!(banner_seen, "{what}: no banner at all");
        let html = String::from_utf8(text).expect("UTF-8 page");
        assert_eq!(
            without_banner(&html),
            format!("{first}{rest}"),
            "{what}: page changed"
        );
    }
    assert!(
        late.is_empty(),
        "the banner reached the client only after the upstream had sent the rest of the \
         page (not streamed) for: {late:#?}"
    );
}

/// VmRSS and VmHWM of a process, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const BIG_PAGE_HEAD: &str =
    "<!DOCTYPE html>\n<html><head><title>report</title></head><body><table>\n";
const BIG_PAGE_TAIL: &str = "</table></body></html>\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mb_page_streams_with_flat_memory() {
    const MB: u64 = 1024 * 1024;
    let sent = Arc::new(AtomicU64::new(0));
    let sent_h = sent.clone();
    let (up_addr, _task) = spawn_stream_upstream(move |head, mut stream| {
        let sent = sent_h.clone();
        async move {
            // `/big/<MB>`: a generated report of that many MB (at least one 64 KB chunk).
            let size: u64 = head
                .target
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(1)
                * MB;
            let mut head_out = CHUNKED_HTML_HEAD.to_string();
            head_out.push_str("\r\n");
            if stream.write_all(head_out.as_bytes()).await.is_err() {
                return;
            }
            let mut total = 0u64;
            let mut row = 0u64;
            let mut chunk = String::from(BIG_PAGE_HEAD);
            loop {
                while chunk.len() < 64 * 1024 {
                    row += 1;
                    chunk.push_str(&format!(
                        "<tr><td>{row}</td><td class=\"n\">order {row} for customer {}</td><td>{} EUR</td></tr>\n",
                        row % 977,
                        row * 7 % 10_000
                    ));
                }
                if total + chunk.len() as u64 >= size {
                    chunk.push_str(BIG_PAGE_TAIL);
                    total += chunk.len() as u64;
                    if write_chunk(&mut stream, chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    break;
                }
                total += chunk.len() as u64;
                if write_chunk(&mut stream, chunk.as_bytes()).await.is_err() {
                    return;
                }
                chunk.clear();
            }
            // Known before the end of the body can reach the client.
            sent.store(total, Ordering::SeqCst);
            let _ = stream.write_all(b"0\r\n\r\n").await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&one_site_config(&backend, up_addr)).await;
    let cookie = imp_cookie("sid-big");

    // Reads the whole page, discarding as it goes; returns (decoded bytes, banner length).
    let fetch = |size_mb: u64, ae: Option<&'static str>| {
        let req = {
            let mut hs = vec![("Cookie", cookie.as_str()), ("Accept", "text/html")];
            if let Some(ae) = ae {
                hs.push(("Accept-Encoding", ae));
            }
            raw_request_bytes("GET", &format!("/big/{size_mb}"), &sc.authority(HOST), &hs)
        };
        let addr = sc.addr;
        async move {
            let mut resp = Streamed::open(addr, &req).await;
            assert_eq!(resp.status, 200);
            let mut dec = StreamDecoder::new(resp.header("content-encoding").as_deref());
            let mut first = Vec::new();
            let mut tail = Vec::new();
            let mut total = 0u64;
            while let Some(data) = resp.next().await {
                let plain = dec.push(&data);
                total += plain.len() as u64;
                if first.len() < 16 * 1024 {
                    first.extend_from_slice(&plain[..plain.len().min(16 * 1024)]);
                }
                tail.extend_from_slice(&plain);
                if tail.len() > 4096 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            let first = String::from_utf8_lossy(&first).into_owned();
            let b = banner_range(&first)
                .map(|(s, e)| {
                    assert!(first[..s].ends_with("<body>"), "banner not after <body>");
                    e - s
                })
                .unwrap_or_else(|| panic!("no banner in the first KBs: {first:.2000}"));
            assert!(
                tail.ends_with(BIG_PAGE_TAIL.as_bytes()),
                "the page's end did not arrive"
            );
            (total, b as u64)
        }
    };

    // Warm-up with a small page (~64 KB): code paths, connection pools, first use of the
    // rewriter and encoder; nothing that would hide a per-response buffer of some MB.
    for ae in [None, Some("br")] {
        fetch(0, ae).await;
    }
    let (rss0, hwm0) = memory_kb(sc.pid());

    for ae in [None, Some("br")] {
        let (total, banner_len) = tokio::time::timeout(Duration::from_secs(300), fetch(64, ae))
            .await
            .expect("the 64 MB page did not finish within 300 s");
        let upstream_total = sent.load(Ordering::SeqCst);
        assert!(upstream_total >= 64 * MB, "upstream sent {upstream_total}");
        assert_eq!(
            total,
            upstream_total + banner_len,
            "Accept-Encoding {ae:?}: the client got a different amount than the page plus the banner"
        );
    }
    let (rss1, hwm1) = memory_kb(sc.pid());
    let growth = hwm1.saturating_sub(hwm0);
    assert!(
        growth < 32 * 1024,
        "peak memory grew by {growth} kB streaming 2 × 64 MB (VmHWM {hwm0} -> {hwm1} kB, VmRSS {rss0} -> {rss1} kB)"
    );
    eprintln!("VmHWM {hwm0} -> {hwm1} kB, VmRSS {rss0} -> {rss1} kB");
}

// ---------------------------------------------------------------------------
// Content-Security-Policy
// ---------------------------------------------------------------------------

/// A policy as directive name -> sources (one policy, no commas).
fn directives(policy: &str) -> HashMap<String, Vec<String>> {
    policy
        .split(';')
        .filter_map(|d| {
            let mut parts = d.split_whitespace();
            let name = parts.next()?.to_ascii_lowercase();
            Some((name, parts.map(str::to_string).collect()))
        })
        .collect()
}

fn sources(policy: &str, directive: &str) -> Vec<String> {
    directives(policy)
        .get(directive)
        .cloned()
        .unwrap_or_else(|| panic!("no {directive} in {policy:?}"))
}

fn page_with_meta(meta_csp: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"{meta_csp}\">\
         <title>meta</title></head><body><p>meta</p></body></html>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csp_is_widened_only_for_the_banner_and_unsafe_inline_gets_no_nonce() {
    let backend = spawn_backend().await;
    let page = page();
    let with_csp = |csp: &str| Reply::html(page.as_bytes()).header("Content-Security-Policy", csp);
    let up = routed_upstream(vec![
        (
            "/self-inline",
            with_csp("script-src 'self' 'unsafe-inline'"),
        ),
        (
            "/inline-only",
            with_csp("script-src 'unsafe-inline'; style-src 'unsafe-inline'"),
        ),
        (
            "/strict",
            with_csp("script-src 'nonce-abc' 'strict-dynamic'; object-src 'none'; base-uri 'none'"),
        ),
        (
            "/nonce-none",
            with_csp("default-src 'none'; script-src 'nonce-abc'; style-src 'self'"),
        ),
        ("/none", with_csp("default-src 'none'")),
        ("/form", with_csp("default-src 'self'; form-action 'none'")),
        (
            "/report-only",
            Reply::html(page.as_bytes())
                .header(
                    "Content-Security-Policy",
                    "script-src 'self' 'unsafe-inline'",
                )
                .header(
                    "Content-Security-Policy-Report-Only",
                    "default-src 'none'; report-uri /csp-report",
                ),
        ),
        (
            "/meta-strict",
            Reply::html(page_with_meta("script-src 'nonce-m1' 'strict-dynamic'").as_bytes()),
        ),
        (
            "/meta-inline",
            Reply::html(page_with_meta("script-src 'self' 'unsafe-inline'").as_bytes()),
        ),
        (
            "/json",
            Reply::typed("application/json", b"")
                .header("Content-Security-Policy", "default-src 'none'")
                .body(b"{}"),
        ),
    ])
    .await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let cookie = imp_cookie("sid-csp");
    let auth = sc.authority(HOST);
    let js = format!("{auth}/.sessiongate/banner.js");
    let css = format!("{auth}/.sessiongate/banner.css");
    let end = format!("{auth}{END_PATH}");

    let scr = &sc;
    let get_cookie = cookie.clone();
    let get = move |path: &'static str| {
        let cookie = get_cookie.clone();
        let sc = scr;
        async move {
            let r = sc.raw_navigate(HOST, path, Some(&cookie), &[]).await;
            assert_eq!(r.status, 200, "{path}");
            let policies = r.header_all("content-security-policy");
            let html = r.body_text();
            let b = banner(&html);
            (r, policies, html, banner_script_tag(&b))
        }
    };
    let nonce_of = |script: &str| attr_after(script, "<script", "nonce");

    // 'self' already allows the assets: untouched, no nonce.
    let (_, p, _, script) = get("/self-inline").await;
    assert_eq!(p, vec!["script-src 'self' 'unsafe-inline'".to_string()]);
    assert_eq!(nonce_of(&script), None, "{script}");

    // 'unsafe-inline' without 'self': exact URLs, never a nonce.
    let (_, p, _, script) = get("/inline-only").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        !p[0].contains("'nonce-"),
        "a nonce disables 'unsafe-inline': {}",
        p[0]
    );
    assert_eq!(
        sources(&p[0], "script-src"),
        vec!["'unsafe-inline'".to_string(), js.clone()]
    );
    assert_eq!(
        sources(&p[0], "style-src"),
        vec!["'unsafe-inline'".to_string(), css.clone()]
    );
    assert_eq!(nonce_of(&script), None, "{script}");

    // 'strict-dynamic': a per-response nonce, on the banner's script.
    let (_, p, _, script) = get("/strict").await;
    assert_eq!(p.len(), 1, "{p:?}");
    let src = sources(&p[0], "script-src");
    let nonce = nonce_of(&script).unwrap_or_else(|| panic!("no nonce on {script} under {p:?}"));
    assert!(!nonce.is_empty());
    assert_eq!(
        src,
        vec![
            "'nonce-abc'".to_string(),
            "'strict-dynamic'".to_string(),
            format!("'nonce-{nonce}'")
        ]
    );
    assert_eq!(sources(&p[0], "object-src"), vec!["'none'".to_string()]);
    assert_eq!(sources(&p[0], "base-uri"), vec!["'none'".to_string()]);
    let (_, _, _, script2) = get("/strict").await;
    assert_ne!(
        nonce_of(&script2),
        Some(nonce),
        "the nonce is reused across responses"
    );

    // default-src 'none' with a nonce-based script-src: the exact script URL, no nonce.
    let (_, p, _, script) = get("/nonce-none").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(sources(&p[0], "default-src"), vec!["'none'".to_string()]);
    assert_eq!(
        sources(&p[0], "script-src"),
        vec!["'nonce-abc'".to_string(), js.clone()]
    );
    assert_eq!(sources(&p[0], "style-src"), vec!["'self'".to_string()]);
    assert_eq!(nonce_of(&script), None, "{script}");

    // default-src 'none' alone: 'none' goes, the two asset URLs come in.
    let (_, p, _, _) = get("/none").await;
    let mut d = sources(&p[0], "default-src");
    d.sort();
    let mut want = vec![js.clone(), css.clone()];
    want.sort();
    assert_eq!(d, want, "{p:?}");

    // form-action 'none': the End form's URL.
    let (_, p, _, _) = get("/form").await;
    assert_eq!(sources(&p[0], "form-action"), vec![end.clone()], "{p:?}");
    assert_eq!(sources(&p[0], "default-src"), vec!["'self'".to_string()]);

    // Report-Only is edited the same way.
    let (r, p, _, _) = get("/report-only").await;
    assert_eq!(p, vec!["script-src 'self' 'unsafe-inline'".to_string()]);
    let ro = r.header_all("content-security-policy-report-only");
    assert_eq!(ro.len(), 1, "{ro:?}");
    let mut d = sources(&ro[0], "default-src");
    d.sort();
    assert_eq!(d, want, "{ro:?}");
    assert_eq!(
        sources(&ro[0], "report-uri"),
        vec!["/csp-report".to_string()]
    );

    // A <meta> policy in the page is edited the same way.
    let (_, _, html, script) = get("/meta-strict").await;
    let nonce =
        nonce_of(&script).unwrap_or_else(|| panic!("no nonce under a meta strict-dynamic: {html}"));
    let meta = attr_after(
        &html,
        "<meta http-equiv=\"Content-Security-Policy\"",
        "content",
    )
    .expect("meta CSP kept");
    assert_eq!(
        sources(&unescape(&meta), "script-src"),
        vec![
            "'nonce-m1'".to_string(),
            "'strict-dynamic'".to_string(),
            format!("'nonce-{nonce}'")
        ]
    );
    let (_, _, html, script) = get("/meta-inline").await;
    assert_eq!(nonce_of(&script), None, "{script}");
    let meta = attr_after(
        &html,
        "<meta http-equiv=\"Content-Security-Policy\"",
        "content",
    )
    .expect("meta CSP kept");
    assert_eq!(unescape(&meta), "script-src 'self' 'unsafe-inline'");

    // No banner, no edit.
    let r = sc.raw_navigate(HOST, "/json", Some(&cookie), &[]).await;
    assert_eq!(
        r.header_all("content-security-policy"),
        vec!["default-src 'none'".to_string()]
    );
}

// ---------------------------------------------------------------------------
// Assets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_static_long_cached_and_free_of_user_data() {
    let backend = spawn_backend().await;
    let up = routed_upstream(vec![("/page", Reply::html(page().as_bytes()))]).await;
    let sc = Sidecar::start(&standard_config(&backend, up.addr)).await;
    let cookie = imp_cookie("sid-assets");
    let html = sc
        .raw_navigate(HOST, "/page", Some(&cookie), &[])
        .await
        .body_text();
    let b = banner(&html);
    // Network-path references on this origin: the request targets are what follows it.
    let own = format!("//{}", sc.authority(HOST));
    let css_href = attr_after(&b, "<link rel=\"stylesheet\"", "href").expect("css href");
    let js_src = attr_after(&b, "<script", "src").expect("script src");
    let css_href = css_href
        .strip_prefix(&own)
        .unwrap_or_else(|| panic!("{css_href} is not on {own}"))
        .to_string();
    let js_src = js_src
        .strip_prefix(&own)
        .unwrap_or_else(|| panic!("{js_src} is not on {own}"))
        .to_string();
    assert!(
        css_href.starts_with("/.sessiongate/banner.css?v="),
        "{css_href}"
    );
    assert!(js_src.starts_with("/.sessiongate/banner.js?v="), "{js_src}");

    for (path, versioned, ctype) in [
        (
            "/.sessiongate/banner.js",
            js_src.as_str(),
            "text/javascript",
        ),
        ("/.sessiongate/banner.css", css_href.as_str(), "text/css"),
    ] {
        let mut bodies = Vec::new();
        for (target, c) in [
            (path, None),
            (versioned, None),
            (versioned, Some(cookie.as_str())),
        ] {
            let r = sc.raw("GET", HOST, &unescape(target), c, &[]).await;
            assert_eq!(r.status, 200, "{target}");
            let ct = r.header("content-type").unwrap_or_default();
            assert!(ct.starts_with(ctype), "{target}: Content-Type {ct:?}");
            assert_eq!(
                r.header("x-content-type-options").as_deref(),
                Some("nosniff"),
                "{target}"
            );
            let cc = r.header("cache-control").unwrap_or_default();
            for t in ["public", "max-age=31536000", "immutable"] {
                assert!(cc.contains(t), "{target}: Cache-Control {cc:?}");
            }
            assert!(r.header("set-cookie").is_none(), "{target}");
            let text = r.body_text();
            for private in [
                "ana@example.com",
                ADMIN_EMAIL,
                "user-42",
                "sid-assets",
                "4711",
            ] {
                assert!(!text.contains(private), "{target} carries {private:?}");
            }
            assert!(!text.is_empty(), "{target}");
            bodies.push(r.body);
        }
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{path} differs by cookie or version"
        );
    }
    // The script hooks the banner element and keeps a countdown.
    let js = sc
        .raw("GET", HOST, "/.sessiongate/banner.js", None, &[])
        .await
        .body_text();
    assert!(js.contains("sessiongate-banner"), "{js}");
    assert_eq!(up.count(), 1, "an asset request reached the upstream");
}

// ---------------------------------------------------------------------------
// Decompression bombs and memory
// ---------------------------------------------------------------------------

/// Decoded size of the bomb page: far beyond any honest page, so it is always cut off.
const BOMB_DECODED: usize = 256 * 1024 * 1024;

/// A gzip page whose head and `<body>` are honest, followed by 256 MiB of spaces (about
/// 250 KB compressed, a ratio near 1000:1).
fn gzip_bomb() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"<!DOCTYPE html><html><head><title>bomb</title></head><body><p>")
        .expect("gz");
    let spaces = vec![b' '; 1024 * 1024];
    for _ in 0..BOMB_DECODED / spaces.len() {
        gz.write_all(&spaces).expect("gz");
    }
    gz.write_all(b"</p></body></html>").expect("gz");
    gz.finish().expect("gz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_are_cut_off_without_leaving_memory_behind() {
    const CONCURRENT: usize = 16;
    let bomb = Arc::new(gzip_bomb());
    let page = Arc::new(gzip(page().as_bytes()));
    let (up_addr, _task) = spawn_stream_upstream(move |head, mut stream| {
        let body = if head.path() == "/bomb" {
            bomb.clone()
        } else {
            page.clone()
        };
        async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).await.is_ok() {
                let _ = stream.write_all(&body).await;
            }
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let backend = spawn_backend().await;
    let sc = Sidecar::start(&one_site_config(&backend, up_addr)).await;
    let cookie = imp_cookie("sid-bomb");

    // An honest gzip page, for the client that takes gzip and for the one that takes nothing.
    let honest = |ae: Option<&'static str>| {
        let mut hs = vec![("Accept", "text/html")];
        hs.extend(ae.map(|ae| ("Accept-Encoding", ae)));
        let req = raw_request_bytes(
            "GET",
            "/page",
            &sc.authority(HOST),
            &[hs, vec![("Cookie", cookie.as_str())]].concat(),
        );
        let addr = sc.addr;
        async move {
            let r = raw_request(addr, &req).await;
            assert_eq!(r.status, 200);
            let html = decode_body(r.header("content-encoding").as_deref(), &r.body);
            let html = String::from_utf8_lossy(&html).into_owned();
            assert!(
                banner_range(&html).is_some(),
                "no banner on the honest page"
            );
        }
    };
    for _ in 0..3 {
        for ae in [None, Some("gzip")] {
            honest(ae).await;
        }
    }
    let (rss0, hwm0) = memory_kb(sc.pid());

    // Every bomb at once, to a client that takes no encoding: each decoded byte would be
    // held for it.
    let bomb_req = raw_request_bytes(
        "GET",
        "/bomb",
        &sc.authority(HOST),
        &[("Accept", "text/html"), ("Cookie", cookie.as_str())],
    );
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let (addr, req) = (sc.addr, bomb_req.clone());
        clients.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(&req).await.expect("send");
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
    }
    let bounded = tokio::time::timeout(Duration::from_secs(120), async {
        let mut sizes = Vec::new();
        while let Some(got) = clients.join_next().await {
            sizes.push(got.expect("client task"));
        }
        sizes
    })
    .await
    .expect("the bomb responses did not end within 120 s");
    for got in &bounded {
        assert!(
            *got < BOMB_DECODED,
            "a bomb was delivered whole ({got} bytes), not cut off"
        );
    }
    sc.wait_for_metric(SKIPPED, &[("reason", "body_error")], |v| {
        v >= CONCURRENT as f64
    })
    .await;
    let (rss_cut, hwm1) = memory_kb(sc.pid());

    // It keeps serving; memory freed by the bombs is back with the OS.
    for _ in 0..3 {
        for ae in [None, Some("gzip")] {
            honest(ae).await;
        }
    }
    let (rss1, _) = memory_kb(sc.pid());
    let report = format!(
        "{CONCURRENT} gzip bombs: VmHWM {hwm0} -> {hwm1} kB, VmRSS {rss0} -> {rss_cut} kB \
         (cut off) -> {rss1} kB (after more pages)"
    );
    eprintln!("{report}");
    // A cut-off response holds at most about 400 KiB of decoded bytes (a 256 KiB burst, 100
    // times the 1 KiB of compressed input the decoder was last given, and one 32 KiB decoder
    // write): 6 MiB for 16. Their 32 client and upstream connections and 16 decoders take a
    // few MiB more. Holding each decoded chunk whole (32 MiB per chunk before the bomb was
    // seen) grew the peak and what stayed by about 295 MB here.
    const BOUND_KB: u64 = 16 * 1024;
    assert!(
        hwm1.saturating_sub(hwm0) < BOUND_KB,
        "peak memory: {report}"
    );
    assert!(
        rss_cut.saturating_sub(rss0) < BOUND_KB,
        "memory left behind: {report}"
    );
    assert!(
        rss1.saturating_sub(rss0) < BOUND_KB,
        "memory left behind: {report}"
    );
}
