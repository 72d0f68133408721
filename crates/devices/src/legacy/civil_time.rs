//! Conversion between Unix seconds and the proleptic Gregorian calendar (UTC),
//! for the RTC. Dates are counted in days relative to 1970-01-01 using
//! 400-year eras (146 097 days each), with years starting on 1 March so the
//! leap day falls at the end of a year and needs no special case.

/// Seconds of 0000-01-01T00:00:00Z: the earliest time the RTC represents.
pub(crate) const MIN_UNIX_SECONDS: i64 = -62_167_219_200;
/// Seconds of 9999-12-31T23:59:59Z: the latest time the RTC represents.
pub(crate) const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

const SECONDS_PER_DAY: i64 = 86_400;
const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 (start of era 0) to 1970-01-01.
const EPOCH_DAYS_FROM_ERA_START: i64 = 719_468;

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CivilTime {
    /// Full year, 0..=9999.
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

impl CivilTime {
    /// The civil time of `unix` seconds, clamped to years 0..=9999.
    pub(crate) fn from_unix(unix: i64) -> Self {
        let unix = unix.clamp(MIN_UNIX_SECONDS, MAX_UNIX_SECONDS);
        let days = unix.div_euclid(SECONDS_PER_DAY);
        let seconds_of_day = unix.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = date_from_days(days);
        Self {
            year,
            month,
            day,
            // All below 24/60 by construction, so the casts cannot truncate.
            hour: (seconds_of_day / 3600) as u8,
            minute: (seconds_of_day / 60 % 60) as u8,
            second: (seconds_of_day % 60) as u8,
        }
    }

    /// Unix seconds of this time. Out-of-range fields carry over (31 April is
    /// 1 May, hour 25 is 1 am next day), as they would on a counter; the
    /// month is clamped to 1..=12 first.
    pub(crate) fn to_unix(self) -> i64 {
        let days = days_from_date(self.year, self.month.clamp(1, 12), self.day);
        days * SECONDS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Day of the week, 1 = Sunday … 7 = Saturday (the CMOS convention).
    pub(crate) fn weekday(self) -> u8 {
        let days = days_from_date(self.year, self.month.clamp(1, 12), self.day);
        // 1970-01-01 was a Thursday (index 4 counting Sunday as 0).
        (days + 4).rem_euclid(7) as u8 + 1
    }
}

/// Days since 1970-01-01 of a date; `month` must be 1..=12, `day` may
/// overflow the month.
fn days_from_date(year: i64, month: u8, day: u8) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    // Months counted from March = 0.
    let shifted_month = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_DAYS_FROM_ERA_START
}

/// The date `days` after 1970-01-01.
fn date_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + EPOCH_DAYS_FROM_ERA_START;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days - era * DAYS_PER_ERA;
    // Removes the leap days before this day of the era, then divides.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // month is 1..=12 and day 1..=31 by construction.
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn civil(year: i64, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> CivilTime {
        CivilTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    #[test]
    fn known_instants_convert_both_ways() {
        // (unix seconds, date, weekday 1 = Sunday); checked against Python's datetime.
        let cases = [
            (0, civil(1970, 1, 1, 0, 0, 0), 5),
            (951_782_400, civil(2000, 2, 29, 0, 0, 0), 3),
            (1_709_210_096, civil(2024, 2, 29, 12, 34, 56), 5),
            (4_107_542_400, civil(2100, 3, 1, 0, 0, 0), 2),
            (-1, civil(1969, 12, 31, 23, 59, 59), 4),
            (MIN_UNIX_SECONDS, civil(0, 1, 1, 0, 0, 0), 7),
            (MAX_UNIX_SECONDS, civil(9999, 12, 31, 23, 59, 59), 6),
        ];
        for (unix, time, weekday) in cases {
            assert_eq!(CivilTime::from_unix(unix), time, "{unix}");
            assert_eq!(time.to_unix(), unix, "{time:?}");
            assert_eq!(time.weekday(), weekday, "{time:?}");
        }
    }

    #[test]
    fn century_years_are_leap_only_every_400() {
        // 1900 and 2100 have no 29 February: it carries into March.
        assert_eq!(
            CivilTime::from_unix(civil(1900, 2, 29, 0, 0, 0).to_unix()),
            civil(1900, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            CivilTime::from_unix(civil(2100, 2, 29, 0, 0, 0).to_unix()),
            civil(2100, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            CivilTime::from_unix(civil(2000, 2, 29, 0, 0, 0).to_unix()),
            civil(2000, 2, 29, 0, 0, 0)
        );
    }

    #[test]
    fn every_day_round_trips_across_four_centuries() {
        let start = civil(1900, 1, 1, 0, 0, 0).to_unix();
        for day in 0..(400 * 366) {
            let unix = start + day * SECONDS_PER_DAY + 3661;
            assert_eq!(CivilTime::from_unix(unix).to_unix(), unix);
        }
    }

    #[test]
    fn extreme_inputs_are_clamped() {
        assert_eq!(CivilTime::from_unix(i64::MIN).year, 0);
        assert_eq!(CivilTime::from_unix(i64::MAX).year, 9999);
        assert_eq!(
            civil(2024, 0, 1, 0, 0, 0).to_unix(),
            civil(2024, 1, 1, 0, 0, 0).to_unix()
        );
    }
}
