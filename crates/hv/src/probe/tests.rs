//! Probe tests over synthetic host trees, and one over the real host.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A scratch directory removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new() -> Tree {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sie-probe-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Tree(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn paths(&self) -> HostPaths {
        HostPaths {
            kvm_device: self.0.join("dev/kvm"),
            cpuinfo: self.0.join("proc/cpuinfo"),
            sys_module: self.0.join("sys/module"),
            hugepages: self.0.join("sys/kernel/mm/hugepages"),
            thp_enabled: self.0.join("sys/kernel/mm/transparent_hugepage/enabled"),
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn intel_host() -> Tree {
    let tree = Tree::new();
    tree.write("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vmx lm\n");
    tree.write("sys/module/kvm/parameters/tdp_mmu", "Y\n");
    tree.write("sys/module/kvm_intel/parameters/ept", "Y\n");
    tree.write("sys/module/kvm_intel/parameters/vpid", "Y\n");
    tree.write("sys/module/kvm_intel/parameters/unrestricted_guest", "N\n");
    tree.write("sys/module/kvm_intel/parameters/nested", "1\n");
    tree.write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "4\n",
    );
    tree.write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "2\n",
    );
    tree.write(
        "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
        "0\n",
    );
    tree.write(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    tree
}

#[test]
fn intel_host_files_are_read() {
    let tree = intel_host();
    let report = probe_with(&tree.paths());
    assert_eq!(report.backend, Backend::KvmIntel);
    assert_eq!(report.loaded_backends, [Backend::KvmIntel]);
    assert_eq!(report.cpu_vmx, Probed::Known(true));
    assert_eq!(report.cpu_svm, Probed::Known(false));
    assert_eq!(report.ept, Probed::Known(true));
    assert_eq!(report.vpid, Probed::Known(true));
    assert_eq!(report.unrestricted_guest, Probed::Known(false));
    assert_eq!(report.nested, Probed::Known(true));
    assert!(matches!(report.npt, Probed::Unknown(ref r) if r == "kvm_amd not loaded"));
    let pools = report.hugepages.known().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(pools[0].size_kib, 2048);
    assert_eq!(
        (pools[0].total.known(), pools[0].free.known()),
        (Some(&4), Some(&2))
    );
    assert!(pools[1].free.known().is_none());
    assert_eq!(
        report.transparent_hugepage,
        Probed::Known("always".to_owned())
    );
    assert!(report.hardware_virtualization());
    // The synthetic tree has no device node: nothing can run.
    assert!(report.device_access.known().is_none());
    assert!(report.capabilities.is_empty());
    assert_eq!(report.verdict(), Verdict::NoVms);
}

#[test]
fn pvm_host_is_not_hardware_virtualization() {
    let tree = Tree::new();
    tree.write("proc/cpuinfo", "flags\t\t: fpu hypervisor\n");
    tree.write("sys/module/kvm/parameters/tdp_mmu", "Y\n");
    tree.write("sys/module/kvm_pvm/uevent", "");
    let report = probe_with(&tree.paths());
    assert_eq!(report.backend, Backend::KvmPvm);
    assert_eq!(report.cpu_vmx, Probed::Known(false));
    assert!(report.ept.known().is_none());
    assert!(report.nested.known().is_none());
    assert!(!report.hardware_virtualization());
    assert!(report.hugepages.known().is_none());
}

#[test]
fn empty_host_has_no_backend_and_unknown_flags() {
    let tree = Tree::new();
    let report = probe_with(&tree.paths());
    assert_eq!(report.backend, Backend::None);
    assert!(matches!(report.cpu_vmx, Probed::Unknown(_)));
    assert!(matches!(report.transparent_hugepage, Probed::Unknown(_)));
}

#[test]
fn plain_kvm_without_vendor_module_is_other() {
    let tree = Tree::new();
    fs::create_dir_all(tree.0.join("sys/module/kvm")).unwrap();
    assert_eq!(
        probe_with(&tree.paths()).backend,
        Backend::Other("kvm".to_owned())
    );
}

fn runnable(report: &mut HostReport) {
    report.device_access = Probed::Known(());
    report.api_version = Probed::Known(12);
    report.capabilities = crate::kvm::REQUIRED_CAPS
        .iter()
        .map(|(_, name)| CapabilityReport {
            name,
            required: true,
            present: true,
            value: None,
        })
        .collect();
}

#[test]
fn verdict_follows_device_capabilities_and_hardware() {
    let tree = intel_host();
    let mut report = probe_with(&tree.paths());
    runnable(&mut report);
    assert!(report.can_run_vms());
    assert_eq!(report.verdict(), Verdict::FullSpeed);

    report.ept = Probed::Known(false);
    assert_eq!(report.verdict(), Verdict::SmallGuestsOnly);

    report.capabilities[0].present = false;
    assert!(!report.can_run_vms());
    assert_eq!(report.missing_required().collect::<Vec<_>>(), ["IRQCHIP"]);
    assert_eq!(report.verdict(), Verdict::NoVms);

    runnable(&mut report);
    report.api_version = Probed::Known(11);
    assert_eq!(report.verdict(), Verdict::NoVms);
}

#[test]
fn real_host_probe_finds_its_kvm() {
    let report = probe_host();
    if !Path::new(KVM_PATH).exists() {
        assert!(report.device_access.known().is_none());
        eprintln!(
            "SKIPPED-RESOURCE: no {KVM_PATH} on this machine, so the real host's KVM was not \
             probed (only that its absence is reported)"
        );
        return;
    }
    assert_eq!(report.api_version, Probed::Known(12));
    assert!(matches!(
        report.backend,
        Backend::KvmPvm | Backend::KvmIntel | Backend::KvmAmd | Backend::Other(_)
    ));
    assert!(report.cpu_vmx.known().is_some());
    assert!(report.can_run_vms(), "{report:#?}");
    let max = report
        .capabilities
        .iter()
        .find(|cap| cap.name == "MAX_VCPUS")
        .unwrap();
    assert!(max.value.unwrap_or(0) >= 1);
}
