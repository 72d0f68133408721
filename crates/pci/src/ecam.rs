//! The PCIe enhanced configuration access mechanism (ECAM): a memory
//! window where offset `bus << 20 | device << 15 | function << 12 |
//! register` reaches a function's configuration space. Insert it at the
//! base the ACPI MCFG table names, 1 MiB per bus (sie has bus 0 only;
//! other buses, if the window covers them, read all ones).

use std::sync::Arc;

use sie_devices::BusDevice;

use crate::address::Bdf;
use crate::root::PciRoot;

/// Bytes of ECAM window per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// The ECAM window.
pub struct PciEcam {
    root: Arc<PciRoot>,
}

impl PciEcam {
    /// The window in front of `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }
}

/// The function and register at `offset` into the window, or `None`
/// beyond bus 255.
fn decode(offset: u64) -> Option<(Bdf, u16)> {
    let bus = u8::try_from(offset >> 20).ok()?;
    let bdf = Bdf {
        bus,
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
    };
    Some((bdf, (offset & 0xfff) as u16))
}

impl BusDevice for PciEcam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match decode(offset) {
            Some((bdf, register)) => self.root.read_config(bdf, register, data),
            None => crate::fill_ones(data),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some((bdf, register)) = decode(offset) {
            self.root.write_config(bdf, register, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_decode_to_bus_device_function_register() {
        let (bdf, register) = decode(3 << 20 | 0x1f << 15 | 7 << 12 | 0xffc).unwrap();
        assert_eq!(
            bdf,
            Bdf {
                bus: 3,
                device: 0x1f,
                function: 7
            }
        );
        assert_eq!(register, 0xffc);
        assert_eq!(decode(5 << 15 | 0x10), Some((Bdf::slot(5), 0x10)));
        assert_eq!(decode(256 << 20), None);
        assert_eq!(decode(u64::MAX), None);
    }
}
