//! Where things are in a virtio-PCI function (virtio 1.x §4.1.4): the
//! identity in its configuration space, the vendor capabilities that point
//! the driver at each structure, and the one BAR holding them all.
//!
//! BAR 0, 64-bit memory, not prefetchable (ISR reads have side effects),
//! [`BAR_SIZE`] bytes, one 4 KiB page per structure so each can be mapped
//! or trapped alone:
//!
//! | offset   | structure                                     |
//! |----------|-----------------------------------------------|
//! | 0x0000   | common configuration ([`COMMON_LEN`] bytes)    |
//! | 0x1000   | ISR status (1 byte)                           |
//! | 0x2000   | device-specific configuration                 |
//! | 0x3000   | notifications: queue n at n × [`NOTIFY_MULTIPLIER`] |
//! | 0x4000   | MSI-X vector table                            |
//! | 0x5000   | MSI-X pending-bit array                       |

use sie_pci::{ConfigSpace, ConfigSpaceError, PciHeader};
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET, VIRTIO_ID_VSOCK,
};

/// The vendor ID of every virtio device (Red Hat, Inc.).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of a non-transitional device (0x40 or above, §4.1.2.1).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;
/// The index of the BAR holding every structure.
pub const BAR_INDEX: u8 = 0;
/// Its size in bytes.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration structure in the BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (up to `queue_device`).
pub const COMMON_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device-specific configuration.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X vector table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Bytes each structure may take (one page).
pub const REGION_LEN: u64 = 0x1000;
/// The most queues the notification page and a one-page MSI-X table
/// (one vector per queue plus configuration) hold.
pub const MAX_QUEUES: usize = 255;

/// Offsets of the common configuration fields in BAR 0 (virtio 1.x §4.1.4.3).
pub mod common {
    /// device_feature_select (32 bits).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// device_feature (32 bits).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// driver_feature_select (32 bits).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// driver_feature (32 bits).
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// config_msix_vector (16 bits).
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// num_queues (16 bits).
    pub const NUM_QUEUES: u64 = 0x12;
    /// device_status (8 bits).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// config_generation (8 bits).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// queue_select (16 bits).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// queue_size (16 bits).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// queue_msix_vector (16 bits).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// queue_enable (16 bits).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// queue_notify_off (16 bits).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// queue_desc (64 bits).
    pub const QUEUE_DESC: u64 = 0x20;
    /// queue_driver (64 bits).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// queue_device (64 bits).
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// `VIRTIO_MSI_NO_VECTOR`: no interrupt for this event.
pub const NO_VECTOR: u16 = 0xffff;

/// Vendor-specific capability ID, which virtio's structures use.
const VENDOR_CAPABILITY: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// PCI class and subclass for a virtio device type (the guest's driver
/// matches on IDs; the class only makes `lspci` readable).
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        VIRTIO_ID_NET => (0x02, 0x00),
        VIRTIO_ID_BLOCK => (0x01, 0x80),
        VIRTIO_ID_CONSOLE | VIRTIO_ID_VSOCK => (0x07, 0x80),
        _ => (0xff, 0x00),
    }
}

/// The type-0 header of a virtio device of `device_type`. No INTx pin:
/// sie's virtio-PCI devices interrupt through MSI-X only.
pub(crate) fn header(device_type: u32) -> PciHeader {
    let (class, subclass) = class_of(device_type);
    PciHeader {
        vendor_id: VIRTIO_PCI_VENDOR_ID,
        device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
        revision_id: 1,
        class,
        subclass,
        prog_if: 0,
        subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
        subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        interrupt_pin: 0,
    }
}

/// A `virtio_pci_cap` body (after the ID and next pointer) for `cfg_type`
/// at `offset`/`length` of BAR 0, followed by `extra`.
fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![16 + extra.len() as u8, cfg_type, BAR_INDEX, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Adds the virtio capabilities to `config` for a device with
/// `queues` queues and `device_config_len` bytes of device configuration.
/// Returns the offset of the PCI configuration access capability.
pub(crate) fn add_capabilities(
    config: &mut ConfigSpace,
    queues: usize,
    device_config_len: usize,
) -> Result<u16, ConfigSpaceError> {
    config.add_capability(
        VENDOR_CAPABILITY,
        &vendor_cap(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN, &[]),
    )?;
    let notify_len = queues as u64 * u64::from(NOTIFY_MULTIPLIER);
    config.add_capability(
        VENDOR_CAPABILITY,
        &vendor_cap(
            CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            notify_len,
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        ),
    )?;
    config.add_capability(
        VENDOR_CAPABILITY,
        &vendor_cap(CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
    )?;
    if device_config_len > 0 {
        config.add_capability(
            VENDOR_CAPABILITY,
            &vendor_cap(
                CAP_DEVICE_CFG,
                DEVICE_CONFIG_OFFSET,
                device_config_len as u64,
                &[],
            ),
        )?;
    }
    // The access window of §4.1.4.9: bar, offset, length and data are the
    // driver's to write.
    let pci_cfg =
        config.add_capability(VENDOR_CAPABILITY, &vendor_cap(CAP_PCI_CFG, 0, 0, &[0; 4]))?;
    config.set_write_mask(pci_cfg + PCI_CFG_BAR, &[0xff])?;
    config.set_write_mask(pci_cfg + PCI_CFG_OFFSET, &[0xff; 12])?;
    Ok(pci_cfg)
}

/// Offsets inside the PCI configuration access capability.
pub(crate) const PCI_CFG_BAR: u16 = 4;
/// The `cap.offset` field (`cap.length` follows, then the data).
pub(crate) const PCI_CFG_OFFSET: u16 = 8;
/// The `cap.length` field.
pub(crate) const PCI_CFG_LENGTH: u16 = 12;
/// The `pci_cfg_data` window.
pub(crate) const PCI_CFG_DATA: u16 = 16;
