use super::*;
use crate::config_space::PciHeader;
use crate::testing::{MsiCall, RecordingMsi};

const ENABLE: u16 = 1 << 15;
const MASK_ALL: u16 = 1 << 14;

fn table(vectors: u16) -> (MsixTable, Arc<RecordingMsi>) {
    let msi = Arc::new(RecordingMsi::new(vectors));
    (MsixTable::new(vectors, msi.clone()).unwrap(), msi)
}

fn program(table: &mut MsixTable, vector: u16, address: u64, data: u32) {
    let base = u64::from(vector) * MSIX_ENTRY_SIZE;
    table.write_table(base, &address.to_le_bytes());
    table.write_table(base + 8, &data.to_le_bytes());
}

fn unmask(table: &mut MsixTable, vector: u16) {
    let offset = u64::from(vector) * MSIX_ENTRY_SIZE + 12;
    table.write_table(offset, &0u32.to_le_bytes());
}

fn mask(table: &mut MsixTable, vector: u16) {
    let offset = u64::from(vector) * MSIX_ENTRY_SIZE + 12;
    table.write_table(offset, &1u32.to_le_bytes());
}

fn read_u32(table: &mut MsixTable, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    table.read_table(offset, &mut data);
    u32::from_le_bytes(data)
}

fn pba(table: &mut MsixTable) -> u64 {
    let mut data = [0u8; 8];
    table.read_pba(0, &mut data);
    u64::from_le_bytes(data)
}

#[test]
fn capability_describes_table_and_pba() {
    let mut config = ConfigSpace::new(PciHeader::default());
    let cap = MsixCapability::add(&mut config, 3, (0, 0x2000), (2, 0x3000)).unwrap();
    let at = cap.offset();
    assert_eq!(config.read_u8(at), MSIX_CAPABILITY_ID);
    assert_eq!(config.read_u16(at + 2), 2, "table size is N - 1");
    assert_eq!(config.read_u32(at + 4), 0x2000);
    assert_eq!(config.read_u32(at + 8), 0x3002);
    config.write(at + 2, &0xffffu16.to_le_bytes());
    assert_eq!(
        cap.control(&config),
        0xc002,
        "only enable and mask are writable"
    );
    config.write(at + 4, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(config.read_u32(at + 4), 0x2000);
    assert_eq!(MsixCapability::table_len(3), 48);
    assert_eq!(MsixCapability::pba_len(3), 8);
    assert_eq!(MsixCapability::pba_len(65), 16);
    assert_eq!(
        MsixCapability::add(&mut config, 0, (0, 0), (0, 0x100)),
        Err(MsixError::VectorCount(0))
    );
    assert_eq!(
        MsixCapability::add(&mut config, 1, (6, 0), (0, 0x100)),
        Err(MsixError::Placement { bar: 6, offset: 0 })
    );
    assert_eq!(
        MsixCapability::add(&mut config, 1, (0, 0), (0, 0x104)),
        Err(MsixError::Placement {
            bar: 0,
            offset: 0x104
        })
    );
}

#[test]
fn outlet_must_have_enough_vectors() {
    let msi = Arc::new(RecordingMsi::new(2));
    assert_eq!(
        MsixTable::new(3, msi.clone()).unwrap_err(),
        MsixError::Outlet { have: 2, need: 3 }
    );
    assert_eq!(
        MsixTable::new(0, msi).unwrap_err(),
        MsixError::VectorCount(0)
    );
}

#[test]
fn entries_start_masked_and_read_back_as_written() {
    let (mut table, msi) = table(2);
    assert_eq!(read_u32(&mut table, 12), 1);
    program(&mut table, 1, 0xfee0_1003, 0x4041);
    assert_eq!(
        read_u32(&mut table, 16),
        0xfee0_1000,
        "address bits 1:0 are reserved"
    );
    assert_eq!(read_u32(&mut table, 20), 0);
    assert_eq!(read_u32(&mut table, 24), 0x4041);
    let mut qword = [0u8; 8];
    table.read_table(16, &mut qword);
    assert_eq!(u64::from_le_bytes(qword), 0xfee0_1000);
    table.write_table(28, &0xffff_fffeu32.to_le_bytes());
    assert_eq!(read_u32(&mut table, 28), 0, "reserved control bits read 0");
    // MSI-X is disabled: nothing was routed yet.
    assert!(msi.take_calls().is_empty());
}

#[test]
fn bad_table_accesses_are_counted_and_ignored() {
    let (mut table, msi) = table(2);
    let mut byte = [0u8; 1];
    table.read_table(0, &mut byte);
    assert_eq!(byte, [0xff]);
    let mut word = [0u8; 2];
    table.read_table(0, &mut word);
    let mut dword = [0u8; 4];
    table.read_table(2, &mut dword);
    table.read_table(32, &mut dword);
    table.read_table(u64::MAX - 3, &mut dword);
    let mut qword = [0u8; 8];
    table.read_table(4, &mut qword);
    assert_eq!(u64::from_le_bytes(qword), u64::MAX);
    table.write_table(1, &[1, 2, 3, 4]);
    table.write_table(32, &[0; 4]);
    table.write_table(u64::MAX, &[0]);
    table.write_pba(0, &[0xff; 8]);
    table.read_pba(8, &mut dword);
    table.read_pba(3, &mut dword);
    assert_eq!(table.rejected_accesses(), 12);
    assert_eq!(read_u32(&mut table, 0), 0);
    assert_eq!(pba(&mut table), 0);
    assert!(msi.take_calls().is_empty());
}

#[test]
fn enabling_routes_unmasked_vectors_with_their_messages() {
    let (mut table, msi) = table(2);
    program(&mut table, 0, 0xfee0_0000, 0x30);
    unmask(&mut table, 0);
    table.set_control(ENABLE | MASK_ALL);
    assert!(msi.take_calls().is_empty(), "function mask holds them back");
    table.set_control(ENABLE);
    let route = MsiMessage {
        address: 0xfee0_0000,
        data: 0x30,
    };
    assert_eq!(msi.take_calls(), vec![MsiCall::Configure(0, Some(route))]);
    // Any message, however odd, is passed on for the VMM to judge.
    program(&mut table, 0, 0xdead_beef_0000_0004, 0xffff_ffff);
    let calls = msi.take_calls();
    assert_eq!(
        calls.last(),
        Some(&MsiCall::Configure(
            0,
            Some(MsiMessage {
                address: 0xdead_beef_0000_0004,
                data: 0xffff_ffff
            })
        ))
    );
    table.set_control(0);
    assert_eq!(msi.take_calls(), vec![MsiCall::Configure(0, None)]);
    table.set_control(0);
    assert!(msi.take_calls().is_empty(), "no change, no call");
}

#[test]
fn masked_vectors_collect_pending_bits_delivered_on_unmask() {
    let (mut table, msi) = table(70);
    table.set_control(ENABLE);
    program(&mut table, 65, 0xfee0_0000, 0x41);
    table.trigger(65);
    assert!(table.pending(65));
    let mut high = [0u8; 4];
    table.read_pba(8, &mut high);
    assert_eq!(u32::from_le_bytes(high), 1 << 1);
    unmask(&mut table, 65);
    assert!(!table.pending(65));
    assert_eq!(msi.triggers(65), 1);
    msi.take_calls();
    table.trigger(65);
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(65)]);
    // The function mask holds every vector back the same way.
    table.set_control(ENABLE | MASK_ALL);
    table.trigger(65);
    table.trigger(65);
    assert!(table.pending(65));
    assert_eq!(msi.triggers(65), 0);
    table.set_control(ENABLE);
    assert_eq!(msi.triggers(65), 1, "two masked triggers deliver once");
    // Masking again stops the route and pends.
    mask(&mut table, 65);
    table.trigger(65);
    assert!(table.pending(65));
    assert_eq!(msi.triggers(65), 1);
}

#[test]
fn a_source_signalling_a_masked_vector_itself_is_latched_and_delivered_on_unmask() {
    // A passed-through device writes the vector's notifier, not the table.
    let (mut table, msi) = table(2);
    table.set_control(ENABLE);
    program(&mut table, 1, 0xfee0_0000, 0x51);
    msi.notifier(1).unwrap().write(1).unwrap();
    assert_eq!(pba(&mut table), 1 << 1, "the PBA shows it");
    assert!(table.pending(1));
    msi.take_calls();
    unmask(&mut table, 1);
    assert_eq!(msi.triggers(1), 1, "delivered once routed");
    assert!(!table.pending(1));
    // Signalled while masked and unmasked before the guest looked at the
    // PBA: delivered all the same.
    mask(&mut table, 1);
    msi.notifier(1).unwrap().write(1).unwrap();
    msi.take_calls();
    unmask(&mut table, 1);
    let route = MsiMessage {
        address: 0xfee0_0000,
        data: 0x51,
    };
    assert_eq!(
        msi.take_calls(),
        [MsiCall::Configure(1, Some(route)), MsiCall::Trigger(1)]
    );
    // With MSI-X off a stale signal is not latched.
    table.set_control(0);
    msi.notifier(0).unwrap().write(1).unwrap();
    assert_eq!(pba(&mut table), 0);
}

#[test]
fn triggers_while_disabled_or_out_of_range_are_dropped() {
    let (mut table, msi) = table(2);
    table.trigger(0);
    assert!(!table.pending(0));
    table.set_control(ENABLE);
    table.trigger(2);
    table.trigger(u16::MAX);
    assert_eq!(table.dropped_interrupts(), 3);
    assert!(msi.take_calls().is_empty());
    assert!(!table.pending(u16::MAX));
    assert!(table.vector_masked(u16::MAX));
    assert_eq!(table.message(2), None);
}

#[test]
fn outlet_failures_are_counted_not_fatal() {
    let (mut table, msi) = table(1);
    msi.set_failing(true);
    table.set_control(ENABLE);
    unmask(&mut table, 0);
    table.trigger(0);
    assert_eq!(table.outlet_errors(), 2);
}

#[test]
fn reset_masks_everything_and_unroutes() {
    let (mut table, msi) = table(2);
    table.set_control(ENABLE);
    program(&mut table, 1, 0xfee0_0000, 0x22);
    unmask(&mut table, 1);
    mask(&mut table, 1);
    table.trigger(1);
    unmask(&mut table, 1);
    mask(&mut table, 1);
    table.trigger(1);
    msi.take_calls();
    table.reset();
    assert!(!table.enabled());
    assert!(!table.pending(1));
    assert!(table.vector_masked(1));
    assert_eq!(read_u32(&mut table, 24), 0);
    assert!(msi.take_calls().is_empty(), "vector 1 was already unrouted");
}
