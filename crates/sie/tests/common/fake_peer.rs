//! A stand-in migration destination on a Unix socket, for tests that must
//! cut a move at a chosen point.

use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use sie_vmm::migration::wire;

/// Listens on `path` (bound before this returns, so a send may start at
/// once), takes one connection, reads the source's hello and hands the
/// connection to `body`, which answers as the test needs (its own hello
/// first). Join the handle for what `body` returned.
pub fn fake_destination<T: Send + 'static>(
    path: &str,
    body: impl FnOnce(UnixStream) -> T + Send + 'static,
) -> JoinHandle<T> {
    let listener = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        wire::expect_hello(&mut conn).expect("the source's hello");
        body(conn)
    })
}
