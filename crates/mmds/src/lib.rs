//! Firecracker's microVM metadata service (MMDS), the guest side and the
//! store behind it.
//!
//! - [`Mmds`] ([`store`]): the JSON data store the host fills through `PUT`
//!   and `PATCH /mmds` (a JSON merge patch), bounded by a size limit, with
//!   the guest-visible settings (version, IMDS compatibility) and, for V2,
//!   the session tokens ([`token`]).
//! - [`http`]: the guest's HTTP requests answered from the store, as
//!   Firecracker answers them (IMDS listings or JSON, 401 without a V2
//!   token).
//! - [`MmdsStack`] ([`stack`]): a smoltcp interface holding the MMDS
//!   address, fed with the Ethernet frames a virtio-net device diverts to
//!   it ([`MmdsStack::claims`]) and handing back the frames to inject into
//!   the guest's receive path.
//!
//! ```
//! use sie_mmds::{Mmds, http};
//! let mut mmds = Mmds::new(sie_mmds::DEFAULT_SIZE_LIMIT);
//! mmds.put(serde_json::json!({"latest": {"meta-data": {"id": "i-1"}}})).unwrap();
//! let answer = http::answer(&mut mmds, b"GET /latest/meta-data/id HTTP/1.1\r\n\r\n");
//! assert!(answer.ends_with(b"i-1"));
//! ```

pub mod http;
pub mod stack;
pub mod store;
pub mod token;

use std::sync::{Arc, Mutex};

pub use stack::MmdsStack;
pub use store::{DEFAULT_IPV4, DEFAULT_SIZE_LIMIT, Mmds, MmdsVersion, StoreError};

/// The store as the API (host side) and every MMDS-enabled net device
/// (guest side) share it.
pub type SharedMmds = Arc<Mutex<Mmds>>;

/// Fills `buf` from the kernel's random source (`getrandom(2)`, allowed on
/// the VMM thread by its seccomp policy).
pub(crate) fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // which we own for the whole call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += n as usize;
    }
    Ok(())
}
