//! The legacy PC platform: the devices every sie guest gets, their places on
//! the port and MMIO buses, and their interrupt lines (an eventfd per ISA
//! IRQ, registered with KVM as an irqfd).

use std::collections::BTreeMap;
use std::sync::Arc;

use sie_devices::legacy::{
    BOOT_TIMER_ADDR, BOOT_TIMER_LEN, BootTimer, COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, COM3_IRQ,
    COM3_PORT, COM4_IRQ, COM4_PORT, DEBUG_PORT, DEBUG_PORT_LEN, DebugPort, I8042_IRQ, I8042_PORT,
    I8042_PORT_LEN, I8042Device, LateMarkerSink, MarkerSink, PVPANIC_PORT, PVPANIC_PORT_LEN,
    PvPanic, RTC_PORT, RTC_PORT_LEN, Rtc, SERIAL_PORT_LEN, SerialDevice,
};
use sie_devices::{Bus, BusDevice, DeviceRegistry, Interrupt};
use sie_hv::Vm;
use sie_obs::Observatory;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::console::input::SerialInput;
use crate::console::{ConsoleInput, ConsoleOutput};
use crate::control::VmControl;
use crate::error::{Result, VmmError};

/// A device added by the caller on the port bus (benchmarks use one).
pub struct ExtraDevice {
    /// Name in reports.
    pub name: &'static str,
    /// First port.
    pub base: u64,
    /// Number of ports.
    pub len: u64,
    /// The device.
    pub device: Arc<dyn BusDevice>,
}

/// The buses and names the exit dispatch and observatory need.
pub struct Platform {
    /// Port bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Device names in id order.
    pub registry: DeviceRegistry,
    /// Devices the rest of the VMM talks to.
    pub devices: PlatformDevices,
}

/// Devices the event loop and the API reach directly.
pub struct PlatformDevices {
    /// COM1, the console.
    pub com1: Arc<SerialDevice>,
    /// The keyboard controller (Ctrl-Alt-Del, later).
    pub i8042: Arc<I8042Device>,
    /// Where COM1's output goes.
    pub console: ConsoleOutput,
    /// Signalled when the guest drained COM1's receive buffer.
    input_room: EventFd,
    /// Routes boot markers to the observatory once it exists.
    markers: Arc<LateMarkerSink>,
}

impl SerialInput for SerialDevice {
    fn enqueue(&self, bytes: &[u8]) -> usize {
        self.enqueue_input(bytes)
    }
}

impl PlatformDevices {
    /// Sends boot markers to `obs` from now on.
    pub fn set_observatory(&self, obs: &Arc<Observatory>) {
        let sink: Arc<dyn MarkerSink> = obs.clone();
        // Installing twice is a builder bug; the first target stays.
        let _ = self.markers.install(sink);
    }

    /// Console input from stdin to COM1, if an eventfd can be had.
    pub fn console_input(&self) -> Option<ConsoleInput> {
        let room = self.input_room.try_clone().ok()?;
        Some(ConsoleInput::new(
            libc::STDIN_FILENO,
            self.com1.clone(),
            room,
        ))
    }
}

fn device_error(name: &'static str) -> impl Fn(sie_devices::BusError) -> VmmError {
    move |error| VmmError::Device {
        name,
        source: Box::new(error),
    }
}

/// Creates the legacy devices on fresh buses.
pub fn create(
    vm: &dyn Vm,
    control: Arc<VmControl>,
    console: ConsoleOutput,
    extra_pio: Vec<ExtraDevice>,
) -> Result<Platform> {
    let host_error = |what| move |source| VmmError::Host { what, source };
    // One eventfd per ISA interrupt line, shared by the devices on it.
    let mut lines: BTreeMap<u32, Arc<EventFd>> = BTreeMap::new();
    for gsi in [COM1_IRQ, COM2_IRQ, COM3_IRQ, COM4_IRQ, I8042_IRQ] {
        if lines.contains_key(&gsi) {
            continue;
        }
        let fd = EventFd::new(EFD_NONBLOCK).map_err(host_error("creating an interrupt eventfd"))?;
        vm.register_irqfd(&fd, gsi)?;
        lines.insert(gsi, Arc::new(fd));
    }
    let line = |gsi: u32| -> Result<Arc<dyn Interrupt>> {
        lines
            .get(&gsi)
            .map(|fd| fd.clone() as Arc<dyn Interrupt>)
            .ok_or(VmmError::Unsupported(
                "an interrupt line sie did not create",
            ))
    };

    let input_room = EventFd::new(EFD_NONBLOCK).map_err(host_error("creating an eventfd"))?;
    let room_notifier: Arc<dyn Interrupt> = Arc::new(
        input_room
            .try_clone()
            .map_err(host_error("cloning an eventfd"))?,
    );
    let com1 = Arc::new(SerialDevice::new(
        line(COM1_IRQ)?,
        Box::new(console.clone()),
        Some(room_notifier),
    ));
    let i8042 = Arc::new(I8042Device::new(line(I8042_IRQ)?, control.clone()));
    let markers = Arc::new(LateMarkerSink::new());

    let mut registry = DeviceRegistry::default();
    let mut pio = Bus::default();
    let mut mmio = Bus::default();
    let mut put_pio = |name: &'static str, base: u16, len: u64, device: Arc<dyn BusDevice>| {
        let id = registry.register(name);
        pio.insert(u64::from(base), len, device, id)
            .map_err(device_error(name))
    };
    put_pio("com1", COM1_PORT, SERIAL_PORT_LEN, com1.clone())?;
    put_pio(
        "com2",
        COM2_PORT,
        SERIAL_PORT_LEN,
        Arc::new(SerialDevice::silent(line(COM2_IRQ)?)),
    )?;
    put_pio(
        "com3",
        COM3_PORT,
        SERIAL_PORT_LEN,
        Arc::new(SerialDevice::silent(line(COM3_IRQ)?)),
    )?;
    put_pio(
        "com4",
        COM4_PORT,
        SERIAL_PORT_LEN,
        Arc::new(SerialDevice::silent(line(COM4_IRQ)?)),
    )?;
    put_pio("i8042", I8042_PORT, I8042_PORT_LEN, i8042.clone())?;
    put_pio("rtc", RTC_PORT, RTC_PORT_LEN, Arc::new(Rtc::new()))?;
    put_pio(
        "debug-port",
        DEBUG_PORT,
        DEBUG_PORT_LEN,
        Arc::new(DebugPort::new(markers.clone())),
    )?;
    put_pio(
        "pvpanic",
        PVPANIC_PORT,
        PVPANIC_PORT_LEN,
        Arc::new(PvPanic::new(control)),
    )?;
    for extra in extra_pio {
        let id = registry.register(extra.name);
        pio.insert(extra.base, extra.len, extra.device, id)
            .map_err(device_error(extra.name))?;
    }
    let timer_id = registry.register("boot-timer");
    mmio.insert(
        BOOT_TIMER_ADDR,
        BOOT_TIMER_LEN,
        Arc::new(BootTimer::new(markers.clone())),
        timer_id,
    )
    .map_err(device_error("boot-timer"))?;

    Ok(Platform {
        pio,
        mmio,
        registry,
        devices: PlatformDevices {
            com1,
            i8042,
            console,
            input_room,
            markers,
        },
    })
}
