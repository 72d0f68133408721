//! The host bridge at 00.0: an identity in configuration space and
//! nothing else (no BARs), so the guest recognises a PCI host.

use std::sync::{Mutex, PoisonError};

use crate::config_space::{BarInfo, ConfigSpace, ConfigWriteOutcome, PciHeader};
use crate::device::PciDevice;

/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge (one of Intel's host bridge IDs that
/// generic kernels accept without quirks).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

/// The host bridge (class 06, subclass 00).
pub struct HostBridge {
    config: Mutex<ConfigSpace>,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge with sie's identity.
    pub fn new() -> Self {
        Self {
            config: Mutex::new(ConfigSpace::new(PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class: 0x06,
                subclass: 0x00,
                ..PciHeader::default()
            })),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data)
    }

    fn read_bar(&self, _bar: u8, _offset: u64, data: &mut [u8]) {
        crate::fill_ones(data);
    }

    fn write_bar(&self, _bar: u8, _offset: u64, _data: &[u8]) {}

    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }

    fn name(&self) -> &str {
        "host bridge"
    }
}
