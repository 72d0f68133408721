//! The snapshot file: `format::decode` on raw bytes (a file that decodes
//! re-encodes to the same sections), then the whole snapshot check on a
//! well-framed file whose sections are the fuzzer's bytes, so every
//! section's parser and the cross-checks between sections see hostile JSON
//! behind valid checksums. Nothing here may panic, and whatever is accepted
//! must describe a VM sie could build (vCPU states match the vCPU count, the
//! RAM layout matches the memory size).

use std::path::Path;

use sie_vmm::snapshot::{self, format};

const SECTIONS: [&str; 6] = ["config", "vm", "vcpus", "devices", "virtio", "memory"];

pub fn run(data: &[u8]) {
    if let Ok(decoded) = format::decode(data) {
        let sections: Vec<(&str, Vec<u8>)> = decoded
            .table
            .sections
            .iter()
            .filter_map(|entry| {
                SECTIONS
                    .iter()
                    .find(|name| **name == entry.name)
                    .and_then(|name| Some((*name, decoded.section(name).ok()?.to_vec())))
            })
            .collect();
        let again = format::encode(&decoded.table.cpu_vendor, &sections);
        let redecoded = format::decode(&again).expect("re-encoded sections decode");
        for (name, bytes) in &sections {
            assert_eq!(redecoded.section(name).expect("a section kept"), &bytes[..]);
        }
    }

    // The same bytes, cut into the six sections of a well-framed file.
    let mut parts = Vec::with_capacity(SECTIONS.len());
    let mut rest = data;
    for name in SECTIONS {
        let (len, tail) = match rest.split_first() {
            Some((&len, tail)) => (usize::from(len) * 4, tail),
            None => (0, rest),
        };
        let take = len.min(tail.len());
        parts.push((name, tail[..take].to_vec()));
        rest = &tail[take..];
    }
    let file = format::encode(&snapshot::host_cpu_vendor(), &parts);
    if let Ok(snapshot) = snapshot::decode_snapshot(Path::new("fuzz"), &file) {
        let machine = snapshot.config.machine_config.clone().unwrap_or_default();
        assert_eq!(snapshot.vcpus.len(), usize::from(machine.vcpu_count));
        let ram: u64 = snapshot.memory.iter().map(|r| r.len).sum();
        assert_eq!(ram, machine.mem_size_mib << 20);
    }
}
