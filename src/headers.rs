//! Steps 3, 10 and 11, the headers: the request head's size and framing, stripping the identity
//! family and the forwarding headers a client made up (and keeping it from removing injected
//! ones through `Connection`), the upstream request (session cookie out, identity in), and the
//! response's headers (no upstream `Set-Cookie` for the session cookie, nothing cacheable
//! while impersonating).

use crate::policy::{fold_byte, folded_eq};
use crate::response::Refusal;
use crate::token::Identity;
use crate::token::cookie::remove_session_cookie;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// The names injected for one `[headers] prefix`, built once per config.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Lower-case, `_` read as `-`: the family every inbound header is checked against.
    family: String,
    pub user_id: String,
    pub tenant_id: String,
    pub email: String,
    pub roles: String,
    pub imp_session: String,
    pub imp_id: String,
    pub imp_email: String,
    pub imp_mode: String,
    pub assertion: String,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> IdentityHeaders {
        let n = |s: &str| format!("{prefix}{s}");
        IdentityHeaders {
            family: fold(prefix),
            user_id: n("User-Id"),
            tenant_id: n("Tenant-Id"),
            email: n("Email"),
            roles: n("Roles"),
            imp_session: n("Impersonation-Session"),
            imp_id: n("Impersonator-Id"),
            imp_email: n("Impersonator-Email"),
            imp_mode: n("Impersonation-Mode"),
            assertion: n("Assertion"),
        }
    }

    /// Case-insensitive, with `_` read as `-` (some servers map `X_Auth_User_Id` onto
    /// `X-Auth-User-Id`, so the client must not be able to send either).
    pub fn in_family(&self, name: &str) -> bool {
        name.len() >= self.family.len()
            && name
                .bytes()
                .zip(self.family.bytes())
                .all(|(a, b)| fold_byte(a) == b)
    }
}

fn fold(s: &str) -> String {
    s.bytes().map(|b| fold_byte(b) as char).collect()
}

/// The longest `X-Request-Id` kept from a trusted peer.
const MAX_REQUEST_ID: usize = 128;

/// Step 10's request id: a trusted peer's `X-Request-Id` when it is 1-128 visible ASCII
/// characters, else a new random 128-bit id (32 hex digits).
pub fn request_id(req: &RequestHeader, trusted: bool) -> String {
    if trusted
        && let Some(v) = req.headers.get(crate::response::REQUEST_ID)
        && (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        && req
            .headers
            .get_all(crate::response::REQUEST_ID)
            .iter()
            .count()
            == 1
    {
        return String::from_utf8_lossy(v.as_bytes()).into_owned();
    }
    new_request_id()
}

/// 128 random bits, hex. A failing random source still gives a unique-enough id (time and a
/// counter): an id is for finding lines, not a secret.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b[..8].copy_from_slice(&t.to_be_bytes());
        b[8..].copy_from_slice(&FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for x in b {
        out.push(HEX[usize::from(x >> 4)] as char);
        out.push(HEX[usize::from(x & 15)] as char);
    }
    out
}

/// The effective client address: the peer, or, behind trusted proxies, the rightmost
/// `X-Forwarded-For` address that is not one of them (what the nearest untrusted hop was).
pub fn effective_client(
    req: &RequestHeader,
    client: &Client,
    trusts: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    if !client.trusted {
        return client.peer;
    }
    let mut nearest = client.peer;
    for value in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return nearest;
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return nearest;
            };
            let ip = ip.to_canonical();
            if !trusts(ip) {
                return Some(ip);
            }
            nearest = Some(ip);
        }
    }
    nearest
}

/// The forwarding headers: set from the proxy's own view, or, from a trusted peer (a load
/// balancer in `listen.trusted_proxies`), kept (`X-Forwarded-For` gets the peer appended).
const FORWARDING: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Look-alikes of the forwarding headers for the client's address and scheme and its TLS client
/// certificate, which frameworks trust (Rails, Django, PHP, Spring, Tomcat, Express, Envoy,
/// nginx-ingress, Cloudflare, Akamai...). Never forwarded from a client; kept from a trusted
/// peer, which is where they come from.
const PEER_LOOKALIKES: [&str; 25] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-client-ip-address",
    "proxy-client-ip",
    "wl-proxy-client-ip",
    "x-originating-ip",
    "x-remote-addr",
    "x-remote-ip",
    "x-proxyuser-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
];

/// Never forwarded, whoever sends them: `Forwarded` (the proxy speaks `X-Forwarded-*`), the
/// look-alikes that name another host or path than the request line (a deny rule judges the
/// request line), the rest of the client-certificate family, and the identity headers other auth
/// proxies set (oauth2-proxy, IAP, Cloudflare Access, ALB, Pomerium, Azure, Grafana's auth
/// proxy), which an app moving to sessiongate may still trust: identity comes only from the
/// session cookie.
const ALWAYS_STRIPPED: [&str; 31] = [
    "forwarded",
    "x-forwarded",
    "forwarded-for",
    "x-original-forwarded-for",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-method",
    "x-forwarded-by",
    "x-original-host",
    "x-host",
    "x-original-uri",
    "x-envoy-original-path",
    "ssl-client-subject-dn",
    "ssl-client-verify",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "remote-user",
    "x-remote-user",
    "x-webauth-user",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-goog-iap-jwt-assertion",
    "cf-access-authenticated-user-email",
    "cf-access-jwt-assertion",
    "x-amzn-oidc-identity",
    "x-pomerium-jwt-assertion",
];

/// Prefixes of always-stripped families (Azure's `X-MS-CLIENT-PRINCIPAL*`, ALB's
/// `X-Amzn-Oidc-*`).
const ALWAYS_STRIPPED_PREFIXES: [&str; 2] = ["x-ms-client-principal", "x-amzn-oidc-"];

fn starts_folded(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.is_char_boundary(prefix.len())
        && folded_eq(&name[..prefix.len()], prefix)
}

/// Is this a header no client may send? `_` read as `-` here too: Rack and WSGI apps see
/// `X_Forwarded_Host` as `X-Forwarded-Host`. From a trusted peer, the forwarding headers and
/// their address and scheme look-alikes pass.
fn is_forwarding(name: &str, trusted: bool) -> bool {
    let peer_family = FORWARDING
        .iter()
        .chain(PEER_LOOKALIKES.iter())
        .any(|f| folded_eq(name, f));
    (peer_family && !trusted)
        || ALWAYS_STRIPPED.iter().any(|f| folded_eq(name, f))
        || ALWAYS_STRIPPED_PREFIXES
            .iter()
            .any(|p| starts_folded(name, p))
}

/// Who sent a request, as far as the proxy can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The peer is in `listen.trusted_proxies`: its forwarding headers are believed.
    pub trusted: bool,
    /// The connection to the proxy is TLS.
    pub tls: bool,
}

impl Client {
    /// The proxy's own view of the scheme.
    pub fn own_scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The scheme the client used (for redirects and the login URL): a trusted peer's
    /// `X-Forwarded-Proto` when it sent one, else the proxy's own view.
    pub fn scheme(&self, req: &RequestHeader) -> &'static str {
        if !self.trusted {
            return self.own_scheme();
        }
        let first = req
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match first.as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            _ => self.own_scheme(),
        }
    }
}

/// The tokens of every `Connection` header, lower-cased (a header that is not ASCII is read
/// lossily: its odd bytes cannot form a header name anyway).
fn connection_tokens(req: &RequestHeader) -> Vec<String> {
    req.headers
        .get_all("connection")
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Headers that frame the message or route it. A client may not make them hop-by-hop: removing
/// `Content-Length` before the body is read turns the body into a second request (desync), and
/// `Host` decides the site.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Does the client name a framing header in `Connection`? Such a request is refused (400).
pub fn connection_names_framing(req: &RequestHeader) -> bool {
    connection_tokens(req)
        .iter()
        .any(|t| FRAMING.iter().any(|f| folded_eq(t, f)))
}

/// Removes every identity-family header and every client copy of the forwarding headers (and
/// their look-alikes), and rewrites `Connection` so that it can no longer name them (Pingora
/// drops the headers a client lists there from the upstream request, which would remove what
/// we inject). Other headers a client lists as hop-by-hop are removed here, as `Connection`
/// asks; framing headers never are (`connection_names_framing` refuses such requests first).
pub fn strip_inbound(req: &mut RequestHeader, names: &IdentityHeaders, trusted: bool) {
    let doomed: Vec<String> = req
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| {
            names.in_family(k)
                || is_forwarding(k, trusted)
                || URL_OVERRIDES.iter().any(|u| folded_eq(k, u))
        })
        .map(str::to_string)
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    if !req.headers.contains_key("connection") {
        return;
    }
    let mut keep = Vec::new();
    for token in connection_tokens(req) {
        match token.as_str() {
            "close" | "keep-alive" | "upgrade" | "te" => keep.push(token),
            // Named as hop-by-hop, a forwarding header would be dropped after we set it.
            t if names.in_family(t) || is_forwarding(t, false) => {}
            t if FRAMING.iter().any(|f| folded_eq(t, f)) => {}
            t => {
                req.remove_header(t);
            }
        }
    }
    req.remove_header("connection");
    if !keep.is_empty() {
        // Infallible: the tokens are lower-case ASCII from a header value.
        let _ = req.insert_header("connection", keep.join(", "));
    }
}

/// Percent-encoded in header values: `%` itself, so that an encoded value and a literal one
/// can never read the same (`%C3%A9` arrives as `%25C3%25A9`, `é` as `%C3%A9`), the space (an
/// HTTP parser strips it at either end, so `" u"` would read as `"u"`), every non-ASCII byte,
/// and controls (which never get this far: they reject the token).
const HEADER_ENCODED: &AsciiSet = &CONTROLS.add(b'%').add(b' ');

/// A claim value as it goes into a header: `%` and non-ASCII percent-encoded as UTF-8, so a
/// standard percent-decoder gives the claim back exactly.
pub fn header_encode(value: &str) -> String {
    utf8_percent_encode(value, HEADER_ENCODED).to_string()
}

/// How an impersonation found live may act (`X-Auth-Impersonation-Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    ReadWrite,
}

impl Mode {
    pub fn of(read_only: bool) -> Mode {
        if read_only {
            Mode::ReadOnly
        } else {
            Mode::ReadWrite
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "read_only",
            Mode::ReadWrite => "read_write",
        }
    }
}

/// Sets the identity headers for a verified identity. Impersonation headers only when the
/// impersonation has been found live (`impersonation` is then its mode).
pub fn inject(
    req: &mut RequestHeader,
    names: &IdentityHeaders,
    id: &Identity,
    impersonation: Option<Mode>,
) -> pingora::Result<()> {
    let mut set =
        |name: &str, value: &str| req.insert_header(name.to_string(), header_encode(value));
    set(&names.user_id, &id.user_id)?;
    if let Some(t) = &id.tenant_id {
        set(&names.tenant_id, t)?;
    }
    if let Some(e) = &id.email {
        set(&names.email, e)?;
    }
    if let Some(r) = &id.roles {
        set(&names.roles, r)?;
    }
    if let (Some(mode), Some(imp)) = (impersonation, &id.impersonation) {
        set(&names.imp_session, &imp.sid)?;
        set(&names.imp_mode, mode.as_str())?;
        if let Some(a) = &imp.admin_id {
            set(&names.imp_id, a)?;
        }
        if let Some(a) = &imp.admin_email {
            set(&names.imp_email, a)?;
        }
    }
    Ok(())
}

/// What step 10 needs besides the request head.
pub struct Forward<'a> {
    /// The host as the client sent it (the upstream's `Host`).
    pub authority: &'a str,
    /// Normalized host (`X-Forwarded-Host`).
    pub host: &'a str,
    pub client: &'a Client,
    pub cookie_name: &'a str,
    /// The verified token to leave in `Cookie` (a `forward_session_cookie` site with a session).
    pub keep_cookie: Option<&'a str>,
    pub names: &'a IdentityHeaders,
    pub identity: Option<&'a Identity>,
    /// The impersonation was found live: its headers go up too, with its mode.
    pub impersonating: Option<Mode>,
    /// The signed assertion of the identity (`[assertion]`).
    pub assertion: Option<&'a str>,
    /// Step 10's `X-Request-Id`.
    pub request_id: &'a str,
}

/// Step 10: the upstream request. Origin-form target with the client's Host (HTTP/2 has only
/// `:authority`), the session cookie removed unless this request's verified one may stay, the
/// forwarding headers from the proxy's own view, and the identity.
pub fn prepare_upstream(up: &mut RequestHeader, f: &Forward<'_>) -> pingora::Result<()> {
    let origin_form = up.raw_path().first() == Some(&b'/');
    if !origin_form || up.uri.authority().is_some() || up.uri.scheme().is_some() {
        let pq = up
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        up.set_uri(pq.parse().map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad target")
        })?);
    }
    if up.headers.get("host").is_none() {
        up.insert_header("host", f.authority)?;
    }
    remove_session_cookie(up, f.cookie_name, f.keep_cookie);
    set_forwarded(up, f.client, f.host)?;
    up.insert_header(crate::response::REQUEST_ID, f.request_id)?;
    if let Some(id) = f.identity {
        inject(up, f.names, id, f.impersonating)?;
        if let Some(a) = f.assertion {
            up.insert_header(f.names.assertion.clone(), a)?;
        }
    }
    Ok(())
}

/// `X-Forwarded-*`: from a trusted peer, `-For` gets the peer appended to what it sent and
/// `-Proto`/`-Host` are kept when present; from any other peer, all three are the proxy's own
/// view (its scheme, the request's host, the peer's address).
pub fn set_forwarded(req: &mut RequestHeader, client: &Client, host: &str) -> pingora::Result<()> {
    let peer = client.peer.map(|ip| ip.to_string());
    if client.trusted {
        let sent: Vec<String> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let chain = sent.into_iter().chain(peer).collect::<Vec<_>>().join(", ");
        req.remove_header("x-forwarded-for");
        if !chain.is_empty() {
            req.insert_header("x-forwarded-for", chain)?;
        }
        if !req.headers.contains_key("x-forwarded-proto") {
            req.insert_header("x-forwarded-proto", client.own_scheme())?;
        }
        if !req.headers.contains_key("x-forwarded-host") {
            req.insert_header("x-forwarded-host", host)?;
        }
        return Ok(());
    }
    match peer {
        Some(ip) => req.insert_header("x-forwarded-for", ip)?,
        None => {
            req.remove_header("x-forwarded-for");
        }
    }
    req.insert_header("x-forwarded-proto", client.own_scheme())?;
    req.insert_header("x-forwarded-host", host)?;
    Ok(())
}

/// Headers that ask an app to act on another URL than the request line's. Stripped: a deny
/// rule judges the request line, so the app must not be told another path.
const URL_OVERRIDES: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-override-url"];

/// Cache directives aimed at one kind of cache, which such caches honour over `Cache-Control`
/// (RFC 9213's `<target>-Cache-Control`, and the CDNs' own): an impersonated page must not be
/// stored by any of them.
fn is_targeted_cache_directive(name: &str) -> bool {
    (name.len() > "-cache-control".len() && name.ends_with("-cache-control"))
        || matches!(
            name,
            "surrogate-control" | "x-accel-expires" | "edge-control"
        )
}

/// An impersonated response must never be stored by a shared cache, nor served to the user
/// later from a private one.
pub fn mark_private(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.insert_header("cache-control", "private, no-store")?;
    let has_cookie = resp.headers.get_all("vary").iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("cookie") || t.trim() == "*")
    });
    if !has_cookie {
        resp.append_header("vary", "Cookie")?;
    }
    resp.remove_header("expires");
    let targeted: Vec<String> = resp
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| is_targeted_cache_directive(k))
        .map(str::to_string)
        .collect();
    for h in targeted {
        resp.remove_header(&h);
    }
    Ok(())
}

/// Did the raw request head carry both `Content-Length` and `Transfer-Encoding`? Pingora
/// resolves that per RFC 9112 (Transfer-Encoding wins, the connection closes afterwards) and
/// drops the `Content-Length` before any hook runs, so only the raw bytes still show it. An
/// auth proxy refuses such a request outright: it is how requests are smuggled past front ends.
pub fn framing_conflict(raw_head: &[u8]) -> bool {
    let mut cl = false;
    let mut te = false;
    for line in raw_head.split(|b| *b == b'\n').skip(1) {
        let name = line.split(|b| *b == b':').next().unwrap_or(&[]);
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        }
    }
    cl && te
}

/// Request heads over this size in all get `431`.
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

/// The head's size and framing, before anything else looks at the request: over 32 KiB in all
/// is `431`; `Content-Length` with `Transfer-Encoding` (seen in `raw_head`, since Pingora drops
/// the length first), `Content-Length` twice, or a framing header named in `Connection` is a
/// `400`. Every one of them closes the connection.
pub fn check_framing(req: &RequestHeader, raw_head: Option<&[u8]>) -> Result<(), Refusal> {
    if request_head_size(req) > MAX_REQUEST_HEAD {
        return Err(Refusal::error(
            431,
            "request_header_fields_too_large",
            "Request headers are too large.",
            "header_too_large",
        )
        .closing());
    }
    let cl_te =
        req.headers.contains_key("transfer-encoding") && raw_head.is_some_and(framing_conflict);
    // Pingora refuses differing duplicate Content-Lengths but forwards equal ones; an auth proxy
    // refuses both (RFC 9110 allows either; a front end that merges them differently is how
    // smuggling starts).
    let duplicate_cl = req.headers.get_all("content-length").iter().count() > 1;
    if cl_te || duplicate_cl || connection_names_framing(req) {
        return Err(Refusal::bad_request(
            "Ambiguous message framing (Content-Length with Transfer-Encoding or twice, or a framing header named in Connection) is refused.",
        )
        .closing());
    }
    Ok(())
}

/// Total size of the request head as the limit counts it: target plus every name and value.
pub fn request_head_size(req: &RequestHeader) -> usize {
    let target = req.raw_path().len();
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        crate::testing::request("GET", "/", headers)
    }

    #[test]
    fn strips_family_in_any_case_and_with_underscores() {
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[
            ("X-Auth-User-Id", "a"),
            ("x-auth-user-id", "b"),
            ("X_Auth_User_Id", "c"),
            ("X-AUTH-ANYTHING", "d"),
            ("x-forwarded-for", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Other", "keep"),
            ("X-Hop", "hop"),
            (
                "Connection",
                "keep-alive, X-Auth-User-Id, x-forwarded-for, X-Hop",
            ),
        ]);
        strip_inbound(&mut r, &names, false);
        let left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["x-other", "connection"]);
        assert_eq!(
            r.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"keep-alive"[..])
        );
    }

    #[test]
    fn framing_headers_named_in_connection_are_refused_not_stripped() {
        for named in [
            "content-length",
            "Transfer-Encoding",
            "host",
            "keep-alive, Content_Length",
        ] {
            let r = req(&[("Content-Length", "5"), ("Connection", named)]);
            assert!(connection_names_framing(&r), "{named}");
        }
        let ok = req(&[("Connection", "keep-alive, upgrade, x-hop")]);
        assert!(!connection_names_framing(&ok));
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[("Content-Length", "5"), ("Connection", "content-length")]);
        strip_inbound(&mut r, &names, false);
        assert_eq!(
            r.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
    }

    #[test]
    fn forwarding_look_alikes_are_stripped_in_any_spelling() {
        let names = IdentityHeaders::new("X-Auth-");
        let mut r = req(&[
            ("X-Real-IP", "1.2.3.4"),
            ("True-Client-IP", "1.2.3.4"),
            ("X_Forwarded_Port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("X-Original-Host", "evil"),
            ("X-Envoy-Original-Path", "/x"),
            ("Front-End-Https", "on"),
            ("X-Keep", "1"),
        ]);
        strip_inbound(&mut r, &names, false);
        let left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, vec!["x-keep"]);
    }

    #[test]
    fn impersonated_responses_lose_targeted_cache_directives() {
        let mut r = ResponseHeader::build(200, None).expect("response");
        for h in [
            "CDN-Cache-Control",
            "Surrogate-Control",
            "Cloudflare-CDN-Cache-Control",
            "Netlify-CDN-Cache-Control",
            "X-Accel-Expires",
            "Edge-Control",
        ] {
            r.append_header(h, "max-age=3600").expect("h");
        }
        mark_private(&mut r).expect("mark");
        let mut left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["cache-control", "vary"]);
    }

    #[test]
    fn a_trusted_peer_keeps_its_forwarding_headers_and_others_get_the_proxys_view() {
        let names = IdentityHeaders::new("X-Auth-");
        let sent = [
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "cafe.example"),
            ("X-Real-IP", "203.0.113.7"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Forwarded-User", "admin"),
        ];
        let lb: IpAddr = "10.0.0.5".parse().expect("ip");
        let trusted = Client {
            peer: Some(lb),
            trusted: true,
            tls: false,
        };
        let mut r = req(&sent);
        strip_inbound(&mut r, &names, true);
        assert_eq!(trusted.scheme(&r), "https");
        set_forwarded(&mut r, &trusted, "cafe.example").expect("set");
        let h = |r: &RequestHeader, n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(
            h(&r, "x-forwarded-for").as_deref(),
            Some("203.0.113.7, 10.0.0.5")
        );
        assert_eq!(h(&r, "x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(h(&r, "x-real-ip").as_deref(), Some("203.0.113.7"));
        assert_eq!(h(&r, "forwarded"), None);
        assert_eq!(h(&r, "x-forwarded-user"), None);

        let untrusted = Client {
            peer: Some(lb),
            trusted: false,
            tls: true,
        };
        let mut r = req(&sent);
        strip_inbound(&mut r, &names, false);
        assert_eq!(untrusted.scheme(&r), "https", "the TLS listener's own view");
        set_forwarded(&mut r, &untrusted, "cafe.example").expect("set");
        assert_eq!(h(&r, "x-forwarded-for").as_deref(), Some("10.0.0.5"));
        assert_eq!(h(&r, "x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(h(&r, "x-real-ip"), None);
    }

    #[test]
    fn header_values_encode_non_ascii_and_percent() {
        assert_eq!(header_encode("José@x.io"), "Jos%C3%A9@x.io");
        assert_eq!(
            header_encode("%C3%A9"),
            "%25C3%25A9",
            "a literal % is encoded too"
        );
        assert_eq!(header_encode("é"), "%C3%A9");
        assert_eq!(header_encode("a b,c"), "a%20b,c");
        assert_eq!(header_encode(" u "), "%20u%20");
    }

    #[test]
    fn framing_conflicts() {
        assert!(framing_conflict(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(framing_conflict(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nX-Transfer-Encoding: x\r\n\r\n"
        ));
    }
}
