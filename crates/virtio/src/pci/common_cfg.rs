//! The common configuration structure (virtio 1.x §4.1.4.3), decoded into
//! calls on the transport-neutral core: the same status machine, feature
//! negotiation and queue checks as virtio-MMIO.
//!
//! Each field is accessed at its own width; a 64-bit queue address also
//! as two dwords (what Linux does) or one qword. Anything else (another
//! width, an offset inside a field, a read-only field written) is refused
//! and counted: reads give 0, writes change nothing.

use virtio_queue::QueueT;

use super::layout::NO_VECTOR;
use super::layout::common::*;
use super::vectors::VectorRoutes;
use crate::device::VirtioDevice;
use crate::transport_core::{
    QueueField, VirtioCore, device_features_word, driver_features_word, write_driver_features,
    write_queue,
};

/// The width of the field at `offset`, if a field starts there.
fn field_width(offset: u64) -> Option<usize> {
    Some(match offset {
        DEVICE_FEATURE_SELECT | DEVICE_FEATURE | DRIVER_FEATURE_SELECT | DRIVER_FEATURE => 4,
        CONFIG_MSIX_VECTOR | NUM_QUEUES | QUEUE_SELECT | QUEUE_SIZE | QUEUE_MSIX_VECTOR
        | QUEUE_ENABLE | QUEUE_NOTIFY_OFF => 2,
        DEVICE_STATUS | CONFIG_GENERATION => 1,
        QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => 8,
        // The upper halves of the queue addresses.
        0x24 | 0x2c | 0x34 => 4,
        _ => return None,
    })
}

/// Whether a `width`-byte access at `offset` is one the structure allows.
fn access_ok(offset: u64, width: usize) -> bool {
    match field_width(offset) {
        Some(8) => matches!(width, 4 | 8),
        Some(w) => w == width,
        None => false,
    }
}

/// The queue address registers at `offset` as (low, high) fields.
fn address_fields(offset: u64) -> Option<(QueueField, QueueField, bool)> {
    let high = offset % 8 == 4;
    Some(match offset - offset % 8 {
        QUEUE_DESC => (QueueField::DescLow, QueueField::DescHigh, high),
        QUEUE_DRIVER => (QueueField::AvailLow, QueueField::AvailHigh, high),
        QUEUE_DEVICE => (QueueField::UsedLow, QueueField::UsedHigh, high),
        _ => return None,
    })
}

/// A driver read of `data.len()` bytes at `offset`; `false` if refused.
pub(crate) fn read<D: VirtioDevice>(
    core: &VirtioCore<D>,
    vectors: &VectorRoutes,
    offset: u64,
    data: &mut [u8],
) -> bool {
    if !access_ok(offset, data.len()) {
        return false;
    }
    let state = core.lock();
    let queue = state.selected_queue();
    let selected = state.queue_sel as usize;
    let value: u64 = match offset {
        DEVICE_FEATURE_SELECT => u64::from(state.device_features_sel),
        DEVICE_FEATURE => u64::from(device_features_word(&state)),
        DRIVER_FEATURE_SELECT => u64::from(state.driver_features_sel),
        DRIVER_FEATURE => u64::from(driver_features_word(&state)),
        CONFIG_MSIX_VECTOR => u64::from(vectors.config_vector()),
        NUM_QUEUES => state.queues.len() as u64,
        // NEEDS_RESET and FAILED are bits 6 and 7: the byte holds them all.
        DEVICE_STATUS => u64::from(state.status as u8),
        CONFIG_GENERATION => u64::from(state.config_generation as u8),
        QUEUE_SELECT => u64::from(state.queue_sel),
        // 0 tells the driver the queue is not available.
        QUEUE_SIZE => queue.map_or(0, |q| u64::from(q.size())),
        QUEUE_MSIX_VECTOR => match queue {
            Some(_) => u64::from(vectors.queue_vector(selected)),
            None => u64::from(NO_VECTOR),
        },
        QUEUE_ENABLE => queue.map_or(0, |q| u64::from(q.ready())),
        QUEUE_NOTIFY_OFF => queue.map_or(0, |_| selected as u64),
        _ => {
            let Some((low, _, high)) = address_fields(offset) else {
                return false;
            };
            let address = queue.map_or(0, |q| match low {
                QueueField::DescLow => q.desc_table(),
                QueueField::AvailLow => q.avail_ring(),
                _ => q.used_ring(),
            });
            if high { address >> 32 } else { address }
        }
    };
    let bytes = value.to_le_bytes();
    data.copy_from_slice(&bytes[..data.len()]);
    true
}

/// A driver write of `data` at `offset`; `false` if refused.
pub(crate) fn write<D: VirtioDevice>(
    core: &VirtioCore<D>,
    vectors: &VectorRoutes,
    offset: u64,
    data: &[u8],
) -> bool {
    if !access_ok(offset, data.len()) {
        return false;
    }
    let mut bytes = [0u8; 8];
    bytes[..data.len()].copy_from_slice(data);
    let value = u64::from_le_bytes(bytes);
    let mut state = core.lock();
    match offset {
        DEVICE_FEATURE_SELECT => state.device_features_sel = value as u32,
        DRIVER_FEATURE_SELECT => state.driver_features_sel = value as u32,
        DRIVER_FEATURE => return write_driver_features(&mut state, value as u32),
        CONFIG_MSIX_VECTOR => vectors.set_config_vector(value as u16),
        DEVICE_STATUS => core.write_status(&mut state, value as u32),
        QUEUE_SELECT => state.queue_sel = value as u32,
        QUEUE_SIZE => return write_queue(&mut state, QueueField::Size, value as u32),
        QUEUE_MSIX_VECTOR => {
            let selected = state.queue_sel as usize;
            return vectors.set_queue_vector(selected, value as u16);
        }
        QUEUE_ENABLE => return write_queue(&mut state, QueueField::Ready, value as u32),
        DEVICE_FEATURE | NUM_QUEUES | CONFIG_GENERATION | QUEUE_NOTIFY_OFF => return false,
        _ => {
            let Some((low, high_field, high)) = address_fields(offset) else {
                return false;
            };
            if data.len() == 8 {
                return write_queue(&mut state, low, value as u32)
                    && write_queue(&mut state, high_field, (value >> 32) as u32);
            }
            let field = if high { high_field } else { low };
            return write_queue(&mut state, field, value as u32);
        }
    }
    true
}
