//! Firecracker-compatible HTTP/1.1 API on a Unix socket.
//!
//! [`ApiServer::bind`] takes the socket path, [`ApiServer::spawn`] serves
//! it on a thread named `fc_api`, and the VMM answers each
//! [`sie_config::Request`] that arrives on the [`ApiHandle`] with a
//! [`sie_config::Response`]. The VMM never sees HTTP; the server never sees
//! the VM. The routes, status codes and fault wording follow Firecracker's,
//! so its clients (firecracker-go-sdk, Kata, flintlock) work unchanged.
//!
//! The VMM side: put [`ApiHandle::wake_fd`] in the VMM's epoll set; when it
//! is readable, take calls with [`ApiHandle::try_recv`] until `None` and
//! send one [`sie_config::Response`] on each call's `reply`. The server
//! handles one request at a time and waits for that reply, as Firecracker's
//! does, so a slow answer delays other clients but never reorders them.
//! [`ApiHandle::stop_server`] (or a [`ServerStopper`] kept elsewhere) ends
//! the thread, which removes the socket file.
//!
//! ```no_run
//! use sie_api::{ApiServer, ServerOptions};
//! use sie_config::{Request, Response};
//!
//! let server = ApiServer::bind("/tmp/sie.sock".as_ref(), ServerOptions::default())?;
//! let (api, thread) = server.spawn()?;
//! // In the VMM's loop: api.wake_fd() is in its epoll set; when it fires:
//! while let Some(call) = api.try_recv() {
//!     let response = match call.request {
//!         Request::GetInstanceInfo => Response::Json(serde_json::json!({"state": "Not started"})),
//!         _ => Response::fault("not yet"),
//!     };
//!     let _ = call.reply.send(response);
//! }
//! api.stop_server();
//! thread.join().ok();
//! # Ok::<(), sie_api::ApiError>(())
//! ```

mod connection;
mod dispatch;
mod error;
mod handle;
mod http;
mod publish;
mod response;
mod route;
mod server;
mod stats;

pub use handle::{ApiCall, ApiHandle, ServerStopper};
// The request reader is public for fuzz/ (any bytes from a client go
// through it); the server is its only user inside sie.
pub use error::ApiError;
pub use http::{Event, HttpError, HttpRequest, MAX_HEAD_BYTES, MAX_HEADERS, RequestReader};
pub use route::{Fault, Routed, route};
pub use server::{
    ApiServer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PAYLOAD, DEFAULT_VERSION,
    ServerOptions,
};
pub use stats::ApiStats;
