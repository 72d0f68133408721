//! `sie doctor`: what this host offers for running VMs, two measurements
//! with a tiny guest, and a verdict.

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_hv::kvm::Kvm;
use sie_hv::probe::{Backend, HostReport, Probed, Verdict, probe_host};
use sie_vmm::BuildOptions;
use sie_vmm::process_memory::MemoryBreakdown;

use crate::bench::exits::measure_full;
use crate::embedded_guest::EmbeddedGuest;

type BoxError = Box<dyn std::error::Error>;

fn yes_no(value: &Probed<bool>) -> String {
    match value {
        Probed::Known(true) => "yes".to_string(),
        Probed::Known(false) => "no".to_string(),
        Probed::Unknown(why) => format!("unknown ({why})"),
    }
}

fn backend_name(backend: &Backend) -> String {
    match backend {
        Backend::KvmIntel => "kvm_intel (Intel VT-x)".to_string(),
        Backend::KvmAmd => "kvm_amd (AMD-V)".to_string(),
        Backend::KvmPvm => "kvm_pvm (software virtualization, no VT-x/AMD-V)".to_string(),
        Backend::Other(name) => format!("{name} (unknown to sie)"),
        Backend::None => "none loaded".to_string(),
    }
}

fn print_report(report: &HostReport) {
    println!("sie doctor");
    println!("host");
    match &report.device_access {
        Probed::Known(()) => println!("  {:<28} accessible", report.kvm_device.display()),
        Probed::Unknown(why) => println!(
            "  {:<28} NOT accessible: {why}",
            report.kvm_device.display()
        ),
    }
    match &report.api_version {
        Probed::Known(version) => println!("  {:<28} {version}", "KVM API version"),
        Probed::Unknown(why) => println!("  {:<28} unknown ({why})", "KVM API version"),
    }
    println!(
        "  {:<28} {}",
        "backend module",
        backend_name(&report.backend)
    );
    println!("  {:<28} {}", "CPU VT-x (vmx)", yes_no(&report.cpu_vmx));
    println!("  {:<28} {}", "CPU AMD-V (svm)", yes_no(&report.cpu_svm));
    println!("  {:<28} {}", "EPT (Intel)", yes_no(&report.ept));
    println!("  {:<28} {}", "NPT (AMD)", yes_no(&report.npt));
    println!("  {:<28} {}", "VPID", yes_no(&report.vpid));
    println!(
        "  {:<28} {}",
        "unrestricted guest",
        yes_no(&report.unrestricted_guest)
    );
    println!(
        "  {:<28} {}",
        "nested virtualization",
        yes_no(&report.nested)
    );
    println!("KVM capabilities (* = required by sie)");
    for cap in &report.capabilities {
        let state = match (cap.present, cap.value) {
            (true, Some(value)) => format!("yes ({value})"),
            (true, None) => "yes".to_string(),
            (false, _) if cap.required => "MISSING".to_string(),
            (false, _) => "no".to_string(),
        };
        let mark = if cap.required { "*" } else { " " };
        println!("  {mark} {:<26} {state}", cap.name);
    }
    println!("huge pages");
    match &report.hugepages {
        Probed::Known(pools) if pools.is_empty() => println!("  no hugetlb pools"),
        Probed::Known(pools) => {
            for pool in pools {
                let count = |p: &Probed<u64>| p.known().map_or("?".to_string(), u64::to_string);
                println!(
                    "  {:>8} KiB pages: {} total, {} free",
                    pool.size_kib,
                    count(&pool.total),
                    count(&pool.free)
                );
            }
        }
        Probed::Unknown(why) => println!("  unknown ({why})"),
    }
    match &report.transparent_hugepage {
        Probed::Known(mode) => println!("  transparent huge pages: {mode}"),
        Probed::Unknown(why) => println!("  transparent huge pages: unknown ({why})"),
    }
}

/// Guest instructions per second, from the `loop` guest's time inside KVM_RUN.
fn instruction_rate(kvm: &Kvm) -> Result<f64, BoxError> {
    let guest = EmbeddedGuest::new("sie-doctor-loop", sie_guests::LOOP.bytes)?;
    // Grow the loop until the guest runs long enough to be timed well.
    let mut iterations: u64 = 50_000;
    loop {
        let mut config = VmConfig::new(BootSource {
            kernel_image_path: guest.path(),
            boot_args: Some(format!("iterations={iterations}")),
            initrd_path: None,
        });
        config.machine_config = Some(MachineConfig {
            mem_size_mib: 32,
            ..MachineConfig::default()
        });
        let finished = sie_vmm::run(kvm, config, BuildOptions::quiet(), false)?;
        let guest_ns = finished.observatory.report().guest_ns_total();
        if guest_ns >= 100_000_000 || iterations >= 1 << 34 {
            let instructions = sie_guests::LOOP_INSTRUCTIONS_PER_ITERATION * iterations;
            return Ok(instructions as f64 / (guest_ns.max(1) as f64 / 1e9));
        }
        iterations *= 4;
    }
}

/// Runs `sie doctor`; exits 1 when sie cannot run VMs here.
pub fn doctor() -> Result<u8, BoxError> {
    let report = probe_host();
    print_report(&report);
    let verdict = report.verdict();
    println!("measurements (tiny guest)");
    if verdict == Verdict::NoVms {
        println!("  skipped: sie cannot run VMs here");
        for missing in report.missing_required() {
            println!("  missing required capability: {missing}");
        }
    } else {
        let kvm = crate::run::open_hypervisor()?;
        match instruction_rate(&kvm) {
            Ok(rate) => println!(
                "  {:<28} {:.1} million/s",
                "guest instruction rate",
                rate / 1e6
            ),
            Err(error) => println!("  {:<28} failed: {error}", "guest instruction rate"),
        }
        let guest = EmbeddedGuest::new("sie-doctor-exits", sie_guests::EXITS.bytes)?;
        match measure_full(&kvm, &guest, 1000) {
            Ok(costs) => println!(
                "  {:<28} {:.2} µs",
                "port-I/O exit round trip",
                costs[0] / 1000.0
            ),
            Err(error) => println!("  {:<28} failed: {error}", "port-I/O exit round trip"),
        }
    }
    // This process ran its tiny guests and let them go: what is left is
    // the VMM's own cost (see README, "Memory per VM").
    if let Some(memory) = MemoryBreakdown::of_this_process(&[]) {
        println!("memory (this process, its guests ended)");
        print!("{memory}");
    }
    println!("verdict: {verdict}");
    Ok(if verdict == Verdict::NoVms { 1 } else { 0 })
}
