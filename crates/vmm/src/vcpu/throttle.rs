//! How long a throttled vCPU sits out (a migration's auto-converge): on
//! each `Throttle(percent)` request it stays out of the guest for as long,
//! next to the time it ran since it last sat out, as keeps it out
//! `percent` of the time. With the VMM asking every 10 ms that is
//! `percent` of each 10 ms; a request that comes late (a busy VMM thread)
//! makes a longer sit-out rather than a faster guest.

use std::time::Duration;

/// The most running time one request makes up for: the first request
/// after a long unthrottled run does not freeze the guest for seconds.
pub const MAX_COUNTED_RUN: Duration = Duration::from_millis(40);
/// The highest throttle: the guest still runs a little.
pub const MAX_PERCENT: u8 = 99;

/// The sit-out after running `ran`, at `percent`.
pub fn sit_out_after(ran: Duration, percent: u8) -> Duration {
    let percent = u32::from(percent.min(MAX_PERCENT));
    ran.min(MAX_COUNTED_RUN) * percent / (100 - percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn on_time_requests_keep_the_vcpu_out_percent_of_every_10_ms() {
        // Requests 10 ms apart: the vCPU ran the rest of the period.
        assert_eq!(sit_out_after(8 * MS, 20), 2 * MS);
        assert_eq!(sit_out_after(5 * MS, 50), 5 * MS);
        assert_eq!(
            sit_out_after(Duration::from_micros(100), 99),
            Duration::from_micros(9900)
        );
        assert_eq!(sit_out_after(10 * MS, 0), Duration::ZERO);
    }

    #[test]
    fn a_late_request_makes_a_longer_sit_out() {
        assert_eq!(sit_out_after(30 * MS, 50), 30 * MS);
        assert_eq!(sit_out_after(30 * MS, 20), Duration::from_micros(7500));
    }

    #[test]
    fn the_run_counted_and_the_percent_are_capped() {
        assert_eq!(sit_out_after(Duration::from_secs(5), 50), 40 * MS);
        assert_eq!(sit_out_after(MS, 100), 99 * MS);
        assert_eq!(sit_out_after(MS, 255), 99 * MS);
    }
}
