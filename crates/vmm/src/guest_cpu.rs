//! The CPU the guest sees: the host's supported CPUID with the configured
//! CPU template laid over it (`machine-config.cpu_template` or a custom
//! `cpu-config`), normalized per vCPU, with VMX/SVM only when `nested`
//! asks and the host allows it; and the template's MSRs.
//!
//! [`GuestCpu::plan`] checks everything that depends on the host before
//! any VM exists, so `PUT /machine-config`, `PUT /cpu-config` and the
//! config file are refused in one line when the host cannot honour them.
//! What only a vCPU can tell is checked when each is configured: that the
//! backend hides what the template hides ([`GuestCpu::check_hidden`]) and
//! keeps the template's MSR values ([`GuestCpu::configure_msrs`]).

use sie_arch::cpuid::template::{self, CpuTemplate, CpuidModifier, MsrModifier, Register};
use sie_config::{CpuConfig, CpuidRegister, KvmCapability, MachineConfig};
use sie_hv::x86::{CpuidEntry, MsrEntry};
use sie_hv::{Hypervisor, Vcpu};

/// The guest CPU, planned for this host.
#[derive(Clone, Debug)]
pub(crate) struct GuestCpu {
    /// The supported list as the host gives it.
    supported: Vec<CpuidEntry>,
    /// The supported list with the template applied.
    templated: Vec<CpuidEntry>,
    /// The template's CPUID modifiers, to check what the backend kept.
    cpuid_modifiers: Vec<CpuidModifier>,
    msrs: Vec<MsrModifier>,
    nested: bool,
}

/// Why the guest CPU cannot be what the configuration asks (one line).
#[derive(Debug, thiserror::Error)]
pub enum GuestCpuError {
    /// The template does not fit this host.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// `kvm_capabilities` names one KVM lacks.
    #[error(
        "cpu-config: kvm_capabilities requires KVM capability {0}, which this host's KVM lacks"
    )]
    Capability(u32),
    /// Nesting asked where the host does not allow it.
    #[error("machine-config: nested needs a host KVM that lets guests run VMs: {0}")]
    Nested(String),
    /// An MSR of the template that KVM does not let sie read or write.
    #[error("CPU template: MSR {index:#x} {what}")]
    Msr {
        /// MSR index.
        index: u32,
        /// What went wrong.
        what: String,
    },
    /// The backend shows the guest a bit the template hides.
    #[error(
        "CPU template: this host's KVM still shows the guest CPUID leaf {leaf:#x} subleaf {subleaf:#x} {register} bit {bit}, which the template hides (its KVM merges host bits into that leaf)"
    )]
    NotHidden {
        /// Leaf.
        leaf: u32,
        /// Sub-leaf.
        subleaf: u32,
        /// Register name.
        register: &'static str,
        /// Bit number.
        bit: u32,
    },
    /// The host's CPUID could not be read.
    #[error("cannot read the host's CPUID: {0}")]
    Hypervisor(#[from] sie_hv::HvError),
}

impl GuestCpu {
    /// Plans the guest CPU for `machine` and `custom` on `hv`.
    pub(crate) fn plan(
        machine: &MachineConfig,
        custom: Option<&CpuConfig>,
        hv: &dyn Hypervisor,
    ) -> Result<Self, GuestCpuError> {
        let supported = hv.supported_cpuid()?;
        let template = match (machine.cpu_template(), custom) {
            (_, Some(custom)) => {
                for capability in &custom.kvm_capabilities {
                    // "!N" drops a check Firecracker would make; sie's own
                    // checks are not configurable, so only "N" adds one.
                    if let KvmCapability::Require(cap) = capability
                        && !hv.has_capability(*cap)
                    {
                        return Err(GuestCpuError::Capability(*cap));
                    }
                }
                from_config(custom)
            }
            (Some(name), None) => {
                // Every name a validated MachineConfig holds has data.
                let template = template::static_template(name.name()).unwrap_or_default();
                template::check_vendor(name.name(), &template, &supported)?;
                template
            }
            (None, None) => CpuTemplate::default(),
        };
        let templated = template::apply(&supported, &template)?;
        let nested = machine.nested();
        if nested && !sie_arch::cpuid::offers_virtualization(&supported) {
            return Err(GuestCpuError::Nested(nesting_state(&supported)));
        }
        Ok(Self {
            supported,
            templated,
            cpuid_modifiers: template.cpuid,
            msrs: template.msrs,
            nested,
        })
    }

    /// The CPUID table of vCPU `id` of `count`.
    pub(crate) fn cpuid(&self, id: u32, count: u32) -> Vec<CpuidEntry> {
        let mut table = sie_arch::cpuid::normalize(&self.templated, id, count);
        if self.nested {
            sie_arch::cpuid::expose_virtualization(&mut table, &self.supported);
        }
        table
    }

    /// Checks that `vcpu`, whose CPUID was set to `table`, hides every bit
    /// the template hides: a software KVM may merge host bits into some
    /// leaves when the table is read (kvm_pvm does into leaves 1, 7 and
    /// 0xd), and the guest would then see features the template hides.
    pub(crate) fn check_hidden(
        &self,
        vcpu: &dyn Vcpu,
        table: &[CpuidEntry],
    ) -> Result<(), GuestCpuError> {
        if self.cpuid_modifiers.is_empty() {
            return Ok(());
        }
        let seen = vcpu.cpuid()?;
        for modifier in &self.cpuid_modifiers {
            let (leaf, subleaf) = (modifier.leaf, modifier.subleaf);
            let find = |entries: &[CpuidEntry]| {
                entries
                    .iter()
                    .find(|e| template::matches(e, leaf, subleaf))
                    .copied()
            };
            let (Some(set), Some(got)) = (find(table), find(&seen)) else {
                continue;
            };
            let hidden = modifier.mask & !modifier.value;
            let shown = modifier.register.value(&got) & hidden & !modifier.register.value(&set);
            if shown != 0 {
                return Err(GuestCpuError::NotHidden {
                    leaf,
                    subleaf,
                    register: modifier.register.name(),
                    bit: shown.trailing_zeros(),
                });
            }
        }
        Ok(())
    }

    /// Applies the template's MSRs to `vcpu` (after its CPUID is set, which
    /// decides which MSRs KVM offers), checking each took.
    pub(crate) fn configure_msrs(&self, vcpu: &dyn Vcpu) -> Result<(), GuestCpuError> {
        for modifier in &self.msrs {
            let index = modifier.index;
            let msr_error = |what: String| GuestCpuError::Msr { index, what };
            let read = |vcpu: &dyn Vcpu| -> Result<u64, GuestCpuError> {
                vcpu.msrs(&[index])?
                    .first()
                    .map(|m| m.data)
                    .ok_or_else(|| msr_error("cannot be read through this host's KVM".into()))
            };
            let wanted = modifier.apply(read(vcpu)?);
            let written = vcpu.set_msrs(&[MsrEntry {
                index,
                data: wanted,
            }])?;
            if written != 1 {
                return Err(msr_error(format!(
                    "cannot be set to {wanted:#x} through this host's KVM"
                )));
            }
            let now = read(vcpu)?;
            if now != wanted {
                return Err(msr_error(format!(
                    "was set to {wanted:#x} but KVM keeps {now:#x}"
                )));
            }
        }
        Ok(())
    }
}

/// The arch form of a custom template.
fn from_config(config: &CpuConfig) -> CpuTemplate {
    let mut template = CpuTemplate::default();
    for leaf in &config.cpuid_modifiers {
        for modifier in &leaf.modifiers {
            template.cpuid.push(CpuidModifier {
                leaf: leaf.leaf,
                subleaf: leaf.subleaf,
                flags: leaf.flags,
                register: match modifier.register {
                    CpuidRegister::Eax => Register::Eax,
                    CpuidRegister::Ebx => Register::Ebx,
                    CpuidRegister::Ecx => Register::Ecx,
                    CpuidRegister::Edx => Register::Edx,
                },
                // A 32-bit bitmap's parse never sets higher bits.
                mask: modifier.bitmap.mask as u32,
                value: modifier.bitmap.value as u32,
            });
        }
    }
    for msr in &config.msr_modifiers {
        template.msrs.push(MsrModifier {
            index: msr.addr,
            mask: msr.bitmap.mask,
            value: msr.bitmap.value,
        });
    }
    template
}

/// Why the host's KVM offers no VMX/SVM, from the module parameter.
fn nesting_state(supported: &[CpuidEntry]) -> String {
    let module = match sie_arch::cpuid::Vendor::of(supported) {
        sie_arch::cpuid::Vendor::Intel => "kvm_intel",
        sie_arch::cpuid::Vendor::Amd => "kvm_amd",
        sie_arch::cpuid::Vendor::Other => {
            return "this host's KVM offers neither VMX nor SVM".to_string();
        }
    };
    let path = format!("/sys/module/{module}/parameters/nested");
    match std::fs::read_to_string(&path) {
        Ok(value) => format!(
            "this host's KVM offers no VMX/SVM to guests ({path} is {}; load {module} with nested=1)",
            value.trim()
        ),
        Err(_) => format!(
            "this host's KVM offers no VMX/SVM to guests ({module} is not loaded: no hardware virtualization here)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_templates_become_per_register_modifiers() {
        let config: CpuConfig = serde_json::from_str(
            r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [
                   {"register": "ebx", "bitmap": "0b0xxxxx"},
                   {"register": "ecx", "bitmap": "0b1"}]}],
                "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b10"}]}"#,
        )
        .unwrap();
        let template = from_config(&config);
        assert_eq!(template.vendor, None);
        assert_eq!(template.cpuid.len(), 2);
        assert_eq!(
            (template.cpuid[0].register, template.cpuid[0].mask),
            (Register::Ebx, 1 << 5)
        );
        assert_eq!(
            (template.cpuid[1].register, template.cpuid[1].value),
            (Register::Ecx, 1)
        );
        assert_eq!(template.cpuid[1].flags, 1);
        assert_eq!(
            template.msrs,
            [MsrModifier {
                index: 0x10a,
                mask: 0b11,
                value: 0b10
            }]
        );
    }
}
