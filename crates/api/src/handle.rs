//! The VMM's end of the API: requests to answer and an eventfd that says so.
//!
//! The server thread sends each [`ApiCall`] over a channel and then writes
//! the eventfd, so a VMM that waits in epoll needs only one more fd in its
//! set. Requests come one at a time: the server waits for the reply before
//! it reads the next, as Firecracker's does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use sie_config::{Request, Response};
use vmm_sys_util::eventfd::EventFd;

use crate::stats::ApiStats;

/// One request from a client, and where its answer goes.
#[derive(Debug)]
pub struct ApiCall {
    /// What the client asked.
    pub request: Request,
    /// Send exactly one [`Response`] here. Dropping it unanswered makes the
    /// client get a 400.
    pub reply: Sender<Response>,
}

/// Held by the VMM: receives [`ApiCall`]s from the server thread.
#[derive(Debug)]
pub struct ApiHandle {
    /// Until published: where the socket is and where it goes.
    pub(crate) pending: Option<crate::publish::Pending>,
    pub(crate) receiver: Receiver<ApiCall>,
    pub(crate) wake: EventFd,
    pub(crate) stopper: ServerStopper,
    pub(crate) stats: Arc<ApiStats>,
}

impl ApiHandle {
    /// Readable when calls may be waiting: add it to the VMM's epoll set
    /// (level-triggered) and call [`ApiHandle::try_recv`] until `None`.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The next waiting call, if any. Clears the eventfd first, so a call
    /// sent after this returns `None` still wakes the VMM again.
    pub fn try_recv(&self) -> Option<ApiCall> {
        // EAGAIN just means nothing was signalled; the channel decides.
        let _ = self.wake.read();
        self.receiver.try_recv().ok()
    }

    /// Waits up to `timeout` for a call: for VMM loops without epoll, and
    /// for tests.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<ApiCall> {
        match self.receiver.recv_timeout(timeout) {
            Ok(call) => {
                let _ = self.wake.read();
                Some(call)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The server's per-route counters.
    pub fn stats(&self) -> Arc<ApiStats> {
        Arc::clone(&self.stats)
    }

    /// Puts the socket file at its path, once the server thread is
    /// filtered: call it when the VMM is ready to answer (see
    /// [`crate::ApiServer::spawn_unpublished`]). Later calls do nothing.
    pub fn publish(&mut self) -> Result<(), crate::error::ApiError> {
        match self.pending.take() {
            Some(pending) => pending.publish(),
            None => Ok(()),
        }
    }

    /// Asks the server thread to stop; see [`ServerStopper::stop`].
    pub fn stop_server(&self) {
        self.stopper.stop();
    }

    /// A stopper another thread can keep (a signal handler, say), and that
    /// still works after this handle is dropped.
    pub fn stopper(&self) -> ServerStopper {
        self.stopper.clone()
    }
}

/// Stops the server thread; cheap to clone, `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct ServerStopper {
    pub(crate) stop: Arc<EventFd>,
    pub(crate) stopping: Arc<AtomicBool>,
}

impl ServerStopper {
    /// Asks the server thread to stop: it closes every connection, removes
    /// the socket file and returns, so it can be joined. A request waiting
    /// for the VMM's answer gets a 400. Stopping twice is harmless.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(error) = self.stop.write(1) {
            tracing::warn!("api: cannot signal the server to stop: {error}");
        }
    }
}
