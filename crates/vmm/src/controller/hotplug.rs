//! `PUT /drives/{id}` and `PUT /network-interfaces/{id}` after boot: with
//! PCI and a new id, the device is built on the `sie-hotplug` thread,
//! plugged into a free slot (the guest hears of it through ACPI) and served
//! like any other; otherwise refused as boot-only requests always were.
//!
//! `DELETE` on either unplugs a device added that way: the guest is asked
//! to eject it and the answer comes once it has let go (the device off the
//! bus, its worker out of the event loop) or after [`UNPLUG_TIMEOUT`] with
//! an error (the request stays pending; a later `DELETE` waits again).
//! The event loop waits meanwhile; a virtio driver going away sends no
//! requests that would need it.

use std::time::Duration;

use event_manager::SubscriberOps;
use sie_config::{Drive, NetworkInterface, Request, Response};

use super::phase_faults::AFTER_START;
use super::{Controller, Phase};
use crate::drive_hotplug::{Plugged, plug_drive, plug_net};
use crate::event_loop::Manager;
use crate::vm::StartedVm;

/// How long `DELETE` waits for the guest to let go.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of device a hotplug request is about.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Drive,
    Net,
}

impl Kind {
    /// The API section, as fault messages start.
    fn section(self) -> &'static str {
        match self {
            Kind::Drive => "drives",
            Kind::Net => "network-interfaces",
        }
    }

    fn bus_name(self, id: &str) -> String {
        match self {
            Kind::Drive => format!("virtio-blk:{id}"),
            Kind::Net => format!("virtio-net:{id}"),
        }
    }

    fn key(self, id: &str) -> String {
        format!("{}/{id}", self.section())
    }
}

impl Controller {
    /// The running VM's hotplug parts, when it has PCI.
    fn hotplug_parts(
        &mut self,
    ) -> Option<(
        &mut StartedVm,
        std::sync::Arc<crate::device_manager::hotplug::PciHotplug>,
    )> {
        let Phase::Running(vm) = &mut self.phase else {
            return None;
        };
        self.hotplug_worker.as_ref()?;
        let hotplug = vm.pci_hotplug.clone()?;
        Some((vm, hotplug))
    }

    pub(super) fn hotplug_drive(&mut self, drive: Drive, manager: &mut Manager) -> Response {
        // An id the VM has: refused as before.
        if self.draft.drive(&drive.drive_id).is_some() {
            return Response::fault(AFTER_START);
        }
        if drive.is_root_device && self.hotplug_parts().is_some() {
            return Response::fault("drives: a drive added after boot cannot be the root device");
        }
        let request = Request::PutDrive(drive.clone());
        let id = drive.drive_id.clone();
        let seccomp = self.options.seccomp.clone();
        self.hotplug(
            Kind::Drive,
            &id,
            &request,
            manager,
            move |vm, memory, hotplug| plug_drive(&drive, vm, memory, hotplug, seccomp),
        )
        .map(|(vm, plugged)| vm.virtio.blocks.push((id, plugged)))
        .map_or_else(Response::Fault, |()| Response::NoContent)
    }

    pub(super) fn hotplug_nic(&mut self, nic: NetworkInterface, manager: &mut Manager) -> Response {
        if self.draft.has_network_interface(&nic.iface_id) {
            return Response::fault(AFTER_START);
        }
        let request = Request::PutNetworkInterface(nic.clone());
        let id = nic.iface_id.clone();
        self.hotplug(
            Kind::Net,
            &id,
            &request,
            manager,
            move |vm, memory, hotplug| plug_net(&nic, vm, memory, hotplug),
        )
        .map(|(vm, plugged)| vm.virtio.nets.push((id, plugged)))
        .map_or_else(Response::Fault, |()| Response::NoContent)
    }

    /// Checks `request` as before boot, builds and plugs the device with
    /// `build` on the hotplug thread, adds its worker to the event loop.
    /// Returns the VM and the device's core for the caller to file.
    fn hotplug<D: sie_virtio::VirtioDevice + 'static>(
        &mut self,
        kind: Kind,
        id: &str,
        request: &Request,
        manager: &mut Manager,
        build: impl FnOnce(
            std::sync::Arc<dyn sie_hv::Vm>,
            sie_hv::GuestMemory,
            &crate::device_manager::hotplug::PciHotplug,
        ) -> crate::error::Result<Plugged<D>>
        + Send
        + 'static,
    ) -> Result<(&mut StartedVm, std::sync::Arc<sie_virtio::VirtioCore<D>>), String> {
        // Without PCI: refused as before.
        if self.hotplug_parts().is_none() {
            return Err(AFTER_START.to_string());
        }
        // The same checks as before boot, on a copy kept only on success.
        let mut draft = self.draft.clone();
        if let Some(Response::Fault(message)) = draft.apply(request) {
            return Err(message);
        }
        let Some(worker) = self.hotplug_worker.as_ref() else {
            return Err(AFTER_START.to_string());
        };
        let Phase::Running(vm) = &mut self.phase else {
            return Err(AFTER_START.to_string());
        };
        let Some(hotplug) = vm.pci_hotplug.clone() else {
            return Err(AFTER_START.to_string());
        };
        let hv_vm = vm.hv_vm_shared();
        let memory = vm.memory().clone();
        let plugged = worker
            .run(move || build(hv_vm, memory, &hotplug))
            .and_then(|plugged| plugged)
            .map_err(|error| {
                format!(
                    "{}: hotplugging {id}: {}",
                    kind.section(),
                    crate::error::error_chain(&error)
                )
            })?;
        tracing::info!(id, slot = plugged.slot, "{} hotplugged", kind.section());
        let subscriber = manager.add_subscriber(plugged.worker);
        self.hotplugged
            .insert(kind.key(id), (plugged.slot, subscriber));
        vm.virtio.stats.push(plugged.stats);
        self.draft = draft;
        Ok((vm, plugged.core))
    }

    pub(super) fn unplug(&mut self, kind: Kind, id: &str, manager: &mut Manager) -> Response {
        let section = kind.section();
        if !matches!(self.phase, Phase::Running(_)) {
            return Response::Fault(format!(
                "{section}: DELETE removes a device added after boot; the VM has not started"
            ));
        }
        let Some((_, hotplug)) = self.hotplug_parts() else {
            return Response::Fault(format!(
                "{section}: removing a device needs a VM with PCI (--enable-pci)"
            ));
        };
        let Some(&(slot, subscriber)) = self.hotplugged.get(&kind.key(id)) else {
            let known = match kind {
                Kind::Drive => self.draft.drive(id).is_some(),
                Kind::Net => self.draft.has_network_interface(id),
            };
            return Response::Fault(if known {
                format!(
                    "{section}: {id} was attached at boot; only devices added after boot can be removed"
                )
            } else {
                format!("{section}: no device {id}")
            });
        };
        let Some(worker) = self.hotplug_worker.as_ref() else {
            return Response::fault(AFTER_START);
        };
        let unplugged = worker
            .run(move || hotplug.unplug(slot, UNPLUG_TIMEOUT).map(drop))
            .and_then(|done| done);
        if let Err(error) = unplugged {
            return Response::Fault(format!(
                "{section}: removing {id}: {}",
                crate::error::error_chain(&error)
            ));
        }
        if let Err(error) = manager.remove_subscriber(subscriber) {
            tracing::warn!(id, ?error, "removing a device's worker from the event loop");
        }
        self.hotplugged.remove(&kind.key(id));
        if let Phase::Running(vm) = &mut self.phase {
            match kind {
                Kind::Drive => vm.virtio.blocks.retain(|(drive, _)| drive != id),
                Kind::Net => vm.virtio.nets.retain(|(nic, _)| nic != id),
            }
            let bus_name = kind.bus_name(id);
            vm.virtio.stats.retain(|stats| stats.name != bus_name);
        }
        match kind {
            Kind::Drive => self.draft.remove_drive(id),
            Kind::Net => self.draft.remove_network_interface(id),
        }
        tracing::info!(id, slot, "{section} unplugged");
        Response::NoContent
    }
}
