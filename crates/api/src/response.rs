//! HTTP/1.1 response writing: a [`Response`] to bytes on the wire.
//!
//! Shaped like Firecracker's answers (`Server: Firecracker API`, faults as
//! `{"fault_message": ...}`) because clients parse them. A 204 carries no
//! body and no `Content-Length`, as RFC 9110 asks; every other answer has an
//! exact `Content-Length` so keep-alive clients know where it ends.

use sie_config::Response;

/// Sent when a client asked for it with `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `Content-Type` of [`Response::Text`]: the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The JSON body of a fault.
pub fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// Appends `response` in HTTP/1.1 form to `out`. `keep_alive` false adds
/// `Connection: close`; the caller then closes once it is written.
pub fn write_response(out: &mut Vec<u8>, response: &Response, keep_alive: bool) {
    let (status, content_type, body) = match response {
        Response::NoContent => ("204 No Content", None, String::new()),
        Response::Json(value) => ("200 OK", Some("application/json"), value.to_string()),
        Response::Text(text) => ("200 OK", Some(PROMETHEUS_TEXT), text.clone()),
        Response::Fault(message) => (
            "400 Bad Request",
            Some("application/json"),
            fault_body(message),
        ),
        Response::TooLarge(message) => (
            "413 Payload Too Large",
            Some("application/json"),
            fault_body(message),
        ),
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head =
        format!("HTTP/1.1 {status}\r\nServer: Firecracker API\r\nConnection: {connection}\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(response: &Response, keep_alive: bool) -> String {
        let mut out = Vec::new();
        write_response(&mut out, response, keep_alive);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn no_content_has_no_body() {
        assert_eq!(
            text(&Response::NoContent, true),
            "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn json_text_and_faults_have_exact_lengths() {
        let json = text(&Response::Json(serde_json::json!({"a": 1})), true);
        assert!(json.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            json.contains("Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        );
        let prometheus = text(&Response::Text("x 1\n".into()), true);
        assert!(
            prometheus.contains("Content-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n")
        );
        let fault = text(&Response::fault("no \"way\""), false);
        assert!(fault.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(fault.contains("Connection: close\r\n"));
        assert!(fault.ends_with(r#"{"fault_message":"no \"way\""}"#));
        let too_large = text(&Response::TooLarge("big".into()), true);
        assert!(too_large.starts_with("HTTP/1.1 413 Payload Too Large\r\n"));
        assert!(too_large.ends_with(r#"{"fault_message":"big"}"#));
    }
}
