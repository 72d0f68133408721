//! Configuration mechanism #1: the address register at port 0xCF8 and the
//! data window at 0xCFC..=0xCFF (insert this device at 0xCF8 for 8 ports).
//!
//! The address register holds the enable bit (31), bus (23:16), device
//! (15:11), function (10:8) and dword register (7:2), plus register bits
//! 11:8 in bits 27:24 (the extended form Linux's `PCI_CONF1_ADDRESS`
//! always writes, so 0x100 and up are not aliases of the header); it is
//! written and read as a whole dword. A data access of 1, 2 or 4 bytes at 0xCFC + n
//! reaches register + n of the addressed function. With the enable bit
//! clear, or for any other access shape, reads give all ones and writes
//! are dropped (counted). One register for all vCPUs, as in hardware: the
//! guest serialises its own address/data pairs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use sie_devices::BusDevice;

use crate::address::Bdf;
use crate::root::PciRoot;

/// First port of the mechanism.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports it covers (0xCF8..=0xCFF).
pub const CONFIG_IO_PORTS: u64 = 8;

const ENABLE: u32 = 1 << 31;
/// Bits of the address register that hold something (bits 30:28 and 1:0
/// are reserved and read 0).
const ADDRESS_BITS: u32 = ENABLE | 0x0fff_fffc;

/// The 0xCF8/0xCFC ports.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: AtomicU32,
    rejected: AtomicU64,
}

impl PciConfigIo {
    /// The ports in front of `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self {
            root,
            address: AtomicU32::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Accesses dropped so far (wrong size, disabled address register).
    pub fn rejected_accesses(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The function and register a data access at port `0xCFC + lane`
    /// addresses, if the address register is enabled.
    fn target(&self, lane: u64) -> Option<(Bdf, u16)> {
        let address = self.address.load(Ordering::Relaxed);
        if address & ENABLE == 0 {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let bdf = Bdf {
            bus: (address >> 16) as u8,
            device: ((address >> 11) & 0x1f) as u8,
            function: ((address >> 8) & 0x7) as u8,
        };
        let register = ((address >> 16) & 0xf00) | (address & 0xfc);
        Some((bdf, register as u16 + lane as u16))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => {
                data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes());
            }
            4..=7 => match self.target(offset - 4) {
                Some((bdf, register)) => self.root.read_config(bdf, register, data),
                None => crate::fill_ones(data),
            },
            _ => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                crate::fill_ones(data);
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            (0, Ok(value)) => {
                let value = u32::from_le_bytes(value) & ADDRESS_BITS;
                self.address.store(value, Ordering::Relaxed);
            }
            (4..=7, _) => {
                if let Some((bdf, register)) = self.target(offset - 4) {
                    self.root.write_config(bdf, register, data);
                }
            }
            _ => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[path = "config_io_tests.rs"]
mod tests;
