//! One parsed HTTP request to one [`Response`]: route it, ask the VMM, count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use sie_config::{Request, Response};
use vmm_sys_util::eventfd::EventFd;

use crate::handle::ApiCall;
use crate::http::HttpRequest;
use crate::route::{ROUTE_INVALID, ROUTE_VERSION, Routed, route};
use crate::stats::ApiStats;

/// How often a wait for the VMM's answer checks whether the server is
/// being stopped.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What every connection needs to answer requests.
pub(crate) struct Dispatcher {
    pub(crate) calls: Sender<ApiCall>,
    pub(crate) wake: EventFd,
    pub(crate) stats: Arc<ApiStats>,
    pub(crate) version: String,
    pub(crate) stopping: Arc<AtomicBool>,
}

impl Dispatcher {
    /// Routes `request`, asks the VMM when it is for the VMM, and counts it.
    pub(crate) fn answer(&self, request: &HttpRequest) -> Response {
        let start = Instant::now();
        let (name, response) = match route(&request.method, &request.target, &request.body) {
            Ok(Routed::Version) => (
                ROUTE_VERSION,
                Response::Json(serde_json::json!({ "firecracker_version": self.version })),
            ),
            Ok(Routed::Vmm(call)) => (call.route(), self.ask_vmm(call)),
            Err(fault) => (fault.route, Response::Fault(fault.message)),
        };
        let fault = response.fault_message().is_some();
        self.stats.record(name, fault, start.elapsed());
        if let Some(message) = response.fault_message() {
            tracing::info!("api: {} {}: {message}", request.method, request.target);
        }
        response
    }

    /// Counts input that never became a request (bad HTTP).
    pub(crate) fn count_invalid(&self) {
        self.stats.record(ROUTE_INVALID, true, Duration::ZERO);
    }

    /// Sends `request` to the VMM and waits for its answer, or for the
    /// server to be stopped.
    fn ask_vmm(&self, request: Request) -> Response {
        let (reply, answer) = mpsc::channel();
        if self.calls.send(ApiCall { request, reply }).is_err() {
            return Response::fault("the VMM is shutting down");
        }
        if let Err(error) = self.wake.write(1) {
            tracing::warn!("api: cannot wake the VMM: {error}");
        }
        loop {
            match answer.recv_timeout(STOP_POLL) {
                Ok(response) => return response,
                Err(RecvTimeoutError::Disconnected) => {
                    return Response::fault("the VMM is shutting down");
                }
                Err(RecvTimeoutError::Timeout) if self.stopping.load(Ordering::SeqCst) => {
                    return Response::fault("the API server is shutting down");
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
