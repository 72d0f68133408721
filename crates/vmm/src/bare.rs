//! A bare `KVM_RUN` loop with no dispatch, the baseline that `sie bench
//! exits` compares sie's full exit path against in the same invocation.
//!
//! It answers exactly what a minimal VMM must: reads get all ones, port 0x80
//! writes are timestamped (the bench guest separates its phases with them),
//! and the i8042 reset command ends the run.

use std::time::Instant;

use sie_hv::{Vcpu, VmExit};

use crate::error::{Result, VmmError};

/// A port 0x80 write seen by the bare loop.
#[derive(Clone, Copy, Debug)]
pub struct BareMarker {
    /// The byte written.
    pub value: u8,
    /// When it arrived.
    pub at: Instant,
}

/// Runs `vcpu` with the bare loop until the guest writes 0xfe to port 0x64.
pub fn run_bare(vcpu: &mut dyn Vcpu, markers: &mut Vec<BareMarker>) -> Result<()> {
    loop {
        match vcpu.run()? {
            VmExit::IoOut {
                port: 0x80, data, ..
            } => markers.push(BareMarker {
                value: data.first().copied().unwrap_or(0),
                at: Instant::now(),
            }),
            VmExit::IoOut {
                port: 0x64,
                data: [0xfe],
                ..
            } => return Ok(()),
            VmExit::IoIn { data, .. } | VmExit::MmioRead { data, .. } => data.fill(0xff),
            VmExit::IoOut { .. }
            | VmExit::MmioWrite { .. }
            | VmExit::Hlt
            | VmExit::IrqWindowOpen
            | VmExit::Interrupted => {}
            other => {
                return Err(VmmError::Host {
                    what: "bare KVM_RUN loop",
                    source: std::io::Error::other(format!("unexpected exit {other:?}")),
                });
            }
        }
    }
}
