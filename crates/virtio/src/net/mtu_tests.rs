//! The MTU: offered (VIRTIO_NET_F_MTU and the config field) only when one
//! is given, passed to the host side, and refused below the minimum.

use std::error::Error;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MTU;

use super::test_rig::{MAC, Rig};
use super::{MIN_MTU, Net, NetError};
use crate::testing::{VIRTIO_RING_F_EVENT_IDX, pair};
use sie_devices::BusDevice;

/// Config space starts at this offset of the MMIO window.
const CONFIG: u64 = 0x100;

/// Reads `len` (1, 2 or 4) config bytes at `offset` in one access, and
/// whether the transport took it.
fn read_config(rig: &Rig, offset: u64, len: usize) -> (Vec<u8>, bool) {
    let before = rig.counters().invalid_accesses;
    let mut bytes = vec![0xee; len];
    rig.t.read(CONFIG + offset, &mut bytes);
    (bytes, rig.counters().invalid_accesses == before)
}

#[test]
fn without_an_mtu_neither_the_feature_nor_the_field_exists() {
    let rig = Rig::idle();
    assert_eq!(rig.driver().device_features() & 1 << VIRTIO_NET_F_MTU, 0);
    // The config space ends after max_virtqueue_pairs.
    assert_eq!(read_config(&rig, 8, 2), (vec![1, 0], true));
    assert!(!read_config(&rig, 10, 2).1, "mtu field readable");
    assert_eq!(*rig.peer.mtu.lock().expect("mtu"), None);
}

#[test]
fn an_mtu_is_offered_in_the_config_space_and_set_on_the_backend() {
    let rig = Rig::idle_with_mtu(Some(9000));
    let offered = rig.driver().device_features();
    assert_ne!(offered & 1 << VIRTIO_NET_F_MTU, 0);
    // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, then
    // mtu (le16) at 10, read whole or bytewise.
    let (mac, _) = read_config(&rig, 0, 4);
    assert_eq!(mac, MAC[..4]);
    assert_eq!(
        read_config(&rig, 10, 2),
        (9000u16.to_le_bytes().to_vec(), true)
    );
    assert_eq!(read_config(&rig, 11, 1), (vec![(9000u16 >> 8) as u8], true));
    assert!(!read_config(&rig, 12, 1).1, "config space ends after mtu");
    assert_eq!(*rig.peer.mtu.lock().expect("mtu"), Some(9000));
    // A driver may accept it.
    rig.start(offered & !(1 << VIRTIO_RING_F_EVENT_IDX));
    assert!(!rig.needs_reset());
}

#[test]
fn mtus_from_68_up_to_65535_are_accepted() {
    for mtu in [MIN_MTU, 1280, 1500, u16::MAX] {
        let (backend, peer) = pair();
        let net = Net::new(backend, None, Some(mtu)).expect("valid MTU");
        assert_eq!(net.mtu(), Some(mtu));
        assert_eq!(*peer.mtu.lock().expect("mtu"), Some(mtu));
    }
}

#[test]
fn an_mtu_below_68_is_refused_before_the_backend_sees_it() {
    for mtu in [0, 1, MIN_MTU - 1] {
        let (backend, peer) = pair();
        let Err(error) = Net::new(backend, None, Some(mtu)) else {
            panic!("MTU {mtu} accepted");
        };
        assert!(matches!(error, NetError::MtuTooSmall(m) if m == mtu));
        assert_eq!(
            error.to_string(),
            format!("MTU {mtu} is below the minimum of 68 bytes")
        );
        assert_eq!(*peer.mtu.lock().expect("mtu"), None);
    }
}

#[test]
fn a_backend_refusing_the_mtu_fails_the_device_with_its_own_words() {
    let (backend, peer) = pair();
    peer.refuse_mtu.store(true, Ordering::SeqCst);
    let Err(error) = Net::new(backend, None, Some(9000)) else {
        panic!("refused MTU accepted");
    };
    assert!(matches!(error, NetError::HostMtu { mtu: 9000, .. }));
    assert_eq!(
        error.to_string(),
        "cannot give the host interface an MTU of 9000 bytes"
    );
    let source = error.source().expect("the backend's error");
    assert_eq!(source.to_string(), "socket pair: MTU refused");
}
