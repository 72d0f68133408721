//! The virtio-PCI transport, modern interface only (virtio 1.x §4.1): a
//! [`sie_pci::PciDevice`] around a [`VirtioCore`].
//!
//! Wiring (done by the VMM):
//! 1. implement [`sie_pci::MsiInterrupts`] with
//!    [`VirtioPciDevice::vectors_needed`] vectors (KVM MSI routes and
//!    irqfds) and build `VirtioPciDevice::new(device, mem, msi)`;
//! 2. add it to the [`sie_pci::PciRoot`], whose allocator callback places
//!    BAR 0 ([`BAR_SIZE`] bytes, 64-bit); the root then calls
//!    [`sie_pci::PciDevice::bar_moved`], and the device registers one
//!    ioeventfd per queue through the VMM's [`sie_pci::BarMapper`] (any
//!    width, no datamatch) at [`VirtioPciDevice::ioevents`]' addresses,
//!    and moves them whenever the guest moves BAR 0;
//! 3. add a [`crate::VirtioWorker`] for it to the event manager.
//!
//! A notification written through the bus instead (no ioeventfd) signals
//! the same eventfd; one for a queue that does not exist is counted and
//! ignored. Interrupts go to the MSI-X vector the driver chose (see
//! `vectors`): there is no INTx pin. Snapshots of virtio-PCI devices are
//! not supported.
//!
//! Locks: the core's state lock, then the MSI-X table's (a device raising
//! an interrupt while serving a queue); the configuration-space lock, then
//! the MSI-X table's (a write of MSI-X's message control). The MSI-X lock
//! is always the last taken, and the configuration and state locks are
//! never held together (an access through the PCI configuration window
//! drops the first before the BAR access takes the second).

mod common_cfg;
mod layout;
mod vectors;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sie_pci::{
    AddressSpace, BarInfo, BarKind, BarMapper, BarMove, ConfigSpace, ConfigWriteOutcome,
    MsiInterrupts, MsixCapability, MsixTable, PciDevice,
};
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
};
use vmm_sys_util::eventfd::EventFd;

pub use layout::{
    BAR_INDEX, BAR_SIZE, COMMON_LEN, COMMON_OFFSET, DEVICE_CONFIG_OFFSET, ISR_OFFSET, MAX_QUEUES,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NO_VECTOR, NOTIFY_MULTIPLIER, NOTIFY_OFFSET, REGION_LEN,
    VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_PCI_VENDOR_ID, common,
};

use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::transport_core::{TransportError, VirtioCore};
use crate::worker::VirtioTransport;
use layout::{PCI_CFG_BAR, PCI_CFG_DATA, PCI_CFG_LENGTH, PCI_CFG_OFFSET};
use vectors::VectorRoutes;

/// The configuration space and where its capabilities are.
struct PciConfig {
    space: ConfigSpace,
    msix: MsixCapability,
    pci_cfg: u16,
}

/// A virtio device on PCI. Derefs to its [`VirtioCore`].
pub struct VirtioPciDevice<D> {
    core: Arc<VirtioCore<D>>,
    config: Mutex<PciConfig>,
    msix: Arc<Mutex<MsixTable>>,
    vectors: Arc<VectorRoutes>,
    /// Where BAR 0 decodes, as the root last told us.
    bar_base: Mutex<Option<u64>>,
    name: &'static str,
}

impl<D> std::ops::Deref for VirtioPciDevice<D> {
    type Target = VirtioCore<D>;

    fn deref(&self) -> &VirtioCore<D> {
        &self.core
    }
}

impl<D: VirtioDevice> VirtioTransport<D> for VirtioPciDevice<D> {
    fn core(&self) -> &Arc<VirtioCore<D>> {
        &self.core
    }
}

fn setup(error: impl std::fmt::Display) -> TransportError {
    TransportError::Setup(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// MSI-X vectors a device needs: one per queue and one for
    /// configuration changes.
    pub fn vectors_needed(device: &D) -> u16 {
        device.queue_max_sizes().len().min(MAX_QUEUES) as u16 + 1
    }

    /// Wraps `device`, whose queues live in `mem` and whose MSI-X vectors
    /// go to `msi` (at least [`Self::vectors_needed`] of them).
    pub fn new(
        device: D,
        mem: GuestMemory,
        msi: Arc<dyn MsiInterrupts>,
    ) -> Result<Self, TransportError> {
        let queues = device.queue_max_sizes().len();
        if queues > MAX_QUEUES {
            return Err(TransportError::InvalidQueues);
        }
        if device.config_len() as u64 > REGION_LEN {
            return Err(setup("device configuration larger than a page"));
        }
        let vector_count = Self::vectors_needed(&device);
        let device_type = device.device_type();
        let mut space = ConfigSpace::new(layout::header(device_type));
        space
            .add_bar(
                BAR_INDEX,
                BarKind::Memory64 {
                    prefetchable: false,
                },
                BAR_SIZE,
            )
            .map_err(setup)?;
        let pci_cfg =
            layout::add_capabilities(&mut space, queues, device.config_len()).map_err(setup)?;
        let msix_cap = MsixCapability::add(
            &mut space,
            vector_count,
            (BAR_INDEX, MSIX_TABLE_OFFSET as u32),
            (BAR_INDEX, MSIX_PBA_OFFSET as u32),
        )
        .map_err(setup)?;
        let msix = Arc::new(Mutex::new(
            MsixTable::new(vector_count, msi).map_err(setup)?,
        ));
        let vectors = Arc::new(VectorRoutes::new(Arc::clone(&msix), queues));
        let core = VirtioCore::new(device, mem, vectors.clone())?;
        Ok(Self {
            core: Arc::new(core),
            config: Mutex::new(PciConfig {
                space,
                msix: msix_cap,
                pci_cfg,
            }),
            msix,
            vectors,
            bar_base: Mutex::new(None),
            name: name_of(device_type),
        })
    }

    /// The guest address of queue `queue`'s notification with BAR 0 at
    /// `bar_base`.
    pub fn notify_address(bar_base: u64, queue: usize) -> u64 {
        bar_base + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_MULTIPLIER)
    }

    /// Each queue's notification address and eventfd where BAR 0 decodes
    /// now (empty while it decodes nowhere). The device registers them
    /// itself through the root's [`BarMapper`]; this is for diagnostics
    /// and for a VMM that registers them another way.
    pub fn ioevents(&self) -> Vec<(u64, &EventFd)> {
        let Some(base) = *lock(&self.bar_base) else {
            return Vec::new();
        };
        self.core
            .queue_events()
            .iter()
            .enumerate()
            .map(|(queue, event)| (Self::notify_address(base, queue), event))
            .collect()
    }

    /// MSI-X table and PBA accesses refused so far.
    pub fn msix_rejected_accesses(&self) -> u64 {
        lock(&self.msix).rejected_accesses()
    }

    fn read_region(&self, offset: u64, data: &mut [u8]) -> bool {
        let (region, within) = (offset / REGION_LEN * REGION_LEN, offset % REGION_LEN);
        match region {
            COMMON_OFFSET => common_cfg::read(&self.core, &self.vectors, within, data),
            ISR_OFFSET if within == 0 && data.len() == 1 => {
                data[0] = self.vectors.take_isr();
                true
            }
            DEVICE_CONFIG_OFFSET => self.core.read_config(within, data),
            MSIX_TABLE_OFFSET => {
                lock(&self.msix).read_table(within, data);
                true
            }
            MSIX_PBA_OFFSET => {
                lock(&self.msix).read_pba(within, data);
                true
            }
            _ => false,
        }
    }

    fn write_region(&self, offset: u64, data: &[u8]) -> bool {
        let (region, within) = (offset / REGION_LEN * REGION_LEN, offset % REGION_LEN);
        match region {
            COMMON_OFFSET => common_cfg::write(&self.core, &self.vectors, within, data),
            DEVICE_CONFIG_OFFSET => self.core.write_config(within, data),
            NOTIFY_OFFSET => self
                .core
                .notify((within / u64::from(NOTIFY_MULTIPLIER)) as usize),
            MSIX_TABLE_OFFSET => {
                lock(&self.msix).write_table(within, data);
                true
            }
            MSIX_PBA_OFFSET => {
                lock(&self.msix).write_pba(within, data);
                true
            }
            _ => false,
        }
    }

    /// The BAR access the PCI configuration access capability describes
    /// (§4.1.4.9): BAR 0 only, 1, 2 or 4 bytes, aligned.
    fn pci_cfg_target(config: &PciConfig) -> Option<(u64, usize)> {
        let cap = config.pci_cfg;
        let bar = config.space.read_u8(cap + PCI_CFG_BAR);
        let offset = config.space.read_u32(cap + PCI_CFG_OFFSET);
        let length = config.space.read_u32(cap + PCI_CFG_LENGTH) as usize;
        let ok = bar == BAR_INDEX
            && matches!(length, 1 | 2 | 4)
            && (offset as usize).is_multiple_of(length)
            && u64::from(offset) + length as u64 <= BAR_SIZE;
        ok.then_some((u64::from(offset), length))
    }

    /// Whether a configuration access at `offset` touches the PCI
    /// configuration access window.
    fn in_pci_cfg_data(config: &PciConfig, offset: u16, len: usize) -> bool {
        let data = config.pci_cfg + PCI_CFG_DATA;
        offset < data + 4 && offset + len as u16 > data
    }
}

/// The name of a device type in logs.
fn name_of(device_type: u32) -> &'static str {
    match device_type {
        VIRTIO_ID_BLOCK => "virtio-blk (PCI)",
        VIRTIO_ID_NET => "virtio-net (PCI)",
        VIRTIO_ID_VSOCK => "virtio-vsock (PCI)",
        VIRTIO_ID_RNG => "virtio-rng (PCI)",
        VIRTIO_ID_CONSOLE => "virtio-console (PCI)",
        _ => "virtio (PCI)",
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciDevice<D> {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        let mut config = lock(&self.config);
        if Self::in_pci_cfg_data(&config, offset, data.len())
            && let Some((bar_offset, length)) = Self::pci_cfg_target(&config)
        {
            // Fill the window from the BAR first, without holding the
            // configuration lock across the BAR access.
            drop(config);
            let mut window = [0u8; 4];
            self.read_bar(BAR_INDEX, bar_offset, &mut window[..length]);
            config = lock(&self.config);
            let at = config.pci_cfg + PCI_CFG_DATA;
            for (i, byte) in window.iter().enumerate() {
                config.space.set_u8(at + i as u16, *byte);
            }
        }
        config.space.read(offset, data);
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        let mut config = lock(&self.config);
        let outcome = config.space.write(offset, data);
        if Self::in_pci_cfg_data(&config, offset, data.len())
            && let Some((bar_offset, length)) = Self::pci_cfg_target(&config)
        {
            let at = config.pci_cfg + PCI_CFG_DATA;
            let window: Vec<u8> = (0..length as u16)
                .map(|i| config.space.read_u8(at + i))
                .collect();
            drop(config);
            self.write_bar(BAR_INDEX, bar_offset, &window);
            return outcome;
        }
        // Applied under the configuration lock, so two vCPUs writing the
        // control register leave the table as the last write says.
        let control = config.msix.control(&config.space);
        lock(&self.msix).set_control(control);
        outcome
    }

    fn read_bar(&self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != BAR_INDEX || !self.read_region(offset, data) {
            data.fill(0);
            self.core.shared_counters().invalid_access();
        }
    }

    fn write_bar(&self, bar: u8, offset: u64, data: &[u8]) {
        if bar != BAR_INDEX || !self.write_region(offset, data) {
            self.core.shared_counters().invalid_access();
        }
    }

    fn bars(&self) -> Vec<BarInfo> {
        lock(&self.config).space.bars()
    }

    fn bar_moved(&self, moved: &BarMove, mapper: &dyn BarMapper) -> io::Result<()> {
        if moved.index != BAR_INDEX {
            return Ok(());
        }
        *lock(&self.bar_base) = moved.to;
        // All off the old place first, so a move onto an overlapping
        // range never registers an address twice.
        let events = self.core.queue_events();
        let mut result = Ok(());
        if let Some(from) = moved.from {
            for (queue, event) in events.iter().enumerate() {
                let addr = Self::notify_address(from, queue);
                result =
                    result.and(mapper.unregister_ioevent(event, AddressSpace::Memory, addr, 0));
            }
        }
        if let Some(to) = moved.to {
            for (queue, event) in events.iter().enumerate() {
                let addr = Self::notify_address(to, queue);
                result = result.and(mapper.register_ioevent(event, AddressSpace::Memory, addr, 0));
            }
        }
        result
    }

    fn name(&self) -> &str {
        self.name
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
