//! What a load request changes in the snapshot's configuration before the
//! VM is rebuilt: each clone gets its own tap (`network_overrides`) and
//! its own vsock socket (`vsock_override`). Everything else comes back as
//! it was saved.

use sie_config::{LoadPlan, NetworkOverride, VmConfig};

/// Applies `plan`'s overrides to `config`; one line naming the first one
/// that matches nothing in the snapshot.
pub fn apply(config: &mut VmConfig, plan: &LoadPlan) -> Result<(), String> {
    apply_network(config, &plan.network_overrides)?;
    if let Some(uds_path) = &plan.vsock_override {
        let vsock = config
            .vsock
            .as_mut()
            .ok_or("vsock_override: the snapshot has no vsock device")?;
        vsock.uds_path.clone_from(uds_path);
    }
    Ok(())
}

/// Gives each interface `overrides` name its new tap (a restored clone,
/// or a VM migrating in: `PUT /migration/receive`); one line naming the
/// first override that matches no interface of the VM.
pub fn apply_network(config: &mut VmConfig, overrides: &[NetworkOverride]) -> Result<(), String> {
    for entry in overrides {
        let iface = config
            .network_interfaces
            .iter_mut()
            .find(|iface| iface.iface_id == entry.iface_id)
            .ok_or_else(|| {
                format!(
                    "network_overrides: the snapshot has no network interface {:?}",
                    entry.iface_id
                )
            })?;
        iface.host_dev_name.clone_from(&entry.host_dev_name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sie_config::{NetworkOverride, SnapshotLoad};

    use super::*;

    fn config() -> VmConfig {
        VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"},
                                       {"iface_id": "eth1", "host_dev_name": "tap1"}],
                "vsock": {"guest_cid": 3, "uds_path": "/tmp/old.sock"}}"#,
        )
        .unwrap()
    }

    fn plan(overrides: &[(&str, &str)], vsock: Option<&str>) -> LoadPlan {
        let mut load = SnapshotLoad::from_files(
            "s".into(),
            sie_config::MemBackendType::File,
            "m".into(),
            false,
        );
        load.network_overrides = Some(
            overrides
                .iter()
                .map(|(id, tap)| NetworkOverride {
                    iface_id: (*id).into(),
                    host_dev_name: (*tap).into(),
                })
                .collect(),
        );
        load.vsock_override = vsock.map(|p| sie_config::VsockOverride {
            uds_path: PathBuf::from(p),
        });
        load.plan().unwrap()
    }

    #[test]
    fn overrides_replace_the_named_tap_and_the_socket_only() {
        let mut config = config();
        apply(
            &mut config,
            &plan(&[("eth1", "clone7")], Some("/tmp/new.sock")),
        )
        .unwrap();
        let taps: Vec<&str> = config
            .network_interfaces
            .iter()
            .map(|i| i.host_dev_name.as_str())
            .collect();
        assert_eq!(taps, ["tap0", "clone7"]);
        assert_eq!(
            config.vsock.unwrap().uds_path,
            PathBuf::from("/tmp/new.sock")
        );
    }

    #[test]
    fn an_override_that_matches_nothing_is_refused_by_name() {
        let error = apply(&mut config(), &plan(&[("eth9", "t")], None)).unwrap_err();
        assert!(error.contains("\"eth9\""), "{error}");
        let mut no_vsock = config();
        no_vsock.vsock = None;
        let error = apply(&mut no_vsock, &plan(&[], Some("/tmp/x"))).unwrap_err();
        assert!(error.contains("no vsock"), "{error}");
    }
}
