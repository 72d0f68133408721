//! libFuzzer entry point; the target itself is [`sie_fuzz::targets::pci_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sie_fuzz::targets::pci_config::run(data));
