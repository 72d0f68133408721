//! `PUT /drives/{id}` after boot: with PCI and a new id, the drive is built
//! on the `sie-hotplug` thread, plugged into a free slot (the guest hears
//! of it through ACPI) and served like any other; otherwise refused as
//! before boot-only requests always were.
//!
//! `DELETE /drives/{id}` unplugs a drive added that way: the guest is asked
//! to eject it and the answer comes once it has let go (the device off the
//! bus, its worker out of the event loop) or after [`UNPLUG_TIMEOUT`] with
//! an error (the request stays pending; a later `DELETE` waits again).
//! The event loop waits meanwhile; a virtio-blk driver going away sends no
//! requests that would need it.

use event_manager::SubscriberOps;
use std::time::Duration;

use sie_config::{Drive, Request, Response};

use super::handle::AFTER_START;
use super::{Controller, Phase};
use crate::event_loop::Manager;

/// How long `DELETE /drives/{id}` waits for the guest to let go.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

impl Controller {
    pub(super) fn hotplug_drive(&mut self, drive: Drive, manager: &mut Manager) -> Response {
        let Phase::Running(vm) = &mut self.phase else {
            return Response::fault(AFTER_START);
        };
        // Without PCI, or for a drive the VM already has: refused as before.
        let (Some(hotplug), Some(worker)) = (vm.pci_hotplug.clone(), self.hotplug_worker.as_ref())
        else {
            return Response::fault(AFTER_START);
        };
        if self.draft.drive(&drive.drive_id).is_some() {
            return Response::fault(AFTER_START);
        }
        if drive.is_root_device {
            return Response::fault("drives: a drive added after boot cannot be the root device");
        }
        // The same checks as before boot, on a copy kept only on success.
        let mut draft = self.draft.clone();
        if let Some(Response::Fault(message)) = draft.apply(&Request::PutDrive(drive.clone())) {
            return Response::Fault(message);
        }
        let hv_vm = vm.hv_vm_shared();
        let memory = vm.memory().clone();
        let seccomp = self.options.seccomp.clone();
        let id = drive.drive_id.clone();
        let plugged = worker
            .run(move || crate::drive_hotplug::plug_drive(&drive, hv_vm, memory, &hotplug, seccomp))
            .and_then(|plugged| plugged);
        match plugged {
            Ok(plugged) => {
                tracing::info!(drive = %id, slot = plugged.slot, "drive hotplugged");
                let subscriber = manager.add_subscriber(plugged.worker);
                self.hotplugged
                    .insert(id.clone(), (plugged.slot, subscriber));
                vm.virtio.blocks.push((id, plugged.core));
                vm.virtio.stats.push(plugged.stats);
                self.draft = draft;
                Response::NoContent
            }
            Err(error) => Response::Fault(format!(
                "drives: hotplugging {id}: {}",
                crate::error::error_chain(&error)
            )),
        }
    }

    pub(super) fn unplug_drive(&mut self, id: &str, manager: &mut Manager) -> Response {
        let Phase::Running(vm) = &mut self.phase else {
            return Response::fault(
                "drives: DELETE removes a drive added after boot; the VM has not started",
            );
        };
        let (Some(hotplug), Some(worker)) = (vm.pci_hotplug.clone(), self.hotplug_worker.as_ref())
        else {
            return Response::fault("drives: removing a drive needs a VM with PCI (--enable-pci)");
        };
        let Some(&(slot, subscriber)) = self.hotplugged.get(id) else {
            return Response::Fault(if self.draft.drive(id).is_some() {
                format!(
                    "drives: {id} was attached at boot; only drives added after boot can be removed"
                )
            } else {
                format!("drives: no drive {id}")
            });
        };
        let unplugged = worker
            .run(move || hotplug.unplug(slot, UNPLUG_TIMEOUT).map(drop))
            .and_then(|done| done);
        if let Err(error) = unplugged {
            return Response::Fault(format!(
                "drives: removing {id}: {}",
                crate::error::error_chain(&error)
            ));
        }
        if let Err(error) = manager.remove_subscriber(subscriber) {
            tracing::warn!(drive = %id, ?error, "removing the drive's worker from the event loop");
        }
        self.hotplugged.remove(id);
        vm.virtio.blocks.retain(|(drive, _)| drive != id);
        let bus_name = format!("virtio-blk:{id}");
        vm.virtio.stats.retain(|stats| stats.name != bus_name);
        self.draft.remove_drive(id);
        tracing::info!(drive = %id, slot, "drive unplugged");
        Response::NoContent
    }
}
