//! The PCI hotplug controller: a 16-byte register block through which the
//! guest's ACPI code (the Generic Event Device's `_EVT` and each slot's
//! `_EJ0`, see `sie_arch::acpi`) learns which slots of the root bus gained
//! a device or are asked to give one up, and says which ones it let go.
//!
//! Registers, 32-bit, one bit per slot (bit N = slot N; slot 0, the host
//! bridge, never):
//!
//! | offset | name   | access | meaning                                          |
//! |--------|--------|--------|--------------------------------------------------|
//! | 0x0    | UP     | read, clears | slots with a new device (ACPI Notify 1, device check) |
//! | 0x4    | DOWN   | read, clears | slots asked to eject (ACPI Notify 3, eject request)   |
//! | 0x8    | EJECT  | write  | slots the guest released (`_EJ0`)                  |
//! | 0xC    | PENDING| read   | slots asked to eject and not yet released          |
//!
//! Reads clear UP and DOWN so each event is delivered once: `_EVT` reads
//! each register exactly once. Only aligned 4-byte accesses do anything;
//! the rest read as zeros and are ignored (counted), as are EJECT bits for
//! slots nobody asked to eject, so a guest cannot make the VMM remove a
//! device on its own.
//!
//! The VMM announces changes with [`HotplugController::announce_added`] and
//! [`HotplugController::request_removal`] (each raises the event device's
//! interrupt), and waits for the guest with
//! [`HotplugController::wait_released`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sie_devices::{BusDevice, Interrupt};

/// Conventional I/O port of the register block (the one QEMU's PC machine
/// uses for its PCI hotplug registers; free on sie's port bus).
pub const HOTPLUG_PORT: u16 = 0xae00;
/// Bytes of the register block.
pub const HOTPLUG_REGISTERS_LEN: u64 = 16;

/// Register offsets.
pub mod hotplug_registers {
    /// Slots with a new device; reading clears.
    pub const UP: u64 = 0x0;
    /// Slots asked to eject; reading clears.
    pub const DOWN: u64 = 0x4;
    /// Write: slots the guest released.
    pub const EJECT: u64 = 0x8;
    /// Slots asked to eject and not yet released.
    pub const PENDING: u64 = 0xc;
}

/// Errors of the VMM's side of the controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    /// Slot 0 (the host bridge) or a slot past 31.
    #[error("PCI slot {0} cannot be hotplugged (slots 1 to 31 can)")]
    BadSlot(u8),
    /// The guest did not run `_EJ0` for the slot in time.
    #[error(
        "the guest did not release PCI slot {slot} within {waited:?}; the eject request stays pending"
    )]
    NotReleased {
        /// The slot.
        slot: u8,
        /// How long the VMM waited.
        waited: Duration,
    },
    /// The event device's interrupt could not be raised.
    #[error("cannot raise the hotplug event interrupt: {0}")]
    Interrupt(String),
}

#[derive(Default)]
struct State {
    /// Device-check events not yet read by the guest.
    up: u32,
    /// Eject requests not yet read by the guest.
    down: u32,
    /// Slots asked to eject, not yet released.
    pending: u32,
    /// Slots released by the guest, not yet collected by the VMM.
    released: u32,
}

/// The register block and the VMM's handle on it.
pub struct HotplugController {
    state: Mutex<State>,
    released: Condvar,
    interrupt: Arc<dyn Interrupt>,
    ignored: AtomicU64,
}

fn bit(slot: u8) -> Result<u32, HotplugError> {
    if (1..32).contains(&slot) {
        Ok(1 << slot)
    } else {
        Err(HotplugError::BadSlot(slot))
    }
}

/// Bits of slots that may be hotplugged: every one but the host bridge's.
const SLOT_MASK: u32 = !1;

impl HotplugController {
    /// A controller whose events raise `interrupt` (the event device's line).
    pub fn new(interrupt: Arc<dyn Interrupt>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            released: Condvar::new(),
            interrupt,
            ignored: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise(&self) -> Result<(), HotplugError> {
        self.interrupt
            .trigger()
            .map_err(|e| HotplugError::Interrupt(e.to_string()))
    }

    /// Tells the guest `slot` has a new device (already on the root bus).
    pub fn announce_added(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = bit(slot)?;
        {
            let mut state = self.lock();
            state.up |= bit;
            // A device put back into a slot is a new one.
            state.released &= !bit;
        }
        self.raise()
    }

    /// Asks the guest to let go of the device in `slot`.
    pub fn request_removal(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = bit(slot)?;
        {
            let mut state = self.lock();
            state.down |= bit;
            state.pending |= bit;
        }
        self.raise()
    }

    /// Waits up to `timeout` for the guest to release `slot` (its `_EJ0`);
    /// consumes the release. The request stays pending on a timeout, so a
    /// later wait can still see it.
    pub fn wait_released(&self, slot: u8, timeout: Duration) -> Result<(), HotplugError> {
        let bit = bit(slot)?;
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.released & bit != 0 {
                state.released &= !bit;
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HotplugError::NotReleased {
                    slot,
                    waited: timeout,
                });
            }
            state = self
                .released
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether `slot` was asked to eject and has not been released yet.
    pub fn removal_pending(&self, slot: u8) -> bool {
        bit(slot).is_ok_and(|bit| self.lock().pending & bit != 0)
    }

    /// Guest accesses that did nothing (bad offset or size, reads of
    /// EJECT, writes elsewhere, EJECT bits for slots not asked to eject).
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    fn ignore(&self) {
        self.ignored.fetch_add(1, Ordering::Relaxed);
    }
}

impl BusDevice for HotplugController {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.ignore();
            return;
        }
        let value = {
            let mut state = self.lock();
            match offset {
                hotplug_registers::UP => std::mem::take(&mut state.up),
                hotplug_registers::DOWN => std::mem::take(&mut state.down),
                hotplug_registers::PENDING => state.pending,
                _ => {
                    drop(state);
                    self.ignore();
                    return;
                }
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.ignore();
            return;
        };
        if offset != hotplug_registers::EJECT {
            self.ignore();
            return;
        }
        let value = u32::from_le_bytes(bytes) & SLOT_MASK;
        let mut state = self.lock();
        let accepted = value & state.pending;
        state.pending &= !accepted;
        state.released |= accepted;
        let stray = value & !accepted;
        drop(state);
        if accepted != 0 {
            self.released.notify_all();
        }
        if stray != 0 || value == 0 {
            self.ignore();
            tracing::debug!(
                slots = format_args!("{stray:#x}"),
                "eject for PCI slots not asked to eject, ignored"
            );
        }
    }
}

#[cfg(test)]
#[path = "hotplug_tests.rs"]
mod tests;
