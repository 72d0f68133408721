//! The i8042 keyboard controller (ports 0x60 and 0x64) with its keyboard.
//!
//! Enough of a real 8042 for Linux's probe (flush, self-test, command byte
//! round trip, keyboard enable) to find a keyboard on IRQ 1, for the guest to
//! reset the machine through it (pulse command 0xFE, or the output port's
//! reset line), and for the VMM to inject Ctrl+Alt+Del. There is no mouse:
//! aux commands are accepted and ignored; guests should boot with
//! `i8042.noaux` (otherwise Linux waits out one aux loopback timeout).
//!
//! One bus entry covers 0x60..=0x64 (`I8042_PORT_LEN` = 5): offset 0 is the
//! data port, offset 4 status (read) / command (write); offsets 1–3 belong to
//! nothing and read 0xff.
//!
//! The controller holds one output-buffer byte, as the hardware does: bytes
//! queued by the controller (command replies) or the keyboard wait until the
//! guest reads the previous one, and each byte entering the buffer raises
//! IRQ 1 when the command byte enables keyboard interrupts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::ps2_keyboard::{KeyboardError, KeyboardState, Ps2Keyboard};
use super::scan_code::{CTRL_ALT_DEL_SET2, translate_to_set1};
use crate::{BusDevice, Interrupt, VmRequests};

const DATA_OFFSET: u64 = 0;
const STATUS_COMMAND_OFFSET: u64 = 4;

// Status register.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// The last write went to the command port rather than the data port.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited by the keylock; Linux warns when it reads clear.
const STATUS_NOT_INHIBITED: u8 = 0x10;

// Command byte ("CTR" in Linux).
const CTR_KEYBOARD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KEYBOARD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// As PC firmware leaves it: translation on, POST passed, keyboard interrupt
/// enabled, no aux interrupt (there is no mouse).
const DEFAULT_COMMAND_BYTE: u8 = CTR_TRANSLATE | CTR_SYSTEM_FLAG | CTR_KEYBOARD_INTERRUPT;

// Output port.
/// Clear = hold the CPU in reset.
const OUTPUT_PORT_NOT_RESET: u8 = 0x01;
const OUTPUT_PORT_A20: u8 = 0x02;
const DEFAULT_OUTPUT_PORT: u8 = OUTPUT_PORT_NOT_RESET | OUTPUT_PORT_A20;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// Aux interface test result "clock line stuck high": no mouse attached,
/// which makes Linux give up on the aux port.
const AUX_TEST_NO_DEVICE: u8 = 0x02;

/// Controller replies waiting behind the output buffer; a guest issuing
/// commands without reading the answers loses the oldest beyond this.
const MAX_PENDING_REPLIES: usize = 4;

/// A controller command waiting for its data-port argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum PendingCommand {
    WriteCommandByte,
    WriteOutputPort,
    WriteKeyboardOutput,
    /// 0xD3/0xD4: a byte for the aux port, which does not exist.
    DiscardAux,
}

/// Who put the byte in the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Source {
    Controller,
    Keyboard,
}

/// What to do once the state lock is released.
#[derive(Clone, Copy, Debug, Default)]
struct Effects {
    interrupt: bool,
    reset: bool,
}

#[derive(Debug)]
struct Controller {
    command_byte: u8,
    output_port: u8,
    output: Option<(u8, Source)>,
    replies: VecDeque<u8>,
    pending: Option<PendingCommand>,
    last_write_was_command: bool,
    /// Reading an empty output buffer returns the last byte, as hardware does.
    last_data: u8,
    keyboard: Ps2Keyboard,
    unknown_commands: u64,
    dropped_replies: u64,
}

impl Default for Controller {
    fn default() -> Self {
        Self {
            command_byte: DEFAULT_COMMAND_BYTE,
            output_port: DEFAULT_OUTPUT_PORT,
            output: None,
            replies: VecDeque::with_capacity(MAX_PENDING_REPLIES),
            pending: None,
            last_write_was_command: false,
            last_data: 0,
            keyboard: Ps2Keyboard::default(),
            unknown_commands: 0,
            dropped_replies: 0,
        }
    }
}

impl Controller {
    fn keyboard_interrupt_enabled(&self) -> bool {
        self.command_byte & CTR_KEYBOARD_INTERRUPT != 0
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_NOT_INHIBITED | (self.command_byte & STATUS_SYSTEM_FLAG);
        if self.output.is_some() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    /// Moves the next waiting byte into an empty output buffer; returns
    /// whether that should raise IRQ 1.
    fn refill(&mut self) -> bool {
        if self.output.is_some() {
            return false;
        }
        self.output = match self.replies.pop_front() {
            Some(byte) => Some((byte, Source::Controller)),
            None if self.command_byte & CTR_KEYBOARD_DISABLED == 0 => {
                self.keyboard.pop().map(|byte| (byte, Source::Keyboard))
            }
            None => None,
        };
        self.output.is_some() && self.keyboard_interrupt_enabled()
    }

    /// Queues a controller reply ahead of keyboard data: a command's answer
    /// must be the next byte the guest reads, so a keyboard byte already in
    /// the buffer goes back to the keyboard's queue.
    fn reply(&mut self, byte: u8) {
        if let Some((kept, Source::Keyboard)) = self.output {
            self.keyboard.unpop(kept);
            self.output = None;
        }
        if self.replies.len() == MAX_PENDING_REPLIES {
            self.replies.pop_front();
            self.dropped_replies += 1;
        }
        self.replies.push_back(byte);
    }

    fn read_data(&mut self) -> (u8, Effects) {
        let Some((byte, _)) = self.output.take() else {
            return (self.last_data, Effects::default());
        };
        self.last_data = byte;
        let interrupt = self.refill();
        (
            byte,
            Effects {
                interrupt,
                reset: false,
            },
        )
    }

    fn write_data(&mut self, byte: u8) -> Effects {
        self.last_write_was_command = false;
        let mut effects = Effects::default();
        match self.pending.take() {
            Some(PendingCommand::WriteCommandByte) => {
                let was_enabled = self.keyboard_interrupt_enabled();
                self.command_byte = byte;
                // The IRQ line follows "buffer full and enabled": enabling
                // interrupts with a byte already waiting raises it now.
                effects.interrupt =
                    !was_enabled && self.keyboard_interrupt_enabled() && self.output.is_some();
            }
            Some(PendingCommand::WriteOutputPort) => {
                self.output_port = byte;
                effects.reset = byte & OUTPUT_PORT_NOT_RESET == 0;
            }
            Some(PendingCommand::WriteKeyboardOutput) => self.reply(byte),
            Some(PendingCommand::DiscardAux) => {}
            None => self.keyboard.receive(byte),
        }
        effects.interrupt |= self.refill();
        effects
    }

    fn write_command(&mut self, command: u8) -> Effects {
        self.last_write_was_command = true;
        self.pending = None;
        let mut effects = Effects::default();
        match command {
            0x20 => self.reply(self.command_byte),
            0x60 => self.pending = Some(PendingCommand::WriteCommandByte),
            0xa7 => self.command_byte |= CTR_AUX_DISABLED,
            0xa8 => self.command_byte &= !CTR_AUX_DISABLED,
            0xa9 => self.reply(AUX_TEST_NO_DEVICE),
            0xaa => self.reply(SELF_TEST_PASSED),
            0xab => self.reply(INTERFACE_TEST_PASSED),
            0xad => self.command_byte |= CTR_KEYBOARD_DISABLED,
            0xae => self.command_byte &= !CTR_KEYBOARD_DISABLED,
            0xd0 => self.reply(self.output_port),
            0xd1 => self.pending = Some(PendingCommand::WriteOutputPort),
            0xd2 => self.pending = Some(PendingCommand::WriteKeyboardOutput),
            0xd3 | 0xd4 => self.pending = Some(PendingCommand::DiscardAux),
            // Pulse output lines: a clear bit pulses that line low for a
            // moment; line 0 is the CPU reset.
            0xf0..=0xff => effects.reset = command & OUTPUT_PORT_NOT_RESET == 0,
            _ => self.unknown_commands += 1,
        }
        effects.interrupt = self.refill();
        effects
    }
}

/// Error and drop counts of the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I8042Stats {
    /// Command-port bytes the controller does not implement.
    pub unknown_commands: u64,
    /// Bytes lost to full queues (keyboard replies, controller replies).
    pub dropped_bytes: u64,
    /// IRQ 1 triggers that failed.
    pub interrupt_errors: u64,
}

/// The controller and its keyboard as a snapshot keeps them (counters are
/// not state: they start again from zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    command_byte: u8,
    output_port: u8,
    output: Option<(u8, Source)>,
    replies: Vec<u8>,
    pending: Option<PendingCommand>,
    last_write_was_command: bool,
    last_data: u8,
    keyboard: KeyboardState,
}

/// Why a saved i8042 state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("i8042 state is not one the controller can be in")]
pub struct I8042StateError;

/// The i8042 controller and its keyboard, inserted at 0x60 with length 5.
pub struct I8042Device {
    state: Mutex<Controller>,
    interrupt: Arc<dyn Interrupt>,
    vm: Arc<dyn VmRequests>,
    interrupt_errors: AtomicU64,
}

impl I8042Device {
    /// A controller raising `interrupt` (IRQ 1) and asking `vm` for resets.
    pub fn new(interrupt: Arc<dyn Interrupt>, vm: Arc<dyn VmRequests>) -> Self {
        Self {
            state: Mutex::new(Controller::default()),
            interrupt,
            vm,
            interrupt_errors: AtomicU64::new(0),
        }
    }

    /// Queues Ctrl+Alt+Del pressed and released, in the scan code set the
    /// guest reads: set 1 when the command byte's translate bit is set (the
    /// default), set 2 otherwise. Nothing is queued on error.
    pub fn send_ctrl_alt_del(&self) -> Result<(), KeyboardError> {
        let effects = {
            let mut state = self.lock();
            if state.command_byte & CTR_TRANSLATE != 0 {
                let codes =
                    translate_to_set1(&CTRL_ALT_DEL_SET2).map_err(KeyboardError::Untranslatable)?;
                state.keyboard.push_keys(&codes)?;
            } else {
                state.keyboard.push_keys(&CTRL_ALT_DEL_SET2)?;
            }
            Effects {
                interrupt: state.refill(),
                reset: false,
            }
        };
        self.apply(effects);
        Ok(())
    }

    /// The controller's and keyboard's state, for a snapshot.
    pub fn state(&self) -> I8042State {
        let state = self.lock();
        I8042State {
            command_byte: state.command_byte,
            output_port: state.output_port,
            output: state.output,
            replies: state.replies.iter().copied().collect(),
            pending: state.pending,
            last_write_was_command: state.last_write_was_command,
            last_data: state.last_data,
            keyboard: state.keyboard.state(),
        }
    }

    /// Puts a saved state back. A state no controller can be in (more
    /// queued bytes than either queue holds) is refused, the device unchanged.
    pub fn restore(&self, saved: &I8042State) -> Result<(), I8042StateError> {
        if saved.replies.len() > MAX_PENDING_REPLIES {
            return Err(I8042StateError);
        }
        let keyboard = Ps2Keyboard::from_state(&saved.keyboard).ok_or(I8042StateError)?;
        let mut state = self.lock();
        state.command_byte = saved.command_byte;
        state.output_port = saved.output_port;
        state.output = saved.output;
        state.replies = saved.replies.iter().copied().collect();
        state.pending = saved.pending;
        state.last_write_was_command = saved.last_write_was_command;
        state.last_data = saved.last_data;
        state.keyboard = keyboard;
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> I8042Stats {
        let state = self.lock();
        I8042Stats {
            unknown_commands: state.unknown_commands,
            dropped_bytes: state.keyboard.dropped() + state.dropped_replies,
            interrupt_errors: self.interrupt_errors.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Controller> {
        // The state is plain bytes; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals outside the lock, so neither the irqfd nor the VMM's reset
    /// handling ever runs with the device locked.
    fn apply(&self, effects: Effects) {
        if effects.interrupt && self.interrupt.trigger().is_err() {
            self.interrupt_errors.fetch_add(1, Ordering::Relaxed);
        }
        if effects.reset {
            self.vm.request_reset();
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        let (value, effects) = match offset {
            DATA_OFFSET => self.lock().read_data(),
            STATUS_COMMAND_OFFSET => (self.lock().status(), Effects::default()),
            _ => (0xff, Effects::default()),
        };
        data.fill(value);
        self.apply(effects);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let [value] = data else {
            return;
        };
        let effects = match offset {
            DATA_OFFSET => self.lock().write_data(*value),
            STATUS_COMMAND_OFFSET => self.lock().write_command(*value),
            _ => return,
        };
        self.apply(effects);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::legacy::test_fakes::{CountingInterrupt, RecordingVm};

    #[test]
    fn state_moves_the_command_byte_and_queued_keys_to_another_controller() {
        let rig = Rig::new();
        rig.dev.write(4, &[0x60]);
        rig.dev.write(0, &[0x45]);
        rig.dev.send_ctrl_alt_del().unwrap();
        let state = rig.dev.state();
        let json = serde_json::to_string(&state).unwrap();
        let other = Rig::new();
        other
            .dev
            .restore(&serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(other.dev.state(), state);
        // Both controllers now hand out the same bytes.
        let drain = |rig: &Rig| {
            (0..8)
                .map(|_| {
                    let mut b = [0];
                    rig.dev.read(0, &mut b);
                    b[0]
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(drain(&rig), drain(&other));
    }

    #[test]
    fn an_impossible_state_is_refused() {
        let rig = Rig::new();
        let mut state: serde_json::Value = serde_json::to_value(rig.dev.state()).unwrap();
        state["replies"] = serde_json::json!([1, 2, 3, 4, 5]);
        let state: I8042State = serde_json::from_value(state).unwrap();
        assert_eq!(rig.dev.restore(&state), Err(I8042StateError));
        let mut state: serde_json::Value = serde_json::to_value(rig.dev.state()).unwrap();
        state["keyboard"]["scan_code_set"] = serde_json::json!(9);
        let state: I8042State = serde_json::from_value(state).unwrap();
        assert_eq!(rig.dev.restore(&state), Err(I8042StateError));
    }

    struct Rig {
        dev: I8042Device,
        irq: Arc<CountingInterrupt>,
        vm: Arc<RecordingVm>,
    }

    impl Rig {
        fn new() -> Self {
            let irq = Arc::new(CountingInterrupt::default());
            let vm = Arc::new(RecordingVm::default());
            Self {
                dev: I8042Device::new(irq.clone(), vm.clone()),
                irq,
                vm,
            }
        }
        fn status(&self) -> u8 {
            let mut b = [0];
            self.dev.read(4, &mut b);
            b[0]
        }
        fn command(&self, cmd: u8) {
            self.dev.write(4, &[cmd]);
        }
        fn data_out(&self, byte: u8) {
            self.dev.write(0, &[byte]);
        }
        fn data_in(&self) -> u8 {
            let mut b = [0];
            self.dev.read(0, &mut b);
            b[0]
        }
        /// Reads while the status says a byte is waiting, like i8042_flush.
        fn drain(&self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & STATUS_OUTPUT_FULL != 0 {
                out.push(self.data_in());
                assert!(out.len() <= 64, "output buffer never empties");
            }
            out
        }
        fn resets(&self) -> u64 {
            self.vm.resets.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn status_after_power_on_has_system_flag_and_no_data() {
        let rig = Rig::new();
        assert_eq!(rig.status(), STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED);
        assert!(rig.drain().is_empty());
    }

    #[test]
    fn self_test_and_interface_test_pass() {
        let rig = Rig::new();
        rig.command(0xaa);
        assert_ne!(rig.status() & STATUS_LAST_WAS_COMMAND, 0);
        assert_eq!(rig.drain(), [0x55]);
        rig.command(0xab);
        assert_eq!(rig.drain(), [0x00]);
    }

    #[test]
    fn command_byte_round_trips_and_drives_the_system_flag() {
        let rig = Rig::new();
        rig.command(0x20);
        assert_eq!(rig.drain(), [DEFAULT_COMMAND_BYTE]);
        rig.command(0x60);
        rig.data_out(0x30);
        assert_eq!(
            rig.status() & (STATUS_SYSTEM_FLAG | STATUS_LAST_WAS_COMMAND),
            0
        );
        rig.command(0x20);
        assert_eq!(rig.drain(), [0x30]);
    }

    #[test]
    fn pulse_reset_reaches_the_vm_exactly_once() {
        let rig = Rig::new();
        rig.command(0xfe);
        assert_eq!(rig.resets(), 1);
        // 0xFF pulses no line; other commands never reset.
        for cmd in [0xff, 0xaa, 0xad, 0xae, 0x20] {
            rig.command(cmd);
        }
        rig.drain();
        assert_eq!(rig.resets(), 1);
    }

    #[test]
    fn output_port_write_resets_only_with_bit0_clear() {
        let rig = Rig::new();
        // The A20-gate idiom from Linux's real-mode setup code.
        rig.command(0xd1);
        rig.data_out(0xdf);
        assert_eq!(rig.resets(), 0);
        rig.command(0xd0);
        assert_eq!(rig.drain(), [0xdf]);
        rig.command(0xd1);
        rig.data_out(0xde);
        assert_eq!(rig.resets(), 1);
    }

    #[test]
    fn keyboard_commands_are_answered_with_an_interrupt_per_byte() {
        let rig = Rig::new();
        rig.data_out(0xf2);
        assert_eq!(rig.irq.count(), 1, "first byte latched");
        assert_eq!(rig.data_in(), 0xfa);
        assert_eq!(rig.irq.count(), 2);
        assert_eq!(rig.data_in(), 0xab);
        assert_eq!(rig.data_in(), 0x83);
        assert_eq!(rig.irq.count(), 3);
        rig.data_out(0xff);
        assert_eq!(rig.drain(), [0xfa, 0xaa]);
        rig.data_out(0xed);
        rig.data_out(0x02);
        assert_eq!(rig.drain(), [0xfa, 0xfa]);
    }

    #[test]
    fn ctrl_alt_del_arrives_as_set1_when_translating() {
        let rig = Rig::new();
        rig.dev.send_ctrl_alt_del().unwrap();
        let bytes = rig.drain();
        assert_eq!(bytes, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        assert_eq!(rig.irq.count(), bytes.len() as u64);
    }

    #[test]
    fn ctrl_alt_del_arrives_as_set2_without_translation() {
        let rig = Rig::new();
        rig.command(0x60);
        rig.data_out(CTR_SYSTEM_FLAG | CTR_KEYBOARD_INTERRUPT);
        rig.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(rig.drain(), CTRL_ALT_DEL_SET2);
        assert_eq!(rig.irq.count(), CTRL_ALT_DEL_SET2.len() as u64);
    }

    #[test]
    fn no_interrupt_until_the_command_byte_enables_it() {
        let rig = Rig::new();
        rig.command(0x60);
        rig.data_out(CTR_TRANSLATE | CTR_SYSTEM_FLAG);
        rig.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(rig.irq.count(), 0);
        assert_ne!(rig.status() & STATUS_OUTPUT_FULL, 0);
        rig.command(0x60);
        rig.data_out(DEFAULT_COMMAND_BYTE);
        assert_eq!(rig.irq.count(), 1);
    }

    #[test]
    fn disabled_keyboard_interface_holds_keyboard_bytes() {
        let rig = Rig::new();
        rig.command(0xad);
        rig.dev.send_ctrl_alt_del().unwrap();
        assert!(rig.drain().is_empty());
        rig.command(0xae);
        assert_eq!(rig.drain().len(), 8);
    }

    #[test]
    fn a_command_reply_goes_ahead_of_waiting_keyboard_data() {
        let rig = Rig::new();
        rig.dev.send_ctrl_alt_del().unwrap();
        rig.command(0x20);
        let bytes = rig.drain();
        assert_eq!(bytes[0], DEFAULT_COMMAND_BYTE);
        assert_eq!(bytes[1..], [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
    }

    #[test]
    fn linux_probe_sequence_finds_a_keyboard() {
        // i8042.noaux i8042.nomux: flush, self-test, read CTR twice, write
        // CTR with the keyboard disabled, flush, then enable it.
        let rig = Rig::new();
        assert!(rig.drain().is_empty());
        rig.command(0xaa);
        assert_eq!(rig.drain(), [0x55]);
        let mut ctr = [0; 2];
        for slot in &mut ctr {
            rig.command(0x20);
            *slot = rig.drain()[0];
        }
        assert_eq!(ctr[0], ctr[1]);
        assert_ne!(ctr[0] & CTR_TRANSLATE, 0, "Linux keeps translated mode");
        assert_ne!(rig.status() & STATUS_NOT_INHIBITED, 0, "no keylock warning");
        let mut ctr = (ctr[0] | CTR_KEYBOARD_DISABLED) & !CTR_KEYBOARD_INTERRUPT;
        rig.command(0x60);
        rig.data_out(ctr);
        assert!(rig.drain().is_empty());
        ctr = (ctr & !CTR_KEYBOARD_DISABLED) | CTR_KEYBOARD_INTERRUPT;
        rig.command(0x60);
        rig.data_out(ctr);
        rig.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(rig.drain().len(), 8);
        assert_eq!(rig.resets(), 0);
    }

    #[test]
    fn aux_commands_are_swallowed() {
        let rig = Rig::new();
        rig.command(0xd4);
        rig.data_out(0xf2);
        rig.command(0xd3);
        rig.data_out(0x5a);
        assert!(rig.drain().is_empty(), "no mouse answers");
        rig.command(0xa9);
        assert_eq!(rig.drain(), [AUX_TEST_NO_DEVICE]);
    }

    #[test]
    fn write_keyboard_output_appears_as_data() {
        let rig = Rig::new();
        rig.command(0xd2);
        rig.data_out(0x42);
        assert_eq!(rig.drain(), [0x42]);
    }

    #[test]
    fn unknown_commands_and_odd_accesses_do_not_panic() {
        let rig = Rig::new();
        for cmd in 0..=0xffu8 {
            if cmd & 0xf1 == 0xf0 {
                continue; // reset pulses, tested elsewhere
            }
            rig.command(cmd);
            rig.data_out(cmd);
            rig.drain();
        }
        assert!(rig.dev.stats().unknown_commands > 0);
        assert_eq!(rig.resets(), 0);
        for offset in [1, 2, 3, 5, 0x100, u64::MAX] {
            let mut b = [0];
            rig.dev.read(offset, &mut b);
            assert_eq!(b, [0xff]);
            rig.dev.write(offset, &[0xfe]);
        }
        for len in [0, 2, 4, 8] {
            let mut buf = vec![0; len];
            rig.dev.read(4, &mut buf);
            assert!(buf.iter().all(|&b| b == 0xff));
            rig.dev.write(4, &vec![0xfe; len]);
        }
        assert_eq!(rig.resets(), 0);
    }

    #[test]
    fn reading_an_empty_buffer_repeats_the_last_byte() {
        let rig = Rig::new();
        rig.command(0xaa);
        assert_eq!(rig.data_in(), 0x55);
        assert_eq!(rig.data_in(), 0x55);
    }

    #[test]
    fn overfull_key_queue_is_refused_whole() {
        let rig = Rig::new();
        rig.command(0xad);
        // Two translated sequences (8 bytes each) fill the 16-byte queue.
        rig.dev.send_ctrl_alt_del().unwrap();
        rig.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(rig.dev.send_ctrl_alt_del(), Err(KeyboardError::QueueFull));
        rig.command(0xae);
        assert_eq!(rig.drain().len(), 16);
    }

    #[test]
    fn interrupt_failures_are_counted() {
        let rig = Rig::new();
        rig.irq.fail.store(true, Ordering::SeqCst);
        rig.command(0xaa);
        assert_eq!(rig.dev.stats().interrupt_errors, 1);
        assert_eq!(rig.drain(), [0x55]);
    }
}
