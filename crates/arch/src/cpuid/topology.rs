//! The CPU topology sie presents: one socket of `vcpu_count` cores, one
//! thread per core, APIC id = vCPU index. Every topology leaf (1, 4, 0xB,
//! 0x1F, AMD 0x8000_0008/1D/1E) is derived from this one description so
//! that they agree with each other.

use sie_hv::x86::{CPUID_FLAG_SIGNIFICANT_INDEX, CpuidEntry};

/// Level types of leaves 0xB and 0x1F (ECX[15:8]).
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// One vCPU's place in the topology.
#[derive(Clone, Copy, Debug)]
pub(super) struct Topology {
    /// APIC id (and x2APIC id) of this vCPU.
    pub apic_id: u32,
    /// vCPUs in the (only) package, at least 1.
    pub count: u32,
    /// APIC id bits that number the cores: ceil(log2(count)).
    pub core_bits: u32,
}

impl Topology {
    pub fn new(vcpu_id: u32, vcpu_count: u32) -> Self {
        let count = vcpu_count.max(1);
        Self {
            apic_id: vcpu_id,
            count,
            core_bits: u32::BITS - (count - 1).leading_zeros(),
        }
    }

    /// APIC ids reserved for the package: the power of two covering it.
    /// Leaf 1 EBX[23:16] and leaf 4 EAX[31:26] both count these, so a
    /// kernel dividing one by the other finds one thread per core.
    pub fn id_span(&self) -> u32 {
        1u32.checked_shl(self.core_bits).unwrap_or(u32::MAX)
    }

    /// The sub-leaves of leaf 0xB or 0x1F: SMT level (1 thread), core level
    /// (all vCPUs), then the invalid level that ends the list. EDX holds
    /// the x2APIC id in each.
    pub fn extended_leaves(&self, function: u32) -> [CpuidEntry; 3] {
        let level = |index: u32, shift: u32, count: u32, kind: u32| CpuidEntry {
            function,
            index,
            flags: CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: shift,
            ebx: count.min(0xffff),
            ecx: index | (kind << 8),
            edx: self.apic_id,
        };
        [
            level(0, 0, 1, LEVEL_SMT),
            level(1, self.core_bits, self.count, LEVEL_CORE),
            level(2, 0, 0, LEVEL_INVALID),
        ]
    }

    /// Leaf 1 EBX: APIC id, logical processor count, CLFLUSH line size
    /// (8 x 8 = 64 bytes); the brand index byte is kept.
    pub fn leaf_1_ebx(&self, ebx: u32) -> u32 {
        (ebx & 0xff) | (8 << 8) | (self.id_span().min(0xff) << 16) | ((self.apic_id & 0xff) << 24)
    }

    /// Leaf 4 / 0x8000_001D EAX[25:14]: logical processors sharing the
    /// cache, minus one. L1 and L2 are per core (one thread each); L3 and
    /// beyond are shared by the package.
    pub fn cache_sharing(&self, eax: u32) -> u32 {
        let level = (eax >> 5) & 0x7;
        let sharing = if level >= 3 {
            (self.id_span() - 1).min(0xfff)
        } else {
            0
        };
        (eax & !(0xfff << 14)) | (sharing << 14)
    }

    /// Leaf 4 EAX: cache sharing, and EAX[31:26] = core ids in the
    /// package minus one.
    pub fn leaf_4_eax(&self, eax: u32) -> u32 {
        let cores = (self.id_span() - 1).min(0x3f);
        (self.cache_sharing(eax) & 0x03ff_ffff) | (cores << 26)
    }

    /// AMD 0x8000_0008 ECX: NC = cores - 1, ApicIdCoreIdSize = core bits.
    pub fn amd_size_ecx(&self, ecx: u32) -> u32 {
        (ecx & !0xf0ff) | ((self.core_bits & 0xf) << 12) | ((self.count - 1) & 0xff)
    }

    /// AMD 0x8000_001E: extended APIC id in EAX; EBX core id with one
    /// thread per core; ECX node 0 of one node.
    pub fn amd_ext_apic(&self, entry: &mut CpuidEntry) {
        entry.eax = self.apic_id;
        entry.ebx = (entry.ebx & !0xffff) | (self.apic_id & 0xff);
        entry.ecx &= !0x7ff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_bits_cover_the_count() {
        let bits = |n| Topology::new(0, n).core_bits;
        assert_eq!(
            [bits(0), bits(1), bits(2), bits(3), bits(4), bits(5)],
            [0, 0, 1, 2, 2, 3]
        );
        assert_eq!(Topology::new(0, 5).id_span(), 8);
    }

    #[test]
    fn cache_sharing_is_per_core_below_l3() {
        let t = Topology::new(0, 4);
        let l2 = 2 << 5 | 3; // level 2, unified
        let l3 = 3 << 5 | 3;
        assert_eq!((t.cache_sharing(l2 | (7 << 14)) >> 14) & 0xfff, 0);
        assert_eq!((t.cache_sharing(l3) >> 14) & 0xfff, 3);
    }
}
