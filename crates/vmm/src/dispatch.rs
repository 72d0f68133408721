//! The exit dispatch: the one place where every VM exit is decoded, routed
//! to a device, counted and timed ([`ExitContext::run_once`]).
//!
//! It runs on the vCPU thread between two `KVM_RUN`s, so it allocates
//! nothing and takes no lock except inside the device it routes to (and the
//! observatory's slow path for addresses no device claims). Two clock reads
//! per exit: when the guest left, and when the exit was handled; the second
//! doubles as the next entry time.

use std::sync::Arc;
use std::time::Instant;

use sie_devices::Bus;
use sie_hv::{DebugExit, SystemEventKind, Vcpu, VmExit};
use sie_obs::{AddressSpace, DeviceStats, ExitKind, Observatory, VcpuStats};

use crate::debug_stop::DebugStops;
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
    /// Where debug exits are reported to the gdb stub.
    pub debug: Arc<DebugStops>,
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
    /// A debug event the gdb stub armed: the vCPU pauses and says so.
    DebugStop(DebugExit),
}

/// The result of dispatching one exit.
#[derive(Clone, Debug)]
pub struct Step<'a> {
    /// Its kind, for the observatory.
    pub kind: ExitKind,
    /// The statistics of the device that handled it, and whether it was a write.
    pub device: Option<(&'a DeviceStats, bool)>,
    /// What happens next.
    pub flow: Flow,
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

impl Step<'_> {
    fn of(kind: ExitKind, flow: Flow) -> Self {
        Self {
            kind,
            device: None,
            flow,
        }
    }
}

impl ExitContext {
    /// Enters the guest once and handles the exit it comes back with:
    /// decoded, routed, counted and timed here and nowhere else. `entered`
    /// is when the vCPU entered the guest; it is moved to the end of the
    /// handling, which is when the vCPU enters again. A `KVM_RUN` that fails
    /// counts as an exit of kind `Other` and crashes the vCPU.
    #[inline]
    pub fn run_once(&self, vcpu: &mut dyn Vcpu, stats: &VcpuStats, entered: &mut Instant) -> Flow {
        let result = vcpu.run();
        let left = Instant::now();
        let (kind, device, flow) = match result {
            Ok(exit) => {
                let step = self.dispatch(exit);
                (step.kind, step.device, step.flow)
            }
            Err(error) => {
                tracing::error!("KVM_RUN failed: {error}");
                (ExitKind::Other, None, Flow::Crash(CrashKind::RunFailed))
            }
        };
        let handled = Instant::now();
        let handling_ns = nanos(left, handled);
        stats.record(kind, nanos(*entered, left), handling_ns);
        if let Some((device, is_write)) = device {
            device.record(is_write, handling_ns);
        }
        *entered = handled;
        flow
    }

    /// Decodes and routes one exit (without timing it: see `run_once`).
    #[inline]
    pub fn dispatch<'a>(&'a self, exit: VmExit<'_>) -> Step<'a> {
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
            VmExit::Debug(exit) => Step::of(ExitKind::Other, Flow::DebugStop(exit)),
            VmExit::Unsupported(code) => Step::of(
                ExitKind::Other,
                Flow::Crash(CrashKind::UnsupportedExit(code)),
            ),
        }
    }

    #[inline]
    fn read<'a>(
        &'a self,
        bus: &'a Bus,
        space: AddressSpace,
        addr: u64,
        data: &mut [u8],
        kind: ExitKind,
    ) -> Step<'a> {
        match bus.find(addr) {
            Some(hit) => {
                hit.device.read(hit.offset, data);
                Step {
                    kind,
                    device: Some((hit.stats, false)),
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
    fn write<'a>(
        &'a self,
        bus: &'a Bus,
        space: AddressSpace,
        addr: u64,
        data: &[u8],
        kind: ExitKind,
    ) -> Step<'a> {
        match bus.find(addr) {
            Some(hit) => {
                hit.device.write(hit.offset, data);
                Step {
                    kind,
                    device: Some((hit.stats, true)),
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
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let mut pio = Bus::default();
        pio.insert(0x3f8, 8, latch.clone(), obs.register_device("com1"))
            .unwrap();
        let mut mmio = Bus::default();
        mmio.insert(
            0xc000_0000,
            0x1000,
            latch.clone(),
            obs.register_device("timer"),
        )
        .unwrap();
        (
            ExitContext {
                pio,
                mmio,
                obs,
                debug: Default::default(),
            },
            latch,
        )
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
        assert!(matches!(step.device, Some((_, true))));
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
        assert!(step.device.is_none());
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
        let debug = DebugExit {
            exception: 1,
            pc: 0x1000,
            dr6: 1 << 14,
            dr7: 0,
        };
        assert_eq!(
            ctx.dispatch(VmExit::Debug(debug)).flow,
            Flow::DebugStop(debug)
        );
        assert_eq!(ctx.dispatch(VmExit::Unsupported(99)).kind, ExitKind::Other);
    }
}
