//! Audit events (SPEC.md "Audit events"), written as JSON lines through [`crate::lines`]:
//! never blocking or failing a request; a full queue drops and counts.

use crate::lines::Lines;
use crate::metrics::METRICS;
use serde::Serialize;
use std::time::SystemTime;

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub ts: String,
    pub event: &'static str,
    /// The request's id (step 10), for events a request caused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub site: String,
    pub sid: Option<String>,
    pub admin_id: Option<String>,
    pub admin_email: Option<String>,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_duration_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// `session.revoked`: what was revoked (`jti`, `sid`, `sub`) and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `session.revoked` of a `sub`: tokens issued before this Unix time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

impl AuditEvent {
    pub fn new(event: &'static str, site: &str) -> AuditEvent {
        AuditEvent {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            site: site.to_string(),
            ..AuditEvent::default()
        }
    }
}

/// The sending half, cheap to clone into every request.
#[derive(Clone)]
pub struct Auditor {
    lines: Lines,
}

impl Auditor {
    pub fn new(lines: Lines) -> Auditor {
        Auditor { lines }
    }

    pub fn emit(&self, event: AuditEvent) {
        METRICS.audit_events.with_label_values(&[event.event]).inc();
        if !self.lines.push_json(&event) {
            METRICS.audit_dropped.inc();
        }
    }
}

/// The auditor as one request sees it: every event it emits carries the request's id and, when
/// there is one, its trace id.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub auditor: &'a Auditor,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
}

impl Scope<'_> {
    pub fn emit(&self, mut event: AuditEvent) {
        event.request_id = Some(self.request_id.to_string());
        event.trace_id = self.trace_id.map(str::to_string);
        self.auditor.emit(event);
    }
}
