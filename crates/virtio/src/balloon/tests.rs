//! The balloon through its registers and rings, with a discard that
//! records what the host was asked to drop.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::VirtioMmioTransport;
use crate::testing::{DATA, Driver, MEM_SIZE, Ring, transport};

type Dropped = Arc<Mutex<Vec<(u64, u64)>>>;

/// Records each range and claims it dropped in full.
struct Recording(Dropped);

impl PageDiscard for Recording {
    fn discard(&self, _mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<u64> {
        self.0.lock().unwrap().push((addr.0, len));
        Ok(len)
    }
}

fn balloon(options: BalloonOptions) -> (Balloon, Dropped) {
    let dropped = Dropped::default();
    let device = Balloon::new(options, Box::new(Recording(dropped.clone()))).unwrap();
    (device, dropped)
}

fn rings(n: u64) -> Vec<Ring> {
    (1..=n).map(|i| Ring::new(i * 0x1000, 16)).collect()
}

fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Offers `pfns` as one device-readable buffer on `ring` and notifies.
fn send_pfns(d: &Driver<'_, Balloon>, mem: &GuestMemory, ring: &Ring, queue: u32, pfns: &[u32]) {
    let bytes = pfn_bytes(pfns);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    let head = ring.avail_idx(mem) % ring.size;
    ring.set_chain(mem, head, &[(DATA, bytes.len() as u32, false)]);
    ring.publish(mem, &[head]);
    d.notify(queue);
}

fn config_u32(d: &Driver<'_, Balloon>, offset: u32) -> u32 {
    d.read(VIRTIO_MMIO_CONFIG + offset)
}

fn all_options() -> BalloonOptions {
    BalloonOptions {
        target_pages: 256,
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_reporting: true,
        free_page_hinting: true,
    }
}

#[test]
fn offers_what_it_was_configured_with_and_reports_the_target() {
    let (device, _) = balloon(BalloonOptions {
        target_pages: 512,
        ..BalloonOptions::default()
    });
    assert_eq!(device.queue_max_sizes().len(), 2);
    assert_eq!(device.features(), 1 << VIRTIO_F_VERSION_1);
    let (t, _mem, _irq) = transport(device);
    let d = Driver::new(&t);
    assert_eq!(config_u32(&d, 0), 512);
    let (all, _) = balloon(all_options());
    assert_eq!(all.queue_max_sizes().len(), 5);
    let want = [1, 2, 3, 5]
        .iter()
        .fold(1 << VIRTIO_F_VERSION_1, |f, b| f | 1 << b);
    assert_eq!(all.features(), want);
}

#[test]
fn the_driver_writes_actual_and_nothing_else() {
    let (device, _) = balloon(BalloonOptions::default());
    let (t, _mem, _irq) = transport(device);
    let d = Driver::new(&t);
    d.start(&rings(2));
    d.write(VIRTIO_MMIO_CONFIG + 4, 77);
    d.write(VIRTIO_MMIO_CONFIG, 5);
    assert_eq!(config_u32(&d, 4), 77);
    assert_eq!(config_u32(&d, 0), 0);
    assert_eq!(t.with_device(|b| b.actual_pages()), 77);
    assert_eq!(t.counters().invalid_accesses, 1);
}

#[test]
fn inflate_drops_runs_of_pages_and_skips_pages_outside_ram() {
    let (device, dropped) = balloon(BalloonOptions::default());
    let counters = device.balloon_counters().clone();
    let (t, mem, irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    let outside = (MEM_SIZE / BALLOON_PAGE) as u32;
    send_pfns(&d, &mem, &r[0], 0, &[10, 11, 12, outside, u32::MAX, 20]);
    assert_eq!(r[0].used(&mem, 0), (0, 0));
    assert_eq!(irq.count(), 1);
    assert_eq!(d.take_interrupt(), VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        *dropped.lock().unwrap(),
        [(10 * 4096, 3 * 4096), (20 * 4096, 4096)]
    );
    let fields = counters.fields();
    assert_eq!(fields[0], ("inflated_pages", 4));
    assert_eq!(fields[6], ("invalid_pfns", 2));
    assert_eq!(fields[4], ("discarded_bytes", 4 * 4096));
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn deflate_counts_pages_and_drops_nothing() {
    let (device, dropped) = balloon(BalloonOptions::default());
    let counters = device.balloon_counters().clone();
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    send_pfns(&d, &mem, &r[1], 1, &[10, 11, u32::MAX]);
    assert_eq!(r[1].used_idx(&mem), 1);
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(counters.fields()[1], ("deflated_pages", 2));
    assert_eq!(counters.fields()[6], ("invalid_pfns", 1));
}

#[test]
fn a_request_too_long_or_writable_fails_whole() {
    let (device, dropped) = balloon(BalloonOptions::default());
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    // One page number more than allowed.
    let len = (MAX_PFNS * 4 + 4) as u32;
    r[0].set_chain(&mem, 0, &[(DATA, len, false)]);
    r[0].publish(&mem, &[0]);
    d.notify(0);
    r[0].set_chain(&mem, 1, &[(DATA, 8, true)]);
    r[0].publish(&mem, &[1]);
    d.notify(0);
    assert_eq!(r[0].used_idx(&mem), 2);
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(t.counters().errors, 2);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn a_bad_available_index_needs_reset() {
    let (device, _) = balloon(BalloonOptions::default());
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    r[0].set_avail_idx(&mem, 100);
    d.notify(0);
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

/// Starts a balloon with every feature; queues: inflate, deflate, stats,
/// hint, report.
fn full() -> (
    VirtioMmioTransport<Balloon>,
    GuestMemory,
    Vec<Ring>,
    Dropped,
) {
    let (device, dropped) = balloon(all_options());
    let (t, mem, _irq) = transport(device);
    let r = rings(5);
    Driver::new(&t).start(&r);
    (t, mem, r, dropped)
}

#[test]
fn reported_free_ranges_are_dropped() {
    let (t, mem, r, dropped) = full();
    let d = Driver::new(&t);
    r[4].set_chain(
        &mem,
        0,
        &[(0x8_0000, 0x2_0000, true), (0xa_0000, 0x1000, true)],
    );
    r[4].publish(&mem, &[0]);
    d.notify(4);
    assert_eq!(r[4].used(&mem, 0), (0, 0));
    assert_eq!(
        *dropped.lock().unwrap(),
        [(0x8_0000, 0x2_0000), (0xa_0000, 0x1000)]
    );
    // A device-readable buffer is not a report.
    r[4].set_chain(&mem, 2, &[(0x8_0000, 0x1000, false)]);
    r[4].publish(&mem, &[2]);
    d.notify(4);
    assert_eq!(dropped.lock().unwrap().len(), 2);
    assert_eq!(t.counters().errors, 1);
}

#[test]
fn queues_are_numbered_by_the_features_the_driver_took() {
    let (device, dropped) = balloon(all_options());
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(3);
    // Reporting only: its queue is the third.
    d.start_with(
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_REPORTING,
        &r,
    );
    r[2].set_chain(&mem, 0, &[(0x8_0000, 0x1000, true)]);
    r[2].publish(&mem, &[0]);
    d.notify(2);
    assert_eq!(*dropped.lock().unwrap(), [(0x8_0000, 0x1000)]);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

fn stats_entry(tag: u16, value: u64) -> Vec<u8> {
    let mut out = tag.to_le_bytes().to_vec();
    out.extend(value.to_le_bytes());
    out
}

#[test]
fn the_stats_buffer_is_held_until_the_timer_and_then_returned() {
    let (t, mem, r, _) = full();
    let d = Driver::new(&t);
    let mut bytes = stats_entry(4, 1000);
    bytes.extend(stats_entry(5, 5000));
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    r[2].set_chain(&mem, 0, &[(DATA, bytes.len() as u32, false)]);
    r[2].publish(&mem, &[0]);
    d.notify(2);
    assert_eq!(r[2].used_idx(&mem), 0, "held until the refresh");
    let stats = t.with_device(|b| b.stats()).unwrap();
    assert_eq!(
        stats.fields(),
        [("free_memory", 1000), ("total_memory", 5000)]
    );
    t.timer_event(0);
    assert_eq!(r[2].used_idx(&mem), 1);
    assert_eq!(r[2].used(&mem, 0), (0, 0));
    // Nothing held: a second tick returns nothing.
    t.timer_event(0);
    assert_eq!(r[2].used_idx(&mem), 1);
}

#[test]
fn a_second_stats_buffer_returns_the_first() {
    let (t, mem, r, _) = full();
    let d = Driver::new(&t);
    let bytes = stats_entry(6, 1);
    mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    for head in [0u16, 1, 2] {
        r[2].set_chain(&mem, head, &[(DATA, 10, false)]);
        r[2].publish(&mem, &[head]);
        d.notify(2);
    }
    // Two given back early, the newest held.
    assert_eq!(r[2].used_idx(&mem), 2);
    assert_eq!((r[2].used(&mem, 0).0, r[2].used(&mem, 1).0), (0, 1));
    assert_eq!(t.counters().errors, 2);
    t.timer_event(0);
    assert_eq!(r[2].used(&mem, 2), (2, 0));
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn stats_cannot_be_toggled_after_they_were_configured() {
    let (t, _mem, _r, _) = full();
    assert_eq!(
        t.with_device(|b| b.set_stats_interval(0)),
        Err(BalloonError::StatsToggle)
    );
    assert_eq!(t.with_device(|b| b.set_stats_interval(5)), Ok(()));
    assert_eq!(t.with_device(|b| b.stats_interval_s()), 5);
    let (mut off, _) = balloon(BalloonOptions::default());
    assert_eq!(off.set_stats_interval(1), Err(BalloonError::StatsToggle));
    assert_eq!(off.stats(), Err(BalloonError::StatsDisabled));
}

fn send_cmd(d: &Driver<'_, Balloon>, mem: &GuestMemory, ring: &Ring, id: u32) {
    let head = ring.avail_idx(mem) % ring.size;
    mem.write_obj(id, GuestAddress(DATA)).unwrap();
    ring.set_chain(mem, head, &[(DATA, 4, false)]);
    ring.publish(mem, &[head]);
    d.notify(3);
}

fn send_hint(d: &Driver<'_, Balloon>, mem: &GuestMemory, ring: &Ring, addr: u64) {
    let head = ring.avail_idx(mem) % ring.size;
    ring.set_chain(mem, head, &[(addr, 0x1000, true)]);
    ring.publish(mem, &[head]);
    d.notify(3);
}

#[test]
fn a_hinting_run_drops_hinted_pages_and_is_acknowledged_on_stop() {
    let (t, mem, r, dropped) = full();
    let d = Driver::new(&t);
    // Before a run, hints are not dropped.
    send_hint(&d, &mem, &r[3], 0x9_0000);
    assert!(dropped.lock().unwrap().is_empty());
    t.with_device(|b| b.start_hinting(true)).unwrap();
    t.config_changed();
    assert_eq!(
        d.take_interrupt() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(config_u32(&d, 8), 2);
    send_cmd(&d, &mem, &r[3], 2);
    send_hint(&d, &mem, &r[3], 0x8_0000);
    assert_eq!(*dropped.lock().unwrap(), [(0x8_0000, 0x1000)]);
    send_cmd(&d, &mem, &r[3], CMD_ID_STOP);
    assert_eq!(config_u32(&d, 8), CMD_ID_DONE);
    assert_eq!(
        d.take_interrupt() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(
        t.with_device(|b| b.hinting_status()),
        Ok(HintingStatus {
            host_cmd: CMD_ID_DONE,
            guest_cmd: Some(CMD_ID_STOP)
        })
    );
    // The next run has a new id; without the acknowledgement, stop does it.
    t.with_device(|b| b.start_hinting(false)).unwrap();
    assert_eq!(config_u32(&d, 8), 3);
    send_cmd(&d, &mem, &r[3], 3);
    send_cmd(&d, &mem, &r[3], CMD_ID_STOP);
    assert_eq!(config_u32(&d, 8), 3);
    t.with_device(|b| b.stop_hinting()).unwrap();
    assert_eq!(config_u32(&d, 8), CMD_ID_DONE);
}

#[test]
fn hinting_needs_the_feature_and_a_live_driver() {
    let (mut off, _) = balloon(BalloonOptions::default());
    assert_eq!(off.start_hinting(true), Err(BalloonError::HintingDisabled));
    assert_eq!(off.hinting_status(), Err(BalloonError::HintingDisabled));
    let (mut idle, _) = balloon(all_options());
    assert_eq!(idle.start_hinting(true), Err(BalloonError::NotActive));
}

#[test]
fn inflated_pages_really_leave_the_host_with_the_host_discard() {
    let device = Balloon::new(BalloonOptions::default(), Box::new(HostDiscard)).unwrap();
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    mem.write_slice(&[0x5a; 4096], GuestAddress(0x8_0000))
        .unwrap();
    send_pfns(&d, &mem, &r[0], 0, &[0x80]);
    let mut page = [0xffu8; 4096];
    mem.read_slice(&mut page, GuestAddress(0x8_0000)).unwrap();
    assert_eq!(page, [0u8; 4096]);
}

#[test]
fn a_stats_buffer_offered_before_driver_ok_is_taken_at_the_first_tick() {
    let (device, _) = balloon(all_options());
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(5);
    assert!(d.negotiate(d.device_features()));
    for (index, ring) in r.iter().enumerate() {
        d.setup_queue(index as u32, ring);
    }
    // As Linux does: the first buffer and a kick before DRIVER_OK.
    mem.write_slice(&stats_entry(4, 42), GuestAddress(DATA))
        .unwrap();
    r[2].set_chain(&mem, 0, &[(DATA, 10, false)]);
    r[2].publish(&mem, &[0]);
    d.notify(2);
    d.add_status(virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(r[2].used_idx(&mem), 0);
    t.timer_event(0);
    // Read and given straight back for fresh numbers.
    assert_eq!(r[2].used_idx(&mem), 1);
    let stats = t.with_device(|b| b.stats()).unwrap();
    assert_eq!(stats.fields(), [("free_memory", 42)]);
}

#[test]
fn a_torn_page_number_is_counted_and_the_whole_ones_served() {
    let (device, dropped) = balloon(BalloonOptions::default());
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let r = rings(2);
    d.start(&r);
    mem.write_slice(&pfn_bytes(&[30]), GuestAddress(DATA))
        .unwrap();
    r[0].set_chain(&mem, 0, &[(DATA, 6, false)]);
    r[0].publish(&mem, &[0]);
    d.notify(0);
    assert_eq!(*dropped.lock().unwrap(), [(30 * 4096, 4096)]);
    assert_eq!(t.counters().errors, 1);
}

#[test]
fn a_hint_command_of_the_wrong_length_is_refused() {
    let (t, mem, r, dropped) = full();
    let d = Driver::new(&t);
    t.with_device(|b| b.start_hinting(true)).unwrap();
    // Eight readable bytes: neither a command id nor free pages.
    mem.write_obj(2u64, GuestAddress(DATA)).unwrap();
    r[3].set_chain(&mem, 0, &[(DATA, 8, false)]);
    r[3].publish(&mem, &[0]);
    d.notify(3);
    assert_eq!(
        t.with_device(|b| b.hinting_status()).unwrap().guest_cmd,
        None
    );
    send_hint(&d, &mem, &r[3], 0x8_0000);
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(t.counters().errors, 1);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn a_snapshot_keeps_the_target_actual_and_hinting_run() {
    let (t, mem, r, _) = full();
    let d = Driver::new(&t);
    t.with_device(|b| b.set_target_pages(300));
    d.write(VIRTIO_MMIO_CONFIG + 4, 120);
    t.with_device(|b| b.start_hinting(false)).unwrap();
    send_cmd(&d, &mem, &r[3], 2);
    t.with_device(|b| b.set_stats_interval(7)).unwrap();
    let saved = t.state();
    assert!(saved.device.is_some());
    // A fresh balloon as a restore builds it from the configuration.
    let (device, _) = balloon(all_options());
    let (fresh, _, _) = transport(device);
    fresh.restore(&saved).unwrap();
    let fd = Driver::new(&fresh);
    assert_eq!(
        (config_u32(&fd, 0), config_u32(&fd, 4), config_u32(&fd, 8)),
        (300, 120, 2)
    );
    assert_eq!(fresh.with_device(|b| b.stats_interval_s()), 7);
    assert_eq!(
        fresh.with_device(|b| b.hinting_status()),
        Ok(HintingStatus {
            host_cmd: 2,
            guest_cmd: Some(2)
        })
    );
    // The next run goes on numbering.
    fresh.with_device(|b| b.start_hinting(true)).unwrap();
    assert_eq!(config_u32(&fd, 8), 3);
    // A balloon configured without statistics refuses a state with them.
    let (plain, _) = balloon(BalloonOptions {
        free_page_reporting: true,
        free_page_hinting: true,
        deflate_on_oom: true,
        ..BalloonOptions::default()
    });
    let (other, _, _) = transport(plain);
    assert!(other.restore(&saved).is_err());
}

#[test]
fn the_held_stats_buffer_goes_back_before_a_snapshot() {
    let (t, mem, r, _) = full();
    let d = Driver::new(&t);
    mem.write_slice(&stats_entry(4, 1), GuestAddress(DATA))
        .unwrap();
    r[2].set_chain(&mem, 0, &[(DATA, 10, false)]);
    r[2].publish(&mem, &[0]);
    d.notify(2);
    assert_eq!(r[2].used_idx(&mem), 0);
    t.quiesce();
    assert_eq!(r[2].used_idx(&mem), 1);
}

#[test]
fn a_chain_outside_ram_is_one_error_and_changes_nothing() {
    let (t, mem, r, dropped) = full();
    let d = Driver::new(&t);
    for q in [0u16, 1, 2, 3, 4] {
        r[usize::from(q)].set_chain(&mem, 0, &[(MEM_SIZE - 8, 64, q >= 3)]);
        r[usize::from(q)].publish(&mem, &[0]);
        d.notify(u32::from(q));
    }
    // Each used (with nothing), each counted once, nothing dropped.
    for ring in &r {
        assert_eq!(ring.used_idx(&mem), 1);
    }
    assert_eq!(t.counters().errors, 5);
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}
