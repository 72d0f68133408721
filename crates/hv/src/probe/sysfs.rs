//! The file side of the probe: the device node, `/proc/cpuinfo`, KVM module
//! parameters and huge pages. Every reader turns a failure into a reason.

use std::fs;
use std::path::Path;

use super::{Backend, HostPaths, HugePagePool, Probed, parse};

/// Opens the device read-write, the access sie needs; the error text
/// (missing, permission denied...) is the reason when that fails.
pub(super) fn device_access(path: &Path) -> Probed<()> {
    match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Probed::Known(()),
        Err(error) => Probed::Unknown(format!("{}: {error}", path.display())),
    }
}

/// Reads a file to a string, or the reason it could not be read.
fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))
}

/// Loaded KVM vendor modules, in the order sie prefers to name them.
pub(super) fn loaded_backends(paths: &HostPaths) -> Vec<Backend> {
    [Backend::KvmPvm, Backend::KvmIntel, Backend::KvmAmd]
        .into_iter()
        .filter(|backend| {
            backend
                .module()
                .is_some_and(|name| paths.sys_module.join(name).exists())
        })
        .collect()
}

/// The backend serving `/dev/kvm`: the software PVM module when loaded
/// (it is the one the device belongs to then), else the hardware module,
/// else `Other` when plain `kvm` is loaded, else `None`.
pub(super) fn backend(paths: &HostPaths, loaded: &[Backend]) -> Backend {
    match loaded.first() {
        Some(first) => first.clone(),
        None if paths.sys_module.join("kvm").exists() => Backend::Other("kvm".to_owned()),
        None => Backend::None,
    }
}

/// The CPU flags, or why they are unknown.
pub(super) fn cpu_flags(paths: &HostPaths) -> Probed<Vec<String>> {
    match read(&paths.cpuinfo) {
        Ok(text) => match parse::cpu_flags(&text) {
            Some(flags) => Probed::Known(flags),
            None => Probed::Unknown("no flags line in cpuinfo".to_owned()),
        },
        Err(reason) => Probed::Unknown(reason),
    }
}

/// A boolean parameter of `module`, or why it is unknown (usually: the
/// module is not loaded).
pub(super) fn module_param(paths: &HostPaths, module: &str, param: &str) -> Probed<bool> {
    let path = paths.sys_module.join(module).join("parameters").join(param);
    match read(&path) {
        Ok(text) => match parse::param_bool(&text) {
            Some(value) => Probed::Known(value),
            None => Probed::Unknown(format!(
                "{}: unexpected value {:?}",
                path.display(),
                text.trim()
            )),
        },
        Err(_) if !paths.sys_module.join(module).exists() => {
            Probed::Unknown(format!("{module} not loaded"))
        }
        Err(reason) => Probed::Unknown(reason),
    }
}

/// `nested` of whichever hardware module is loaded.
pub(super) fn nested(paths: &HostPaths) -> Probed<bool> {
    match module_param(paths, "kvm_intel", "nested") {
        Probed::Known(value) => Probed::Known(value),
        Probed::Unknown(_) => match module_param(paths, "kvm_amd", "nested") {
            Probed::Known(value) => Probed::Known(value),
            Probed::Unknown(_) => {
                Probed::Unknown("neither kvm_intel nor kvm_amd reports nested".to_owned())
            }
        },
    }
}

/// Huge page pools by size, smallest first.
pub(super) fn hugepages(paths: &HostPaths) -> Probed<Vec<HugePagePool>> {
    let entries = match fs::read_dir(&paths.hugepages) {
        Ok(entries) => entries,
        Err(error) => return Probed::Unknown(format!("{}: {error}", paths.hugepages.display())),
    };
    let mut pools: Vec<HugePagePool> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let size_kib = parse::hugepage_size_kib(entry.file_name().to_str()?)?;
            let counter = |name: &str| -> Probed<u64> {
                match read(&entry.path().join(name)) {
                    Ok(text) => parse::counter(&text).map_or_else(
                        || Probed::Unknown(format!("{name}: not a number")),
                        Probed::Known,
                    ),
                    Err(reason) => Probed::Unknown(reason),
                }
            };
            Some(HugePagePool {
                size_kib,
                total: counter("nr_hugepages"),
                free: counter("free_hugepages"),
            })
        })
        .collect();
    pools.sort_by_key(|pool| pool.size_kib);
    Probed::Known(pools)
}

/// The transparent huge page mode (`always`, `madvise` or `never`).
pub(super) fn transparent_hugepage(paths: &HostPaths) -> Probed<String> {
    match read(&paths.thp_enabled) {
        Ok(text) => parse::bracketed_choice(&text).map_or_else(
            || Probed::Unknown(format!("unexpected {:?}", text.trim())),
            Probed::Known,
        ),
        Err(reason) => Probed::Unknown(reason),
    }
}
