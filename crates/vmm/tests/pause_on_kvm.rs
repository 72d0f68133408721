//! Pause is a fact on the real /dev/kvm: a paused tiny guest makes no
//! progress, its registers are read and written on the vCPU's thread, and
//! it resumes exactly from what was written; a snapshot of it restores into
//! a VM whose registers and RAM are bit for bit the paused one's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_hv::GuestMemory;
use sie_hv::kvm::Kvm;
use sie_vmm::{BuildOptions, VmControl, VmOutcome};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Build options for a guest whose console nobody reads.
fn quiet_options() -> BuildOptions {
    BuildOptions::quiet()
}

/// Every byte of guest RAM, regions in address order, each at its offset
/// from 0 (the loop guest's RAM is one region from 0).
fn ram_bytes(memory: &GuestMemory) -> Vec<u8> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut bytes = Vec::new();
    for region in memory.iter() {
        let start = usize::try_from(region.start_addr().0).expect("region address");
        let len = usize::try_from(region.len()).expect("region length");
        bytes.resize(start + len, 0);
        vm_memory::Bytes::read_slice(memory, &mut bytes[start..], region.start_addr())
            .expect("guest RAM read");
    }
    bytes
}

/// Sets the paused loop guest's counter (rcx): the iterations it has left.
fn set_loop_counter(vm: &mut sie_vmm::StartedVm, left: u64) {
    vm.vcpus
        .with_vcpu(0, move |vcpu| {
            let mut regs = vcpu.regs().expect("registers");
            regs.rcx = left;
            vcpu.set_regs(&regs).expect("registers written");
        })
        .expect("register access");
}

/// Pauses the loop guest once it is inside its loop (a busy host may take a
/// while to give the vCPU thread its first slice) and returns its registers.
fn pause_inside_the_loop(vm: &mut sie_vmm::StartedVm) -> sie_hv::x86::Regs {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        vm.vcpus.pause(TIMEOUT).expect("pause");
        let regs = vm
            .vcpus
            .with_vcpu(0, |vcpu| vcpu.regs().expect("registers"))
            .expect("register access");
        if regs.rcx > 1_000 || Instant::now() > deadline {
            return regs;
        }
        vm.vcpus.resume(TIMEOUT).expect("resume");
    }
}

#[test]
fn a_paused_loop_stands_still_and_resumes_from_the_registers_written() {
    // The loop guest counts rcx down to zero (two instructions an
    // iteration, no exits), then resets: 10^12 iterations never end alone.
    let mut config = VmConfig::new(BootSource {
        kernel_image_path: sie_guests::LOOP.path.into(),
        boot_args: Some("iterations=1000000000000".to_string()),
        initrd_path: None,
    });
    config.machine_config = Some(MachineConfig {
        mem_size_mib: 32,
        ..MachineConfig::default()
    });
    let kvm = Kvm::open().expect("/dev/kvm");
    let control = Arc::new(VmControl::new().unwrap());
    let built = sie_vmm::build(&config, &kvm, quiet_options(), control.clone()).unwrap();
    let mut vm = built.start(&sie_seccomp::Seccomp::disabled()).unwrap();
    let first = pause_inside_the_loop(&mut vm);
    std::thread::sleep(Duration::from_millis(30));
    let second = vm.vcpus.with_vcpu(0, |vcpu| vcpu.regs().unwrap()).unwrap();
    assert_eq!(first, second, "a paused vCPU's registers do not change");
    assert!(
        first.rcx > 1_000 && first.rcx < 1_000_000_000_000,
        "the loop ran: rcx = {}",
        first.rcx
    );

    // One iteration left: once resumed, the guest resets at once.
    set_loop_counter(&mut vm, 1);
    assert!(!control.is_stopping());
    vm.vcpus.resume(TIMEOUT).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !control.is_stopping() {
        assert!(Instant::now() < deadline, "the guest did not reset");
        std::thread::sleep(Duration::from_millis(1));
    }
    let finished = vm.join();
    assert_eq!(finished.outcome, VmOutcome::Reset);
}

fn loop_config() -> VmConfig {
    let mut config = VmConfig::new(BootSource {
        kernel_image_path: sie_guests::LOOP.path.into(),
        boot_args: Some("iterations=1000000000000".to_string()),
        initrd_path: None,
    });
    config.machine_config = Some(MachineConfig {
        mem_size_mib: 32,
        ..MachineConfig::default()
    });
    config
}

fn quiet_build(kvm: &Kvm, control: &Arc<VmControl>) -> sie_vmm::BuiltVm {
    let built = sie_vmm::build(&loop_config(), kvm, quiet_options(), control.clone());
    built.expect("the loop guest builds")
}

#[test]
fn a_paused_vcpu_and_vm_state_moves_to_a_new_vm_which_continues() {
    use sie_hv::Hypervisor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    let kvm = Kvm::open().expect("/dev/kvm");
    let msrs = kvm.supported_msrs().unwrap();
    let first_control = Arc::new(VmControl::new().unwrap());
    let mut first = quiet_build(&kvm, &first_control)
        .start(&sie_seccomp::Seccomp::disabled())
        .unwrap();
    pause_inside_the_loop(&mut first);
    // A few thousand iterations left, so the continuation ends by itself.
    set_loop_counter(&mut first, 5_000);
    let saved = first
        .vcpus
        .with_vcpu(0, move |vcpu| vcpu.save_state(&msrs))
        .unwrap()
        .unwrap();
    let vm_state = first.hv_vm().save_state().unwrap();
    assert!(saved.rip() != 0);

    let second_control = Arc::new(VmControl::new().unwrap());
    let second = quiet_build(&kvm, &second_control);
    // Guest RAM, byte for byte.
    let size = first.memory().last_addr().0 + 1;
    let mut ram = vec![0u8; usize::try_from(size).unwrap()];
    first
        .memory()
        .read_slice(&mut ram, GuestAddress(0))
        .unwrap();
    second.memory.write_slice(&ram, GuestAddress(0)).unwrap();
    second.vm.restore_state(&vm_state).unwrap();
    second.vcpus[0].restore_state(&saved).unwrap();
    let restored = second.vcpus[0].regs().unwrap();
    assert_eq!((restored.rip, restored.rcx), (saved.rip(), 5_000));

    let second = second.start(&sie_seccomp::Seccomp::disabled()).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !second_control.is_stopping() {
        assert!(
            Instant::now() < deadline,
            "the restored guest did not finish its loop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(second.vcpus.len(), 1);
    assert_eq!(second.join().outcome, VmOutcome::Reset);
    assert!(!first_control.is_stopping(), "the original stays paused");
    first_control.finish(VmOutcome::Shutdown);
    first.join();
}

#[test]
fn a_snapshot_on_disk_restores_into_a_new_vm_that_continues() {
    use sie_hv::Hypervisor;

    let dir = std::env::temp_dir().join(format!("sie-snap-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let kvm = Kvm::open().expect("/dev/kvm");
    let control = Arc::new(VmControl::new().unwrap());
    let mut first = quiet_build(&kvm, &control)
        .start(&sie_seccomp::Seccomp::disabled())
        .unwrap();
    assert!(matches!(
        sie_vmm::snapshot::create(&mut first, &loop_config(), vec![], &snap, &mem),
        Err(sie_vmm::snapshot::SnapshotError::NotPaused)
    ));
    pause_inside_the_loop(&mut first);
    set_loop_counter(&mut first, 5_000);
    let created = sie_vmm::snapshot::create(
        &mut first,
        &loop_config(),
        kvm.supported_msrs().unwrap(),
        &snap,
        &mem,
    )
    .unwrap();
    assert!(created.memory_bytes > 0 && created.memory_bytes < 32 << 20);
    let generation = |memory: &GuestMemory| {
        let mut id = [0u8; 16];
        vm_memory::Bytes::read_slice(
            memory,
            &mut id,
            vm_memory::GuestAddress(sie_arch::layout::VMGENID_ADDR),
        )
        .unwrap();
        id
    };
    let original_id = generation(first.memory());
    assert_ne!(original_id, [0; 16], "a booted VM has a generation id");
    let (regs, sregs, fpu) = first
        .vcpus
        .with_vcpu(0, |vcpu| {
            (
                vcpu.regs().expect("registers"),
                vcpu.sregs().expect("special registers"),
                vcpu.fpu().expect("FPU"),
            )
        })
        .expect("register access");
    let ram = ram_bytes(first.memory());
    control.finish(VmOutcome::Shutdown);
    first.join();

    let snapshot = sie_vmm::snapshot::read(&snap).unwrap();
    let second_control = Arc::new(VmControl::new().unwrap());
    let restored = sie_vmm::snapshot::restore(
        &snapshot,
        &sie_vmm::snapshot::RestoreMemory::file(&mem),
        None,
        false,
        &kvm,
        quiet_options(),
        second_control.clone(),
    )
    .unwrap();
    assert_eq!(restored.vcpus[0].regs().unwrap().rcx, 5_000);
    assert_ne!(
        generation(&restored.memory),
        original_id,
        "a restored VM is a clone with a new generation id"
    );
    // Bit for bit what the paused VM was: registers, and every byte of RAM
    // but the 16 of the generation id.
    assert_eq!(restored.vcpus[0].regs().unwrap(), regs);
    assert_eq!(restored.vcpus[0].sregs().unwrap(), sregs);
    assert_eq!(restored.vcpus[0].fpu().unwrap(), fpu);
    let mut restored_ram = ram_bytes(&restored.memory);
    let mut original_ram = ram;
    let id_at = usize::try_from(sie_arch::layout::VMGENID_ADDR).unwrap();
    for bytes in [&mut restored_ram, &mut original_ram] {
        bytes[id_at..id_at + 16].fill(0);
    }
    assert_eq!(restored_ram.len(), original_ram.len());
    let first_difference = restored_ram
        .iter()
        .zip(&original_ram)
        .position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "guest RAM differs at this byte");
    let second = restored.start(&sie_seccomp::Seccomp::disabled()).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !second_control.is_stopping() {
        assert!(
            Instant::now() < deadline,
            "the restored guest did not finish"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(second.join().outcome, VmOutcome::Reset);
    std::fs::remove_dir_all(&dir).unwrap();
}
