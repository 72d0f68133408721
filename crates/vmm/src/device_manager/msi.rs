//! [`MsiVectors`]: the VMM's side of one PCI device's MSI-X vectors. Each
//! vector has its own GSI (from the device manager's MSI range, 24 and up)
//! with an irqfd registered on it; when the guest programs or masks a
//! vector the GSI's KVM route is set or removed, so a write to the irqfd
//! (from a device worker or a passed-through device) interrupts the guest
//! with the message the guest chose, without an exit. The irqfds live as
//! long as the VM (KVM releases them with it).
//!
//! A passed-through device signals the irqfds itself and cannot be told a
//! vector is masked, so its vectors ([`MsiVectors::detached_while_unrouted`])
//! take their irqfd off KVM while they have no route: a signal then waits
//! in the eventfd, where the MSI-X table collects it into the PBA (or KVM
//! injects it when the irqfd is put back, after the route).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use sie_hv::{MsiMessage, Vm};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{Result, VmmError};

/// One device's vectors: GSIs `first_gsi..first_gsi + count`.
pub struct MsiVectors {
    vm: Arc<dyn Vm>,
    first_gsi: u32,
    irqfds: Vec<EventFd>,
    /// The message each vector is routed to now (`None`: no route), so a
    /// repeated configuration does not rewrite KVM's table.
    routes: Mutex<Vec<Option<MsiMessage>>>,
    /// Whether an unrouted vector's irqfd is taken off KVM (`attached`
    /// then says which are on it).
    detach_unrouted: bool,
    /// Which irqfds are registered with KVM now.
    attached: Mutex<Vec<bool>>,
}

impl std::fmt::Debug for MsiVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiVectors")
            .field("first_gsi", &self.first_gsi)
            .field("count", &self.irqfds.len())
            .finish()
    }
}

impl MsiVectors {
    /// Creates `count` irqfds on GSIs from `first_gsi`, each registered
    /// with `vm` and unrouted until the guest programs its vector.
    pub fn new(vm: Arc<dyn Vm>, first_gsi: u32, count: u16) -> Result<Self> {
        Self::create(vm, first_gsi, count, false)
    }

    /// Vectors for a source that signals the irqfds itself (a VFIO device):
    /// each irqfd is registered with KVM only while its vector is routed,
    /// so a signal to a masked vector waits instead of being dropped.
    pub fn detached_while_unrouted(vm: Arc<dyn Vm>, first_gsi: u32, count: u16) -> Result<Self> {
        Self::create(vm, first_gsi, count, true)
    }

    fn create(vm: Arc<dyn Vm>, first_gsi: u32, count: u16, detach_unrouted: bool) -> Result<Self> {
        let mut irqfds = Vec::with_capacity(usize::from(count));
        for vector in 0..u32::from(count) {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::Host {
                what: "creating an MSI eventfd",
                source,
            })?;
            if !detach_unrouted {
                vm.register_irqfd(&fd, first_gsi + vector)?;
            }
            irqfds.push(fd);
        }
        Ok(Self {
            vm,
            first_gsi,
            routes: Mutex::new(vec![None; usize::from(count)]),
            detach_unrouted,
            attached: Mutex::new(vec![!detach_unrouted; usize::from(count)]),
            irqfds,
        })
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        (usize::from(vector) < self.irqfds.len()).then(|| self.first_gsi + u32::from(vector))
    }

    /// How many vectors there are.
    pub fn count(&self) -> u16 {
        // `new` took the count as a u16.
        u16::try_from(self.irqfds.len()).unwrap_or(u16::MAX)
    }

    /// Routes `vector` to `message`, or removes its route (`None`: the
    /// guest disabled or masked it).
    pub fn configure(&self, vector: u16, message: Option<MsiMessage>) -> io::Result<()> {
        let gsi = self.gsi(vector).ok_or_else(|| no_vector(vector))?;
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut routes[usize::from(vector)];
        if *slot == message {
            return Ok(());
        }
        let hv_error = |e: sie_hv::HvError| io::Error::other(crate::error::error_chain(&e));
        // Off KVM before the route goes, on KVM after it comes: a signal in
        // between waits in the eventfd instead of meeting no route.
        if message.is_none() {
            self.attach(vector, gsi, false).map_err(hv_error)?;
        }
        self.vm.set_msi_route(gsi, message).map_err(hv_error)?;
        *slot = message;
        if message.is_some() {
            self.attach(vector, gsi, true).map_err(hv_error)?;
        }
        Ok(())
    }

    /// Registers (`on`) or unregisters `vector`'s irqfd with KVM, for
    /// vectors detached while unrouted.
    fn attach(&self, vector: u16, gsi: u32, on: bool) -> sie_hv::Result<()> {
        if !self.detach_unrouted {
            return Ok(());
        }
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(state), Some(fd)) = (
            attached.get_mut(usize::from(vector)),
            self.irqfds.get(usize::from(vector)),
        ) else {
            return Ok(());
        };
        if *state == on {
            return Ok(());
        }
        if on {
            self.vm.register_irqfd(fd, gsi)?;
        } else {
            self.vm.unregister_irqfd(fd, gsi)?;
        }
        *state = on;
        Ok(())
    }

    /// Whether `vector`'s irqfd was signalled while off KVM, taking the
    /// signal (never for an irqfd KVM reads itself).
    pub fn take_unrouted_signal(&self, vector: u16) -> bool {
        let attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        if attached.get(usize::from(vector)).is_none_or(|on| *on) {
            return false;
        }
        self.notifier(vector)
            .is_some_and(|fd| fd.read().is_ok_and(|count| count > 0))
    }

    /// Raises `vector` once.
    pub fn trigger(&self, vector: u16) -> io::Result<()> {
        self.notifier(vector)
            .ok_or_else(|| no_vector(vector))?
            .write(1)
    }

    /// The irqfd of `vector`.
    pub fn notifier(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(usize::from(vector))
    }
}

/// The device side of the vectors: MSI-X tables (sie-pci) program, mask and
/// raise them through this.
impl sie_pci::MsiInterrupts for MsiVectors {
    fn vector_count(&self) -> u16 {
        self.count()
    }

    fn configure(&self, vector: u16, message: Option<sie_pci::MsiMessage>) -> io::Result<()> {
        MsiVectors::configure(
            self,
            vector,
            message.map(|m| MsiMessage {
                address: m.address,
                data: m.data,
            }),
        )
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        MsiVectors::trigger(self, vector)
    }

    fn notifier(&self, vector: u16) -> Option<&EventFd> {
        MsiVectors::notifier(self, vector)
    }

    fn take_unrouted_signal(&self, vector: u16) -> bool {
        MsiVectors::take_unrouted_signal(self, vector)
    }
}

fn no_vector(vector: u16) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("MSI vector {vector} does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_doubles::FakeVm;

    fn message(vector: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data: vector,
        }
    }

    #[test]
    fn each_vector_has_an_irqfd_on_its_own_gsi() {
        let vm = Arc::new(FakeVm::default());
        let vectors = MsiVectors::new(vm.clone(), 24, 3).unwrap();
        assert_eq!(*vm.irqfds.lock().unwrap(), [24, 25, 26]);
        assert_eq!((vectors.gsi(2), vectors.gsi(3)), (Some(26), None));
        vectors.trigger(1).unwrap();
        assert_eq!(vectors.notifier(1).unwrap().read().unwrap(), 1);
        assert!(vectors.trigger(3).is_err());
    }

    #[test]
    fn detached_vectors_are_on_kvm_only_while_routed_and_keep_masked_signals() {
        let vm = Arc::new(FakeVm::default());
        let vectors = MsiVectors::detached_while_unrouted(vm.clone(), 30, 2).unwrap();
        assert!(vm.irqfds.lock().unwrap().is_empty(), "unrouted: off KVM");
        vectors.configure(0, Some(message(0x30))).unwrap();
        assert_eq!(*vm.irqfds.lock().unwrap(), [30]);
        // Routed: KVM reads the irqfd, sie never takes its signals.
        vectors.notifier(0).unwrap().write(1).unwrap();
        assert!(!vectors.take_unrouted_signal(0));
        vectors.notifier(0).unwrap().read().unwrap();
        // Masked: off KVM, and what the device signals waits for the PBA.
        vectors.configure(0, None).unwrap();
        assert!(vm.irqfds.lock().unwrap().is_empty());
        assert!(vm.msi_routes.lock().unwrap().is_empty());
        assert!(!vectors.take_unrouted_signal(0), "nothing signalled yet");
        vectors.notifier(0).unwrap().write(1).unwrap();
        assert!(vectors.take_unrouted_signal(0));
        assert!(!vectors.take_unrouted_signal(0), "taken once");
        // Plain vectors stay on KVM whatever their route.
        let plain = MsiVectors::new(vm.clone(), 40, 1).unwrap();
        plain.configure(0, None).unwrap();
        plain.notifier(0).unwrap().write(1).unwrap();
        assert!(!plain.take_unrouted_signal(0));
    }

    /// The guest unmasks a vector (a table write) or reads the PBA on a
    /// vCPU thread: taking the device's waiting signal is allowed there.
    #[test]
    fn an_unrouted_signal_is_taken_under_the_vcpu_filter() {
        let vm = Arc::new(FakeVm::default());
        let vectors = MsiVectors::detached_while_unrouted(vm, 30, 1).unwrap();
        vectors.notifier(0).unwrap().write(1).unwrap();
        let filters = sie_seccomp::Seccomp::builtin();
        // SAFETY: the child only installs the filter (as the seccomp
        // crate's own tests do), reads the eventfd and ends in _exit, from
        // the SIGSYS handler (status 148) or below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let status = match filters.install(sie_seccomp::ThreadKind::Vcpu) {
                Ok(()) if vectors.take_unrouted_signal(0) => 0,
                Ok(()) => 1,
                Err(_) => 2,
            };
            // SAFETY: ending the child without running the parent's exit
            // handlers.
            unsafe { libc::_exit(status) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "148: the vCPU filter forbids reading the eventfd"
        );
    }

    #[test]
    fn programming_and_masking_a_vector_sets_and_removes_its_route() {
        let vm = Arc::new(FakeVm::default());
        let vectors = MsiVectors::new(vm.clone(), 40, 2).unwrap();
        vectors.configure(1, Some(message(0x41))).unwrap();
        assert_eq!(vm.msi_routes.lock().unwrap().get(&41), Some(&message(0x41)));
        vectors.configure(1, None).unwrap();
        assert!(vm.msi_routes.lock().unwrap().is_empty());
        assert!(vectors.configure(2, Some(message(0x42))).is_err());
    }
}
