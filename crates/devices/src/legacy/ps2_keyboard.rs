//! The PS/2 keyboard behind the i8042: answers the commands the guest sends
//! through the data port and holds what it sends back (replies and scan
//! codes) in a bounded queue the controller drains.
//!
//! There are no physical keys; the only scan codes are the ones the VMM
//! injects (Ctrl+Alt+Del), so the keyboard keeps no make/break state.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Bytes the keyboard queues for the controller; further bytes are dropped
/// and counted, as a real keyboard's buffer overruns.
pub const KEYBOARD_QUEUE_BYTES: usize = 16;

const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0xaa;
const ECHO: u8 = 0xee;
/// "MF2 keyboard" identity, sent after ACK in reply to 0xF2.
const KEYBOARD_ID: [u8; 2] = [0xab, 0x83];
const DEFAULT_SCAN_CODE_SET: u8 = 2;

/// Why key events could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyboardError {
    /// The guest disabled scanning (command 0xF5), so keys are not reported.
    #[error("keyboard scanning disabled by the guest")]
    ScanningDisabled,
    /// The queue lacks room for the whole sequence; nothing was queued.
    #[error("keyboard queue full")]
    QueueFull,
    /// A scan code has no set-1 translation in sie's table.
    #[error("no set-1 translation for scan code {0:#04x}")]
    Untranslatable(u8),
}

/// A command waiting for its argument byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum PendingArgument {
    Leds,
    ScanCodeSet,
    Typematic,
    /// Set-3 per-key commands (0xFB–0xFD): the argument is a key, ignored.
    Key,
}

/// Keyboard state.
#[derive(Debug)]
pub(crate) struct Ps2Keyboard {
    queue: VecDeque<u8>,
    pending: Option<PendingArgument>,
    scanning: bool,
    scan_code_set: u8,
    leds: u8,
    last_sent: u8,
    dropped: u64,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self {
            queue: VecDeque::with_capacity(KEYBOARD_QUEUE_BYTES),
            pending: None,
            scanning: true,
            scan_code_set: DEFAULT_SCAN_CODE_SET,
            leds: 0,
            last_sent: 0,
            dropped: 0,
        }
    }
}

/// The keyboard's state as a snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyboardState {
    queue: Vec<u8>,
    pending: Option<PendingArgument>,
    scanning: bool,
    scan_code_set: u8,
    leds: u8,
    last_sent: u8,
}

impl Ps2Keyboard {
    /// Its state, for a snapshot.
    pub(crate) fn state(&self) -> KeyboardState {
        KeyboardState {
            queue: self.queue.iter().copied().collect(),
            pending: self.pending,
            scanning: self.scanning,
            scan_code_set: self.scan_code_set,
            leds: self.leds,
            last_sent: self.last_sent,
        }
    }

    /// A keyboard in `state`; `None` when the state cannot be real (a queue
    /// longer than the keyboard's, a scan code set other than 1 to 3).
    pub(crate) fn from_state(state: &KeyboardState) -> Option<Self> {
        if state.queue.len() > KEYBOARD_QUEUE_BYTES || !(1..=3).contains(&state.scan_code_set) {
            return None;
        }
        let mut queue = VecDeque::with_capacity(KEYBOARD_QUEUE_BYTES);
        queue.extend(&state.queue);
        Some(Self {
            queue,
            pending: state.pending,
            scanning: state.scanning,
            scan_code_set: state.scan_code_set,
            leds: state.leds,
            last_sent: state.last_sent,
            dropped: 0,
        })
    }

    /// Next byte for the controller.
    pub(crate) fn pop(&mut self) -> Option<u8> {
        let byte = self.queue.pop_front()?;
        self.last_sent = byte;
        Some(byte)
    }

    /// Returns a byte the controller took but could not deliver yet.
    pub(crate) fn unpop(&mut self, byte: u8) {
        self.queue.push_front(byte);
    }

    /// Bytes lost to a full queue.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The LED state last set by the guest (bit 0 scroll, 1 num, 2 caps lock).
    #[cfg(test)]
    pub(crate) fn leds(&self) -> u8 {
        self.leds
    }

    /// The scan code set the guest selected.
    #[cfg(test)]
    pub(crate) fn scan_code_set(&self) -> u8 {
        self.scan_code_set
    }

    /// Queues a whole key sequence or nothing, so a full queue cannot leave a
    /// key pressed forever in the guest.
    pub(crate) fn push_keys(&mut self, codes: &[u8]) -> Result<(), KeyboardError> {
        if !self.scanning {
            return Err(KeyboardError::ScanningDisabled);
        }
        if self.queue.len() + codes.len() > KEYBOARD_QUEUE_BYTES {
            return Err(KeyboardError::QueueFull);
        }
        self.queue.extend(codes);
        Ok(())
    }

    /// A byte the guest sent to the keyboard (a command or an argument).
    pub(crate) fn receive(&mut self, byte: u8) {
        // Command bytes all lie in 0xED..=0xFF; one arriving where an argument
        // was expected starts a new command, as on real keyboards.
        if let Some(pending) = self.pending.take().filter(|_| byte < 0xed) {
            self.argument(pending, byte);
            return;
        }
        match byte {
            0xed => self.ack_then_wait(PendingArgument::Leds),
            0xee => self.send(&[ECHO]),
            0xf0 => self.ack_then_wait(PendingArgument::ScanCodeSet),
            0xf2 => self.send(&[ACK, KEYBOARD_ID[0], KEYBOARD_ID[1]]),
            0xf3 => self.ack_then_wait(PendingArgument::Typematic),
            0xf4 => {
                self.scanning = true;
                self.send(&[ACK]);
            }
            0xf5 => {
                self.set_defaults();
                self.scanning = false;
                self.send(&[ACK]);
            }
            0xf6 => {
                self.set_defaults();
                self.send(&[ACK]);
            }
            // Set-3 "all keys" mode commands: nothing to change for sie.
            0xf7..=0xfa => self.send(&[ACK]),
            0xfb..=0xfd => self.ack_then_wait(PendingArgument::Key),
            0xfe => self.send(&[self.last_sent]),
            0xff => {
                self.set_defaults();
                self.scanning = true;
                self.queue.clear();
                self.send(&[ACK, SELF_TEST_PASSED]);
            }
            _ => self.send(&[RESEND]),
        }
    }

    fn argument(&mut self, pending: PendingArgument, byte: u8) {
        match pending {
            PendingArgument::Leds => self.leds = byte & 0x07,
            PendingArgument::ScanCodeSet => match byte {
                0 => {
                    self.send(&[ACK, self.scan_code_set]);
                    return;
                }
                1..=3 => self.scan_code_set = byte,
                _ => {
                    self.send(&[RESEND]);
                    return;
                }
            },
            PendingArgument::Typematic | PendingArgument::Key => {}
        }
        self.send(&[ACK]);
    }

    fn ack_then_wait(&mut self, pending: PendingArgument) {
        self.pending = Some(pending);
        self.send(&[ACK]);
    }

    fn set_defaults(&mut self) {
        self.scan_code_set = DEFAULT_SCAN_CODE_SET;
        self.leds = 0;
        self.pending = None;
    }

    /// Queues replies; a reply that does not fit is dropped whole.
    fn send(&mut self, bytes: &[u8]) {
        if self.queue.len() + bytes.len() > KEYBOARD_QUEUE_BYTES {
            self.dropped += bytes.len() as u64;
        } else {
            self.queue.extend(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(kbd: &mut Ps2Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| kbd.pop()).collect()
    }

    #[test]
    fn reset_acks_then_reports_self_test_passed() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xff);
        assert_eq!(drain(&mut kbd), [0xfa, 0xaa]);
    }

    #[test]
    fn get_id_reports_an_mf2_keyboard() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xf2);
        assert_eq!(drain(&mut kbd), [0xfa, 0xab, 0x83]);
    }

    #[test]
    fn set_leds_takes_an_argument() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xed);
        kbd.receive(0x04);
        assert_eq!(drain(&mut kbd), [0xfa, 0xfa]);
        assert_eq!(kbd.leds(), 0x04);
    }

    #[test]
    fn scan_code_set_can_be_read_and_changed() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xf0);
        kbd.receive(0x00);
        assert_eq!(drain(&mut kbd), [0xfa, 0xfa, 0x02]);
        kbd.receive(0xf0);
        kbd.receive(0x01);
        assert_eq!(drain(&mut kbd), [0xfa, 0xfa]);
        assert_eq!(kbd.scan_code_set(), 1);
        kbd.receive(0xf0);
        kbd.receive(0x09);
        assert_eq!(drain(&mut kbd), [0xfa, 0xfe]);
    }

    #[test]
    fn a_command_in_place_of_an_argument_starts_over() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xed);
        kbd.receive(0xf2);
        assert_eq!(drain(&mut kbd), [0xfa, 0xfa, 0xab, 0x83]);
    }

    #[test]
    fn unknown_bytes_ask_for_a_resend_and_resend_repeats() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0x42);
        assert_eq!(drain(&mut kbd), [0xfe]);
        kbd.receive(0xee);
        assert_eq!(drain(&mut kbd), [0xee]);
        kbd.receive(0xfe);
        assert_eq!(drain(&mut kbd), [0xee]);
    }

    #[test]
    fn disabled_scanning_refuses_keys() {
        let mut kbd = Ps2Keyboard::default();
        kbd.receive(0xf5);
        drain(&mut kbd);
        assert_eq!(kbd.push_keys(&[0x1c]), Err(KeyboardError::ScanningDisabled));
        kbd.receive(0xf4);
        drain(&mut kbd);
        assert_eq!(kbd.push_keys(&[0x1c]), Ok(()));
    }

    #[test]
    fn queue_is_bounded_and_key_sequences_are_all_or_nothing() {
        let mut kbd = Ps2Keyboard::default();
        for _ in 0..KEYBOARD_QUEUE_BYTES {
            kbd.receive(0xee);
        }
        kbd.receive(0xee);
        assert_eq!(kbd.dropped(), 1);
        kbd.pop();
        assert_eq!(kbd.push_keys(&[1, 2]), Err(KeyboardError::QueueFull));
        assert_eq!(drain(&mut kbd).len(), KEYBOARD_QUEUE_BYTES - 1);
    }
}
