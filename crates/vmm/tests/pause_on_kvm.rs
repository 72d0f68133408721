//! Pause is a fact on the real /dev/kvm: a paused tiny guest makes no
//! progress, its registers are read and written on the vCPU's thread, and
//! it resumes exactly from what was written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_hv::kvm::Kvm;
use sie_vmm::{BuildOptions, ConsoleOutput, VmControl, VmOutcome};

const TIMEOUT: Duration = Duration::from_secs(10);

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
    let built = sie_vmm::build(
        &config,
        &kvm,
        BuildOptions {
            start: Instant::now(),
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: Vec::new(),
            host_decompress: None,
        },
        control.clone(),
    )
    .unwrap();
    let mut vm = built.start(&sie_seccomp::Seccomp::disabled()).unwrap();
    std::thread::sleep(Duration::from_millis(50));

    vm.vcpus.pause(TIMEOUT).unwrap();
    let first = vm.vcpus.with_vcpu(0, |vcpu| vcpu.regs().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let second = vm.vcpus.with_vcpu(0, |vcpu| vcpu.regs().unwrap()).unwrap();
    assert_eq!(first, second, "a paused vCPU's registers do not change");
    assert!(
        first.rcx > 1_000 && first.rcx < 1_000_000_000_000,
        "the loop ran: rcx = {}",
        first.rcx
    );

    // One iteration left: once resumed, the guest resets at once.
    vm.vcpus
        .with_vcpu(0, |vcpu| {
            let mut regs = vcpu.regs().unwrap();
            regs.rcx = 1;
            vcpu.set_regs(&regs).unwrap();
        })
        .unwrap();
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
