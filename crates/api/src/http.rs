//! HTTP/1.1 request parsing: bytes in, whole requests out.
//!
//! The reader buffers whatever the socket gave and hands out a request only
//! once its head and its `Content-Length` bytes of body are all there, so a
//! request split across many reads (byte by byte even) and several requests
//! in one read (pipelining) look the same to the server.
//!
//! Deliberate limits, all answered with 400 and a closed connection because
//! after them the reader no longer knows where the next request starts:
//! - a head over [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] headers;
//! - a body over the payload limit, refused from `Content-Length` alone so
//!   the body is never read into memory;
//! - `Transfer-Encoding` of any kind: Firecracker does not take chunked
//!   bodies either, and its clients always send `Content-Length`;
//! - a missing or malformed request line.
//!
//! `Expect: 100-continue` (curl sends it for bodies over 1 KiB) yields
//! [`Event::Continue`] once, when the head is in and the body is not, so the
//! client does not wait a second before sending it.

/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 8192;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

/// One complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target as sent, query included.
    pub target: String,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
}

/// What the reader has ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client asked for `100 Continue` before sending its body.
    Continue,
    /// A whole request.
    Request(HttpRequest),
}

/// Why a connection's input cannot be read further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP/1.x.
    #[error("Malformed HTTP request: {0}.")]
    Malformed(String),
    /// Head over [`MAX_HEAD_BYTES`].
    #[error("Request headers are larger than the limit of {MAX_HEAD_BYTES} bytes.")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    #[error("Request has more than {MAX_HEADERS} headers.")]
    TooManyHeaders,
    /// `Content-Length` over the payload limit.
    #[error("Request payload of {length} bytes is larger than the limit of {limit} bytes.")]
    PayloadTooLarge {
        /// What the client announced.
        length: usize,
        /// The server's limit.
        limit: usize,
    },
    /// `Transfer-Encoding` was sent.
    #[error("Transfer-Encoding is not supported; send the body with a Content-Length.")]
    TransferEncoding,
    /// `Content-Length` is not one decimal number.
    #[error("Invalid Content-Length header.")]
    ContentLength,
}

/// A parsed head waiting for its body.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
    expect_continue: bool,
}

/// Accumulates one connection's input and splits it into requests.
#[derive(Debug)]
pub struct RequestReader {
    buffer: Vec<u8>,
    max_payload: usize,
    head: Option<Head>,
}

impl RequestReader {
    /// A reader refusing bodies over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            buffer: Vec::new(),
            max_payload,
            head: None,
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The most bytes worth buffering: a full head and a full body.
    pub fn capacity(&self) -> usize {
        MAX_HEAD_BYTES + self.max_payload
    }

    /// The next event, `None` when more input is needed. After an error the
    /// reader is unusable: the caller answers 400 and closes.
    pub fn next_event(&mut self) -> Result<Option<Event>, HttpError> {
        if self.head.is_none() {
            match self.parse_head()? {
                Some(head) => self.head = Some(head),
                None => return Ok(None),
            }
        }
        let Some(head) = self.head.as_mut() else {
            return Ok(None);
        };
        if self.buffer.len() < head.content_length {
            if head.expect_continue {
                head.expect_continue = false;
                return Ok(Some(Event::Continue));
            }
            return Ok(None);
        }
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        let body: Vec<u8> = self.buffer.drain(..head.content_length).collect();
        Ok(Some(Event::Request(HttpRequest {
            method: head.method,
            target: head.target,
            body,
            keep_alive: head.keep_alive,
        })))
    }

    fn parse_head(&mut self) -> Result<Option<Head>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let length = match request.parse(&self.buffer) {
            Ok(httparse::Status::Partial) if self.buffer.len() > MAX_HEAD_BYTES => {
                return Err(HttpError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
                return Err(HttpError::HeadTooLarge);
            }
            Ok(httparse::Status::Complete(length)) => length,
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
            Err(error) => return Err(HttpError::Malformed(error.to_string())),
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Err(HttpError::Malformed("incomplete request line".into()));
        };
        let mut head = Head {
            method: method.to_string(),
            target: target.to_string(),
            keep_alive: version >= 1,
            content_length: 0,
            expect_continue: false,
        };
        let mut content_length = None;
        for header in request.headers.iter() {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", header.name)))?
                .trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                let length: usize = value.parse().map_err(|_| HttpError::ContentLength)?;
                if content_length.is_some_and(|previous| previous != length) {
                    return Err(HttpError::ContentLength);
                }
                content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(HttpError::TransferEncoding);
            } else if header.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            } else if header.name.eq_ignore_ascii_case("expect") {
                head.expect_continue = value.eq_ignore_ascii_case("100-continue");
            }
        }
        head.content_length = content_length.unwrap_or(0);
        if head.content_length > self.max_payload {
            return Err(HttpError::PayloadTooLarge {
                length: head.content_length,
                limit: self.max_payload,
            });
        }
        self.buffer.drain(..length);
        Ok(Some(head))
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
