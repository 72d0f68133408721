//! The short device specs of `sie run`:
//! `--disk PATH[,ro][,id=NAME][,root][,partuuid=UUID][,cache=unsafe|writeback][,io=sync|async]`,
//! `--net TAP[,mac=MAC][,id=NAME][,mtu=BYTES]`, `--vsock CID,UDS_PATH`. Each becomes the
//! same resource a config file or the API would give.

use std::path::PathBuf;

use crate::devices::{CacheType, Drive, IoEngine, NetworkInterface, Vsock};

/// A spec that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} {spec:?}: {problem}")]
pub struct SpecError {
    /// `--disk`, `--net` or `--vsock`.
    pub flag: &'static str,
    /// The spec as given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: String,
}

fn error(flag: &'static str, spec: &str, problem: impl Into<String>) -> SpecError {
    SpecError {
        flag,
        spec: spec.to_string(),
        problem: problem.into(),
    }
}

/// `--disk PATH[,ro][,id=NAME][,root][,partuuid=UUID][,cache=..][,io=..]`;
/// `index` names drives without an id (`disk0`, `disk1`, ...). `cache` and
/// `io` are Firecracker's `cache_type` and `io_engine` in lower case.
pub fn parse_disk(spec: &str, index: usize) -> Result<Drive, SpecError> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(error("--disk", spec, "the path is empty"));
    }
    let mut drive = Drive {
        drive_id: format!("disk{index}"),
        path_on_host: PathBuf::from(path),
        is_root_device: false,
        is_read_only: None,
        partuuid: None,
        cache_type: CacheType::default(),
        io_engine: IoEngine::default(),
        rate_limiter: None,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => drive.is_read_only = Some(true),
            None if option == "root" => drive.is_root_device = true,
            Some(("id", id)) => drive.drive_id = id.to_string(),
            Some(("partuuid", uuid)) => drive.partuuid = Some(uuid.to_string()),
            Some(("cache", "unsafe")) => drive.cache_type = CacheType::Unsafe,
            Some(("cache", "writeback")) => drive.cache_type = CacheType::Writeback,
            Some(("io", "sync")) => drive.io_engine = IoEngine::Sync,
            Some(("io", "async")) => drive.io_engine = IoEngine::Async,
            Some(("cache", other)) => {
                return Err(error(
                    "--disk",
                    spec,
                    format!("cache {other:?} is not unsafe or writeback"),
                ));
            }
            Some(("io", other)) => {
                return Err(error(
                    "--disk",
                    spec,
                    format!("io {other:?} is not sync or async"),
                ));
            }
            _ => {
                return Err(error(
                    "--disk",
                    spec,
                    format!(
                        "unknown option {option:?} (expected ro, root, id=NAME, partuuid=UUID, \
                         cache=unsafe|writeback or io=sync|async)"
                    ),
                ));
            }
        }
    }
    drive
        .validate()
        .map_err(|e| error("--disk", spec, e.to_string()))?;
    Ok(drive)
}

/// `--net TAP[,mac=MAC][,id=NAME][,mtu=BYTES]`; `index` names interfaces without an id.
pub fn parse_net(spec: &str, index: usize) -> Result<NetworkInterface, SpecError> {
    let mut parts = spec.split(',');
    let tap = parts.next().unwrap_or_default();
    let mut nic = NetworkInterface {
        iface_id: format!("eth{index}"),
        host_dev_name: tap.to_string(),
        guest_mac: None,
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    for option in parts {
        match option.split_once('=') {
            Some(("mac", mac)) => nic.guest_mac = Some(mac.to_string()),
            Some(("id", id)) => nic.iface_id = id.to_string(),
            Some(("mtu", mtu)) => {
                let mtu = mtu.parse().map_err(|_| {
                    error(
                        "--net",
                        spec,
                        format!("mtu {mtu:?} is not a number up to 65535"),
                    )
                })?;
                nic.mtu = Some(mtu);
            }
            _ => {
                return Err(error(
                    "--net",
                    spec,
                    format!("unknown option {option:?} (expected mac=MAC, id=NAME or mtu=BYTES)"),
                ));
            }
        }
    }
    nic.validate()
        .map_err(|e| error("--net", spec, e.to_string()))?;
    Ok(nic)
}

/// `--vsock CID,UDS_PATH`.
pub fn parse_vsock(spec: &str) -> Result<Vsock, SpecError> {
    let (cid, path) = spec
        .split_once(',')
        .ok_or_else(|| error("--vsock", spec, "expected CID,UDS_PATH"))?;
    let guest_cid = cid
        .parse()
        .map_err(|_| error("--vsock", spec, format!("CID {cid:?} is not a number")))?;
    let vsock = Vsock {
        guest_cid,
        uds_path: PathBuf::from(path),
        vsock_id: None,
    };
    vsock
        .validate()
        .map_err(|e| error("--vsock", spec, e.to_string()))?;
    Ok(vsock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_take_options_in_any_order() {
        let drive = parse_disk("/img/root.ext4,root,ro,id=rootfs", 0).unwrap();
        assert_eq!(drive.drive_id, "rootfs");
        assert!(drive.is_root_device);
        assert_eq!(drive.is_read_only, Some(true));
        let drive = parse_disk("data.img", 3).unwrap();
        assert_eq!(
            (drive.drive_id.as_str(), drive.is_root_device),
            ("disk3", false)
        );
        assert!(parse_disk("", 0).unwrap_err().to_string().contains("path"));
        assert!(
            parse_disk("x,fast", 0)
                .unwrap_err()
                .to_string()
                .contains("fast")
        );
        assert!(
            parse_disk("x,id=bad id", 0)
                .unwrap_err()
                .to_string()
                .contains("--disk")
        );
    }

    #[test]
    fn disks_take_a_cache_type_and_an_io_engine() {
        let drive = parse_disk("d.img", 0).unwrap();
        assert_eq!(
            (drive.cache_type, drive.io_engine),
            (CacheType::Unsafe, IoEngine::Sync)
        );
        let drive = parse_disk("d.img,cache=writeback,io=async", 0).unwrap();
        assert_eq!(
            (drive.cache_type, drive.io_engine),
            (CacheType::Writeback, IoEngine::Async)
        );
        let drive = parse_disk("d.img,io=sync,cache=unsafe", 0).unwrap();
        assert_eq!(
            (drive.cache_type, drive.io_engine),
            (CacheType::Unsafe, IoEngine::Sync)
        );
        let message = parse_disk("d.img,cache=none", 0).unwrap_err().to_string();
        assert!(
            message.contains(r#"cache "none" is not unsafe or writeback"#),
            "{message}"
        );
        let message = parse_disk("d.img,io=uring", 0).unwrap_err().to_string();
        assert!(
            message.contains(r#"io "uring" is not sync or async"#),
            "{message}"
        );
    }

    #[test]
    fn nets_and_vsocks_are_checked() {
        let nic = parse_net("tap0,mac=06:00:00:00:00:01", 0).unwrap();
        assert_eq!(
            (nic.iface_id.as_str(), nic.host_dev_name.as_str()),
            ("eth0", "tap0")
        );
        assert!(parse_net("tap0,mac=zz", 0).is_err());
        assert_eq!(parse_net("tap0,mtu=9000", 0).unwrap().mtu, Some(9000));
        for bad in ["tap0,mtu=67", "tap0,mtu=65536", "tap0,mtu=big"] {
            let message = parse_net(bad, 0).unwrap_err().to_string();
            assert!(message.contains("mtu"), "{message}");
        }
        assert!(parse_net("", 0).is_err());
        let vsock = parse_vsock("3,/tmp/v.sock").unwrap();
        assert_eq!(vsock.guest_cid, 3);
        assert!(
            parse_vsock("2,/tmp/v.sock")
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        assert!(
            parse_vsock("three,/x")
                .unwrap_err()
                .to_string()
                .contains("number")
        );
        assert!(parse_vsock("3").is_err());
    }
}
