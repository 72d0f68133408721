//! What a device keeps outside its rings, as a snapshot saves it: plain
//! data, apart from the live types, so the file format does not change
//! when the code does. Most devices keep nothing there (their state is in
//! the rings and the configuration); the balloon keeps its target, what
//! the driver reported, and its hinting run.

use serde::{Deserialize, Serialize};

/// One device's own saved state, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DeviceState {
    /// virtio-balloon.
    Balloon(BalloonState),
}

/// The balloon's state beside its rings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// `num_pages`: the target, in 4 KiB pages.
    pub target_pages: u32,
    /// `actual`, as the driver last wrote it.
    pub actual_pages: u32,
    /// The statistics interval in force, in seconds.
    pub stats_interval_s: u16,
    /// `free_page_hint_cmd_id`: the host's last hinting command.
    pub hint_host_cmd: u32,
    /// The driver's last hinting command, if any.
    pub hint_guest_cmd: Option<u32>,
    /// Whether the guest's STOP is acknowledged at once.
    pub hint_ack_on_stop: bool,
    /// The id the next hinting run gets.
    pub hint_next_run_id: u32,
}
