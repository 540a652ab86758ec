//! Helpers for the unit tests (compiled only for them).

use pingora::http::RequestHeader;

/// A request head with these headers, in this order.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, target.as_bytes(), None).expect("request");
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).expect("header");
    }
    r
}
