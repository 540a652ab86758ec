//! The access log (SPEC.md "Access log and tracing"): one JSON line per request on the public
//! listener, written through [`crate::lines`] (batched, bounded, never blocking a request).
//! Never a cookie, a token or an `Authorization` value: the line is built from named fields
//! only, and the query string (which can carry secrets) only with `include_query`.

use crate::lines::Lines;
use crate::metrics::METRICS;
use serde::Serialize;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct AccessLine<'a> {
    pub ts: String,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The site's `host` pattern; `null` when no site matched.
    pub site: Option<&'a str>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_ms: f64,
    /// Time to the upstream's response head, when the request reached it.
    pub upstream_ms: Option<f64>,
    pub outcome: &'a str,
    /// The effective client address (see `headers::effective_client`).
    pub peer: Option<String>,
    pub user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    /// The impersonation sid, while impersonating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<&'a str>,
}

/// The path to log: the request target's path, with its query only when asked for.
pub fn logged_path(target: &str, include_query: bool) -> &str {
    if include_query {
        target
    } else {
        target.split_once('?').map_or(target, |(p, _)| p)
    }
}

/// Milliseconds, to the microsecond.
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Where access lines go; `None` when `[access_log] sink = "off"`.
#[derive(Clone, Default)]
pub struct AccessLog {
    lines: Option<Lines>,
}

impl AccessLog {
    pub fn new(lines: Option<Lines>) -> AccessLog {
        AccessLog { lines }
    }

    pub fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    pub fn write(&self, line: &AccessLine<'_>) {
        if let Some(lines) = &self.lines
            && !lines.push_json(line)
        {
            METRICS.access_log_dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_left_out_unless_asked_for() {
        assert_eq!(logged_path("/a/b?token=s3cret&x=1", false), "/a/b");
        assert_eq!(logged_path("/a/b?token=s3cret", true), "/a/b?token=s3cret");
        assert_eq!(logged_path("/a/b", false), "/a/b");
        assert_eq!(logged_path("/?", false), "/");
    }
}
