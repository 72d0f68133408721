//! Why a virtio-net device could not be made.

use std::error::Error;
use std::io;

use super::MIN_MTU;

/// Why [`super::Net::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An MTU below what the virtio spec and every IPv4 link require.
    #[error("MTU {0} is below the minimum of {MIN_MTU} bytes")]
    MtuTooSmall(u16),
    /// The host side refused the MTU; the source names the interface.
    #[error("cannot give the host interface an MTU of {mtu} bytes")]
    HostMtu {
        /// The MTU asked for, in bytes.
        mtu: u16,
        /// The backend's error (a [`super::TapError`] for a tap).
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// No descriptor for the device's epoll set, or no entropy for a random
    /// MAC address.
    #[error("cannot set up the device")]
    Setup(#[source] io::Error),
}
