//! The gdb stub on the real /dev/kvm, driven by a minimal GDB remote
//! protocol client written here (packets `$data#checksum`, `+` acks): the
//! `loop` guest is stopped before its first instruction, stepped, its
//! general and system registers (cr0, cr3, efer, fs_base) read and
//! written, stopped by gdb's `break` (kept in a debug register), a
//! hardware breakpoint and Ctrl-C; an `int3` goes into memory and comes out
//! again (kvm_pvm gives an `int3` to the guest, so only its insertion is
//! tested).
//!
//! The `loop` guest's first instructions, from its entry E:
//! `E: lea stack_top(%rip),%rsp` (7 bytes), `E+7: mov %rsi,%r12` (3),
//! `E+10: lea key(%rip),%rsi` (7), `E+17: mov $1000000,%edx` (5),
//! `E+22: call param_or_default` (5), `E+27: mov %rax,%rcx` (3),
//! `E+30: test %rcx,%rcx` (3), `E+33: jz` (2), `E+35: dec %rcx` (3),
//! `E+38: jnz E+35` (2), `E+40: jmp reset`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_hv::kvm::Kvm;
use sie_vmm::{BuildOptions, ConsoleOutput, VmOutcome};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A GDB remote protocol client, just enough for this test.
struct Client {
    stream: UnixStream,
}

impl Client {
    fn connect(path: &std::path::Path) -> Self {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(path) {
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .expect("socket timeout");
                return Self { stream };
            }
            assert!(Instant::now() < deadline, "sie never listened for gdb");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self, data: &str) {
        let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        let packet = format!("${data}#{sum:02x}");
        self.stream
            .write_all(packet.as_bytes())
            .expect("packet sent");
    }

    fn byte(&mut self) -> u8 {
        let mut b = [0u8];
        self.stream
            .read_exact(&mut b)
            .expect("an answer from the stub");
        b[0]
    }

    /// The next packet's data (acks skipped), acknowledged.
    fn receive(&mut self) -> String {
        while self.byte() != b'$' {}
        let mut data = Vec::new();
        loop {
            match self.byte() {
                b'#' => break,
                b => data.push(b),
            }
        }
        let sum = [self.byte(), self.byte()];
        let expected = data.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(
            std::str::from_utf8(&sum).expect("checksum text"),
            format!("{expected:02x}"),
            "checksum"
        );
        // The last packet (an exit) may come from a stub already gone.
        let _ = self.stream.write_all(b"+");
        // Run-length encoding: `X*n` is X and (n - 29) more of it.
        let mut text = Vec::new();
        let mut bytes = data.into_iter();
        while let Some(b) = bytes.next() {
            if b == b'*' {
                let count = bytes.next().expect("a run length") - 29;
                let last = *text.last().expect("a byte to repeat");
                text.extend(std::iter::repeat_n(last, usize::from(count)));
            } else {
                text.push(b);
            }
        }
        String::from_utf8(text).expect("packet text")
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.receive()
    }

    /// The registers of thread 1: (the 16 general ones, rip).
    fn registers(&mut self) -> (Vec<u64>, u64, String) {
        let hex = self.ask("g");
        let word = |i: usize| {
            let bytes = decode(&hex[i * 16..i * 16 + 16]);
            u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
        };
        ((0..16).map(word).collect(), word(16), hex)
    }

    fn read_memory(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let hex = self.ask(&format!("m{addr:x},{len:x}"));
        decode(&hex)
    }
}

fn decode(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| {
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .unwrap_or_else(|_| panic!("not hex: {hex}"))
        })
        .collect()
}

fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the system registers begin in the `g` packet (bytes), after the
/// general, x87 and SSE registers; their order is sie's target description.
const SYSTEM_AT: usize = 0x218;
const FS_BASE: usize = 0;
const CR0: usize = 2;
const CR3: usize = 4;
const CR4: usize = 5;
const EFER: usize = 7;
const GDTR_LIMIT: usize = 19;

/// System register `index` in a `g` packet's hex.
fn system(hex: &str, index: usize) -> u64 {
    let at = 2 * (SYSTEM_AT + 8 * index);
    let bytes = decode(&hex[at..at + 16]);
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

const RSP: usize = 7;
const RCX: usize = 2;
const R15: usize = 15;

fn elf_entry(image: &[u8]) -> u64 {
    u64::from_le_bytes(image[24..32].try_into().expect("an ELF header"))
}

type Vmm = std::thread::JoinHandle<sie_vmm::Result<VmOutcome>>;

/// Starts the `loop` guest (10^12 iterations: it never ends alone) with a
/// gdb socket named after `test`, and attaches to it.
fn attach(test: &str, vcpus: u8) -> (Vmm, Client, std::path::PathBuf) {
    let socket = std::env::temp_dir().join(format!("sie-gdb-{test}-{}.sock", std::process::id()));
    let mut config = VmConfig::new(BootSource {
        kernel_image_path: sie_guests::LOOP.path.into(),
        boot_args: Some("iterations=1000000000000".to_string()),
        initrd_path: None,
    });
    config.machine_config = Some(MachineConfig {
        mem_size_mib: 32,
        vcpu_count: vcpus,
        gdb_socket_path: Some(socket.to_string_lossy().into_owned()),
        ..MachineConfig::default()
    });
    let vmm = std::thread::spawn(move || {
        let kvm = Kvm::open().expect("/dev/kvm");
        let options = BuildOptions {
            start: Instant::now(),
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: Vec::new(),
            host_decompress: None,
            mmds: None,
        };
        sie_vmm::run(&kvm, config, options, false).map(|finished| finished.outcome)
    });
    let mut gdb = Client::connect(&socket);
    let features = gdb.ask("qSupported:swbreak+;hwbreak+;vContSupported+");
    assert!(features.contains("PacketSize"), "{features}");
    assert!(gdb.ask("?").starts_with('T'));
    assert_eq!(gdb.ask("Hg1"), "OK");
    (vmm, gdb, socket)
}

/// `kill`: the VM ends.
fn kill(vmm: Vmm, mut gdb: Client, socket: &std::path::Path) {
    gdb.send("k");
    let outcome = vmm.join().expect("the VMM thread").expect("the VM ran");
    assert_eq!(outcome, VmOutcome::Shutdown);
    let _ = std::fs::remove_file(socket);
}

#[test]
fn gdb_steps_reads_writes_and_stops_the_loop_guest() {
    let (vmm, mut gdb, socket) = attach("main", 2);
    let entry = elf_entry(sie_guests::LOOP.bytes);

    // Every vCPU is a thread; the second waits for its start-up IPI.
    assert_eq!(gdb.ask("qfThreadInfo"), "m01,02");
    assert_eq!(gdb.ask("Hg2"), "OK");
    let (_, ap_rip, _) = gdb.registers();
    assert_ne!(
        ap_rip,
        elf_entry(sie_guests::LOOP.bytes),
        "vCPU 1 is not the boot vCPU"
    );
    assert_eq!(gdb.ask("Hg1"), "OK");

    // Stopped before the first instruction.
    let (_, rip, _) = gdb.registers();
    assert_eq!(rip, entry, "rip is the guest's entry");
    let code = gdb.read_memory(entry, 16);
    assert!(
        sie_guests::LOOP.bytes.windows(16).any(|w| w == code),
        "memory at the entry holds the guest's code: {code:02x?}"
    );

    // Three single steps, one instruction each.
    for expected in [entry + 7, entry + 10, entry + 17] {
        let stop = gdb.ask("vCont;s:1;c");
        assert!(stop.starts_with('T'), "step stop: {stop}");
        assert_eq!(gdb.registers().1, expected);
    }
    let (regs, _, hex) = gdb.registers();
    let stack_top = regs[RSP];
    assert!(stack_top > 0x1000, "rsp was loaded: {stack_top:#x}");

    // A register written reads back.
    let mut written = decode(&hex);
    written[R15 * 8..R15 * 8 + 8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(gdb.ask(&format!("G{}", encode(&written))), "OK");
    assert_eq!(gdb.registers().0[R15], 0x1122_3344_5566_7788);

    // The system registers follow the core set: the guest runs in long
    // mode with paging, on page tables at a page boundary.
    let cr0 = system(&hex, CR0);
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "PG and PE: {cr0:#x}");
    let efer = system(&hex, EFER);
    assert_eq!(efer & 0x500, 0x500, "LME and LMA: {efer:#x}");
    let cr3 = system(&hex, CR3);
    assert!(cr3 != 0 && cr3.is_multiple_of(4096), "cr3: {cr3:#x}");
    assert_eq!(system(&hex, FS_BASE), 0, "fs_base");
    // fs_base written through `G` reads back; the rest stayed.
    let (_, _, hex) = gdb.registers();
    let mut written = decode(&hex);
    let at = SYSTEM_AT + FS_BASE * 8;
    written[at..at + 8].copy_from_slice(&0x7f00_1234_5000u64.to_le_bytes());
    assert_eq!(gdb.ask(&format!("G{}", encode(&written))), "OK");
    let (_, _, hex) = gdb.registers();
    assert_eq!(system(&hex, FS_BASE), 0x7f00_1234_5000);
    assert_eq!((system(&hex, CR0), system(&hex, CR3)), (cr0, cr3));
    // A gdtr limit wider than 16 bits is refused, and nothing changes.
    let mut written = decode(&hex);
    let at = SYSTEM_AT + GDTR_LIMIT * 8;
    written[at..at + 8].copy_from_slice(&0x1_0000u64.to_le_bytes());
    assert!(gdb.ask(&format!("G{}", encode(&written))).starts_with('E'));
    assert_eq!(gdb.registers().2, hex, "the refused write changed nothing");
    // Long mode without PAE is refused by KVM: an error, and the session
    // goes on.
    let mut written = decode(&hex);
    let at = SYSTEM_AT + CR4 * 8;
    written[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(gdb.ask(&format!("G{}", encode(&written))).starts_with('E'));
    assert_eq!(gdb.registers().2, hex, "the refused write changed nothing");

    // Memory written reads back (below the stack, unused yet).
    let scratch = stack_top - 256;
    assert_eq!(gdb.ask(&format!("M{scratch:x},4:deadbeef")), "OK");
    assert_eq!(gdb.read_memory(scratch, 4), [0xde, 0xad, 0xbe, 0xef]);

    // gdb's `break` at the call.
    let call = entry + 22;

    // With the four debug registers taken, `break` writes an `int3` into
    // guest memory, and takes it out again (nothing runs meanwhile).
    let taken: Vec<u64> = (100..104).map(|offset| entry + offset).collect();
    for addr in &taken {
        assert_eq!(gdb.ask(&format!("Z1,{addr:x},1")), "OK");
    }
    let original = gdb.read_memory(call, 1);
    assert_eq!(gdb.ask(&format!("Z0,{call:x},1")), "OK");
    assert_eq!(gdb.read_memory(call, 1), [0xcc], "the int3 is in memory");
    assert_eq!(gdb.ask(&format!("z0,{call:x},1")), "OK");
    assert_eq!(gdb.read_memory(call, 1), original, "the byte is back");
    for addr in &taken {
        assert_eq!(gdb.ask(&format!("z1,{addr:x},1")), "OK");
    }

    assert_eq!(gdb.ask(&format!("Z0,{call:x},1")), "OK");
    let stop = gdb.ask("vCont;c");
    assert!(stop.contains("swbreak"), "breakpoint stop: {stop}");
    assert_eq!(gdb.registers().1, call);
    assert_eq!(gdb.ask(&format!("z0,{call:x},1")), "OK");

    // A hardware breakpoint on the loop's `dec`.
    let dec = entry + 35;
    assert_eq!(gdb.ask(&format!("Z1,{dec:x},1")), "OK");
    let stop = gdb.ask("vCont;c");
    assert!(stop.contains("hwbreak"), "breakpoint stop: {stop}");
    let (regs, rip, _) = gdb.registers();
    assert_eq!(rip, dec);
    assert_eq!(regs[RCX], 1_000_000_000_000);
    // The stop on vCPU 0 stopped vCPU 1 too: its registers are readable
    // (they are only read from a paused vCPU).
    assert_eq!(gdb.ask("Hg2"), "OK");
    assert_eq!(gdb.registers().1, ap_rip);
    assert_eq!(gdb.ask("Hg1"), "OK");
    assert_eq!(gdb.ask(&format!("z1,{dec:x},1")), "OK");

    // Ctrl-C stops the running loop.
    gdb.send("vCont;c");
    std::thread::sleep(Duration::from_millis(200));
    gdb.stream.write_all(&[0x03]).unwrap();
    let stop = gdb.receive();
    assert!(stop.starts_with("T02"), "interrupt stop: {stop}");
    let (regs, rip, hex) = gdb.registers();
    assert!(
        (dec..dec + 5).contains(&rip),
        "stopped in the loop: {rip:#x}"
    );
    assert!(regs[RCX] < 1_000_000_000_000, "the loop ran");

    // rcx written to 3: a breakpoint after the loop is reached at once.
    let mut written = decode(&hex);
    written[RCX * 8..RCX * 8 + 8].copy_from_slice(&3u64.to_le_bytes());
    assert_eq!(gdb.ask(&format!("G{}", encode(&written))), "OK");
    let after = entry + 40;
    assert_eq!(gdb.ask(&format!("Z1,{after:x},1")), "OK");
    let stop = gdb.ask("vCont;c");
    assert!(stop.contains("hwbreak"), "breakpoint stop: {stop}");
    let (regs, rip, _) = gdb.registers();
    assert_eq!((rip, regs[RCX]), (after, 0));

    // Let it reset: gdb hears that the program exited, with status 0.
    assert_eq!(gdb.ask(&format!("z1,{after:x},1")), "OK");
    assert_eq!(gdb.ask("vCont;c"), "W00");
    let outcome = vmm.join().expect("the VMM thread").expect("the VM ran");
    assert_eq!(outcome, VmOutcome::Reset);
    assert!(!socket.exists(), "the socket file is removed at the end");
}

#[test]
fn gdb_detaches_and_another_attaches_to_the_running_guest() {
    let (vmm, mut gdb, socket) = attach("reattach", 1);
    let entry = elf_entry(sie_guests::LOOP.bytes);
    let dec = entry + 35;
    assert_eq!(gdb.ask(&format!("Z1,{dec:x},1")), "OK");
    assert!(gdb.ask("vCont;c").contains("hwbreak"));
    // Detach: the breakpoint goes and the loop runs on.
    assert_eq!(gdb.ask("D"), "OK");
    drop(gdb);
    std::thread::sleep(Duration::from_millis(200));

    let mut gdb = Client::connect(&socket);
    assert!(gdb.ask("?").starts_with('T'));
    assert_eq!(gdb.ask("Hg1"), "OK");
    let (regs, rip, _) = gdb.registers();
    assert!(
        (dec..dec + 5).contains(&rip),
        "stopped in the loop: {rip:#x}"
    );
    assert!(
        regs[RCX] < 1_000_000_000_000,
        "the loop ran on after detach"
    );
    kill(vmm, gdb, &socket);
}
