//! virtio-PCI as Linux's modern driver uses it: identity and capabilities,
//! bring-up through the common configuration, each device's data path
//! with MSI-X interrupts, and notifications through ioeventfds placed by
//! the PCI root.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use sie_pci::testing::{IoEvent, MapperCall, MsiCall, RecordingBarMapper};
use sie_pci::{AddressRange, Bdf, PciRoot, PciWindows, WindowKind};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::block::{Block, BlockOptions};
use crate::net::Net;
use crate::rng::Rng;
use crate::testing::{
    DATA, MSI_ADDRESS, PciDriver, Ring, VRING_DESC_F_WRITE, common, pair, pci_transport,
};
use crate::{VirtioWorker, vsock::Vsock};

const W: u32 = VRING_DESC_F_WRITE;

#[test]
fn identifies_itself_as_a_modern_virtio_function() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    assert_eq!(
        d.read_config(0, 4),
        0x1044_1af4,
        "vendor 0x1af4, device 0x1040 + 4"
    );
    assert_eq!(d.read_config(8, 1), 1, "revision 1: modern only");
    assert_eq!(d.read_config(0x2c, 4), 0x0040_1af4);
    assert_eq!(d.read_config(0x3d, 1), 0, "no INTx pin");
    // BAR 0: 64-bit memory, sized by writing ones.
    d.write_config(0x10, 4, u32::MAX);
    d.write_config(0x14, 4, u32::MAX);
    assert_eq!(d.read_config(0x10, 4), (!(BAR_SIZE as u32 - 1)) | 0b100);
    assert_eq!(d.read_config(0x14, 4), u32::MAX);
    // Vendor capabilities: common, notify, ISR, PCI access; no device
    // configuration for rng (it has none).
    let caps = d.capabilities(0x09);
    let types: Vec<u32> = caps.iter().map(|&c| d.read_config(c + 3, 1)).collect();
    assert_eq!(types, vec![1, 2, 3, 5]);
    let notify = caps[1];
    assert_eq!(d.read_config(notify + 4, 1), 0, "in BAR 0");
    assert_eq!(u64::from(d.read_config(notify + 8, 4)), NOTIFY_OFFSET);
    assert_eq!(d.read_config(notify + 12, 4), NOTIFY_MULTIPLIER);
    assert_eq!(d.read_config(notify + 16, 4), NOTIFY_MULTIPLIER);
    let msix = d.capabilities(sie_pci::MSIX_CAPABILITY_ID);
    assert_eq!(msix.len(), 1);
    assert_eq!(
        d.read_config(msix[0] + 2, 2),
        1,
        "two vectors: the queue and configuration"
    );
    assert_eq!(u64::from(d.read_config(msix[0] + 4, 4)), MSIX_TABLE_OFFSET);
    assert_eq!(u64::from(d.read_config(msix[0] + 8, 4)), MSIX_PBA_OFFSET);
    assert_eq!(d.read_bar(common::NUM_QUEUES, 2), 1);
}

#[test]
fn devices_with_configuration_get_the_device_capability() {
    let (backend, _peer) = pair();
    let (t, _mem, _msi) =
        pci_transport(Net::new(backend, Some([2, 0, 0, 0, 0, 1]), None).expect("net"));
    let d = PciDriver::new(&t);
    assert_eq!(d.read_config(0, 4), 0x1041_1af4);
    assert_eq!(d.read_config(0x0a, 2), 0x0200, "network controller");
    let caps = d.capabilities(0x09);
    let device = caps
        .iter()
        .find(|&&c| d.read_config(c + 3, 1) == 4)
        .copied()
        .expect("device cap");
    assert_eq!(
        u64::from(d.read_config(device + 8, 4)),
        DEVICE_CONFIG_OFFSET
    );
    // The MAC through BAR 0.
    assert_eq!(d.read_bar(DEVICE_CONFIG_OFFSET, 1), 2);
    assert_eq!(d.read_bar(DEVICE_CONFIG_OFFSET + 5, 1), 1);
    assert_eq!(d.read_config(0x0a, 2), 0x0200);
}

#[test]
fn rng_fills_buffers_and_interrupts_through_its_queue_vector() {
    let (t, mem, msi) = pci_transport(Rng::new());
    let ring = Ring::new(0x1000, 16);
    let d = PciDriver::new(&t);
    d.start(&[ring]);
    assert_eq!(
        d.status() & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
    let routes = msi.take_calls();
    assert!(routes.contains(&MsiCall::Configure(
        0,
        Some(sie_pci::MsiMessage {
            address: MSI_ADDRESS,
            data: 0x20
        })
    )));
    ring.set_chain(&mem, 0, &[(DATA, 64, true)]);
    ring.publish(&mem, &[0]);
    d.notify(0);
    assert_eq!(ring.used(&mem, 0), (0, 64));
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(0)]);
    assert_eq!(t.counters().interrupts, 1);
    assert_eq!(t.counters().notifications, 1);
    // With MSI-X, the ISR queue bit stays clear.
    assert_eq!(d.read_bar(ISR_OFFSET, 1), 0);
}

fn image(len: usize) -> std::fs::File {
    crate::testing::disk_image(len, true)
}

#[test]
fn block_reads_through_pci_with_no_change_of_its_own() {
    let mut block = Block::new(image(64 * 1024), "pci", BlockOptions::default()).expect("block");
    block
        .start_worker("test-blk".into(), Box::new(|| Ok(())))
        .expect("worker");
    let (t, mem, msi) = pci_transport(block);
    let ring = Ring::new(0x1000, 16);
    let d = PciDriver::new(&t);
    d.start(&[ring]);
    // Capacity in sectors, from the device configuration.
    assert_eq!(d.read_bar(DEVICE_CONFIG_OFFSET, 4), 128);
    msi.take_calls();
    let (header, buf, status) = (DATA, DATA + 0x1000, DATA + 0x100);
    let mut request = [0u8; 16];
    request[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&request, GuestAddress(header))
        .expect("header");
    ring.set_chain(
        &mem,
        0,
        &[(header, 16, false), (buf, 512, true), (status, 1, true)],
    );
    ring.publish(&mem, &[0]);
    d.notify(0);
    t.quiesce();
    assert_eq!(ring.used(&mem, 0), (0, 513));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(status)).expect("status"),
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(buf + 511)).expect("data"),
        0xa5
    );
    assert_eq!(msi.triggers(0), 1);
    // A configuration change reaches the configuration vector (1) and the ISR.
    t.swap_backing_file(image(128 * 1024)).expect("swap");
    assert_eq!(msi.triggers(1), 1);
    assert_eq!(d.read_bar(ISR_OFFSET, 1), 2);
    assert_eq!(d.read_bar(ISR_OFFSET, 1), 0, "reading the ISR clears it");
    assert_eq!(d.read_bar(common::CONFIG_GENERATION, 1), 1);
    assert_eq!(d.read_bar(DEVICE_CONFIG_OFFSET, 4), 256);
}

#[test]
fn net_moves_frames_both_ways_with_a_vector_per_queue() {
    let (backend, peer) = pair();
    let net = Net::new(backend, Some([2, 0, 0, 0, 0, 1]), None).expect("net");
    let (t, mem, msi) = pci_transport(net);
    let (rx, tx) = (Ring::new(0x1000, 16), Ring::new(0x2000, 16));
    let d = PciDriver::new(&t);
    d.start(&[rx, tx]);
    msi.take_calls();
    // Transmit: a 12-byte virtio-net header and a frame.
    let frame = [0xabu8; 60];
    mem.write_slice(&[0u8; 12], GuestAddress(DATA))
        .expect("header");
    mem.write_slice(&frame, GuestAddress(DATA + 12))
        .expect("frame");
    tx.set_chain(&mem, 0, &[(DATA, 72, false)]);
    tx.publish(&mem, &[0]);
    d.notify(1);
    // The backend is a tap with virtio-net headers: header and frame go out.
    let sent = peer.recv().expect("a frame");
    assert_eq!(sent.len(), 72);
    assert_eq!(sent[12..], frame[..]);
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(1)]);
    // Receive.
    rx.set_chain(&mem, 0, &[(DATA + 0x1000, 2048, true)]);
    rx.publish(&mem, &[0]);
    d.notify(0);
    peer.send(&frame);
    t.backend_event();
    assert_eq!(rx.used(&mem, 0), (0, 72));
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(0)]);
}

#[test]
fn vsock_activates_with_its_three_queues() {
    let dir = std::env::temp_dir().join(format!("sie-pci-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let vsock = Vsock::new(3, &dir.join("v.sock")).expect("vsock");
    let (t, _mem, msi) = pci_transport(vsock);
    let d = PciDriver::new(&t);
    assert_eq!(d.read_bar(common::NUM_QUEUES, 2), 3);
    d.start(&[
        Ring::new(0x1000, 16),
        Ring::new(0x2000, 16),
        Ring::new(0x3000, 16),
    ]);
    assert_eq!(
        d.status() & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
    assert_eq!(msi.triggers(0), 0);
    // The guest's CID, from the device configuration.
    assert_eq!(d.read_bar(DEVICE_CONFIG_OFFSET, 4), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn masked_vectors_hold_interrupts_until_unmasked() {
    let (t, mem, msi) = pci_transport(Rng::new());
    let ring = Ring::new(0x1000, 16);
    let d = PciDriver::new(&t);
    d.start(&[ring]);
    let mask = MSIX_TABLE_OFFSET + 12;
    d.write_bar(mask, 4, 1);
    msi.take_calls();
    for head in 0..3 {
        ring.set_chain(&mem, head, &[(DATA, 8, true)]);
        ring.publish(&mem, &[head]);
        d.notify(0);
    }
    assert_eq!(msi.triggers(0), 0);
    assert_eq!(d.read_bar(MSIX_PBA_OFFSET, 8), 1);
    d.write_bar(mask, 4, 0);
    assert_eq!(
        msi.triggers(0),
        1,
        "the pending interrupt is delivered once"
    );
    assert_eq!(d.read_bar(MSIX_PBA_OFFSET, 8), 0);
}

#[test]
fn a_reset_forgets_vectors_and_queues() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.start(&[Ring::new(0x1000, 16)]);
    d.write_bar(common::DEVICE_STATUS, 1, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(
        d.read_bar(common::CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    d.write_bar(common::QUEUE_SELECT, 2, 0);
    assert_eq!(
        d.read_bar(common::QUEUE_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    assert_eq!(d.read_bar(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(d.read_bar(common::QUEUE_DESC, 4), 0);
}

#[test]
fn the_root_places_bar0_and_the_device_follows_it_with_ioeventfds() {
    let mapper = Arc::new(RecordingBarMapper::default());
    let windows = PciWindows {
        mmio32: Some(AddressRange::new(0xc000_0000, 0x1000_0000)),
        mmio64: Some(AddressRange::new(0x100_0000_0000, 0x100_0000_0000)),
        io: None,
    };
    let root = PciRoot::new(windows, mapper.clone());
    let (backend, _peer) = pair();
    let (t, _mem, _msi) = pci_transport(Net::new(backend, None, None).expect("net"));
    let t = Arc::new(t);
    let fds: Vec<i32> = t
        .queue_events()
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let bdf = root
        .add_device(t.clone(), &mut |request| {
            assert_eq!(request.size, BAR_SIZE);
            Ok(0x100_0000_0000)
        })
        .expect("add");
    let base = 0x100_0000_0000u64;
    let registered = |base: u64| -> Vec<MapperCall> {
        fds.iter()
            .enumerate()
            .map(|(queue, &fd)| {
                MapperCall::Register(IoEvent {
                    fd,
                    space: sie_pci::AddressSpace::Memory,
                    addr: base + NOTIFY_OFFSET + 4 * queue as u64,
                    len: 0,
                })
            })
            .collect()
    };
    assert_eq!(mapper.take_calls(), registered(base));
    assert_eq!(t.ioevents().len(), 2);
    assert_eq!(t.ioevents()[1].0, base + NOTIFY_OFFSET + 4);
    // The guest moves BAR 0 (decoding stays on): unregister, register.
    let moved = 0x100_0001_0000u64;
    root.write_config(bdf, 0x10, &(moved as u32).to_le_bytes());
    let unregistered = registered(base).into_iter().map(|call| match call {
        MapperCall::Register(event) => MapperCall::Unregister(event),
        other => other,
    });
    let expected: Vec<MapperCall> = unregistered.chain(registered(moved)).collect();
    assert_eq!(mapper.take_calls(), expected);
    // A notification through the BAR window (no ioeventfd) signals the queue.
    let window = root.bar_window(WindowKind::Mmio64).expect("window");
    let offset = moved + NOTIFY_OFFSET + 4 - window.range().base;
    sie_devices::BusDevice::write(window.as_ref(), offset, &1u16.to_le_bytes());
    assert_eq!(t.queue_events()[1].read().expect("signalled"), 1);
    // Removing the device takes its ioeventfds away.
    root.remove_device(bdf.device);
    assert!(t.ioevents().is_empty());
    assert_eq!(mapper.take_calls().len(), 2);
    let _ = Bdf::slot(0);
}

#[test]
fn the_worker_serves_a_pci_device() {
    let (t, mem, msi) = pci_transport(Rng::new());
    let t = Arc::new(t);
    let ring = Ring::new(0x1000, 16);
    PciDriver::new(&t).start(&[ring]);
    let mut manager =
        EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("epoll");
    manager.add_subscriber(Arc::new(Mutex::new(VirtioWorker::new(t.clone()))));
    ring.set_chain(&mem, 0, &[(DATA, 32, W != 0)]);
    ring.publish(&mem, &[0]);
    PciDriver::new(&t).kick(0);
    manager.run_with_timeout(1000).expect("run");
    assert_eq!(ring.used(&mem, 0), (0, 32));
    assert_eq!(msi.triggers(0), 1);
}

#[test]
fn vcpus_and_the_event_thread_together_neither_deadlock_nor_panic() {
    let root = Arc::new(PciRoot::new(
        PciWindows {
            mmio32: Some(AddressRange::new(0xc000_0000, 0x1000_0000)),
            mmio64: None,
            io: None,
        },
        Arc::new(RecordingBarMapper::default()),
    ));
    let (t, mem, _msi) = pci_transport(Rng::new());
    let t = Arc::new(t);
    let bdf = root
        .add_device(t.clone(), &mut |_| Ok(0xc000_0000))
        .expect("add");
    let ring = Ring::new(0x1000, 256);
    PciDriver::new(&t).start(&[ring]);
    for head in 0..256 {
        ring.set_chain(&mem, head, &[(DATA, 8, true)]);
    }
    let msix_control = PciDriver::new(&t).capabilities(sie_pci::MSIX_CAPABILITY_ID)[0] + 2;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The event thread: serve the queue and raise interrupts.
    let server = {
        let (t, mem, stop) = (t.clone(), mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut head = 0u16;
            while !stop.load(Ordering::Relaxed) {
                ring.publish(&mem, &[head % 256]);
                head = head.wrapping_add(1);
                t.queue_event(0);
                t.config_changed();
            }
        })
    };
    // vCPUs: mask and unmask vectors, toggle MSI-X, move BAR 0 and read
    // the common configuration, through the root as a guest would.
    let vcpus: Vec<_> = (0..3u32)
        .map(|n| {
            let root = root.clone();
            std::thread::spawn(move || {
                let window = root.bar_window(WindowKind::Mmio32).expect("window");
                for i in 0..3000u32 {
                    match (i + n) % 5 {
                        0 => {
                            let entry = MSIX_TABLE_OFFSET + 12 + 16 * u64::from(i % 2);
                            sie_devices::BusDevice::write(
                                window.as_ref(),
                                entry,
                                &(i % 2).to_le_bytes(),
                            );
                        }
                        1 => {
                            root.write_config(bdf, msix_control, &[0, (0x80 | (i % 2) << 6) as u8])
                        }
                        2 => root.write_config(
                            bdf,
                            0x10,
                            &(0xc000_0000 + (i % 4) * 0x8000).to_le_bytes(),
                        ),
                        3 => {
                            let mut data = [0u8; 2];
                            sie_devices::BusDevice::read(
                                window.as_ref(),
                                common::QUEUE_SIZE,
                                &mut data,
                            );
                        }
                        _ => {
                            let mut data = [0u8; 4];
                            root.read_config(bdf, 0x10, &mut data);
                        }
                    }
                }
            })
        })
        .collect();
    for vcpu in vcpus {
        vcpu.join().expect("vcpu");
    }
    stop.store(true, Ordering::Relaxed);
    server.join().expect("event thread");
    assert!(
        ring.used_idx(&mem) > 0,
        "the event thread served the queue meanwhile"
    );
    assert_eq!(
        t.status() & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}
