//! The VM's GSI routing table. `KVM_SET_GSI_ROUTING` replaces the whole
//! table, so every update sends the irqchip routes KVM installs with
//! `KVM_CREATE_IRQCHIP` (GSIs 0-15 to the PIC and the IOAPIC, 16-23 to the
//! IOAPIC alone) followed by the MSI routes the VMM set (GSI 24 and up).

use std::collections::BTreeMap;

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_IRQ_ROUTES, KvmIrqRouting, kvm_irq_routing_entry,
};

use crate::{HvError, MsiMessage, Result};

/// The first GSI that is not an IOAPIC pin: MSI routes start here.
pub const FIRST_MSI_GSI: u32 = 24;

/// The MSI routes a VM has, by GSI.
#[derive(Debug, Default)]
pub(crate) struct MsiRoutes {
    routes: BTreeMap<u32, MsiMessage>,
}

impl MsiRoutes {
    /// Sets (or with `None` removes) the route of `gsi` and returns the
    /// whole table to hand to KVM. The change is only kept by [`commit`]
    /// after KVM accepted the table, so a refused update changes nothing.
    ///
    /// [`commit`]: MsiRoutes::commit
    pub(crate) fn table_with(
        &self,
        gsi: u32,
        message: Option<MsiMessage>,
    ) -> Result<KvmIrqRouting> {
        if gsi < FIRST_MSI_GSI {
            return Err(HvError::Invalid(format!(
                "GSI {gsi} is an interrupt controller pin, not an MSI route (MSI GSIs start at {FIRST_MSI_GSI})"
            )));
        }
        let mut routes = self.routes.clone();
        match message {
            Some(message) => routes.insert(gsi, message),
            None => routes.remove(&gsi),
        };
        let mut entries = irqchip_entries();
        entries.extend(
            routes
                .iter()
                .map(|(gsi, message)| msi_entry(*gsi, *message)),
        );
        if entries.len() > KVM_MAX_IRQ_ROUTES {
            return Err(HvError::Invalid(format!(
                "{} interrupt routes exceed KVM's {KVM_MAX_IRQ_ROUTES}",
                entries.len()
            )));
        }
        KvmIrqRouting::from_entries(&entries)
            .map_err(|e| HvError::Invalid(format!("GSI routing table: {e:?}")))
    }

    /// Keeps the change [`table_with`](MsiRoutes::table_with) made once
    /// KVM accepted it.
    pub(crate) fn commit(&mut self, gsi: u32, message: Option<MsiMessage>) {
        match message {
            Some(message) => self.routes.insert(gsi, message),
            None => self.routes.remove(&gsi),
        };
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = irqchip;
    entry.u.irqchip.pin = pin;
    entry
}

/// The routes `KVM_CREATE_IRQCHIP` installs on x86.
fn irqchip_entries() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for gsi in 0..FIRST_MSI_GSI {
        entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip_entry(gsi, pic, gsi % 8));
        }
    }
    entries
}

fn msi_entry(gsi: u32, message: MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    // Truncation is the point: the message's address is split in halves.
    entry.u.msi.address_lo = message.address as u32;
    entry.u.msi.address_hi = (message.address >> 32) as u32;
    entry.u.msi.data = message.data;
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irqchip_routes_are_kvms_defaults() {
        let entries = irqchip_entries();
        // 16 GSIs on both the PIC and the IOAPIC, 8 on the IOAPIC alone.
        assert_eq!(entries.len(), 16 * 2 + 8);
        let pins: Vec<(u32, u32, u32)> = entries
            .iter()
            .map(|e| {
                // SAFETY: irqchip_entries only builds irqchip entries.
                let irqchip = unsafe { e.u.irqchip };
                (e.gsi, irqchip.irqchip, irqchip.pin)
            })
            .collect();
        assert!(pins.contains(&(0, KVM_IRQCHIP_IOAPIC, 0)));
        assert!(pins.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(pins.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!pins.iter().any(|p| p.0 >= 16 && p.1 != KVM_IRQCHIP_IOAPIC));
    }

    #[test]
    fn msi_routes_follow_the_irqchip_routes_and_can_be_removed() {
        let mut routes = MsiRoutes::default();
        let message = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x41,
        };
        let table = routes.table_with(24, Some(message)).unwrap();
        routes.commit(24, Some(message));
        let last = table.as_slice().last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built as an MSI entry.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x41)
        );
        let table = routes.table_with(24, None).unwrap();
        assert_eq!(table.as_slice().len(), irqchip_entries().len());
    }

    #[test]
    fn an_irqchip_gsi_is_refused_and_a_refused_change_is_not_kept() {
        let routes = MsiRoutes::default();
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        assert!(matches!(
            routes.table_with(23, Some(message)),
            Err(HvError::Invalid(_))
        ));
        // table_with alone keeps nothing.
        let _ = routes.table_with(30, Some(message)).unwrap();
        assert!(routes.routes.is_empty());
    }
}
