use super::*;

fn header() -> PciHeader {
    PciHeader {
        vendor_id: 0x1af4,
        device_id: 0x1042,
        revision_id: 1,
        class: 0x01,
        subclass: 0x80,
        prog_if: 0x05,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x0040,
        interrupt_pin: 0,
    }
}

fn read(space: &mut ConfigSpace, offset: u16, len: usize) -> u32 {
    let mut data = [0u8; 4];
    space.read(offset, &mut data[..len]);
    u32::from_le_bytes(data)
}

fn write32(space: &mut ConfigSpace, offset: u16, value: u32) -> ConfigWriteOutcome {
    space.write(offset, &value.to_le_bytes())
}

#[test]
fn header_fields_read_back_at_every_size() {
    let mut space = ConfigSpace::new(header());
    assert_eq!(read(&mut space, 0, 4), 0x1042_1af4);
    assert_eq!(read(&mut space, 0, 2), 0x1af4);
    assert_eq!(read(&mut space, 2, 2), 0x1042);
    assert_eq!(read(&mut space, 1, 1), 0x1a);
    assert_eq!(read(&mut space, 8, 4), 0x0180_0501);
    assert_eq!(
        read(&mut space, registers::SUBSYSTEM_VENDOR_ID, 4),
        0x0040_1af4
    );
    assert_eq!(read(&mut space, registers::HEADER_TYPE, 1), 0);
    assert_eq!(read(&mut space, registers::CAPABILITIES_POINTER, 1), 0);
    assert_eq!(space.rejected_accesses(), 0);
}

#[test]
fn every_offset_and_size_is_served_or_refused_and_counted() {
    let mut space = ConfigSpace::new(header());
    let mut refused = 0;
    for len in [1usize, 2, 3, 4, 8] {
        for offset in (0..4096u16).chain([4096, 4097, u16::MAX]) {
            let ok = matches!(len, 1 | 2 | 4)
                && usize::from(offset) % len == 0
                && usize::from(offset) + len <= 4096;
            let mut data = vec![0u8; len];
            space.read(offset, &mut data);
            let outcome = space.write(offset, &vec![0xa5; len]);
            if !ok {
                refused += 2;
                assert!(data.iter().all(|b| *b == 0xff), "{offset:#x}/{len}");
                assert_eq!(outcome, ConfigWriteOutcome::default());
            }
        }
    }
    assert_eq!(space.rejected_accesses(), refused);
    // Identity fields are read-only, whatever was written.
    assert_eq!(read(&mut space, 0, 4), 0x1042_1af4);
    assert_eq!(read(&mut space, 8, 4), 0x0180_0501);
}

#[test]
fn only_writable_bits_change() {
    let mut space = ConfigSpace::new(header());
    write32(&mut space, registers::COMMAND, 0xffff_ffff);
    assert_eq!(space.command(), command::WRITABLE);
    assert_eq!(read(&mut space, registers::STATUS, 2), 0);
    space.write(registers::INTERRUPT_LINE, &[0x0b]);
    space.write(registers::INTERRUPT_PIN, &[0x03]);
    assert_eq!(read(&mut space, registers::INTERRUPT_LINE, 2), 0x000b);
    write32(&mut space, registers::ROM_BAR, 0xffff_ffff);
    assert_eq!(
        read(&mut space, registers::ROM_BAR, 4),
        0,
        "no expansion ROM"
    );
    write32(&mut space, 0x100, 0xffff_ffff);
    assert_eq!(read(&mut space, 0x100, 4), 0, "no extended capabilities");
}

#[test]
fn sizing_a_32_bit_bar_reads_back_its_size() {
    let mut space = ConfigSpace::new(header());
    space.add_bar(1, BarKind::Memory32, 0x4000).unwrap();
    write32(&mut space, 0x14, 0xffff_ffff);
    assert_eq!(read(&mut space, 0x14, 4), 0xffff_c000);
    write32(&mut space, 0x14, 0xc000_1234);
    assert_eq!(read(&mut space, 0x14, 4), 0xc000_0000);
    assert_eq!(space.bar(1).unwrap().address, 0xc000_0000);
    // Unused BAR registers stay zero.
    write32(&mut space, 0x10, 0xffff_ffff);
    assert_eq!(read(&mut space, 0x10, 4), 0);
}

#[test]
fn sizing_a_64_bit_bar_reads_back_its_size_in_both_halves() {
    let mut space = ConfigSpace::new(header());
    space
        .add_bar(0, BarKind::Memory64 { prefetchable: true }, 0x4000)
        .unwrap();
    space
        .add_bar(
            2,
            BarKind::Memory64 {
                prefetchable: false,
            },
            8 << 30,
        )
        .unwrap();
    for offset in (0x10..0x20).step_by(4) {
        write32(&mut space, offset, 0xffff_ffff);
    }
    assert_eq!(read(&mut space, 0x10, 4), 0xffff_c00c);
    assert_eq!(read(&mut space, 0x14, 4), 0xffff_ffff);
    assert_eq!(read(&mut space, 0x18, 4), 0x0000_0004);
    assert_eq!(read(&mut space, 0x1c, 4), 0xffff_fffe);
    write32(&mut space, 0x18, 0);
    write32(&mut space, 0x1c, 0x40);
    assert_eq!(space.bar(2).unwrap().address, 0x40_0000_0000);
    assert_eq!(space.bar(0).unwrap().address, 0xffff_ffff_ffff_c000);
}

#[test]
fn sizing_an_io_bar_keeps_its_flag() {
    let mut space = ConfigSpace::new(header());
    space.add_bar(5, BarKind::Io, 0x20).unwrap();
    write32(&mut space, 0x24, 0xffff_ffff);
    assert_eq!(read(&mut space, 0x24, 4), 0xffff_ffe1);
    write32(&mut space, 0x24, 0x1003);
    assert_eq!(read(&mut space, 0x24, 4), 0x1001);
    assert_eq!(space.bar(5).unwrap().address, 0x1000);
}

#[test]
fn bad_bars_are_refused() {
    let mut space = ConfigSpace::new(header());
    let wide = BarKind::Memory64 {
        prefetchable: false,
    };
    assert_eq!(
        space.add_bar(6, BarKind::Memory32, 16),
        Err(ConfigSpaceError::BarIndex(6))
    );
    assert_eq!(
        space.add_bar(5, wide, 16),
        Err(ConfigSpaceError::BarIndex(5))
    );
    assert_eq!(
        space.add_bar(255, wide, 16),
        Err(ConfigSpaceError::BarIndex(255))
    );
    for (kind, size) in [
        (BarKind::Memory32, 8),
        (BarKind::Memory32, 0x3000),
        (BarKind::Memory32, 1 << 32),
        (BarKind::Io, 512),
        (BarKind::Io, 2),
        (wide, 0),
    ] {
        assert_eq!(
            space.add_bar(0, kind, size),
            Err(ConfigSpaceError::BarSize { kind, size })
        );
    }
    space.add_bar(1, wide, 0x1000).unwrap();
    assert_eq!(
        space.add_bar(2, BarKind::Memory32, 16),
        Err(ConfigSpaceError::BarInUse(2))
    );
    assert_eq!(
        space.add_bar(0, wide, 16),
        Err(ConfigSpaceError::BarInUse(0))
    );
    assert_eq!(
        space.add_bar(1, BarKind::Io, 16),
        Err(ConfigSpaceError::BarInUse(1))
    );
    assert_eq!(space.bars().len(), 1);
}

#[test]
fn capabilities_form_a_list() {
    let mut space = ConfigSpace::new(header());
    let first = space.add_capability(0x09, &[1, 2, 3]).unwrap();
    let second = space.add_capability(0x11, &[0; 10]).unwrap();
    assert_eq!(first, 0x40);
    assert_eq!(second, 0x48);
    assert_eq!(read(&mut space, registers::STATUS, 2), 1 << 4);
    assert_eq!(read(&mut space, registers::CAPABILITIES_POINTER, 1), 0x40);
    assert_eq!(read(&mut space, 0x40, 4), 0x0201_4809);
    assert_eq!(read(&mut space, 0x44, 1), 0x03);
    assert_eq!(
        read(&mut space, 0x48, 2),
        0x0011,
        "the last capability ends the list"
    );
    // Capability bodies are read-only until opened.
    space.write(0x42, &[0xff]);
    assert_eq!(read(&mut space, 0x42, 1), 1);
    space.set_write_mask(0x42, &[0x0f]).unwrap();
    space.write(0x42, &[0xff]);
    assert_eq!(read(&mut space, 0x42, 1), 0x0f);
    assert!(space.set_write_mask(4095, &[0, 0]).is_err());
    assert_eq!(
        space.add_capability(0x09, &[0; 200]),
        Err(ConfigSpaceError::CapabilityTooLarge(202))
    );
}

#[test]
fn bar_moves_are_reported_only_while_decoding() {
    let mut space = ConfigSpace::new(header());
    space.add_bar(0, BarKind::Memory32, 0x1000).unwrap();
    space
        .add_bar(
            2,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x4000,
        )
        .unwrap();
    // Sizing with decoding off moves nothing.
    let outcome = write32(&mut space, 0x10, 0xffff_ffff);
    assert!(outcome.bar_moves.is_empty());
    write32(&mut space, 0x10, 0xc000_0000);
    write32(&mut space, 0x18, 0x4000);
    write32(&mut space, 0x1c, 0x1);
    let outcome = space.write(registers::COMMAND, &command::MEMORY.to_le_bytes());
    assert_eq!(outcome.command_changed, Some((0, command::MEMORY)));
    assert_eq!(outcome.bar_moves.len(), 2);
    assert_eq!(outcome.bar_moves[0].from, None);
    assert_eq!(outcome.bar_moves[0].to, Some(0xc000_0000));
    assert_eq!(outcome.bar_moves[1].to, Some(0x1_0000_4000));
    // Each half of a 64-bit BAR moves it.
    let outcome = write32(&mut space, 0x1c, 0x2);
    assert_eq!(
        outcome.bar_moves,
        vec![BarMove {
            index: 2,
            kind: BarKind::Memory64 {
                prefetchable: false
            },
            size: 0x4000,
            from: Some(0x1_0000_4000),
            to: Some(0x2_0000_4000),
        }]
    );
    // A byte write into a BAR moves it too; writing the same value moves nothing.
    let outcome = space.write(0x13, &[0xd0]);
    assert_eq!(outcome.bar_moves[0].to, Some(0xd000_0000));
    assert!(space.write(0x13, &[0xd0]).bar_moves.is_empty());
    // Disabling decode takes them all away.
    let outcome = space.write(registers::COMMAND, &[0, 0]);
    assert!(outcome.bar_moves.iter().all(|m| m.to.is_none()));
    assert_eq!(outcome.bar_moves.len(), 2);
    // I/O decode does not affect memory BARs.
    assert!(
        space
            .write(registers::COMMAND, &[1, 0])
            .bar_moves
            .is_empty()
    );
}

#[test]
fn device_side_accessors_ignore_masks_and_bounds() {
    let mut space = ConfigSpace::new(header());
    space.set_u32(0x50, 0xdead_beef);
    assert_eq!(space.read_u32(0x50), 0xdead_beef);
    assert_eq!(space.read_u16(0x52), 0xdead);
    space.set_u32(4094, 0x1234_5678);
    assert_eq!(space.read_u16(4094), 0x5678);
    assert_eq!(space.read_u32(4094), 0xffff_5678);
    assert_eq!(space.read_u8(u16::MAX), 0xff);
    space.set_u16(u16::MAX, 0);
}
