use super::*;
use crate::device::NoBarMapper;
use crate::root::PciWindows;

fn ports() -> PciConfigIo {
    PciConfigIo::new(Arc::new(PciRoot::new(
        PciWindows::default(),
        Arc::new(NoBarMapper),
    )))
}

fn address(device: u32, register: u32) -> [u8; 4] {
    (ENABLE | device << 11 | register).to_le_bytes()
}

#[test]
fn address_register_keeps_its_defined_bits() {
    let io = ports();
    io.write(0, &u32::MAX.to_le_bytes());
    let mut data = [0u8; 4];
    io.read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x8fff_fffc);
    // Narrow accesses to the address register are not the mechanism.
    io.write(0, &[0]);
    io.write(1, &[0]);
    let mut byte = [0u8];
    io.read(0, &mut byte);
    assert_eq!(byte, [0xff]);
    io.read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x8fff_fffc);
    assert_eq!(io.rejected_accesses(), 3);
}

#[test]
fn data_port_lanes_reach_register_bytes() {
    let io = ports();
    io.write(0, &address(0, 0));
    let mut data = [0u8; 4];
    io.read(4, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x0d57_8086);
    let mut word = [0u8; 2];
    io.read(6, &mut word);
    assert_eq!(u16::from_le_bytes(word), 0x0d57);
    let mut byte = [0u8];
    io.read(5, &mut byte);
    assert_eq!(byte, [0x80]);
    io.write(0, &address(0, 0x08));
    io.read(7, &mut byte);
    assert_eq!(byte, [0x06], "class code of a host bridge");
    // A word at 0xCFD is unaligned in configuration space.
    io.read(5, &mut word);
    assert_eq!(word, [0xff; 2]);
    // Writes reach the function too.
    io.write(0, &address(0, 0x3c));
    io.write(4, &[0x0a]);
    io.read(4, &mut byte);
    assert_eq!(byte, [0x0a]);
}

#[test]
fn disabled_address_or_absent_device_reads_all_ones() {
    let io = ports();
    io.write(0, &(0x0000_0000u32).to_le_bytes());
    let mut data = [0u8; 4];
    io.read(4, &mut data);
    assert_eq!(data, [0xff; 4]);
    io.write(4, &[0; 4]);
    assert_eq!(io.rejected_accesses(), 2);
    io.write(0, &address(3, 0));
    io.read(4, &mut data);
    assert_eq!(data, [0xff; 4]);
    io.read(8, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn extended_register_bits_reach_past_the_header() {
    let io = ports();
    // Register 0x100 of the host bridge: no extended capability, so 0,
    // not an alias of its vendor and device IDs.
    io.write(0, &(ENABLE | 0x1 << 24).to_le_bytes());
    let mut data = [0xffu8; 4];
    io.read(4, &mut data);
    assert_eq!(data, [0; 4]);
    io.write(0, &(ENABLE | 0xf << 24 | 0xfc).to_le_bytes());
    io.read(4, &mut data);
    assert_eq!(data, [0; 4], "register 0xffc");
}
