//! The guest's HTTP requests to the metadata service, answered as
//! Firecracker answers them.
//!
//! - `GET <path>`: the value at that JSON pointer, as EC2 IMDS text (an
//!   object's keys one per line, sub-objects with a trailing `/`; a string
//!   as itself) or, with `Accept: application/json` and without
//!   `imds_compat`, as compact JSON. V2 needs a valid `X-metadata-token`
//!   (or `X-aws-ec2-metadata-token`): 401 otherwise.
//! - `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (or the
//!   `X-aws-ec2-` form), 1 to 21600: a new session token as text/plain.
//!   Refused when the request carries `X-Forwarded-For` (it came through a
//!   proxy, which is what sessions guard against).
//! - Anything else: 405 with `Allow: GET, PUT`.
//!
//! Requests are parsed with `httparse` from a connection's buffer; a
//! request that is malformed, too large or chunked gets one error response
//! and the connection is closed.

use std::time::Instant;

use crate::store::{Mmds, OutputFormat, StoreError};

/// Largest request (head and body) a connection may send, bytes.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;
/// Where tokens are issued.
const TOKEN_PATH: &str = "/latest/api/token";

/// What a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    /// One request, answered.
    Answered {
        /// Bytes of the buffer the request used.
        consumed: usize,
        /// The whole HTTP response.
        response: Vec<u8>,
        /// Close the connection after sending it.
        close: bool,
    },
}

/// A response before it is written out.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
            allow: false,
        }
    }

    fn bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            501 => "Not Implemented",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: Firecracker API\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, PUT\r\n");
        }
        head.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// Answers the first request in `buf`, if it is whole. A buffer already
/// holding [`MAX_REQUEST_BYTES`] without a whole request is answered 400
/// (the caller stops reading there).
pub fn serve(mmds: &mut Mmds, buf: &[u8], now: Instant) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => {
            return Parsed::Incomplete;
        }
        Ok(httparse::Status::Partial) => return refuse(buf.len(), 400, "Request is too large."),
        Err(error) => return refuse(buf.len(), 400, format!("Invalid HTTP request: {error}.")),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if header("Transfer-Encoding").is_some() {
        return refuse(buf.len(), 501, "Transfer-Encoding is not supported.");
    }
    let body_len = match header("Content-Length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(len)) => len,
        Some(Err(_)) => return refuse(buf.len(), 400, "Invalid Content-Length."),
    };
    let consumed = match head_len.checked_add(body_len) {
        Some(total) if total <= MAX_REQUEST_BYTES => total,
        _ => return refuse(buf.len(), 413, "Request is too large."),
    };
    if buf.len() < consumed {
        return Parsed::Incomplete;
    }
    // httparse fills these for every complete request.
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("");
    let http10 = request.version == Some(0);
    let connection = header("Connection").map(|c| c.to_ascii_lowercase());
    let close = match connection.as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => http10,
    };
    let reply = respond(mmds, method, target, &header, now);
    Parsed::Answered {
        consumed,
        response: reply.bytes(close),
        close,
    }
}

/// One request without a connection: for tests and examples.
pub fn answer(mmds: &mut Mmds, request: &[u8]) -> Vec<u8> {
    match serve(mmds, request, Instant::now()) {
        Parsed::Answered { response, .. } => response,
        Parsed::Incomplete => Reply::text(400, "Incomplete request.").bytes(true),
    }
}

fn refuse(consumed: usize, status: u16, body: impl Into<String>) -> Parsed {
    Parsed::Answered {
        consumed,
        response: Reply::text(status, body).bytes(true),
        close: true,
    }
}

/// The path of a request target, origin form (`/a/b`) or absolute form
/// (`http://169.254.169.254/a/b`), without a query.
fn request_path(target: &str) -> Option<&str> {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.starts_with('/').then_some(path)
}

fn respond(
    mmds: &mut Mmds,
    method: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<String>,
    now: Instant,
) -> Reply {
    let Some(path) = request_path(target) else {
        return Reply::text(400, "Invalid URI.");
    };
    match method {
        "GET" => {
            if mmds.version() == crate::MmdsVersion::V2 {
                let token =
                    header("X-metadata-token").or_else(|| header("X-aws-ec2-metadata-token"));
                let Some(token) = token else {
                    return Reply::text(
                        401,
                        "No MMDS token provided. Use `X-metadata-token` header to specify the session token.",
                    );
                };
                if !mmds.tokens().is_valid(&token, now) {
                    return Reply::text(401, "MMDS token not valid.");
                }
            }
            let json = !mmds.imds_compat()
                && header("Accept").is_some_and(|accept| {
                    accept
                        .split(',')
                        .any(|t| t.split(';').next().unwrap_or("").trim() == "application/json")
                });
            let format = if json {
                OutputFormat::Json
            } else {
                OutputFormat::Imds
            };
            match mmds.get(path, format) {
                Ok(body) => Reply {
                    status: 200,
                    content_type: if json {
                        "application/json"
                    } else {
                        "text/plain"
                    },
                    body,
                    allow: false,
                },
                Err(StoreError::NotFound) => {
                    Reply::text(404, format!("Resource not found: {path}."))
                }
                Err(error) => Reply::text(501, error.to_string()),
            }
        }
        "PUT" => put_token(mmds, path, header, now),
        _ => Reply {
            allow: true,
            ..Reply::text(405, "Not allowed HTTP method.")
        },
    }
}

fn put_token(
    mmds: &mut Mmds,
    path: &str,
    header: &dyn Fn(&str) -> Option<String>,
    now: Instant,
) -> Reply {
    if header("X-Forwarded-For").is_some() {
        return Reply::text(
            400,
            "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
        );
    }
    let collapsed: String = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{s}"))
        .collect();
    if collapsed != TOKEN_PATH {
        return Reply::text(404, format!("Resource not found: {path}."));
    }
    let ttl = header("X-metadata-token-ttl-seconds")
        .or_else(|| header("X-aws-ec2-metadata-token-ttl-seconds"));
    let Some(ttl) = ttl else {
        return Reply::text(
            400,
            "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.",
        );
    };
    let Ok(ttl_seconds) = ttl.parse::<u32>() else {
        return Reply::text(
            400,
            format!(
                "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:{ttl}"
            ),
        );
    };
    match mmds.tokens().issue(ttl_seconds, now) {
        Ok(token) => Reply::text(200, token),
        Err(error) => Reply::text(400, error.to_string()),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
