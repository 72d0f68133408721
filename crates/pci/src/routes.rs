//! The BAR routing table: which device's BAR decodes which guest address.
//!
//! Changed only by the root under its configuration-write lock; read by
//! every vCPU touching a BAR window. Overlapping BARs (a hostile guest can
//! program any address) are allowed: the BAR mapped last wins where they
//! overlap, and the older one shows through again once the newer moves
//! away. The table is small (a few BARs per device), so a lookup scans it
//! newest first.

use std::sync::{Arc, PoisonError, RwLock};

use crate::device::{AddressSpace, PciDevice};

/// One live BAR.
#[derive(Clone)]
pub(crate) struct Route {
    pub space: AddressSpace,
    pub base: u64,
    pub size: u64,
    pub slot: u8,
    pub bar: u8,
    pub device: Arc<dyn PciDevice>,
}

/// Where an access landed.
pub(crate) struct RouteHit {
    pub device: Arc<dyn PciDevice>,
    pub bar: u8,
    pub offset: u64,
}

#[derive(Default)]
pub(crate) struct BarRoutes {
    routes: RwLock<Vec<Route>>,
}

impl BarRoutes {
    /// Drops the route of `slot`'s BAR `bar`, then adds `route` (if any)
    /// as the newest.
    pub fn replace(&self, slot: u8, bar: u8, route: Option<Route>) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        routes.retain(|r| (r.slot, r.bar) != (slot, bar));
        routes.extend(route);
    }

    /// The BAR holding all of `addr..addr + len` in `space`.
    pub fn find(&self, space: AddressSpace, addr: u64, len: usize) -> Option<RouteHit> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let route = routes.iter().rev().find(|r| {
            r.space == space && addr >= r.base && {
                let offset = addr - r.base;
                offset < r.size && r.size - offset >= len as u64
            }
        })?;
        Some(RouteHit {
            device: route.device.clone(),
            bar: route.bar,
            offset: addr - route.base,
        })
    }

    /// Number of live BARs.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
