//! The exit dispatch: the one function where every VM exit is decoded,
//! routed to a device and classified for the observatory.
//!
//! It runs on the vCPU thread between two `KVM_RUN`s, so it allocates
//! nothing and takes no lock except inside the device it routes to (and the
//! observatory's slow path for addresses no device claims).

use std::sync::Arc;

use sie_devices::Bus;
use sie_hv::{SystemEventKind, VmExit};
use sie_obs::{AddressSpace, DeviceId, ExitKind, Observatory};

use crate::outcome::VmOutcome;

/// Unclaimed accesses are logged this many times per address, then only counted.
const UNKNOWN_LOG_LIMIT: u64 = 3;

/// What the buses and the observatory the dispatch needs.
pub struct ExitContext {
    /// I/O-port bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Where exits are counted.
    pub obs: Arc<Observatory>,
}

/// Why the vCPU cannot continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// KVM reported a shutdown: on x86, a triple fault.
    TripleFault,
    /// KVM could not emulate an instruction.
    EmulationFailure(u32),
    /// KVM failed internally.
    InternalError(u32),
    /// The hardware refused to enter the guest.
    FailEntry(u64),
    /// An exit sie does not know how to handle.
    UnsupportedExit(u32),
    /// `KVM_RUN` itself failed.
    RunFailed,
}

impl CrashKind {
    /// One line for the user.
    pub fn describe(self) -> String {
        match self {
            CrashKind::TripleFault => "triple fault (KVM shutdown exit)".to_string(),
            CrashKind::EmulationFailure(code) => {
                format!("KVM could not emulate an instruction (internal error {code})")
            }
            CrashKind::InternalError(code) => format!("KVM internal error {code}"),
            CrashKind::FailEntry(reason) => {
                format!("VM entry failed (hardware reason {reason:#x})")
            }
            CrashKind::UnsupportedExit(code) => format!("unsupported VM exit {code}"),
            CrashKind::RunFailed => "KVM_RUN failed".to_string(),
        }
    }
}

/// What the vCPU loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Enter the guest again.
    Continue,
    /// The VM ends with this outcome.
    Finish(VmOutcome),
    /// This vCPU crashed; the loop collects its registers.
    Crash(CrashKind),
}

/// The result of dispatching one exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Its kind, for the observatory.
    pub kind: ExitKind,
    /// The device that handled it, and whether it was a write.
    pub device: Option<(DeviceId, bool)>,
    /// What happens next.
    pub flow: Flow,
}

impl Step {
    fn of(kind: ExitKind, flow: Flow) -> Self {
        Self {
            kind,
            device: None,
            flow,
        }
    }
}

impl ExitContext {
    /// Decodes and handles one exit.
    #[inline]
    pub fn dispatch(&self, exit: VmExit<'_>) -> Step {
        match exit {
            VmExit::IoIn { port, size, data } => {
                let mut step = Step::of(ExitKind::PioIn, Flow::Continue);
                // String I/O (`rep insb`) is several accesses of `size` bytes.
                for chunk in data.chunks_mut(usize::from(size.max(1))) {
                    step = self.read(
                        &self.pio,
                        AddressSpace::Pio,
                        u64::from(port),
                        chunk,
                        ExitKind::PioIn,
                    );
                }
                step
            }
            VmExit::IoOut { port, size, data } => {
                let mut step = Step::of(ExitKind::PioOut, Flow::Continue);
                for chunk in data.chunks(usize::from(size.max(1))) {
                    step = self.write(
                        &self.pio,
                        AddressSpace::Pio,
                        u64::from(port),
                        chunk,
                        ExitKind::PioOut,
                    );
                }
                step
            }
            VmExit::MmioRead { addr, data } => self.read(
                &self.mmio,
                AddressSpace::Mmio,
                addr,
                data,
                ExitKind::MmioRead,
            ),
            VmExit::MmioWrite { addr, data } => self.write(
                &self.mmio,
                AddressSpace::Mmio,
                addr,
                data,
                ExitKind::MmioWrite,
            ),
            VmExit::Interrupted => Step::of(ExitKind::Interrupted, Flow::Continue),
            VmExit::Hlt => Step::of(ExitKind::Hlt, Flow::Continue),
            VmExit::IrqWindowOpen => Step::of(ExitKind::IrqWindowOpen, Flow::Continue),
            VmExit::Shutdown => Step::of(ExitKind::Shutdown, Flow::Crash(CrashKind::TripleFault)),
            VmExit::SystemEvent(event) => {
                let flow = match event {
                    SystemEventKind::Reset => Flow::Finish(VmOutcome::Reset),
                    SystemEventKind::Shutdown => Flow::Finish(VmOutcome::Shutdown),
                    SystemEventKind::Crash => Flow::Finish(VmOutcome::GuestPanic),
                    SystemEventKind::Other(code) => Flow::Crash(CrashKind::UnsupportedExit(code)),
                };
                Step::of(ExitKind::SystemEvent, flow)
            }
            VmExit::InternalError {
                suberror,
                emulation,
            } => {
                let crash = if emulation {
                    CrashKind::EmulationFailure(suberror)
                } else {
                    CrashKind::InternalError(suberror)
                };
                Step::of(ExitKind::InternalError, Flow::Crash(crash))
            }
            VmExit::FailEntry { reason } => Step::of(
                ExitKind::FailEntry,
                Flow::Crash(CrashKind::FailEntry(reason)),
            ),
            VmExit::Unsupported(code) => Step::of(
                ExitKind::Other,
                Flow::Crash(CrashKind::UnsupportedExit(code)),
            ),
        }
    }

    #[inline]
    fn read(
        &self,
        bus: &Bus,
        space: AddressSpace,
        addr: u64,
        data: &mut [u8],
        kind: ExitKind,
    ) -> Step {
        match bus.find(addr) {
            Some(hit) => {
                hit.device.read(hit.offset, data);
                Step {
                    kind,
                    device: Some((hit.id, false)),
                    flow: Flow::Continue,
                }
            }
            None => {
                data.fill(0xff);
                self.unclaimed(space, addr, false);
                Step::of(kind, Flow::Continue)
            }
        }
    }

    #[inline]
    fn write(
        &self,
        bus: &Bus,
        space: AddressSpace,
        addr: u64,
        data: &[u8],
        kind: ExitKind,
    ) -> Step {
        match bus.find(addr) {
            Some(hit) => {
                hit.device.write(hit.offset, data);
                Step {
                    kind,
                    device: Some((hit.id, true)),
                    flow: Flow::Continue,
                }
            }
            None => {
                self.unclaimed(space, addr, true);
                Step::of(kind, Flow::Continue)
            }
        }
    }

    #[cold]
    fn unclaimed(&self, space: AddressSpace, addr: u64, is_write: bool) {
        let seen = self.obs.record_unknown(space, addr, is_write);
        if seen <= UNKNOWN_LOG_LIMIT {
            let what = if is_write { "write to" } else { "read of" };
            let space = match space {
                AddressSpace::Pio => "port",
                AddressSpace::Mmio => "MMIO address",
            };
            tracing::info!("guest {what} unclaimed {space} {addr:#x} ({seen} so far)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sie_devices::BusDevice;
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    struct Latch(Mutex<Vec<u8>>);

    impl BusDevice for Latch {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&self, _offset: u64, data: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }

    fn context() -> (ExitContext, Arc<Latch>) {
        let latch = Arc::new(Latch::default());
        let mut pio = Bus::default();
        pio.insert(0x3f8, 8, latch.clone(), DeviceId(0)).unwrap();
        let mut mmio = Bus::default();
        mmio.insert(0xc000_0000, 0x1000, latch.clone(), DeviceId(1))
            .unwrap();
        let obs = Arc::new(Observatory::new(
            Instant::now(),
            1,
            vec!["com1".into(), "timer".into()],
        ));
        (ExitContext { pio, mmio, obs }, latch)
    }

    #[test]
    fn port_io_reaches_the_device_with_its_offset() {
        let (ctx, latch) = context();
        let step = ctx.dispatch(VmExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"A",
        });
        assert_eq!(step.kind, ExitKind::PioOut);
        assert_eq!(step.device, Some((DeviceId(0), true)));
        assert_eq!(step.flow, Flow::Continue);
        assert_eq!(*latch.0.lock().unwrap(), b"A");
        let mut data = [0u8; 1];
        let step = ctx.dispatch(VmExit::IoIn {
            port: 0x3fd,
            size: 1,
            data: &mut data,
        });
        assert_eq!((step.kind, data[0]), (ExitKind::PioIn, 6));
    }

    #[test]
    fn string_io_is_split_into_accesses_of_its_size() {
        let (ctx, latch) = context();
        ctx.dispatch(VmExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"abc",
        });
        assert_eq!(*latch.0.lock().unwrap(), b"abc");
        let mut data = [0u8; 4];
        ctx.dispatch(VmExit::IoIn {
            port: 0x3f9,
            size: 2,
            data: &mut data,
        });
        assert_eq!(data, [2, 2, 2, 2]);
    }

    #[test]
    fn unclaimed_reads_return_all_ones_and_are_counted() {
        let (ctx, _) = context();
        let mut data = [0u8; 4];
        let step = ctx.dispatch(VmExit::MmioRead {
            addr: 0xd000_0000,
            data: &mut data,
        });
        assert_eq!(data, [0xff; 4]);
        assert_eq!(step.device, None);
        let step = ctx.dispatch(VmExit::IoOut {
            port: 0x99,
            size: 1,
            data: &[1],
        });
        assert_eq!(step.kind, ExitKind::PioOut);
        let report = ctx.obs.report();
        assert_eq!(report.unknown.len(), 2);
    }

    #[test]
    fn fatal_exits_are_classified() {
        let (ctx, _) = context();
        assert_eq!(
            ctx.dispatch(VmExit::Shutdown).flow,
            Flow::Crash(CrashKind::TripleFault)
        );
        assert_eq!(
            ctx.dispatch(VmExit::SystemEvent(SystemEventKind::Reset))
                .flow,
            Flow::Finish(VmOutcome::Reset)
        );
        assert_eq!(
            ctx.dispatch(VmExit::InternalError {
                suberror: 1,
                emulation: true
            })
            .flow,
            Flow::Crash(CrashKind::EmulationFailure(1))
        );
        assert_eq!(ctx.dispatch(VmExit::Interrupted).flow, Flow::Continue);
        assert_eq!(ctx.dispatch(VmExit::Unsupported(99)).kind, ExitKind::Other);
    }
}
