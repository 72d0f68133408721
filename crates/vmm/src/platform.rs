//! The legacy PC platform: the devices every sie guest gets, placed by the
//! device manager at their conventional ports and ISA interrupt lines, and
//! described to the guest (COM1, the keyboard controller, pvpanic) in the
//! DSDT.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sie_arch::acpi::AcpiDevice;
use sie_devices::legacy::{
    BOOT_TIMER_LEN, BootTimer, COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, COM3_IRQ, COM3_PORT,
    COM4_IRQ, COM4_PORT, DEBUG_PORT, DEBUG_PORT_LEN, DebugPort, I8042_COMMAND_PORT, I8042_IRQ,
    I8042_PORT, I8042_PORT_LEN, I8042Device, I8042State, MarkerSink, PVPANIC_PORT,
    PVPANIC_PORT_LEN, PvPanic, RTC_IRQ, RTC_PORT, RTC_PORT_LEN, Rtc, RtcState, SERIAL_PORT_LEN,
    SerialDevice, SerialDeviceState,
};
use sie_devices::{BusDevice, Interrupt};
use sie_obs::Observatory;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::console::ConsoleOutput;
use crate::console::input::SerialInput;
use crate::control::VmControl;
use crate::device_manager::DeviceManager;
use crate::error::{Result, VmmError};

/// A device added by the caller on the port bus (benchmarks use one).
pub struct ExtraDevice {
    /// Name in reports.
    pub name: &'static str,
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u64,
    /// The device.
    pub device: Arc<dyn BusDevice>,
}

/// The legacy devices' state as a snapshot keeps it (pvpanic, the debug
/// port and the boot timer have none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformState {
    /// COM1 to COM4.
    pub uarts: Vec<SerialDeviceState>,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// The CMOS RTC.
    pub rtc: RtcState,
}

/// Devices the event loop and the API reach directly.
pub struct PlatformDevices {
    /// COM1, the console.
    pub com1: Arc<SerialDevice>,
    /// COM2 to COM4 (kept for snapshots).
    quiet_uarts: Vec<Arc<SerialDevice>>,
    /// The CMOS RTC (kept for snapshots).
    rtc: Arc<Rtc>,
    /// The keyboard controller (`SendCtrlAltDel`).
    pub i8042: Arc<I8042Device>,
    /// Where COM1's output goes.
    pub console: ConsoleOutput,
    /// Signalled when the guest drained COM1's receive buffer.
    input_room: EventFd,
}

impl SerialInput for SerialDevice {
    fn enqueue(&self, bytes: &[u8]) -> usize {
        self.enqueue_input(bytes)
    }
}

impl PlatformDevices {
    /// The devices' state, for a snapshot (vCPUs paused).
    pub fn state(&self) -> PlatformState {
        PlatformState {
            uarts: std::iter::once(&self.com1)
                .chain(&self.quiet_uarts)
                .map(|uart| uart.state())
                .collect(),
            i8042: self.i8042.state(),
            rtc: self.rtc.state(),
        }
    }

    /// Puts saved state back (before the vCPUs run). Every device checks
    /// its own; the first refusal is the error.
    pub fn restore(&self, state: &PlatformState) -> Result<()> {
        let refused = |what: &str, error: &dyn std::error::Error| VmmError::Device {
            name: what.to_string(),
            source: error.to_string().into(),
        };
        let uarts: Vec<&Arc<SerialDevice>> = std::iter::once(&self.com1)
            .chain(&self.quiet_uarts)
            .collect();
        if state.uarts.len() != uarts.len() {
            return Err(VmmError::Device {
                name: "serial ports".to_string(),
                source: format!(
                    "the snapshot has {} UARTs, the VM {}",
                    state.uarts.len(),
                    uarts.len()
                )
                .into(),
            });
        }
        for (uart, saved) in uarts.into_iter().zip(&state.uarts) {
            uart.restore(saved)
                .map_err(|e| refused("a serial port", &e))?;
        }
        self.i8042
            .restore(&state.i8042)
            .map_err(|e| refused("i8042", &e))?;
        self.rtc
            .restore(&state.rtc)
            .map_err(|e| refused("rtc", &e))?;
        Ok(())
    }

    /// COM1's input side and its "input room" eventfd, for stdin or the
    /// console socket (when COM1 carries the console).
    pub fn serial_input(&self) -> Option<(Arc<dyn SerialInput>, EventFd)> {
        let room = self.input_room.try_clone().ok()?;
        Some((self.com1.clone(), room))
    }
}

/// Creates the legacy devices and places them with `manager`.
pub fn create(
    manager: &mut DeviceManager<'_>,
    obs: &Arc<Observatory>,
    control: Arc<VmControl>,
    console: ConsoleOutput,
    extra_pio: Vec<ExtraDevice>,
) -> Result<PlatformDevices> {
    let host_error = |what| move |source| VmmError::Host { what, source };
    let input_room = EventFd::new(EFD_NONBLOCK).map_err(host_error("creating an eventfd"))?;
    let room_notifier: Arc<dyn Interrupt> = Arc::new(
        input_room
            .try_clone()
            .map_err(host_error("cloning an eventfd"))?,
    );
    let com1 = Arc::new(SerialDevice::new(
        manager.fixed_line(COM1_IRQ)?,
        Box::new(console.clone()),
        Some(room_notifier),
    ));
    manager.add_pio("com1", COM1_PORT, SERIAL_PORT_LEN, com1.clone())?;
    manager.describe(AcpiDevice::Serial {
        port: COM1_PORT,
        irq: COM1_IRQ,
    });
    // COM2–COM4 exist so Linux's probe finds quiet UARTs instead of
    // unclaimed ports; they are not described (nothing is behind them).
    let mut quiet_uarts = Vec::with_capacity(3);
    for (name, port, irq) in [
        ("com2", COM2_PORT, COM2_IRQ),
        ("com3", COM3_PORT, COM3_IRQ),
        ("com4", COM4_PORT, COM4_IRQ),
    ] {
        let uart = Arc::new(SerialDevice::silent(manager.fixed_line(irq)?));
        manager.add_pio(name, port, SERIAL_PORT_LEN, uart.clone())?;
        quiet_uarts.push(uart);
    }

    let i8042 = Arc::new(I8042Device::new(
        manager.fixed_line(I8042_IRQ)?,
        control.clone(),
    ));
    manager.add_pio("i8042", I8042_PORT, I8042_PORT_LEN, i8042.clone())?;
    manager.describe(AcpiDevice::Keyboard {
        data_port: I8042_PORT,
        command_port: I8042_COMMAND_PORT,
        irq: I8042_IRQ,
    });

    // Linux's rtc_cmos driver owns line 8 even though sie's RTC never
    // raises it: keep it from every other device.
    manager.reserve_gsi(RTC_IRQ)?;
    let rtc = Arc::new(Rtc::new());
    manager.add_pio("rtc", RTC_PORT, RTC_PORT_LEN, rtc.clone())?;

    let markers: Arc<dyn MarkerSink> = obs.clone();
    manager.add_pio(
        "debug-port",
        DEBUG_PORT,
        DEBUG_PORT_LEN,
        Arc::new(DebugPort::new(markers.clone())),
    )?;
    manager.add_pio(
        "pvpanic",
        PVPANIC_PORT,
        PVPANIC_PORT_LEN,
        Arc::new(PvPanic::new(control)),
    )?;
    manager.describe(AcpiDevice::PvPanic { port: PVPANIC_PORT });
    for extra in extra_pio {
        manager.add_pio(extra.name, extra.base, extra.len, extra.device)?;
    }
    manager.add_mmio(
        "boot-timer",
        Some(sie_arch::layout::BOOT_TIMER_ADDR),
        BOOT_TIMER_LEN,
        Arc::new(BootTimer::new(markers)),
    )?;

    Ok(PlatformDevices {
        com1,
        quiet_uarts,
        rtc,
        i8042,
        console,
        input_room,
    })
}
