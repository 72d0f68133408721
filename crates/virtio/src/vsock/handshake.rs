//! The host side's half of Firecracker's hybrid vsock protocol: a client of
//! the device's Unix socket first sends `CONNECT <port>\n`, then (after sie
//! answers `OK <host port>\n`) speaks the stream.
//!
//! The line is read in small pieces with a hard cap, so a client that never
//! sends a newline costs a few dozen bytes, not a growing buffer.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

/// Longest accepted CONNECT line, newline included.
pub const MAX_LINE: usize = 32;

/// A client that has not finished its CONNECT line yet.
pub struct Handshake {
    pub stream: UnixStream,
    line: Vec<u8>,
}

/// What reading from a handshaking client produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// No full line yet; wait for more.
    Pending,
    /// A valid request for guest port `port`; `early` holds any bytes the
    /// client sent after the newline (at most [`MAX_LINE`]).
    Connect { port: u32, early: Vec<u8> },
    /// The client hung up before finishing.
    Closed,
    /// The line is too long or not `CONNECT <u32>`.
    Malformed,
}

/// The port of a `CONNECT <port>` line (newline already stripped;
/// surrounding whitespace tolerated, as clients like `socat` may add `\r`).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let port = text.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl Handshake {
    /// Starts reading the line of a freshly accepted (non-blocking) client.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            line: Vec::new(),
        }
    }

    /// Reads what is available, never more than one byte past the cap.
    pub fn read(&mut self) -> io::Result<Progress> {
        loop {
            let mut chunk = [0u8; MAX_LINE + 1];
            let room = MAX_LINE + 1 - self.line.len().min(MAX_LINE);
            let Some(buf) = chunk.get_mut(..room) else {
                return Ok(Progress::Malformed);
            };
            let n = match self.stream.read(buf) {
                Ok(0) => return Ok(Progress::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.line
                .extend_from_slice(buf.get(..n).unwrap_or_default());
            if let Some(end) = self.line.iter().position(|&b| b == b'\n') {
                if end >= MAX_LINE {
                    return Ok(Progress::Malformed);
                }
                let early = self.line.split_off(end + 1);
                let line = self.line.get(..end).unwrap_or_default();
                return Ok(match parse_connect(line) {
                    Some(port) => Progress::Connect { port, early },
                    None => Progress::Malformed,
                });
            }
            if self.line.len() >= MAX_LINE {
                return Ok(Progress::Malformed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn parses_only_connect_with_a_port() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    fn pair() -> (UnixStream, Handshake) {
        let (client, server) = UnixStream::pair().expect("pair");
        server.set_nonblocking(true).expect("nonblocking");
        (client, Handshake::new(server))
    }

    #[test]
    fn line_in_pieces_keeps_early_bytes() {
        let (mut client, mut hs) = pair();
        assert_eq!(hs.read().expect("read"), Progress::Pending);
        client.write_all(b"CONN").expect("write");
        assert_eq!(hs.read().expect("read"), Progress::Pending);
        client.write_all(b"ECT 7\nhi").expect("write");
        let want = Progress::Connect {
            port: 7,
            early: b"hi".to_vec(),
        };
        assert_eq!(hs.read().expect("read"), want);
    }

    #[test]
    fn oversize_or_closed_lines_end_the_handshake() {
        let (mut client, mut hs) = pair();
        client.write_all(&[b'x'; 100]).expect("write");
        assert_eq!(hs.read().expect("read"), Progress::Malformed);
        let (client, mut hs) = pair();
        drop(client);
        assert_eq!(hs.read().expect("read"), Progress::Closed);
    }
}
