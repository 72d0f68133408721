//! `PUT /snapshot/load` (and `sie run --restore`): a snapshot restored
//! into a VMM that has no VM yet, then started.

use sie_hv::Hypervisor;

use super::{Controller, Manager};

impl Controller {
    /// Restores a snapshot into this (so far empty) VMM and starts it,
    /// paused unless the plan says resume.
    pub(super) fn load_snapshot(
        &mut self,
        plan: &sie_config::LoadPlan,
        hv: &dyn Hypervisor,
        manager: &mut Manager,
    ) -> std::result::Result<(), String> {
        self.start_migration_worker()
            .map_err(|e| crate::error::error_chain(&e))?;
        let mut snapshot = crate::snapshot::read(&plan.snapshot_path)
            .map_err(|e| crate::error::error_chain(&e))?;
        crate::snapshot::overrides::apply(&mut snapshot.config, plan)?;
        // Tracking is the load's choice, not the snapshotted VM's (as in
        // Firecracker); the restored VM's configuration records it, so a
        // Diff of it is allowed exactly when its pages are tracked.
        snapshot
            .config
            .machine_config
            .get_or_insert_with(Default::default)
            .track_dirty_pages = Some(plan.track_dirty_pages);
        // `Snapshot`: what the snapshotted VM's machine-config asked for.
        let huge_pages = match plan.huge_pages {
            sie_config::HugePages::Snapshot => snapshot
                .config
                .machine_config
                .as_ref()
                .map_or(sie_config::HugePages::None, |m| m.huge_pages()),
            pages => pages,
        };
        // The restored VM's configuration says what backs its RAM now.
        snapshot
            .config
            .machine_config
            .get_or_insert_with(Default::default)
            .huge_pages = Some(
            match huge_pages {
                sie_config::HugePages::TwoMiB => "2M",
                sie_config::HugePages::Transparent => "Transparent",
                _ => "None",
            }
            .to_string(),
        );
        // The console and core dumps are the host's choice, not the
        // snapshotted VM's: what this sie was told (flags, PUT /serial).
        let here = self.draft.to_config_unchecked();
        snapshot.config.serial = here.serial;
        snapshot.config.dump_on_panic = here.dump_on_panic;
        self.host_choices(&mut snapshot.config);
        let build = self
            .build_options(&snapshot.config)
            .map_err(|e| crate::error::error_chain(&e))?;
        let memory = crate::snapshot::RestoreMemory {
            backend: plan.backend,
            path: plan.backend_path.clone(),
            seccomp: self.options.seccomp.clone(),
            huge_pages,
        };
        let built = crate::snapshot::restore(
            &snapshot,
            &memory,
            self.premade_vm.take(),
            plan.clock_realtime,
            hv,
            build,
            self.control.clone(),
        )
        .map_err(|e| crate::error::error_chain(&e))?;
        self.run_built(built, snapshot.config, !plan.resume, manager)
            .map_err(|e| crate::error::error_chain(&e))
    }
}
