//! `PUT /drives/{id}` after boot: with PCI and a new id, the drive is built
//! on the `sie-hotplug` thread, plugged into a free slot (the guest hears
//! of it through ACPI) and served like any other; otherwise refused as
//! before boot-only requests always were.

use event_manager::SubscriberOps;
use sie_config::{Drive, Request, Response};

use super::handle::AFTER_START;
use super::{Controller, Phase};
use crate::event_loop::Manager;

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
                manager.add_subscriber(plugged.worker);
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
}
