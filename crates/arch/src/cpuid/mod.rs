//! Per-vCPU CPUID: turns the backend's supported list into the table one
//! vCPU sees. sie never adds a feature the supported list lacks; it only
//! rewrites topology, identity and a few bits it cannot back:
//!
//! - leaf 1: APIC id, logical processor count and CLFLUSH size in EBX; the
//!   hypervisor bit (ECX 31) set (it states a fact, not a capability); HTT
//!   kept only with more than one vCPU. TSC-deadline and every other feature
//!   bit pass through as supported.
//! - leaf 4 (Intel caches) and 0x8000_001D (AMD caches): core count and
//!   per-level sharing to match the topology.
//! - leaves 0xB and 0x1F, when supported: replaced by SMT (1 thread) and
//!   core (all vCPUs) levels with the x2APIC id in EDX.
//! - leaf 6 (power management): only ARAT (EAX 2) is kept. Everything else
//!   there (DTS, turbo, HWP, PLN/PTM, APERF/MPERF, energy-perf bias) names
//!   MSRs KVM does not emulate, and Linux would touch them.
//! - 0x4000_0000: KVM's signature kept (so Linux uses kvmclock and the
//!   other PV features), EAX = the highest hypervisor leaf present.
//! - AMD: CmpLegacy (0x8000_0001 ECX 1) kept only with more than one vCPU;
//!   0x8000_0008 ECX NC = vCPUs - 1; 0x8000_001E extended APIC id/core id.
//! - VMX (leaf 1 ECX 5) and SVM (0x8000_0001 ECX 2) hidden: a guest sees
//!   them only when asked for ([`expose_virtualization`], sie's `nested`).
//!
//! A CPU template ([`template`]) is applied to the supported list before
//! these rules.
//!
//! The topology is one socket of `vcpu_count` cores, one thread each, with
//! APIC id = vCPU index. The VMM must create vCPU `i` with KVM id `i` so
//! the LAPIC's id matches.
//!
//! ```
//! # use sie_arch::cpuid::normalize;
//! # use sie_hv::x86::CpuidEntry;
//! let supported = [CpuidEntry { function: 1, ..Default::default() }];
//! let table = normalize(&supported, 2, 4);
//! assert_eq!(table[0].ebx >> 24, 2);
//! ```

pub mod template;
mod topology;

use sie_hv::x86::CpuidEntry;

use topology::Topology;

/// The CPU vendor, from leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD" or "HygonGenuine" (AMD's topology leaves).
    Amd,
    /// Anything else, or no leaf 0.
    Other,
}

impl Vendor {
    /// The vendor named by leaf 0 of `entries`.
    pub fn of(entries: &[CpuidEntry]) -> Self {
        let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
            return Vendor::Other;
        };
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        name[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &name {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_EAX_ARAT: u32 = 1 << 2;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Leaf 1 ECX: VMX (Intel's hardware virtualization).
pub const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM (AMD's hardware virtualization).
pub const EXT1_ECX_SVM: u32 = 1 << 2;
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_00ff;

/// The CPUID table for vCPU `vcpu_id` of `vcpu_count`, from the backend's
/// `supported` list (see the module docs for each rule).
pub fn normalize(supported: &[CpuidEntry], vcpu_id: u32, vcpu_count: u32) -> Vec<CpuidEntry> {
    let vendor = Vendor::of(supported);
    let topo = Topology::new(vcpu_id, vcpu_count);
    let hypervisor_max = supported
        .iter()
        .map(|e| e.function)
        .filter(|f| HYPERVISOR_LEAVES.contains(f))
        .max();

    let mut out = Vec::with_capacity(supported.len() + 4);
    let mut extended_done = [false; 2];
    for entry in supported {
        let mut e = *entry;
        match e.function {
            0xb | 0x1f => {
                // Emitted once, whatever sub-leaves the host listed.
                let done = &mut extended_done[usize::from(e.function == 0x1f)];
                if !*done {
                    out.extend(topo.extended_leaves(e.function));
                    *done = true;
                }
                continue;
            }
            1 => {
                e.ebx = topo.leaf_1_ebx(e.ebx);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                e.ecx &= !LEAF1_ECX_VMX;
                if topo.count == 1 {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // A cache type of 0 ends the list: leave those entries alone.
            4 if e.eax & 0x1f != 0 => e.eax = topo.leaf_4_eax(e.eax),
            0x8000_001d if e.eax & 0x1f != 0 => e.eax = topo.cache_sharing(e.eax),
            6 => {
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x4000_0000 => e.eax = hypervisor_max.unwrap_or(e.eax),
            0x8000_0001 => {
                e.ecx &= !EXT1_ECX_SVM;
                if topo.count == 1 {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => e.ecx = topo.amd_size_ecx(e.ecx),
            0x8000_001e => topo.amd_ext_apic(&mut e),
            _ => {}
        }
        out.push(e);
    }
    out
}

/// Whether `entries` offer hardware virtualization (VMX or SVM): for the
/// backend's supported list, whether the host lets guests nest.
pub fn offers_virtualization(entries: &[CpuidEntry]) -> bool {
    entries.iter().any(|e| {
        (e.function == 1 && e.ecx & LEAF1_ECX_VMX != 0)
            || (e.function == 0x8000_0001 && e.ecx & EXT1_ECX_SVM != 0)
    })
}

/// Gives a normalized `table` back the VMX/SVM bits `supported` has, so the
/// guest can run VMs of its own.
pub fn expose_virtualization(table: &mut [CpuidEntry], supported: &[CpuidEntry]) {
    let bit = |function: u32, mask: u32| {
        supported
            .iter()
            .find(|e| e.function == function)
            .map_or(0, |e| e.ecx & mask)
    };
    let (vmx, svm) = (bit(1, LEAF1_ECX_VMX), bit(0x8000_0001, EXT1_ECX_SVM));
    for e in table {
        match e.function {
            1 => e.ecx |= vmx,
            0x8000_0001 => e.ecx |= svm,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
