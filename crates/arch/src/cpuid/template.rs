//! CPU templates: CPUID and MSR bitmaps laid over what the host offers, so
//! guests on different hosts of a fleet see one CPU.
//!
//! A template is a list of register modifiers (a mask of the bits it
//! decides and their values); it is applied to the backend's supported
//! CPUID list *before* [`super::normalize`], whose rules (topology, the
//! hypervisor bit, leaf 6, VMX/SVM per `nested`) win where both touch a
//! bit, as in Firecracker. [`apply`] refuses, in one line each:
//!
//! - a leaf and sub-leaf the host does not list;
//! - a bit forced to 1 in a *feature* register (see
//!   [`is_feature_register`]) that the host's list has at 0: a template
//!   may hide features, never invent them. Identity registers (leaf 1 EAX:
//!   family, model, stepping; cache and brand leaves) take any value.
//!
//! The static templates are Firecracker's T2, T2S, C3 (Intel) and T2A
//! (AMD) as data ([`static_template`]): each hides what is newer than its
//! baseline (AVX-512, SGX, MPX, PKU, TSX, ...) and states the baseline's
//! family/model/stepping in leaf 1 EAX. One difference: sie's T2A hides
//! the two IBRS hints Firecracker's states (see its data).
//!
//! ```
//! # use sie_arch::cpuid::template::{apply, CpuTemplate, CpuidModifier, Register};
//! # use sie_hv::x86::CpuidEntry;
//! let host = [CpuidEntry { function: 7, ebx: 0b110000, ..Default::default() }];
//! let hide_avx2 = CpuTemplate {
//!     cpuid: vec![CpuidModifier { leaf: 7, subleaf: 0, flags: 0, register: Register::Ebx, mask: 1 << 5, value: 0 }],
//!     ..CpuTemplate::default()
//! };
//! assert_eq!(apply(&host, &hide_avx2).unwrap()[0].ebx, 0b010000);
//! ```

use sie_hv::x86::{CPUID_FLAG_SIGNIFICANT_INDEX, CpuidEntry};

use super::Vendor;

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl Register {
    fn of(self, entry: &mut CpuidEntry) -> &mut u32 {
        match self {
            Register::Eax => &mut entry.eax,
            Register::Ebx => &mut entry.ebx,
            Register::Ecx => &mut entry.ecx,
            Register::Edx => &mut entry.edx,
        }
    }

    /// The register's value in `entry`.
    pub fn value(self, entry: &CpuidEntry) -> u32 {
        match self {
            Register::Eax => entry.eax,
            Register::Ebx => entry.ebx,
            Register::Ecx => entry.ecx,
            Register::Edx => entry.edx,
        }
    }

    /// "EAX" and so on.
    pub fn name(self) -> &'static str {
        match self {
            Register::Eax => "EAX",
            Register::Ebx => "EBX",
            Register::Ecx => "ECX",
            Register::Edx => "EDX",
        }
    }
}

/// One register of one leaf: the bits in `mask` become their bit in `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidModifier {
    /// Leaf (EAX input).
    pub leaf: u32,
    /// Sub-leaf (ECX input).
    pub subleaf: u32,
    /// The backend flags the entry gets (as Firecracker's templates set them).
    pub flags: u32,
    /// Which register.
    pub register: Register,
    /// Bits decided.
    pub mask: u32,
    /// Their values (inside `mask`).
    pub value: u32,
}

/// One MSR: the bits in `mask` become their bit in `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrModifier {
    /// MSR index.
    pub index: u32,
    /// Bits decided.
    pub mask: u64,
    /// Their values (inside `mask`).
    pub value: u64,
}

impl MsrModifier {
    /// `old` with the decided bits replaced.
    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.mask) | (self.value & self.mask)
    }
}

/// A CPU template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTemplate {
    /// The vendor it is made for (static templates); `None` for any.
    pub vendor: Option<Vendor>,
    /// CPUID modifiers.
    pub cpuid: Vec<CpuidModifier>,
    /// MSR modifiers (applied to each vCPU after its CPUID is set).
    pub msrs: Vec<MsrModifier>,
}

/// Why a template cannot be used on this host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A static template for another vendor.
    #[error("CPU template {template} is for {wanted:?} CPUs; this host's CPU is {host:?}")]
    Vendor {
        /// The template's name.
        template: &'static str,
        /// Its vendor.
        wanted: Vendor,
        /// The host's.
        host: Vendor,
    },
    /// A leaf the host does not list.
    #[error("CPU template: CPUID leaf {leaf:#x} subleaf {subleaf:#x} is not in this host's CPUID")]
    MissingLeaf {
        /// Leaf.
        leaf: u32,
        /// Sub-leaf.
        subleaf: u32,
    },
    /// A feature bit forced on that the host lacks.
    #[error(
        "CPU template: CPUID leaf {leaf:#x} subleaf {subleaf:#x} {register} bit {bit} is forced to 1, but this host does not offer that feature"
    )]
    MissingFeature {
        /// Leaf.
        leaf: u32,
        /// Sub-leaf.
        subleaf: u32,
        /// Register name.
        register: &'static str,
        /// Bit number.
        bit: u32,
    },
}

/// Whether `register` of `leaf`/`subleaf` holds feature flags (a 1 there
/// claims a capability) rather than identity or sizes.
pub fn is_feature_register(leaf: u32, subleaf: u32, register: Register) -> bool {
    use Register::*;
    matches!(
        (leaf, subleaf, register),
        (1, _, Ecx | Edx)
            | (6, 0, Eax)
            | (7, 0, Ebx | Ecx | Edx)
            | (7, 1, Eax | Edx)
            | (7, 2, Edx)
            | (0xd, 0, Eax | Edx)
            | (0xd, 1, Eax)
            | (0x4000_0001, 0, Eax)
            | (0x8000_0001, _, Ecx | Edx)
            | (0x8000_0007, 0, Edx)
            | (0x8000_0008, 0, Ebx)
            | (0x8000_000a, 0, Edx)
            | (0x8000_001f, 0, Eax)
            | (0x8000_0021, 0, Eax)
    )
}

/// Whether `entry` answers CPUID `leaf`/`subleaf`.
pub fn matches(entry: &CpuidEntry, leaf: u32, subleaf: u32) -> bool {
    entry.function == leaf
        && (entry.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || entry.index == subleaf)
}

/// The supported list with `template`'s CPUID modifiers applied, or why it
/// cannot be (checked against `supported`: see the module docs).
pub fn apply(
    supported: &[CpuidEntry],
    template: &CpuTemplate,
) -> Result<Vec<CpuidEntry>, TemplateError> {
    let mut out = supported.to_vec();
    for modifier in &template.cpuid {
        let (leaf, subleaf) = (modifier.leaf, modifier.subleaf);
        let entry = out
            .iter_mut()
            .find(|e| matches(e, leaf, subleaf))
            .ok_or(TemplateError::MissingLeaf { leaf, subleaf })?;
        let value = modifier.value & modifier.mask;
        let old = *modifier.register.of(entry);
        if is_feature_register(leaf, subleaf, modifier.register) {
            let invented = value & !old;
            if invented != 0 {
                return Err(TemplateError::MissingFeature {
                    leaf,
                    subleaf,
                    register: modifier.register.name(),
                    bit: invented.trailing_zeros(),
                });
            }
        }
        *modifier.register.of(entry) = (old & !modifier.mask) | value;
        entry.flags = modifier.flags;
        // Keep the index KVM matches on when the template says it matters.
        if modifier.flags & CPUID_FLAG_SIGNIFICANT_INDEX != 0 {
            entry.index = subleaf;
        }
    }
    Ok(out)
}

/// Checks that a static template's vendor is the host's.
pub fn check_vendor(
    name: &'static str,
    template: &CpuTemplate,
    supported: &[CpuidEntry],
) -> Result<(), TemplateError> {
    let host = Vendor::of(supported);
    match template.vendor {
        Some(wanted) if wanted != host => Err(TemplateError::Vendor {
            template: name,
            wanted,
            host,
        }),
        _ => Ok(()),
    }
}

/// Firecracker's static template `name` ("T2", "T2S", "C3" or "T2A").
pub fn static_template(name: &str) -> Option<CpuTemplate> {
    use Register::*;
    let leaf = |leaf, subleaf, flags, register, mask, value| CpuidModifier {
        leaf,
        subleaf,
        flags,
        register,
        mask,
        value,
    };
    // Leaf 1 for T2, T2S and T2A: family 6, model 0x3f, stepping 2; hides
    // DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR,
    // PDCM, DCA (ECX) and PSN, DS, ACPI, SS, TM, IA64, PBE (EDX), states
    // MCE and MTRR.
    let t2_leaf1 = [
        leaf(1, 0, 0, Eax, 0x0fff_3fff, 0x0003_06f2),
        leaf(1, 0, 0, Ecx, 0x0004_cdfc, 0),
        leaf(1, 0, 0, Edx, 0xe864_1080, 0x0000_1080),
    ];
    // Leaf 7 ECX/EDX and the XSAVE leaves for T2, T2S and T2A: hides
    // AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, UMIP, PKU, OSPKE, GFNI,
    // VAES, VPCLMULQDQ, LA57, RDPID, SGX_LC; AVX512_4VNNIW/4FMAPS, FSRM,
    // VP2INTERSECT; MPX, AVX-512 and PKRU state; XSAVEC, XGETBV1, XSAVES.
    let t2_leaf7_rest = [
        leaf(7, 0, 1, Ecx, 0x4041_5f5e, 0),
        leaf(7, 0, 1, Edx, 0x0000_011c, 0),
        leaf(0xd, 0, 1, Eax, 0x0000_02f8, 0),
        leaf(0xd, 1, 1, Eax, 0x0000_000e, 0),
    ];
    let (vendor, cpuid, msrs): (Vendor, Vec<CpuidModifier>, Vec<MsrModifier>) = match name {
        "T2" => (
            Vendor::Intel,
            [
                &t2_leaf1[..],
                // SGX, HLE, RTM, RDT, MPX, AVX-512, RDSEED, ADX, CLFLUSHOPT,
                // CLWB, PT, SHA and more hidden; ERMS stated.
                &[leaf(7, 0, 1, Ebx, 0xffef_fa54, 0x0000_0200)],
                &t2_leaf7_rest,
                // PREFETCHW, MONITORX; 1 GiB pages; WBNOINVD.
                &[
                    leaf(0x8000_0001, 0, 0, Ecx, 0x2000_0100, 0),
                    leaf(0x8000_0001, 0, 0, Edx, 0x0400_0000, 0),
                    leaf(0x8000_0008, 0, 0, Ebx, 0x0000_0200, 0),
                ],
            ]
            .concat(),
            Vec::new(),
        ),
        "T2S" => (
            Vendor::Intel,
            [
                &t2_leaf1[..],
                &[leaf(7, 0, 1, Ebx, 0xffef_da14, 0x0000_0200)],
                &t2_leaf7_rest,
                &[
                    leaf(0x8000_0001, 0, 0, Ecx, 0x2000_0100, 0),
                    leaf(0x8000_0001, 0, 0, Edx, 0x0400_0000, 0),
                    leaf(0x8000_0008, 0, 0, Ebx, 0x0000_0200, 0),
                ],
            ]
            .concat(),
            // IA32_ARCH_CAPABILITIES: the same value on Skylake and Cascade
            // Lake hosts (RSBA, SKIP_L1DFL_VMENTRY, IF_PSCHANGE_MC_NO,
            // MISC_PACKAGE_CTLS, ENERGY_FILTERING_CTL).
            vec![MsrModifier {
                index: 0x10a,
                mask: u64::MAX,
                value: 0xc4c,
            }],
        ),
        "C3" => (
            Vendor::Intel,
            vec![
                // Family 6, model 0x3e, stepping 4; also hides FMA and MOVBE.
                leaf(1, 0, 0, Eax, 0x0fff_3fff, 0x0003_06e4),
                leaf(1, 0, 0, Ecx, 0x0040_dd3c, 0),
                leaf(1, 0, 0, Edx, 0xa864_1080, 0x0000_1080),
                // Also BMI1, BMI2, AVX2 and INVPCID.
                leaf(7, 0, 1, Ebx, 0xffaf_dd3c, 0),
                leaf(7, 0, 1, Ecx, 0x4041_481e, 0),
                leaf(7, 0, 1, Edx, 0x0000_000c, 0),
                leaf(0xd, 0, 1, Eax, 0x0000_02f8, 0),
                leaf(0xd, 1, 1, Eax, 0x0000_000e, 0),
                // LZCNT, PREFETCHW; 1 GiB pages.
                leaf(0x8000_0001, 0, 0, Ecx, 0x0000_0120, 0),
                leaf(0x8000_0001, 0, 0, Edx, 0x0400_0000, 0),
            ],
            Vec::new(),
        ),
        "T2A" => (
            Vendor::Amd,
            [
                &t2_leaf1[..],
                &[leaf(7, 0, 1, Ebx, 0xffef_da14, 0x0000_0200)],
                &t2_leaf7_rest,
                &[
                    // SSE4A, MisAlignSse, 3DNowPrefetch, MONITORX; MmxExt,
                    // MMX, FXSR, FFXSR, 1 GiB pages (extended copies).
                    leaf(0x8000_0001, 0, 0, Ecx, 0x2000_01c0, 0),
                    leaf(0x8000_0001, 0, 0, Edx, 0x07c0_0000, 0),
                    // CLZERO, RstrFpErrPtrs, WBNOINVD hidden. Firecracker's
                    // T2A states IbrsPreferred and IbrsSameMode (bits 18,
                    // 19, as on Milan); KVM offers them to no guest, and
                    // sie never states a feature the host lacks, so sie's
                    // T2A hides them: the same 0 on every host.
                    leaf(0x8000_0008, 0, 0, Ebx, 0x000c_0205, 0),
                ],
            ]
            .concat(),
            Vec::new(),
        ),
        _ => return None,
    };
    Some(CpuTemplate {
        vendor: Some(vendor),
        cpuid,
        msrs,
    })
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
