//! The short device specs of `sie run` (`sie_config::parse_disk`,
//! `parse_net`, `parse_vsock`): the first byte picks the flag and the
//! index that names a device without an id, the rest is the spec.
//!
//! Checked: an accepted spec gives a device that passes its own
//! validation and that the API takes unchanged (its JSON through
//! `sie_api::route` on the device's own path is the same request): the
//! CLI, the config file and the API fill the same structs. A refusal
//! quotes the spec it refuses. A MAC address the config accepts is one
//! virtio-net's parser reads back to the same text.

use sie_api::{Routed, route};
use sie_config::{Request, parse_disk, parse_net, parse_vsock};
use sie_virtio::net::{format_mac, parse_mac};

pub fn run(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let spec = String::from_utf8_lossy(rest);
    let index = usize::from(choice >> 2);
    let (target, request) = match choice % 3 {
        0 => match parse_disk(&spec, index) {
            Ok(drive) => {
                drive.validate().expect("an accepted --disk validates");
                (
                    format!("/drives/{}", drive.drive_id),
                    Request::PutDrive(drive),
                )
            }
            Err(e) => return assert_eq!(e.spec, spec, "--disk quoted another spec"),
        },
        1 => match parse_net(&spec, index) {
            Ok(nic) => {
                nic.validate().expect("an accepted --net validates");
                if let Some(mac) = &nic.guest_mac {
                    mac_agrees(mac);
                }
                (
                    format!("/network-interfaces/{}", nic.iface_id),
                    Request::PutNetworkInterface(nic),
                )
            }
            Err(e) => return assert_eq!(e.spec, spec, "--net quoted another spec"),
        },
        _ => match parse_vsock(&spec) {
            Ok(vsock) => {
                vsock.validate().expect("an accepted --vsock validates");
                ("/vsock".to_string(), Request::PutVsock(vsock))
            }
            Err(e) => return assert_eq!(e.spec, spec, "--vsock quoted another spec"),
        },
    };
    let body = match &request {
        Request::PutDrive(d) => serde_json::to_vec(d),
        Request::PutNetworkInterface(n) => serde_json::to_vec(n),
        Request::PutVsock(v) => serde_json::to_vec(v),
        _ => unreachable!("only device requests are built above"),
    }
    .expect("a device serializes");
    match route("PUT", &target, &body) {
        Ok(Routed::Vmm(api)) => assert_eq!(api, request, "the API read {target} differently"),
        other => panic!(
            "the API refused what the CLI accepted: PUT {target} {}: {other:?}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// The config's MAC check and the device's parser agree on `mac`.
fn mac_agrees(mac: &str) {
    match parse_mac(mac) {
        Ok(parsed) => assert_eq!(format_mac(&parsed), mac.to_ascii_lowercase()),
        Err(e) => panic!("the config took MAC {mac:?}, the device refuses it: {e}"),
    }
}
