//! The banner's markup and its two static assets. Every value from the token is escaped for
//! the HTML context it lands in; non-ASCII becomes a character reference so the banner reads
//! right whatever the page's charset; invisible characters (bidi controls, zero-width and other
//! default-ignorable code points) are shown as `[U+XXXX]` and each value is isolated, so a claim
//! cannot make the banner display another address. The markup is
//! well-formed XML as well as HTML (void elements closed, attributes valued, the XHTML
//! namespace on its root), so an `application/xhtml+xml` page parses with it. Its URLs name the
//! request's own origin, so an injected `<base>` cannot send them (and the page's script nonce)
//! elsewhere. The assets carry no user data (only the configured color), so they are cached
//! long, versioned by a hash of their content.

use crate::banner::csp::{END_PATH, SCRIPT_PATH, STYLE_PATH};
use std::time::{Duration, UNIX_EPOCH};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c if c.is_control() => {}
            // Shown, not dropped: `ceo[U+200B]@acme.com` and `ceo@acme.com` are two accounts,
            // and the admin must be able to tell them apart.
            c if is_invisible(c) => out.push_str(&format!("[U+{:04X}]", c as u32)),
            c => out.push_str(&format!("&#x{:x};", c as u32)),
        }
    }
    out
}

/// Characters a browser draws as nothing: Unicode's default-ignorable code points, the
/// explicit bidirectional controls among them (as character references the browser still obeys
/// them, so `moc.live@nimda` behind a U+202E would display as another address).
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// A value from the token as banner text: escaped, its invisible characters shown as `[U+XXXX]`,
/// and isolated in a `<bdi>` so right-to-left characters in it cannot reorder the text around it.
fn isolated(class: &str, value: &str) -> String {
    format!("<bdi class=\"{class}\">{}</bdi>", escape(value))
}

/// What the banner says: values as they came in the token, escaped when rendered.
#[derive(Debug, Clone)]
pub struct BannerInfo {
    pub target: String,
    pub tenant: Option<String>,
    pub admin_email: Option<String>,
    pub reason: Option<String>,
    /// Token expiry, Unix seconds.
    pub expires: u64,
    pub csrf: String,
    /// Where the banner's own URLs point: `//host[:port]` (the request's authority; the page's
    /// scheme) or `https://host[:port]` when the scheme is known. Never relative: a relative URL
    /// would follow an injected `<base href>`.
    pub origin: String,
}

/// The banner element, spliced right after `<body …>`. `nonce`: set on the script when the
/// page's CSP needs it. `assets_version` busts the asset cache when the color changes.
pub fn banner_html(info: &BannerInfo, nonce: Option<&str>, assets_version: &str) -> String {
    // A token's exp is at most `token::MAX_TIME`, but the banner must not panic on any value.
    let end = UNIX_EPOCH
        .checked_add(Duration::from_secs(
            info.expires.min(crate::token::MAX_TIME),
        ))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    // "2026-11-21T23:38:56Z" -> "23:38 UTC" for the no-JS text.
    let hhmm = end.get(11..16).unwrap_or("");
    let nonce_attr = nonce
        .map(|n| format!(" nonce=\"{}\"", escape(n)))
        .unwrap_or_default();
    let tenant = info
        .tenant
        .as_deref()
        .map(|t| {
            format!(
                " <span class=\"sg-sep\">in tenant</span> {}",
                isolated("sg-tenant", t)
            )
        })
        .unwrap_or_default();
    let admin = info
        .admin_email
        .as_deref()
        .map(|a| {
            format!(
                " <span class=\"sg-sep\">as</span> {}",
                isolated("sg-admin", a)
            )
        })
        .unwrap_or_default();
    let reason = info
        .reason
        .as_deref()
        .map(|r| {
            format!(
                " <span class=\"sg-reason\">({})</span>",
                isolated("sg-why", r)
            )
        })
        .unwrap_or_default();
    format!(
        "<div id=\"sessiongate-banner\" xmlns=\"http://www.w3.org/1999/xhtml\" role=\"region\" aria-label=\"Impersonation\" data-expires=\"{expires}\">\
<link rel=\"stylesheet\" href=\"{o}{STYLE_PATH}?v={v}\" />\
<div class=\"sg-bar\"><span class=\"sg-text\"><span class=\"sg-label\">Impersonating</span> \
<strong class=\"sg-target\">{target}</strong>{tenant}{admin}{reason}</span> \
<span class=\"sg-time\">Ends <time class=\"sg-left\" datetime=\"{end}\">at {hhmm} UTC</time></span> \
<form class=\"sg-end\" method=\"post\" action=\"{o}{END_PATH}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\" />\
<button type=\"submit\" class=\"sg-button\">End impersonation</button></form></div>\
<script src=\"{o}{SCRIPT_PATH}?v={v}\" async=\"async\"{nonce_attr}></script></div>",
        expires = info.expires,
        o = escape(&info.origin),
        v = escape(assets_version),
        target = isolated("sg-who", &info.target),
        csrf = escape(&info.csrf),
    )
}

/// The stylesheet: works in the light DOM (no JS: scoped `all: initial` with an id selector
/// and `!important`, so page rules cannot restyle it and it cannot restyle the page) and in
/// the shadow root the script moves the banner into (`:host`).
pub fn banner_css(color: &str) -> String {
    let mut css = String::from(
        "#sessiongate-banner,#sessiongate-banner *,:host,:host *{all:initial!important;box-sizing:border-box!important}\n\
#sessiongate-banner *,:host *{font:inherit!important;color:inherit!important}\n",
    );
    for (root, scope) in [
        ("#sessiongate-banner", "#sessiongate-banner "),
        (":host", ""),
    ] {
        css.push_str(&format!(
            "{root}{{display:block!important;position:sticky!important;top:0!important;left:0!important;\
margin:var(--sg-mt,0px) var(--sg-mr,0px) 0 var(--sg-ml,0px)!important;width:var(--sg-w,100%)!important;z-index:2147483647!important;background:{color}!important;color:#1c1917!important;\
font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif!important;\
border-bottom:2px solid #92400e!important;box-shadow:0 2px 6px rgba(0,0,0,.25)!important}}\n\
{scope}.sg-bar{{display:flex!important;flex-wrap:wrap!important;align-items:center!important;gap:6px 16px!important;padding:8px 16px!important;font:inherit!important;color:inherit!important}}\n\
{scope}.sg-text,{scope}.sg-time,{scope}.sg-label,{scope}.sg-sep,{scope}.sg-tenant,{scope}.sg-admin,{scope}.sg-reason,{scope}time{{display:inline!important;font:inherit!important;color:inherit!important}}\n\
{scope}.sg-target{{display:inline!important;font:inherit!important;font-weight:700!important;color:inherit!important}}\n\
{scope}.sg-label{{font-weight:700!important;text-transform:uppercase!important;letter-spacing:.04em!important}}\n\
{scope}.sg-time{{margin-left:auto!important}}\n\
{scope}.sg-end{{display:inline-block!important;margin:0!important}}\n\
{scope}.sg-button{{display:inline-block!important;cursor:pointer!important;font:inherit!important;font-weight:700!important;\
color:#fff!important;background:#1c1917!important;border:0!important;border-radius:4px!important;padding:4px 12px!important}}\n\
{scope}.sg-button:focus{{outline:2px solid #fff!important;outline-offset:2px!important}}\n\
{scope}link,{scope}script,{scope}input[type=hidden]{{display:none!important}}\n"
        ));
    }
    css
}

/// The script: moves the banner into a shadow root (page CSS and page selectors no
/// longer reach it) and turns the end time into a live countdown. DOM APIs only (no
/// innerHTML), so it also runs under Trusted Types.
pub const BANNER_JS: &str = r#"(function () {
  "use strict";
  var host = document.getElementById("sessiongate-banner");
  if (!host || host.getAttribute("data-sg-ready")) { return; }
  host.setAttribute("data-sg-ready", "1");
  var link = host.querySelector("link[rel=stylesheet]");
  var left = host.querySelector(".sg-left");
  var expires = parseInt(host.getAttribute("data-expires"), 10);
  if (host.attachShadow) {
    try {
      var root = host.attachShadow({ mode: "open" });
      if (link) {
        var l = document.createElement("link");
        l.rel = "stylesheet";
        l.href = link.href;
        if (link.nonce) { l.nonce = link.nonce; }
        root.appendChild(l);
      }
      while (host.firstChild) { root.appendChild(host.firstChild); }
    } catch (e) { /* keep the light-DOM banner */ }
  }
  // Full width and flush with the top even when the page's body has a margin or padding:
  // pull the banner out over them (CSSOM, which CSP allows; no inline style attribute).
  try {
    var cs = window.getComputedStyle(document.body);
    var px = function (p) { return parseFloat(cs.getPropertyValue(p)) || 0; };
    var insetTop = px("margin-top") + px("padding-top");
    var insetLeft = px("margin-left") + px("padding-left");
    var insetRight = px("margin-right") + px("padding-right");
    // Custom properties: `all` does not reset them, and the stylesheet's `!important` margin
    // and width read them (an inline `!important` would lose to the shadow root's).
    if (insetTop || insetLeft || insetRight) {
      host.style.setProperty("--sg-mt", -insetTop + "px");
      host.style.setProperty("--sg-ml", -insetLeft + "px");
      host.style.setProperty("--sg-mr", -insetRight + "px");
      host.style.setProperty("--sg-w", "calc(100% + " + (insetLeft + insetRight) + "px)");
    }
  } catch (e) { /* keep the inset banner */ }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function tick() {
    if (!left || !expires) { return; }
    var s = Math.max(0, Math.floor(expires - Date.now() / 1000));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    left.textContent = s > 0 ? "in " + (h > 0 ? h + ":" + pad(m) : m) + ":" + pad(sec) : "now";
  }
  tick();
  setInterval(tick, 1000);
})();
"#;

/// A short content hash for cache busting (FNV-1a; not a security property).
pub fn version_of(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_non_ascii() {
        assert_eq!(
            escape("<img src=x onerror=\"a\">&'"),
            "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape("José"), "Jos&#xe9;");
        assert_eq!(escape("a\u{0}b"), "ab");
    }

    #[test]
    fn banner_holds_escaped_values_and_form() {
        let info = BannerInfo {
            target: "u@x.io".into(),
            tenant: Some("acme".into()),
            admin_email: Some("<script>alert(1)</script>@x".into()),
            reason: Some("\"ticket\" <b>42</b>".into()),
            expires: 1_800_000_000,
            csrf: "abc".into(),
            origin: "//cafe.example:8080".into(),
        };
        let html = banner_html(&info, Some("N1"), "v1");
        assert!(html.starts_with("<div id=\"sessiongate-banner\""));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;@x"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&quot;ticket&quot; &lt;b&gt;42&lt;/b&gt;"));
        assert!(html.contains("name=\"csrf\" value=\"abc\""));
        assert!(html.contains("action=\"//cafe.example:8080/.sessiongate/end-impersonation\""));
        assert!(html.contains("src=\"//cafe.example:8080/.sessiongate/banner.js?v=v1\""));
        assert!(html.contains("href=\"//cafe.example:8080/.sessiongate/banner.css?v=v1\""));
        assert!(html.contains("nonce=\"N1\""));
        assert!(html.contains("at 08:00 UTC"));
        assert!(
            !html.contains("style="),
            "no inline styles: they would need 'unsafe-inline'"
        );
    }

    fn info() -> BannerInfo {
        BannerInfo {
            target: "u@x.io".into(),
            tenant: None,
            admin_email: None,
            reason: None,
            expires: 1_800_000_000,
            csrf: "c".into(),
            origin: "//a.example".into(),
        }
    }

    #[test]
    fn invisible_characters_are_shown_and_values_isolated() {
        let mut i = info();
        i.admin_email = Some("\u{202E}moc.live@nimda\u{202C}".into());
        i.target = "ceo\u{200B}@acme.com\u{E0041}".into();
        let html = banner_html(&i, None, "v");
        for c in ["\u{202E}", "\u{202C}", "\u{200B}", "\u{E0041}"] {
            assert!(!html.contains(c));
        }
        assert!(!html.to_ascii_lowercase().contains("&#x202e;"));
        assert!(html.contains("<bdi class=\"sg-admin\">[U+202E]moc.live@nimda[U+202C]</bdi>"));
        assert!(html.contains("<bdi class=\"sg-who\">ceo[U+200B]@acme.com[U+E0041]</bdi>"));
    }

    #[test]
    fn the_markup_is_well_formed_xml() {
        let mut i = info();
        i.reason = Some("a & <b>".into());
        let html = banner_html(&i, Some("n"), "v");
        // Every element is closed: the void ones as `/>`; no attribute without a value.
        assert!(html.contains(
            "<link rel=\"stylesheet\" href=\"//a.example/.sessiongate/banner.css?v=v\" />"
        ));
        assert!(html.contains("<input type=\"hidden\" name=\"csrf\" value=\"c\" />"));
        assert!(html.contains(" async=\"async\" nonce=\"n\"></script>"));
        assert!(
            html.starts_with(
                "<div id=\"sessiongate-banner\" xmlns=\"http://www.w3.org/1999/xhtml\""
            )
        );
        let opens = html.matches("<div").count() + html.matches("<span").count();
        let closes = html.matches("</div>").count() + html.matches("</span>").count();
        assert_eq!(opens, closes);
    }

    #[test]
    fn any_expiry_renders_without_panicking() {
        for expires in [0, u64::MAX, crate::token::MAX_TIME, 1_800_000_000_000] {
            let mut i = info();
            i.expires = expires;
            assert!(banner_html(&i, None, "v").contains("sessiongate-banner"));
        }
    }

    #[test]
    fn css_has_the_color_and_the_top_layer() {
        let css = banner_css("#f59e0b");
        assert!(css.contains("background:#f59e0b!important"));
        assert!(css.contains("z-index:2147483647!important"));
        assert!(css.contains("position:sticky!important"));
    }
}
