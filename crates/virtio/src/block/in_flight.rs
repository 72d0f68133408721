//! The requests a drive's engine is running, each in a slot whose index is
//! the token the engine reports back.

use vm_memory::GuestAddress;

use super::op::OpKind;

/// A request the engine is running: where its answer goes.
pub struct Pending {
    pub head: u16,
    pub status_at: GuestAddress,
    pub kind: OpKind,
    pub len: u32,
    /// The driver reset the device since: the answer goes nowhere.
    pub orphaned: bool,
}

/// The requests in flight, by token (a slot index, so a guest that offers
/// the same head twice cannot confuse two requests).
pub struct InFlight {
    slots: Vec<Option<Pending>>,
    free: Vec<u16>,
}

impl InFlight {
    pub fn new(depth: u16) -> Self {
        Self {
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn insert(&mut self, pending: Pending) -> Option<u16> {
        let token = self.free.pop()?;
        let slot = self.slots.get_mut(usize::from(token))?;
        *slot = Some(pending);
        Some(token)
    }

    pub fn take(&mut self, token: u16) -> Option<Pending> {
        let pending = self.slots.get_mut(usize::from(token))?.take()?;
        self.free.push(token);
        Some(pending)
    }

    /// After a reset: the requests still run (their buffers stay mapped)
    /// and keep their slots until they finish, but answer nobody.
    pub fn orphan_all(&mut self) {
        for pending in self.slots.iter_mut().flatten() {
            pending.orphaned = true;
        }
    }

    /// Slots taken (orphans included).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(head: u16) -> Pending {
        Pending {
            head,
            status_at: GuestAddress(0),
            kind: OpKind::Read,
            len: 512,
            orphaned: false,
        }
    }

    #[test]
    fn slots_fill_free_and_survive_a_reset_as_orphans() {
        let mut slots = InFlight::new(2);
        // The same head twice (a hostile driver) gets two slots.
        let a = slots.insert(pending(7)).unwrap();
        let b = slots.insert(pending(7)).unwrap();
        assert_ne!(a, b);
        assert!(slots.is_full());
        assert!(slots.insert(pending(1)).is_none());
        assert_eq!(slots.take(a).map(|p| p.head), Some(7));
        assert!(slots.take(a).is_none(), "a token answers once");
        assert_eq!(slots.len(), 1);
        slots.orphan_all();
        let c = slots.insert(pending(2)).unwrap();
        assert!(slots.take(b).unwrap().orphaned);
        assert!(!slots.take(c).unwrap().orphaned);
        assert_eq!(slots.len(), 0);
        assert!(slots.take(u16::MAX).is_none());
    }
}
