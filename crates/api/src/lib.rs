//! Firecracker-compatible HTTP/1.1 API on a Unix socket.
