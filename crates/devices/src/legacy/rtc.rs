//! The MC146818-style CMOS RTC at ports 0x70 (index) and 0x71 (data).
//!
//! The time registers show the host's UTC clock plus an offset the guest sets
//! by writing them, read afresh at every access so the guest sees time pass.
//! Status register B chooses BCD or binary and 12- or 24-hour encoding; while
//! its SET bit is on, the clock is frozen so the guest can write all fields
//! and have them take effect together when it clears the bit (as Linux's
//! `mc146818_set_time` does). Every other byte of the 128 is plain CMOS RAM.
//! The RTC raises no interrupts: alarms and periodic interrupts are not
//! emulated, so status C always reads 0.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use sie_devices::BusDevice;
//! use sie_devices::legacy::Rtc;
//!
//! let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
//! let rtc = Rtc::with_clock(Box::new(move || at));
//! rtc.write(0, &[0x04]); // select hours
//! let mut hours = [0];
//! rtc.read(1, &mut hours);
//! assert_eq!(hours, [0x12]); // 12:34:56 UTC, in BCD
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::civil_time::CivilTime;
use crate::BusDevice;

/// Source of the host's current time (injectable for tests).
pub type RtcClock = Box<dyn Fn() -> SystemTime + Send + Sync>;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

/// Bit 7 of an index write disables NMIs on real boards; sie has no such
/// line, so the bit is dropped.
const INDEX_MASK: u8 = 0x7f;
const CMOS_BYTES: usize = 128;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
/// Where PCs (and ACPI's FADT default) keep the century.
const CENTURY: u8 = 0x32;

/// Update in progress: never set, because every read sees a consistent time.
const STATUS_A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// 32.768 kHz time base, 1024 Hz periodic rate: the state after reset.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Clock frozen while the guest sets it.
const STATUS_B_SET: u8 = 0x80;
/// Binary rather than BCD ("data mode").
const STATUS_B_BINARY: u8 = 0x04;
/// 24-hour rather than 12-hour.
const STATUS_B_24_HOUR: u8 = 0x02;
const STATUS_B_DEFAULT: u8 = STATUS_B_24_HOUR;
/// Valid RAM and time: the battery is fine.
const STATUS_D_VALID: u8 = 0x80;
/// In 12-hour mode, bit 7 of the hours register marks PM.
const HOURS_PM: u8 = 0x80;

struct CmosState {
    index: u8,
    ram: [u8; CMOS_BYTES],
    /// Guest time minus host time, in seconds.
    offset_seconds: i64,
    /// The guest's time while status B's SET bit is on.
    frozen: Option<CivilTime>,
}

impl CmosState {
    fn status_b(&self) -> u8 {
        self.ram[usize::from(STATUS_B)]
    }

    fn guest_time(&self, host_seconds: i64) -> CivilTime {
        self.frozen.unwrap_or_else(|| {
            CivilTime::from_unix(host_seconds.saturating_add(self.offset_seconds))
        })
    }

    fn encode(&self, value: u8) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            value
        } else {
            // value < 100 for every field, so both digits fit a nibble.
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            value
        } else {
            // Invalid BCD digits are taken at face value, then clamped by
            // the caller to the field's range.
            (value >> 4) * 10 + (value & 0x0f)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.status_b() & STATUS_B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let twelve_hour = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        self.encode(twelve_hour) | pm
    }

    fn decode_hours(&self, value: u8) -> u8 {
        if self.status_b() & STATUS_B_24_HOUR != 0 {
            return self.decode(value).min(23);
        }
        let hour = self.decode(value & !HOURS_PM).clamp(1, 12) % 12;
        if value & HOURS_PM != 0 {
            hour + 12
        } else {
            hour
        }
    }

    fn read(&self, host_seconds: i64) -> u8 {
        let time = || self.guest_time(host_seconds);
        match self.index {
            SECONDS => self.encode(time().second),
            MINUTES => self.encode(time().minute),
            HOURS => self.encode_hours(time().hour),
            WEEKDAY => self.encode(time().weekday()),
            DAY_OF_MONTH => self.encode(time().day),
            MONTH => self.encode(time().month),
            // Years are 0..=9999 (CivilTime clamps), so both parts are < 100.
            YEAR => self.encode(time().year.rem_euclid(100) as u8),
            CENTURY => self.encode(time().year.div_euclid(100) as u8),
            STATUS_A => self.ram[usize::from(STATUS_A)] & !STATUS_A_UPDATE_IN_PROGRESS,
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALID,
            index => self.ram[usize::from(index)],
        }
    }

    fn write(&mut self, host_seconds: i64, value: u8) {
        match self.index {
            SECONDS | MINUTES | HOURS | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.set_time_field(host_seconds, value);
            }
            STATUS_A => self.ram[usize::from(STATUS_A)] = value & !STATUS_A_UPDATE_IN_PROGRESS,
            STATUS_B => self.write_status_b(host_seconds, value),
            // Status C/D are read-only; the weekday follows from the date.
            STATUS_C | STATUS_D | WEEKDAY => {}
            index => self.ram[usize::from(index)] = value,
        }
    }

    fn set_time_field(&mut self, host_seconds: i64, value: u8) {
        let mut time = self.guest_time(host_seconds);
        match self.index {
            SECONDS => time.second = self.decode(value).min(59),
            MINUTES => time.minute = self.decode(value).min(59),
            HOURS => time.hour = self.decode_hours(value),
            DAY_OF_MONTH => time.day = self.decode(value).clamp(1, 31),
            MONTH => time.month = self.decode(value).clamp(1, 12),
            YEAR => {
                let year_of_century = i64::from(self.decode(value).min(99));
                time.year = time.year.div_euclid(100) * 100 + year_of_century;
            }
            CENTURY => {
                let century = i64::from(self.decode(value).min(99));
                time.year = century * 100 + time.year.rem_euclid(100);
            }
            _ => return,
        }
        if self.frozen.is_some() {
            self.frozen = Some(time);
        } else {
            self.commit(host_seconds, time);
        }
    }

    fn write_status_b(&mut self, host_seconds: i64, value: u8) {
        let was_set = self.status_b() & STATUS_B_SET != 0;
        let now_set = value & STATUS_B_SET != 0;
        if !was_set && now_set {
            self.frozen = Some(self.guest_time(host_seconds));
        } else if was_set
            && !now_set
            && let Some(time) = self.frozen.take()
        {
            self.commit(host_seconds, time);
        }
        self.ram[usize::from(STATUS_B)] = value;
    }

    fn commit(&mut self, host_seconds: i64, time: CivilTime) {
        self.offset_seconds = time.to_unix().saturating_sub(host_seconds);
    }
}

/// The RTC as a snapshot keeps it: the index register, the CMOS RAM, and
/// the guest's time as an offset from the host's (so the guest clock goes
/// on from the host clock after a restore, as it would across a suspend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    index: u8,
    ram: Vec<u8>,
    offset_seconds: i64,
    /// The guest's frozen time (status B's SET bit), as Unix seconds.
    frozen_unix: Option<i64>,
}

/// Why a saved RTC state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("RTC state holds {0} bytes of CMOS RAM, not {CMOS_BYTES}")]
pub struct RtcStateError(pub usize);

/// The CMOS RTC and its 128 bytes of RAM, inserted at port 0x70, length 2.
pub struct Rtc {
    state: Mutex<CmosState>,
    clock: RtcClock,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC on the host's clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(SystemTime::now))
    }

    /// An RTC reading the time from `clock`.
    pub fn with_clock(clock: RtcClock) -> Self {
        let mut ram = [0u8; CMOS_BYTES];
        ram[usize::from(STATUS_A)] = STATUS_A_DEFAULT;
        ram[usize::from(STATUS_B)] = STATUS_B_DEFAULT;
        Self {
            state: Mutex::new(CmosState {
                index: 0,
                ram,
                offset_seconds: 0,
                frozen: None,
            }),
            clock,
        }
    }

    /// Its state, for a snapshot.
    pub fn state(&self) -> RtcState {
        let state = self.lock();
        RtcState {
            index: state.index,
            ram: state.ram.to_vec(),
            offset_seconds: state.offset_seconds,
            frozen_unix: state.frozen.map(CivilTime::to_unix),
        }
    }

    /// Puts a saved state back; a state whose RAM is not 128 bytes is
    /// refused, the device unchanged.
    pub fn restore(&self, saved: &RtcState) -> Result<(), RtcStateError> {
        let ram: [u8; CMOS_BYTES] = saved
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| RtcStateError(saved.ram.len()))?;
        let mut state = self.lock();
        state.index = saved.index;
        state.ram = ram;
        state.offset_seconds = saved.offset_seconds;
        state.frozen = saved.frozen_unix.map(CivilTime::from_unix);
        Ok(())
    }

    fn host_seconds(&self) -> i64 {
        match (self.clock)().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_secs())
                .map(|s| -s)
                .unwrap_or(i64::MIN),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CmosState> {
        // Plain bytes and integers: still valid after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BusDevice for Rtc {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => {
                let now = self.host_seconds();
                self.lock().read(now)
            }
            // The index port is write-only; wider accesses mean nothing.
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let [value] = data else {
            return;
        };
        match offset {
            INDEX_OFFSET => self.lock().index = value & INDEX_MASK,
            DATA_OFFSET => {
                let now = self.host_seconds();
                self.lock().write(now, *value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use super::*;

    /// 2024-02-29 (a Thursday) 12:34:56 UTC.
    const LEAP_DAY_NOON: i64 = 1_709_210_096;

    fn rtc_at(seconds: Arc<AtomicI64>) -> Rtc {
        Rtc::with_clock(Box::new(move || {
            let s = seconds.load(Ordering::SeqCst);
            if s >= 0 {
                UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
            } else {
                UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
            }
        }))
    }

    fn fixed(seconds: i64) -> Rtc {
        rtc_at(Arc::new(AtomicI64::new(seconds)))
    }

    #[test]
    fn state_keeps_ram_and_the_guest_clock_offset() {
        let rtc = fixed(LEAP_DAY_NOON);
        rtc.write(INDEX_OFFSET, &[0x40]);
        rtc.write(DATA_OFFSET, &[0x99]);
        rtc.write(INDEX_OFFSET, &[0x09]);
        rtc.write(DATA_OFFSET, &[0x30]); // the guest sets year 2030 (BCD)
        let state = rtc.state();
        let later = fixed(LEAP_DAY_NOON + 60);
        later
            .restore(&serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap())
            .unwrap();
        assert_eq!(get(&later, 0x40), 0x99);
        assert_eq!(get(&later, 0x09), 0x30, "the guest's year is kept");
        assert_eq!(later.state().offset_seconds, state.offset_seconds);
        let short = RtcState {
            ram: vec![0; 3],
            ..state
        };
        assert_eq!(later.restore(&short), Err(RtcStateError(3)));
        assert_eq!(get(&later, 0x40), 0x99, "left as it was");
    }

    fn get(rtc: &Rtc, index: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[index]);
        let mut b = [0];
        rtc.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn set(rtc: &Rtc, index: u8, value: u8) {
        rtc.write(INDEX_OFFSET, &[index]);
        rtc.write(DATA_OFFSET, &[value]);
    }

    fn time_registers(rtc: &Rtc) -> [u8; 8] {
        [
            SECONDS,
            MINUTES,
            HOURS,
            WEEKDAY,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .map(|r| get(rtc, r))
    }

    #[test]
    fn time_reads_in_bcd_by_default() {
        let rtc = fixed(LEAP_DAY_NOON);
        assert_eq!(
            time_registers(&rtc),
            [0x56, 0x34, 0x12, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_mode_is_honoured() {
        let rtc = fixed(LEAP_DAY_NOON);
        set(&rtc, STATUS_B, STATUS_B_24_HOUR | STATUS_B_BINARY);
        assert_eq!(time_registers(&rtc), [56, 34, 12, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode_marks_pm() {
        let rtc = fixed(LEAP_DAY_NOON + 3600); // 13:34
        set(&rtc, STATUS_B, 0);
        assert_eq!(get(&rtc, HOURS), 0x81);
        let midnight = fixed(LEAP_DAY_NOON - 12 * 3600 - 34 * 60);
        set(&midnight, STATUS_B, 0);
        assert_eq!(get(&midnight, HOURS), 0x12, "00:xx is 12 AM");
    }

    #[test]
    fn status_registers_read_as_after_reset() {
        let rtc = fixed(0);
        assert_eq!(get(&rtc, STATUS_A), 0x26);
        assert_eq!(get(&rtc, STATUS_B), 0x02);
        assert_eq!(get(&rtc, STATUS_C), 0x00);
        assert_eq!(get(&rtc, STATUS_D), 0x80);
        set(&rtc, STATUS_A, 0xff);
        assert_eq!(get(&rtc, STATUS_A), 0x7f, "update-in-progress stays clear");
        set(&rtc, STATUS_D, 0);
        assert_eq!(get(&rtc, STATUS_D), 0x80, "read-only");
    }

    #[test]
    fn the_clock_advances_between_reads() {
        let now = Arc::new(AtomicI64::new(LEAP_DAY_NOON));
        let rtc = rtc_at(now.clone());
        assert_eq!(get(&rtc, SECONDS), 0x56);
        now.fetch_add(1, Ordering::SeqCst);
        assert_eq!(get(&rtc, SECONDS), 0x57);
    }

    #[test]
    fn a_guest_set_time_is_kept_as_an_offset() {
        let now = Arc::new(AtomicI64::new(LEAP_DAY_NOON));
        let rtc = rtc_at(now.clone());
        // Linux's sequence: freeze, write fields, unfreeze. Setting
        // 1999-12-31 23:59:50 from 29 Feb must not trip over 31 February.
        set(&rtc, STATUS_B, STATUS_B_SET | STATUS_B_24_HOUR);
        for (reg, value) in [
            (SECONDS, 0x50),
            (MINUTES, 0x59),
            (HOURS, 0x23),
            (DAY_OF_MONTH, 0x31),
            (MONTH, 0x12),
            (YEAR, 0x99),
            (CENTURY, 0x19),
        ] {
            set(&rtc, reg, value);
        }
        now.fetch_add(100, Ordering::SeqCst);
        assert_eq!(get(&rtc, SECONDS), 0x50, "frozen while SET");
        set(&rtc, STATUS_B, STATUS_B_24_HOUR);
        now.fetch_add(15, Ordering::SeqCst);
        assert_eq!(
            time_registers(&rtc),
            [0x05, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20],
            "15 s later it is 2000-01-01, a Saturday"
        );
    }

    #[test]
    fn a_single_field_write_applies_at_once() {
        let rtc = fixed(LEAP_DAY_NOON);
        set(&rtc, MINUTES, 0x00);
        assert_eq!(get(&rtc, MINUTES), 0x00);
        assert_eq!(get(&rtc, HOURS), 0x12);
        set(&rtc, STATUS_B, 0);
        set(&rtc, HOURS, 0x12); // 12 AM
        set(&rtc, STATUS_B, STATUS_B_24_HOUR);
        assert_eq!(get(&rtc, HOURS), 0x00);
        set(&rtc, WEEKDAY, 0x01);
        assert_eq!(get(&rtc, WEEKDAY), 0x05, "weekday follows the date");
    }

    #[test]
    fn garbage_time_writes_are_clamped() {
        let rtc = fixed(LEAP_DAY_NOON);
        set(&rtc, SECONDS, 0xff);
        set(&rtc, MONTH, 0x00);
        set(&rtc, CENTURY, 0xff);
        assert_eq!(get(&rtc, SECONDS), 0x59);
        assert_eq!(get(&rtc, MONTH), 0x01);
        assert_eq!(get(&rtc, CENTURY), 0x99);
    }

    #[test]
    fn other_bytes_are_ram_and_the_nmi_bit_is_ignored() {
        let rtc = fixed(0);
        set(&rtc, 0x0e, 0xab);
        set(&rtc, 0x7f, 0xcd);
        assert_eq!(get(&rtc, 0x0e), 0xab);
        // Index 0xff is 0x7f with the NMI-disable bit.
        assert_eq!(get(&rtc, 0xff), 0xcd);
        assert_eq!(get(&rtc, 0x10), 0x00, "no floppy drives");
        set(&rtc, 0x8e, 0x11);
        assert_eq!(get(&rtc, 0x0e), 0x11);
    }

    #[test]
    fn odd_accesses_and_pre_epoch_clocks_do_not_panic() {
        let rtc = fixed(-86_400);
        assert_eq!(get(&rtc, DAY_OF_MONTH), 0x31);
        assert_eq!(get(&rtc, YEAR), 0x69);
        let mut b = [0];
        rtc.read(INDEX_OFFSET, &mut b);
        assert_eq!(b, [0xff]);
        for offset in [2, 3, u64::MAX] {
            rtc.read(offset, &mut b);
            assert_eq!(b, [0xff]);
            rtc.write(offset, &[0]);
        }
        for len in [0, 2, 4, 8] {
            let mut buf = vec![0; len];
            rtc.read(DATA_OFFSET, &mut buf);
            assert!(buf.iter().all(|&x| x == 0xff));
            rtc.write(INDEX_OFFSET, &vec![0x0e; len]);
        }
        let far_future = UNIX_EPOCH
            .checked_add(Duration::from_secs(1 << 40))
            .unwrap();
        let far = Rtc::with_clock(Box::new(move || far_future));
        assert_eq!(get(&far, CENTURY), 0x99);
        set(&far, SECONDS, 0);
    }
}
