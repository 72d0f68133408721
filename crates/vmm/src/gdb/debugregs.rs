//! The four x86 debug-register slots as gdb fills them: hardware
//! breakpoints and watchpoints, turned into DR0-DR3 and DR7 for
//! [`sie_hv::Vcpu::set_guest_debug`], and a DR6 from a debug exit turned
//! back into the slot that fired.

use sie_hv::x86::GuestDebug;

/// What a slot watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// Instruction fetch at the address (a hardware breakpoint).
    Execute,
    /// Writes to the range.
    Write,
    /// Reads or writes to the range (x86 has no read-only watchpoint).
    Access,
}

/// One armed slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Guest-virtual address.
    pub addr: u64,
    /// Bytes watched: 1, 2, 4 or 8 (1 for a breakpoint).
    pub len: u64,
    /// What it watches.
    pub kind: SlotKind,
}

/// DR7 bits 8 and 9 (LE, GE): exact data breakpoints, as the manuals advise.
const DR7_EXACT: u64 = 0b11 << 8;

/// The four slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugSlots([Option<Slot>; 4]);

impl DebugSlots {
    /// Arms a free slot; false when all four are taken or the range is not
    /// one the hardware can watch (a length of 1, 2, 4 or 8, aligned).
    pub fn add(&mut self, slot: Slot) -> bool {
        let len_ok = matches!(slot.len, 1 | 2 | 4 | 8) && slot.addr.is_multiple_of(slot.len);
        if !len_ok || (slot.kind == SlotKind::Execute && slot.len != 1) {
            return false;
        }
        match self.0.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Frees the slot armed with exactly `slot`; false when none is.
    pub fn remove(&mut self, slot: Slot) -> bool {
        match self.0.iter_mut().find(|s| **s == Some(slot)) {
            Some(found) => {
                *found = None;
                true
            }
            None => false,
        }
    }

    /// The slot at `index`, if armed.
    pub fn get(&self, index: usize) -> Option<Slot> {
        self.0.get(index).copied().flatten()
    }

    /// The slot a debug exit's DR6 names (bits 0-3), if any.
    pub fn fired(&self, dr6: u64) -> Option<Slot> {
        (0..4)
            .find(|i| dr6 & (1 << i) != 0)
            .and_then(|i| self.get(i))
    }

    /// DR0-DR3 and DR7 for these slots (the rest of `GuestDebug` unset).
    pub fn guest_debug(&self) -> GuestDebug {
        let mut debug = GuestDebug::default();
        for (i, slot) in self.0.iter().enumerate() {
            let Some(slot) = slot else { continue };
            debug.addresses[i] = slot.addr;
            let rw: u64 = match slot.kind {
                SlotKind::Execute => 0b00,
                SlotKind::Write => 0b01,
                SlotKind::Access => 0b11,
            };
            let len: u64 = match slot.len {
                2 => 0b01,
                8 => 0b10,
                4 => 0b11,
                _ => 0b00,
            };
            // L<i> enables the slot; RW and LEN sit at bits 16 + 4i.
            debug.dr7 |= (1 << (2 * i)) | (rw << (16 + 4 * i)) | (len << (18 + 4 * i));
        }
        if debug.dr7 != 0 {
            debug.dr7 |= DR7_EXACT;
        }
        debug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_become_dr7_bits() {
        let mut slots = DebugSlots::default();
        assert!(slots.add(Slot {
            addr: 0x1000,
            len: 1,
            kind: SlotKind::Execute
        }));
        assert!(slots.add(Slot {
            addr: 0x2000,
            len: 4,
            kind: SlotKind::Write
        }));
        let debug = slots.guest_debug();
        assert_eq!(debug.addresses, [0x1000, 0x2000, 0, 0]);
        // Slot 0: L0, RW0=00, LEN0=00; slot 1: L1, RW1=01, LEN1=11.
        assert_eq!(
            debug.dr7,
            0b1 | 0b100 | (0b01 << 20) | (0b11 << 22) | DR7_EXACT
        );
        assert_eq!(slots.fired(0b10).map(|s| s.addr), Some(0x2000));
        assert!(slots.remove(Slot {
            addr: 0x1000,
            len: 1,
            kind: SlotKind::Execute
        }));
        assert_eq!(slots.fired(0b1), None);
    }

    #[test]
    fn an_access_watch_in_the_last_slot_and_dr6_from_a_debug_exit() {
        let mut slots = DebugSlots::default();
        for addr in [0x1000, 0x1008, 0x1010] {
            assert!(slots.add(Slot {
                addr,
                len: 1,
                kind: SlotKind::Execute
            }));
        }
        let watch = Slot {
            addr: 0xffff_ffff_82a0_79c0,
            len: 8,
            kind: SlotKind::Access,
        };
        assert!(slots.add(watch));
        let debug = slots.guest_debug();
        assert_eq!(debug.addresses[3], watch.addr);
        // Slot 3: L3 (bit 6), RW3=11 (bits 28-29), LEN3=10 (bits 30-31).
        assert_eq!(debug.dr7 & (0b1 << 6), 0b1 << 6);
        assert_eq!((debug.dr7 >> 28) & 0b11, 0b11);
        assert_eq!((debug.dr7 >> 30) & 0b11, 0b10);
        // A DR6 as KVM reports it (reserved bits set, B3 for slot 3).
        assert_eq!(slots.fired(0xffff_0ff0 | 0b1000), Some(watch));
        // A single step (BS, bit 14) names no slot.
        assert_eq!(slots.fired(0xffff_0ff0 | (1 << 14)), None);
        // A slot that fired but was freed since names nothing.
        assert!(slots.remove(watch));
        assert_eq!(slots.fired(0b1000), None);
    }

    #[test]
    fn a_fifth_slot_or_a_misaligned_range_is_refused() {
        let mut slots = DebugSlots::default();
        for i in 0..4 {
            assert!(slots.add(Slot {
                addr: 0x1000 + i * 8,
                len: 8,
                kind: SlotKind::Access
            }));
        }
        assert!(!slots.add(Slot {
            addr: 0x5000,
            len: 1,
            kind: SlotKind::Execute
        }));
        let mut slots = DebugSlots::default();
        assert!(!slots.add(Slot {
            addr: 0x1002,
            len: 4,
            kind: SlotKind::Write
        }));
        assert_eq!(slots.guest_debug().dr7, 0);
    }
}
