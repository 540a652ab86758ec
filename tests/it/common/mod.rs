//! Hermetic harness for the black-box tests: the real `sessiongate` binary on ephemeral
//! loopback ports, configured through a typed builder, between recording servers (an upstream,
//! a platform backend, an audit receiver, a WebSocket echo server) and clients that speak
//! `reqwest`, raw HTTP/1.1 bytes or WebDriver.
//!
//! - `config`: the typed config builder (`Config`, `Token`, `Liveness`, `Site`);
//! - `sidecar`: spawning the binary (`Sidecar`), its metrics and audit, the CLI;
//! - `client`: `reqwest` requests as a browser or an API client sends them;
//! - `load`: config files replaced in one step, load workers that count what failed;
//! - `raw`: exact request bytes and `Conn`, one connection for multi-step exchanges;
//! - `upstream`, `backend`, `ws`: the servers behind the proxy;
//! - `page`: reading the banner out of a page, and the End form;
//! - `tokens`: claims and signed tokens;
//! - `browser`: chromedriver;
//! - `pki`: test certificates (a test CA and the leaves it signs), made at run time.
//!
//! Everything here talks to 127.0.0.1 only.

mod backend;
mod browser;
mod client;
mod config;
mod load;
mod page;
mod pki;
mod raw;
mod sidecar;
mod tokens;
mod upstream;
mod ws;

pub use backend::*;
pub use browser::*;
pub use client::*;
pub use config::*;
pub use load::*;
pub use page::*;
pub use pki::*;
pub use raw::*;
pub use sidecar::*;
pub use tokens::*;
pub use upstream::*;
pub use ws::*;

use std::collections::HashSet;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The site most tests talk to.
pub const HOST: &str = "cafe.nixtech.app";
pub const COOKIE: &str = "nix_session";

/// Hosts every client made by [`Sidecar::client`] resolves to the proxy.
pub const HOSTS: &[&str] = &[
    "cafe.nixtech.app",
    "legacy.nixtech.app",
    "strict.nixtech.app",
    "login.nixtech.app",
    "public.nixtech.app",
    "down.nixtech.app",
    "unknown.nixtech.app",
    "acme.shop.nixtech.app",
    "evil.shop.nixtech.app",
];

/// A loopback port nobody in this test process has been handed before.
///
/// Bound then released: another process could still take it, which is the
/// accepted cost of testing a binary that binds its own ports.
pub fn free_port() -> u16 {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if taken.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A fresh directory under the system temp dir, removed on drop unless the
/// test is failing (then it is kept for inspection and its path printed).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "sessiongate-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept test dir {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Lower-cased with `_` read as `-`, the way the proxy must compare names.
pub fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Percent-decodes `%XX` sequences (anything else is kept as is).
pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every value of `name` (case-insensitive) in a list of received headers.
fn header_values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// Header lookup shared by everything that received headers: what the upstream got
/// ([`Recorded`]) and what a client got ([`Resp`], [`RawResponse`]).
pub trait Headers {
    /// Every value of `name` (case-insensitive), lossily as text.
    fn header_all(&self, name: &str) -> Vec<String>;

    /// The first value of `name`.
    fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

/// Received headers as `(name, bytes)` in arrival order.
fn lossy_values(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    header_values(headers, name)
        .into_iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
