//! libFuzzer entry point; the target itself is [`sie_fuzz::targets::virtio_console`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sie_fuzz::targets::virtio_console::run(data));
