//! `cpu-config`: Firecracker's custom CPU template (`PUT /cpu-config`, the
//! config file's `cpu-config` section).
//!
//! A template lists CPUID register modifiers per leaf and sub-leaf and MSR
//! modifiers, each a bitmap of `0`, `1` and `x` (clear, set, keep), most
//! significant bit first; `_` separates groups, a short bitmap is padded
//! with `x` on the left. Numbers (leaf, sub-leaf, MSR address) are strings
//! in hex (`"0x1"`), binary (`"0b1"`) or decimal. `kvm_capabilities` adds
//! (`"N"`) or drops (`"!N"`) a KVM capability check; `vcpu_features` and
//! `reg_modifiers` are aarch64's and refused on x86_64.
//!
//! ```
//! use sie_config::CpuConfig;
//! let config: CpuConfig = serde_json::from_str(r#"{"cpuid_modifiers": [{
//!     "leaf": "0x7", "subleaf": "0x0", "flags": 1,
//!     "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"}]}]}"#).unwrap();
//! config.validate().unwrap();
//! let bitmap = config.cpuid_modifiers[0].modifiers[0].bitmap;
//! assert_eq!((bitmap.mask, bitmap.value), (1 << 5, 0));
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Firecracker's custom CPU template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// KVM capabilities to require (`"N"`) or not to require (`"!N"`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub kvm_capabilities: Vec<KvmCapability>,
    /// CPUID modifiers (x86_64).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR modifiers (x86_64).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
    /// aarch64 vCPU features: refused on x86_64 unless empty.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vcpu_features: Vec<serde_json::Value>,
    /// aarch64 register modifiers: refused on x86_64 unless empty.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reg_modifiers: Vec<serde_json::Value>,
}

/// One CPUID leaf and sub-leaf and what to do to its registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// The leaf (EAX input).
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub leaf: u32,
    /// The sub-leaf (ECX input).
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub subleaf: u32,
    /// KVM's flags for the entry (1: the sub-leaf is significant).
    #[serde(default)]
    pub flags: u32,
    /// The register modifiers.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One register's bitmap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register.
    pub register: CpuidRegister,
    /// What to clear, set and keep in it (32 bits).
    #[serde(deserialize_with = "bitmap_32", serialize_with = "bitmap_text_32")]
    pub bitmap: Bitmap,
}

/// One MSR and its bitmap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// The MSR's index.
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub addr: u32,
    /// What to clear, set and keep in it (64 bits).
    #[serde(deserialize_with = "bitmap_64", serialize_with = "bitmap_text_64")]
    pub bitmap: Bitmap,
}

/// A parsed bitmap: the bits in `mask` are forced to their bit in `value`,
/// the others kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    /// Bits the bitmap decides (`0` or `1`).
    pub mask: u64,
    /// Their values (always inside `mask`).
    pub value: u64,
}

impl Bitmap {
    /// `old` with the decided bits replaced.
    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.mask) | self.value
    }

    /// Parses `0b`-prefixed (or bare) text of `0`, `1`, `x` and `_`, at most
    /// `bits` digits; missing leading digits are `x`.
    pub fn parse(text: &str, bits: u32) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let mut bitmap = Bitmap::default();
        let mut position = 0u32;
        for c in digits.chars().rev() {
            if c == '_' {
                continue;
            }
            if position >= bits {
                return Err(format!("bitmap {text:?} has more than {bits} bits"));
            }
            let bit = 1u64 << position;
            match c {
                'x' | 'X' => {}
                '0' => bitmap.mask |= bit,
                '1' => {
                    bitmap.mask |= bit;
                    bitmap.value |= bit;
                }
                other => {
                    return Err(format!("bitmap {text:?}: {other:?} is not 0, 1, x or _"));
                }
            }
            position += 1;
        }
        Ok(bitmap)
    }

    /// The text form, `bits` digits after `0b`.
    pub fn text(&self, bits: u32) -> String {
        let mut text = String::with_capacity(bits as usize + 2);
        text.push_str("0b");
        for position in (0..bits).rev() {
            let bit = 1u64 << position;
            text.push(match (self.mask & bit != 0, self.value & bit != 0) {
                (false, _) => 'x',
                (true, false) => '0',
                (true, true) => '1',
            });
        }
        text
    }
}

/// A capability entry of `kvm_capabilities`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmCapability {
    /// `"N"`: KVM must offer capability N.
    Require(u32),
    /// `"!N"`: do not require capability N.
    Drop(u32),
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (drop, number) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let cap = parse_number(number).map_err(serde::de::Error::custom)?;
        Ok(if drop {
            KvmCapability::Drop(cap)
        } else {
            KvmCapability::Require(cap)
        })
    }
}

impl Serialize for KvmCapability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KvmCapability::Require(cap) => serializer.serialize_str(&cap.to_string()),
            KvmCapability::Drop(cap) => serializer.serialize_str(&format!("!{cap}")),
        }
    }
}

/// Why a CPU template cannot be used (whatever the host).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuConfigError {
    /// aarch64 settings on an x86_64 VMM.
    #[error("cpu-config: {0} are for aarch64 hosts; sie runs x86_64 guests")]
    Aarch64(&'static str),
    /// A leaf and sub-leaf listed twice.
    #[error("cpu-config: CPUID leaf {leaf:#x} subleaf {subleaf:#x} is listed twice")]
    DuplicateLeaf {
        /// The leaf.
        leaf: u32,
        /// The sub-leaf.
        subleaf: u32,
    },
    /// A register listed twice in one leaf.
    #[error("cpu-config: CPUID leaf {leaf:#x} subleaf {subleaf:#x} lists {register:?} twice")]
    DuplicateRegister {
        /// The leaf.
        leaf: u32,
        /// The sub-leaf.
        subleaf: u32,
        /// The register.
        register: CpuidRegister,
    },
    /// An MSR listed twice.
    #[error("cpu-config: MSR {0:#x} is listed twice")]
    DuplicateMsr(u32),
}

impl CpuConfig {
    /// Checks what does not depend on the host: no aarch64 settings, no
    /// leaf, register or MSR listed twice (the order would then matter).
    pub fn validate(&self) -> Result<(), CpuConfigError> {
        if !self.vcpu_features.is_empty() {
            return Err(CpuConfigError::Aarch64("vcpu_features"));
        }
        if !self.reg_modifiers.is_empty() {
            return Err(CpuConfigError::Aarch64("reg_modifiers"));
        }
        let mut leaves = std::collections::BTreeSet::new();
        for leaf in &self.cpuid_modifiers {
            if !leaves.insert((leaf.leaf, leaf.subleaf)) {
                return Err(CpuConfigError::DuplicateLeaf {
                    leaf: leaf.leaf,
                    subleaf: leaf.subleaf,
                });
            }
            let mut registers = Vec::new();
            for modifier in &leaf.modifiers {
                if registers.contains(&modifier.register) {
                    return Err(CpuConfigError::DuplicateRegister {
                        leaf: leaf.leaf,
                        subleaf: leaf.subleaf,
                        register: modifier.register,
                    });
                }
                registers.push(modifier.register);
            }
        }
        let mut msrs = std::collections::BTreeSet::new();
        for msr in &self.msr_modifiers {
            if !msrs.insert(msr.addr) {
                return Err(CpuConfigError::DuplicateMsr(msr.addr));
            }
        }
        Ok(())
    }
}

/// A number as Firecracker writes them in templates: `0x` hex, `0b` binary
/// or decimal.
fn parse_number(text: &str) -> Result<u32, String> {
    let parsed = if let Some(hex) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        u32::from_str_radix(&hex.replace('_', ""), 16)
    } else if let Some(binary) = text.strip_prefix("0b") {
        u32::from_str_radix(&binary.replace('_', ""), 2)
    } else {
        text.parse()
    };
    parsed
        .map_err(|e| format!("{text:?} is not a 32-bit number (0x hex, 0b binary or decimal): {e}"))
}

/// A number given as a string (Firecracker's form) or as a JSON integer.
fn number_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Text(String),
        Integer(u32),
    }
    match Number::deserialize(deserializer)? {
        Number::Text(text) => parse_number(&text).map_err(serde::de::Error::custom),
        Number::Integer(n) => Ok(n),
    }
}

fn hex<S: Serializer>(number: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{number:#x}"))
}

fn bitmap_32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bitmap, D::Error> {
    Bitmap::parse(&String::deserialize(deserializer)?, 32).map_err(serde::de::Error::custom)
}

fn bitmap_64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bitmap, D::Error> {
    Bitmap::parse(&String::deserialize(deserializer)?, 64).map_err(serde::de::Error::custom)
}

fn bitmap_text_32<S: Serializer>(bitmap: &Bitmap, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&bitmap.text(32))
}

fn bitmap_text_64<S: Serializer>(bitmap: &Bitmap, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&bitmap.text(64))
}

/// Firecracker's clients send absent lists as `null`.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_parse_clear_set_keep_with_separators_and_padding() {
        let bitmap = Bitmap::parse("0bxxxx000000000011xx00011011110010", 32).unwrap();
        assert_eq!(bitmap.mask, 0b0000_1111_1111_1111_0011_1111_1111_1111);
        assert_eq!(bitmap.value, 0b0000_0000_0000_0011_0000_0110_1111_0010);
        assert_eq!(bitmap.text(32), "0bxxxx000000000011xx00011011110010");
        // Separators, and a short bitmap padded with x on the left.
        let short = Bitmap::parse("0b1_0x", 32).unwrap();
        assert_eq!((short.mask, short.value), (0b110, 0b100));
        assert_eq!(Bitmap::parse("10x", 32).unwrap(), short);
        assert_eq!(short.apply(0xffff_fff0), 0xffff_fff4);
        assert_eq!(short.apply(0), 0b100);
        // 64-bit MSR bitmaps.
        let msr = Bitmap::parse(&format!("0b1{}", "x".repeat(63)), 64).unwrap();
        assert_eq!((msr.mask, msr.value), (1 << 63, 1 << 63));
    }

    #[test]
    fn bad_bitmaps_are_refused_with_the_reason() {
        let long = format!("0b{}", "0".repeat(33));
        assert!(
            Bitmap::parse(&long, 32)
                .unwrap_err()
                .contains("more than 32 bits")
        );
        assert!(Bitmap::parse("0b01z", 32).unwrap_err().contains("'z'"));
        assert!(Bitmap::parse(&format!("0b{}", "1".repeat(64)), 64).is_ok());
        assert!(Bitmap::parse(&format!("0b{}", "1".repeat(65)), 64).is_err());
    }

    #[test]
    fn firecracker_example_parses_and_round_trips() {
        let text = r#"{
            "kvm_capabilities": ["!56"],
            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]}],
            "msr_modifiers": [{"addr": "0x10a",
                "bitmap": "0b0000000000000000000000000000000000000000000000000000000000000000"}]
        }"#;
        let config: CpuConfig = serde_json::from_str(text).unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.kvm_capabilities, [KvmCapability::Drop(56)]);
        assert_eq!(config.cpuid_modifiers[0].leaf, 1);
        assert_eq!(
            config.cpuid_modifiers[0].modifiers[0].register,
            CpuidRegister::Eax
        );
        assert_eq!(config.msr_modifiers[0].addr, 0x10a);
        assert_eq!(config.msr_modifiers[0].bitmap.mask, u64::MAX);
        let back: CpuConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn numbers_take_hex_binary_decimal_and_integers() {
        for (leaf, want) in [
            (r#""0x80000001""#, 0x8000_0001),
            (r#""0b111""#, 7),
            (r#""13""#, 13),
            ("13", 13),
        ] {
            let text =
                format!(r#"{{"leaf": {leaf}, "subleaf": "0", "flags": 0, "modifiers": []}}"#);
            let parsed: CpuidLeafModifier = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed.leaf, want, "{leaf}");
        }
        let bad = r#"{"leaf": "0xzz", "subleaf": "0", "flags": 0, "modifiers": []}"#;
        let error = serde_json::from_str::<CpuidLeafModifier>(bad).unwrap_err();
        assert!(error.to_string().contains("0xzz"), "{error}");
    }

    #[test]
    fn unknown_registers_and_fields_are_refused() {
        let bad = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{"register": "ekx", "bitmap": "0b1"}]}]}"#;
        assert!(serde_json::from_str::<CpuConfig>(bad).is_err());
        assert!(serde_json::from_str::<CpuConfig>(r#"{"cpuid": []}"#).is_err());
    }

    #[test]
    fn aarch64_settings_and_duplicates_are_refused() {
        let arm: CpuConfig = serde_json::from_str(
            r#"{"reg_modifiers": [{"addr": "0x603000000013c020", "bitmap": "0b1"}]}"#,
        )
        .unwrap();
        assert!(
            arm.validate()
                .unwrap_err()
                .to_string()
                .contains("reg_modifiers")
        );
        let features: CpuConfig =
            serde_json::from_str(r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}"#).unwrap();
        assert!(
            features
                .validate()
                .unwrap_err()
                .to_string()
                .contains("aarch64")
        );
        let nulls: CpuConfig = serde_json::from_str(
            r#"{"kvm_capabilities": null, "cpuid_modifiers": null, "msr_modifiers": null,
                "vcpu_features": null, "reg_modifiers": null}"#,
        )
        .unwrap();
        assert_eq!(nulls, CpuConfig::default());
        let twice: CpuConfig = serde_json::from_str(
            r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1"}, {"addr": "16", "bitmap": "0b0"}]}"#,
        )
        .unwrap();
        assert_eq!(twice.validate(), Err(CpuConfigError::DuplicateMsr(0x10)));
        let leaf = r#"{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
            "modifiers": [{"register": "ebx", "bitmap": "0b1"}, {"register": "ebx", "bitmap": "0b0"}]}"#;
        let twice: CpuConfig =
            serde_json::from_str(&format!(r#"{{"cpuid_modifiers": [{leaf}]}}"#)).unwrap();
        assert!(
            twice
                .validate()
                .unwrap_err()
                .to_string()
                .contains("Ebx twice")
        );
    }
}
