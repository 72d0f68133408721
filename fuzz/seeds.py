#!/usr/bin/env python3
"""Writes the seed corpora of the targets added in the Containment round
(corpus/<target>/seed-*). Compressed samples come from the system's gzip,
bzip2, xz, lz4 and zstd; the lzop container is built here. Run from fuzz/;
existing seeds with the same names are overwritten."""
import os
import struct
import subprocess
import zlib

def put(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# http_request: limit choice, cut seed, stream.
streams = [
    b"PUT /machine-config HTTP/1.1\r\nContent-Length: 16\r\n\r\n{\"vcpu_count\":1}GET / HTTP/1.1\r\n\r\n",
    b"PUT /drives/rootfs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /version HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
]
for i, s in enumerate(streams):
    put("http_request", f"seed-{i}", bytes([4 - (i % 3), 0x35 + i]) + s)

# api_body: route byte (see ROUTES, IDS), body.
bodies = {
    0: b'{"action_type":"InstanceStart"}',
    1: b'{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}',
    2: b'{"vcpu_count":2,"mem_size_mib":256,"smt":false}',
    3: b'{"mem_size_mib":512}',
    4: b'{"drive_id":"rootfs","path_on_host":"/img","is_root_device":true,"is_read_only":false}',
    5: b'{"drive_id":"rootfs","path_on_host":"/other"}',
    19: b'{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}',
    20: b'{"iface_id":"eth0"}',
    8: b'{"guest_cid":3,"uds_path":"/tmp/v.sock"}',
    9: b'{}',
    10: b'{"log_path":"/tmp/log","level":"Info"}',
    11: b'{"metrics_path":"/tmp/m"}',
    12: b'{"state":"Paused"}',
}
for choice, body in bodies.items():
    put("api_body", f"seed-{choice:02}", bytes([choice]) + body)

# cli_specs: choice % 3 picks the flag.
for i, spec in enumerate([
    b"\x00/img/root.ext4,root,ro,id=rootfs",
    b"\x03data.img,partuuid=1234-5678",
    b"\x01tap0,mac=06:00:00:00:00:01,id=eth0,mtu=1500",
    b"\x04tap1",
    b"\x023,/tmp/v.sock",
]):
    put("cli_specs", f"seed-{i}", spec)

# loader_elf: a 64-bit x86_64 ELF, one PT_LOAD at 1 MiB, optionally a PVH note.
def elf(pvh):
    phnum = 2 if pvh else 1
    code = b"\xf4" * 64
    note = b""
    if pvh:
        note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x100000)
    phoff = 64
    data_off = phoff + 56 * phnum
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 7, data_off, 0x100000, 0x100000, len(code), len(code) + 0x1000, 0x1000)
    if pvh:
        ph += struct.pack("<IIQQQQQQ", 4, 4, data_off + len(code), 0, 0, len(note), len(note), 4)
    return ehdr + ph + code + note
put("loader_elf", "seed-plain", elf(False))
put("loader_elf", "seed-pvh", elf(True))

# loader_bzimage: protocol 2.15, LOADED_HIGH, XLF_KERNEL_64, one setup sector.
def bzimage(relocatable):
    img = bytearray(1024 + 4096)
    img[0x1f1] = 1                                   # setup_sects
    struct.pack_into("<I", img, 0x1f4, 4096 // 16)   # syssize
    img[0x1fe:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020f)       # version
    img[0x211] = 1                                   # loadflags: LOADED_HIGH
    struct.pack_into("<I", img, 0x230, 0x200000)     # kernel_alignment
    img[0x234] = 1 if relocatable else 0
    struct.pack_into("<H", img, 0x236, 1)            # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", img, 0x238, 2048)         # cmdline_size
    struct.pack_into("<Q", img, 0x258, 0x100000)     # pref_address
    struct.pack_into("<I", img, 0x260, 0x100000)     # init_size
    img[1024:] = bytes(range(256)) * 16
    return bytes(img)
put("loader_bzimage", "seed-fixed", bzimage(False))
put("loader_bzimage", "seed-relocatable", bzimage(True))

# decompress_*: three limit bytes (even: 4 MiB), then the payload as the
# kernel's build leaves it (the uncompressed size appended).
sample = b"sie vmlinux " * 40 + bytes(range(256))
def tool(*argv):
    return subprocess.run(argv, input=sample, stdout=subprocess.PIPE, check=True).stdout
def lzop(blocks):
    head = b"\x89LZO\x00\r\n\x1a\n"
    head += struct.pack(">HHHBB", 0x1040, 0x2080, 0x0940, 1, 5)
    head += struct.pack(">I", 0) + struct.pack(">I", 0o100644) + struct.pack(">II", 0, 0)
    head += b"\x00" + struct.pack(">I", zlib.adler32(head[9:]))
    body = b""
    for out_len, data in blocks:
        body += struct.pack(">II", out_len, len(data)) + data
    return head + body + struct.pack(">I", 0)
size = struct.pack("<I", len(sample))
payloads = {
    "gzip": tool("gzip", "-9n"),
    "bzip2": tool("bzip2", "-9"),
    "lzma": tool("xz", "--format=lzma"),
    "xz": tool("xz", "--check=crc32"),
    "lz4": tool("lz4", "-l", "-9"),
    "zstd": tool("zstd", "-19", "-q"),
    # One stored block and one LZO1X block: 4 literals, then the end marker.
    "lzo": lzop([(len(sample), sample), (4, b"\x15abcd\x11\x00\x00")]),
}
for codec, payload in payloads.items():
    put(f"decompress_{codec}", "seed-full", b"\x00\x00\x00" + payload + size)
    # Odd limit bytes: a limit of 100 bytes, which cuts the output.
    put(f"decompress_{codec}", "seed-cut", struct.pack("<I", 100 * 2 + 1)[:3] + payload)

# cmdline: mode, base up to \n, then devices and the kernel's limit.
put("cmdline", "seed-built", b"\x00console=ttyS0 reboot=k panic=1\n\x01\x00\x04" + b"\x02\x02" * 4 + b"\x01\x00\x08\x00\x00")
put("cmdline", "seed-pvh", b"\x02console=hvc0 root=/dev/vda\n\x00\x02\x05\x05")
put("cmdline", "seed-raw", b"\x01console=ttyS0 quiet\n\x01\x00\x01\x00\x00")

# vsock_packet: one segment at 0x800 (index 0x100 * 8), 81 bytes, then a
# 44-byte header with len 37 and 37 payload bytes; and a split one.
hdr = struct.pack("<QQIIIHHIII", 3, 2, 1234, 1024, 37, 1, 5, 0, 262144, 0)
put("vsock_packet", "seed-one", b"\x00" + b"\x02\x00\x01" + b"\x03\x50" + b"\x00" + hdr + b"p" * 37)
put("vsock_packet", "seed-split", b"\x02" + b"\x02\x00\x01\x03\x13" + b"\x02\x00\x02\x03\x13" + b"\x02\x00\x03\x03\x40"
    + b"\x00" + hdr + b"q" * 37)

# vsock_muxer: a guest connect to port 1024, pops, events, accept, data.
def pkt(op, src=7, payload=b""):
    b = b"\x03\x03" + bytes([src]) + struct.pack("<I", 4321) + b"\x03" + bytes([op, 0, 1, 0, 2, 0])
    return b"\x00" + b + bytes([1, len(payload)]) + payload + b"\x01"
mux = pkt(1) + b"\x03\x02\x03" + b"\x05" + b"\x06\x02" + b"\x05\x03\x02\x03"
mux += pkt(5, payload=b"hello") + b"\x05\x06\x05\x00" + b"\x03\x02\x03" + pkt(4) + b"\x05\x03\x02\x03"
put("vsock_muxer", "seed-guest-connect", mux)
put("vsock_muxer", "seed-host-connect", b"\x06\x00\x02" + b"\x05\x03\x02\x03" + pkt(2) + b"\x05\x03\x02\x03")

# legacy devices: (op byte, offset choice, offset, width choice, r/w, data).
def ops(*accesses):
    out = b"\x01"
    for offset, write, value in accesses:
        out += b"\x01" + b"\x02" + bytes([offset]) + b"\x01" + (b"\x00" + bytes([value]) if write else b"\x01")
    return out
put("legacy_i8042", "seed", ops((4, True, 0xaa), (4, False, 0), (0, False, 0), (4, True, 0x60), (0, True, 0x45),
                                (4, True, 0x20), (0, False, 0), (0, True, 0xff), (0, False, 0), (4, True, 0xfe)))
put("legacy_rtc", "seed", ops((0, True, 0x0b), (1, True, 0x86), (0, True, 0x00), (1, True, 0x59), (0, True, 0x0b),
                              (1, True, 0x02), (0, True, 0x04), (1, False, 0), (0, True, 0x40), (1, True, 0x12)))
put("legacy_serial", "seed", ops((3, True, 0x80), (0, True, 0x01), (3, True, 0x03), (1, True, 0x03), (0, True, 0x41),
                                 (5, False, 0), (2, False, 0), (0, False, 0), (4, True, 0x10), (0, True, 0x42)))

# acpi_tables: vCPU choice, device count choice, devices.
put("acpi_tables", "seed-small", b"\x03\x02" + b"\x01\x03" + b"\x00\xf8\x03\x04" + b"\x01\x60\x00\x64\x00\x01"
    + b"\x05" + b"\x04")
put("acpi_tables", "seed-many", b"\x03\xfe\x01\x27" + b"\x04" * 39)
put("acpi_tables", "seed-bad", b"\x01\x01\x02" + b"\x03" + b"\x00\x00\x00\x00\x01\x00\x00\x00" * 2)
