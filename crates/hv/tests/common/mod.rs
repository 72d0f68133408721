//! Shared set-up for the tests against the real `/dev/kvm`: a VM with
//! 2 MiB of RAM at 0, the in-kernel platform, and one vCPU in real mode
//! about to run hand-assembled code at 0x1000.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sie_hv::GuestMemory;
use sie_hv::kvm::Kvm;
use sie_hv::{Hypervisor, Vcpu, Vm};
use vm_memory::{Bytes, GuestAddress};

/// Where the test code is loaded and starts.
pub const CODE: u64 = 0x1000;
/// RAM size.
pub const RAM: usize = 2 << 20;
/// Base of the FS segment the guests use to reach MMIO outside RAM.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Addresses for the platform (above RAM, below the MMIO window).
pub const TSS: u64 = 0xfffb_d000;
pub const IDENTITY_MAP: u64 = 0xfffb_c000;

pub struct Guest {
    pub kvm: Kvm,
    pub vm: Arc<dyn Vm>,
    pub memory: GuestMemory,
    pub vcpu: Box<dyn Vcpu>,
}

/// Builds the VM and points vCPU 0 at `code` in 16-bit real mode with
/// CS base 0, FS base [`MMIO_BASE`] and interrupts off.
pub fn real_mode_guest(code: &[u8]) -> Guest {
    let kvm = Kvm::open().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    let memory = GuestMemory::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM");
    memory
        .write_slice(code, GuestAddress(CODE))
        .expect("load code");
    vm.map_memory(&memory).expect("map memory");
    vm.create_platform(TSS, IDENTITY_MAP).expect("platform");
    let vcpu = vm.create_vcpu(0).expect("vCPU");
    let mut sregs = vcpu.sregs().expect("sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.fs.base = MMIO_BASE;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.regs().expect("regs");
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");
    Guest {
        kvm,
        vm,
        memory,
        vcpu,
    }
}

/// Aborts the whole test process if it is still alive after `limit`, so a
/// broken kick can never hang the test run. Disarmed on drop.
pub struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    pub fn arm(what: &'static str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !seen.load(Ordering::SeqCst) {
                if start.elapsed() > limit {
                    eprintln!("watchdog: {what} did not finish within {limit:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
